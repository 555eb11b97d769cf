"""Per-request limits, decided once in the settings and checked before the work they bound: each is refused with a
4xx that names the limit and the setting that raises it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from engine import ImageError, inspect_image
from engine.preprocess import valid_imgsz

from .errors import ServiceError, from_engine_error
from .settings import Settings


def too_many_images(settings: Settings, count: int | None = None) -> ServiceError:
    """413 for a request with more images than DETECT_MAX_IMAGES (`count` when known)."""
    given = f"{count:,}" if count is not None else f"more than {settings.max_images}"
    return ServiceError(
        413,
        f"the request has {given} images; the limit is {settings.max_images} per request (DETECT_MAX_IMAGES)",
        type="too_many_images",
    )


def check_image_count(count: int, settings: Settings) -> None:
    if count > settings.max_images:
        raise too_many_images(settings, count)


def check_classes(value: Any, settings: Settings) -> None:
    """422 when a classes filter (a list, or comma-separated text) has more entries than DETECT_MAX_CLASSES,
    counted before anything is parsed or validated."""
    if value is None:
        return
    items = value if isinstance(value, list) else [value]
    count = len(items)
    if count <= settings.max_classes:
        count = sum(item.count(",") + 1 if isinstance(item, str) else 1 for item in items)
    if count > settings.max_classes:
        raise ServiceError(
            422,
            f"classes: {count:,} entries; the limit is {settings.max_classes:,} (DETECT_MAX_CLASSES)",
            field="classes",
        )


def check_imgsz(imgsz: int | None, settings: Settings) -> None:
    """422 for an inference size over DETECT_MAX_IMGSZ, the largest whose model run the memory can afford (the
    model's stride is checked by the engine, with the same function)."""
    if imgsz is not None and not valid_imgsz(imgsz, 1, settings.max_imgsz):
        raise ServiceError(
            422,
            f"imgsz: at most {settings.max_imgsz} (DETECT_MAX_IMGSZ), got {imgsz}",
            field="imgsz",
        )


def check_image_pixels(images: Iterable[tuple[str, bytes]], settings: Settings) -> None:
    """Read each (label, bytes) image's header: the first bad one is refused as it would be when decoded, one over
    DETECT_MAX_PIXELS with 413, and all of them together over DETECT_MAX_REQUEST_PIXELS with 413."""
    total = 0
    for label, data in images:
        try:
            header = inspect_image(data)
        except ImageError as error:
            raise from_engine_error(error, label) from None
        pixels = header.width * header.height
        if pixels > settings.max_pixels:
            raise ServiceError(
                413,
                f"{label}: {header.format} image is {header.width}x{header.height} = {pixels:,} pixels; "
                f"the limit is {settings.max_pixels:,} (DETECT_MAX_PIXELS)",
                type="image_too_large",
            )
        total += pixels
    if total > settings.max_request_pixels:
        raise ServiceError(
            413,
            f"the images of the request have {total:,} pixels in all; the limit is {settings.max_request_pixels:,} "
            "(DETECT_MAX_REQUEST_PIXELS)",
            type="too_many_pixels",
        )


def check_detect_json_values(body: bytes, settings: Settings) -> None:
    """413 for a native JSON body with more values than a detection request can have (its images, its classes and
    its few parameters), counted in the raw bytes before parsing: parsing holds the GIL, about 0.2 s per million
    values, and would hold up every other request."""
    limit = 2 * settings.max_images + settings.max_classes + DETECT_JSON_EXTRA_VALUES
    if body.count(b",") >= limit:  # one comma fewer than values (base64 has none; a data URL has one)
        raise ServiceError(
            413,
            f"the JSON body has more than {limit:,} values: a detection request has at most {settings.max_images} "
            f"images (DETECT_MAX_IMAGES), {settings.max_classes:,} classes (DETECT_MAX_CLASSES) and its parameters",
            type="too_many_values",
        )


DETECT_JSON_EXTRA_VALUES = 32
"""Values of a native JSON body besides its images and classes: its parameters, with room to spare."""
_CONTAINERS = frozenset({dict, list})


def _nested_deeper(document: Any, limit: int) -> bool:
    """Whether lists and objects in `document` (as json.loads makes it) nest more than `limit` levels deep; level by
    level, looking at the types of a container's items in one C-level pass."""
    level = [document] if type(document) in _CONTAINERS else []
    for _ in range(limit):
        children = []
        for node in level:
            items = node.values() if type(node) is dict else node
            if _CONTAINERS & set(map(type, items)):
                children.extend(item for item in items if type(item) in _CONTAINERS)
        if not children:
            return False
        level = children
    return True


def parse_json(body: bytes, settings: Settings, subject: str) -> Any:
    """The JSON document in `body`; 400 saying what `subject` (e.g. "the JSON body") is when it is not JSON or is
    nested deeper than DETECT_MAX_JSON_DEPTH. Run it in a worker thread; what it parses is bounded before it is read
    by DETECT_MAX_UPLOAD_BYTES."""
    too_deep = ServiceError(
        400, f"{subject} is nested too deeply: the limit is {settings.max_json_depth} levels (DETECT_MAX_JSON_DEPTH)"
    )
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ServiceError(400, f"{subject} is not valid JSON: {error}") from None
    except RecursionError:
        raise too_deep from None
    brackets = body.count(b"[") + body.count(b"{")  # an upper bound of the depth, found in C
    if brackets > settings.max_json_depth and _nested_deeper(document, settings.max_json_depth):
        raise too_deep
    return document
