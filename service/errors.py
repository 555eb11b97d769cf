"""Service errors and their JSON rendering in the three API dialects (native, DeepStack, KServe v2).

Every error a route raises is a `ServiceError` (an `HTTPException`, so FastAPI re-raises it from body
parsing). Engine errors, request validation errors and Starlette's own 404/405 are mapped onto the
same shape. Which JSON document a client gets depends on the API it called:

* native (``/v1/detect``, ``/v1/models``, ...): ``{"error": {"status", "type", "message", "field"?,
  "models"?}, "request_id"}``
* DeepStack (``/v1/vision/...``): ``{"success": false, "error": message, "code": status}``
* KServe v2 (``/v2/...``): ``{"error": message}`` (what Triton answers and tritonclient reads)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import EngineError, ImageTooLarge, InvalidImage, InvalidParameter, UnsupportedImageType

from .logs import request_id_var

logger = logging.getLogger("service")

_ERROR_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "content_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ServiceError(StarletteHTTPException):
    """An error answered to the client with `status`, a machine-readable `type` and a message saying what was wrong.

    Args:
        field: the request field the error is about (422).
        models: the models the service has (404 for an unknown model).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        field: str | None = None,
        models: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        message = _encodable(message)
        super().__init__(status_code=status, detail=message, headers=dict(headers) if headers else None)
        self.message = message
        self.type = type or _ERROR_TYPES.get(status, "error")
        self.field = None if field is None else _encodable(field)
        self.models = list(models) if models is not None else None


def _encodable(text: str) -> str:
    """`text` with lone surrogates (a JSON body can carry them as "\\udfff") written as escapes: the JSON of
    an error that quotes what the client sent must still encode to UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def from_engine_error(error: EngineError, subject: str = "") -> ServiceError:
    """Map an engine error about a request to its status: 400 corrupt image, 413 too many pixels,
    415 unsupported image type, 422 bad parameter. `subject` (e.g. "image 2 ('a.jpg')") prefixes the message."""
    prefix = f"{subject}: " if subject else ""
    if isinstance(error, ImageTooLarge):
        return ServiceError(413, f"{prefix}{error}", type="image_too_large")
    if isinstance(error, UnsupportedImageType):
        return ServiceError(415, f"{prefix}{error}", type="unsupported_image_type")
    if isinstance(error, InvalidImage):
        return ServiceError(400, f"{prefix}{error}", type="invalid_image")
    if isinstance(error, InvalidParameter):
        return ServiceError(422, f"{prefix}{error}")
    return ServiceError(500, f"{prefix}{error}")


def validation_error(error: ValidationError | RequestValidationError, location: str = "") -> ServiceError:
    """A 422 naming the first invalid field and why; the other problems are appended to the message."""
    problems = []
    first_field = None
    for item in error.errors():
        parts = [str(part) for part in item["loc"] if part not in ("body", "query", "path", "header", "form")]
        field = ".".join(parts) or location or "request"
        first_field = first_field or field
        problems.append(f"{field}: {item['msg']}")
    return ServiceError(422, "; ".join(problems) or "invalid request", field=first_field)


def dialect(path: str) -> str:
    """Which API a path belongs to: "deepstack", "kserve" or "native"."""
    if path.startswith("/v1/vision/"):
        return "deepstack"
    if path == "/v2" or path.startswith("/v2/"):
        return "kserve"
    return "native"


def error_body(path: str, error: ServiceError, request_id: str | None = None) -> dict[str, Any]:
    """The JSON error document for `error` in the dialect of the API at `path` (`request_id`: the one of this
    request when answered outside the app, else the one in the context)."""
    kind = dialect(path)
    if kind == "deepstack":
        return {"success": False, "error": error.message, "code": error.status_code}
    if kind == "kserve":
        return {"error": error.message}
    detail: dict[str, Any] = {"status": error.status_code, "type": error.type, "message": error.message}
    if error.field is not None:
        detail["field"] = error.field
    if error.models is not None:
        detail["models"] = error.models
    return {"error": detail, "request_id": request_id or request_id_var.get()}


def error_response(path: str, error: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(path, error), status_code=error.status_code, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render every client error as JSON in the caller's dialect; nothing a client sends becomes a 500."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
        return error_response(request.url.path, error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code == 404 and message == "Not Found":
            message = f"no endpoint {request.method} {request.url.path}; see /docs"
        elif error.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(request.url.path, ServiceError(error.status_code, message, headers=error.headers))

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, validation_error(error))

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, error: EngineError) -> JSONResponse:
        return error_response(request.url.path, from_engine_error(error))
