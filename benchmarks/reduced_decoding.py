"""Benchmark decoding JPEGs at reduced size (libjpeg scales while it decodes) against full decoding.

One run, the same model and images, measures:

  accuracy  COCO mAP50-95 and mAP50 (pycocotools) of the engine's detections on a dataset split, each image
            decoded in full and at reduced size (`Detector(reduced_decoding=...)`), at conf 0.001 as for mAP
  frames    for each image (default: Ultralytics' bus.jpg and zidane.jpg, and a 3840x2160 camera frame made from
            bus.jpg): decoding and letterboxing time in full and at reduced size (median of --runs), the
            reduction libjpeg used, and how far the boxes moved: each full-decoding box against the
            reduced-decoding box of its class that overlaps it most (lowest IoU, largest corner shift in the
            original's pixels, boxes left unmatched)

Goal: |mAP50-95 reduced - full| <= 0.002.

    python benchmarks/reduced_decoding.py --data datasets/bccd/data.yaml --out docs/results/reduced-decoding.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.data.datayaml import entry_images, read_data_yaml
from detector.data.yolo import label_path_for, read_label_file
from engine import Detector, Prediction, decode_image, decode_image_at_least, inspect_image, physical_cores
from engine.preprocess import letterbox

REPO = Path(__file__).resolve().parents[1]
MAP_CONF = 0.001
FRAME_CONF = 0.25
MATCH_IOU = 0.5  # a box is found again at this overlap, as a detection counts as true in mAP50
MAX_MAP_CHANGE = 0.002
FRAME_SIZE = (2160, 3840)  # height, width of the made-up camera frame


def coco_ground_truth(data_yaml: Path, split: str) -> tuple[dict[str, Any], list[Path]]:
    """The split's labels as a COCO ground-truth dict (image ids in file order) and its image files."""
    data = read_data_yaml(data_yaml)
    images = [image for entry in data.entries(split) for image in entry_images(entry, [])]
    if not images:
        raise SystemExit(f"{data_yaml}: the {split!r} split has no images")
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": index, "name": name} for index, name in enumerate(data.names)],
    }
    for image_id, image in enumerate(images):
        height, width = decode_image(image.read_bytes()).shape[:2]  # upright, as the boxes are
        coco["images"].append({"id": image_id, "file_name": image.name, "height": height, "width": width})
        labels = label_path_for(image)
        boxes, _ = read_label_file(labels, data.names, []) if labels.is_file() else ([], 0)
        for box in boxes:
            x0, y0, x1, y1 = (box.x0 * width, box.y0 * height, box.x1 * width, box.y1 * height)
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "iscrowd": 0,
                "category_id": data.names.index(box.class_name),
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
            })  # fmt: skip
    return coco, images


def coco_detections(detector: Detector, images: list[Path], imgsz: int | None) -> list[dict[str, Any]]:
    """The detector's boxes on `images` (image id = index) in COCO's result format."""
    results = []
    for image_id, image in enumerate(images):
        [prediction] = detector.predict(image.read_bytes(), conf=MAP_CONF, imgsz=imgsz)
        for box, score, label in zip(prediction.boxes, prediction.confidences, prediction.class_ids, strict=True):
            x0, y0, x1, y1 = (float(value) for value in box)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
    return results


def coco_map(ground_truth: dict[str, Any], detections: list[dict[str, Any]]) -> dict[str, float]:
    """mAP50-95 and mAP50 by pycocotools (its printout silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = ground_truth
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections) if detections else COCO(), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map50_95": float(evaluation.stats[0]), "map50": float(evaluation.stats[1])}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N, 4) with every box of `b` (M, 4), corners x0 y0 x1 y1."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(axis=1), (b[:, 2:] - b[:, :2]).prod(axis=1)
    return overlap / (area_a[:, None] + area_b[None, :] - overlap)


def box_changes(full: Prediction, reduced: Prediction, min_iou: float = MATCH_IOU) -> dict[str, Any]:
    """How the reduced-decoding boxes differ from the full-decoding ones: the share of full-decoding boxes that
    have a box of their class at IoU >= `min_iou` after reduced decoding, and the median IoU and largest corner
    shift (original pixels) of those matches."""
    ious, shifts = [], []
    for box, label in zip(full.boxes, full.class_ids, strict=True):
        same_class = reduced.boxes[reduced.class_ids == label]
        overlaps = box_iou(box[None], same_class)[0] if len(same_class) else np.zeros(1)
        best = int(overlaps.argmax())
        if overlaps[best] >= min_iou:
            ious.append(float(overlaps[best]))
            shifts.append(float(np.abs(same_class[best] - box).max()))
    return {
        "boxes_full": len(full.boxes),
        "boxes_reduced": len(reduced.boxes),
        "matched_share": len(ious) / len(full.boxes) if len(full.boxes) else None,
        "median_iou": statistics.median(ious) if ious else None,
        "max_corner_shift_px": max(shifts, default=None),
    }


def median_ms(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def frame_report(name: str, data: bytes, full: Detector, reduced: Detector, imgsz: int | None, runs: int) -> dict:
    """Decoding and letterboxing time (`Detector.prepare`) in full and at reduced size, and the boxes' changes."""
    header = inspect_image(data)
    target = (imgsz, imgsz) if imgsz and full.info.dynamic_hw else full.info.imgsz
    box = letterbox(header.height, header.width, target, full.info.stride, full.info.dynamic_hw)
    decoded = decode_image_at_least(data, box.resized_height, box.resized_width)
    [expected], [got] = (detector.predict(data, conf=FRAME_CONF, imgsz=imgsz) for detector in (full, reduced))
    return {
        "image": name,
        "size": f"{header.width}x{header.height}",
        "reduction": round(header.width / decoded.pixels.shape[1]),
        "prepare_full_ms": median_ms(lambda: full.prepare(data, imgsz), runs),
        "prepare_reduced_ms": median_ms(lambda: reduced.prepare(data, imgsz), runs),
        **box_changes(expected, got),
    }


