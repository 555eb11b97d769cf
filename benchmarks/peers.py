"""Benchmark the REST service side by side with a peer server (yolo-frigate) and Ultralytics' predict loop.

One run measures, on the same ONNX model, the same image and the same concurrency levels:

  service       python -m service on a free loopback port, DETECT_MODELS=<model> and every other setting its
                default: its native POST /v1/detect and its DeepStack route POST /v1/vision/detection.
  yolo-frigate  the yolo-frigate release from PyPI (a DeepStack-shaped REST API over Ultralytics, for Frigate),
                installed on first use into its own virtual environment (--peer-venv, reused after) with what
                its ONNX CPU path needs, at this environment's versions of Ultralytics, ONNX Runtime and torch;
                started as `python -m yolo_frigate --model_file <model> --runtime onnx --device cpu` on a free
                loopback port, every other setting its default: its POST /detect.
  ultralytics   YOLO(onnx, task="detect").predict(image) in a loop in this process, at the service's input size
                and threads: the single-stream reference (with raw session.run, this hardware's limit), half of
                its runs before the servers start and half after they stopped.

Both servers run at once (idle while the other is measured) and are measured level by level in turn, so that a
change in machine load falls on all alike; each level is a closed loop from benchmarks/loadgen.py in a separate
process (multipart field `image`). Goals (issue 14, met / NOT met, for each of the service's two routes): service
p50 at concurrency 1 <= 0.70x yolo-frigate's; service req/s at concurrency 8 >= 1.3x yolo-frigate's.

Input size: yolo-frigate passes no imgsz to Ultralytics, which runs a static ONNX at its fixed size but a dynamic
one (like the default weights/bccd.onnx) at its own default 640 (rect letterbox), while the service runs both at
the export size. On a dynamic model the peer therefore does several times the work per image: the script says
so and marks the comparison not like for like. For a like-for-like run, pass a static export of the same weights:

    python -m detector export weights/bccd.pt --imgsz 320 --out /tmp/bccd-320-static.onnx
    python benchmarks/peers.py --model /tmp/bccd-320-static.onnx --out peers.json

The first run installs the peer from PyPI (torch makes its environment several GB); this script exports nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before benchmarks/ (this script's folder): `service` is the package, not service.py

from benchmarks.loadgen import (
    DETECT_PATH,
    BenchmarkError,
    ServiceProcess,
    ServiceSettings,
    add_model_and_image_arguments,
    default_image,
    describe_image,
    format_ms,
    goal,
    multipart_body,
    non_negative_float,
    positive_float,
    positive_int,
    positive_ints,
    print_goals,
    require_files,
    run_load,
    summarize,
)
from benchmarks.service import (
    GOAL_CONCURRENCY_LATENCY,
    GOAL_CONCURRENCY_THROUGHPUT,
    References,
    ratio,
    run_and_report,
    solo_text,
)
from engine import DeviceError, ImageError, ModelError, plan_execution
from engine.preprocess import letterbox

PEER = "yolo-frigate"
PEER_VERSION = "0.3.12"
PEER_RUNTIME_PACKAGES = ("ultralytics", "onnx", "onnxruntime", "torch", "torchvision")
"""What yolo-frigate's ONNX CPU path imports beyond its own requirements (its `onnx-gpu` extra, less the GPU)."""
PEER_REPORTED_PACKAGES = (PEER, *PEER_RUNTIME_PACKAGES, "numpy", "opencv-python-headless", "fastapi", "uvicorn")
PEER_PATH = "/detect"
PEER_READY_TIMEOUT_S = 300.0  # importing torch and Ultralytics on a busy 2-core machine takes a while
PEER_INSTALL_TIMEOUT_S = 3600.0
PEER_MARKER = "attention-yolo-peer.json"
ULTRALYTICS_DEFAULT_IMGSZ = 640  # what Ultralytics predicts a dynamic ONNX at when given no imgsz
DEEPSTACK_PATH = "/v1/vision/detection"
REQUEST_TIMEOUT_S = 60.0
REFERENCE_WARMUP = 5  # untimed runs of each reference before each half
P50_OVER_PEER_GOAL = 0.70
THROUGHPUT_OVER_PEER_GOAL = 1.3
DEFAULT_PEER_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attention-yolo" / "peers-venv"


@dataclass(frozen=True)
class Target:
    """One server route the load generator drives."""

    key: str  # as in the report's rows and ratios
    server: str
    path: str


