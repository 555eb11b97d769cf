"""Wall time of one small compare matrix run sequentially and with ``compare --jobs N``, in one run.

Both compares train the same models and seeds on the same data into fresh folders (latency phase included), one
after the other; the table gives each wall time and the speed-up. Data: a YOLO data.yaml (e.g. the BCCD import).

    python benchmarks/compare_jobs.py --data datasets/bccd/data.yaml --out docs/results/compare_jobs.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine import write_report  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset YAML")
    parser.add_argument("--models", default="yolo11n-eca",
                        help="variants (the baseline is added) (default: yolo11n-eca)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per model (default: 2)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2)")
    parser.add_argument("--imgsz", type=int, default=320, help="image size (default: 320)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel trainings to compare with 1 (default: 2)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser


def timed_compare(args: argparse.Namespace, jobs: int, out: Path) -> float:
    command = [sys.executable, "-m", "detector", "compare", "--data", str(args.data), "--models", args.models,
               "--seeds", str(args.seeds), "--epochs", str(args.epochs), "--imgsz", str(args.imgsz), "--workers", "2",
               "--threads", "1", "--latency-runs", "20", "--jobs", str(jobs), "--out", str(out), "plots=False"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    args = build_parser().parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sequential = timed_compare(args, 1, Path(tmp) / "sequential")
        parallel = timed_compare(args, args.jobs, Path(tmp) / "parallel")
    runs = (len(args.models.split(",")) + 1) * args.seeds
    print(f"{runs} runs x {args.epochs} epochs at {args.imgsz}, {args.data}")
    print(f"{'jobs':>6} {'wall s':>9} {'speed-up':>9}")
    print(f"{1:>6} {sequential:>9.1f} {1.0:>9.2f}")
    print(f"{args.jobs:>6} {parallel:>9.1f} {sequential / parallel:>9.2f}")
    write_report(args.out, {"runs": runs, "epochs": args.epochs, "imgsz": args.imgsz, "data": str(args.data),
                            "jobs": args.jobs, "sequential_s": sequential, "parallel_s": parallel,
                            "speedup": sequential / parallel})


if __name__ == "__main__":
    main()
