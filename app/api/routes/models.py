"""The models in the store, with their cards and status (a model that failed to load says why)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path

from app.api.deps import QueueDep, SettingsDep
from app.api.errors import ApiError, brief
from app.api.negotiation import JSON_MEDIA_TYPE, accepting
from app.api.resolve import none_announced
from app.api.results import JOB_ERRORS, announced_models, errors_for
from app.api.schemas import ModelList, ModelOut

router = APIRouter(
    prefix="/models", tags=["models"], responses=JOB_ERRORS, dependencies=[Depends(accepting(JSON_MEDIA_TYPE))]
)


@router.get("", response_model=ModelList)
async def list_models(queue: QueueDep) -> dict:
    """Every model folder: its card with the tasks it really serves, its status, and why if not served."""
    return {"models": [entry.public() for entry in (await announced_models(queue, now=True)).values()]}


@router.get("/{name}", response_model=ModelOut, responses=errors_for(503))
async def get_model(queue: QueueDep, settings: SettingsDep, name: str = Path(max_length=64)) -> dict:
    models = await announced_models(queue, now=True)
    entry = models.get(name)
    if entry is None and not models:
        raise none_announced(["path", "name"], settings)
    if entry is None:
        raise ApiError(404, ["path", "name"], f"unknown model {brief(name)}", type="not_found")
    return entry.public()
