"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import QueueDep
from app.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
async def readyz(queue: QueueDep) -> JSONResponse:
    """Models loaded and the worker alive; 503 otherwise."""
    ready = await queue.ready()
    models = sorted(n for n, e in queue.models.items() if e.ready)
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "models": models}, status_code=200 if ready else 503
    )
