"""HTTP connection limits that uvicorn lacks, added to its own protocol so that `python -m service` has them without
a proxy in front: the size and read time of a request's head, the read time of its body, and a cap on open
connections answered with a fast 503.

uvicorn (0.54, httptools parser) takes a request head of any size, keeps a connection that sends nothing (or a
head or body byte by byte) open for good (its keep-alive timeout starts only after a response), and its
``limit_concurrency`` answers a plain-text 503, to probes too, once a whole request head has arrived.
`GuardedHttpProtocol` refuses, each in the JSON of the API the path belongs to, with an ``X-Request-ID``:

* a request line over DETECT_MAX_HEADER_BYTES: 400; headers over it: 431, as soon as they pass it;
* a head not complete DETECT_HEADER_TIMEOUT_S after the connection became idle: 408 (an idle connection that sent
  nothing is closed);
* a connection over DETECT_MAX_CONNECTIONS: 503 ``too_many_connections`` with ``Retry-After`` once its head is in,
  which it must send within OVER_CAPACITY_HEAD_S; the probes (``/healthz``, ``/readyz``, ...) are still served.

A body not complete DETECT_BODY_TIMEOUT_S after its head gets its 408 from `BodyLimitMiddleware` while the app
reads it; the connection is closed BODY_GRACE_S later whatever the app does (a body that goes on after an early
answer, such as a 401, included). After refusing, the protocol reads and drops what the client still sends for
LINGER_S before closing, so that the client reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import ServiceError, error_body
from .settings import Settings

logger = logging.getLogger("service.http")

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
OVER_CAPACITY_HEAD_S = 1.0
"""How long a connection over the cap has for its request head (the time for a client to send one at once)."""
BODY_GRACE_S = 1.0
"""How much longer than DETECT_BODY_TIMEOUT_S a connection may take for its body before it is closed."""
LINGER_S = 2.0
"""After a refusal, how long what the client still sends is read and dropped before the connection is closed."""

Phase = Literal["idle", "head", "body", "done"]


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.max_header_bytes, settings.header_timeout_s, settings.body_timeout_s, settings.max_connections
        )


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `ConnectionLimits` (see the module). One connection goes through the
    phases idle (waiting for a request), head, body and done (the app answers), then idle again."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._phase: Phase = "idle"
        self._deadline: asyncio.TimerHandle | None = None
        self._url_bytes = 0  # of the request's target parsed so far
        self._head_bytes = 0  # of its target and headers parsed so far
        self._received_for_head = 0  # received while waiting for a head (the parser buffers a partial header)
        self._over_capacity = False
        self._refused = False

    # ------------------------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._over_capacity = len(self.connections) > self.limits.max_connections
        head_s = min(self.limits.header_timeout_s, OVER_CAPACITY_HEAD_S) if self._over_capacity else None
        self._wait_for_request(head_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # what the client still sends is dropped
            return
        if self._phase in ("idle", "head"):
            self._received_for_head += len(data)
        super().data_received(data)
        if not self._refused and not self.transport.is_closing() and self._phase in ("idle", "head"):
            self._check_head_size(self._received_for_head)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase == "done" and not self.transport.is_closing():
            self._wait_for_request()

    # ------------------------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        if self._phase == "done":  # a pipelined request: its head gets its own time
            self._arm(self.limits.header_timeout_s, self._head_timed_out)
            self._received_for_head = 0
        self._phase, self._url_bytes, self._head_bytes = "head", 0, 0

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        super().on_url(url)
        self._url_bytes += len(url)
        self._head_bytes += len(url)
        self._check_head_size(self._head_bytes)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        super().on_header(name, value)
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        self._check_head_size(self._head_bytes)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if self._over_capacity and self._path() not in PROBE_PATHS:
            self._refuse(
                503,
                self._path(),
                f"the server has more than {self.limits.max_connections:,} connections open (DETECT_MAX_CONNECTIONS); "
                "retry later",
                error_type="too_many_connections",
                headers={"Retry-After": "1"},
            )
            return
        self._phase = "body"
        self._arm(self.limits.body_timeout_s + BODY_GRACE_S, self._body_timed_out)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._phase = "done"
        self._cancel_deadline()
        if self.cycle.response_complete:  # answered before its body was in (a 401, a 413): the next request may come
            self._wait_for_request()

    # ---------------------------------------------------------------------------------------------- limits

    def _wait_for_request(self, head_s: float | None = None) -> None:
        self._phase, self._received_for_head = "idle", 0
        self._arm(head_s or self.limits.header_timeout_s, self._head_timed_out)

    def _check_head_size(self, size: int) -> None:
        """Refuse a head of `size` bytes over the limit: 400 when its target alone is, else 431."""
        limit = self.limits.max_header_bytes
        if size <= limit:
            return
        if self._url_bytes > limit:
            self._refuse(400, "/", f"the request line is over {limit:,} bytes (DETECT_MAX_HEADER_BYTES)")
        else:
            self._refuse(431, self._path(), f"the request headers are over {limit:,} bytes (DETECT_MAX_HEADER_BYTES)")

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self._phase == "idle":  # nothing sent: nobody to answer
            self.transport.close()
        elif self._phase == "head":
            self._refuse(
                408,
                self._path(),
                f"the request head did not arrive within {self.limits.header_timeout_s:g} s (DETECT_HEADER_TIMEOUT_S)",
            )

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self._phase == "body":
            logger.info("closing a connection whose request body did not arrive in time (DETECT_BODY_TIMEOUT_S)")
            self.transport.close()

    def _refuse(
        self,
        status: int,
        path: str,
        message: str,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer `status` with the JSON error of the API at `path`, then drop what comes for LINGER_S and close."""
        self._refused = True
        request_id = uuid.uuid4().hex
        error = ServiceError(status, message, type=error_type)
        body = json.dumps(error_body(path, error, request_id), separators=(",", ":")).encode()
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            f"x-request-id: {request_id}",
            "connection: close",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_S, self.transport.close)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        logger.info("refused a request from %s with %d: %s", client, status, message)

    def _path(self) -> str:
        """The path of the request being read, for the dialect of an error ("/" while unknown)."""
        return getattr(self, "url", b"").partition(b"?")[0].decode("latin-1") or "/"

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(seconds, callback)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
