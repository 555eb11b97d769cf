"""Reading detection requests: multipart uploads or JSON with base64 images, plus query-string parameters."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

import anyio
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from .errors import ServiceError, validation_error
from .pipeline import ImageInput
from .schemas import DetectParams

ParamsT = TypeVar("ParamsT", bound=DetectParams)

IMAGE_FIELD = "image"
JSON_IMAGES_FIELD = "images"


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower case ("" when missing)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _grouped(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """Multi-valued pairs to a dict: one value as itself, repeated names as a list."""
    grouped: dict[str, list[Any]] = {}
    for key, value in items:
        grouped.setdefault(key, []).append(value)
    return {key: values[0] if len(values) == 1 else values for key, values in grouped.items()}


def validate_params(model: type[BaseModel], query: dict[str, Any], body: dict[str, Any]) -> Any:
    """Validate parameters given in the query string and the body into `model` (422 naming the field)."""
    twice = sorted(query.keys() & body.keys())
    if twice:
        raise ServiceError(422, f"{twice[0]}: given both in the query string and in the body", field=twice[0])
    values = {**query, **body}
    unknown = [name for name in values if name not in model.model_fields]
    if unknown:
        known = ", ".join(model.model_fields)
        raise ServiceError(422, f"{unknown[0]}: unknown parameter; the parameters are {known}", field=unknown[0])
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise validation_error(error) from None


async def read_form(request: Request) -> FormData:
    """The multipart or url-encoded form of the request (415 for other content types)."""
    if media_type(request) not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ServiceError(
            415,
            f"Content-Type {media_type(request) or '(none)'} is not accepted here; "
            f"send multipart/form-data with the image in the field '{IMAGE_FIELD}'",
        )
    return await request.form()


async def form_images(form: FormData) -> list[ImageInput]:
    """The files of the form's image field, in order (422 when there is none or one is not a file)."""
    uploads = form.getlist(IMAGE_FIELD)
    if not uploads:
        raise ServiceError(
            422,
            f"{IMAGE_FIELD}: no image; send one or more files in the multipart field '{IMAGE_FIELD}'",
            field=IMAGE_FIELD,
        )
    images = []
    for index, upload in enumerate(uploads, start=1):
        if not isinstance(upload, UploadFile):
            raise ServiceError(
                422, f"{IMAGE_FIELD}: item {index} is a text field; send the image as a file", field=IMAGE_FIELD
            )
        images.append(ImageInput(await upload.read(), f"image {index} ({upload.filename or 'unnamed'!r})"))
    return images


def _decode_base64_images(encoded: list[str]) -> list[ImageInput]:
    images = []
    for index, text in enumerate(encoded):
        label = f"{JSON_IMAGES_FIELD}[{index}]"
        if text.startswith(("http://", "https://", "ftp://", "file:")):
            raise ServiceError(
                400, f"{label} is a URL; the service never fetches URLs: send the image bytes base64-encoded"
            )
        if text.startswith("data:"):  # data:image/png;base64,....
            header, _, text = text.partition(",")
            if not header.endswith(";base64"):
                raise ServiceError(400, f"{label} is a data URL without ;base64")
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as error:
            raise ServiceError(400, f"{label} is not valid base64: {error}") from None
        images.append(ImageInput(data, label))
    return images


async def read_detect_request(
    request: Request, params_type: type[ParamsT], json_type: type[ParamsT]
) -> tuple[ParamsT, list[ImageInput]]:
    """Parameters and images of a native detection request.

    multipart/form-data: files in the field ``image`` (repeatable), parameters as other fields or in the
    query string. application/json: ``{"images": [base64, ...], ...parameters}`` (`json_type`), parameters
    also accepted in the query string. A parameter given in both places is refused.
    """
    query = _grouped(request.query_params.multi_items())
    media = media_type(request)
    if media == "multipart/form-data":
        form = await request.form()
        try:
            fields = [(name, value) for name, value in form.multi_items() if name != IMAGE_FIELD]
            for name, value in fields:
                if isinstance(value, UploadFile):
                    raise ServiceError(422, f"{name}: expected a value, got a file", field=name)
            params = validate_params(params_type, query, _grouped(fields))
            return params, await form_images(form)
        finally:
            await form.close()  # spooled upload files
    if media == "application/json" or media.endswith("+json"):
        body = await request.body()
        try:
            document = await anyio.to_thread.run_sync(json.loads, body)
        except (ValueError, UnicodeDecodeError) as error:
            raise ServiceError(400, f"the body is not valid JSON: {error}") from None
        except RecursionError:
            raise ServiceError(400, "the JSON body is nested too deeply") from None
        if not isinstance(document, dict):
            raise ServiceError(
                422, f"the JSON body must be an object with '{JSON_IMAGES_FIELD}', got {type(document).__name__}"
            )
        params = validate_params(json_type, query, document)
        images = await anyio.to_thread.run_sync(_decode_base64_images, params.images)
        return params, images
    raise ServiceError(
        415,
        f"Content-Type {media or '(none)'} is not accepted; send multipart/form-data with files in the field "
        f"'{IMAGE_FIELD}', or application/json with base64 images in '{JSON_IMAGES_FIELD}'",
    )
