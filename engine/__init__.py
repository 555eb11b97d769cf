"""Torch-free inference engine for Ultralytics detection ONNX models (numpy, OpenCV, ONNX Runtime).

Typical use::

    detector = Detector("model.onnx")
    detector.warmup()
    [prediction] = detector.predict(image_bytes, conf=0.25)
    prediction.to_dict()
"""

from .detector import Detector, ImageSource, Prepared, RawOutput
from .errors import (
    DeviceError,
    EngineError,
    ImageError,
    ImageTooLarge,
    InvalidImage,
    InvalidParameter,
    ModelError,
    UnsupportedImageType,
)
from .images import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    ImageHeader,
    decode_image,
    decode_image_at_least,
    inspect_image,
    read_image,
)
from .model import ExecutionPlan, ModelInfo, physical_cores, plan_execution
from .preprocess import Letterbox
from .results import Detection, Prediction, Timing

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Detection",
    "Detector",
    "DeviceError",
    "EngineError",
    "ExecutionPlan",
    "ImageError",
    "ImageHeader",
    "ImageSource",
    "ImageTooLarge",
    "InvalidImage",
    "InvalidParameter",
    "Letterbox",
    "ModelError",
    "ModelInfo",
    "Prediction",
    "Prepared",
    "RawOutput",
    "Timing",
    "UnsupportedImageType",
    "DecodedImage",
    "decode_image",
    "decode_image_at_least",
    "inspect_image",
    "physical_cores",
    "plan_execution",
    "read_image",
]
