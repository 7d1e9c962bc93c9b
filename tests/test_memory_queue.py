"""The in-process queue's admission: jobs and image pixels held, Idempotency-Key with fingerprints."""

from __future__ import annotations

import asyncio

import pytest

from app.jobs import ImageData, NoiseSpec
from app.queue.memory import MemoryJobQueue
from app.queue.protocol import Admission, IdempotencyConflict, QueueFull
from tests.helpers import make_settings


class IdleEngine:
    """An engine that takes jobs and never runs them: everything stays queued."""

    alive = True

    def __init__(self) -> None:
        self.jobs: list[str] = []

    def submit(self, job_id, spec) -> None:
        self.jobs.append(job_id)

    def busy_s(self) -> float:
        return 0.0  # waiting for work: not stuck


def noise_spec(side: int) -> NoiseSpec:
    image = ImageData(width=side, height=side, channels=1, pixels=bytes(side * side))
    return NoiseSpec(image=image, sigma=5.0)


def run(coro):
    return asyncio.run(coro)


def test_queued_jobs_are_capped_in_pixels_as_well_as_in_count(tmp_path):
    queue = MemoryJobQueue(make_settings(tmp_path, queue_max_pixels=3000, queue_limit=10), {}, IdleEngine())

    async def scenario():
        await queue.submit(noise_spec(40))  # 1600 pixels
        await queue.submit(noise_spec(20))  # 2000
        with pytest.raises(QueueFull):
            await queue.submit(noise_spec(40))  # 3600 > 3000
        await queue.submit(noise_spec(30))  # 2900

    run(scenario())
    assert len(queue.engine.jobs) == 3


def test_a_job_larger_than_the_pixel_cap_is_admitted_into_an_empty_queue(tmp_path):
    # The API refuses such a request (413) before it gets here; the queue itself never deadlocks on one.
    queue = MemoryJobQueue(make_settings(tmp_path, queue_max_pixels=100), {}, IdleEngine())
    run(queue.submit(noise_spec(40)))
    assert len(queue.engine.jobs) == 1


def test_an_idempotency_key_returns_its_job_for_the_same_request_only(tmp_path):
    queue = MemoryJobQueue(make_settings(tmp_path), {}, IdleEngine())

    async def scenario():
        first = await queue.submit(noise_spec(16), Admission(idempotency_key="k", fingerprint="a"))
        again = await queue.submit(noise_spec(16), Admission(idempotency_key="k", fingerprint="a"))
        assert again.id == first.id
        with pytest.raises(IdempotencyConflict):
            await queue.submit(noise_spec(16), Admission(idempotency_key="k", fingerprint="b"))

    run(scenario())
    assert len(queue.engine.jobs) == 1
