"""Benchmark the REST service against its limit (raw session.run) and its peer (Ultralytics' predict loop).

One run measures, on the same model and image:

  raw          session.run in this process on the tensor the engine makes from the image (same input size,
               same session options, same threads as one of the service's instances).
  raw_solo     the same on a session like the service's solo session (DETECT_SOLO_THREADS), where it has one:
               a lone request runs there. The session a lone request runs on is the limit of this hardware at
               concurrency 1; its single-stream rate is 1000 / its p50 images/s.
  ultralytics  ultralytics.YOLO(onnx).predict(image) in a loop in this process (what users would do
               otherwise), on CPU with its ONNX Runtime session swapped for one with the settings of the session a
               lone request runs on in the service (the same threads as the service at concurrency 1).
  service      python -m service on a free loopback port, driven by benchmarks/loadgen.py in a separate
               process (asyncio, closed loop, multipart POST /v1/detect; --client) at each --concurrency:
               p50/p95/p99 latency and throughput.
  batches      with --batch-sizes (default on CUDA): raw session.run on batches of b copies of the tensor
               next to the service at concurrency b (micro-batching is what lets it use the batch).
  sweep        the best raw rate this machine reaches for the model: for --sweep-seconds each, `instances`
               sessions of `threads` intra-op threads run at once, each from its own thread, on batches of
               1 and 8 (instances x threads up to the cores; 1, 2 and all cores each), images per second.

The reference runs are split: half before the service starts, half after it stopped, interleaved run by run,
so that a change in machine load shows as their after/before ratio. Goals (met / NOT met): service p50 at
concurrency 1 <= 1.10x the raw p50 of the session a lone request runs on; throughput at concurrency 8 >= 1.0x
that session's single-stream rate and >= 0.8x the best rate of the sweep; service p50 at concurrency 1 <= 0.90x
the Ultralytics loop p50.

    python benchmarks/service.py --threads 1 --out service.json
    python benchmarks/service.py --device cuda --concurrency 1,4,8,16,32 --out service-gpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before benchmarks/ (this script's folder): `service` is the package, not this file

import onnxruntime as ort

from benchmarks.engine import machine, timed, write_report
from benchmarks.loadgen import (
    CLIENTS,
    BenchmarkError,
    ServiceProcess,
    ServiceSettings,
    add_model_and_image_arguments,
    default_image,
    describe_image,
    format_ms,
    goal,
    latency_stats,
    non_negative_float,
    positive_float,
    positive_int,
    positive_ints,
    print_goals,
    require_device,
    require_files,
    run_load,
    summarize,
)
from engine import Detector, DeviceError, ExecutionPlan, ImageError, ModelError, physical_cores, plan_execution
from engine.model import create_session
from service.settings import Settings

GPU_BATCH_SIZES = [1, 2, 4, 8, 16, 32]
BATCH_WAIT_DEFAULT = Settings.model_fields["max_batch_wait_ms"].default  # the service's
CONF = 0.25  # the service's and Ultralytics' default thresholds
IOU = 0.7
P50_OVER_RAW_GOAL = 1.10
THROUGHPUT_OVER_RAW_GOAL = 1.0
THROUGHPUT_OVER_BEST_RAW_GOAL = 0.8
SWEEP_BATCHES = (1, 8)
P50_OVER_ULTRALYTICS_GOAL = 0.90
GOAL_CONCURRENCY_LATENCY = 1
GOAL_CONCURRENCY_THROUGHPUT = 8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_image_arguments(parser)
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N, for the service and the references (default: cpu)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="ONNX Runtime intra-op threads of each service instance and of the references (default: the "
        "service's own choice, engine.plan_execution)",
    )
    parser.add_argument(
        "--instances",
        type=positive_int,
        help="DETECT_INSTANCES of the service (default: the service's own choice, engine.plan_execution)",
    )
    parser.add_argument(
        "--solo-threads",
        type=positive_int,
        help="DETECT_SOLO_THREADS of the service: intra-op threads of the run of a lone request (default: chosen "
        "as the service does; 1 = no solo session)",
    )
    parser.add_argument(
        "--max-batch",
        type=positive_int,
        help="DETECT_MAX_BATCH of the service (default: 8, or the largest --batch-sizes when larger)",
    )
    parser.add_argument(
        "--max-batch-wait-ms",
        type=non_negative_float,
        default=BATCH_WAIT_DEFAULT,
        help=f"DETECT_MAX_BATCH_WAIT_MS of the service (default: {BATCH_WAIT_DEFAULT:g})",
    )
    parser.add_argument(
        "--queue-size",
        type=positive_int,
        help="DETECT_QUEUE_SIZE of the service (default: 32, or the largest concurrency when larger, so that "
        "the closed loop never meets a full queue)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_ints,
        default=[1, 4, 8, 16],
        help="comma-separated concurrency levels of the closed-loop load (default: 1,4,8,16; the goals use 1 and 8)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=positive_ints,
        help="comma-separated batch sizes for the raw-batch vs service table (default: "
        f"{','.join(map(str, GPU_BATCH_SIZES))} on CUDA, none on CPU); the service is also measured at "
        "these concurrencies",
    )
    parser.add_argument(
        "--duration", type=positive_float, default=10.0, help="measured seconds per concurrency level (default: 10)"
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_float,
        default=2.0,
        help="seconds of load before each level's measurement, not counted (default: 2)",
    )
    parser.add_argument(
        "--reference-runs",
        type=positive_int,
        default=50,
        help="timed runs of each reference case, half before and half after the service (default: 50)",
    )
    parser.add_argument(
        "--reference-warmup",
        type=int,
        default=5,
        help="untimed runs of each reference case before each half, and of each raw batch (default: 5)",
    )
    parser.add_argument(
        "--no-ultralytics", action="store_true", help="skip the Ultralytics predict loop (and its goal)"
    )
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="raw",
        help="load generator's HTTP client: raw (lean asyncio keep-alive, about 0.2 ms client CPU per request) or "
        "httpx (about 2 ms; a cross-check) (default: raw)",
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=60.0, help="client timeout of one request in seconds (default: 60)"
    )
    parser.add_argument(
        "--sweep-seconds",
        type=non_negative_float,
        default=3.0,
        help="seconds of each instances x threads x batch configuration of the raw sweep; 0 skips it (default: 3)",
    )
    parser.add_argument("--out", type=Path, help="write everything measured to this JSON file")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Errors argparse cannot see: missing files, a negative warm-up count."""
    require_files(parser, ("--model", args.model), ("--image", args.image))
    if args.reference_warmup < 0:
        parser.error(f"--reference-warmup must not be negative, got {args.reference_warmup}")