SERVICE_NATIVE = Target("service_native", "service", DETECT_PATH)
SERVICE_DEEPSTACK = Target("service_deepstack", "service", DEEPSTACK_PATH)
PEER_TARGET = Target("yolo_frigate", PEER, PEER_PATH)
TARGETS = (SERVICE_NATIVE, SERVICE_DEEPSTACK, PEER_TARGET)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_image_arguments(parser)
    parser.add_argument(
        "--concurrency",
        type=positive_ints,
        default=[1, 2, 8],
        help="comma-separated concurrency levels of the closed-loop load on every server route (default: 1,2,8; "
        "the goals use 1 and 8)",
    )
    parser.add_argument(
        "--duration", type=positive_float, default=10.0, help="measured seconds per route and level (default: 10)"
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_float,
        default=2.0,
        help="seconds of load before each route and level's measurement, not counted (default: 2)",
    )
    parser.add_argument(
        "--reference-runs",
        type=positive_int,
        default=50,
        help="timed runs of the in-process references, half before and half after the servers (default: 50)",
    )
    parser.add_argument(
        "--peer-venv",
        type=Path,
        default=DEFAULT_PEER_VENV,
        help=f"virtual environment of {PEER} {PEER_VERSION}: created and pip-installed from PyPI when missing "
        f"or out of date, reused otherwise (default: {DEFAULT_PEER_VENV})",
    )
    parser.add_argument("--out", type=Path, help="write everything measured to this JSON file (default: none)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    require_files(parser, ("--model", args.model), ("--image", args.image))


# --------------------------------------------------------------------------------------------------------------
# The peer: its virtual environment and its server process
# --------------------------------------------------------------------------------------------------------------


def peer_requirements() -> list[str]:
    """yolo-frigate pinned, and its ONNX CPU path at this environment's versions (so that both servers run the same
    ONNX Runtime, and the peer the same Ultralytics as the reference loop); unpinned where this one lacks it."""
    pins = [f"{PEER}=={PEER_VERSION}"]
    for name in PEER_RUNTIME_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def peer_environment(venv: Path) -> dict[str, str]:
    """This process's environment without its own virtual environment and import path, the peer's venv first."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not key.startswith("DETECT_")
    }
    env["PATH"] = os.pathsep.join(filter(None, [str(venv / "bin"), env.get("PATH")]))
    env["VIRTUAL_ENV"] = str(venv)
    return env


def last_line(path: Path) -> str:
    """The last non-blank line of a log (for one-line error messages)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def ensure_peer_venv(venv: Path, requirements: Sequence[str]) -> Path:
    """The peer venv's python: reused when it holds `requirements`, else created and pip-installed (SystemExit with
    one line when that fails)."""
    python, marker, log = venv / "bin" / "python", venv / PEER_MARKER, venv / "install.log"
    try:
        if python.is_file() and marker.is_file() and json.loads(marker.read_text()) == list(requirements):
            return python
    except (OSError, ValueError):
        pass
    print(
        f"peers: installing {' '.join(requirements)} into {venv} (once; torch makes it several GB and minutes)",
        file=sys.stderr,
    )
    commands = [] if python.is_file() else [("python -m venv", [sys.executable, "-m", "venv", str(venv)])]
    commands.append(
        ("pip install", [str(python), "-m", "pip", "install", "--disable-pip-version-check", *requirements])
    )
    try:
        venv.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        with log.open("w") as out:
            for label, command in commands:
                out.write(f"$ {' '.join(command)}\n")
                out.flush()
                done = subprocess.run(
                    command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=peer_environment(venv),
                    timeout=PEER_INSTALL_TIMEOUT_S,
                    check=False,
                )
                if done.returncode != 0:
                    raise SystemExit(
                        f"cannot install the peer: {label} exited with {done.returncode}: {last_line(log)} (log: {log})"
                    )
        marker.write_text(json.dumps(list(requirements)))
    except subprocess.TimeoutExpired:
        raise SystemExit(f"cannot install the peer: pip ran past {PEER_INSTALL_TIMEOUT_S:g} s (log: {log})") from None
    except OSError as error:
        raise SystemExit(f"cannot install the peer into {venv}: {error}") from None
    return python


def peer_versions(python: Path) -> dict[str, str | None]:
    """Versions of the peer's packages, read in its own environment."""
    code = (
        "import importlib.metadata as m, json\n"
        "def v(n):\n    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n        return None\n"
        f"print(json.dumps({{n: v(n) for n in {list(PEER_REPORTED_PACKAGES)!r}}}))"
    )
    done = subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        env=peer_environment(python.parents[1]),
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        error = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"the peer's environment {python.parents[1]} is broken: {error}")
    return json.loads(done.stdout)


