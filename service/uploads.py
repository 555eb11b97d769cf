"""Reading detection requests: multipart uploads or JSON with base64 images, plus query-string parameters, within
the request limits of the settings."""

from __future__ import annotations

import base64
import binascii
import itertools
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from .errors import ServiceError, validation_error
from .limits import check_classes, check_detect_json_values, check_image_count, parse_json, too_many_images
from .pipeline import ImageInput
from .schemas import DetectParams
from .settings import Settings

ParamsT = TypeVar("ParamsT", bound=DetectParams)

IMAGE_FIELD = "image"
JSON_IMAGES_FIELD = "images"
API_KEY_FIELD = "api_key"
FORM_KEY_WINDOW = 64 * 1024
"""A key sent as the form field `api_key` must come within this many bytes of the body, and before any file."""
MAX_FORM_FIELDS = 1000


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower case ("" when missing)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _grouped(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """Multi-valued pairs to a dict: one value as itself, repeated names as a list."""
    grouped: dict[str, list[Any]] = {}
    for key, value in items:
        grouped.setdefault(key, []).append(value)
    return {key: values[0] if len(values) == 1 else values for key, values in grouped.items()}


def validate_params(model: type[BaseModel], query: dict[str, Any], body: dict[str, Any], settings: Settings) -> Any:
    """Validate parameters given in the query string and the body into `model` (422 naming the field)."""
    twice = sorted(query.keys() & body.keys())
    if twice:
        raise ServiceError(422, f"{twice[0]}: given both in the query string and in the body", field=twice[0])
    unknown = next((name for name in itertools.chain(query, body) if name not in model.model_fields), None)
    if unknown is not None:
        known = ", ".join(model.model_fields)
        raise ServiceError(422, f"{unknown}: unknown parameter; the parameters are {known}", field=unknown)
    values = {**query, **body}
    check_classes(values.get("classes"), settings)
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise validation_error(error) from None


Authenticate = Callable[[str | None], None]
"""Checks an API key given as a form field (raises the 401)."""


class _FormKey:
    """The `api_key` form field of a client that sent no key header, checked once: when the first file of the form
    starts, once FORM_KEY_WINDOW bytes are read, or at the end of the form, whichever comes first. So a client without
    a valid key never has a file spooled or more than FORM_KEY_WINDOW bytes read."""

    def __init__(self, authenticate: Authenticate | None) -> None:
        self._authenticate = authenticate
        self._read = 0

    def check(self, items: list[tuple[str, str | UploadFile]]) -> None:
        """Authenticate with the key among the form's `items` read so far (once; later calls do nothing)."""
        if self._authenticate is None:
            return
        authenticate, self._authenticate = self._authenticate, None
        authenticate(next((value for name, value in items if name == API_KEY_FIELD and isinstance(value, str)), None))

    async def watch(
        self, stream: AsyncIterator[bytes], items: Callable[[], list[tuple[str, str | UploadFile]]]
    ) -> AsyncIterator[bytes]:
        """`stream`, checking the key with the fields `items()` parsed so far once FORM_KEY_WINDOW bytes are read."""
        async for chunk in stream:
            yield chunk
            self._read += len(chunk)
            if self._read > FORM_KEY_WINDOW:
                self.check(items())


class _MultiPartParser(MultiPartParser):
    """Starlette's multipart parser, refusing more files than DETECT_MAX_IMAGES and checking a form key (`_FormKey`)
    when the first file starts, before any of its bytes are spooled."""

    def __init__(self, request: Request, settings: Settings, key: _FormKey) -> None:
        stream = key.watch(request.stream(), lambda: self.items)
        super().__init__(request.headers, stream, max_files=math.inf, max_fields=MAX_FORM_FIELDS)
        self._settings = settings
        self._key = key

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        if self._current_part.file is not None:
            if self._current_files > self._settings.max_images:
                raise too_many_images(self._settings)
            self._key.check(self.items)


async def read_form(request: Request, settings: Settings, authenticate: Authenticate | None = None) -> FormData:
    """The multipart or url-encoded form of the request (415 for other content types), at most DETECT_MAX_IMAGES
    files. With `authenticate`, the form's `api_key` field is checked before any file or large body is read."""
    media = media_type(request)
    key = _FormKey(authenticate)
    if media == "multipart/form-data":
        parser: MultiPartParser | FormParser = _MultiPartParser(request, settings, key)
    elif media == "application/x-www-form-urlencoded":  # its fields are known only at its end
        parser = FormParser(request.headers, key.watch(request.stream(), list), max_fields=MAX_FORM_FIELDS)
    else:
        raise ServiceError(
            415,
            f"Content-Type {media or '(none)'} is not accepted here; "
            f"send multipart/form-data with the image in the field '{IMAGE_FIELD}'",
        )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise ServiceError(400, error.message) from None
    try:
        key.check(list(form.multi_items()))
    except ServiceError:
        await form.close()
        raise
    return form


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
    request: Request, settings: Settings, params_type: type[ParamsT], json_type: type[ParamsT]
) -> tuple[ParamsT, list[ImageInput]]:
    """Parameters and images of a native detection request.

    multipart/form-data: files in the field ``image`` (repeatable), parameters as other fields or in the
    query string. application/json: ``{"images": [base64, ...], ...parameters}`` (`json_type`), parameters
    also accepted in the query string. A parameter given in both places is refused. The number of images and
    the length of the classes filter are checked before anything is decoded or validated.
    """
    query = _grouped(request.query_params.multi_items())
    media = media_type(request)
    if media == "multipart/form-data":
        form = await read_form(request, settings)
        try:
            fields = [(name, value) for name, value in form.multi_items() if name != IMAGE_FIELD]
            for name, value in fields:
                if isinstance(value, UploadFile):
                    raise ServiceError(
                        422,
                        f"{name}: a file in a parameter field; send images in the field '{IMAGE_FIELD}' "
                        f"(e.g. curl -F {IMAGE_FIELD}=@photo.jpg)",
                        field=name,
                    )
            params = validate_params(params_type, query, _grouped(fields), settings)
            return params, await form_images(form)
        finally:
            await form.close()  # spooled upload files
    if media == "application/json" or media.endswith("+json"):
        body = await request.body()
        check_detect_json_values(body, settings)
        document = await anyio.to_thread.run_sync(parse_json, body, settings, "the JSON body")
        if not isinstance(document, dict):
            raise ServiceError(
                422, f"the JSON body must be an object with '{JSON_IMAGES_FIELD}', got {type(document).__name__}"
            )
        if isinstance(encoded := document.get(JSON_IMAGES_FIELD), list):
            check_image_count(len(encoded), settings)
        params = validate_params(json_type, query, document, settings)
        images = await anyio.to_thread.run_sync(_decode_base64_images, params.images)
        return params, images
    raise ServiceError(
        415,
        f"Content-Type {media or '(none)'} is not accepted; send multipart/form-data with files in the field "
        f"'{IMAGE_FIELD}', or application/json with base64 images in '{JSON_IMAGES_FIELD}'",
    )
