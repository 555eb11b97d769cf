"""Request and response schemas of every API (they are also the OpenAPI documentation at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of `model` with its $defs substituted, for OpenAPI request bodies declared by hand."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def substitute(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return substitute(definitions[reference.removeprefix("#/$defs/")])
            return {key: substitute(value) for key, value in node.items()}
        if isinstance(node, list):
            return [substitute(item) for item in node]
        return node

    return substitute(schema)


# ---------------------------------------------------------------------------------------------- native API


class DetectParams(BaseModel):
    """Detection parameters: query string, form fields (multipart) or JSON keys. Unknown names are refused."""

    model_config = ConfigDict(extra="forbid")

    conf: float = Field(0.25, ge=0, le=1, description="keep detections whose confidence is above this")
    iou: float = Field(0.7, ge=0, le=1, description="NMS IoU threshold: overlapping boxes of a class above it merge")
    imgsz: int | None = Field(
        None,
        ge=1,
        description="inference size (long side), a multiple of the model stride; models with dynamic height/width "
        "only; default: the model's export size",
    )
    max_det: int = Field(300, ge=1, le=30000, description="most detections per image")
    classes: list[int | str] | None = Field(
        None,
        description="keep only these classes: ids or names, a list or comma-separated (e.g. `RBC,WBC` or `0,2`)",
        examples=["RBC,WBC"],
    )
    model: str | None = Field(None, description="model name (GET /v1/models); default: the default model")
    normalize: bool = Field(False, description="also give each box in coordinates normalised to 0-1 (`box_normalized`)")

    @field_validator("classes", mode="before")
    @classmethod
    def _split_classes(cls, value: Any) -> Any:
        """Accept "RBC,WBC", ["RBC", "WBC"], [0, 2] or ["0,2"]; digit strings become ids."""
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        tokens: list[Any] = []
        for item in items:
            if isinstance(item, str):
                tokens.extend(int(part) if part.isdigit() else part for part in map(str.strip, item.split(",")) if part)
            else:
                tokens.append(item)
        return tokens


class AnnotateParams(DetectParams):
    """Detection parameters plus the format of the returned image."""

    format: Literal["jpeg", "png"] = Field("jpeg", description="format of the returned image")


class DetectJSONRequest(DetectParams):
    """A JSON body: base64 images and the detection parameters."""

    images: list[str] = Field(
        min_length=1,
        description="images, base64-encoded (plain or as `data:image/...;base64,` URLs); never URLs to fetch",
    )


class AnnotateJSONRequest(AnnotateParams):
    """A JSON body for /v1/detect/annotated: exactly one base64 image and the parameters."""

    images: list[str] = Field(min_length=1, max_length=1, description="one image, base64-encoded")


class Box(BaseModel):
    """Box corners: pixels of the original (EXIF-upright) image, or 0-1 in `box_normalized`."""

    x1: float
    y1: float
    x2: float
    y2: float


class DetectionResult(BaseModel):
    """One detected object, in the shape of Ultralytics' `Results.summary()`."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(description="class name")
    class_id: int = Field(alias="class", description="class id")
    confidence: float
    box: Box
    box_normalized: Box | None = Field(None, description="the box divided by the image size (only with normalize)")


class TimingMs(BaseModel):
    """Milliseconds spent on this image per stage; `inference` is its share of the batched model run, `total` the
    request's processing time including the wait in the queue."""

    decode: float
    preprocess: float
    inference: float
    postprocess: float
    total: float


class ImageResult(BaseModel):
    """Detections of one image, highest confidence first."""

    width: int = Field(description="image width in pixels (after EXIF rotation)")
    height: int = Field(description="image height in pixels (after EXIF rotation)")
    detections: list[DetectionResult]
    timing_ms: TimingMs


class DetectResponse(BaseModel):
    """Results of POST /v1/detect, one per image in request order."""

    model: str = Field(description="name of the model that ran")
    results: list[ImageResult]


class ErrorDetail(BaseModel):
    """What was wrong."""

    status: int = Field(description="HTTP status code")
    type: str = Field(description="machine-readable kind, e.g. invalid_parameter, invalid_image, queue_full")
    message: str = Field(description="what was wrong, for people")
    field: str | None = Field(None, description="the request field the error is about (422)")
    models: list[str] | None = Field(None, description="the available models (404 for an unknown model)")


