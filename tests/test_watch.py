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


def preview(step: int) -> tuple[str, dict]:
    return "preview", {"progress": {"step": step}, "images": []}


def follow_once(watchers: watch.Watchers, record: JobRecord, current=None) -> list[tuple[str, dict]]:
    """What a follower who arrives now sees before the next change (its first events); ``current`` reads the
    record (by default: as it stands)."""

    async def as_it_stands():
        return record

    current = current or as_it_stands

    async def scenario():
        seen = []

        async def follow():
            async for item in watchers.follow(record.id, current):
                seen.append(item)

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.02)
        task.cancel()
        return seen

    return asyncio.run(scenario())


def test_a_late_follower_sees_the_latest_preview_at_once_and_none_once_the_job_ended():
    record = JobRecord(id="b" * 32, kind="generate", model="m")
    watchers = watch.Watchers()
    assert [kind for kind, _ in follow_once(watchers, record)] == ["progress"]  # no preview yet
    watchers.notify(record.id, preview(5))
    watchers.notify(record.id, preview(10))  # nobody followed: previews are kept all the same
    seen = follow_once(watchers, record)
    assert [kind for kind, _ in seen] == ["progress", "preview"] and seen[1][1]["progress"]["step"] == 10
    record.status = JobStatus.succeeded
    watchers.notify(record.id, ("succeeded", {}))
    assert [kind for kind, _ in follow_once(watchers, record)] == ["succeeded"]
    assert not watchers.wants(record.id, "succeeded")  # nothing is kept for it any more


def test_a_preview_from_the_pass_that_ran_as_the_job_ended_is_not_kept(monkeypatch):
    """A cancel is final at once, but the pass running then may still send a preview: keeping it would hold
    the job's image (and make the Redis listener want its events) until 256 other jobs pushed it out."""
    monkeypatch.setattr(watch, "ENDED_REMEMBERED", 2)
    watchers = watch.Watchers()
    record = JobRecord(id="f" * 32, kind="generate", model="m")
    watchers.notify(record.id, preview(5))
    watchers.notify(record.id, ("canceled", {}))
    watchers.notify(record.id, preview(6))  # late, from the pass that was running
    assert not watchers.wants(record.id, "succeeded")
    for other in ("1", "2"):  # the ended jobs remembered are bounded: the oldest is forgotten
        watchers.notify(other * 32, ("succeeded", {}))
    watchers.notify(record.id, preview(7))
    assert watchers.wants(record.id, "succeeded")


def test_previews_are_kept_for_a_bounded_number_of_jobs_and_wanted_by_the_redis_listener(monkeypatch):
    monkeypatch.setattr(watch, "KEPT_PREVIEWS", 2)
    watchers = watch.Watchers()
    jobs = [JobRecord(id=c * 32, kind="generate", model="m") for c in "cde"]
    assert watchers.wants(jobs[0].id, "preview") and not watchers.wants(jobs[0].id, "progress")
    for job in jobs:
        watchers.notify(job.id, preview(1))
    watchers.notify(jobs[1].id, preview(2))  # the most recent now: jobs[2]'s is the older one kept
    watchers.notify(jobs[0].id, preview(3))  # jobs[0] is back; jobs[2], now the oldest, goes
    kept = {job.id: [kind for kind, _ in follow_once(watchers, job)] for job in jobs}
    assert kept == {jobs[0].id: ["progress", "preview"], jobs[1].id: ["progress", "preview"], jobs[2].id: ["progress"]}
    assert watchers.wants(jobs[1].id, "succeeded") and not watchers.wants(jobs[2].id, "succeeded")


def test_a_preview_that_arrives_while_a_follower_reads_the_record_comes_once():
    record = JobRecord(id="f" * 32, kind="generate", model="m")
    watchers = watch.Watchers()
    watchers.notify(record.id, preview(5))

    async def current():  # the record is read from Redis: the next preview lands meanwhile
        watchers.notify(record.id, preview(10))
        return record

    seen = follow_once(watchers, record, current)
    assert [(kind, data["progress"]["step"] if kind == "preview" else None) for kind, data in seen] == [
        ("progress", None),
        ("preview", 5),
        ("preview", 10),
    ]


