"""What each attention module costs over the baseline YOLO11: ONNX Runtime CPU latency and training throughput.

Every variant at its default placement (and any extra names given) is exported to a static ONNX at --imgsz and
timed with the same session options, models interleaved round by round so machine noise hits all alike; the table
quotes each model's median and its ratio to the baseline of the same scale measured in this run. Training
throughput is a torch forward + backward pass in train mode at --train-imgsz (the part of a training step the
attention layers change), also interleaved.

    python benchmarks/attention_cost.py --scales n,s --imgsz 640 --out docs/results/attention_cost.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("YOLO_AUTOINSTALL", "False")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="n,s", help="YOLO11 scales to measure (default: n,s)")
    parser.add_argument("--modules", default=None,
                        help="comma-separated attention names (default: every registered module)")
    parser.add_argument("--extra", default="",
                        help="extra model names to include, e.g. yolo11n-cbam-both (default: none)")
    parser.add_argument("--imgsz", type=int, default=640, help="inference image size (default: 640)")
    parser.add_argument("--runs", type=int, default=30, help="timed inference rounds (default: 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: physical cores)")
    parser.add_argument("--train-imgsz", type=int, default=320, help="image size of the training pass (default: 320)")
    parser.add_argument("--train-batch", type=int, default=8, help="batch of the training pass (default: 8)")
    parser.add_argument("--train-steps", type=int, default=5,
                        help="timed training passes per model (default: 5; 0 skips)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (default: don't)")
    return parser


def export_static(name: str, imgsz: int, directory: Path) -> Path:
    from detector import build_model
    from detector import ultralytics_adapter as adapter

    checkpoint = adapter.save_checkpoint(build_model(name), directory / f"{name}.pt")
    return adapter.export(checkpoint, format="onnx", imgsz=imgsz, dynamic=False, opset=17, verbose=False)


def time_inference(paths: dict[str, Path], imgsz: int, runs: int, warmup: int, threads: int | None) -> dict:
    from engine.model import create_session

    sessions = {name: create_session(path, threads=threads) for name, path in paths.items()}
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(warmup + runs):
        for name, session in sessions.items():
            feed = {session.get_inputs()[0].name: x}
            start = time.perf_counter()
            session.run(None, feed)
            if round_ >= warmup:
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def tensors(output) -> list:
    """Every tensor in a (nested) model output."""
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in tensors(item)]
    return [output]


def time_training(names: list[str], imgsz: int, batch: int, steps: int) -> dict:
    import torch

    from detector import build_model

    models = {name: build_model(name).train() for name in names}
    x = torch.rand(batch, 3, imgsz, imgsz)
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(steps + 1):
        for name, model in models.items():
            start = time.perf_counter()
            sum(t.float().mean() for t in tensors(model(x))).backward()
            model.zero_grad(set_to_none=True)
            if step:  # the first pass allocates
                times[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def main() -> int:
    args = build_parser().parse_args()
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmarks.engine import machine, write_report
    from detector.info import measure
    from detector.models import build_model
    from modules import ATTENTION

    modules = args.modules.split(",") if args.modules else list(ATTENTION)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales.split(","):
            names = [f"yolo11{scale}", *(f"yolo11{scale}-{m}" for m in modules)]
            names += [e for e in args.extra.split(",") if e and e[6] == scale]
            print(f"exporting {len(names)} models at scale {scale}...", file=sys.stderr)
            paths = {name: export_static(name, args.imgsz, Path(tmp)) for name in names}
            latency = time_inference(paths, args.imgsz, args.runs, args.warmup, args.threads)
            train = (time_training(names, args.train_imgsz, args.train_batch, args.train_steps)
                     if args.train_steps else {})
            base = names[0]
            for name in names:
                with sdpa_kernel(SDPBackend.MATH):  # torch's FLOP counter cannot count SDPA's CPU flash kernel
                    params, gflops, _, _ = measure(build_model(name), (args.imgsz, args.imgsz))
                rows.append({
                    "model": name, "params": params, "gflops": gflops, "latency_ms": latency[name],
                    "latency_ratio": latency[name] / latency[base],
                    "train_images_per_s": train.get(name),
                    "train_ratio": train[name] / train[base] if train else None,
                })
    header = f"{'model':<22}{'params':>11}{'GFLOPs':>8}{'ORT CPU ms':>12}{'x base':>8}{'train img/s':>13}{'x base':>8}"
    print(header)
    for r in rows:
        train = f"{r['train_images_per_s']:13.2f}{r['train_ratio']:8.2f}" if r["train_ratio"] else f"{'—':>13}{'—':>8}"
        print(f"{r['model']:<22}{r['params']:>11,}{r['gflops']:8.2f}{r['latency_ms']:12.2f}{r['latency_ratio']:8.3f}{train}")
    write_report(args.out, {
        "machine": machine(), "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()},
        "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
