"""Soak and overload test of the REST service: the long version of the CI load tests.

One python -m service on a free loopback port, loaded by benchmarks/loadgen.py in a separate process, in phases:

  baseline   --baseline-seconds at concurrency 1: the unloaded p50 that recovery is judged against
  warm-up    --warmup seconds at --concurrency, not counted (lets allocators and caches settle)
  soak       --duration seconds at --concurrency, closed loop: failed requests, p50/p95/p99 and throughput per
             --window (is p99 bounded, is it drifting?), the server's RSS after the warm-up, over time and at the end
  overload   --overload-seconds of Poisson arrivals at --overload-factor x the soak's throughput (its measured
             capacity), open loop: share of 503s and their latency, completion of the accepted requests
  recovery   as soon as the arrivals stop, one request at a time for --recovery-seconds while the backlog drains:
             time until --recovery-streak answers in a row are back within --recovery-factor x the baseline p50

Goals (met / NOT met): no failed request in the soak; RSS growth from after the warm-up to the end of the soak
< 50 MB; p99 bounded (max window p99 <= 2x the median window p99) and not drifting (late windows' median
p99 <= 1.25x the early windows'); under overload, 503s answered within 50 ms (their p99).

    python benchmarks/soak.py --threads 1 --out soak.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `service` is the package, `benchmarks` the folder of these scripts

from benchmarks.engine import machine, write_report
from benchmarks.loadgen import (
    CLIENTS,
    MB,
    TRANSPORT_ERROR,
    BenchmarkError,
    LoadRun,
    Record,
    ServiceProcess,
    ServiceSettings,
    add_model_and_image_arguments,
    default_image,
    describe_image,
    format_ms,
    goal,
    latency_stats,
    non_negative_float,
    percentile,
    positive_float,
    positive_int,
    print_goals,
    require_device,
    require_files,
    rss_bytes,
    run_load,
    summarize,
)
from engine import ImageError
from service.settings import Settings

QUEUE_FULL = 503
SERVICE_DEFAULT = {name: field.default for name, field in Settings.model_fields.items()}
"""The service's own defaults, which the service arguments below keep unless told otherwise."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service = parser.add_argument_group("service")
    add_model_and_image_arguments(service)
    service.add_argument("--device", default=SERVICE_DEFAULT["device"],
                         help=f"DETECT_DEVICE: cpu, cuda or cuda:N (default: {SERVICE_DEFAULT['device']})")
    service.add_argument("--threads", type=positive_int, help="DETECT_THREADS (default: chosen by the service)")
    service.add_argument("--instances", type=positive_int, help="DETECT_INSTANCES (default: chosen by the service)")
    service.add_argument("--max-batch", type=positive_int, default=SERVICE_DEFAULT["max_batch"],
                         help=f"DETECT_MAX_BATCH (default: {SERVICE_DEFAULT['max_batch']})")
    service.add_argument(
        "--max-batch-wait-ms", type=non_negative_float, default=SERVICE_DEFAULT["max_batch_wait_ms"],
        help=f"DETECT_MAX_BATCH_WAIT_MS (default: {SERVICE_DEFAULT['max_batch_wait_ms']:g})"
    )
    service.add_argument(
        "--queue-size",
        type=positive_int,
        default=SERVICE_DEFAULT["queue_size"],
        help=f"DETECT_QUEUE_SIZE: requests waiting before 503 (default: {SERVICE_DEFAULT['queue_size']}, the service's "
        "default)",
    )
    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=positive_int, default=16, help="closed-loop concurrency (default: 16)")
    load.add_argument("--baseline-seconds", type=positive_float, default=5.0, help="baseline at c1 (default: 5)")
    load.add_argument("--warmup", type=non_negative_float, default=10.0, help="warm-up seconds (default: 10)")
    load.add_argument("--duration", type=positive_float, default=60.0, help="soak seconds (default: 60)")
    load.add_argument(
        "--window", type=positive_float, default=10.0, help="seconds per soak window for the tables (default: 10)"
    )
    load.add_argument(
        "--overload-factor",
        type=positive_float,
        default=4.0,
        help="overload arrival rate as a multiple of the soak throughput (default: 4)",
    )
    load.add_argument(
        "--overload-seconds", type=positive_float, default=20.0, help="seconds of overload arrivals (default: 20)"
    )
    load.add_argument(
        "--recovery-seconds",
        type=positive_float,
        default=10.0,
        help="seconds of one-at-a-time probes after the overload (default: 10)",
    )
    load.add_argument(
        "--recovery-factor",
        type=positive_float,
        default=1.5,
        help="a probe is back to normal within this multiple of the baseline p50 (default: 1.5)",
    )
    load.add_argument(
        "--recovery-streak",
        type=positive_int,
        default=3,
        help="normal probes in a row that count as recovered (default: 3)",
    )
    load.add_argument(
        "--max-connections", type=positive_int, default=512, help="overload client's connection limit (default: 512)"
    )
    load.add_argument("--seed", type=int, default=0, help="seed of the overload arrival times (default: 0)")
    load.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="raw",
        help="load generator's HTTP client: raw (lean asyncio keep-alive) or httpx (default: raw)",
    )
    load.add_argument(
        "--timeout", type=positive_float, default=60.0, help="client timeout of one request in seconds (default: 60)"
    )
    limits = parser.add_argument_group("goals")
    limits.add_argument(
        "--rss-growth-limit-mb", type=positive_float, default=50.0, help="RSS growth goal in MB (default: 50)"
    )
    limits.add_argument(
        "--p99-spread-limit",
        type=positive_float,
        default=2.0,
        help="goal: max window p99 / median window p99 (default: 2)",
    )
    limits.add_argument(
        "--p99-drift-limit",
        type=positive_float,
        default=1.25,
        help="goal: median p99 of the later half of the windows / of the earlier half (default: 1.25)",
    )
    limits.add_argument(
        "--reject-latency-limit-ms",
        type=positive_float,
        default=50.0,
        help="goal: p99 latency of the overload's 503 answers in ms (default: 50)",
    )
    parser.add_argument(
        "--rss-interval", type=positive_float, default=0.5, help="seconds between RSS samples (default: 0.5)"
    )
    parser.add_argument("--out", type=Path, help="write everything measured to this JSON file")
    return parser