class PeerProcess(ServiceProcess):
    """`python -m yolo_frigate` (its ONNX Runtime profile on CPU, defaults otherwise) in the peer's venv."""

    name = PEER
    ready_path = "/health"  # answers once the model is loaded: yolo-frigate loads it before it serves

    def __init__(self, python: Path, model: Path, workdir: Path, log_path: Path) -> None:
        super().__init__(ServiceSettings(model=model), log_path, PEER_READY_TIMEOUT_S)
        self.python, self.workdir = python, workdir
        self.cwd = workdir  # not the repository: `-m` puts the working directory on the peer's import path

    def command(self) -> list[str]:
        return [
            str(self.python), "-m", "yolo_frigate", "--model_file", str(self.settings.model.resolve()),
            "--runtime", "onnx", "--device", "cpu", "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = peer_environment(self.python.parents[1])
        env.update(
            YOLO_FRIGATE_MODEL_CACHE_DIR=str(self.workdir / "yolo-frigate-cache"),  # for lazy exports (none here)
            YOLO_CONFIG_DIR=str(self.workdir / "Ultralytics"),
            YOLO_AUTOINSTALL="False",
            YOLO_OFFLINE="True",
        )
        return env


# --------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------


def check_deepstack(url: str, path: str, image: Path) -> dict[str, Any]:
    """One DeepStack-shaped request, checked: 200 with success true and a predictions list."""
    body, content_type = multipart_body(image.read_bytes(), image.name)
    try:
        response = httpx.post(url + path, content=body, headers={"Content-Type": content_type}, timeout=120)
        answer = response.json()
    except (httpx.HTTPError, ValueError) as error:
        raise BenchmarkError(f"POST {path}: {type(error).__name__}: {error}") from None
    if (
        response.status_code != 200
        or answer.get("success") is not True
        or not isinstance(answer.get("predictions"), list)
    ):
        raise BenchmarkError(f"POST {path} answered {response.status_code}: {response.text[:300]}")
    return answer


def measure(
    target: Target, url: str, image: Path, concurrency: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """`target` under a closed loop at `concurrency`, from a separate load-generator process."""
    run = run_load(
        "closed",
        url,
        image,
        workdir / f"{target.key}-c{concurrency}.json",
        args.duration,
        REQUEST_TIMEOUT_S,
        path=target.path,
        concurrency=concurrency,
        warmup=args.warmup,
    )
    return {
        "target": target.key,
        "server": target.server,
        "endpoint": f"POST {target.path}",
        "concurrency": concurrency,
        **summarize(run.phase("load"), args.duration),
        "client_cpu_ms_per_request": run.client_cpu_s * 1e3 / max(len(run.records), 1),
        "errors": run.errors,
    }


def peer_input_hw(session: Any, imgsz: tuple[int, int], stride: int, image: dict[str, Any]) -> tuple[int, int]:
    """The (height, width) Ultralytics feeds the model in yolo-frigate: a static model's fixed size; a dynamic one
    (batch dimension named, Ultralytics' test) letterboxed rect into its default 640, as no imgsz is passed."""
    if not isinstance(session.get_outputs()[0].shape[0], str):
        return imgsz
    size = ULTRALYTICS_DEFAULT_IMGSZ
    box = letterbox(image["height"], image["width"], (size, size), stride, rect=True)
    return box.input_height, box.input_width


def evaluate(
    rows: Sequence[dict[str, Any]], references: dict[str, dict[str, Any]]
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """The ratios of issue 14's goals for each service route, the peer against the Ultralytics loop, and the goals."""
    by = {(row["target"], row["concurrency"]): row for row in rows}

    def figure(target: Target, concurrency: int, name: str) -> float | None:
        return by.get((target.key, concurrency), {}).get(name)

    latency, throughput = GOAL_CONCURRENCY_LATENCY, GOAL_CONCURRENCY_THROUGHPUT
    peer_p50, peer_rps = figure(PEER_TARGET, latency, "p50_ms"), figure(PEER_TARGET, throughput, "throughput_rps")
    ultralytics_p50 = references.get("ultralytics", {}).get("p50_ms")
    ratios: dict[str, float | None] = {}
    goals = []
    for target in (SERVICE_NATIVE, SERVICE_DEEPSTACK):
        p50_key, rps_key = f"{target.key}_p50_c{latency}_over_peer", f"{target.key}_rps_c{throughput}_over_peer"
        ratios[p50_key] = ratio(figure(target, latency, "p50_ms"), peer_p50)
        ratios[rps_key] = ratio(figure(target, throughput, "throughput_rps"), peer_rps)
        ratios[f"{target.key}_p50_c{latency}_over_ultralytics"] = ratio(
            figure(target, latency, "p50_ms"), ultralytics_p50
        )
        goals.append(
            goal(f"service {target.path} p50 @c{latency} / {PEER}'s", ratios[p50_key], P50_OVER_PEER_GOAL, True)
        )
        goals.append(
            goal(
                f"service {target.path} req/s @c{throughput} / {PEER}'s",
                ratios[rps_key],
                THROUGHPUT_OVER_PEER_GOAL,
                at_most=False,
            )
        )
    ratios[f"yolo_frigate_p50_c{latency}_over_ultralytics"] = ratio(peer_p50, ultralytics_p50)
    return ratios, goals


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Install or reuse the peer, references (first half), every route at every level, references (second half)."""
    requirements = peer_requirements()
    peer_python = ensure_peer_venv(args.peer_venv.expanduser().resolve(), requirements)
    versions = peer_versions(peer_python)
    image = args.image or default_image(workdir)
    try:
        image_info = describe_image(image)
    except ImageError as error:
        raise SystemExit(f"--image {image}: {error}") from None
    plan = plan_execution(0, 0, "cpu")  # the service's own choice, which it makes with its defaults
    try:
        references = References(args.model, image, "cpu", plan, with_ultralytics=True)
    except (DeviceError, ModelError) as error:
        raise SystemExit(f"cannot run the references: {error}") from None
    info = references.info
    service_hw = tuple(int(side) for side in references.tensor.shape[2:])
    peer_hw = peer_input_hw(references.session, info.imgsz, info.stride, image_info)
    like_for_like = peer_hw == service_hw
    if not like_for_like:
        print(
            f"peers: NOTE {PEER} runs this model at {peer_hw[0]}x{peer_hw[1]} "
            f"(Ultralytics' default imgsz; it passes none), the service at {service_hw[0]}x{service_hw[1]}: not like "
            "for like. Pass a static export (see --help) to compare the same work.",
            file=sys.stderr,
        )

    first_half = args.reference_runs // 2
    references.measure(references.before, first_half, REFERENCE_WARMUP)
    levels = sorted(set(args.concurrency))
    rows = []
    peer_log = args.peer_venv.expanduser().resolve() / "server.log"
    with ExitStack() as servers:
        print("peers: starting the service", file=sys.stderr)
        service = servers.enter_context(ServiceProcess(ServiceSettings(model=args.model), workdir / "service.log"))
        native_answer = service.check_detect(image)
        service_answer = check_deepstack(service.url, DEEPSTACK_PATH, image)
        print(f"peers: starting {PEER}", file=sys.stderr)
        try:
            peer = servers.enter_context(PeerProcess(peer_python, args.model, workdir, peer_log))
            peer_answer = check_deepstack(peer.url, PEER_PATH, image)
        except BenchmarkError as error:
            reason = str(error).splitlines()[0].rstrip(":")
            raise SystemExit(
                f"{PEER} did not become ready: {reason[:300]} (last log line: {last_line(peer_log)}; log: {peer_log})"
            ) from None
        urls = {SERVICE_NATIVE.key: service.url, SERVICE_DEEPSTACK.key: service.url, PEER_TARGET.key: peer.url}
        peer_command = " ".join(peer.command())
        for concurrency in levels:
            for target in TARGETS:
                print(f"peers: {target.server} POST {target.path}, concurrency {concurrency}", file=sys.stderr)
                rows.append(measure(target, urls[target.key], image, concurrency, args, workdir))
    references.measure(references.after, args.reference_runs - first_half, REFERENCE_WARMUP)

    reference_summary = references.summary()
    ratios, goals = evaluate(rows, reference_summary)
    return {
        "model": str(args.model),
        "model_input": {"dynamic_hw": info.dynamic_hw, "imgsz": list(info.imgsz), "stride": info.stride},
        "image": image_info,
        "concurrency": levels,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "load_generator": "benchmarks/loadgen.py in a separate process, closed loop, raw client, multipart "
        "field 'image'",
        "service": {
            "command": "python -m service",
            "environment": ServiceSettings(model=args.model).environment(),
            "plan": dataclasses.asdict(plan),
            "input_hw": list(service_hw),
            "check_detections": len(native_answer["results"][0].get("detections", [])),
            "check_predictions_deepstack": len(service_answer["predictions"]),
            "deepstack_min_confidence_default": 0.4,
        },
        "peer": {
            "name": PEER,
            "requirements": requirements,
            "versions": versions,
            "venv": str(peer_python.parents[1]),
            "command": peer_command,
            "settings": "ONNX Runtime profile (--runtime onnx) on --device cpu; every other option its default "
            "(conf 0.25, iou 0.45, one model instance serialized by a lock, inference in a worker thread)",
            "input_hw": list(peer_hw),
            "check_predictions": len(peer_answer["predictions"]),
        },
        "like_for_like": like_for_like,
        "references": reference_summary,
        "rows": rows,
        "ratios": ratios,
        "goals": goals,
    }


def print_report(report: dict[str, Any]) -> None:
    service_hw, peer_hw = report["service"]["input_hw"], report["peer"]["input_hw"]
    plan = report["service"]["plan"]
    print(
        f"\nservice: {plan['instances']} instances x {plan['threads']} threads, solo session "
        f"{solo_text(plan['solo_threads'], plan['threads'])} (its defaults), input "
        f"{service_hw[0]}x{service_hw[1]}; {PEER} {report['peer']['versions'].get(PEER)} (Ultralytics "
        f"{report['peer']['versions'].get('ultralytics')}, ONNX Runtime {report['peer']['versions'].get('onnxruntime')}"
        f"), input {peer_hw[0]}x{peer_hw[1]}; closed loop, {report['duration_s']:g} s per route and level:"
    )
    peer_rows = {row["concurrency"]: row for row in report["rows"] if row["target"] == PEER_TARGET.key}
    header = (
        f"{'server':<14}{'endpoint':<27}{'conc':>5}{'requests':>10}{'failed':>8}{'req/s':>9}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'p99 ms':>9}{'p50/peer':>10}{'rps/peer':>10}"
    )
    print(header)
    print("-" * len(header))
    for target in TARGETS:
        for row in (row for row in report["rows"] if row["target"] == target.key):
            peer = peer_rows.get(row["concurrency"], {})
            cells = (ratio(row["p50_ms"], peer.get("p50_ms")), ratio(row["throughput_rps"], peer.get("throughput_rps")))
            p50_peer, rps_peer = ("-" if cell is None else f"{cell:.3f}" for cell in cells)
            print(
                f"{row['server']:<14}{row['endpoint']:<27}{row['concurrency']:>5}{row['requests']:>10}"
                f"{row['failed']:>8}{row['throughput_rps']:>9.1f}{format_ms(row['p50_ms']):>9}"
                f"{format_ms(row['p95_ms']):>9}{format_ms(row['p99_ms']):>9}{p50_peer:>10}{rps_peer:>10}"
            )
            if row["errors"]:
                print(f"      client errors: {row['errors']}")
    print(f"\nsingle-stream references in this process (servers not running), input {service_hw[0]}x{service_hw[1]}:")
    cases = (("ultralytics", "YOLO(onnx).predict loop"), ("raw", "raw session.run"), ("raw_solo", "raw, solo session"))
    for name, label in cases:
        if name not in report["references"]:
            continue
        row = report["references"][name]
        drift = row["after_over_before"]
        print(
            f"  {label:<26} p50 {format_ms(row['p50_ms'])} ms  p95 {format_ms(row['p95_ms'])} ms  "
            f"p99 {format_ms(row['p99_ms'])} ms  ({row['runs']} runs; after/before "
            f"{'-' if drift is None else f'{drift:.3f}'})"
        )
    print("\ngoals:")
    print_goals(report["goals"])
    if not report["like_for_like"]:
        print(
            f"  (not like for like: {PEER} ran the model at {peer_hw[0]}x{peer_hw[1]}, the service at "
            f"{service_hw[0]}x{service_hw[1]}; pass a static export with --model for the same work, see --help)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return run_and_report(args, "peers", run_benchmark, print_report)


if __name__ == "__main__":
    sys.exit(main())
