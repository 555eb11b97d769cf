"""KServe v2 / Triton HTTP protocol over the same models, with the binary tensor extension.

Semantics are those of Triton serving the ONNX (``python -m detector export --format triton``): the input is
the model input (a letterboxed NCHW tensor scaled to 0-1), the output the raw model output before NMS.
Requests still go through the model's queue, so they share micro-batches with native requests.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from engine import ModelInfo, RawOutput, triton
from engine.preprocess import valid_imgsz

from ..dependencies import ServiceState, State, require_api_key
from ..errors import ServiceError
from ..limits import parse_json
from ..registry import ModelEntry, ServedModel
from ..schemas import (
    InferRequest,
    InferResponse,
    KServeError,
    ModelConfig,
    ModelMetadata,
    ServerMetadata,
    inline_schema,
)
from ..settings import Settings
from ..version import SERVER_NAME, SERVER_VERSION

MODEL_VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
_HEADER_LENGTH = "Inference-Header-Content-Length"

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": KServeError, "description": meaning}
    for status, meaning in {
        400: "malformed request, wrong tensor name/type/shape, or model not ready",
        401: "missing or wrong API key",
        404: "unknown model or version",
        413: "body too large",
        503: "queue full or model not loaded",
        504: "timeout",
    }.items()
}

health_router = APIRouter(prefix="/v2", tags=["KServe v2 / Triton"])
router = APIRouter(
    prefix="/v2", tags=["KServe v2 / Triton"], dependencies=[Depends(require_api_key)], responses=_ERRORS
)


def _model(state: ServiceState, model: str, version: str | None) -> tuple[ModelEntry, ServedModel]:
    if version is not None and version != MODEL_VERSION:
        raise ServiceError(404, f"model {model!r} has only version {MODEL_VERSION}, not {version!r}")
    entry = state.registry.get(model)
    return entry, state.registry.served(entry)


def tensor_shapes(served: ServedModel) -> tuple[list[int], list[int]]:
    """Full input and output shapes with the batch axis, -1 where dynamic."""
    info = served.detector.info
    batch = -1 if info.dynamic_batch else info.batch
    height, width = (-1, -1) if info.dynamic_hw else info.imgsz
    output = list(served.output_shape)
    if info.dynamic_hw and not info.end2end:  # the number of anchors follows the input size
        output[-1] = -1
    return [batch, 3, height, width], [batch, *output]


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


@health_router.get(
    "/health/live", summary="Liveness (200 when the server runs)", response_class=Response, responses={200: {}}
)
async def server_live() -> Response:
    return Response(status_code=200)


@health_router.get(
    "/health/ready",
    summary="Readiness: 200 when every model serves, else 400 saying why",
    response_class=Response,
    responses={200: {}, 400: _ERRORS[400]},
)
async def server_ready(state: State) -> Response:
    reasons = state.registry.not_ready_reasons()
    if reasons:
        return JSONResponse({"error": "; ".join(reasons)}, status_code=400)
    return Response(status_code=200)


@router.get("/models/{model}", response_model=ModelMetadata, summary="Model metadata")
@router.get("/models/{model}/versions/{version}", response_model=ModelMetadata, include_in_schema=False)
async def model_metadata(model: str, state: State, version: str | None = None) -> dict[str, Any]:
    _, served = _model(state, model, version)
    info = served.detector.info
    input_shape, output_shape = tensor_shapes(served)
    datatype = triton.datatype(info)
    return {
        "name": model,
        "versions": [MODEL_VERSION],
        "platform": triton.PLATFORM,
        "inputs": [{"name": info.input_name, "datatype": datatype, "shape": input_shape}],
        "outputs": [{"name": info.output_name, "datatype": datatype, "shape": output_shape}],
    }


@router.get(
    "/models/{model}/ready",
    summary="Model readiness: 200 when it serves, 400 when not",
    response_class=Response,
    responses={200: {}},
)
@router.get("/models/{model}/versions/{version}/ready", response_class=Response, include_in_schema=False)
async def model_ready(model: str, state: State, version: str | None = None) -> Response:
    try:
        _model(state, model, version)
    except ServiceError as error:
        if error.status_code == 503:  # known but not loaded: "not ready" is a 4xx in the protocol
            return JSONResponse({"error": error.message}, status_code=400)
        raise
    return Response(status_code=200)


def model_config(name: str, served: ServedModel, settings: Settings) -> dict[str, Any]:
    """Triton's model configuration of model `name` as this server runs it (see `engine.triton`)."""
    info = served.detector.info
    input_shape, output_shape = tensor_shapes(served)
    return triton.model_config(
        name,
        info,
        input_shape,
        output_shape,
        max_batch_size=settings.max_batch if info.dynamic_batch else 0,
        max_queue_delay_us=round(settings.max_batch_wait_ms * 1000),
        instances=served.detector.instances,
        device=settings.device,
    )


