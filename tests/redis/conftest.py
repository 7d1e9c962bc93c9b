"""Redis fixtures: each test gets its own key prefix on the server at REDIS_URL and removes its keys after,
and a place to start processes that are stopped after it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.redis.helpers import Proc, delete_keys


@pytest.fixture
def prefix():
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_keys(name)


@pytest.fixture
def procs():
    started: list[Proc] = []

    def start(role: str, prefix: str, store: Path, **env) -> Proc:
        proc = Proc(role, prefix, store, **env)  # queue_url=..., log=... go through
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill()
