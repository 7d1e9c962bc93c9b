"""A bounded fuzz of the API against its own OpenAPI document (schemathesis): no 5xx, and every answer's
status, content type and body as the document declares them, with and without keys configured."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from app.api.auth import digest
from app.api.main import create_app
from tests.helpers import make_settings
from tests.tiny_models import write_bare, write_generator

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def _app(keyed: bool):
    root = Path(tempfile.mkdtemp(prefix="fuzz-store-"))
    write_generator(root / "tiny-gen")
    write_bare(root / "tiny-rgb")
    options = {"max_job_megapixel_steps": 5.0}
    if keyed:
        keys = root / "keys.json"
        keys.write_text(json.dumps([{"name": "fuzz", "sha256": digest("k"), "scopes": ["generate", "denoise"]}]))
        options["api_keys_file"] = keys
    return create_app(make_settings(root, **options))


OPEN, KEYED = _app(keyed=False), _app(keyed=True)
open_schema = schemathesis.openapi.from_asgi("/openapi.json", OPEN)
keyed_schema = schemathesis.openapi.from_asgi("/openapi.json", KEYED)


@pytest.fixture(scope="module", autouse=True)
def running():
    """The apps' lifespans (queue, engine) run for the module."""
    with TestClient(OPEN), TestClient(KEYED):
        yield


@open_schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_open_api_answers_as_its_document_says(case):
    case.validate_response(case.call(), checks=CHECKS)


@keyed_schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_keyed_api_answers_as_its_document_says(case):
    case.validate_response(case.call(headers={"Authorization": "Bearer k"}), checks=CHECKS)
