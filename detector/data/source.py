"""What a format reader hands to the importer: images with their boxes, class names and split lists."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from engine.images import IMAGE_SUFFIXES

from .report import Problem

SPLITS = ("train", "val", "test")
# Coordinates this close (relative to the image size) outside the image are rounding, not annotation errors:
# a YOLO box written with 6 decimals can end at 1.0000005.
ROUNDING_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SourceBox:
    """One box as the source states it: corners in pixels, or in [0, 1] when ``normalized``."""

    class_name: str
    x0: float
    y0: float
    x1: float
    y1: float
    normalized: bool
    path: Path
    """annotation file the box comes from"""
    line: int | None
    difficult: bool = False
    reference: str = ""
    """how to find the box in its file where no line number exists (e.g. ``annotation id 7``)"""


@dataclass
class AnnotatedImage:
    """An image file with the boxes its annotation gives, and the dataset splits that list it."""

    image: Path
    annotation: Path | None
    """file the boxes come from; None for a YOLO image without label file"""
    declared_size: tuple[int, int] | None
    """(width, height) the annotation states, if it states one: the frame its pixel coordinates are in"""
    boxes: list[SourceBox]
    splits: tuple[str, ...] = ()
    """splits whose list names this image (empty: none, or the dataset has no split lists)"""
    size_line: int | None = None
    """line of the declared size in the annotation file, where it has lines"""
    reference: str = ""
    """how to find the image's entry in a shared annotation file (e.g. ``image id 7``)"""
    dropped: int = 0
    """boxes of this image the reader could not use (malformed, unknown class...), already reported"""
    list_name: str = ""
    """the name split lists give this image (default: the image's file stem)"""

    def __post_init__(self) -> None:
        self.list_name = self.list_name or self.image.stem


@dataclass
class SourceDataset:
    """Everything a reader found. ``split_lists`` names the splits the source defines itself, None when it has none."""

    images: list[AnnotatedImage]
    class_names: list[str]
    split_lists: str | None
    problems: list[Problem] = field(default_factory=list)
    root: Path | None = None
    """folder whose train/val/test.txt lists (in it, ``ImageSets/Main/``, ``splits/``...) split the dataset, for formats
    that define no splits of their own (VOC, a single COCO JSON)"""


def parse_number(text: object) -> float | None:
    """A finite float from a string or number, or None (``nan``, ``inf``, ``abc``, None and booleans included)."""
    if isinstance(text, bool) or text is None:
        return None
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
