"""The Redis backend in-process (TestClient): the HTTP layer unchanged, backpressure, the embedded worker."""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
import urllib.error
import urllib.request

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook as Verifier

from app.api.main import create_app
from tests.helpers import WebhookReceiver, make_settings
from tests.redis.helpers import REDIS_URL, delete_keys, on_redis
from app.jobs import JobRecord, JobStatus
from app.store.catalog import scan_store
from tests.tiny_models import write_bare, write_generator


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("redis-inproc")
    write_generator(root / "tiny-gen")
    return root


ASYNC = {"Prefer": "respond-async"}
SECRET = "whsec_" + base64.b64encode(b"redis-webhook-secret-0123456789").decode()
HOOKS = dict(webhook_secret=SECRET, webhook_allow_hosts="127.0.0.1", webhook_backoff_s=0.05)


def finished(outcome: str) -> float:
    """Jobs of tiny-gen this process counted as finished with ``outcome`` (diffusion_jobs_finished_total)."""
    from prometheus_client import REGISTRY

    labels = dict(kind="generate", model="tiny-gen", outcome=outcome)
    return REGISTRY.get_sample_value("diffusion_jobs_finished_total", labels) or 0.0


def client_for(store, prefix, **overrides):
    values = dict(queue_url=REDIS_URL, redis_prefix=prefix, lease_s=1.5, shutdown_grace_s=1)
    settings = make_settings(store, **{**values, **overrides})
    return TestClient(create_app(settings))


def test_embedded_worker_serves_sync_async_and_sse(store, prefix):
    with client_for(store, prefix, embedded_worker=True) as client:
        assert client.get("/readyz").status_code == 200
        r = client.post("/v1/generate", json={"class_label": "b", "num_images": 2, "seed": 4, "steps": 4})
        assert r.status_code == 200 and [i["seed"] for i in r.json()["images"]] == [4, 5]
        job = client.post(
            "/v1/generate", json={"class_label": 0, "steps": 20}, headers={"Prefer": "respond-async"}
        ).json()
        with client.stream("GET", f"/v1/jobs/{job['job_id']}/events") as stream:
            kinds = [line[7:] for line in stream.iter_lines() if line.startswith("event: ")]
        assert kinds[-1] == "succeeded"
        assert client.get("/v1/models/tiny-gen").json()["status"] == "ready"


def test_a_node_without_workers_still_accepts_jobs_and_caps_them(store, prefix):
    with client_for(store, prefix, embedded_worker=True, queue_limit=2) as worker_node:
        worker_node.app.state.queue.embedded.engine.stop()  # keep the catalog, stop serving
        with client_for(store, prefix, embedded_worker=False, queue_limit=2) as client:
            headers = {"Prefer": "respond-async"}
            codes = [
                client.post("/v1/generate", json={"class_label": 0, "steps": 5}, headers=headers).status_code
                for _ in range(3)
            ]
            assert codes[:2] == [202, 202]
            r = client.post("/v1/generate", json={"class_label": 0}, headers=headers)
            assert codes[2] == 503 and r.status_code == 503 and r.headers["retry-after"].isdigit()


def test_queued_jobs_are_capped_in_image_pixels_across_nodes(store, prefix):
    with client_for(store, prefix, embedded_worker=True) as worker_node:
        worker_node.app.state.queue.embedded.engine.stop()  # keep the catalog, stop serving
        with client_for(store, prefix, embedded_worker=False, queue_max_pixels=600) as client:
            headers = {"Prefer": "respond-async"}
            first = client.post("/v1/generate", json={"class_label": 0, "num_images": 2}, headers=headers)
            second = client.post("/v1/generate", json={"class_label": 0}, headers=headers)
            assert first.status_code == 202  # 2 x 16 x 16 = 512 pixels held
            assert second.status_code == 503 and second.headers["retry-after"].isdigit()  # 768 > 600


def test_an_idempotency_key_reused_with_another_body_is_422_across_nodes(store, prefix):
    with (
        client_for(store, prefix, embedded_worker=True) as node_a,
        client_for(store, prefix, embedded_worker=False) as node_b,
    ):
        headers = {"Prefer": "respond-async", "Idempotency-Key": "k1"}
        first = node_a.post("/v1/generate", json={"class_label": 0, "seed": 1}, headers=headers)
        same = node_b.post("/v1/generate", json={"class_label": 0, "seed": 1}, headers=headers)
        other = node_b.post("/v1/generate", json={"class_label": 1, "seed": 1}, headers=headers)
        assert same.json()["job_id"] == first.json()["job_id"]
        assert other.status_code == 422 and other.json()["detail"][0]["type"] == "idempotency_key_reused"


def test_an_idempotency_claim_lasts_while_its_job_does_and_outlives_its_record(store, prefix):
    """The claim expired a fixed time after the submit: a job that ended more than an hour later was still kept
    while a retry with its key made a new job (another seed), as did one still running."""
    import redis as sync_redis

    from app.queue.redis.keys import CLAIM_MARGIN_S, CLAIM_WHILE_KEPT_S, Keys

    raw = sync_redis.Redis.from_url(REDIS_URL)
    keys = Keys(prefix)
    try:
        with client_for(store, prefix, embedded_worker=True, job_retention_s=60) as client:
            client.app.state.queue.embedded.engine.stop()  # keep the catalog, stop serving: the job waits
            headers = {"Prefer": "respond-async", "Idempotency-Key": "long"}
            job = client.post("/v1/generate", json={"class_label": 0}, headers=headers).json()["job_id"]
            claim = keys.idempotency(":long")
            assert raw.get(claim).decode().startswith(job)
            assert CLAIM_WHILE_KEPT_S - 5 <= raw.ttl(claim) <= CLAIM_WHILE_KEPT_S  # a week while it waits or runs
            again = client.post("/v1/generate", json={"class_label": 0}, headers=headers).json()["job_id"]
            assert again == job
            assert client.delete(f"/v1/jobs/{job}").json()["status"] == "canceled"
            record_ttl, claim_ttl = raw.ttl(keys.job(job)), raw.ttl(claim)
            assert 0 < record_ttl <= 60 and 60 + CLAIM_MARGIN_S - 5 <= claim_ttl <= 60 + CLAIM_MARGIN_S
            assert client.post("/v1/generate", json={"class_label": 0}, headers=headers).json()["job_id"] == job
    finally:
        raw.close()


def test_an_unusable_job_entry_fails_that_job_and_the_worker_keeps_serving(store, prefix):
    import redis as sync_redis

    with client_for(store, prefix, embedded_worker=True) as client:
        raw = sync_redis.Redis.from_url(REDIS_URL)
        try:
            raw.hset(f"{prefix}:job:{'f' * 32}", mapping={"record": "not a record", "status": "queued", "spec": "{}"})
            raw.hset(
                f"{prefix}:job:{'e' * 32}",
                mapping={
                    "record": '{"id": "' + "e" * 32 + '", "kind": "generate", "model": "tiny-gen"}',
                    "status": "queued",
                    "spec": "{not json",
                },
            )
            raw.xadd(f"{prefix}:jobs", {"job": "f" * 32})
            raw.xadd(f"{prefix}:jobs", {"job": "e" * 32})
            raw.xadd(f"{prefix}:jobs", {"nothing": "here"})
        finally:
            raw.close()
        import time

        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{'e' * 32}").json()["status"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "unusable job" in client.get(f"/v1/jobs/{'e' * 32}").json()["error"]
        assert client.post("/v1/generate", json={"class_label": 0, "steps": 3}).status_code == 200
        check = sync_redis.Redis.from_url(REDIS_URL)
        try:
            assert check.xpending(f"{prefix}:jobs", "workers")["pending"] == 0  # every bad entry retired
        finally:
            check.close()


def test_a_held_job_whose_record_is_gone_no_longer_counts(store, prefix):
    import redis as sync_redis

    client = sync_redis.Redis.from_url(REDIS_URL)
    client.hset(f"{prefix}:held", "ghost", 10**9)  # its record expired or was evicted: nothing holds it
    client.close()
    with client_for(store, prefix, embedded_worker=True) as node:
        node.app.state.queue.embedded.engine.stop()
        with client_for(store, prefix, embedded_worker=False, queue_limit=1) as api:
            r = api.post("/v1/generate", json={"class_label": 0}, headers={"Prefer": "respond-async"})
            assert r.status_code == 202


def test_an_admission_whose_reply_was_lost_is_sent_again_and_queues_the_job_once(store, prefix):
    # the connection dropped after Redis ran ADMIT: the API answered 503 while the job was queued and ran unseen
    # (sent again by its client, it ran twice); now the node sends ADMIT again, which runs once per job ID
    import redis as sync_redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    with client_for(store, prefix, embedded_worker=True) as node:
        node.app.state.queue.embedded.engine.stop()  # nothing reads the streams: what ADMIT wrote stays
        with client_for(store, prefix, embedded_worker=False) as api:
            queue = api.app.state.queue
            admit = queue._admit
            answers = []

            async def reply_lost_once(**kwargs):
                answers.append(await admit(**kwargs))
                if len(answers) == 1:
                    raise RedisConnectionError("Connection closed by server.")  # Redis ran it; its reply is lost
                return answers[-1]

            queue._admit = reply_lost_once
            r = api.post("/v1/generate", json={"class_label": 0, "steps": 3}, headers={"Prefer": "respond-async"})
            assert r.status_code == 202, r.text
            assert answers == [1, 1]
            check = sync_redis.Redis.from_url(REDIS_URL)
            try:
                streams = list(check.scan_iter(match=f"{prefix}:model:*", _type="stream"))
                entries = [e for key in streams for _, e in check.xrange(key)]
                assert [e[b"job"].decode() for e in entries] == [r.json()["job_id"]]
                assert check.hkeys(f"{prefix}:held") == [r.json()["job_id"].encode()]
            finally:
                check.close()

            async def always_lost(**kwargs):
                raise RedisConnectionError("Connection closed by server.")

            queue._admit = always_lost  # a connection that drops again: 503, as with Redis away
            r = api.post("/v1/generate", json={"class_label": 0, "steps": 3}, headers={"Prefer": "respond-async"})
            assert r.status_code == 503 and r.json()["detail"][0]["type"] == "queue_unavailable"


