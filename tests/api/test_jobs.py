"""Jobs: polling, Server-Sent Events, image fetch, cancel, retention."""

from __future__ import annotations

import json
import time

from tests.api.helpers import decode


def submit(client, **body):
    r = client.post("/v1/generate", json={"class_label": 0, **body}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    return r.json()["job_id"]


def poll(client, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        time.sleep(0.02)
    raise TimeoutError(job_id)


def test_poll_until_succeeded_then_fetch_each_image(client):
    job_id = submit(client, num_images=2, steps=5)
    body = poll(client, job_id)
    assert body["status"] == "succeeded" and body["progress"] == {"step": 5, "total": 5}
    for image in body["images"]:
        r = client.get(image["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert decode(r.content).shape == (16, 16)
    assert client.get(f"/v1/jobs/{job_id}/images/2").status_code == 404


def test_events_stream_progress_then_completion(client):
    job_id = submit(client, steps=30)
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "succeeded" and set(kinds[:-1]) == {"progress"}
    steps = [d["progress"]["step"] for k, d in events if k == "progress"]
    assert steps == sorted(steps) and len(steps) >= 2


def test_events_of_a_finished_job_give_its_outcome_at_once(client):
    job_id = submit(client, steps=2)
    poll(client, job_id)
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("event: ")]
    assert lines == ["event: succeeded"]


def test_the_final_event_has_an_id_and_a_stream_asked_for_again_after_it_is_204(client):
    """An EventSource reconnects whenever a stream ends, sending the last event's id: without ids it was sent
    the final event again every few seconds for the job's whole retention."""
    job_id = submit(client, steps=20)
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        blocks = stream.read().decode().replace("\r\n", "\n").strip().split("\n\n")
    final = dict(line.split(": ", 1) for line in blocks[-1].splitlines() if ": " in line)
    assert final["event"] == "succeeded" and final["id"] == "succeeded"
    assert all("id: " not in block for block in blocks[:-1])  # progress events carry none
    again = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "succeeded"})
    assert again.status_code == 204 and again.content == b""
    for other in ("", "failed", "progress"):  # not the job's end: its final event, as before
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": other}) as stream:
            assert stream.status_code == 200 and "event: succeeded" in stream.read().decode()


def test_cancel_a_running_job(client):
    job_id = submit(client, steps=1000)
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 409
    assert client.get(f"/v1/jobs/{job_id}/images/0").status_code == 409


def test_a_job_gone_while_it_is_canceled_is_404_as_a_get_would_answer(client, monkeypatch):
    job_id = submit(client, steps=1000)
    queue = client.app.state.queue

    async def gone(_job_id):  # as Redis answers when it lost the record between the read and the write
        return None

    monkeypatch.setattr(queue, "cancel", gone)
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 404 and r.json()["detail"][0]["type"] == "not_found", r.text
    monkeypatch.undo()
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200


def test_unknown_jobs_are_404(client):
    assert client.get("/v1/jobs/" + "0" * 32).status_code == 404
    assert client.delete("/v1/jobs/" + "0" * 32).status_code == 404
    assert client.get("/v1/jobs/" + "0" * 32 + "/events").status_code == 404
    assert client.get("/v1/jobs/" + "0" * 32 + "/images/0").status_code == 404
    assert client.get("/v1/jobs/not-an-id").status_code == 422


def test_finished_jobs_are_forgotten_after_the_retention_time(make_client):
    client = make_client(job_retention_s=0.2)
    job_id = submit(client, steps=2)
    poll(client, job_id)
    time.sleep(0.3)
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_a_finished_job_is_kept_its_grace_past_the_caps_so_its_first_poll_finds_it(make_client):
    """With the bytes' cap below one result, an async job was forgotten the moment it finished: its client's
    first poll was a 404, the accepted job lost (a burst of large results did the same to older ones)."""
    client = make_client(max_finished_mb=1e-6, finished_grace_s=1.0)
    first = submit(client, steps=2)
    body = poll(client, first)
    assert body["status"] == "succeeded" and client.get(body["images"][0]["url"]).status_code == 200
    time.sleep(1.1)  # its grace is over: the next job's end applies the cap to it
    second = submit(client, steps=2)
    assert poll(client, second)["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{first}").status_code == 404


def test_the_grace_bends_the_caps_on_finished_jobs_but_never_past_twice_a_cap(make_client):
    client = make_client(max_finished_jobs=2, finished_grace_s=600)
    jobs = []
    for i in range(5):
        jobs.append(submit(client, steps=2))
        poll(client, jobs[-1])
    # in their grace, up to 4 (twice the cap) are kept; the fifth's end forgets the oldest
    assert [client.get(f"/v1/jobs/{j}").status_code for j in jobs] == [404, 200, 200, 200, 200]


def test_sync_request_still_running_after_the_timeout_gets_202(make_client):
    client = make_client(sync_timeout_s=0.05)
    r = client.post("/v1/generate", json={"class_label": 0, "steps": 1000})
    assert r.status_code == 202 and r.headers["location"].startswith("/v1/jobs/")
    assert "preference-applied" not in r.headers  # the client preferred nothing (RFC 7240)
    client.delete(r.headers["location"])
    r = client.post("/v1/generate", json={"class_label": 0, "steps": 1000}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202 and r.headers["preference-applied"] == "respond-async"
    client.delete(r.headers["location"])


def test_a_sync_wait_cut_short_while_the_backend_is_away_answers_from_the_submitted_record():
    import asyncio

    from app.api.results import wait_for_result
    from app.jobs import JobRecord
    from app.queue.protocol import QueueUnavailable

    class Away:  # Redis gone: the wait never ends by itself, and the record cannot be read
        async def wait(self, job_id, timeout):
            await asyncio.sleep(60)

        async def get(self, job_id):
            raise QueueUnavailable("ConnectionError: refused")

    class GraceOver:
        async def deadline_passed(self):
            return None

    record = JobRecord(id="e" * 32, kind="generate", model="m")
    got, reason = asyncio.run(wait_for_result(Away(), record, 60, None, GraceOver()))
    assert (got, reason) == (record, "draining")  # a durable queue then answers 202 with the job's Location
