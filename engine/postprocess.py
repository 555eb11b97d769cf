"""Vectorised box selection (confidence filter + class-aware NMS) and mapping back to the original image."""

from __future__ import annotations

import cv2
import numpy as np

from .preprocess import MAX_IMGSZ, Letterbox

NMS_CLASS_OFFSET = 7680
"""Per-class coordinate offset that keeps classes apart in class-aware NMS (Ultralytics' `max_wh`): boxes of class
k are shifted by k times it, so it must exceed every box coordinate (inputs are at most `MAX_IMGSZ` on a side). Its
value is Ultralytics', so NMS sees the same float32 inputs and keeps the same boxes."""
assert NMS_CLASS_OFFSET >= MAX_IMGSZ, "boxes of neighbouring classes would overlap in class-aware NMS"
MAX_NMS = 30000
"""Most candidates passed to NMS; the highest-scoring ones are kept (Ultralytics' `max_nms`)."""


def select_boxes(
    output: np.ndarray,
    conf: float,
    iou: float,
    max_det: int,
    classes: np.ndarray | None,
    agnostic: bool,
    end2end: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick the detections of one image from the raw model output, in input-tensor pixels.

    Args:
        output: (4 + nc, anchors) rows of centre-xywh boxes and class scores, or, for an
            end-to-end model, (N, 6) rows of xyxy, score, class already through NMS.
        conf: keep scores strictly above this.
        iou: suppress a box whose IoU with a higher-scoring box of the same class (any class
            when `agnostic`) is above this. Not used by end-to-end models.
        max_det: keep at most this many boxes, highest scores first.
        classes: keep only these class ids (None keeps all).

    Returns:
        xyxy boxes (n, 4) float32, scores (n,) float32, class ids (n,) int64.
    """
    if end2end:
        keep = output[:, 4] > conf
        if classes is not None:
            keep &= np.isin(output[:, 5], classes)
        rows = output[keep][:max_det]
        return rows[:, :4].copy(), rows[:, 4].copy(), rows[:, 5].astype(np.int64)

    class_scores = output[4:]
    best_scores = class_scores.max(axis=0)
    candidates = np.flatnonzero(best_scores > conf)
    class_ids = class_scores[:, candidates].argmax(axis=0)
    scores = best_scores[candidates]
    if classes is not None:
        wanted = np.isin(class_ids, classes)
        candidates, class_ids, scores = candidates[wanted], class_ids[wanted], scores[wanted]
    if len(candidates) > MAX_NMS:
        strongest = np.argsort(-scores, kind="stable")[:MAX_NMS]
        candidates, class_ids, scores = candidates[strongest], class_ids[strongest], scores[strongest]
    if len(candidates) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)

    centre, half_size = output[:2, candidates].T, output[2:4, candidates].T / 2
    boxes = np.concatenate((centre - half_size, centre + half_size), axis=1)
    # Offsetting each class by NMS_CLASS_OFFSET in float32 reproduces Ultralytics' class-aware NMS input exactly.
    offset = boxes + (class_ids.astype(np.float32) * np.float32(0 if agnostic else NMS_CLASS_OFFSET))[:, None]
    offset = offset.astype(np.float64)
    rects = np.concatenate((offset[:, :2], offset[:, 2:] - offset[:, :2]), axis=1)  # x, y, w, h for OpenCV
    keep = np.asarray(cv2.dnn.NMSBoxes(rects, scores, conf, iou), dtype=np.int64).reshape(-1)[:max_det]
    return boxes[keep], scores[keep], class_ids[keep]


def scale_boxes(boxes: np.ndarray, box: Letterbox) -> np.ndarray:
    """Map xyxy boxes (in place) from the letterboxed input back to original pixels and clip them to the image."""
    boxes[:, [0, 2]] -= box.left
    boxes[:, [1, 3]] -= box.top
    boxes[:, [0, 2]] /= box.resized_width / box.width
    boxes[:, [1, 3]] /= box.resized_height / box.height
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, box.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, box.height)
    return boxes
