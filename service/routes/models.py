"""Models: list them, describe one, reload one from its file."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..dependencies import State, require_api_key
from ..schemas import ModelDescription, ModelsResponse, error_responses

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("", response_model=ModelsResponse, summary="The served models", responses=error_responses(401))
async def list_models(state: State) -> ModelsResponse:
    registry = state.registry
    return ModelsResponse(
        default_model=registry.default_name,
        models=[entry.describe(name == registry.default_name) for name, entry in registry.entries.items()],
    )


@router.get("/{name}", response_model=ModelDescription, summary="One served model", responses=error_responses(401, 404))
async def get_model(name: str, state: State) -> ModelDescription:
    entry = state.registry.get(name)
    return entry.describe(name == state.registry.default_name)


@router.post(
    "/{name}/reload",
    response_model=ModelDescription,
    summary="Reload a model from its file",
    description="Loads the file again off the event loop, warms it up and swaps it in atomically: requests "
    "already running finish on the old version. When the new file cannot be loaded (missing, corrupt, not a "
    "detection ONNX) the old version keeps serving and the answer is 409 saying why; 409 also when a load of "
    "this model is already running.",
    responses=error_responses(401, 404, 409),
)
async def reload_model(name: str, state: State) -> ModelDescription:
    entry = await state.registry.reload(name)
    return entry.describe(name == state.registry.default_name)
