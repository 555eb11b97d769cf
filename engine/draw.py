"""Boxes, labels and confidences drawn on an image (for /v1/detect/annotated and `detector predict --save-dir`)."""

from __future__ import annotations

import cv2
import numpy as np

from .detector import ImageSource
from .images import DEFAULT_MAX_PIXELS, decode_image, read_image
from .results import Prediction

# A fixed, colour-blind-friendly palette (Okabe-Ito), in BGR; class i gets colour i mod 8.
PALETTE = [(0, 159, 230), (233, 180, 86), (115, 158, 0), (66, 228, 240), (178, 114, 0), (0, 94, 213),
           (167, 121, 204), (0, 0, 0)]


def annotate(image: ImageSource, prediction: Prediction, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A BGR copy of ``image`` (bytes, path or BGR array, EXIF-upright) with ``prediction`` drawn on it."""
    if isinstance(image, np.ndarray):
        canvas = image.copy()
    elif isinstance(image, str) or hasattr(image, "__fspath__"):
        canvas = read_image(image, max_pixels)
    else:
        canvas = decode_image(image, max_pixels)
    thickness = max(round(sum(canvas.shape[:2]) / 2 * 0.003), 2)
    scale = thickness / 3
    for d in prediction.detections:
        color = PALETTE[d.class_id % len(PALETTE)]
        p1, p2 = (int(d.x1), int(d.y1)), (int(d.x2), int(d.y2))
        cv2.rectangle(canvas, p1, p2, color, thickness, cv2.LINE_AA)
        label = f"{d.name} {d.confidence:.2f}"
        (w, h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, max(thickness - 1, 1))
        top = p1[1] - h - baseline if p1[1] - h - baseline >= 0 else p1[1]
        cv2.rectangle(canvas, (p1[0], top), (p1[0] + w, top + h + baseline), color, -1, cv2.LINE_AA)
        text_color = (255, 255, 255) if sum(color) < 450 else (0, 0, 0)
        cv2.putText(canvas, label, (p1[0], top + h), cv2.FONT_HERSHEY_SIMPLEX, scale, text_color,
                    max(thickness - 1, 1), cv2.LINE_AA)
    return canvas
