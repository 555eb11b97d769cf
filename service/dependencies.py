"""FastAPI dependencies: the app's state and API-key authentication."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from .errors import ServiceError
from .metrics import Metrics
from .pipeline import Pipeline
from .registry import ModelRegistry
from .settings import Settings


@dataclass(frozen=True)
class ServiceState:
    """What the routes work with, created when the app starts (``app.state.service``)."""

    settings: Settings
    metrics: Metrics
    registry: ModelRegistry
    pipeline: Pipeline


async def get_state(request: Request) -> ServiceState:
    """The app's state. A coroutine: FastAPI would run a plain function in its thread pool, one thread hand-off
    per request for an attribute lookup."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]
"""Route parameter type: the app's `ServiceState`."""


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (DETECT_API_KEYS)")
_bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token")


def api_key_from_headers(headers: Headers) -> str | None:
    """The key in ``X-API-Key``, else the token of ``Authorization: Bearer``."""
    if key := headers.get("x-api-key"):
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def check_api_key(settings: Settings, candidate: str | None) -> None:
    """401 unless keys are configured and `candidate` is one of them (constant-time comparisons, all keys tried)."""
    keys = settings.api_key_values()
    if not keys:
        return
    headers = {"WWW-Authenticate": "Bearer"}
    if not candidate:
        raise ServiceError(
            401, "an API key is required: send it as X-API-Key or Authorization: Bearer", headers=headers
        )
    given = candidate.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    if not matched:
        raise ServiceError(401, "the API key is not valid", headers=headers)


async def require_api_key(
    state: State,
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Route dependency: the request carries a valid API key (when keys are configured)."""
    check_api_key(state.settings, api_key or (bearer.credentials if bearer else None))