class References:
    """The in-process cases the service is compared with, timed interleaved run by run."""

    def __init__(self, model: Path, image: Path, device: str, plan: ExecutionPlan, with_ultralytics: bool) -> None:
        preparer = Detector(model, device="cpu", threads=1)  # preparing does not depend on the device
        self.info = preparer.info
        self.tensor = preparer.prepare(image.read_bytes()).tensor
        self.session = create_session(model, device, plan.threads, plan.spinning)
        self.cases: dict[str, Callable[[], object]] = {"raw": self.run_raw}
        lone_threads, lone_spinning = plan.threads, plan.spinning
        if plan.solo_threads:
            lone_threads, lone_spinning = plan.solo_threads, True
            solo_session = create_session(model, device, lone_threads, lone_spinning)
            self.cases["raw_solo"] = lambda: self.run_raw(session=solo_session)
        self.lone_case = "raw_solo" if plan.solo_threads else "raw"
        if with_ultralytics:
            # Ultralytics' own default imgsz is 640: give it the service's (the export size), rect for dynamic models.
            imgsz = self.info.imgsz[0] if self.info.dynamic_hw else list(self.info.imgsz)
            self.cases["ultralytics"] = ultralytics_predict_loop(
                model, image, imgsz, device, lone_threads, lone_spinning
            )
        self.before: dict[str, list[float]] = {name: [] for name in self.cases}
        self.after: dict[str, list[float]] = {name: [] for name in self.cases}

    def run_raw(self, batch: np.ndarray | None = None, session: ort.InferenceSession | None = None) -> object:
        feed = {self.info.input_name: self.tensor if batch is None else batch}
        return (session or self.session).run([self.info.output_name], feed)

    def measure(self, samples: dict[str, list[float]], runs: int, warmup: int) -> None:
        for _ in range(warmup):
            for case in self.cases.values():
                case()
        for _ in range(runs):
            for name, case in self.cases.items():
                samples[name].append(timed(case))

    def time_batches(self, sizes: Sequence[int], runs: int, warmup: int) -> dict[int, list[float]]:
        """Per-run milliseconds of session.run on `size` copies of the tensor, sizes interleaved."""
        batches = {size: np.repeat(self.tensor, size, axis=0) for size in sizes}
        samples: dict[int, list[float]] = {size: [] for size in sizes}
        for round_ in range(warmup + runs):
            for size, batch in batches.items():
                elapsed = timed(lambda batch=batch: self.run_raw(batch))
                if round_ >= warmup:
                    samples[size].append(elapsed)
        return samples

    def summary(self) -> dict[str, Any]:
        """Per case: its runs' latency statistics, after/before drift and samples; `lone` names the raw case of the
        session a lone request runs on."""
        result: dict[str, Any] = {"lone": self.lone_case}
        for name in self.cases:
            samples = self.before[name] + self.after[name]
            result[name] = {
                "runs": len(samples),
                **latency_stats(samples),
                "after_over_before": (
                    statistics.median(self.after[name]) / statistics.median(self.before[name])
                    if self.before[name] and self.after[name]
                    else None
                ),
                "samples_ms": samples,
            }
        return result


