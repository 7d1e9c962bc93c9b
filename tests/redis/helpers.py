"""Helpers for the Redis tests: the server URL, API nodes and workers as real processes, polling jobs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[2]


def delete_keys(prefix: str) -> None:
    """Delete every key under ``prefix``: a test's clean-up, and what a Redis restart without persistence
    does to a deployment's keys."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A diffusion-serve or diffusion-worker process."""

    def __init__(
        self, role: str, prefix: str, store: Path, *, queue_url: str | None = REDIS_URL, log: Path | None = None, **env
    ) -> None:
        self.role = role
        self.port = free_port() if role == "serve" else None
        args = [
            sys.executable,
            "-m",
            "app.cli",
            role,
            *(["--queue-url", queue_url] if queue_url else []),
            "--model-store",
            str(store),
            "--log-level",
            "warning",
        ]
        if self.port:
            args += ["--port", str(self.port)]
        full_env = {
            **os.environ,
            "DIFFUSION_REDIS_PREFIX": prefix,
            "DIFFUSION_DEVICE": "cpu",
            "DIFFUSION_LEASE_S": "1.5",
            "DIFFUSION_MAX_BATCH": "16",
            "DIFFUSION_SHUTDOWN_GRACE_S": "5",
            "HF_HUB_OFFLINE": "1",
            **{k: str(v) for k, v in env.items()},
        }
        self.log = log
        output = open(log, "ab") if log else None  # noqa: SIM115 (the process writes to it)
        self.proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=output, stderr=output)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path="/readyz", timeout=60.0) -> "Proc":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.role} not ready")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


class OwnRedis:
    """A Redis server of the test's own on a free port, to stop and start again (``appendonly``: its data
    survives a restart, in ``folder``)."""

    def __init__(self, folder: Path, *, appendonly: bool) -> None:
        self.port, self.folder, self.appendonly = free_port(), folder, appendonly
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.folder)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.RedisError:  # not up yet, or loading its data
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def job_streams(client: redis.Redis, prefix: str) -> list[bytes]:
    """Every job stream of the deployment: each model's and those of the jobs that need no model."""
    return [key for key in client.scan_iter(match=f"{prefix}:*jobs*") if client.type(key) == b"stream"]


def _pid(consumer: bytes) -> int:
    """The pid in a worker's consumer name (host-pid-suffix)."""
    return int(consumer.decode().split("-")[-2])


def worker_pids_holding(prefix: str) -> dict[int, int]:
    """pid -> pending entries, for the workers that hold entries of the job streams."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        held: dict[int, int] = {}
        for stream in job_streams(client, prefix):
            for consumer in client.xpending(stream, "workers").get("consumers") or []:
                pid = _pid(consumer["name"])
                held[pid] = held.get(pid, 0) + int(consumer["pending"])
        return held
    finally:
        client.close()


def worker_pids_holding_job(prefix: str, job_id: str) -> set[int]:
    """The pids of the workers that hold an entry of ``job_id``."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        pids = set()
        for stream in job_streams(client, prefix):
            for entry_id, fields in client.xrange(stream):
                if fields.get(b"job", b"").decode() == job_id:
                    for pending in client.xpending_range(stream, "workers", min=entry_id, max=entry_id, count=1):
                        pids.add(_pid(pending["consumer"]))
        return pids
    finally:
        client.close()


def poll(url: str, job_id: str, *, until=("succeeded", "failed", "canceled"), timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5)
        if r.status_code == 200 and r.json()["status"] in until:
            return r.json()
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} not {until}")


def submit(url: str, **body) -> str:
    r = httpx.post(
        f"{url}/v1/generate", json={"class_label": 0, **body}, headers={"Prefer": "respond-async"}, timeout=10
    )
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def on_redis(work):
    """``await work(redis)`` on a fresh asyncio connection to the test server, closed after; its result."""
    import asyncio

    from redis.asyncio import Redis

    async def run():
        connection = Redis.from_url(REDIS_URL)
        try:
            return await work(connection)
        finally:
            await connection.aclose()

    return asyncio.run(run())
