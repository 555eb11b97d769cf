"""Reading an image once to learn its real size and whether it is usable at all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from .report import ProblemKind
from .source import IMAGE_SUFFIXES

_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
_JPEG_END_OF_IMAGE = b"\xff\xd9"


class ImageProblem(Exception):
    """Why an image cannot be used: a problem kind and a human-readable detail."""

    def __init__(self, kind: ProblemKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own decoder warnings: broken images are reported as problems instead."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the decoded image, EXIF orientation applied as training will see it.

    Decodes the whole image, so corrupt files are caught; a JPEG without its end-of-image marker is truncated.
    Raises ImageProblem.
    """
    if not path.exists():
        raise ImageProblem(ProblemKind.IMAGE_MISSING, "image file does not exist")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        supported = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ImageProblem(ProblemKind.IMAGE_UNREADABLE, f"unsupported image format {path.suffix!r} ({supported})")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageProblem(ProblemKind.IMAGE_UNREADABLE, f"cannot read: {error.strerror or error}") from error
    if not data:
        raise ImageProblem(ProblemKind.IMAGE_UNREADABLE, "empty file")
    if path.suffix.lower() in _JPEG_SUFFIXES and not data.rstrip(b"\x00").endswith(_JPEG_END_OF_IMAGE):
        raise ImageProblem(ProblemKind.IMAGE_UNREADABLE, "truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageProblem(ProblemKind.IMAGE_UNREADABLE, "corrupt image: cannot be decoded")
    height, width = image.shape[:2]
    return width, height