class ErrorResponse(BaseModel):
    """Every error of the native API."""

    error: ErrorDetail
    request_id: str | None = Field(None, description="the request's X-Request-ID")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries: the native error document for each status, with what it means."""
    meaning = {
        400: "corrupt or truncated image, invalid base64 or JSON",
        401: "missing or wrong API key",
        404: "unknown model (the error lists the models)",
        409: "reload failed (the old version keeps serving) or already running",
        413: "body over DETECT_MAX_UPLOAD_BYTES, image over DETECT_MAX_PIXELS, more images than DETECT_MAX_IMAGES or "
        "pixels than DETECT_MAX_REQUEST_PIXELS",
        415: "unsupported image type (sniffed from the bytes) or Content-Type",
        422: "invalid parameter (imgsz over DETECT_MAX_IMGSZ and classes over DETECT_MAX_CLASSES included): "
        "error.field names it",
        503: "queue full (Retry-After), model not loaded, shutting down, or too many connections",
        504: "processing took longer than DETECT_REQUEST_TIMEOUT_S",
    }
    return {status: {"model": ErrorResponse, "description": meaning[status]} for status in statuses}


class DynamicAxes(BaseModel):
    batch: bool = Field(description="the batch axis is dynamic (requests are micro-batched)")
    height_width: bool = Field(description="height and width are dynamic (imgsz can be chosen, rect inference)")


class ModelDescription(BaseModel):
    """A served model. Fields from the ONNX are null while it is not loaded."""

    name: str
    path: str
    default: bool = Field(description="used when a request names no model")
    ready: bool = Field(description="loaded, warmed up and serving")
    state: Literal["loading", "ready", "failed"] = Field(
        description="failed: it never loaded (see error); a failed reload keeps an older version ready"
    )
    error: str | None = Field(None, description="why the last load or reload failed")
    loaded_at: datetime | None = Field(None, description="when the version being served was loaded")
    classes: list[str] | None = Field(None, description="class names; a class id is its index")
    imgsz: list[int] | None = Field(None, description="default input size [height, width]")
    stride: int | None = None
    dynamic: DynamicAxes | None = None
    batch: int | None = Field(None, description="fixed batch size of a static-batch model (1 when dynamic)")
    end2end: bool | None = Field(None, description="the model output is already through NMS")
    precision: str | None = Field(None, description="fp32, fp16 or int8")
    architecture: Any = Field(None, description="architecture recorded by the exporter, e.g. yolo11n")
    attention: Any = Field(None, description="attention layers recorded by the exporter")
    providers: list[str] | None = Field(None, description="ONNX Runtime execution providers")


class ModelsResponse(BaseModel):
    default_model: str | None
    models: list[ModelDescription]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    """Readiness: every model loaded and warmed up."""

    ready: bool
    models: dict[str, Literal["loading", "ready", "failed"]]
    reasons: list[str] = Field(description="why the service is not ready (empty when ready)")


# ----------------------------------------------------------------------------------------- DeepStack API


class DeepStackPrediction(BaseModel):
    label: str
    confidence: float
    x_min: int
    y_min: int
    x_max: int
    y_max: int


class DeepStackResponse(BaseModel):
    """DeepStack / CodeProject.AI detection result, predictions sorted by confidence, highest first."""

    success: Literal[True]
    predictions: list[DeepStackPrediction]
    duration: float = Field(description="processing time in milliseconds")


class DeepStackModels(BaseModel):
    success: Literal[True]
    models: list[str]


class DeepStackError(BaseModel):
    success: Literal[False]
    error: str
    code: int = Field(description="HTTP status code")


# ---------------------------------------------------------------------------------------- KServe v2 API


class KServeError(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="FP32 or FP16")
    shape: list[int] = Field(description="-1 for a dynamic axis")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferTensor(BaseModel):
    """An input tensor: its data in `data` (row-major, flat or nested) or, with the binary extension, as
    `parameters.binary_data_size` bytes after the JSON header."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="binary_data: true to get the tensor as bytes after the JSON header"
    )


class InferRequest(BaseModel):
    """KServe v2 inference request: the JSON header (Inference-Header-Content-Length bytes when binary data follows)."""

    id: str | None = None
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="binary_data_output: true for every output as binary data"
    )
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when the data follows the JSON")
    data: list[float] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


class ModelConfigTensor(BaseModel):
    name: str
    data_type: str
    dims: list[int] = Field(description="without the batch axis when max_batch_size > 0; -1 where dynamic")


class DynamicBatching(BaseModel):
    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int


class InstanceGroup(BaseModel):
    count: int = Field(description="model instances: sessions that run at once (DETECT_INSTANCES)")
    kind: str = Field(description="KIND_CPU or KIND_GPU")


class ModelConfig(BaseModel):
    """Triton model configuration (the JSON form of config.pbtxt) of the ONNX as this server runs it."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[ModelConfigTensor]
    output: list[ModelConfigTensor]
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] | None = None
    parameters: dict[str, dict[str, str]] = Field(
        description="the ONNX metadata a client needs (names, imgsz, stride, task, version, architecture) as "
        "{key: {string_value}}, and `metadata`: the Python literal of a dict that Ultralytics' Triton client reads"
    )
