"""Open the queue backend the settings ask for."""

from __future__ import annotations

from app.queue.protocol import JobQueue
from app.settings import Settings
from app.store.catalog import ModelEntry


def open_queue(settings: Settings, models: dict[str, ModelEntry]) -> JobQueue:
    from app.queue.memory import MemoryJobQueue

    return MemoryJobQueue.start(settings, models)