def default_frames() -> dict[str, bytes]:
    import ultralytics  # only for its two sample photos

    assets = Path(ultralytics.__file__).parent / "assets"
    bus = (assets / "bus.jpg").read_bytes()
    large = cv2.resize(decode_image(bus), FRAME_SIZE[::-1], interpolation=cv2.INTER_CUBIC)
    return {
        "bus.jpg": bus,
        "zidane.jpg": (assets / "zidane.jpg").read_bytes(),
        "bus-3840x2160.jpg": cv2.imencode(".jpg", large, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
    }


def measure(
    model: Path, data_yaml: Path | None, split: str, imgsz: int | None, frames: dict[str, bytes], runs: int
) -> dict:
    full, reduced = (
        Detector(model, threads=physical_cores()),
        Detector(model, threads=physical_cores(), reduced_decoding=True),
    )
    report: dict[str, Any] = {
        "model": str(model),
        "imgsz": imgsz or full.info.imgsz[0],
        "machine": f"{platform.processor() or platform.machine()}, {physical_cores()} cores",
        "frames": [frame_report(name, data, full, reduced, imgsz, runs) for name, data in frames.items()],
    }
    if data_yaml is not None:
        truth, images = coco_ground_truth(data_yaml, split)
        scores = {mode: coco_map(truth, coco_detections(detector, images, imgsz)) for mode, detector in
                  (("full", full), ("reduced", reduced))}  # fmt: skip
        change = scores["reduced"]["map50_95"] - scores["full"]["map50_95"]
        report["accuracy"] = {
            "data": str(data_yaml), "split": split, "images": len(images), **scores,
            "map50_95_change": change, "goal_met": abs(change) <= MAX_MAP_CHANGE,
        }  # fmt: skip
    return report


def print_report(report: dict) -> None:
    print(f"model {report['model']} at imgsz {report['imgsz']} on {report['machine']}")
    print("ms: decoding and letterboxing (Detector.prepare), median; boxes: full / reduced decoding at conf "
          f"{FRAME_CONF}; found: full-decoding boxes found again at IoU >= {MATCH_IOU}, their median IoU and largest "
          "corner shift in the original's pixels")  # fmt: skip
    print(f"{'image':<24}{'size':>11}{'1/n':>5}{'full ms':>9}{'reduced ms':>12}{'boxes':>8}{'found':>7}{'IoU':>7}"
          f"{'shift px':>10}")  # fmt: skip
    for row in report["frames"]:
        found = "-" if row["matched_share"] is None else f"{row['matched_share']:.0%}"
        iou = "-" if row["median_iou"] is None else f"{row['median_iou']:.3f}"
        shift = "-" if row["max_corner_shift_px"] is None else f"{row['max_corner_shift_px']:.1f}"
        boxes = f"{row['boxes_full']}/{row['boxes_reduced']}"
        print(f"{row['image']:<24}{row['size']:>11}{row['reduction']:>5}{row['prepare_full_ms']:>9.1f}"
              f"{row['prepare_reduced_ms']:>12.1f}{boxes:>8}{found:>7}{iou:>7}{shift:>10}")  # fmt: skip
    if "accuracy" in report:
        accuracy = report["accuracy"]
        print(f"{accuracy['split']} ({accuracy['images']} images): mAP50-95 full {accuracy['full']['map50_95']:.4f}, "
              f"reduced {accuracy['reduced']['map50_95']:.4f} (change {accuracy['map50_95_change']:+.4f}; goal "
              f"|change| <= {MAX_MAP_CHANGE}: {'met' if accuracy['goal_met'] else 'NOT met'})")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = REPO / "weights" / "bccd.onnx"
    parser.add_argument("--model", type=Path, default=model, help=f"detection ONNX (default: {model})")
    parser.add_argument(
        "--data", type=Path, default=None, help="data.yaml whose split the mAP is measured on (default: none)"
    )
    parser.add_argument(
        "--split", default="val", choices=("train", "val", "test"), help="split of --data (default: val)"
    )
    parser.add_argument("--imgsz", type=int, default=None, help="inference size (default: none, the model's)")
    parser.add_argument(
        "--images",
        type=Path,
        nargs="*",
        default=None,
        help="JPEGs to time and compare boxes on (default: none: bus.jpg, zidane.jpg and a 3840x2160 frame)",
    )
    parser.add_argument("--runs", type=int, default=20, help="decodings timed per image and mode (default: 20)")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the report to this JSON file (default: none)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for path in [args.model, *(args.images or []), *([args.data] if args.data else [])]:
        if not path.is_file():
            parser.error(f"{path}: no such file")
    frames = {path.name: path.read_bytes() for path in args.images} if args.images else default_frames()
    report = measure(args.model, args.data, args.split, args.imgsz, frames, args.runs)
    print_report(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
