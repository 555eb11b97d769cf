"""A compare's trainings side by side: ``--jobs N`` local processes, each pinned to one device or to its share of
the CPU cores, or ``--ray [ADDRESS]``, one Ray task per run on a Ray cluster.

Each run trains in its own ``python -m detector.compare_parallel`` process and leaves exactly the files a sequential
compare leaves (``runs/<model>/seed<k>/``), plus ``compare.log`` with everything the process printed. A run that
fails (an exception, out of memory, a crash) leaves ``failed.json`` with its reason instead of ``result.json``; the
other runs go on, the report lists it, and the next compare retries it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from .compare import EPOCH_LINE, eta_text

FAILED = "failed.json"


def cpu_count() -> int:
    """CPU cores this process may use (affinity aware)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gpu_devices(device: str | None) -> list[str]:
    """The GPU indices of ``--device 0,1,2`` (empty for CPU or when not given)."""
    if device is None or str(device).lower() in ("cpu", "mps", ""):
        return []
    return [d.strip() for d in str(device).replace("cuda:", "").split(",") if d.strip()]


def record_failure(directory: Path, model: str, seed: int, reason: str) -> dict:
    """Write ``failed.json`` for a run and return it."""
    failure = {"model": model, "seed": seed, "reason": reason}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / FAILED).write_text(json.dumps(failure, indent=1))
    return failure


class JobsProgress:
    """The ETA of a compare whose runs train side by side: each epoch line a run prints gets the epochs done of all
    runs and the time left at the pace (wall time per epoch, final validations included) seen so far."""

    def __init__(self, total_epochs: int) -> None:
        self.total_epochs, self.done_epochs = total_epochs, 0
        self.start = time.perf_counter()
        self._lock = threading.Lock()

    def epoch_line(self, line: str) -> str:
        with self._lock:
            self.done_epochs += 1
            pace = (time.perf_counter() - self.start) / self.done_epochs
            left = pace * max(self.total_epochs - self.done_epochs, 0)
            return f"{line.rstrip()} {eta_text(self.done_epochs, self.total_epochs, left)}\n"


def run_jobs(plan, pending: list[tuple[str, int]], out: Path, data: Path, jobs: int, run_dir) -> list[dict]:
    """Train ``pending`` runs with up to ``jobs`` processes at once; returns the failures.

    With GPUs in ``plan.train_args["device"]`` (``0,1,2,3``) each process sees one of them, round robin over the
    job slots; on CPU each process gets ``cores // jobs`` compute threads.
    """
    progress = JobsProgress(len(pending) * plan.train_args["epochs"])
    gpus = gpu_devices(plan.train_args.get("device"))
    threads = max(1, cpu_count() // jobs)
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(jobs):
        slots.put(slot)

    def one(run: tuple[str, int]) -> dict | None:
        model, seed = run
        slot = slots.get()
        try:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            args = dict(plan.train_args)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                args["device"] = "0"
            spec = {"plan": {**asdict(plan), "train_args": args}, "model": model, "seed": seed, "data": str(data),
                    "directory": str(run_dir(out, model, seed)), "threads": threads}
            return run_process(spec, env, progress)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [f for f in pool.map(one, pending) if f is not None]


def run_process(spec: dict, env: dict, progress: JobsProgress) -> dict | None:
    """One run in a child process; its ``[compare]`` progress lines are passed through (epoch lines with the
    compare's ETA), all output is logged."""
    directory = Path(spec["directory"])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / FAILED).unlink(missing_ok=True)
    with (directory / "compare.log").open("w") as log:
        child = subprocess.Popen([sys.executable, "-m", "detector.compare_parallel", json.dumps(spec, default=str)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        tail: list[str] = []
        for line in child.stdout:
            log.write(line)
            if line.startswith("[compare]"):
                print(progress.epoch_line(line) if EPOCH_LINE.match(line) else line, end="", flush=True)
            if line.strip():
                tail = [*tail[-19:], line.rstrip()]
        code = child.wait()
    if code == 0 and (directory / "result.json").exists():
        return None
    if code < 0:
        reason = f"killed by signal {-code}" + (" (out of memory?)" if -code == 9 else "")
    else:
        reason = next((line for line in reversed(tail) if not line.startswith(" ")), f"exit code {code}")
    print(f"[compare] {spec['model']} seed {spec['seed']} FAILED: {reason} (log: {directory / 'compare.log'})",
          flush=True)
    return record_failure(directory, spec["model"], spec["seed"], reason)


def worker(spec: dict) -> None:
    """The child side of :func:`run_process`: train one run with ``spec``'s plan, device and threads."""
    from . import ultralytics_adapter as adapter
    from .compare import Plan, Progress, train_one

    adapter.set_cpu_threads(spec["threads"])
    plan = Plan(**{**spec["plan"], "weights": spec["plan"]["weights"] and Path(spec["plan"]["weights"])})
    train_one(plan, spec["model"], spec["seed"], Path(spec["directory"]), Path(spec["data"]), Progress(None, 1))


def run_ray(plan, pending: list[tuple[str, int]], out: Path, data: Path, address: str | None, run_dir) -> list[dict]:
    """Train ``pending`` runs as Ray tasks (one GPU each when the cluster has GPUs, else one CPU); returns the failures.

    Tasks write into ``out`` like local runs (on shared storage every node sees it) and also return their result and
    checkpoint, which the driver writes where they are missing (a cluster without shared storage). Ray retries a
    task whose worker died (``max_retries``); a run that raises is reported, not retried.
    """
    try:
        import ray
    except ImportError:
        from .cli import UsageError

        raise UsageError('--ray needs Ray: pip install -e ".[cluster]"') from None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    task = ray.remote(max_retries=2, retry_exceptions=False)(ray_task).options(num_gpus=1 if gpus else 0, num_cpus=1)
    futures = {}
    for model, seed in pending:
        args = {**plan.train_args, **({"device": "0"} if gpus else {})}
        spec = {"plan": {**asdict(plan), "train_args": args}, "model": model, "seed": seed, "data": str(data),
                "directory": str(run_dir(out, model, seed)), "threads": 1}
        futures[task.remote(json.dumps(spec, default=str))] = (model, seed)
    failures = []
    remaining = list(futures)
    while remaining:
        [done], remaining = ray.wait(remaining, num_returns=1)
        model, seed = futures[done]
        directory = run_dir(out, model, seed)
        try:
            returned = ray.get(done)
        except ray.exceptions.RayError as error:
            cause = getattr(error, "cause", None) or error
            reason = f"{type(cause).__name__}: {cause}".splitlines()[0]
            print(f"[compare] {model} seed {seed} FAILED on Ray: {reason}", flush=True)
            failures.append(record_failure(directory, model, seed, reason))
            continue
        for name, content in returned.items():
            if not (directory / name).exists():
                (directory / name).parent.mkdir(parents=True, exist_ok=True)
                (directory / name).write_bytes(content)
        print(f"[compare] {model} seed {seed} finished on Ray", flush=True)
    return failures


def ray_task(spec: str) -> dict[str, bytes]:
    """One run inside a Ray worker; returns the files the report needs, by path relative to the run directory."""
    from . import ultralytics_adapter as adapter
    from .compare import RESULT

    spec = json.loads(spec)
    worker(spec)
    directory = Path(spec["directory"])
    return {name: (directory / name).read_bytes() for name in (RESULT, *adapter.run_files(directory))}


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
