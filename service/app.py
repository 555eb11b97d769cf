"""The FastAPI application: lifespan (model loading, workers, file watch), middleware, error handlers, routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from engine import physical_cores

from .dependencies import ServiceState
from .errors import install_error_handlers
from .memory import limit_malloc_arenas
from .metrics import Metrics
from .middleware import BodyLimitMiddleware, RequestContextMiddleware
from .pipeline import Pipeline
from .registry import ModelRegistry
from .routes import deepstack, kserve, models, native, ops
from .settings import Settings
from .version import SERVER_VERSION

logger = logging.getLogger("service")

DESCRIPTION = """
Object detection over ONNX models (YOLO11 with optional attention), with three APIs on the same models:

* **native**: `POST /v1/detect` (multipart or base64 JSON), `POST /v1/detect/annotated`, `GET /v1/models`
* **DeepStack / CodeProject.AI**: `POST /v1/vision/detection`, `POST /v1/vision/custom/{model}`
* **KServe v2 / Triton HTTP**: `/v2/...`, including the binary tensor extension

Requests for one model are micro-batched. Send an API key as `X-API-Key` or `Authorization: Bearer` when
the server has keys. Errors are JSON saying what was wrong.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app. Models load in the background once it starts: /healthz answers at once, /readyz when loaded."""
    settings = settings or Settings()
    limit_malloc_arenas(physical_cores())  # before the request threads start, each with its own arena otherwise
    metrics = Metrics(settings.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings, metrics)
        app.state.service = ServiceState(settings, metrics, registry, Pipeline(settings, metrics))
        logger.info(
            "starting with models %s (default %s) on %s",
            ", ".join(f"{source.name}={source.path}" for source in settings.models) or "(none)",
            settings.default_model,
            settings.device,
        )
        background = [asyncio.create_task(registry.load_all(), name="load-models")]
        if settings.watch:
            background.append(asyncio.create_task(registry.watch(), name="watch-models"))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await anyio.to_thread.run_sync(registry.stop, settings.graceful_timeout_s)
            logger.info("stopped")

    app = FastAPIOffline(  # /docs and /redoc with their assets served locally: no CDN, works offline
        title="Attention-YOLO detection service",
        version=SERVER_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in (ops.router, native.router, models.router, deepstack.router, kserve.health_router, kserve.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=ops.STATIC_DIR), name="static")
    # Added innermost first: the request id wraps everything, so 413s and CORS answers carry it too.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, timeout_s=settings.body_timeout_s)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-API-Key",
                "X-Request-ID",
                "Inference-Header-Content-Length",
            ],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "X-Detection-Count",
                "X-Model",
                "Inference-Header-Content-Length",
            ],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