def test_keys_own_their_jobs_and_their_job_cap_holds_across_nodes(store, prefix, tmp_path):
    import json

    from app.api.auth import digest

    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            [
                {"name": "alice", "sha256": digest("ka"), "scopes": ["generate"], "max_concurrent_jobs": 1},
                {"name": "bob", "sha256": digest("kb"), "scopes": ["generate"]},
            ]
        )
    )
    with client_for(store, prefix, embedded_worker=True) as worker_node:
        worker_node.app.state.queue.embedded.engine.stop()  # jobs stay queued
        with (
            client_for(store, prefix, embedded_worker=False, api_keys_file=keys) as a,
            client_for(store, prefix, embedded_worker=False, api_keys_file=keys) as b,
        ):
            headers = {"Prefer": "respond-async", "Authorization": "Bearer ka"}
            first = a.post("/v1/generate", json={"class_label": 0}, headers=headers)
            second = b.post("/v1/generate", json={"class_label": 0}, headers=headers)
            assert first.status_code == 202 and second.status_code == 429
            job = first.json()["job_id"]
            assert b.get(f"/v1/jobs/{job}", headers={"Authorization": "Bearer kb"}).status_code == 404
            assert b.get(f"/v1/jobs/{job}", headers={"Authorization": "Bearer ka"}).status_code == 200


def test_requests_per_minute_are_counted_across_api_nodes(store, prefix, tmp_path):
    import json

    from app.api.auth import digest

    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps([{"name": "limited", "sha256": digest("kl"), "scopes": ["generate"], "requests_per_minute": 2}])
    )
    headers = {"Authorization": "Bearer kl"}
    with (
        client_for(store, prefix, embedded_worker=True, api_keys_file=keys) as a,
        client_for(store, prefix, embedded_worker=False, api_keys_file=keys) as b,
    ):
        codes = [a.get("/v1/models", headers=headers).status_code, b.get("/v1/models", headers=headers).status_code]
        third = a.get("/v1/models", headers=headers)
        assert codes == [200, 200] and third.status_code == 429 and third.headers["retry-after"].isdigit()


def test_a_refusal_whose_window_redis_cannot_tell_waits_the_whole_window_not_a_500(store, prefix, tmp_path):
    import json

    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.api.auth import digest

    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps([{"name": "one", "sha256": digest("k1"), "scopes": ["generate"], "requests_per_minute": 1}])
    )
    headers = {"Authorization": "Bearer k1"}

    async def away(*args, **kwargs):
        raise RedisConnectionError("Connection reset by peer")

    with client_for(store, prefix, embedded_worker=True, api_keys_file=keys) as node:
        assert node.get("/v1/models", headers=headers).status_code == 200
        node.app.state.gate.limiter.get_window_stats = away  # Redis gone between the hit and the window
        refused = node.get("/v1/models", headers=headers)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "60", refused.text


def test_webhooks_are_sent_once_each_by_whichever_node_claims_them(store, prefix):
    with (
        WebhookReceiver(statuses=(500, 200)) as receiver,
        client_for(store, prefix, embedded_worker=True, **HOOKS) as node_a,
        client_for(store, prefix, embedded_worker=False, **HOOKS) as node_b,
    ):
        body = {"class_label": 0, "steps": 3, "webhook": receiver.url, "webhook_events": "started,completed"}
        jobs = [
            (node_a, node_b)[i % 2].post("/v1/generate", json=body, headers=ASYNC).json()["job_id"] for i in range(4)
        ]
        receiver.wait_for(9)  # 8 messages, the first one sent twice (500, then 200)
        time.sleep(1.0)
        got = list(receiver.received)
    assert len(got) == 9
    ids = [r["headers"]["webhook-id"] for r in got]
    assert sorted(set(ids)) == sorted(f"msg_{j}_{e}" for j in jobs for e in ("started", "completed"))
    for request in got:
        job = Verifier(SECRET).verify(request["body"], request["headers"])
        event = request["headers"]["webhook-id"].rsplit("_", 1)[1]
        assert job["status"] == ("succeeded" if event == "completed" else job["status"])


def test_a_job_failed_before_it_ran_fires_completed_only_across_nodes(store, prefix, monkeypatch):
    from app.engine import engine

    def unplannable(*args, **kwargs):
        raise ValueError("no plan for this job")

    monkeypatch.setattr(engine, "plan_generate", unplannable)
    with (
        WebhookReceiver() as receiver,
        client_for(store, prefix, embedded_worker=True, **HOOKS) as worker_node,
        client_for(store, prefix, embedded_worker=False, **HOOKS) as api,
    ):
        body = {"class_label": 0, "steps": 3, "webhook": receiver.url, "webhook_events": "started,completed"}
        job_id = api.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"]
        (request,) = receiver.wait_for(1)
        time.sleep(1.0)  # a "started" message would have come by now
        assert len(receiver.received) == 1
        assert worker_node.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"
    assert request["headers"]["webhook-id"] == f"msg_{job_id}_completed"
    assert Verifier(SECRET).verify(request["body"], request["headers"])["status"] == "failed"


def test_a_job_a_stopping_worker_hands_back_reads_queued_and_fires_started_once(store, prefix):
    from app.jobs import EngineEvent, Progress

    _announce_tiny_gen(store, prefix)
    with WebhookReceiver() as receiver, client_for(store, prefix, embedded_worker=False, **HOOKS) as api:
        body = {"model": "tiny-gen", "class_label": 0, "steps": 4, "webhook": receiver.url}
        body["webhook_events"] = "started,completed"
        job_id = api.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"]

        async def run_three_steps_then_stop(redis):
            worker = _worker_on(store, prefix, redis, "stopping")
            await worker._read_once()
            assert list(worker.held) == [job_id]
            progress = Progress(step=3, total=4)
            worker._events.put_nowait([EngineEvent(job_id=job_id, type="started")])
            worker._events.put_nowait([EngineEvent(job_id=job_id, type="progress", progress=progress)])
            await worker._write_once()
            await worker._write_once()
            assert (await worker.records.get(job_id)).progress == progress
            await worker.stop(grace=0)
            assert worker.engine.canceled == [job_id]
            return await redis.xlen(worker.keys.stream("normal", "tiny-gen"))

        assert on_redis(run_three_steps_then_stop) == 1  # on its stream again, for the next worker
        record = api.get(f"/v1/jobs/{job_id}").json()
        assert record["status"] == "queued" and record["progress"] == {"step": 0, "total": 4}
        assert record["timings"]["run_ms"] == 0  # it no longer counts as started
        (started,) = receiver.wait_for(1)
        with client_for(store, prefix, embedded_worker=True, **HOOKS) as worker_node:
            receiver.wait_for(2)
            assert worker_node.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
            time.sleep(1.0)  # a second "started" would have come by now
    ids = [r["headers"]["webhook-id"] for r in receiver.received]
    assert ids == [f"msg_{job_id}_started", f"msg_{job_id}_completed"]
    assert Verifier(SECRET).verify(started["body"], started["headers"])["status"] == "running"


def test_each_finished_job_is_counted_once_by_the_process_whose_write_ended_it(store, prefix):
    _announce_tiny_gen(store, prefix)
    canceled, succeeded = finished("canceled"), finished("succeeded")
    with client_for(store, prefix, embedded_worker=False) as api:
        job_id = api.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0}, headers=ASYNC).json()["job_id"]
        assert api.delete(f"/v1/jobs/{job_id}").json()["status"] == "canceled"  # queued: no worker held it
        assert finished("canceled") == canceled + 1

        async def a_late_success(redis):  # a worker's "succeeded" for the job canceled meanwhile
            from app.jobs import JobResult

            worker = _worker_on(store, prefix, redis, "late")
            record = JobRecord(id=job_id, kind="generate", model="tiny-gen", status="succeeded")
            record.result = JobResult(images=[])
            return await worker.records.update(record)

        assert on_redis(a_late_success) == 0  # refused: the record was final
    assert finished("canceled") == canceled + 1 and finished("succeeded") == succeeded


