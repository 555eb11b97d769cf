"""Exceptions raised by the engine.

The classes carry no status codes: the service maps each class to an HTTP status
(e.g. ImageError subclasses to 4xx, ModelError/DeviceError to startup failures).
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ModelError(EngineError):
    """The model file is missing, is not ONNX, or is not a detection ONNX exported by Ultralytics."""


class DeviceError(EngineError):
    """The requested device is malformed or its ONNX Runtime execution provider is not available."""


class InvalidParameter(EngineError, ValueError):
    """An inference parameter (conf, iou, imgsz, max_det, classes) is out of range."""


class ImageError(EngineError):
    """Base class of errors about an input image."""


class InvalidImage(ImageError):
    """The bytes are empty, truncated, corrupt, or not an image at all."""


class UnsupportedImageType(ImageError):
    """The bytes are an image in a format the engine does not accept."""


class ImageTooLarge(ImageError):
    """The image header declares more pixels than the configured limit (decompression-bomb guard)."""
