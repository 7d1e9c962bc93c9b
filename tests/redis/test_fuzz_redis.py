"""The bounded fuzz of tests/api/test_fuzz.py in Redis mode, over HTTP: an API node with an embedded worker on
the test Redis, checked against the committed OpenAPI document (no 5xx; statuses, content types and bodies as
declared)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.api.test_fuzz import CHECKS
from tests.redis.helpers import Proc, delete_keys
from tests.tiny_models import write_bare, write_generator

schema = schemathesis.openapi.from_path(Path(__file__).resolve().parents[2] / "openapi.json")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    store = tmp_path_factory.mktemp("fuzz-redis")
    write_generator(store / "tiny-gen")
    write_bare(store / "tiny-rgb")
    prefix = f"test-fuzz-{uuid.uuid4().hex[:10]}"
    node = Proc("serve", prefix, store, DIFFUSION_EMBEDDED_WORKER="true", DIFFUSION_MAX_JOB_MEGAPIXEL_STEPS="5")
    try:
        yield node.wait_ready()
    finally:
        node.stop()
        delete_keys(prefix)


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_in_redis_mode_answers_as_its_document_says(case, api):
    case.validate_response(case.call(base_url=api.url), checks=CHECKS)
