"""Watchers: a follower that misses a notification still sees the job finish."""

import asyncio

from app.queue import watch
from app.jobs import JobRecord, JobStatus


def test_a_missed_notification_is_caught_by_rechecking_the_record(monkeypatch):
    monkeypatch.setattr(watch, "RECHECK_S", 0.05)
    record = JobRecord(id="a" * 32, kind="generate", model="m")

    async def scenario():
        watchers = watch.Watchers()

        async def current():
            return record

        seen = []

        async def follow():
            async for kind, _ in watchers.follow(record.id, current):
                seen.append(kind)

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.02)
        record.status = JobStatus.succeeded  # changed without any notify (a lost pub/sub message)
        await asyncio.wait_for(task, 2)
        waited = await watchers.wait(record.id, current, timeout=1)
        return seen, waited

    seen, waited = asyncio.run(scenario())
    assert seen[0] == "progress" and seen[-1] == "succeeded"
    assert waited.status == JobStatus.succeeded
