"""Prediction results: boxes in original image pixels, JSON-ready views and timings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One detected object; the box is x1, y1, x2, y2 in original image pixels."""

    class_id: int
    name: str
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Timing:
    """Milliseconds spent per stage. `inference` is this image's share of the batched model run."""

    decode: float
    preprocess: float
    inference: float
    postprocess: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Prediction:
    """Detections for one image, highest confidence first."""

    width: int  # original (EXIF-upright) image size
    height: int
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2 in original pixels
    confidences: np.ndarray  # (n,) float32
    class_ids: np.ndarray  # (n,) int64
    names: Mapping[int, str]
    timing: Timing

    def __len__(self) -> int:
        return len(self.class_ids)

    @property
    def detections(self) -> list[Detection]:
        return [
            Detection(class_id, self.names[class_id], confidence, *box)
            for class_id, confidence, box in zip(
                self.class_ids.tolist(), self.confidences.tolist(), self.boxes.tolist(), strict=True
            )
        ]

    def summary(self, normalize: bool = False, decimals: int = 5) -> list[dict[str, Any]]:
        """The detections in the shape of Ultralytics' `Results.summary()`.

        Each item is ``{"name", "class", "confidence", "box": {"x1", "y1", "x2", "y2"}}``; with
        `normalize`, box coordinates are divided by the image width/height.
        """
        width, height = (self.width, self.height) if normalize else (1, 1)
        return [
            {
                "name": item.name,
                "class": item.class_id,
                "confidence": round(item.confidence, decimals),
                "box": {
                    "x1": round(item.x1 / width, decimals),
                    "y1": round(item.y1 / height, decimals),
                    "x2": round(item.x2 / width, decimals),
                    "y2": round(item.y2 / height, decimals),
                },
            }
            for item in self.detections
        ]

    def to_dict(self, normalize: bool = False) -> dict[str, Any]:
        """JSON-ready ``{"width", "height", "detections": summary(normalize), "timing_ms": {...}}``."""
        return {
            "width": self.width,
            "height": self.height,
            "detections": self.summary(normalize),
            "timing_ms": self.timing.to_dict(),
        }