def test_a_write_holding_a_job_whose_record_vanished_still_writes_and_counts_the_others(store, prefix):
    from app.jobs import EngineEvent, JobResult

    _announce_tiny_gen(store, prefix)
    with client_for(store, prefix, embedded_worker=False) as api:
        body = {"model": "tiny-gen", "class_label": 0, "steps": 4}
        gone, kept = (api.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"] for _ in range(2))
    before = finished("succeeded")

    async def one_write(redis):
        worker = _worker_on(store, prefix, redis, "writer")
        await worker._read_once()
        assert set(worker.held) == {gone, kept}
        await redis.delete(worker.keys.job(gone))  # its record expired, or Redis lost it
        events = [EngineEvent(job_id=gone, type="started"), EngineEvent(job_id=kept, type="started")]
        worker._events.put_nowait(events + [EngineEvent(job_id=kept, type="succeeded", result=JobResult(images=[]))])
        await worker._write_once()
        assert worker._dirty == {} and list(worker.held) == []
        return (await worker.records.get(kept)).status.value

    assert on_redis(one_write) == "succeeded"
    assert finished("succeeded") == before + 1


def test_a_high_priority_job_overtakes_the_low_priority_backlog_across_nodes(store, prefix):
    with (
        client_for(store, prefix, embedded_worker=True, worker_jobs=1) as worker_node,
        client_for(store, prefix, embedded_worker=False) as api,
    ):
        body = {"class_label": 0, "steps": 200, "priority": "low"}
        lows = [api.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"] for _ in range(4)]
        high = worker_node.post(
            "/v1/generate", json={"class_label": 1, "steps": 5, "priority": "high"}, headers=ASYNC
        ).json()["job_id"]
        deadline = time.monotonic() + 120
        while api.get(f"/v1/jobs/{high}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        later = [api.get(f"/v1/jobs/{j}").json()["status"] for j in lows[2:]]
        assert "succeeded" not in later  # the worker holds one job at a time: high went before these
        for job_id in lows:
            while api.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded":
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_workers_read_the_streams_by_priority_aged_by_waiting(store, prefix):
    import asyncio

    from redis.asyncio import Redis

    from app.queue.redis.worker import RedisWorker

    async def order_with(low_waited_s: float) -> list[str]:
        redis = Redis.from_url(REDIS_URL)
        try:
            worker = RedisWorker(make_settings(store, queue_url=REDIS_URL, redis_prefix=prefix), redis)
            worker.entries = scan_store(store)  # it serves tiny-gen: it reads that model's streams too
            keys = worker.keys
            await redis.delete(*(stream for _, stream in worker.streams))
            await worker._create_groups()
            now_ms = int(time.time() * 1000)
            await redis.xadd(keys.stream("low", "tiny-gen"), {"job": "a"}, id=f"{now_ms - int(low_waited_s * 1000)}-0")
            await redis.xadd(keys.stream("normal"), {"job": "b"}, id=f"{now_ms - 2000}-0")  # a job needing no model
            await redis.xadd(keys.stream("high", "tiny-gen"), {"job": "c"}, id=f"{now_ms - 1000}-0")
            order = await worker.stream_order()
            return [stream.removeprefix(prefix) for stream in order]
        finally:
            await redis.aclose()

    high, normal, low = ":model:tiny-gen:jobs:high", ":jobs", ":model:tiny-gen:jobs:low"
    assert asyncio.run(order_with(5)) == [high, normal, low]
    assert asyncio.run(order_with(70)) == [high, low, normal]  # a level up; waited longer
    assert asyncio.run(order_with(130)) == [low, high, normal]  # two levels: high, and older


def test_previews_reach_the_event_stream_of_another_node(store, prefix):
    import json

    with (
        client_for(store, prefix, embedded_worker=True) as worker_node,
        client_for(store, prefix, embedded_worker=False) as api,
    ):
        body = {"class_label": 0, "steps": 400, "preview_every": 100}
        job_id = worker_node.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"]
        with api.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            lines = list(stream.iter_lines())
    kinds = [line[7:] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    previews = [d for k, d in zip(kinds, data) if k == "preview"]
    assert kinds[-1] == "succeeded" and kinds.index("preview") < len(kinds) - 1
    assert {p["progress"]["step"] for p in previews} <= {100, 200, 300} and previews
    assert all(p["images"][0]["media_type"] == "image/webp" for p in previews)


def test_after_redis_lost_its_data_readiness_is_live_and_requests_get_503_until_a_worker_announces(store, prefix):
    with client_for(store, prefix, embedded_worker=True) as worker_node:
        worker_node.app.state.queue.embedded.engine.stop()  # it stops beating: nobody announces again
        with client_for(store, prefix, embedded_worker=False) as api:
            assert api.get("/readyz").status_code == 200  # the heartbeat written at start is still fresh
            delete_keys(prefix)  # as a Redis restart without persistence does
            assert api.get("/readyz").status_code == 503  # read now, not from the last catalog refresh
            r = api.post("/v1/generate", json={"class_label": 0}, headers=ASYNC)
            assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text  # not "no such model"
            assert r.json()["detail"][0]["type"] == "model_unavailable"
            named = api.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0}, headers=ASYNC)
            assert named.status_code == 503 and named.json()["detail"][0]["type"] == "model_unavailable"
            card = api.get("/v1/models/tiny-gen")
            assert card.status_code == 503 and card.headers["retry-after"].isdigit()  # not "unknown model"


def test_a_worker_announces_its_models_again_as_soon_as_it_finds_its_stream_groups_gone(store, prefix):
    import redis

    # Heartbeats 20 s apart: the catalog can only come back this soon from the worker finding its groups gone.
    with client_for(store, prefix, embedded_worker=True, lease_s=60) as node:
        delete_keys(prefix)  # as a Redis restart without persistence does
        client = redis.Redis.from_url(REDIS_URL)
        try:
            deadline = time.monotonic() + 10
            while not client.hlen(f"{prefix}:catalogs"):
                assert time.monotonic() < deadline, "the worker did not announce its models again"
                time.sleep(0.05)
        finally:
            client.close()
        assert node.get("/readyz").status_code == 200
        r = node.post("/v1/generate", json={"class_label": 0, "steps": 3, "seed": 1})
        assert r.status_code == 200, r.text


def test_a_sync_request_whose_job_record_is_lost_gets_a_503_saying_so(store, prefix):
    import threading

    import redis

    def lose_the_job_once_queued():
        client = redis.Redis.from_url(REDIS_URL)
        try:
            deadline = time.monotonic() + 30
            while not list(client.scan_iter(match=f"{prefix}:job:*")) and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            client.close()
        delete_keys(prefix)  # as a Redis restart without persistence does; the waiter rechecks every 5 s

    with client_for(store, prefix, embedded_worker=True) as worker_node:
        worker_node.app.state.queue.embedded.engine.stop()  # the job stays queued while its record goes
        with client_for(store, prefix, embedded_worker=False) as api:
            loser = threading.Thread(target=lose_the_job_once_queued)
            loser.start()
            r = api.post("/v1/generate", json={"class_label": 0, "steps": 5})
            loser.join()
            assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
            error = r.json()["detail"][0]
            assert error["type"] == "job_lost" and "send the request again" in error["msg"]


def test_a_job_canceled_without_the_worker_hearing_of_it_is_stopped_at_its_next_write(store, prefix):

    import redis

    with client_for(store, prefix, embedded_worker=True) as node:
        body = {"class_label": 0, "steps": 1000, "num_images": 8, "sampler": "ddpm"}
        job_id = node.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"]
        deadline = time.monotonic() + 30
        while node.get(f"/v1/jobs/{job_id}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        canceled, succeeded = finished("canceled"), finished("succeeded")
        worker = node.app.state.queue.embedded
        stopped, cancel = [], worker.engine.cancel
        worker.engine.cancel = lambda job: (stopped.append(job), cancel(job))

        async def cancel_without_broadcast(redis):  # as an API node that missed the worker (its PUBLISH lost)
            from app.jobs import EngineEvent, apply_event
            from app.queue.redis.records import RecordStore

            records = RecordStore(redis, worker.keys, 60, 60)
            record = await records.get(job_id)
            apply_event(record, EngineEvent(job_id=job_id, type="canceled"))
            assert await records.update(record) == 1

        on_redis(cancel_without_broadcast)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            while job_id in worker.held:
                assert time.monotonic() < deadline + 30
                time.sleep(0.02)
            assert client.xpending(f"{prefix}:jobs", "workers")["pending"] == 0  # its entry is retired
        finally:
            client.close()
        assert node.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
        assert set(stopped) == {job_id}  # stopped at its next write, not run out
        # counted once, by the write that canceled it; the worker's own "canceled" write was refused
        assert (finished("canceled"), finished("succeeded")) == (canceled + 1, succeeded)


def test_redis_away_while_a_worker_takes_a_job_leaves_it_pending_not_failed(store, prefix):
    import asyncio

    from redis.asyncio import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.queue.redis.worker import RedisWorker

    class DropsOneRead(Redis):
        async def hmget(self, *args, **kwargs):
            raise RedisConnectionError("Connection reset by peer")

    with client_for(store, prefix, embedded_worker=True) as worker_node:
        worker_node.app.state.queue.embedded.engine.stop()  # nobody takes the job but the worker below
        with client_for(store, prefix, embedded_worker=False) as api:
            job_id = api.post("/v1/generate", json={"class_label": 0}, headers=ASYNC).json()["job_id"]

            async def take() -> None:
                redis = DropsOneRead.from_url(REDIS_URL)
                try:
                    worker = RedisWorker(make_settings(store, queue_url=REDIS_URL, redis_prefix=prefix), redis)
                    stream = worker.keys.stream("normal", "tiny-gen")
                    [(entry_id, _)] = await redis.xrange(stream, count=1)
                    with pytest.raises(RedisConnectionError):
                        await worker._take(stream, entry_id.decode(), job_id, delivered=1)
                    assert worker.held == {}
                finally:
                    await redis.aclose()

            asyncio.run(take())
            assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"  # not "failed: unusable job"


def test_a_worker_with_room_takes_a_silent_workers_job_before_new_ones(store, prefix):
    import asyncio

    from redis.asyncio import Redis

    from app.queue.redis.keys import GROUP
    from app.queue.redis.worker import RedisWorker

    async def first_taken() -> list[tuple[str, int]]:
        redis = Redis.from_url(REDIS_URL)
        try:
            settings = make_settings(store, queue_url=REDIS_URL, redis_prefix=prefix, lease_s=0.2, worker_jobs=1)
            worker = RedisWorker(settings, redis)
            taken = []

            async def take(stream, entry_id, job_id, *, delivered):
                taken.append((job_id, delivered))

            worker._take = take
            await worker._create_groups()
            stream = worker.keys.stream("normal")
            await redis.xadd(stream, {"job": "orphan"})
            await redis.xreadgroup(GROUP, "a-worker-that-died", {stream: ">"}, count=1)
            await redis.xadd(stream, {"job": "new"})
            await asyncio.sleep(0.3)  # the dead worker's lease runs out
            await worker._read_once()
            return taken
        finally:
            await redis.aclose()

    assert asyncio.run(first_taken())[0] == ("orphan", 2)


def test_a_cancel_whose_broadcast_fails_is_still_a_cancel(store, prefix):
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def refused(*args, **kwargs):
        raise RedisConnectionError("Connection reset by peer")

    with client_for(store, prefix, embedded_worker=True) as worker_node:
        worker_node.app.state.queue.embedded.engine.stop()  # the job stays queued
        with client_for(store, prefix, embedded_worker=False) as api:
            job_id = api.post("/v1/generate", json={"class_label": 0}, headers=ASYNC).json()["job_id"]
            api.app.state.queue.redis.publish = refused  # the record is written, the broadcast is not
            r = api.delete(f"/v1/jobs/{job_id}")
            assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
            assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"


class StubEngine:
    """A worker's engine as far as its Redis side sees it: alive, and what it was told to cancel or stop."""

    def __init__(self):
        self.alive, self.submitted, self.canceled, self.stopped = True, [], [], False
        self.busy = 0.0  # seconds in its current turn

    def busy_s(self):
        return self.busy

    def reload(self, fresh):
        from concurrent.futures import Future

        done = Future()
        done.set_result(fresh)
        return done

    def submit(self, job_id, spec):
        self.submitted.append(job_id)

    def cancel(self, job_id):
        self.canceled.append(job_id)

    def stop(self):
        self.stopped = True


def test_a_worker_cut_off_past_its_lease_stops_the_jobs_another_worker_took_over(store, prefix):

    from app.queue.redis.keys import GROUP
    from app.queue.redis.worker import RedisWorker, _Held

    async def scenario(redis):
        settings = make_settings(store, queue_url=REDIS_URL, redis_prefix=prefix, lease_s=0.15)
        worker = RedisWorker(settings, redis, worker_id="cut-off")
        worker.engine = StubEngine()
        await worker._create_groups()
        stream = worker.keys.stream("normal")
        for job in ("kept", "taken"):
            entry_id = (await redis.xadd(stream, {"job": job})).decode()
            await redis.xreadgroup(GROUP, "cut-off", {stream: ">"}, count=1)
            worker.held[job] = _Held(stream, entry_id, JobRecord(id=job, kind="generate", model="m"))
        taken = worker.held["taken"].entry_id
        await redis.xclaim(stream, GROUP, "took-over", min_idle_time=0, message_ids=[taken])  # its takeover
        await worker._renew_once()
        owners = {
            p["message_id"].decode(): p["consumer"].decode()
            for p in await redis.xpending_range(stream, GROUP, min="-", max="+", count=10)
        }
        return list(worker.held), worker.engine.canceled, owners[taken]

    held, canceled, owner = on_redis(scenario)
    assert held == ["kept"] and canceled == ["taken"]
    assert owner == "took-over"  # the renewal did not take it back


def test_a_job_that_fails_to_start_after_the_engine_has_it_is_canceled_there(store, prefix):
    """An error after the engine was given the job (here the check for a cancel that came too early) fails the
    job; the engine had gone on running it, outside the worker's count of what it holds."""
    from redis.exceptions import ResponseError

    job_id = _queued_for_tiny_gen(store, prefix)

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "starting")
        real = redis.hget

        async def hget(key, field):
            if field == "status" and worker.engine.submitted:
                raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
            return await real(key, field)

        redis.hget = hget
        try:
            await worker._read_once()
        finally:
            redis.hget = real
        assert worker.engine.submitted == [job_id] and worker.engine.canceled == [job_id] and worker.held == {}
        assert (await worker.records.get(job_id)).status.value == "failed"

    on_redis(scenario)


def test_a_stop_puts_back_the_entries_read_but_not_taken_so_the_next_worker_counts_no_crash(store, prefix):
    """The intake reads several entries at once and takes them one by one; a stop between two of them had left
    the rest pending on this worker, unheld: the next worker took each over after a lease as delivery 2 (with
    max_attempts 1: failed as having crashed a worker)."""
    _announce_tiny_gen(store, prefix)
    with client_for(store, prefix, embedded_worker=False) as api:
        jobs = [api.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0}, headers=ASYNC) for _ in range(3)]
    jobs = [r.json()["job_id"] for r in jobs]

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "stopping")
        real_start, second = worker._start, asyncio.Event()

        async def start(stream, entry_id, job_id, *, delivered):
            if worker.held:  # the second entry of the read: the stop lands here
                second.set()
                await asyncio.Event().wait()
            await real_start(stream, entry_id, job_id, delivered=delivered)

        worker._start = start
        worker._intake = [asyncio.create_task(worker._read_once())]
        await asyncio.wait_for(second.wait(), 10)
        await worker.stop(grace=0)
        assert worker.held == {} and worker.engine.canceled == [jobs[0]]  # the one taken is handed back
        stream = worker.keys.stream("normal", "tiny-gen")
        assert (await redis.xpending(stream, "workers"))["pending"] == 0 and await redis.xlen(stream) == 3
        other = _worker_on(store, prefix, redis, "next")
        other.settings = other.settings.model_copy(update={"max_attempts": 1})
        await other._read_once()
        assert sorted(other.held) == sorted(jobs)  # each as a first delivery: none failed as a crash
        assert [(await other.records.get(job)).status.value for job in jobs] == ["queued"] * 3

    on_redis(scenario)


