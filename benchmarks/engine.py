"""Benchmark the ONNX engine against raw ONNX Runtime and Ultralytics' predictor.

All cases run in one process on the same images, interleaved run by run so that load from
other processes affects them alike. Reported numbers are medians in milliseconds per image:

  raw          session.run alone on the engine's own input tensor (the floor for the engine)
  engine       Detector.predict from encoded bytes: decode, letterbox, run, NMS, scale
  ultralytics  ultralytics.YOLO(onnx).predict(path) at the same imgsz and thresholds, its ONNX Runtime
               session replaced by one with the engine's settings (same threads)
  square       session.run on the square imgsz x imgsz letterbox (dynamic models: rect saving)
  int8         engine and raw session.run on --int8-model (when given)

Example:
    python benchmarks/engine.py --model model.onnx --images a.jpg b.jpg --runs 30 --out bench.json
    python benchmarks/engine.py --model model.onnx --device cuda --out bench-gpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.loadgen import require_device, require_files
from engine import Detector, EngineError, ImageError, physical_cores
from engine.model import create_session
from engine.preprocess import letterbox, to_input_tensor

CONF = 0.25
IOU = 0.7


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="detection ONNX exported by Ultralytics")
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        help="images to run (default: bus.jpg and zidane.jpg shipped with the ultralytics package)",
    )
    parser.add_argument(
        "--imgsz", type=int, help="inference size for dynamic models (default: the export size in the metadata)"
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per image and case (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per image and case first (default: 3)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: physical cores available)")
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N, for the engine and the references (default: cpu)"
    )
    parser.add_argument("--int8-model", type=Path, help="INT8 ONNX of the same model, to compare with FP32")
    parser.add_argument("--no-ultralytics", action="store_true", help="skip the Ultralytics predictor case")
    parser.add_argument("--out", type=Path, help="write all measurements to this JSON file")
    return parser


def default_images() -> list[Path]:
    """bus.jpg and zidane.jpg from the installed ultralytics package (found without importing it)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        raise SystemExit("--images is required when ultralytics is not installed")
    assets = Path(spec.origin).parent / "assets"
    return [assets / "bus.jpg", assets / "zidane.jpg"]


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1e3


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "physical_cores_available": physical_cores(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def write_report(out: Path | None, report: dict[str, object]) -> None:
    """Write ``report`` as JSON to ``out`` (when given), creating its folder."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    images = args.images or default_images()
    named = [("--model", args.model), ("--int8-model", args.int8_model), *(("--images", path) for path in images)]
    require_files(parser, *named)
    require_device(args.device)
    try:
        run(args, images)
    except EngineError as error:  # a model or image the engine cannot use
        raise SystemExit(f"engine.py: {error}") from None


def run(args: argparse.Namespace, images: list[Path]) -> None:
    """Time every case on every image, print the table and write the report."""
    threads = args.threads or physical_cores()
    device = args.device
    detector = Detector(args.model, device=device, threads=threads)
    raw_session = create_session(args.model, device, threads=threads)
    info = detector.info
    imgsz = args.imgsz if info.dynamic_hw else None
    int8 = Detector(args.int8_model, device=device, threads=threads) if args.int8_model else None
    int8_session = create_session(args.int8_model, device, threads=threads) if args.int8_model else None
    ultralytics_device = "cpu" if device == "cpu" else device.partition(":")[2] or "0"
    yolo = None
    if not args.no_ultralytics:
        os.environ.setdefault("YOLO_AUTOINSTALL", "False")
        os.environ.setdefault("YOLO_OFFLINE", "True")
        from ultralytics import YOLO

        yolo = YOLO(str(args.model), task="detect")
    reference_imgsz = (imgsz or info.imgsz[0]) if info.dynamic_hw else list(info.imgsz)
    if yolo is not None:
        # The first call builds Ultralytics' predictor; on CPU its ONNX Runtime session is then swapped for one with
        # the engine's settings, so the comparison measures the two pipelines rather than two thread configurations
        # (on CUDA its session is kept: it may be bound to its I/O buffers).
        yolo.predict(str(images[0]), imgsz=reference_imgsz, device=ultralytics_device, verbose=False)
        if device == "cpu":
            yolo.predictor.model.backend.session = create_session(args.model, threads=threads)

    results = []
    for path in images:
        data = path.read_bytes()
        try:
            prepared = detector.prepare(data, imgsz)
        except ImageError as error:
            raise SystemExit(f"engine.py: --images {path}: {error}") from None
        feed = {info.input_name: prepared.tensor}
        stages: list[dict[str, float]] = []

        def run_engine(data: bytes = data, stages: list[dict[str, float]] = stages) -> None:
            [prediction] = detector.predict(data, conf=CONF, iou=IOU, imgsz=imgsz)
            stages.append(prediction.timing.to_dict())

        cases: dict[str, Callable[[], object]] = {
            "raw": lambda feed=feed: raw_session.run([info.output_name], feed),
            "engine": run_engine,
        }
        if yolo is not None:
            cases["ultralytics"] = lambda path=path: yolo.predict(
                str(path), conf=CONF, iou=IOU, imgsz=reference_imgsz, device=ultralytics_device, verbose=False
            )
        if info.dynamic_hw:
            height, width = prepared.letterbox.height, prepared.letterbox.width
            size = imgsz or info.imgsz[0]
            square = to_input_tensor(
                np.zeros((height, width, 3), np.uint8), letterbox(height, width, (size, size), info.stride, False)
            )
            cases["square"] = lambda square=square: raw_session.run([info.output_name], {info.input_name: square})
        if int8 is not None and int8_session is not None:
            int8_feed = {int8.info.input_name: int8.prepare(data, imgsz).tensor}
            cases["int8_raw"] = lambda feed=int8_feed: int8_session.run([int8.info.output_name], feed)
            cases["int8_engine"] = lambda data=data: int8.predict(data, conf=CONF, iou=IOU, imgsz=imgsz)

        for _ in range(args.warmup):
            for case in cases.values():
                case()
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, case in cases.items():
                samples[name].append(timed(case))
        timed_stages = stages[-args.runs :]
        results.append(
            {
                "image": path.name,
                "size": [prepared.letterbox.width, prepared.letterbox.height],
                "input_shape": list(prepared.input_shape),
                "median_ms": {name: statistics.median(values) for name, values in samples.items()},
                "engine_stage_median_ms": {
                    stage: statistics.median(timing[stage] for timing in timed_stages) for stage in timed_stages[0]
                },
                "samples_ms": samples,
            }
        )

    print_table(results)
    if args.out:
        report = {
            "command": " ".join(sys.argv),
            "model": str(args.model),
            "model_info": {
                "dynamic_hw": info.dynamic_hw,
                "dynamic_batch": info.dynamic_batch,
                "imgsz": imgsz or info.imgsz[0],
                "classes": info.num_classes,
            },
            "int8_model": str(args.int8_model) if args.int8_model else None,
            "runs": args.runs,
            "warmup": args.warmup,
            "threads": threads,
            "device": device,
            "providers": list(info.providers),
            "machine": machine(),
            "results": results,
        }
        write_report(args.out, report)


def print_table(results: list[dict]) -> None:
    """Medians per image, then the ratios the engine is judged on."""
    names = list(results[0]["median_ms"])
    header = f"{'image':<16}{'input':>10}" + "".join(f"{name:>13}" for name in names)
    print(header)
    print("-" * len(header))
    for row in results:
        shape = "x".join(map(str, row["input_shape"]))
        print(f"{row['image']:<16}{shape:>10}" + "".join(f"{row['median_ms'][name]:>13.2f}" for name in names))
    print()
    for row in results:
        stages = ", ".join(f"{stage} {ms:.2f}" for stage, ms in row["engine_stage_median_ms"].items())
        print(f"engine stages (ms), {row['image']}: {stages}")
    print()
    ratios = {
        "engine / raw": ("engine", "raw", "goal <= 1.05"),
        "engine / ultralytics": ("engine", "ultralytics", "goal <= 0.90"),
        "raw rect / raw square": ("raw", "square", "rect saving"),
        "int8 raw / fp32 raw": ("int8_raw", "raw", ""),
        "int8 engine / fp32 engine": ("int8_engine", "engine", ""),
    }
    for label, (top, bottom, note) in ratios.items():
        if top in names and bottom in names:
            values = "  ".join(
                f"{row['image']}: {row['median_ms'][top] / row['median_ms'][bottom]:.3f}" for row in results
            )
            print(f"{label:<28}{values}   {note}")
        if (top, bottom) == ("engine", "raw"):  # what the engine adds besides the unavoidable image decode
            without_decode = {
                row["image"]: (row["median_ms"]["engine"] - row["engine_stage_median_ms"]["decode"])
                / row["median_ms"]["raw"]
                for row in results
            }
            values = "  ".join(f"{image}: {ratio:.3f}" for image, ratio in without_decode.items())
            print(f"{'(engine - decode) / raw':<28}{values}")


if __name__ == "__main__":
    main()
