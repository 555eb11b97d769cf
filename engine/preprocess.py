"""Letterbox preprocessing, numerically identical to Ultralytics' LetterBox + predictor preprocess."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114
_SCALE = np.float32(255)

MAX_IMGSZ = 7680
"""Largest network input side (height and width, pixels) the engine runs a model at; a deployment may set a lower
limit (the service's DETECT_MAX_IMGSZ), never a higher one. Box coordinates stay below it, which class-aware NMS
relies on (see `engine.postprocess.NMS_CLASS_OFFSET`)."""


def valid_imgsz(size: object, stride: int, limit: int = MAX_IMGSZ) -> bool:
    """Whether `size` is an input side a model of `stride` can run at: an int multiple of `stride` between `stride`
    and `limit` (at most `MAX_IMGSZ`).

    Examples:
        >>> valid_imgsz(640, 32), valid_imgsz(650, 32), valid_imgsz(True, 1), valid_imgsz(8000, 32)
        (True, False, False, False)
    """
    if isinstance(size, bool) or not isinstance(size, int):
        return False
    return stride <= size <= min(limit, MAX_IMGSZ) and size % stride == 0


@dataclass(frozen=True)
class Letterbox:
    """Where an original image lies inside the network input, to map boxes back."""

    width: int  # original image size
    height: int
    resized_width: int  # size of the resized image inside the input
    resized_height: int
    left: int  # padding before the resized image
    top: int
    input_width: int  # network input size
    input_height: int


def letterbox(height: int, width: int, target: tuple[int, int], stride: int, rect: bool) -> Letterbox:
    """Fit (height, width) into `target` (height, width) keeping the aspect ratio, as Ultralytics' LetterBox does.

    With `rect`, the padded input is only as large as the next multiple of `stride` around the resized
    image (Ultralytics' `auto=True`, used for models with dynamic height/width); otherwise it is `target`.
    Each side is split in two with the same rounding as Ultralytics (``round(pad - 0.1)`` before,
    ``round(pad + 0.1)`` after) so boxes agree to the pixel.
    """
    ratio = min(target[0] / height, target[1] / width)
    resized_width, resized_height = max(round(width * ratio), 1), max(round(height * ratio), 1)
    pad_width, pad_height = target[1] - resized_width, target[0] - resized_height
    if rect:
        pad_width, pad_height = pad_width % stride, pad_height % stride
    left, right = round(pad_width / 2 - 0.1), round(pad_width / 2 + 0.1)
    top, bottom = round(pad_height / 2 - 0.1), round(pad_height / 2 + 0.1)
    return Letterbox(
        width=width,
        height=height,
        resized_width=resized_width,
        resized_height=resized_height,
        left=left,
        top=top,
        input_width=resized_width + left + right,
        input_height=resized_height + top + bottom,
    )


def to_input_tensor(image: np.ndarray, box: Letterbox, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """Resize (bilinear) and pad a BGR uint8 image into a (1, 3, H, W) RGB tensor scaled to 0-1.

    The padding is written as 114/255 directly and each channel is divided by 255 in float32,
    which reproduces Ultralytics' uint8 pad-then-divide bit for bit without an intermediate image.
    """
    if image.shape[:2] != (box.resized_height, box.resized_width):  # the image may be decoded at reduced size
        image = cv2.resize(image, (box.resized_width, box.resized_height), interpolation=cv2.INTER_LINEAR)
    tensor = np.full((1, 3, box.input_height, box.input_width), np.float32(PAD_VALUE) / _SCALE, dtype=np.float32)
    inside = tensor[0, :, box.top : box.top + box.resized_height, box.left : box.left + box.resized_width]
    for channel, plane in zip(inside, cv2.split(image)[::-1], strict=True):  # BGR planes in RGB order
        np.divide(plane, _SCALE, out=channel)
    return tensor if dtype == np.float32 else tensor.astype(dtype)