@router.get(
    "/models/{model}/config",
    response_model=ModelConfig,
    response_model_exclude_none=True,
    summary="Triton model configuration",
)
@router.get(
    "/models/{model}/versions/{version}/config",
    response_model=ModelConfig,
    response_model_exclude_none=True,
    include_in_schema=False,
)
async def get_model_config(model: str, state: State, version: str | None = None) -> dict[str, Any]:
    _, served = _model(state, model, version)
    return model_config(model, served, state.settings)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Inflate a gzip/deflate request body, refusing more than `limit` bytes of output (413)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise ServiceError(400, f"the body is not valid {encoding} data: {error}") from None
    if len(data) > limit:
        raise ServiceError(413, f"the decompressed body is over {limit:,} bytes (DETECT_MAX_UPLOAD_BYTES)")
    if not inflater.eof:
        raise ServiceError(400, f"the {encoding} body is truncated")
    return data


async def _read_body(request: Request, settings: Settings) -> tuple[bytes, bytes]:
    """The JSON header and the binary data after it (Inference-Header-Content-Length), decompressed if needed."""
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("gzip", "deflate"):
        body = await anyio.to_thread.run_sync(_decompress, body, encoding, settings.max_upload_bytes)
    elif encoding != "identity":
        raise ServiceError(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    header_length = request.headers.get(_HEADER_LENGTH)
    if header_length is None:
        return body, b""
    if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
        raise ServiceError(
            400, f"{_HEADER_LENGTH} is {header_length!r}; it must be the JSON header's size, at most {len(body)}"
        )
    return body[: int(header_length)], body[int(header_length) :]


def _parse_request(header: bytes, settings: Settings) -> InferRequest:
    document = parse_json(header, settings, "the inference request")
    try:
        return InferRequest.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'request'}: {item['msg']}" for item in error.errors()
        )
        raise ServiceError(400, f"invalid inference request: {problems}") from None


def _input_batch(request: InferRequest, binary: bytes, info: ModelInfo, settings: Settings) -> np.ndarray:
    """The request's input tensor, checked against the model: name, datatype, shape, size, finite values."""
    if len(request.inputs) != 1:
        raise ServiceError(400, f"the model has one input {info.input_name!r}; got {len(request.inputs)} inputs")
    tensor = request.inputs[0]
    if tensor.name != info.input_name:
        raise ServiceError(400, f"unexpected input {tensor.name!r}; the model's input is {info.input_name!r}")
    datatype = triton.datatype(info)
    if tensor.datatype != datatype:
        raise ServiceError(400, f"input {tensor.name!r} must be {datatype}, got {tensor.datatype}")
    if "shared_memory_region" in tensor.parameters:
        raise ServiceError(400, "shared-memory tensors are not supported; send the data in the request")
    shape = tensor.shape
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
        raise ServiceError(400, f"input shape must be [batch, 3, height, width], got {shape}")
    batch, _, height, width = shape
    if info.dynamic_batch and batch > settings.max_batch:
        raise ServiceError(400, f"batch size {batch} is over the model's max_batch_size {settings.max_batch}")
    if not info.dynamic_batch and batch != info.batch:
        raise ServiceError(400, f"the model has a fixed batch size of {info.batch}, got {batch}")
    if not info.dynamic_hw and (height, width) != info.imgsz:
        raise ServiceError(400, f"the model input is {info.imgsz[0]}x{info.imgsz[1]}, got {height}x{width}")
    if info.dynamic_hw and not all(valid_imgsz(dim, info.stride, settings.max_imgsz) for dim in (height, width)):
        raise ServiceError(
            400,
            f"height and width must be multiples of {info.stride} up to {settings.max_imgsz} (DETECT_MAX_IMGSZ), "
            f"got {height}x{width}",
        )
    dtype = np.dtype(np.float32 if datatype == "FP32" else np.float16).newbyteorder("<")
    expected_bytes = batch * 3 * height * width * dtype.itemsize
    binary_size = tensor.parameters.get("binary_data_size")
    if binary_size is not None:
        if binary_size != expected_bytes:
            raise ServiceError(
                400,
                f"binary_data_size is {binary_size}; a {datatype} tensor of shape {shape} has {expected_bytes} bytes",
            )
        if len(binary) != binary_size:
            raise ServiceError(400, f"{len(binary)} bytes follow the JSON header; binary_data_size says {binary_size}")
        array = np.frombuffer(binary, dtype).reshape(shape)
    else:
        if binary:
            raise ServiceError(400, f"{len(binary)} bytes follow the JSON header but the input has no binary_data_size")
        if tensor.data is None:
            raise ServiceError(400, f"input {tensor.name!r} has neither data nor parameters.binary_data_size")
        try:
            array = np.asarray(tensor.data, dtype)
        except (TypeError, ValueError, OverflowError) as error:
            raise ServiceError(400, f"input data is not a {datatype} array: {error}") from None
        if array.size != expected_bytes // dtype.itemsize:
            raise ServiceError(
                400, f"input data has {array.size} values; shape {shape} needs {expected_bytes // dtype.itemsize}"
            )
        array = array.reshape(shape)
    if not np.isfinite(array).all():
        raise ServiceError(400, "input data contains NaN or infinity")
    return np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))


