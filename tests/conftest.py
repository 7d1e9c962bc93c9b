"""Fixtures: a model store with tiny models, and a running app (lifespan, worker thread) around it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from tests.helpers import make_settings
from tests.tiny_models import write_bare, write_generator

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """Two tiny models: 'tiny-gen' (classes a/b/c + null, card, generate) and 'tiny-rgb' (no card, RGB)."""
    root = tmp_path_factory.mktemp("store")
    write_generator(root / "tiny-gen")
    write_bare(root / "tiny-rgb")
    return root


@pytest.fixture
def make_client(store):
    clients = []

    def make(**overrides) -> TestClient:
        client = TestClient(create_app(make_settings(overrides.pop("store", store), **overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("store-api")
    write_generator(root / "tiny-gen")
    write_bare(root / "tiny-rgb")
    with TestClient(create_app(make_settings(root))) as c:
        yield c
