"""Redis going away under a running deployment (a Redis server of the test's own, stopped and started
again): the API answers 503 with Retry-After (never 500), /readyz says not ready, and both recover by
themselves; with its data lost, workers drop the jobs whose records vanished instead of running them on."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from tests.redis.helpers import OwnRedis, job_streams, poll, submit
from tests.tiny_models import write_generator


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("outage-store")
    write_generator(root / "tiny-gen")
    return root


def wait_until(check, timeout=60.0, every=0.1):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def test_redis_down_is_a_503_with_retry_after_and_everything_recovers(prefix, procs, store, tmp_path):
    server = OwnRedis(tmp_path, appendonly=True)
    try:
        api = procs("serve", prefix, store, queue_url=server.url)
        procs("worker", prefix, store, queue_url=server.url)
        api.wait_ready()
        before = poll(api.url, submit(api.url, steps=5, seed=1))

        server.stop()
        answers = [
            httpx.post(api.url + "/v1/generate", json={"class_label": 0}, timeout=10),
            httpx.post(
                api.url + "/v1/generate", json={"class_label": 0}, headers={"Prefer": "respond-async"}, timeout=10
            ),
            httpx.get(f"{api.url}/v1/jobs/{before['job_id']}", timeout=10),
            httpx.delete(f"{api.url}/v1/jobs/{before['job_id']}", timeout=10),
        ]
        for r in answers:
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"].isdigit() and r.json()["detail"][0]["type"] == "queue_unavailable"
        assert httpx.get(api.url + "/readyz", timeout=10).status_code == 503  # checked live
        assert httpx.get(api.url + "/healthz", timeout=10).status_code == 200  # the process itself is fine
        assert httpx.get(api.url + "/metrics", timeout=10).status_code == 200

        server.start()  # the same port, its data back from the append-only file
        wait_until(lambda: httpx.get(api.url + "/readyz", timeout=10).status_code == 200)
        again = httpx.get(f"{api.url}/v1/jobs/{before['job_id']}", timeout=10).json()
        assert again["status"] == "succeeded" and again["images"] == before["images"]
        assert poll(api.url, submit(api.url, steps=5, seed=2))["status"] == "succeeded"
    finally:
        server.stop()


def test_jobs_whose_records_vanished_are_dropped_not_run_on_or_handed_back(prefix, procs, store, tmp_path):
    server = OwnRedis(tmp_path, appendonly=False)  # a restart loses everything
    log = tmp_path / "worker.log"
    try:
        api = procs("serve", prefix, store, queue_url=server.url)
        worker = procs("worker", prefix, store, queue_url=server.url, log=log, DIFFUSION_LOG_FORMAT="text")
        api.wait_ready()
        jobs = [submit(api.url, steps=1000, num_images=8, seed=i) for i in range(4)]
        poll(api.url, jobs[0], until=("running",))

        server.stop()
        server.start()  # empty
        wait_until(lambda: "record is gone" in log.read_text(errors="replace"), timeout=60)
        wait_until(lambda: httpx.get(api.url + "/readyz", timeout=10).status_code == 200)
        assert httpx.get(f"{api.url}/v1/jobs/{jobs[0]}", timeout=10).status_code == 404
        assert poll(api.url, submit(api.url, steps=5, seed=9), timeout=60)["status"] == "succeeded"

        assert worker.stop() == 0
        client = redis.Redis.from_url(server.url)
        try:  # nothing handed back: the orphans are not queued again for the next worker
            streams = job_streams(client, prefix)
            assert streams and sum(client.xlen(stream) for stream in streams) == 0
        finally:
            client.close()
    finally:
        server.stop()
