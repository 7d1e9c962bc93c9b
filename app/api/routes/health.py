"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import QueueDep
from app.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "engine stopped"}})
async def healthz(queue: QueueDep) -> JSONResponse:
    """The process answers, and its engine (if any) has neither died nor got stuck; 503 otherwise: restart it."""
    if queue.alive():
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "engine stopped"}, status_code=503)


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
async def readyz(queue: QueueDep) -> JSONResponse:
    """Models loaded and the worker alive; 503 otherwise."""
    ready = await queue.ready()
    models = sorted(n for n, e in queue.models.items() if e.ready)
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "models": models}, status_code=200 if ready else 503
    )