def raw_rate(
    model: Path, tensor: np.ndarray, device: str, instances: int, threads: int, batch: int, seconds: float, cores: int
) -> float:
    """Images per second of `instances` sessions (`threads` intra-op threads each, spinning as the service would)
    running at once, each from its own thread, on batches of `batch` copies of `tensor`, for `seconds`."""
    spinning = instances * threads < cores
    sessions = [create_session(model, device, threads, spinning) for _ in range(instances)]
    feed = {sessions[0].get_inputs()[0].name: np.repeat(tensor, batch, axis=0)}
    for session in sessions:
        session.run(None, feed)  # warm-up
    start = threading.Barrier(instances + 1)
    runs = [0] * instances

    def loop(index: int) -> None:
        start.wait()
        while time.perf_counter() < deadline:
            sessions[index].run(None, feed)
            runs[index] += 1

    workers = [threading.Thread(target=loop, args=(index,)) for index in range(instances)]
    for worker in workers:
        worker.start()
    began = time.perf_counter()
    deadline = began + seconds
    start.wait()
    for worker in workers:
        worker.join()
    return sum(runs) * batch / (time.perf_counter() - began)


def raw_sweep(model: Path, tensor: np.ndarray, device: str, seconds: float) -> list[dict[str, Any]]:
    """`raw_rate` of every configuration the sweep tries (see the module's docstring), in order."""
    cores = physical_cores()
    counts = sorted({1, 2, cores} if device == "cpu" else {1, 2})
    rows = []
    for instances in counts:
        for threads in counts if device == "cpu" else [plan_execution(instances, 0, device).threads]:
            if device == "cpu" and instances * threads > cores:
                continue
            for batch in SWEEP_BATCHES:
                rate = raw_rate(model, tensor, device, instances, threads, batch, seconds, cores)
                rows.append({"instances": instances, "threads": threads, "batch": batch, "images_per_s": rate})
    return rows