class RssSampler:
    """Samples a process's RSS in a background thread: (CLOCK_MONOTONIC seconds, MB) pairs."""

    def __init__(self, pid: int, interval_s: float) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), rss_bytes(self.pid) / MB))
            except OSError:  # the process is gone
                return
            self._stop.wait(self.interval_s)

    def at(self, moment: float) -> float | None:
        """The last sample taken at or before `moment` (None before the first)."""
        earlier = [mb for taken, mb in self.samples if taken <= moment]
        return earlier[-1] if earlier else None


def soak_windows(run: LoadRun, duration_s: float, window_s: float, rss: RssSampler) -> list[dict[str, Any]]:
    """Per window of the soak: counts, throughput, p50/p95/p99 of the 200s and the server RSS at its end."""
    count = math.ceil(duration_s / window_s - 1e-9)
    rows = []
    for index in range(count):
        start, end = index * window_s, min((index + 1) * window_s, duration_s)
        records = [record for record in run.phase("load") if start <= record.sent_s < end]
        summary = summarize(records, end - start)
        rows.append(
            {
                "start_s": start,
                "end_s": end,
                **{
                    key: summary[key]
                    for key in ("requests", "ok", "failed", "throughput_rps", "p50_ms", "p95_ms", "p99_ms")
                },
                "rss_mb": rss.at(run.t0_monotonic + end),
            }
        )
    return rows


