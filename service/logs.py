"""Logging as text or JSON lines, every record carrying the id of the request it belongs to."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
"""Id of the request being handled in this context (None outside requests)."""

_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "request_id",
    "request_part",
    "extra_part",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


class _RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` from the context (or keeps one passed with ``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Fields passed with ``logger.info(..., extra={...})``."""
    return {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.request_id is not None:
            document["request_id"] = record.request_id
        document.update(_extra_fields(record))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger [request id] message key=value ...``, then the traceback if any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request_part)s %(message)s%(extra_part)s")

    def format(self, record: logging.LogRecord) -> str:
        extra = _extra_fields(record)
        record.extra_part = "".join(f" {key}={value}" for key, value in extra.items())
        record.request_part = f" [{record.request_id}]" if record.request_id else ""
        return super().format(record)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Send the root logger (and uvicorn's, which propagate to it) to stderr in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