def test_a_stop_leaves_an_entry_another_worker_took_over_meanwhile_to_that_worker(store, prefix):
    """Put back only what this worker still owns, checked in the same step: an entry of its that another
    worker took over after a lease would otherwise run there and again from the new entry."""
    from app.queue.redis.keys import GROUP

    _queued_for_tiny_gen(store, prefix)

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "stopping")
        stream = worker.keys.stream("normal", "tiny-gen")
        ((_, [(entry_id, _)]),) = await redis.xreadgroup(GROUP, "stopping", {stream: ">"}, count=1)
        put_back = worker._put_back

        async def taken_over_first(**kwargs):  # after the stop listed the entry as its own, before it acts
            await redis.xclaim(stream, GROUP, "took-over", min_idle_time=0, message_ids=[entry_id])
            return await put_back(**kwargs)

        worker._put_back = taken_over_first
        await worker.stop(grace=0)
        pending = await redis.xpending_range(stream, GROUP, min="-", max="+", count=10)
        assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry_id, b"took-over")]
        assert await redis.xlen(stream) == 1  # not added again

    on_redis(scenario)


def test_a_worker_stopping_while_redis_is_away_stops_cleanly_and_leaves_its_jobs_to_a_takeover(store):
    import asyncio

    from redis.asyncio import Redis

    from app.queue.redis.worker import RedisWorker, _Held
    from tests.redis.helpers import free_port

    async def scenario():
        url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: Redis is away
        redis = Redis.from_url(url)
        try:
            worker = RedisWorker(make_settings(store, queue_url=url, redis_prefix="away"), redis)
            worker.engine = StubEngine()
            worker.held["j"] = _Held("away:jobs", "1-0", JobRecord(id="j", kind="generate", model="m"))
            await worker.stop(grace=0)
            return worker
        finally:
            await redis.aclose()

    worker = asyncio.run(scenario())
    assert worker.held == {} and worker.engine.canceled == ["j"] and worker.engine.stopped


@pytest.fixture(scope="module")
def other_store(tmp_path_factory):
    """A second worker's store, without tiny-gen: workers need not serve the same models."""
    root = tmp_path_factory.mktemp("redis-other")
    write_bare(root / "tiny-bare")
    return root


def _worker_on(folder, prefix, redis, name="a-worker", *, just_started=False):
    """A worker serving ``folder``'s models with a stub engine: only its Redis side runs. Up for a while (it
    takes silent workers' entries over at once), unless ``just_started`` (not within a lease of its start)."""
    from app.queue.redis.worker import RedisWorker

    settings = make_settings(folder, queue_url=REDIS_URL, redis_prefix=prefix, worker_jobs=4)
    worker = RedisWorker(settings, redis, worker_id=name)
    worker.entries, worker.engine = scan_store(folder), StubEngine()
    if not just_started:
        worker._redis_away_at = -float("inf")
    return worker


def _announce_tiny_gen(store, prefix) -> None:
    """A worker that serves tiny-gen announces it (and makes its stream group), so API nodes take its jobs."""

    async def announce(redis):
        worker = _worker_on(store, prefix, redis, "serves-tiny-gen")
        await worker._create_groups()
        await worker._beat()

    on_redis(announce)


def _queued_for_tiny_gen(store, prefix) -> str:
    """A job for tiny-gen, queued through an API node while a worker that serves tiny-gen has announced it."""
    _announce_tiny_gen(store, prefix)
    with client_for(store, prefix, embedded_worker=False) as api:
        r = api.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0}, headers=ASYNC)
        assert r.status_code == 202, r.text
        return r.json()["job_id"]


def test_a_worker_reads_only_the_jobs_of_the_models_it_serves(store, other_store, prefix):

    job_id = _queued_for_tiny_gen(store, prefix)

    async def scenario(redis):
        other = _worker_on(other_store, prefix, redis, "serves-tiny-bare")
        await other._create_groups()
        await other._read_once()  # its streams are empty: it waits a second and takes nothing
        assert other.held == {} and other.engine.submitted == []
        mine = _worker_on(store, prefix, redis, "serves-tiny-gen")
        await mine._read_once()
        assert list(mine.held) == mine.engine.submitted == [job_id]
        assert mine.held[job_id].stream == mine.keys.stream("normal", "tiny-gen")

    on_redis(scenario)


def test_a_worker_whose_engine_died_takes_no_more_jobs(store, prefix):

    job_id = _queued_for_tiny_gen(store, prefix)

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis)
        worker.settings = worker.settings.model_copy(update={"lease_s": 0.3})  # its pause: a heartbeat
        worker.engine.alive = False
        await worker._read_once()
        assert worker.held == {} and worker.engine.submitted == [] and worker.dead.is_set()
        assert not worker.alive()
        pending = await redis.xpending(worker.keys.stream("normal", "tiny-gen"), "workers")
        assert pending["pending"] == 0  # still on its stream for a live worker, not taken
        worker.engine.alive = True  # (a live one would take it: the test reads what a dead one leaves)
        worker.dead.clear()
        await worker._read_once()
        assert list(worker.held) == [job_id]

    on_redis(scenario)


def test_a_reload_that_removes_a_model_hands_its_jobs_not_yet_started_back_for_another_worker(store, prefix, tmp_path):
    job_id = _queued_for_tiny_gen(store, prefix)
    mine = tmp_path / "store"
    shutil.copytree(store, mine)

    async def scenario(redis):
        worker = _worker_on(mine, prefix, redis, "reloading")
        await worker._read_once()
        assert list(worker.held) == [job_id]  # not started yet (waiting for memory, say)
        shutil.rmtree(mine / "tiny-gen")
        await worker.reload_store()
        assert worker.held == {} and worker.engine.canceled == [job_id] and worker.served == []
        stream = worker.keys.stream("normal", "tiny-gen")
        assert (await redis.xpending(stream, "workers"))["pending"] == 0 and await redis.xlen(stream) == 1
        assert (await worker.records.get(job_id)).status.value == "queued"  # for the next worker that serves it
        other = _worker_on(store, prefix, redis, "serves-it")
        await other._read_once()
        assert list(other.held) == [job_id]

    on_redis(scenario)


def test_a_job_of_a_model_a_reload_removes_read_while_the_engine_takes_the_reload_goes_to_another_worker(
    store, prefix, tmp_path
):
    """The engine answers a reload after its current pass: a job of the removed model read meanwhile is not
    given to it (it would fail the job as not served here) but left on its stream for a worker serving it."""
    from concurrent.futures import Future

    job_id = _queued_for_tiny_gen(store, prefix)
    mine = tmp_path / "store"
    shutil.copytree(store, mine)

    async def scenario(redis):
        worker = _worker_on(mine, prefix, redis, "reloading")
        asked, answer = [], Future()
        worker.engine.reload = lambda fresh: asked.append(fresh) or answer
        shutil.rmtree(mine / "tiny-gen")
        reloading = asyncio.create_task(worker.reload_store())
        while not asked:  # the engine has the reload, and has not answered
            await asyncio.sleep(0.01)
        assert worker.served == []
        await worker._read_once()
        assert worker.held == {} and worker.engine.submitted == []
        stream = worker.keys.stream("normal", "tiny-gen")
        assert (await redis.xpending(stream, "workers"))["pending"] == 0 and await redis.xlen(stream) == 1
        answer.set_result(asked[0])
        await reloading
        assert worker.served == [] and "tiny-gen" not in worker.entries
        other = _worker_on(store, prefix, redis, "serves-it")
        await other._read_once()
        assert list(other.held) == [job_id]

    on_redis(scenario)


