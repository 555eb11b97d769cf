"""The native detection API: POST /v1/detect and /v1/detect/annotated."""

from __future__ import annotations

from typing import Any

import anyio
import cv2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from engine.draw import annotate

from ..dependencies import ServiceState, State, require_api_key
from ..errors import ServiceError
from ..limits import check_imgsz
from ..pipeline import DetectedImage, DetectOptions
from ..registry import ModelEntry, ServedModel
from ..schemas import (
    AnnotateJSONRequest,
    AnnotateParams,
    DetectJSONRequest,
    DetectParams,
    DetectResponse,
    error_responses,
    inline_schema,
)
from ..uploads import IMAGE_FIELD, read_detect_request

_TIMING_DECIMALS = 3


def _request_body(params_type: type[DetectParams], json_type: type[DetectParams], several: bool) -> dict[str, Any]:
    """OpenAPI request body: multipart upload or JSON with base64 images (parsed by `read_detect_request`)."""
    image = {"type": "string", "format": "binary"}
    form_properties: dict[str, Any] = {
        IMAGE_FIELD: {"type": "array", "items": image, "description": "one or more image files"} if several else image
    }
    form_properties.update(params_type.model_json_schema()["properties"])
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": [IMAGE_FIELD], "properties": form_properties}
                },
                "application/json": {"schema": inline_schema(json_type)},
            },
        }
    }


router = APIRouter(tags=["detection"], dependencies=[Depends(require_api_key)])

_PARAMETERS_NOTE = (
    "Parameters are form fields (multipart), keys of the JSON body, or query-string parameters; "
    "the same parameter in two places is refused."
)


def resolve_classes(tokens: list[int | str] | None, names: dict[int, str]) -> list[int] | None:
    """Class ids from ids or names (422 naming the unknown ones and listing the model's classes)."""
    if tokens is None:
        return None
    ids_by_name = {name: class_id for class_id, name in names.items()}
    ids, unknown = [], []
    for token in tokens:
        class_id = token if isinstance(token, int) else ids_by_name.get(token)
        if class_id is None or class_id not in names:
            unknown.append(token)
        else:
            ids.append(class_id)
    if unknown:
        known = ", ".join(f"{class_id}: {name}" for class_id, name in names.items())
        raise ServiceError(422, f"classes: unknown classes {unknown}; this model has {known}", field="classes")
    return ids


def resolve_model(state: ServiceState, params: DetectParams) -> tuple[ModelEntry, ServedModel, DetectOptions]:
    """The model the request names (404/503) and its options checked against that model and the limits."""
    check_imgsz(params.imgsz, state.settings)
    entry = state.registry.get(params.model)
    served = state.registry.served(entry)
    options = DetectOptions(
        conf=params.conf,
        iou=params.iou,
        imgsz=params.imgsz,
        max_det=params.max_det,
        classes=resolve_classes(params.classes, served.detector.info.names),
    )
    return entry, served, options


def image_result(detected: DetectedImage, normalize: bool) -> dict[str, Any]:
    """The JSON result of one image (see `ImageResult`)."""
    prediction = detected.prediction
    detections = prediction.summary()
    if normalize:
        for item, normalized in zip(detections, prediction.summary(normalize=True), strict=True):
            item["box_normalized"] = normalized["box"]
    timing = prediction.timing.to_dict() | {"decode": detected.decode_ms, "total": detected.total_ms}
    return {
        "width": prediction.width,
        "height": prediction.height,
        "detections": detections,
        "timing_ms": {stage: round(ms, _TIMING_DECIMALS) for stage, ms in timing.items()},
    }


@router.post(
    "/v1/detect",
    response_model=DetectResponse,
    summary="Detect objects in one or more images",
    description="Upload images as multipart field `image` (repeat it for several), or send JSON "
    '`{"images": [base64, ...]}`. ' + _PARAMETERS_NOTE + " Results come in request order, detections "
    "highest confidence first, boxes in original pixels.",
    responses=error_responses(400, 401, 404, 413, 415, 422, 503, 504),
    openapi_extra=_request_body(DetectParams, DetectJSONRequest, several=True),
)
async def detect(request: Request, state: State) -> JSONResponse:
    params, images = await read_detect_request(request, state.settings, DetectParams, DetectJSONRequest)
    entry, served, options = resolve_model(state, params)
    detected = await state.pipeline.detect(entry, served.detector, images, options)
    return JSONResponse({"model": entry.name, "results": [image_result(item, params.normalize) for item in detected]})


def _encode(detected: DetectedImage, image_format: str) -> bytes:
    """The image with its detections drawn, encoded as JPEG or PNG."""
    assert detected.image is not None
    canvas = annotate(detected.image, detected.prediction)
    ok, encoded = cv2.imencode(".jpg" if image_format == "jpeg" else ".png", canvas)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the annotated image as {image_format}")
    return encoded.tobytes()


@router.post(
    "/v1/detect/annotated",
    response_class=Response,
    summary="Detect objects in one image and get it back with the boxes drawn",
    description="Same input and parameters as /v1/detect (one image), plus `format` (jpeg or png). "
    + _PARAMETERS_NOTE
    + " The number of detections is in the X-Detection-Count header.",
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "the annotated image"},
        **error_responses(400, 401, 404, 413, 415, 422, 503, 504),
    },
    openapi_extra=_request_body(AnnotateParams, AnnotateJSONRequest, several=False),
)
async def detect_annotated(request: Request, state: State) -> Response:
    params, images = await read_detect_request(request, state.settings, AnnotateParams, AnnotateJSONRequest)
    if len(images) != 1:
        raise ServiceError(
            422, f"{IMAGE_FIELD}: send exactly one image to annotate, got {len(images)}", field=IMAGE_FIELD
        )
    entry, served, options = resolve_model(state, params)
    [detected] = await state.pipeline.detect(entry, served.detector, images, options, keep_images=True)
    encoded = await anyio.to_thread.run_sync(_encode, detected, params.format)
    return Response(
        encoded,
        media_type=f"image/{params.format}",
        headers={"X-Detection-Count": str(len(detected.prediction)), "X-Model": entry.name},
    )
