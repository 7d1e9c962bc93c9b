"""HTTP's own rules, applied for every route (app.api.semantics): HEAD wherever GET is, list fields given
on several lines read as one list, encoded bodies refused with 415, one Content-Type, CORS refusals in the
service's error shape."""

from __future__ import annotations

import gzip

import pytest

ASYNC = {"Prefer": "respond-async"}


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/", "/v1/models", "/v1/models/tiny-gen", "/openapi.json"])
def test_head_answers_as_get_without_the_body(client, path):
    got, head = client.get(path), client.head(path)
    assert head.status_code == got.status_code == 200
    assert head.content == b"" and head.headers["content-length"] == got.headers["content-length"]
    assert head.headers["content-type"] == got.headers["content-type"]


def test_head_on_a_job_and_its_image_but_not_on_its_event_stream(client):
    done = client.post("/v1/generate", json={"class_label": 0, "steps": 2}).json()
    assert done["status"] == "succeeded"
    job = done["job_id"]
    for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/images/0"):
        head = client.head(path)
        assert head.status_code == 200 and head.content == b"", path
    assert client.head("/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 404
    stream = client.head(f"/v1/jobs/{job}/events")
    assert stream.status_code == 405 and "HEAD" not in stream.headers["allow"]
    r = client.post("/healthz")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


def test_accept_given_on_two_lines_is_one_list(client):
    body = b'{"class_label": 0, "steps": 2}'
    lines = [("content-type", "application/json"), ("accept", "image/png;q=0.5"), ("accept", "application/json")]
    assert client.post("/v1/generate", content=body, headers=lines).headers["content-type"] == "application/json"
    lines = [("content-type", "application/json"), ("accept", "application/json;q=0.1"), ("accept", "image/png")]
    assert client.post("/v1/generate", content=body, headers=lines).headers["content-type"] == "image/png"


def test_prefer_given_on_two_lines_is_one_list(client):
    body = b'{"class_label": 0, "steps": 2}'
    lines = [("content-type", "application/json"), ("prefer", "return=minimal"), ("prefer", "respond-async")]
    assert client.post("/v1/generate", content=body, headers=lines).status_code == 202


@pytest.mark.parametrize("coding", ["gzip", "x-unknown", "identity, br"])
def test_an_encoded_body_is_415_naming_the_coding(client, coding):
    payload = b'{"class_label": 0, "steps": 2}'
    body = gzip.compress(payload) if coding == "gzip" else payload
    r = client.post(
        "/v1/generate", content=body, headers={"content-type": "application/json", "content-encoding": coding}
    )
    assert r.status_code == 415 and r.headers["accept-encoding"] == "identity"
    (error,) = r.json()["detail"]
    assert error["loc"] == ["header", "content-encoding"] and error["type"] == "unsupported_content_encoding"
    assert coding.split(", ")[-1] in error["msg"]
    plain = {"content-type": "application/json", "content-encoding": "identity"}
    assert client.post("/v1/generate", content=payload, headers=plain).status_code == 200


def test_a_content_coding_on_a_request_without_a_body_is_not_refused(client):
    assert client.get("/healthz", headers={"content-encoding": "gzip"}).status_code == 200
    assert client.post("/nowhere", headers={"content-encoding": "gzip"}).status_code == 404


def test_head_is_counted_by_its_route_and_method(client):
    client.head("/v1/models")
    metrics = client.get("/metrics").text
    assert 'diffusion_http_requests_total{method="HEAD",route="/v1/models",status="200"}' in metrics


def test_content_type_given_twice_is_400(client):
    lines = [("content-type", "application/json"), ("content-type", "text/plain")]
    r = client.post("/v1/generate", content=b'{"class_label": 0}', headers=lines)
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["header", "content-type"]


def test_an_idempotency_key_given_twice_is_400_not_its_first_value(client):
    """Which job two keys name is not guessed: before, the first was used and the second ignored."""
    lines = [("idempotency-key", "first"), ("idempotency-key", "second"), ("prefer", "respond-async")]
    r = client.post("/v1/generate", json={"class_label": 0, "steps": 2}, headers=lines)
    assert r.status_code == 400 and r.json()["detail"][0] == {
        "loc": ["header", "idempotency-key"],
        "msg": "Idempotency-Key is given 2 times; send it once",
        "type": "duplicate_header",
    }
    once = {"idempotency-key": "first", "prefer": "respond-async"}
    job = client.post("/v1/generate", json={"class_label": 0, "steps": 2}, headers=once).json()["job_id"]
    assert client.post("/v1/generate", json={"class_label": 0, "steps": 2}, headers=once).json()["job_id"] == job


def test_a_refused_cors_preflight_answers_in_the_error_shape(make_client):
    client = make_client(cors_origins="https://app.example")
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    r = client.options("/v1/generate", headers=preflight)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    (error,) = r.json()["detail"]
    assert error["type"] == "cors_refused" and "origin" in error["msg"]
    assert "access-control-allow-origin" not in r.headers
    allowed = client.options("/v1/generate", headers={**preflight, "Origin": "https://app.example"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
    odd = {**preflight, "Origin": "https://app.example", "Access-Control-Request-Headers": "x-custom"}
    r = client.options("/v1/generate", headers=odd)
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["header", "access-control-request-headers"]
