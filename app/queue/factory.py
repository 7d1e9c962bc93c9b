"""Open the queue backend the settings ask for: in-process (default) or Redis (``DIFFUSION_QUEUE_URL``)."""

from __future__ import annotations

from app.queue.protocol import JobQueue, NoModels
from app.settings import Settings
from app.store.catalog import ModelEntry, scan_store


def no_models_message(settings: Settings, entries: dict[str, ModelEntry]) -> str:
    lines = [f"no loadable model in the model store {settings.model_store.resolve()}."]
    lines += [f"  {entry.name}: {entry.error}" for entry in entries.values()]
    lines.append(
        "Point DIFFUSION_MODEL_STORE at a folder of diffusers UNet2DModel models (config + safetensors), "
        "or train the shipped ones: python scripts/train_digits.py"
    )
    return "\n".join(lines)


async def open_queue(settings: Settings) -> JobQueue:
    """Start the backend; refuse (NoModels) when a node that runs a worker has nothing to serve."""
    if settings.queue_url is None:
        from app.queue.memory import MemoryJobQueue

        entries = scan_store(settings.model_store)
        if why := settings.unknown_models(set(entries), defaults=True):
            raise NoModels(why)
        queue = MemoryJobQueue.start(settings, entries)
        if not any(e.ready for e in entries.values()):
            await queue.close()
            raise NoModels(no_models_message(settings, entries))
        return queue

    from app.queue.redis.queue import RedisJobQueue

    queue = await RedisJobQueue.open(settings)
    if settings.runs_embedded_worker:
        from app.queue.redis.worker import RedisWorker

        worker = RedisWorker(settings, queue.redis)
        try:
            await worker.start()
        except NoModels:
            await queue.close()
            raise
        if not worker.serves_anything:
            await worker.stop(grace=0)
            await queue.close()
            raise NoModels(no_models_message(settings, worker.entries))
        queue.embedded = worker
        await queue.refresh_catalog()
    return queue
