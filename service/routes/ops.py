"""Operations: liveness, readiness, Prometheus metrics and the browser demo page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from ..dependencies import State
from ..schemas import HealthResponse, ReadyResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: 200 while the process serves HTTP")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: 200 when every model is loaded and warmed up, else 503 with the reasons",
    responses={503: {"model": ReadyResponse, "description": "not ready; `reasons` says why"}},
)
async def readyz(state: State) -> JSONResponse:
    registry = state.registry
    reasons = registry.not_ready_reasons()
    document = ReadyResponse(
        ready=not reasons, models={name: entry.state for name, entry in registry.entries.items()}, reasons=reasons
    )
    return JSONResponse(document.model_dump(), status_code=503 if reasons else 200)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


@router.get("/", include_in_schema=False)
async def demo_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")
