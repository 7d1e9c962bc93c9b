"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import QueueDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(queue: QueueDep) -> JSONResponse:
    """Models loaded and the worker alive; 503 otherwise."""
    ready = await queue.ready()
    models = sorted(n for n, e in queue.models.items() if e.ready)
    return JSONResponse({"status": "ready" if ready else "not ready", "models": models}, status_code=200 if ready else 503)
