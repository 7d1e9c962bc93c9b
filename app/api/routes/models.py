"""The models in the store, with their cards and status (a model that failed to load says why)."""

from __future__ import annotations

from fastapi import APIRouter, Path

from app.api.deps import QueueDep
from app.api.errors import ApiError

router = APIRouter(prefix="/models", tags=["models"])


@router.get("")
async def list_models(queue: QueueDep) -> dict:
    return {"models": [entry.public() for entry in queue.models.values()]}


@router.get("/{name}")
async def get_model(queue: QueueDep, name: str = Path(max_length=64)) -> dict:
    entry = queue.models.get(name)
    if entry is None:
        raise ApiError(404, ["path", "name"], f"unknown model {name!r}", type="not_found")
    return entry.public()
