"""Redis going away under a running deployment (a Redis server of the test's own, stopped and started
again): the API answers 503 with Retry-After (never 500), /readyz says not ready, and both recover by
themselves; with its data lost, workers drop the jobs whose records vanished instead of running them on."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time

import httpx
import pytest
import redis

from app.queue.redis.queue import reach, unavailable
from app.settings import Settings
from tests.redis.helpers import OwnRedis, free_port, job_streams, poll, submit
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
            httpx.get(api.url + "/v1/models", timeout=10),  # not the last catalog, as if all were well
            httpx.get(api.url + "/v1/models/tiny-gen", timeout=10),
        ]
        for r in answers:
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"].isdigit() and r.json()["detail"][0]["type"] == "queue_unavailable"
            # Redis's address and errno go to the log, not to clients
            assert r.json()["detail"][0]["msg"] == "the job queue is unreachable; retry shortly"
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


@contextlib.contextmanager
def refusing_redis(prefix, procs, store, folder):
    """An API node and a worker on a Redis server of the test's own (its data in ``folder``), which the test
    then makes refuse writes: (the API node, a client of that server)."""
    server = OwnRedis(folder, appendonly=False)
    client = redis.Redis.from_url(server.url)
    try:
        api = procs("serve", prefix, store, queue_url=server.url)
        procs("worker", prefix, store, queue_url=server.url)
        api.wait_ready()
        yield api, client
    finally:
        client.close()
        server.stop()


def assert_job_requests_get_503(api, header_sets) -> None:
    """A job request with each set of headers is the queue being unavailable: 503 with Retry-After."""
    for headers in header_sets:
        r = httpx.post(api.url + "/v1/generate", json={"class_label": 0}, headers=headers, timeout=10)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit() and r.json()["detail"][0]["type"] == "queue_unavailable"


@pytest.mark.parametrize(
    ("reply", "away"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", True),
        ("READONLY You can't write against a read only replica.", True),  # a failover's old master
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
        ("TRYAGAIN Multiple keys request during rehashing of slot", True),
        ("CLUSTERDOWN The cluster is down", True),
        ("NOREPLICAS Not enough good replicas to write.", True),
        ("LOADING Redis is loading the dataset in memory", True),
        ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.", True),
        ("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.", True),
        ("BUSYGROUP Consumer Group name already exists", False),  # a request's error, though it starts "BUSY"
        ("BUSYKEY Target key name already exists.", False),
        ("ERR wrong number of arguments for 'xadd' command", False),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
        ("NOSCRIPT No matching script. Please use EVAL.", False),
    ],
)
def test_replies_that_say_redis_cannot_serve_now_are_told_from_errors_in_the_request(reply, away):
    # as redis-py parses them: most of these become classes of their own, with the code cut from the message
    from redis._parsers import BaseParser

    assert unavailable(BaseParser.parse_error(reply)) is away


@pytest.mark.parametrize("reply", ["BUSY Redis is busy running a script.", "MISCONF Redis is unable to persist"])
def test_such_replies_are_told_also_inside_a_pipeline_or_an_aborted_transaction(reply):
    """redis-py puts the failed command in front of a pipeline's reply, and a transaction that Redis discarded
    arrives as EXECABORT naming the reply that made it fail (the catalog refresh and job claims use both)."""
    from redis._parsers import BaseParser
    from redis.asyncio.client import Pipeline

    in_pipeline = BaseParser.parse_error(reply)
    Pipeline.annotate_exception(None, in_pipeline, 1, ("HGETALL", "catalogs"))  # as redis-py does
    assert str(in_pipeline).startswith("Command # 1 (HGETALL catalogs) of pipeline caused error: ")
    discarded = BaseParser.parse_error(f"EXECABORT Transaction discarded because of: {reply}")
    assert unavailable(in_pipeline) and unavailable(discarded)
    request_error = BaseParser.parse_error("EXECABORT Transaction discarded because of: WRONGTYPE Operation")
    assert not unavailable(request_error)
    named_so = BaseParser.parse_error("WRONGTYPE Operation against a key holding the wrong kind of value")
    Pipeline.annotate_exception(None, named_so, 1, ("GET", "idem:x of pipeline caused error: BUSY"))  # a client's key
    assert not unavailable(named_so)  # the reply is read after the command's text, not inside it


def test_a_full_redis_is_a_503_and_jobs_go_on_once_it_has_room(prefix, procs, store, tmp_path):
    """deploy/k8s/redis.yaml runs Redis with maxmemory and noeviction: when full it refuses writes with
    "OOM command not allowed", which must read as the queue being unavailable, not as a server error."""
    with refusing_redis(prefix, procs, store, tmp_path) as (api, client):
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # one byte: full, every write refused
        with pytest.raises(redis.exceptions.OutOfMemoryError):  # redis-py cuts the "OOM" code from the message
            client.set(f"{prefix}:probe", "x")
        assert_job_requests_get_503(api, ({}, {"Prefer": "respond-async"}))
        client.config_set("maxmemory", 0)  # room again
        assert poll(api.url, submit(api.url, steps=5, seed=3))["status"] == "succeeded"


def test_a_redis_that_cannot_save_its_snapshot_is_a_503_and_jobs_go_on_once_it_can(prefix, procs, store, tmp_path):
    """A full or lost disk: with snapshots configured, Redis refuses every write with MISCONF once a save
    failed (stop-writes-on-bgsave-error, its default). That is the queue being unavailable, not a 500."""
    import shutil

    folder = tmp_path / "redis-data"
    folder.mkdir()
    with refusing_redis(prefix, procs, store, folder) as (api, client):
        client.config_set("save", "3600 1")
        shutil.rmtree(folder)  # where it saves is gone
        client.bgsave()
        wait_until(lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err")
        with pytest.raises(redis.exceptions.ResponseError, match="MISCONF"):
            client.set(f"{prefix}:probe", "x")
        assert_job_requests_get_503(
            api, ({}, {"Prefer": "respond-async"}, {"Prefer": "respond-async", "Idempotency-Key": "k1"})
        )
        client.config_set("save", "")  # snapshots off: writes are taken again
        assert poll(api.url, submit(api.url, steps=5, seed=4))["status"] == "succeeded"


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


@pytest.mark.parametrize("role", ["serve", "worker"])
def test_a_node_or_worker_without_redis_waits_then_refuses_to_start_in_one_line(role, store):
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nobody listens there
    command = [sys.executable, "-m", "app.cli", role, "--queue-url", url, "--model-store", str(store)]
    env = {"DIFFUSION_QUEUE_WAIT_S": "1.5", "DIFFUSION_DEVICE": "cpu", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"diffusion-{role}: cannot reach the job queue at redis://***@127.0.0.1:")
    assert "within 1.5 s (DIFFUSION_QUEUE_WAIT_S)" in last and "s3cret" not in done.stderr
    assert "Traceback" not in done.stderr
    assert "does not answer yet" in done.stderr  # it waited, saying so


def test_reach_waits_for_redis_to_answer():
    class Late:
        pings = 0

        async def ping(self):
            self.pings += 1
            if self.pings < 3:
                raise redis.exceptions.ConnectionError("not yet")
            return True

    late = Late()
    asyncio.run(reach(late, Settings(queue_url="redis://127.0.0.1:1/0", queue_wait_s=30)))
    assert late.pings == 3


@pytest.mark.parametrize("role", ["worker", "serve"])
def test_a_stop_while_starting_ends_the_process_at_once_with_0(role, prefix, procs, store, tmp_path):
    """Nothing is held while Redis is reached or the models load. Without a handler, Python as a container's
    PID 1 ignores SIGTERM (the kernel sends PID 1 only what it handles): a pod stopped then ran on through its
    load, took jobs, and was killed holding them. Here the process is not PID 1, where SIGTERM had killed it
    by signal (-15)."""
    from tests.redis.helpers import free_port

    log = tmp_path / f"{role}.log"
    proc = procs(
        role,
        prefix,
        store,
        queue_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: it waits for Redis
        log=log,
        DIFFUSION_QUEUE_WAIT_S="120",
        DIFFUSION_LOG_FORMAT="text",
    )
    wait_until(lambda: log.exists() and b"does not answer yet" in log.read_bytes(), timeout=60)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(20) == 0
    assert b"stopped by signal 15 while starting" in log.read_bytes()


def test_a_frozen_redis_fails_commands_after_the_command_timeout_while_subscriptions_wait_on(tmp_path, monkeypatch):
    """The client relied on redis-py's default command timeout, which only redis-py 8 sets (earlier ones, which
    ``redis>=5`` allowed, wait for ever: a frozen Redis hung every API request instead of a 503). A subscription
    must not time out while no message comes."""
    from app.queue.redis import pubsub, queue

    monkeypatch.setattr(queue, "COMMAND_TIMEOUT_S", 0.5)
    server = OwnRedis(tmp_path, appendonly=False)

    async def scenario() -> None:
        client = queue.connect(server.url)
        heard = asyncio.get_running_loop().create_future()

        async def listen() -> None:
            async for data in pubsub.messages(client, "news"):
                heard.set_result(data)
                return

        listening = asyncio.create_task(listen())
        await asyncio.sleep(1.5)  # three command timeouts without a message
        assert await client.publish("news", "late") == 1
        assert await asyncio.wait_for(heard, 5) == b"late"
        await listening
        server.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(redis.exceptions.TimeoutError) as failed:  # redis-py's, not wait_for's
                await asyncio.wait_for(client.get("anything"), 4)
            assert unavailable(failed.value)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