def ultralytics_predict_loop(
    model: Path, image: Path, imgsz: int | list[int], device: str, threads: int, spinning: bool
) -> Callable[[], object]:
    """One `YOLO(onnx).predict(image)` call as users would make it, at the service's input size and thresholds."""
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_OFFLINE", "True")
    from ultralytics import YOLO  # only here: the service and the engine never import it

    yolo = YOLO(str(model), task="detect")
    ultralytics_device = "cpu" if device == "cpu" else device.partition(":")[2] or "0"

    def predict() -> object:
        return yolo.predict(str(image), imgsz=imgsz, conf=CONF, iou=IOU, device=ultralytics_device, verbose=False)

    predict()  # builds the predictor and its ONNX Runtime session
    if device == "cpu":
        # The same session options and threads as the service, so that the comparison is between the two
        # pipelines, not two thread settings (on CUDA its session is kept: it may be bound to its I/O buffers).
        yolo.predictor.model.backend.session = create_session(model, device, threads, spinning)
    return predict


def measure_service(
    server: ServiceProcess, image: Path, concurrency: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """The service under a closed loop at `concurrency`, from a separate load-generator process."""
    run = run_load(
        "closed",
        server.url,
        image,
        workdir / f"closed-c{concurrency}.json",
        args.duration,
        args.timeout,
        args.client,
        concurrency=concurrency,
        warmup=args.warmup,
    )
    measured = run.phase("load")
    return {
        "concurrency": concurrency,
        **summarize(measured, args.duration),
        "client_cpu_ms_per_request": run.client_cpu_s * 1e3 / max(len(run.records), 1),
        "errors": run.errors,
    }


def ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


def evaluate(
    references: dict[str, dict[str, Any]], levels: dict[int, dict[str, Any]], sweep: list[dict[str, Any]]
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """The ratios the service is judged on, and the goals (against the sweep's best rate when there is a sweep)."""
    raw_p50 = references[references["lone"]]["p50_ms"]
    ultralytics_p50 = references.get("ultralytics", {}).get("p50_ms")
    latency_level = levels.get(GOAL_CONCURRENCY_LATENCY, {})
    throughput_level = levels.get(GOAL_CONCURRENCY_THROUGHPUT, {})
    ratios = {
        "p50_c1_over_raw": ratio(latency_level.get("p50_ms"), raw_p50),
        "throughput_c8_over_raw_rate": ratio(throughput_level.get("throughput_rps"), 1e3 / raw_p50),
        "p50_c1_over_ultralytics": ratio(latency_level.get("p50_ms"), ultralytics_p50),
        "throughput_c8_over_best_raw": ratio(
            throughput_level.get("throughput_rps"), max((row["images_per_s"] for row in sweep), default=None)
        ),
    }
    goals = [
        goal("service p50 @c1 / raw p50", ratios["p50_c1_over_raw"], P50_OVER_RAW_GOAL, at_most=True),
        goal(
            "service req/s @c8 / raw single-stream rate",
            ratios["throughput_c8_over_raw_rate"],
            THROUGHPUT_OVER_RAW_GOAL,
            at_most=False,
        ),
        goal(
            "service p50 @c1 / Ultralytics loop p50",
            ratios["p50_c1_over_ultralytics"],
            P50_OVER_ULTRALYTICS_GOAL,
            at_most=True,
        ),
    ]
    if sweep:
        goals.insert(
            2,
            goal(
                "service req/s @c8 / best raw rate of the sweep",
                ratios["throughput_c8_over_best_raw"],
                THROUGHPUT_OVER_BEST_RAW_GOAL,
                at_most=False,
            ),
        )
    return ratios, goals


def batch_table(raw_batches: dict[int, list[float]], levels: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Raw session.run at each batch size next to the service at the same concurrency."""
    rows = []
    for size, samples in raw_batches.items():
        raw_p50 = statistics.median(samples)
        raw_rate = size * 1e3 / raw_p50
        level = levels[size]
        rows.append(
            {
                "batch": size,
                "raw_p50_ms": raw_p50,
                "raw_images_per_s": raw_rate,
                "service_concurrency": size,
                "service_throughput_rps": level["throughput_rps"],
                "service_p50_ms": level["p50_ms"],
                "service_throughput_over_raw": level["throughput_rps"] / raw_rate,
            }
        )
    return rows


def solo_text(solo_threads: int, threads: int) -> str:
    """The solo session as the service's log names it ("none" where its threads are no more than an instance's)."""
    return f"{solo_threads} threads" if solo_threads > threads else "none"


def print_report(report: dict[str, Any]) -> None:
    references, settings = report["references"], report["service_settings"]
    input_shape = "x".join(map(str, report["input_shape"]))
    print(f"\nreferences in this process (server not running), input {input_shape}, device {report['device']}:")
    cases = (
        ("raw", "raw session.run"),
        ("raw_solo", "raw, solo session"),
        ("ultralytics", "YOLO(onnx).predict loop"),
    )
    for name, label in cases:
        if name in references:
            row = references[name]
            drift = row["after_over_before"]
            print(
                f"  {label:<26} p50 {format_ms(row['p50_ms'])} ms  p95 {format_ms(row['p95_ms'])} ms  "
                f"({row['runs']} runs; after/before {'-' if drift is None else f'{drift:.3f}'})"
            )
    print(f"  raw single-stream rate: {report['raw_single_stream_rate']:.1f} images/s")
    print(
        f"\nservice ({settings['instances']} instances x {settings['threads']} threads, solo session "
        f"{solo_text(settings['solo_threads'], settings['threads'])}, "
        f"max batch {settings['max_batch']}, batch wait "
        f"{settings['max_batch_wait_ms']:g} ms, queue {settings['queue_size']}), closed loop from a separate "
        f"process ({report['client']} client), {report['duration_s']:g} s per level:"
    )
    raw_p50 = references[references["lone"]]["p50_ms"]
    ultralytics_p50 = references.get("ultralytics", {}).get("p50_ms")
    header = (
        f"{'conc':>5}{'requests':>10}{'failed':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'p50/raw':>9}{'rps/raw':>9}{'p50/ultra':>10}{'client cpu ms/req':>19}"
    )
    print(header)
    print("-" * len(header))
    for level in report["service"]:
        cells = [
            ratio(level["p50_ms"], raw_p50),
            ratio(level["throughput_rps"], report["raw_single_stream_rate"]),
            ratio(level["p50_ms"], ultralytics_p50),
        ]
        p50_raw, rps_raw, p50_ultra = ("-" if cell is None else f"{cell:.3f}" for cell in cells)
        print(
            f"{level['concurrency']:>5}{level['requests']:>10}{level['failed']:>8}{level['throughput_rps']:>9.1f}"
            f"{format_ms(level['p50_ms']):>9}{format_ms(level['p95_ms']):>9}{format_ms(level['p99_ms']):>9}"
            f"{p50_raw:>9}{rps_raw:>9}{p50_ultra:>10}{level['client_cpu_ms_per_request']:>19.2f}"
        )
        if level["errors"]:
            print(f"      client errors: {level['errors']}")
    if report["batches"]:
        print("\nraw session.run per batch vs the service at the same concurrency:")
        header = (
            f"{'batch':>6}{'raw ms/run':>12}{'raw img/s':>11}{'service req/s':>15}{'service p50 ms':>16}"
            f"{'service/raw':>13}"
        )
        print(header)
        print("-" * len(header))
        for row in report["batches"]:
            print(
                f"{row['batch']:>6}{row['raw_p50_ms']:>12.2f}{row['raw_images_per_s']:>11.1f}"
                f"{row['service_throughput_rps']:>15.1f}{format_ms(row['service_p50_ms']):>16}"
                f"{row['service_throughput_over_raw']:>13.3f}"
            )
    if report["raw_sweep"]:
        print("\nraw sweep (instances at once x intra-op threads x batch), images/s:")
        best = max(row["images_per_s"] for row in report["raw_sweep"])
        for row in report["raw_sweep"]:
            mark = "  <- best" if row["images_per_s"] == best else ""
            print(f"  {row['instances']:>2} x {row['threads']:>2} threads, batch {row['batch']:>2}: "
                  f"{row['images_per_s']:>8.1f}{mark}")  # fmt: skip
    print("\ngoals:")
    print_goals(report["goals"])


def execution_plan(args: argparse.Namespace) -> ExecutionPlan:
    """The service's instances, threads and solo session for the options, as the service chooses them."""
    return plan_execution(args.instances or 0, args.threads or 0, args.device, solo_threads=args.solo_threads or 0)


def service_settings(args: argparse.Namespace, batch_sizes: Sequence[int], levels: Sequence[int]) -> ServiceSettings:
    """The service's settings: the options, with batch and queue sizes that fit the levels when not given."""
    plan = execution_plan(args)
    return ServiceSettings(
        model=args.model,
        device=args.device,
        threads=plan.threads,
        instances=plan.instances,
        solo_threads=plan.solo_threads or 1,  # 1: none (the service's own choice could differ from the plan's)
        max_batch=args.max_batch or max([8, *batch_sizes]),
        max_batch_wait_ms=args.max_batch_wait_ms,
        queue_size=args.queue_size or max([32, *levels]),
    )


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """References (first half), raw batches, the service at every level, references (second half); the report."""
    batch_sizes = args.batch_sizes or (GPU_BATCH_SIZES if args.device.startswith("cuda") else [])
    levels_wanted = sorted(set(args.concurrency) | set(batch_sizes))
    settings = service_settings(args, batch_sizes, levels_wanted)
    image = args.image or default_image(workdir)
    try:
        image_info = describe_image(image)
    except ImageError as error:
        raise SystemExit(f"--image {image}: {error}") from None
    try:
        references = References(args.model, image, args.device, execution_plan(args), not args.no_ultralytics)
    except (DeviceError, ModelError) as error:
        raise SystemExit(f"cannot run the references: {error}") from None

    first_half = args.reference_runs // 2
    references.measure(references.before, first_half, args.reference_warmup)
    raw_batches = references.time_batches(batch_sizes, args.reference_runs, args.reference_warmup)
    sweep = raw_sweep(args.model, references.tensor, args.device, args.sweep_seconds) if args.sweep_seconds else []
    print(f"references: {first_half} runs done; starting the service", file=sys.stderr)
    with ServiceProcess(settings, workdir / "service.log") as server:
        server.check_detect(image)
        levels = {}
        for concurrency in levels_wanted:
            print(f"service: concurrency {concurrency}", file=sys.stderr)
            levels[concurrency] = measure_service(server, image, concurrency, args, workdir)
    references.measure(references.after, args.reference_runs - first_half, args.reference_warmup)

    reference_summary = references.summary()
    ratios, goals = evaluate(reference_summary, levels, sweep)
    return {
        "model": str(args.model),
        "image": image_info,
        "input_shape": list(references.tensor.shape),
        "device": args.device,
        "providers": references.session.get_providers(),
        "service_settings": settings.to_dict(),
        "load_generator": "benchmarks/loadgen.py in a separate process, closed loop, multipart POST /v1/detect",
        "client": args.client,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "references": reference_summary,
        "raw_single_stream_rate": 1e3 / reference_summary[reference_summary["lone"]]["p50_ms"],
        "service": [levels[concurrency] for concurrency in levels_wanted],
        "batches": batch_table(raw_batches, levels),
        "raw_sweep": sweep,
        "ratios": ratios,
        "goals": goals,
    }


def run_and_report(
    args: argparse.Namespace,
    name: str,
    run: Callable[[argparse.Namespace, Path], dict[str, Any]],
    show: Callable[[dict[str, Any]], None],
) -> int:
    """`run(args, workdir)` in a temporary folder, then its results with the command, date and machine: shown with
    `show` and written to --out. A BenchmarkError ends the script with its message."""
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        try:
            results = run(args, Path(tmp))
        except BenchmarkError as error:
            raise SystemExit(f"benchmark failed: {error}") from None
    report = {"command": " ".join(sys.argv), "date": started, "machine": machine(), **results}
    show(report)
    write_report(args.out, report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    require_device(args.device)
    return run_and_report(args, "service", run_benchmark, print_report)


if __name__ == "__main__":
    sys.exit(main())