def test_a_reload_the_engine_fails_leaves_the_models_served_as_they_were(store, prefix, tmp_path):
    """The models a reload would remove stop being read when it begins; if the engine refuses the reload (it
    goes on serving the old scan), they are read again: their jobs had been left queued, the catalog still
    announcing the models."""
    from concurrent.futures import Future

    mine = tmp_path / "store"
    shutil.copytree(store, mine)

    async def scenario(redis):
        worker = _worker_on(mine, prefix, redis, "failed-reload")
        failed = Future()
        failed.set_exception(RuntimeError("the pool could not take the scan"))
        worker.engine.reload = lambda fresh: failed
        shutil.rmtree(mine / "tiny-gen")
        with pytest.raises(RuntimeError):
            await worker.reload_store()
        assert worker.served == ["tiny-gen"] and "tiny-gen" in worker.entries

    on_redis(scenario)


def test_jobs_of_a_model_no_worker_announces_are_failed_but_not_one_a_live_worker_holds(store, prefix):
    job_id = _queued_for_tiny_gen(store, prefix)

    async def scenario(redis):
        holder = _worker_on(store, prefix, redis, "holder")
        holder.settings = holder.settings.model_copy(update={"lease_s": 0.3})
        await holder._read_once()
        assert list(holder.held) == [job_id]
        await redis.delete(holder.keys.catalogs, holder.keys.announced)  # as after the holder's reload
        judge = _worker_on(store, prefix, redis, "judge")
        judge.settings = judge.settings.model_copy(update={"lease_s": 0.3})
        await judge._fail_unserved(cutoff=time.time())
        assert (await judge.records.get(job_id)).status.value == "queued"  # its holder runs it
        await asyncio.sleep(0.4)  # the holder silent past its lease: nobody runs it
        await judge._fail_unserved(cutoff=time.time())
        record = await judge.records.get(job_id)
        assert record.status.value == "failed" and "not served by any worker" in record.error

    on_redis(scenario)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_a_worker_is_ready_on_its_health_port_only_while_it_takes_jobs(store, prefix):
    """/readyz (a rollout waits for it): 503 while its models load and once it stops, 200 in between; /healthz
    stays 200 through the load (the liveness probe must not restart a worker that loads)."""
    from app.metrics import serve_worker_http

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "readiness")
        server = serve_worker_http(0, "127.0.0.1", worker.live, worker.ready)
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            assert (await asyncio.to_thread(_get, url + "/readyz"))[0] == 503  # not taking jobs yet
            assert (await asyncio.to_thread(_get, url + "/healthz"))[0] == 200
            worker._intake = [asyncio.create_task(asyncio.sleep(3600))]  # as start() leaves it
            assert await asyncio.to_thread(_get, url + "/readyz") == (200, '{"status": "ready"}')
            served = dict(worker.entries)
            worker.entries = {}  # a reload found no model (the store emptied or unmounted): it takes no jobs
            assert (await asyncio.to_thread(_get, url + "/readyz"))[0] == 503
            assert (await asyncio.to_thread(_get, url + "/healthz"))[0] == 200  # not restarted for it
            worker.entries = served
            assert (await asyncio.to_thread(_get, url + "/readyz"))[0] == 200
            await worker.stop(grace=0)
            assert (await asyncio.to_thread(_get, url + "/readyz"))[0] == 503
        finally:
            server.shutdown()
            server.server_close()

    on_redis(scenario)


def test_a_stuck_worker_says_so_on_its_health_port_and_a_job_that_hangs_every_worker_fails_at_max_attempts(
    store, prefix
):
    from app.metrics import serve_worker_http

    job_id = _queued_for_tiny_gen(store, prefix)

    async def scenario(redis):
        def stub(name):
            worker = _worker_on(store, prefix, redis, name)
            worker.settings = worker.settings.model_copy(update={"lease_s": 0.3})  # taken over after 0.3 s
            return worker

        stream = None
        for attempt in range(1, 4):  # max_attempts 3
            worker = stub(f"stuck-{attempt}")
            stream = worker.keys.stream("normal", "tiny-gen")
            await worker._read_once()  # the first reads it new; the others take it over from a stuck one
            assert list(worker.held) == [job_id]
            server = serve_worker_http(0, "127.0.0.1", worker.live)
            url = f"http://127.0.0.1:{server.server_port}"
            try:
                assert await asyncio.to_thread(_get, url + "/healthz") == (200, '{"status": "ok"}')
                if attempt == 1:  # the event loop blocked (its ticker silent): said, though the port's thread answers
                    worker._loop_tick = time.monotonic() - worker.loop_stale_s - 1
                    assert (await asyncio.to_thread(_get, url + "/healthz"))[0] == 503
                    await asyncio.wait_for(worker._tick_once(), 5)
                    assert (await asyncio.to_thread(_get, url + "/healthz"))[0] == 200
                worker.engine.busy = worker.settings.engine_stuck_s + 1  # the job hangs its engine
                assert (await asyncio.to_thread(_get, url + "/healthz"))[0] == 503
                assert not worker.alive() and worker.dead.is_set()
            finally:
                server.shutdown()
                server.server_close()
            await worker.stop(grace=30)  # a stuck engine finishes nothing: no wait for the grace
            assert worker.held == {} and worker.engine.canceled == [job_id]
            # not handed back as new (which would reset its count of attempts): left for a takeover
            assert (await redis.xpending(stream, "workers"))["pending"] == 1 and await redis.xlen(stream) == 1
            assert (await worker.records.get(job_id)).status.value != "failed"
            await asyncio.sleep(0.35)
        last = stub("after-three")
        await last._read_once()
        assert last.held == {} and last.engine.submitted == []
        record = await last.records.get(job_id)
        assert record.status.value == "failed" and "crashed workers 3 times" in record.error
        assert await redis.xlen(stream) == 0

    on_redis(scenario)


def test_a_job_queued_on_the_stream_every_worker_reads_moves_to_its_models_stream(store, other_store, prefix):

    job_id = _queued_for_tiny_gen(store, prefix)

    async def scenario(redis):  # as a job queued before jobs went on their model's stream
        other = _worker_on(other_store, prefix, redis)
        keys = other.keys
        own = keys.stream("normal", "tiny-gen")
        [(entry_id, fields)] = await redis.xrange(own)
        await redis.xdel(own, entry_id)
        await redis.xadd(keys.stream("normal"), fields)
        await other._create_groups()
        await other._read_once()
        assert other.held == {} and other.engine.submitted == []
        assert await redis.xlen(keys.stream("normal")) == 0
        [(_, moved)] = await redis.xrange(own)
        assert moved == {b"job": job_id.encode()}
        status = await redis.hget(keys.job(job_id), "status")
        assert status == b"queued"  # not failed by the worker that does not serve it

    on_redis(scenario)


def test_the_catalog_merges_the_workers_and_forgets_the_silent_ones(store, other_store, prefix):

    from app.queue.redis.worker import RedisWorker

    with client_for(store, prefix, embedded_worker=True, lease_s=1.5, worker_forget_s=30) as worker_node:
        with client_for(other_store, prefix, embedded_worker=True, worker_forget_s=30) as other_node:
            models = {m["name"]: (m["status"], m["workers"]) for m in other_node.get("/v1/models").json()["models"]}
            assert models == {"tiny-gen": ("ready", 1), "tiny-bare": ("ready", 1)}  # each from the one serving it
            served = other_node.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0, "steps": 2})
            assert served.status_code == 200, served.text  # run by the worker of the other node
            worker_node.app.state.queue.embedded.engine.stop()  # it stops announcing; its catalog stays

            async def age_and_beat(redis):
                keys = worker_node.app.state.queue.keys
                gen_worker = worker_node.app.state.queue.embedded.worker_id
                assert await redis.hexists(keys.catalogs, gen_worker)  # still listed: it may come back
                await redis.hset(keys.announced, gen_worker, time.time() - 31)  # silent past worker_forget_s
                beating = RedisWorker(
                    make_settings(other_store, queue_url=REDIS_URL, redis_prefix=prefix, worker_forget_s=30),
                    redis,
                )
                beating.entries = scan_store(other_store)
                await beating._beat()
                assert not await redis.hexists(keys.catalogs, gen_worker)
                assert not await redis.hexists(keys.announced, gen_worker)

            on_redis(age_and_beat)
            deadline = time.monotonic() + 10
            while "tiny-gen" in {m["name"] for m in other_node.get("/v1/models").json()["models"]}:
                assert time.monotonic() < deadline, "the forgotten worker's model is still listed"
                time.sleep(0.1)
            r = other_node.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0}, headers=ASYNC)
            assert r.status_code == 404 and "tiny-gen" in r.text


def test_an_idempotency_claim_is_waited_for_only_while_its_record_may_still_be_being_written(
    store, prefix, monkeypatch
):
    import asyncio

    from app.queue.redis import queue as redis_queue
    from app.queue.redis.keys import CLAIM_WHILE_KEPT_S
    from app.queue.redis.queue import RedisJobQueue, connect

    real_sleep = asyncio.sleep

    async def scenario():
        queue = RedisJobQueue(make_settings(store, queue_url=REDIS_URL, redis_prefix=prefix), connect(REDIS_URL))
        slept = []

        async def sleep(seconds):
            slept.append(seconds)
            if len(slept) == 3:  # the claimant's record lands while the second request waits
                await queue.redis.hset(queue.keys.job("fresh"), mapping={"record": record.model_dump_json()})
            await real_sleep(0)

        monkeypatch.setattr(redis_queue.asyncio, "sleep", sleep)
        try:
            record = JobRecord(id="fresh", kind="generate", model="tiny-gen")
            old, new = queue.keys.idempotency("old"), queue.keys.idempotency("new")
            await queue.redis.set(old, "expired:fp", ex=queue._claim_ttl - 3600)  # its record expired long ago
            assert await queue._claimed_job(old, "fp") == (None, b"expired:fp") and slept == []  # at once
            # admitted (a week's claim), its record evicted: nothing is being written either
            await queue.redis.set(old, "evicted:fp", ex=CLAIM_WHILE_KEPT_S)
            assert await queue._claimed_job(old, "fp") == (None, b"evicted:fp") and slept == []
            assert await queue._claimed_job(queue.keys.idempotency("none"), "fp") == (None, None)
            await queue.redis.set(new, "fresh:fp", ex=queue._claim_ttl)  # claimed a moment ago, record not yet written
            found, _ = await queue._claimed_job(new, "fp")
            assert found.id == "fresh" and len(slept) == 3
            with pytest.raises(redis_queue.IdempotencyConflict):
                await queue._claimed_job(new, "another request")
        finally:
            monkeypatch.undo()
            await queue.redis.aclose()

    asyncio.run(scenario())


