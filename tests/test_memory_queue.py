"""The in-process queue's admission: jobs and image pixels held, Idempotency-Key with fingerprints."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from app.jobs import ImageData, NoiseSpec
from app.queue.memory import MemoryJobQueue
from app.queue.protocol import Admission, IdempotencyConflict, QueueFull
from tests.helpers import make_settings
from tests.tiny_models import write_generator


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


class ReloadingEngine(IdleEngine):
    """Answers a reload after ``answer_s`` (the models it loads meanwhile), each turn ``busy_s`` long."""

    def __init__(self, answer_s: float | None, busy_s: float = 0.0) -> None:
        super().__init__()
        self.answer_s, self.busy, self.asked = answer_s, busy_s, []

    def reload(self, fresh) -> Future:
        done: Future = Future()
        self.asked.append(done)

        def answer():
            if done.set_running_or_notify_cancel():
                done.set_result(fresh)

        if self.answer_s is not None:
            threading.Timer(self.answer_s, answer).start()
        return done

    def busy_s(self) -> float:
        return self.busy


def test_a_reload_that_loads_for_longer_than_a_stuck_turn_is_waited_for_while_the_engine_moves(tmp_path):
    write_generator(tmp_path / "gen-a")
    engine = ReloadingEngine(answer_s=1.0)  # several loads, each a short turn
    queue = MemoryJobQueue(make_settings(tmp_path, engine_stuck_s=0.3), {}, engine)
    run(queue.reload_store())
    assert list(queue.models) == ["gen-a"]


def test_a_reload_on_a_stuck_engine_gives_up_and_the_engine_never_takes_it(tmp_path):
    write_generator(tmp_path / "gen-a")
    engine = ReloadingEngine(answer_s=None, busy_s=5.0)
    queue = MemoryJobQueue(make_settings(tmp_path, engine_stuck_s=0.3), {}, engine)
    with pytest.raises(RuntimeError, match="stuck"):
        run(queue.reload_store())
    assert engine.asked[0].cancelled() and queue.models == {}