def _binary_output(request: InferRequest, info: ModelInfo) -> bool:
    """Whether the output goes as binary data: its own binary_data parameter, else the request's binary_data_output."""
    default = bool(request.parameters.get("binary_data_output", False))
    for output in request.outputs or []:
        if output.name != info.output_name:
            raise ServiceError(400, f"unknown output {output.name!r}; the model's output is {info.output_name!r}")
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in output.parameters:
                raise ServiceError(400, f"output parameter {unsupported!r} is not supported")
    if request.outputs:
        return bool(request.outputs[0].parameters.get("binary_data", default))
    return default


def _response(
    model: str, request: InferRequest, info: ModelInfo, outputs: list[RawOutput], binary: bool
) -> tuple[bytes, dict[str, str], str]:
    """Body, headers and media type of the inference response: the images' raw outputs stacked into one tensor."""
    datatype = triton.datatype(info)
    output = np.stack([raw.output for raw in outputs]).astype(np.float32 if datatype == "FP32" else np.float16)
    tensor: dict[str, Any] = {"name": info.output_name, "datatype": datatype, "shape": list(output.shape)}
    document: dict[str, Any] = {"model_name": model, "model_version": MODEL_VERSION}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = [tensor]
    if not binary:
        tensor["data"] = output.ravel().tolist()
        return json.dumps(document).encode(), {}, "application/json"
    data = output.astype(output.dtype.newbyteorder("<"), copy=False).tobytes()
    tensor["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps(document).encode()
    return header + data, {_HEADER_LENGTH: str(len(header))}, "application/octet-stream"


@router.post(
    "/models/{model}/infer",
    response_model=InferResponse,
    summary="Run the model on an input tensor (JSON or binary tensor extension)",
    description="The input is the model input: FP32 NCHW, RGB scaled to 0-1, letterboxed; the output is the raw "
    "model output (before NMS). Binary data: the JSON header's size in Inference-Header-Content-Length, "
    "`parameters.binary_data_size` on the input; ask for a binary output with `binary_data: true` on the "
    "output or `binary_data_output: true` on the request. gzip/deflate request bodies are accepted.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline_schema(InferRequest)},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
@router.post("/models/{model}/versions/{version}/infer", response_model=InferResponse, include_in_schema=False)
async def infer(model: str, request: Request, state: State, version: str | None = None) -> Response:
    entry, served = _model(state, model, version)
    info = served.detector.info
    header, binary = await _read_body(request, state.settings)
    infer_request = await anyio.to_thread.run_sync(_parse_request, header, state.settings)
    batch = await anyio.to_thread.run_sync(_input_batch, infer_request, binary, info, state.settings)
    binary_output = _binary_output(infer_request, info)
    outputs = await state.pipeline.infer_tensor(entry, served.detector, batch)
    body, headers, media_type = await anyio.to_thread.run_sync(
        _response, model, infer_request, info, outputs, binary_output
    )
    return Response(body, media_type=media_type, headers=headers)
