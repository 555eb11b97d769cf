"""ASGI middleware: request id, access log, HTTP metrics, the last-resort 500 and the 503 of a request cut short by
shutdown; request body size and time limits."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import anyio
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .connections import PROBE_PATHS
from .errors import ServiceError, error_response
from .logs import request_id_var
from .metrics import Metrics

access_logger = logging.getLogger("service.access")
logger = logging.getLogger("service")

_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestContextMiddleware:
    """Gives every request an id (the client's ``X-Request-ID`` when it is sane, else a new one), echoes it in
    the response, counts and times the request by route template, writes one access log line, and turns an
    unhandled exception into a logged traceback and a JSON 500 (a real server bug: clients never cause one).

    A request cancelled before its answer started is one the server stops on its way down (uvicorn cancels the
    requests still open when the graceful shutdown timeout is over): it gets a JSON 503 ``shutting_down``."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:  # gone before its request was read: nobody to answer, and no server fault
            status = 499  # nginx's "client closed request"
        except asyncio.CancelledError:
            if response_started:
                raise
            logger.warning("%s %s cut short by the shutdown", scope["method"], scope["path"])
            stopped = ServiceError(
                503,
                "the server is shutting down and stopped this request; retry it",
                type="shutting_down",
                headers={"Retry-After": "1", "Connection": "close"},
            )
            await error_response(scope["path"], stopped)(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if response_started:
                raise
            await error_response(
                scope["path"], ServiceError(500, f"internal server error (request id {request_id}); see the server log")
            )(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(template, scope["method"]).observe(elapsed)
            access_logger.log(
                logging.DEBUG if scope["path"] in PROBE_PATHS and status < 400 else logging.INFO,
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1e3,
                extra={"client": (scope.get("client") or ("-",))[0]},
            )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413: at once when Content-Length says so (nothing is read),
    otherwise as soon as the streamed body passes the limit. A body still incomplete `timeout_s` after the request
    began is refused with 408 while the app reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _too_large(self, size: str) -> ServiceError:
        return ServiceError(
            413, f"request body is {size}; the limit is {self.max_bytes:,} bytes (DETECT_MAX_UPLOAD_BYTES)"
        )

    def _too_slow(self) -> ServiceError:
        return ServiceError(
            408,
            f"the request body did not arrive within {self.timeout_s:g} s (DETECT_BODY_TIMEOUT_S)",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(scope["path"], self._too_large(f"{int(declared):,} bytes"))(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        received = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body only a disconnect can come, whenever it does
                return await receive()
            with anyio.move_on_after(deadline - time.monotonic()) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                raise self._too_slow()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise self._too_large(f"more than {self.max_bytes:,} bytes")
            return message

        await self.app(scope, limited_receive, send)
