"""``python -m detector predict SOURCE --model M.onnx``: batch prediction with the service's own engine."""

from __future__ import annotations

import argparse
import glob
import json
from collections.abc import Iterator
from pathlib import Path

from engine.images import IMAGE_SUFFIXES

from .cli import UsageError


def resolve_sources(source: str) -> list[Path]:
    """An image file, a folder (its images, sorted, not recursive), or a glob pattern (``'data/**/*.jpg'``)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(f"no images found at {source!r} (a file, a folder of images, or a glob pattern)")
    return files


def batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def coco_records(image: Path, prediction) -> list[dict]:
    """COCO results entries (``image_id``, ``category_id`` = class index, ``bbox`` x, y, w, h, ``score``)."""
    image_id = int(image.stem) if image.stem.isdigit() else image.stem
    return [
        {"image_id": image_id, "category_id": d.class_id, "score": round(d.confidence, 5),
         "bbox": [round(d.x1, 2), round(d.y1, 2), round(d.x2 - d.x1, 2), round(d.y2 - d.y1, 2)]}
        for d in prediction.detections
    ]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="image file, folder of images, or quoted glob pattern like 'imgs/**/*.jpg'")
    parser.add_argument("--model", required=True, type=Path, help="ONNX model exported by `python -m detector export`")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: print JSON lines to stdout)")
    parser.add_argument("--format", choices=("jsonl", "coco"), default="jsonl",
                        help="jsonl: one line per image in the service's /v1/detect shape, with an 'image' key; "
                             "coco: a COCO results JSON list (default: jsonl)")
    parser.add_argument("--save-dir", type=Path, default=None, help="write annotated images here (default: none)")
    parser.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default: 0.25)")
    parser.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default: 0.7)")
    parser.add_argument("--imgsz", type=int, default=None,
                        help="inference size for dynamic models (default: the export size)")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image (default: 300)")
    parser.add_argument("--classes", default=None, help="comma-separated class ids to keep (default: all)")
    parser.add_argument("--batch", type=int, default=8,
                        help="images per model run for dynamic-batch models (default: 8)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: physical cores)")


def class_ids(text: str | None) -> list[int] | None:
    """``--classes 0,2`` -> [0, 2] (None: all classes)."""
    if not text:
        return None
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise UsageError(f"--classes {text!r}: expected comma-separated class ids, e.g. 0,2") from None


def run(args: argparse.Namespace) -> int:
    import sys

    import cv2
    from tqdm import tqdm

    from engine import Detector, EngineError
    from engine.draw import annotate

    if args.model.suffix.lower() != ".onnx":
        raise UsageError(f"--model {args.model}: expected an ONNX model (.onnx); export a checkpoint with "
                         "`python -m detector export`")
    images = resolve_sources(args.source)
    classes = class_ids(args.classes)
    detector = Detector(args.model, device=args.device, threads=args.threads)
    if args.save_dir:
        args.save_dir.mkdir(parents=True, exist_ok=True)
    sink = args.out.open("w") if args.out else sys.stdout
    coco, failures, boxes = [], 0, 0
    options = {"conf": args.conf, "iou": args.iou, "imgsz": args.imgsz, "max_det": args.max_det, "classes": classes}
    with tqdm(total=len(images), unit="img", disable=None, file=sys.stderr) as bar:
        for group in batches(images, args.batch if detector.info.dynamic_batch else 1):
            try:
                predictions = detector.predict([p.read_bytes() for p in group], **options)
            except EngineError:  # one bad file in the batch: redo it image by image to isolate it
                predictions = []
                for path in group:
                    try:
                        predictions.append(detector.predict(path.read_bytes(), **options)[0])
                    except EngineError as e:
                        predictions.append(e)
            for path, prediction in zip(group, predictions, strict=True):
                if isinstance(prediction, Exception):
                    failures += 1
                    if args.format == "jsonl":
                        sink.write(json.dumps({"image": str(path), "error": str(prediction)}) + "\n")
                    continue
                boxes += len(prediction)
                if args.format == "coco":
                    coco += coco_records(path, prediction)
                else:
                    sink.write(json.dumps({"image": str(path), **prediction.to_dict()}) + "\n")
                annotated = args.save_dir / path.name if args.save_dir else None
                if annotated and not cv2.imwrite(str(annotated), annotate(path.read_bytes(), prediction)):
                    raise OSError(f"could not write {args.save_dir / path.name} (disk full or not writable?)")
            bar.update(len(group))
    if args.format == "coco":
        json.dump(coco, sink)
    if args.out:
        sink.close()
    print(f"{len(images) - failures} images, {boxes} detections, {failures} failed"
          + (f"; results in {args.out}" if args.out else ""), file=sys.stderr)
    return 1 if failures else 0
