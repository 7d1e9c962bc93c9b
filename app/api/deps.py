"""Dependencies: the settings and the job queue, as annotated aliases routes can declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.queue.protocol import JobQueue
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