def p99_stability(windows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """spread: max window p99 / median window p99; drift: median p99 of the later half / of the earlier half."""
    p99s = [window["p99_ms"] for window in windows if window["p99_ms"] is not None]
    if not p99s:
        return {"spread": None, "drift": None}
    half = len(p99s) // 2
    drift = statistics.median(p99s[-half:]) / statistics.median(p99s[:half]) if half else None
    return {"spread": max(p99s) / statistics.median(p99s), "drift": drift}


def overload_summary(run: LoadRun, target_rate: float) -> dict[str, Any]:
    """503 share and latency, completion of the accepted requests, and how well the client kept the rate.

    Latencies "from_schedule" count from the request's scheduled arrival (no coordinated omission); the 503
    latency the goal is about counts from the moment the request was sent, so that the client's lag is not
    charged to the service.
    """
    arrivals = run.phase("load")
    statuses = Counter(record.status for record in arrivals)
    rejected = [record for record in arrivals if record.status == QUEUE_FULL]
    ok = [record.latency_ms for record in arrivals if record.status == 200]
    accepted = len(arrivals) - len(rejected)
    arrivals_s = run.arrivals_end_s or 0.0
    return {
        "target_rate_rps": target_rate,
        "achieved_rate_rps": len(arrivals) / arrivals_s if arrivals_s else None,
        "sent": len(arrivals),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "rejected_503": len(rejected),
        "rejected_share": len(rejected) / len(arrivals) if arrivals else None,
        # From the moment the request was sent: how fast the service refuses (the client's lag is its own).
        "rejected_latency": latency_stats([record.latency_ms - record.lag_ms for record in rejected]),
        "rejected_latency_from_schedule": latency_stats([record.latency_ms for record in rejected]),
        "accepted": accepted,
        "completed": len(ok),
        "completed_share_of_accepted": len(ok) / accepted if accepted else None,
        "transport_errors": statuses.get(TRANSPORT_ERROR, 0),
        "completed_latency_from_schedule": latency_stats(ok),
        "client_lag_p99_ms": percentile([record.lag_ms for record in arrivals], 99) if arrivals else None,
        "client_errors": run.errors,
    }


def recovery_summary(run: LoadRun, baseline_p50_ms: float, factor: float, streak: int) -> dict[str, Any]:
    """Seconds from the end of the overload arrivals until the first of `streak` normal probes in a row answered."""
    probes: list[Record] = run.phase("probe")
    limit_ms = factor * baseline_p50_ms
    normal = [record.status == 200 and record.latency_ms <= limit_ms for record in probes]
    recovered_s = None
    for index in range(len(probes) - streak + 1):
        if all(normal[index : index + streak]):
            first = probes[index]
            recovered_s = first.sent_s + first.latency_ms / 1e3 - (run.arrivals_end_s or 0.0)
            break
    return {
        "probes": len(probes),
        "normal_latency_limit_ms": limit_ms,
        "recovered_after_s": recovered_s,
        "first_probe_latencies_ms": [record.latency_ms for record in probes[:5]],
        "first_probe_statuses": [record.status for record in probes[:5]],
    }


def evaluate(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    soak, rss, stability = report["soak"], report["rss_mb"], report["soak"]["p99_stability"]
    rejected_p99 = report["overload"]["rejected_latency"]["p99_ms"]
    return [
        goal("soak: failed requests", soak["failed"], 0, at_most=True, unit="requests"),
        goal("soak: RSS growth after warm-up", rss["growth"], args.rss_growth_limit_mb, at_most=True, unit="MB"),
        goal("soak: p99 spread (max / median window)", stability["spread"], args.p99_spread_limit, at_most=True),
        goal("soak: p99 drift (later / earlier windows)", stability["drift"], args.p99_drift_limit, at_most=True),
        goal("overload: 503 latency p99", rejected_p99, args.reject_latency_limit_ms, at_most=True, unit="ms"),
    ]


def print_report(report: dict[str, Any]) -> None:
    baseline, soak, overload, recovery = (report[key] for key in ("baseline", "soak", "overload", "recovery"))
    rss = report["rss_mb"]
    print(f"\nbaseline c1: p50 {format_ms(baseline['p50_ms'])} ms, {baseline['throughput_rps']:.1f} req/s")
    print(
        f"soak c{report['concurrency']} for {soak['duration_s']:g} s: {soak['requests']} requests, "
        f"{soak['failed']} failed, {soak['throughput_rps']:.1f} req/s, p50 {format_ms(soak['p50_ms'])} / "
        f"p95 {format_ms(soak['p95_ms'])} / p99 {format_ms(soak['p99_ms'])} ms"
    )
    header = (
        f"{'window s':>10}{'requests':>10}{'failed':>8}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'RSS MB':>9}"
    )
    print(header)
    print("-" * len(header))
    for window in soak["windows"]:
        rss_text = "-" if window["rss_mb"] is None else f"{window['rss_mb']:.1f}"
        print(
            f"{window['start_s']:>4.0f}-{window['end_s']:<5.0f}{window['requests']:>10}{window['failed']:>8}"
            f"{window['throughput_rps']:>8.1f}{format_ms(window['p50_ms']):>9}{format_ms(window['p95_ms']):>9}"
            f"{format_ms(window['p99_ms']):>9}{rss_text:>9}"
        )
    print(
        f"RSS MB: ready {rss['ready']:.1f}, after warm-up {rss['after_warmup']:.1f}, end of soak "
        f"{rss['end_of_soak']:.1f} (peak {rss['soak_peak']:.1f}), end {rss['end']:.1f}; growth {rss['growth']:+.1f}"
    )
    rejected = overload["rejected_latency"]
    completed = overload["completed_latency_from_schedule"]
    share = overload["rejected_share"]
    completion = overload["completed_share_of_accepted"]
    print(
        f"\noverload at {overload['target_rate_rps']:.1f} req/s ({report['overload_factor']:g}x capacity) for "
        f"{report['overload_seconds']:g} s: {overload['sent']} sent, statuses {overload['statuses']}"
    )
    print(
        f"  503: {'-' if share is None else f'{share:.1%}'} of requests, latency p50 {format_ms(rejected['p50_ms'])}"
        f" / p99 {format_ms(rejected['p99_ms'])} / max {format_ms(rejected['max_ms'])} ms from sending"
    )
    print(
        f"  accepted: {overload['accepted']}, completed {overload['completed']} "
        f"({'-' if completion is None else f'{completion:.1%}'}), latency from arrival p50 "
        f"{format_ms(completed['p50_ms'])} / p99 {format_ms(completed['p99_ms'])} ms; "
        f"client lag p99 {format_ms(overload['client_lag_p99_ms'])} ms"
    )
    recovered = recovery["recovered_after_s"]
    print(
        f"  recovery: {'not within the probe period' if recovered is None else f'{recovered:.2f} s'} "
        f"(normal: 200 within {recovery['normal_latency_limit_ms']:.1f} ms; first probes "
        + ", ".join(
            f"{status} in {ms:.0f} ms"
            for status, ms in zip(recovery["first_probe_statuses"], recovery["first_probe_latencies_ms"], strict=True)
        )
        + ")"
    )
    print("\ngoals:")
    print_goals(report["goals"])


def run_phases(server: ServiceProcess, image: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Baseline, warm-up, soak, overload and recovery against one running service."""
    server.check_detect(image)
    common = {"url": server.url, "image": image, "timeout_s": args.timeout, "client": args.client}
    rss = {"ready": server.rss_mb()}

    print("baseline", file=sys.stderr)
    baseline_run = run_load(
        "closed", out=workdir / "baseline.json", duration_s=args.baseline_seconds, concurrency=1, **common
    )
    baseline = summarize(baseline_run.phase("load"), args.baseline_seconds)
    if baseline["p50_ms"] is None:
        raise SystemExit(f"the baseline completed no request: {baseline_run.errors}")

    warmup = None
    if args.warmup > 0:
        print("warm-up", file=sys.stderr)
        warmup_run = run_load(
            "closed", out=workdir / "warmup.json", duration_s=args.warmup, concurrency=args.concurrency, **common
        )
        warmup = summarize(warmup_run.phase("load"), args.warmup)
    rss["after_warmup"] = server.rss_mb()

    print("soak", file=sys.stderr)
    with RssSampler(server.pid, args.rss_interval) as sampler:
        soak_run = run_load(
            "closed", out=workdir / "soak.json", duration_s=args.duration, concurrency=args.concurrency, **common
        )
    rss["end_of_soak"] = server.rss_mb()
    rss["soak_peak"] = max([mb for _, mb in sampler.samples] + [rss["end_of_soak"]])
    rss["growth"] = rss["end_of_soak"] - rss["after_warmup"]
    soak = summarize(soak_run.phase("load"), args.duration)
    windows = soak_windows(soak_run, args.duration, args.window, sampler)
    if soak["throughput_rps"] <= 0:
        raise SystemExit(f"the soak completed no request, so there is no capacity to overload: {soak_run.errors}")

    rate = args.overload_factor * soak["throughput_rps"]
    print(f"overload at {rate:.1f} req/s, then recovery", file=sys.stderr)
    overload_run = run_load(
        "open",
        out=workdir / "overload.json",
        duration_s=args.overload_seconds,
        rate=rate,
        probe_seconds=args.recovery_seconds,
        max_connections=args.max_connections,
        seed=args.seed,
        **common,
    )
    rss["end"] = server.rss_mb()
    return {
        "baseline": baseline,
        "warmup": warmup,
        "soak": {**soak, "client_errors": soak_run.errors, "windows": windows, "p99_stability": p99_stability(windows)},
        "rss_mb": {**rss, "soak_timeline": [[taken - soak_run.t0_monotonic, mb] for taken, mb in sampler.samples]},
        "overload": overload_summary(overload_run, rate),
        "recovery": recovery_summary(overload_run, baseline["p50_ms"], args.recovery_factor, args.recovery_streak),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_files(parser, ("--model", args.model), ("--image", args.image))
    require_device(args.device)
    settings = ServiceSettings(
        model=args.model,
        device=args.device,
        threads=args.threads,
        instances=args.instances,
        max_batch=args.max_batch,
        max_batch_wait_ms=args.max_batch_wait_ms,
        queue_size=args.queue_size,
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        workdir = Path(tmp)
        image = args.image or default_image(workdir)
        try:
            image_info = describe_image(image)
        except ImageError as error:
            raise SystemExit(f"--image {image}: {error}") from None
        try:
            with ServiceProcess(settings, workdir / "service.log") as server:
                report = run_phases(server, image, args, workdir)
        except BenchmarkError as error:
            raise SystemExit(f"soak failed: {error}") from None
    report = {
        "command": " ".join(sys.argv),
        "date": started,
        "machine": machine(),
        "model": str(args.model),
        "image": image_info,
        "device": args.device,
        "service_settings": settings.to_dict(),
        "load_generator": f"benchmarks/loadgen.py ({args.client} client) in a separate process",
        "concurrency": args.concurrency,
        "overload_factor": args.overload_factor,
        "overload_seconds": args.overload_seconds,
        **report,
    }
    report["goals"] = evaluate(report, args)
    print_report(report)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