def test_two_replays_of_a_key_whose_job_is_gone_make_one_job(store, prefix):
    """Both found the claim naming no job and each wrote its own over it: two jobs ran for one key."""
    import asyncio

    from app.jobs import GenerateSpec
    from app.queue.protocol import Admission
    from app.queue.redis.keys import CLAIM_MARGIN_S
    from app.queue.redis.queue import RedisJobQueue, connect

    async def scenario():
        settings = make_settings(store, queue_url=REDIS_URL, redis_prefix=prefix)
        nodes = [RedisJobQueue(settings, connect(REDIS_URL)) for _ in range(2)]
        admission = Admission(idempotency_key="again", fingerprint="fp")
        claim = nodes[0].keys.idempotency(":again")
        try:
            await nodes[0].redis.set(claim, "gone:fp", ex=CLAIM_MARGIN_S)  # its record's retention is over
            both_read = asyncio.Barrier(2)

            def reading_together(read):  # each node has read the claim before either acts on it (first reads)
                first = [True]

                async def read_then_wait(*args):
                    found = await read(*args)
                    if first:
                        first.clear()
                        await asyncio.wait_for(both_read.wait(), 5)
                    return found

                return read_then_wait

            for node in nodes:
                node._claimed_job = reading_together(node._claimed_job)
            spec = GenerateSpec(model="tiny-gen", steps=2, sampler="ddim", seeds=[0], class_label=0)
            made = await asyncio.gather(*(node.submit(spec, admission) for node in nodes))
            assert made[0].id == made[1].id
            assert (await nodes[0].redis.get(claim)).decode().startswith(made[0].id)
            assert await nodes[0].redis.xlen(nodes[0].keys.job_stream(spec)) == 1
        finally:
            for node in nodes:
                await node.redis.aclose()

    asyncio.run(scenario())


def test_a_key_at_its_job_cap_hears_so_even_when_the_queue_is_full(store, prefix):
    """The in-process backend says too_many_jobs (the key's own limit, which waiting on others' jobs does not
    lift); Redis said queue_full."""
    import asyncio

    from app.jobs import GenerateSpec
    from app.queue.protocol import Admission, TooManyJobs
    from app.queue.redis.queue import RedisJobQueue, connect

    async def scenario():
        settings = make_settings(store, queue_url=REDIS_URL, redis_prefix=prefix, queue_limit=1)
        queue = RedisJobQueue(settings, connect(REDIS_URL))
        admission = Admission(owner="alice", max_jobs=1)
        try:
            await queue.submit(
                GenerateSpec(model="tiny-gen", steps=2, sampler="ddim", seeds=[0], class_label=0), admission
            )
            with pytest.raises(TooManyJobs):
                await queue.submit(
                    GenerateSpec(model="tiny-gen", steps=2, sampler="ddim", seeds=[0], class_label=0), admission
                )
        finally:
            await queue.redis.aclose()

    asyncio.run(scenario())


def test_a_node_started_before_any_worker_announced_reads_the_catalog_again_at_the_first_request(
    store, prefix, monkeypatch
):

    from app.queue.redis import queue as redis_queue

    monkeypatch.setattr(redis_queue, "CATALOG_REFRESH_S", 3600)  # no background refresh comes in between

    async def announce(redis):
        worker = _worker_on(store, prefix, redis)
        await worker._create_groups()
        await worker._beat()

    with client_for(store, prefix, embedded_worker=False) as api:
        assert api.get("/v1/models").json() == {"models": []}
        on_redis(announce)
        assert [m["name"] for m in api.get("/v1/models").json()["models"]] == ["tiny-gen"]
    delete_keys(prefix)
    with client_for(store, prefix, embedded_worker=False) as api:  # the same for a job request
        r = api.post("/v1/generate", json={"class_label": 0}, headers=ASYNC)
        assert r.status_code == 503 and r.json()["detail"][0]["type"] == "model_unavailable"
        on_redis(announce)
        r = api.post("/v1/generate", json={"class_label": 0}, headers=ASYNC)
        assert r.status_code == 202, r.text


def test_jobs_queued_for_a_model_no_worker_serves_any_more_are_failed_when_its_workers_are_forgotten(
    store, other_store, prefix
):

    job_id = _queued_for_tiny_gen(store, prefix)  # announced by "serves-tiny-gen", which then goes silent

    async def forget_it(redis):
        other = _worker_on(other_store, prefix, redis, "serves-tiny-bare")
        keys = other.keys
        await other._create_groups()
        stream = keys.stream("normal", "tiny-gen")
        assert await redis.xlen(stream) == 1 and await redis.hexists(keys.held, job_id)
        assert await redis.smembers(keys.queued_models) == {b"tiny-gen"}  # where workers look
        await other._beat()  # it forgets no one yet: tiny-gen's worker was heard a moment ago
        assert await redis.hget(keys.job(job_id), "status") == b"queued"
        await redis.hset(keys.announced, "serves-tiny-gen", time.time() - 601)  # silent past worker_forget_s
        await other._beat()  # forgotten, but this worker has not been up that long: a slower pool may come
        assert await redis.hget(keys.job(job_id), "status") == b"queued"
        other._up_since -= 600
        await other._beat()
        assert await redis.hget(keys.job(job_id), "status") == b"failed"
        record = JobRecord.model_validate_json(await redis.hget(keys.job(job_id), "record"))
        assert record.error.startswith("model 'tiny-gen' is not served by any worker: every worker that served it")
        assert await redis.xlen(stream) == 0 and not await redis.hexists(keys.held, job_id)
        assert await redis.smembers(keys.queued_models) == set()

    on_redis(forget_it)


def test_jobs_queued_for_a_model_that_failed_on_every_worker_are_failed_with_its_reason(store, prefix):

    job_id = _queued_for_tiny_gen(store, prefix)

    async def fail_it_everywhere(redis):
        worker = _worker_on(store, prefix, redis, "serves-tiny-gen")  # the one that announced it, restarted
        worker.entries["tiny-gen"].fail("its weights do not load: unexpected end of file")
        worker._up_since -= 600  # up for worker_forget_s
        await worker._beat()
        record = JobRecord.model_validate_json(await redis.hget(worker.keys.job(job_id), "record"))
        assert record.status.value == "failed"
        assert record.error == (
            "model 'tiny-gen' is not served by any worker: its weights do not load: unexpected end of file"
        )

    on_redis(fail_it_everywhere)


def test_a_worker_whose_preload_names_a_model_its_store_lacks_refuses_to_start(store, prefix):
    from app.api.main import NoModels

    with pytest.raises(NoModels, match="DIFFUSION_PRELOAD names 'tiny-gne'"):
        with client_for(store, prefix, embedded_worker=True, preload="tiny-gne"):
            pass


def test_consumers_that_hold_nothing_are_deleted_at_a_clean_stop_and_once_idle(store, prefix):
    """Every worker ID became a consumer of each stream it read, and none was ever deleted: with restarts and
    autoscaling the group's consumer list grew without bound."""
    from app.queue.redis.keys import GROUP
    from app.queue.redis.worker import RedisWorker

    async def beat_then_restart(redis):
        beating = _worker_on(store, prefix, redis, "beating")
        beating.settings = make_settings(
            store, queue_url=REDIS_URL, redis_prefix=prefix, lease_s=0.2, worker_forget_s=0.5
        )
        await beating._create_groups()
        stream = beating.keys.stream("normal", "tiny-gen")
        await redis.xadd(stream, {"job": "f" * 32})
        await redis.xreadgroup(GROUP, "died-holding", {stream: ">"}, count=1)  # left for a takeover
        await redis.xgroup_createconsumer(stream, GROUP, "stopped-long-ago")  # holds nothing
        await asyncio.sleep(0.6)  # both idle for longer than worker_forget_s
        await redis.xgroup_createconsumer(stream, GROUP, "alive")  # holds nothing, but read a moment ago
        await beating._beat()
        consumers = {c["name"].decode() for c in await redis.xinfo_consumers(stream, GROUP)}
        assert consumers == {"died-holding", "alive"}

        settings = make_settings(store, queue_url=REDIS_URL, redis_prefix=prefix, shutdown_grace_s=0)
        worker = RedisWorker(settings, redis, worker_id="restarted")
        await worker.start()
        await redis.xadd(stream, {"job": "0" * 32})  # a job whose record is gone: read, then retired
        deadline = time.monotonic() + 10
        while await redis.xlen(stream) > 1:
            assert time.monotonic() < deadline, "the entry was not read"
            await asyncio.sleep(0.05)
        assert "restarted" in {c["name"].decode() for c in await redis.xinfo_consumers(stream, GROUP)}
        await worker.stop(grace=0)
        assert {c["name"].decode() for c in await redis.xinfo_consumers(stream, GROUP)} == {"died-holding", "alive"}

    on_redis(beat_then_restart)


def test_a_webhook_retry_keeps_its_delivery_for_the_api_nodes_schedule_and_drops_one_that_is_gone(prefix):
    """A worker wrote a delivery to expire by its own settings (2 days), before the API node's later attempts
    were due: it vanished without a word. A retry on a delivery gone meanwhile wrote back a hash of its attempts
    alone, which every later claim failed on (KeyError 'url'), holding back the rest of its batch."""
    from app.queue.outbox import Delivery
    from app.queue.redis.keys import Keys
    from app.queue.redis.outbox import RedisOutbox

    async def scenario(redis):
        keys = Keys(prefix)
        outbox = RedisOutbox(redis, keys, delivery_ttl_s=10**6)
        fields = {"url": "https://example.com/hook", "event": "completed", "record": "{}", "attempts": 0}
        for name in ("kept", "other"):
            await redis.hset(keys.delivery(name), mapping=fields)
            await redis.expire(keys.delivery(name), 2 * 24 * 3600)
            await redis.zadd(keys.outbox, {name: 0})
        await outbox.retry(Delivery("kept", fields["url"], "completed", "{}", 1), 5.0)
        assert await redis.ttl(keys.delivery("kept")) > 2 * 24 * 3600
        assert await redis.hget(keys.delivery("kept"), "attempts") == b"1"
        await outbox.retry(Delivery("gone", fields["url"], "completed", "{}", 1), 0.0)  # finished elsewhere
        assert not await redis.exists(keys.delivery("gone")) and await redis.zscore(keys.outbox, "gone") is None
        await redis.hset(keys.delivery("half"), "attempts", 2)  # left half-written by a retry before this fix
        await redis.zadd(keys.outbox, {"half": 0})
        claimed = await outbox.claim(lease_s=30, limit=10)
        assert [d.id for d in claimed] == ["other"]
        assert not await redis.exists(keys.delivery("half")) and await redis.zscore(keys.outbox, "half") is None

    on_redis(scenario)


