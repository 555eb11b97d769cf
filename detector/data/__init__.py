"""Dataset import: Pascal VOC, COCO JSON or YOLO into the YOLO layout, with a report of every problem found.

``from detector.data import import_dataset`` loads the importer (OpenCV, NumPy) on first use only, so that the
command line can be built without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .report import DatasetError, ImportReport, Problem, ProblemKind

if TYPE_CHECKING:
    from .importer import FORMATS, UnusableDatasetError, import_dataset

__all__ = [
    "FORMATS",
    "DatasetError",
    "ImportReport",
    "Problem",
    "ProblemKind",
    "UnusableDatasetError",
    "import_dataset",
]

_LAZY = {"FORMATS", "UnusableDatasetError", "import_dataset"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import importer

        return getattr(importer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
