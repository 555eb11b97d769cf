"""DeepStack / CodeProject.AI compatible object detection (the API Home Assistant, Blue Iris, Frigate+ ... call)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData

from ..dependencies import ServiceState, State, api_key_from_headers, check_api_key
from ..errors import ServiceError
from ..pipeline import DetectOptions
from ..schemas import DeepStackError, DeepStackModels, DeepStackResponse
from ..settings import Settings
from ..uploads import API_KEY_FIELD, IMAGE_FIELD, form_images, read_form

DEFAULT_MIN_CONFIDENCE = 0.4

router = APIRouter(prefix="/v1/vision", tags=["DeepStack / CodeProject.AI"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": DeepStackError, "description": meaning}
    for status, meaning in {
        400: "corrupt image",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "image or body too large",
        415: "unsupported image type",
        422: "invalid min_confidence or missing image",
        503: "queue full or model not loaded",
        504: "timeout",
    }.items()
}

_FORM_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [IMAGE_FIELD],
                    "properties": {
                        IMAGE_FIELD: {"type": "string", "format": "binary"},
                        "min_confidence": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "default": DEFAULT_MIN_CONFIDENCE,
                        },
                        API_KEY_FIELD: {
                            "type": "string",
                            "description": "an API key instead of the headers, sent before the image",
                        },
                    },
                }
            }
        },
    }
}


def _min_confidence(value: Any) -> float:
    """The form's min_confidence (422 unless a number between 0 and 1)."""
    if value is None or value == "":
        return DEFAULT_MIN_CONFIDENCE
    try:
        confidence = float(value)
    except (TypeError, ValueError):  # a file, or text that is not a number
        confidence = math.nan
    if not 0.0 <= confidence <= 1.0:
        raise ServiceError(
            422, f"min_confidence: must be a number between 0 and 1, got {value!r}", field="min_confidence"
        )
    return confidence


async def _authenticated_form(request: Request, settings: Settings) -> FormData:
    """The request's form, authenticated before any file in it is read: with the key header when there is one,
    else with the form field `api_key`, which must come before the first file (within FORM_KEY_WINDOW bytes)."""
    header_key = api_key_from_headers(request.headers)
    if header_key is not None or not settings.api_keys:
        check_api_key(settings, header_key)
        return await read_form(request, settings)
    return await read_form(request, settings, authenticate=partial(check_api_key, settings))


async def _detect(request: Request, state: ServiceState, model: str | None) -> JSONResponse:
    form = await _authenticated_form(request, state.settings)
    try:
        min_confidence = _min_confidence(form.get("min_confidence"))
        entry = state.registry.get(model)
        served = state.registry.served(entry)
        images = await form_images(form)
    finally:
        await form.close()  # spooled upload files
    if len(images) != 1:
        raise ServiceError(422, f"{IMAGE_FIELD}: send one image, got {len(images)}", field=IMAGE_FIELD)
    [detected] = await state.pipeline.detect(entry, served.detector, images, DetectOptions(conf=min_confidence))
    predictions = [
        {
            "label": item.name,
            "confidence": round(item.confidence, 5),
            "x_min": round(item.x1),
            "y_min": round(item.y1),
            "x_max": round(item.x2),
            "y_max": round(item.y2),
        }
        for item in detected.prediction.detections
    ]
    return JSONResponse({"success": True, "predictions": predictions, "duration": round(detected.total_ms, 3)})


@router.post(
    "/detection",
    response_model=DeepStackResponse,
    summary="DeepStack object detection with the default model",
    description="Form field `image`, optional `min_confidence` (default 0.4) and `api_key` (instead of a key "
    "header; before the image). Boxes are integer pixels, predictions highest confidence first; `duration` is "
    "milliseconds.",
    responses=_ERRORS,
    openapi_extra=_FORM_BODY,
)
async def detection(request: Request, state: State) -> JSONResponse:
    return await _detect(request, state, None)


@router.api_route(
    "/custom/list",
    methods=["GET", "POST"],
    response_model=DeepStackModels,
    summary="The models usable as /v1/vision/custom/{model}",
    responses={401: _ERRORS[401]},
)
async def custom_list(request: Request, state: State) -> dict[str, Any]:
    if request.method == "POST" and request.headers.get("content-type"):
        await (await _authenticated_form(request, state.settings)).close()
    else:
        check_api_key(state.settings, api_key_from_headers(request.headers))
    return {"success": True, "models": list(state.registry.entries)}


@router.post(
    "/custom/{model}",
    response_model=DeepStackResponse,
    summary="DeepStack custom-model detection with a named model",
    description="As /v1/vision/detection, with the model named in the path.",
    responses=_ERRORS,
    openapi_extra=_FORM_BODY,
)
async def custom_detection(model: str, request: Request, state: State) -> JSONResponse:
    return await _detect(request, state, model)