def scripted(*answers):
    """A ``current`` that gives these answers in turn (an exception is raised), then the last one again."""
    answers = list(answers)

    async def current():
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return current


def away() -> Exception:
    from app.queue.protocol import QueueUnavailable

    return QueueUnavailable("ConnectionError: refused")


def test_a_backend_away_during_a_recheck_neither_ends_a_stream_nor_a_wait(monkeypatch):
    monkeypatch.setattr(watch, "RECHECK_S", 0.02)
    running = JobRecord(id="b" * 32, kind="generate", model="m", status=JobStatus.running)
    done = running.model_copy(update={"status": JobStatus.succeeded})

    async def scenario():  # the first read answers; the next three find Redis away; then the job is done
        watchers = watch.Watchers()
        seen = [kind async for kind, _ in watchers.follow(running.id, scripted(running, away(), away(), away(), done))]
        waited = await watchers.wait(running.id, scripted(running, away(), away(), away(), done), timeout=5)
        return seen, waited

    seen, waited = asyncio.run(scenario())
    assert seen[0] == "progress" and seen[-1] == "succeeded"
    assert waited.status == JobStatus.succeeded


def test_a_wait_that_only_finds_the_backend_away_returns_the_last_record_it_read(monkeypatch):
    monkeypatch.setattr(watch, "RECHECK_S", 0.02)
    record = JobRecord(id="c" * 32, kind="generate", model="m")
    waited = asyncio.run(watch.Watchers().wait(record.id, scripted(record, away()), timeout=0.2))
    assert waited is record  # the sync request answers 202 with the job's Location


def test_a_stream_whose_record_vanishes_ends_with_a_failed_event_saying_the_job_was_lost(monkeypatch):
    monkeypatch.setattr(watch, "RECHECK_S", 0.02)
    record = JobRecord(id="d" * 32, kind="generate", model="m")

    async def scenario():  # then Redis restarted without its data
        return [item async for item in watch.Watchers().follow(record.id, scripted(record, None))]

    seen = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert [kind for kind, _ in seen] == ["progress", "failed"]
    assert seen[-1][1]["job_id"] == record.id and "vanished before it finished" in seen[-1][1]["error"]


def test_a_wait_whose_first_look_finds_the_backend_away_waits_on_for_the_result(monkeypatch):
    """The first read of a sync request's wait was not guarded: Redis away for a moment just after the submit
    answered the client 503 without the job's ID, though the job was accepted and ran (and a retry ran it
    twice). Only a record never read in the whole wait is QueueUnavailable."""
    from app.queue.protocol import QueueUnavailable

    monkeypatch.setattr(watch, "RECHECK_S", 0.05)
    record = JobRecord(id="b" * 32, kind="generate", model="m")
    looks = []

    async def current():
        looks.append(record.status)
        if len(looks) <= 2:
            raise QueueUnavailable("away for a moment")
        return record

    async def never():
        raise QueueUnavailable("away for good")

    async def scenario():
        watchers = watch.Watchers()
        waiting = asyncio.create_task(watchers.wait(record.id, current, timeout=5))
        await asyncio.sleep(0.3)
        record.status = JobStatus.succeeded
        waited = await asyncio.wait_for(waiting, 2)
        try:
            await watchers.wait("c" * 32, never, timeout=0.2)
        except QueueUnavailable as exc:
            return waited, exc
        return waited, None

    waited, unreadable = asyncio.run(scenario())
    assert waited.status == JobStatus.succeeded and len(looks) > 2
    assert unreadable is not None and "could not be read" in str(unreadable)


def test_a_sync_wait_that_never_reads_its_record_answers_with_the_record_as_submitted():
    """Then the client gets a 202 with the job's Location (the job is accepted), not a 503 inviting a resend."""
    from app.api.results import wait_for_result
    from app.queue.protocol import QueueUnavailable

    submitted = JobRecord(id="d" * 32, kind="generate", model="m")

    class Away:
        async def wait(self, job_id, timeout):
            raise QueueUnavailable("away")

    answer = asyncio.run(wait_for_result(Away(), submitted, 1.0, None, None))
    assert answer == (submitted, "done")