def test_a_final_write_refused_by_a_full_redis_leaves_the_entry_until_the_record_is_written(store, tmp_path):
    """The records were written and the entries taken off in one pipeline, not one step: with Redis full
    (maxmemory, noeviction) the record's write was refused but XACK and XDEL, which take no memory, ran. The
    job then lived only in the worker's memory: stopped before Redis had room, it was lost, its record
    queued for ever. Now the entry goes in the record's own step, and a job written on the retry is counted."""
    import redis as sync_redis
    from redis.asyncio import Redis
    from redis.exceptions import OutOfMemoryError

    from app.jobs import EngineEvent, JobResult, ResultImage
    from app.queue.redis.keys import GROUP
    from tests.redis.helpers import OwnRedis

    server = OwnRedis(tmp_path, appendonly=False)
    admin = sync_redis.Redis.from_url(server.url)

    async def scenario():
        redis = Redis.from_url(server.url)
        try:
            settings = make_settings(store, queue_url=server.url, redis_prefix="full", worker_jobs=4)
            api = TestClient(create_app(settings.model_copy(update={"embedded_worker": False})))
            worker = _worker_on(store, "full", redis, "filling")
            worker.settings = settings
            await worker._create_groups()
            await worker._beat()
            with api:
                body = {"model": "tiny-gen", "class_label": 0}
                jobs = [api.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"] for _ in range(2)]
            await worker._read_once()
            assert set(worker.held) == set(jobs)
            stream = worker.keys.stream("normal", "tiny-gen")
            big = JobResult(images=[ResultImage(index=0, seed=0, media_type="image/png", data=b"x" * 3_000_000)])
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 10_000_000)  # for one
            worker._events.put_nowait([EngineEvent(job_id=j, type="succeeded", result=big) for j in jobs])
            before = finished("succeeded")
            with pytest.raises(OutOfMemoryError):
                await worker._write_once()
            statuses = [(await worker.records.get(j)).status.value for j in jobs]
            assert statuses == ["succeeded", "queued"]
            assert await redis.xlen(stream) == 1  # the unwritten job's entry is still there
            admin.config_set("maxmemory", 0)  # room again: the retry writes the second and counts both
            await worker._write_once()
            assert [(await worker.records.get(j)).status.value for j in jobs] == ["succeeded", "succeeded"]
            assert await redis.xlen(stream) == 0 and (await redis.xpending(stream, GROUP))["pending"] == 0
            assert finished("succeeded") == before + 2
        finally:
            await redis.aclose()

    try:
        asyncio.run(scenario())
    finally:
        admin.close()
        server.stop()


def test_a_pass_failing_unserved_jobs_cut_short_leaves_the_rest_for_the_next_pass(store, prefix, monkeypatch):
    """The model left the set of models with queued jobs before its jobs were failed, so a pass cut short
    (Redis away, the worker stopped) left the rest queued for ever: nothing looked at that model again."""
    from app.queue.redis.worker import RedisWorker

    _announce_tiny_gen(store, prefix)
    with client_for(store, prefix, embedded_worker=False) as api:
        body = {"model": "tiny-gen", "class_label": 0}
        jobs = [api.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"] for _ in range(3)]

    async def scenario(redis):
        judge = _worker_on(store, prefix, redis, "judge")
        await redis.delete(judge.keys.catalogs, judge.keys.announced)  # nobody serves tiny-gen any more
        retire, calls = RedisWorker._retire, []

        async def cut_off(self, *args, **kwargs):
            calls.append(args)
            if len(calls) == 2:
                raise ConnectionError("Redis went away")
            return await retire(self, *args, **kwargs)

        monkeypatch.setattr(RedisWorker, "_retire", cut_off)
        with pytest.raises(ConnectionError):
            await judge._fail_unserved(cutoff=time.time())
        assert await redis.sismember(judge.keys.queued_models, "tiny-gen")
        monkeypatch.setattr(RedisWorker, "_retire", retire)
        await judge._fail_unserved(cutoff=time.time())
        assert [(await judge.records.get(j)).status.value for j in jobs] == ["failed"] * 3
        assert not await redis.sismember(judge.keys.queued_models, "tiny-gen")  # its streams are empty now

    on_redis(scenario)


def test_an_entry_is_not_taken_off_when_redis_is_away_as_its_job_is_failed(store, prefix):
    """Failing an unusable entry's job swallowed every error, Redis away included, and took the entry off:
    the job stayed queued for ever. Only an error of the record itself lets the entry go unfailed."""
    from redis.exceptions import ConnectionError as RedisDown

    job_id = _queued_for_tiny_gen(store, prefix)

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "failing")
        stream = worker.keys.stream("normal", "tiny-gen")
        ((entry_id, _),) = await redis.xrange(stream)
        real = worker.records.get

        async def away(job):
            raise RedisDown("Redis went away")

        worker.records.get = away
        with pytest.raises(RedisDown):
            await worker._fail_entry(stream, entry_id.decode(), job_id, "unusable job")
        assert await redis.xlen(stream) == 1
        worker.records.get = real
        await worker._fail_entry(stream, entry_id.decode(), job_id, "unusable job")
        assert (await worker.records.get(job_id)).status.value == "failed" and await redis.xlen(stream) == 0

    on_redis(scenario)


async def _entries_idle_for_minutes(redis, stream: str, jobs: list[str], consumer: str = "dead-worker") -> None:
    """Entries of ``jobs`` read by ``consumer``, idle for two minutes: it died holding them, or Redis was away."""
    from app.queue.redis.keys import GROUP

    entries = [(await redis.xadd(stream, {"job": job})).decode() for job in jobs]
    await redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=len(jobs))
    await redis.xclaim(stream, GROUP, consumer, 0, entries, idle=120_000, justid=True)


def _taking(worker, taken: list[str]):
    """Make ``worker`` hold each job it takes (a stub ``_take``), recording the job IDs in ``taken``."""
    from app.queue.redis.worker import _Held

    async def take(stream, entry_id, job_id, *, delivered):
        taken.append(job_id)
        worker.held[job_id] = _Held(stream, entry_id, JobRecord(id=job_id, kind="generate", model="tiny-gen"))

    worker._take = take


def test_one_takeover_pass_reaches_a_dead_workers_entries_behind_many_live_ones(store, prefix):
    """XAUTOCLAIM looks at no more than 10 x COUNT pending entries a call, and a pass made one call with
    COUNT the free places: with one free place and 200 live workers' entries ahead, the dead worker's jobs
    waited 21 heartbeats (about 105 s, not a lease of 15)."""
    from app.queue.redis.keys import GROUP

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "one-free-place")
        worker.settings = worker.settings.model_copy(update={"worker_jobs": 1})
        stream = worker.keys.stream("normal", "tiny-gen")
        await worker._create_groups()
        for i in range(200):
            await redis.xadd(stream, {"job": f"live{i}"})
        await redis.xreadgroup(GROUP, "live-worker", {stream: ">"}, count=200)  # renewed: idle about 0
        await _entries_idle_for_minutes(redis, stream, [f"dead{i}" for i in range(5)])  # silent 2 min
        taken = []
        _taking(worker, taken)
        assert worker._free() == 1
        await worker._reclaim()
        return taken

    assert on_redis(scenario) == ["dead0"]


def test_a_job_taken_over_from_a_silent_worker_runs_alone(store, prefix):
    """A takeover counts a crash against every job taken, and which of a dead worker's jobs killed it is not
    known: a worker took over as many as it had free places and ran them together, so a job that crashes every
    worker took the others with it, each failed after max_attempts crashes. Now one is taken at a time, by a
    worker that holds nothing, and nothing joins it: its worker's death counts against it only."""
    from app.queue.redis.keys import GROUP

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "takes-over")  # 4 places
        stream = worker.keys.stream("normal", "tiny-gen")
        await worker._create_groups()
        await _entries_idle_for_minutes(redis, stream, ["dead0", "dead1"])
        await redis.xadd(stream, {"job": "new"})
        taken = []
        _taking(worker, taken)
        await worker._reclaim()
        first = (list(taken), worker._free())
        mine = await redis.xpending_range(stream, GROUP, min="-", max="+", count=10, consumername="takes-over")
        worker.held.clear()  # the job finished
        await worker._reclaim()
        second = (list(taken), worker._free())
        worker.held.clear()
        await worker._reclaim()  # none of the dead worker's left: places for new jobs again
        return first, len(mine), second, (list(taken), worker._free(), worker._silent_waiting)

    first, pending_mine, second, last = on_redis(scenario)
    assert first == (["dead0"], 0)
    assert pending_mine == 1  # the only entry a crash of this worker would count against
    assert second == (["dead0", "dead1"], 0)
    assert last == (["dead0", "dead1"], 4, False)


def test_a_worker_holding_jobs_reads_no_new_ones_while_a_silent_workers_entries_wait(store, prefix):
    """Only a worker that holds nothing takes a silent worker's entry over (to run it alone): a worker that went
    on reading new jobs would never empty under a steady load, and the dead worker's jobs would wait for ever.
    Once it empties, it looks at once, not a heartbeat later."""
    from app.queue.redis.keys import GROUP
    from app.queue.redis.worker import _Held

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "busy")
        worker.settings = worker.settings.model_copy(update={"lease_s": 60})  # a heartbeat of 20 s
        stream, mine = await _entry_read_by(worker, redis, "busy", "mine")
        worker.held["mine"] = _Held(stream, mine, JobRecord(id="mine", kind="generate", model="tiny-gen"))
        await _entries_idle_for_minutes(redis, stream, ["dead0"])
        await redis.xadd(stream, {"job": "new"})
        taken = []
        _taking(worker, taken)

        async def finished(job_id):
            held = worker.held.pop(job_id)
            await redis.xack(stream, GROUP, held.entry_id)
            worker._room.set()

        async def reads_until(job_id) -> int:
            calls = 0
            while job_id not in taken:
                await worker._read_once()
                calls += 1
            return calls

        with pytest.raises(asyncio.TimeoutError):  # it looks (the first look is due), then waits for room
            await asyncio.wait_for(worker._read_once(), 0.5)
        while_busy = list(taken)
        await finished("mine")
        calls = await asyncio.wait_for(reads_until("dead0"), 10)  # the next look is 20 s away
        alone = (list(taken), worker._free())
        await finished("dead0")
        await asyncio.wait_for(reads_until("new"), 10)
        return while_busy, calls, alone, taken

    while_busy, calls, alone, taken = on_redis(scenario)
    assert while_busy == []
    assert calls == 2  # one finds the worker empty, the next takes the entry over
    assert alone == (["dead0"], 0)
    assert taken == ["dead0", "new"]


