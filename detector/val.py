"""``python -m detector val M.onnx --data data.yaml``: mAP of an exported (FP32, FP16 or INT8) model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="ONNX model (or a .pt checkpoint, to see what export costs)")
    parser.add_argument("--data", required=True, help="dataset YAML")
    parser.add_argument("--split", choices=("val", "test", "train"), default="val",
                        help="split to evaluate (default: val)")
    parser.add_argument("--imgsz", type=int, default=None, help="image size (default: the model's export size)")
    parser.add_argument("--batch", type=int, default=1, help="batch size; static ONNX models need 1 (default: 1)")
    parser.add_argument("--conf", type=float, default=0.001, help="confidence threshold for mAP (default: 0.001)")
    parser.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default: 0.7)")
    parser.add_argument("--device", default="cpu", help="cpu or 0 for the first GPU (default: cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    from . import ultralytics_adapter as adapter
    from .cli import UsageError
    from .train import check_data

    if args.model.suffix not in (".onnx", ".pt"):
        raise UsageError(f"model {args.model}: expected an ONNX model (.onnx) or a checkpoint (.pt)")
    data = check_data(args.data, splits=(args.split,))  # only the split evaluated must be there
    options = {"data": str(data), "split": args.split, "batch": args.batch, "conf": args.conf, "iou": args.iou,
               "device": args.device}
    if args.imgsz:
        options["imgsz"] = args.imgsz
    metrics = adapter.validate(args.model, **options)
    print(f"{args.model} on {args.split}: mAP50-95 {metrics['map50_95']:.4f}  mAP50 {metrics['map50']:.4f}  "
          f"precision {metrics['precision']:.4f}  recall {metrics['recall']:.4f}")
    for name, value in metrics["per_class_map50_95"].items():
        print(f"  {name:<20} mAP50-95 {value:.4f}")
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=1))
    return 0