def test_after_finding_redis_away_a_worker_takes_nothing_over_until_a_lease_has_passed(store, prefix):
    """Redis counts an entry's idle time on while it is down or stalled (its log keeps the last delivery's time
    across a restart): after an outage longer than a lease every live worker's entries looked silent, and the
    first worker to look took them over, restarting running jobs elsewhere and counting a crash against each."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app import background

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "back-from-an-outage")
        worker.settings = worker.settings.model_copy(update={"lease_s": 0.3})
        stream = worker.keys.stream("normal", "tiny-gen")
        await worker._create_groups()
        await _entries_idle_for_minutes(redis, stream, ["held-by-a-live-worker"], "live-worker")  # as an outage
        taken = []

        async def take(stream, entry_id, job_id, *, delivered):
            taken.append(job_id)

        worker._take = take

        async def redis_away():
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

        duty = worker._duty(redis_away)  # any duty of the worker's finding Redis away
        await asyncio.sleep(0.05)
        await background.stop([duty])
        await worker._reclaim()
        within_a_lease = list(taken)
        await asyncio.sleep(0.35)
        await worker._reclaim()  # the live worker has not renewed in a lease since: it is silent
        return within_a_lease, taken

    assert on_redis(scenario) == ([], ["held-by-a-live-worker"])


def test_a_worker_that_stops_reading_for_a_silent_workers_jobs_logs_it_once(store, prefix, caplog):
    """An operator sees why a busy worker reads no new jobs after another died: said once, not each heartbeat."""
    from app.queue.redis.worker import _Held

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "busy")
        stream, mine = await _entry_read_by(worker, redis, "busy", "mine")
        worker.held["mine"] = _Held(stream, mine, JobRecord(id="mine", kind="generate", model="tiny-gen"))
        await _entries_idle_for_minutes(redis, stream, ["dead0"])
        for _ in range(3):
            await worker._reclaim()
        return worker._silent_waiting

    with caplog.at_level("INFO", logger="app.queue.redis.worker"):
        assert on_redis(scenario) is True
    said = [r.getMessage() for r in caplog.records if "no new jobs read" in r.getMessage()]
    assert said == ["silent workers' jobs wait: no new jobs read until the 1 held here are done"]


def test_a_worker_just_started_takes_nothing_over_until_a_lease_has_passed(store, prefix):
    """A worker starting right after Redis was away (both restarted, or an outage while it started) did not know
    of the outage: every live worker's entries looked silent to it, and it took running jobs over, restarting
    them and counting a crash against each. It now waits a lease, within which live workers renew theirs."""

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "just-started", just_started=True)
        worker.settings = worker.settings.model_copy(update={"lease_s": 0.3})
        stream = worker.keys.stream("normal", "tiny-gen")
        await worker._create_groups()
        await _entries_idle_for_minutes(redis, stream, ["held-by-a-live-worker"], "live-worker")  # as an outage
        taken = []
        _taking(worker, taken)
        await worker._reclaim()
        within_a_lease = list(taken)
        await asyncio.sleep(0.35)
        await worker._reclaim()  # the live worker has not renewed in a lease since: it is silent
        return within_a_lease, taken

    assert on_redis(scenario) == ([], ["held-by-a-live-worker"])


def test_a_worker_renews_its_leases_as_soon_as_its_renewal_duty_runs_again(store, prefix):
    """The renewal slept a heartbeat before renewing, so after Redis came back a worker's entries stayed idle
    (as Redis counted them through the outage) for up to a heartbeat more: now it renews first, then sleeps."""
    from app import background
    from app.queue.redis.keys import GROUP
    from app.queue.redis.worker import _Held

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "renews-first")
        worker.settings = worker.settings.model_copy(update={"lease_s": 60})  # a heartbeat of 20 s
        stream = worker.keys.stream("normal", "tiny-gen")
        await worker._create_groups()
        entry = (await redis.xadd(stream, {"job": "mine"})).decode()
        await redis.xreadgroup(GROUP, "renews-first", {stream: ">"}, count=1)
        await redis.xclaim(stream, GROUP, "renews-first", 0, [entry], idle=120_000, justid=True)
        worker.held["mine"] = _Held(stream, entry, JobRecord(id="mine", kind="generate", model="tiny-gen"))
        duty = worker._duty(worker._renew_once)
        await asyncio.sleep(0.3)
        await background.stop([duty])
        (pending,) = await redis.xpending_range(stream, GROUP, min="-", max="+", count=10)
        return pending["time_since_delivered"]

    assert on_redis(scenario) < 60_000


def test_a_worker_does_not_hand_back_a_job_another_worker_took_over(store, prefix):
    """A stopping worker, cut off past its lease a moment before, wrote the record of a job another worker had
    taken over back to queued, added a second entry for it and deleted the other worker's entry: that worker
    then canceled the job as lost, and a third ran it."""
    from app.queue.redis.keys import GROUP
    from app.queue.redis.records import RecordStore
    from app.queue.redis.worker import _Held

    job_id = _queued_for_tiny_gen(store, prefix)

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "cut-off")
        stream = worker.keys.stream("normal", "tiny-gen")
        (_, [(entry, _)]), *_ = await redis.xreadgroup(GROUP, "cut-off", {stream: ">"}, count=1)
        record = await RecordStore(redis, worker.keys, 600, 600).get(job_id)
        worker.held[job_id] = _Held(stream, entry.decode(), record)
        await redis.xclaim(stream, GROUP, "took-over", min_idle_time=0, message_ids=[entry])  # its takeover
        runs_there = record.model_copy(update={"status": JobStatus.running})
        await RecordStore(redis, worker.keys, 600, 600).update(runs_there)
        await worker._hand_back(job_id, worker.held.pop(job_id))
        pending = await redis.xpending_range(stream, GROUP, min="-", max="+", count=10)
        after = await RecordStore(redis, worker.keys, 600, 600).get(job_id)
        return [p["consumer"] for p in pending], await redis.xlen(stream), after.status

    owners, entries, status = on_redis(scenario)
    assert owners == [b"took-over"] and entries == 1 and status == "running"


def test_a_job_canceled_before_any_worker_read_it_leaves_its_stream(store, prefix):
    """A job canceled while queued stayed on its stream until a worker with a free place read it: with every
    worker busy, canceled jobs counted as work in the stream's length, which KEDA scales workers by. One a worker
    has read stays for that worker to retire."""
    import redis as redis_sync

    from app.queue.redis.keys import GROUP, Keys

    _announce_tiny_gen(store, prefix)
    stream = Keys(prefix).stream("normal", "tiny-gen")
    client = redis_sync.Redis.from_url(REDIS_URL)
    with client_for(store, prefix, embedded_worker=False) as api:
        jobs = []
        for seed in range(2):
            r = api.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0, "seed": seed}, headers=ASYNC)
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
        assert client.xlen(stream) == 2
        client.xreadgroup(GROUP, "busy-worker", {stream: ">"}, count=1)  # a worker has read the first
        for job_id in jobs:
            assert api.delete(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
        left = [fields[b"job"].decode() for _, fields in client.xrange(stream)]
    client.close()
    assert left == [jobs[0]]


async def _entry_read_by(worker, redis, consumer: str, job: str) -> tuple[str, str]:
    """(stream, entry ID) of a new entry of ``job`` on ``worker``'s tiny-gen stream, read by ``consumer``."""
    from app.queue.redis.keys import GROUP

    stream = worker.keys.stream("normal", "tiny-gen")
    await worker._create_groups()
    entry = (await redis.xadd(stream, {"job": job})).decode()
    await redis.xreadgroup(GROUP, consumer, {stream: ">"}, count=1)
    return stream, entry


def test_a_worker_that_takes_back_its_own_entry_counts_no_crash_against_it(store, prefix):
    """A worker whose renewal lagged past a lease took its own running job's entry back in its next takeover
    pass, and that takeover counted a delivery: a later real crash then counted twice towards max_attempts."""
    from app.queue.redis.keys import GROUP
    from app.queue.redis.worker import _Held

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "lagged")
        stream, entry = await _entry_read_by(worker, redis, "lagged", "mine")
        await redis.xclaim(stream, GROUP, "lagged", 0, [entry], idle=120_000, justid=True)  # a lagged renewal
        worker.held["mine"] = _Held(stream, entry, JobRecord(id="mine", kind="generate", model="tiny-gen"))
        await worker._reclaim()
        (pending,) = await redis.xpending_range(stream, GROUP, min="-", max="+", count=10)
        return pending["consumer"], pending["times_delivered"], list(worker.held)

    assert on_redis(scenario) == (b"lagged", 1, ["mine"])


def test_a_hand_back_after_redis_lost_its_data_does_not_end_the_stop(store, prefix):
    """The ownership check of a hand-back asked the stream's consumer group, which a Redis restarted without its
    data no longer has: its NOGROUP error ended the worker's stop there, leaving the other jobs unhanded."""
    from app.queue.redis.worker import _Held

    async def scenario(redis):
        worker = _worker_on(store, prefix, redis, "stopping")
        stream, entry = await _entry_read_by(worker, redis, "stopping", "gone")
        await redis.delete(stream, worker.keys.job("gone"))  # as a restart without persistence leaves them
        await worker._hand_back("gone", _Held(stream, entry, JobRecord(id="gone", kind="generate", model="tiny-gen")))
        return await redis.exists(stream, worker.keys.job("gone"))

    assert on_redis(scenario) == 0


def test_a_job_handed_back_and_then_canceled_before_any_worker_read_it_leaves_its_stream(store, prefix):
    """A hand-back (or a move to its model's stream) writes the job a new entry, which the job hash did not
    record: canceled before a worker read it, that entry stayed, counted as work by KEDA."""
    import redis as redis_sync

    from app.queue.redis.keys import GROUP, Keys
    from app.queue.redis.records import RecordStore
    from app.queue.redis.worker import _Held

    job_id = _queued_for_tiny_gen(store, prefix)
    stream = Keys(prefix).stream("normal", "tiny-gen")

    async def hand_back(redis):
        worker = _worker_on(store, prefix, redis, "stopping")
        (_, [(entry, _)]), *_ = await redis.xreadgroup(GROUP, "stopping", {stream: ">"}, count=1)
        record = await RecordStore(redis, worker.keys, 600, 600).get(job_id)
        await worker._hand_back(job_id, _Held(stream, entry.decode(), record))

    on_redis(hand_back)
    client = redis_sync.Redis.from_url(REDIS_URL)
    assert [fields[b"job"].decode() for _, fields in client.xrange(stream)] == [job_id]  # its new entry
    with client_for(store, prefix, embedded_worker=False) as api:
        assert api.delete(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
    left = client.xlen(stream)
    client.close()
    assert left == 0
