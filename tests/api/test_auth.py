"""API keys, scopes, job ownership and quotas (in-process; across Redis nodes in tests/redis)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from app.api.auth import digest
from app.api.main import create_app
from tests.api.helpers import photo, png_bytes
from tests.helpers import make_settings

KEYS = {
    "alice": ("key-alice", {"scopes": ["generate"]}),
    "bob": ("key-bob", {"scopes": ["denoise"], "max_concurrent_jobs": 1}),
    "carol": ("key-carol", {"scopes": ["generate", "denoise"], "requests_per_minute": 2}),
    "root": ("key-root", {"scopes": ["admin"]}),
    "modest": ("key-modest", {"scopes": ["generate"], "max_priority": "normal"}),
    "humble": ("key-humble", {"scopes": ["generate", "denoise"], "max_priority": "low"}),
    "dana": ("key-dana", {"scopes": ["denoise"], "requests_per_minute": 2}),
}


def write_keys(path):
    entries = [{"name": name, "sha256": digest(key), **extra} for name, (key, extra) in KEYS.items()]
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, store):
    keys = write_keys(tmp_path_factory.mktemp("keys") / "keys.json")
    with TestClient(create_app(make_settings(store, api_keys_file=keys))) as client:
        yield client


def auth(name: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


def generate(client, name, **body):
    return client.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0, **body}, headers=auth(name))


def test_no_key_or_an_unknown_key_is_401_with_a_bearer_challenge(keyed):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}):
        r = keyed.post("/v1/generate", json={"class_label": 0}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert keyed.get("/v1/models").status_code == 401


def test_a_request_without_a_key_is_401_before_its_query_string_is_judged(keyed):
    assert keyed.post("/v1/generate?steps=3", json={"class_label": 0}).status_code == 401
    r = keyed.post("/v1/generate?steps=3", json={"model": "tiny-gen", "class_label": 0}, headers=auth("alice"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "steps"]


def test_a_key_works_as_bearer_or_x_api_key(keyed):
    assert generate(keyed, "alice").status_code == 200
    r = keyed.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0}, headers={"X-API-Key": "key-alice"})
    assert r.status_code == 200
    assert keyed.get("/v1/models", headers=auth("alice")).status_code == 200
    assert keyed.get("/v1/models", headers={"X-API-Key": "", **auth("alice")}).status_code == 200  # empty: no key


def test_x_api_key_wins_over_a_bearer_key_a_proxy_may_add(keyed):
    both = {"X-API-Key": "key-alice", "Authorization": "Bearer a-proxys-own-token"}
    r = keyed.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0, "steps": 2}, headers=both)
    assert r.status_code == 200
    both = {"X-API-Key": "key-bob", **auth("alice")}  # bob's key is the one used: it may not generate
    r = keyed.post("/v1/generate", json={"model": "tiny-gen", "class_label": 0}, headers=both)
    assert r.status_code == 403 and "'bob'" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("name", ["Authorization", "X-API-Key"])
def test_a_key_header_given_twice_is_400_whichever_order(keyed, name):
    # a proxy that adds its own header beside the client's: which key is meant, and billed, is not guessed
    value = {"Authorization": "Bearer {}", "X-API-Key": "{}"}[name]
    body = {"model": "tiny-gen", "class_label": 0, "steps": 2}
    for keys in (["nope", "key-alice"], ["key-alice", "nope"], ["key-alice", "key-alice"]):
        r = keyed.post("/v1/generate", json=body, headers=[(name, value.format(k)) for k in keys])
        assert r.status_code == 400, (keys, r.text)
        (error,) = r.json()["detail"]
        assert error["loc"] == ["header", name.lower()] and error["type"] == "duplicate_header"
    assert keyed.post("/v1/generate", json=body, headers=[(name, value.format("key-alice"))]).status_code == 200
    if name == "Authorization":  # beside an X-API-Key, which decides, a proxy's added Authorization is no doubt
        both = [("X-API-Key", "key-alice"), ("Authorization", "Bearer proxy"), ("Authorization", "Bearer other")]
        assert keyed.post("/v1/generate", json=body, headers=both).status_code == 200


@pytest.mark.parametrize("body", [b"{bad", b'{"seed": "\xff"}', b"[" * 100_000], ids=["syntax", "not-utf8", "too-deep"])
def test_a_body_that_is_not_json_gets_the_key_checks_answer_first(keyed, body):
    bad = {"content-type": "application/json"}
    r = keyed.post("/v1/generate", content=body, headers=bad)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = keyed.post("/v1/generate", content=body, headers={**bad, **auth("bob")})  # bob may not generate
    assert r.status_code == 403 and r.json()["detail"][0]["type"] == "forbidden"
    r = keyed.post("/v1/generate", content=body, headers={**bad, **auth("alice")})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


def test_a_key_without_the_scope_is_403(keyed):
    r = keyed.post(
        "/v1/denoise",
        files={"file": ("p.png", png_bytes(photo(32, 32)), "image/png")},
        data={"model": "tiny-rgb", "sigma": "10"},
        headers=auth("alice"),
    )
    assert r.status_code == 403 and r.json()["detail"][0]["type"] == "forbidden"
    assert generate(keyed, "bob").status_code == 403
    assert keyed.post("/generate", json={"class_label": 0}, headers=auth("bob")).status_code == 403  # the alias too


def test_health_docs_and_the_spec_stay_open(keyed):
    for path in ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path


def test_another_keys_job_does_not_exist_for_you_but_admin_sees_it(keyed):
    job = keyed.post(
        "/v1/generate",
        json={"model": "tiny-gen", "class_label": 0},
        headers={**auth("alice"), "Prefer": "respond-async"},
    ).json()["job_id"]
    keyed.get(f"/v1/jobs/{job}", headers=auth("alice"))  # exists for its owner
    for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/events", f"/v1/jobs/{job}/images/0"):
        r = keyed.get(path, headers=auth("bob"))
        assert r.status_code == 404 and "no job" in r.json()["detail"][0]["msg"], path
    assert keyed.delete(f"/v1/jobs/{job}", headers=auth("bob")).status_code == 404
    assert keyed.get(f"/v1/jobs/{job}", headers=auth("root")).status_code == 200
    assert keyed.get(f"/v1/jobs/{job}", headers=auth("alice")).json()["status"] in ("queued", "running", "succeeded")


def test_over_the_requests_per_minute_is_429_with_retry_after(keyed):
    codes = [generate(keyed, "carol").status_code for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429
    r = generate(keyed, "carol")
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    assert generate(keyed, "alice").status_code == 200  # other keys are not affected


def test_over_the_concurrent_jobs_is_429_until_one_finishes(keyed):
    files = {"file": ("p.png", png_bytes(photo(32, 32)), "image/png")}
    slow = {"model": "tiny-rgb", "sigma": "30", "mode": "sample", "steps": "1000", "sampler": "ddpm"}
    headers = {**auth("bob"), "Prefer": "respond-async"}
    first = keyed.post("/v1/denoise", files=files, data=slow, headers=headers)
    second = keyed.post("/v1/denoise", files=files, data=slow, headers=headers)
    assert first.status_code == 202
    assert second.status_code == 429 and second.json()["detail"][0]["type"] == "too_many_jobs"
    assert second.headers["retry-after"].isdigit()
    assert keyed.delete(f"/v1/jobs/{first.json()['job_id']}", headers=auth("bob")).status_code == 200
    again = keyed.post("/v1/denoise", files=files, data={"model": "tiny-rgb", "sigma": "30"}, headers=headers)
    assert again.status_code == 202


def test_idempotency_keys_are_per_api_key(keyed):
    body = {"model": "tiny-gen", "class_label": 0, "seed": 5}
    a = keyed.post(
        "/v1/generate", json=body, headers={**auth("alice"), "Idempotency-Key": "same", "Prefer": "respond-async"}
    )
    b = keyed.post(
        "/v1/generate", json=body, headers={**auth("root"), "Idempotency-Key": "same", "Prefer": "respond-async"}
    )
    assert a.json()["job_id"] != b.json()["job_id"]


def test_diffusion_keys_creates_a_key_that_works(tmp_path, store):
    path = tmp_path / "keys.json"
    command = [sys.executable, "-m", "app.cli", "keys", "--file", str(path), "create", "dave", "--scopes", "generate"]
    key = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    stored = json.loads(path.read_text())
    assert stored == [{"name": "dave", "sha256": digest(key), "scopes": ["generate"], "max_priority": "high"}]
    assert key not in path.read_text() and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]  # written whole, nothing left beside it
    with TestClient(create_app(make_settings(store, api_keys_file=path))) as client:
        r = client.post(
            "/v1/generate", json={"model": "tiny-gen", "class_label": 0}, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200


def diffusion_keys(path, *args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "app.cli", "keys", "--file", str(path), *args]
    return subprocess.run(command, capture_output=True, text=True)


def test_diffusion_keys_keeps_the_files_mode_and_rewrites_a_linked_file_where_it_is(tmp_path):
    """The file was rewritten 0600 whatever its mode (a service running as another user, which the operator had
    let read it, could no longer: the revoked key stayed in force), and a link was replaced by a plain file."""
    target = tmp_path / "secrets" / "keys.json"
    target.parent.mkdir()
    assert diffusion_keys(target, "create", "mallory").returncode == 0
    target.chmod(0o640)
    link = tmp_path / "keys.json"
    link.symlink_to(target)
    assert diffusion_keys(link, "revoke", "mallory").returncode == 0
    assert link.is_symlink() and json.loads(target.read_text()) == []
    assert target.stat().st_mode & 0o777 == 0o640


def test_diffusion_keys_runs_at_once_both_land(tmp_path, monkeypatch):
    """Two runs each read the file and wrote what they had read plus their change: the later undid the earlier
    (here a revoked key came back). Each run now reads and writes under a lock on the file's folder."""
    import threading

    from app import cli
    from app.api import auth as auth_module

    path = tmp_path / "keys.json"
    assert diffusion_keys(path, "create", "mallory").returncode == 0
    real, both_read = auth_module.load_keys, threading.Barrier(2)

    def slow_read(where):
        keys = real(where)
        try:
            both_read.wait(timeout=1.0)  # with the lock, the other run cannot read until this one has written
        except threading.BrokenBarrierError:
            pass
        return keys

    monkeypatch.setattr(auth_module, "load_keys", slow_read)
    runs = [
        threading.Thread(target=cli.keys, args=(["--file", str(path), "revoke", "mallory"],)),
        threading.Thread(target=cli.keys, args=(["--file", str(path), "create", "dave"],)),
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(30)
    assert [entry["name"] for entry in json.loads(path.read_text())] == ["dave"]


def test_diffusion_keys_says_what_is_wrong_with_a_broken_file_in_one_line(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("[{")
    out = diffusion_keys(path, "list")
    assert out.returncode == 1 and out.stderr.startswith("diffusion-keys: DIFFUSION_API_KEYS_FILE")
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 3


def test_an_unreadable_keys_file_refuses_to_start(tmp_path, store):
    bad = tmp_path / "keys.json"
    bad.write_text('[{"name": "x", "sha256": "short", "scopes": []}]')
    with pytest.raises(ValueError, match="DIFFUSION_API_KEYS_FILE"):
        create_app(make_settings(store, api_keys_file=bad))


def test_a_key_may_not_ask_above_its_max_priority(keyed):
    assert generate(keyed, "modest", priority="normal").status_code == 200
    r = generate(keyed, "modest", priority="high")
    assert r.status_code == 403 and r.json()["detail"][0]["loc"] == ["body", "priority"]
    assert generate(keyed, "alice", priority="high").status_code == 200


def test_a_key_capped_below_normal_runs_at_its_cap_when_it_asks_for_no_priority(keyed):
    assert generate(keyed, "humble").status_code == 200  # not refused for the default it did not ask for
    denoised = keyed.post(
        "/v1/denoise",
        files={"file": ("p.png", png_bytes(photo(32, 32)), "image/png")},
        data={"model": "tiny-rgb", "sigma": "10"},
        headers=auth("humble"),
    )
    assert denoised.status_code == 200, denoised.text
    r = generate(keyed, "humble", priority="normal")  # asked for, above its cap: refused, as before
    assert r.status_code == 403 and r.json()["detail"][0]["loc"] == ["body", "priority"]


def test_the_priority_a_job_runs_at_is_the_one_asked_for_else_normal_or_a_lower_cap():
    from app.api.auth import Caller

    def caller(cap):
        return Caller(name="k", scopes=frozenset({"generate"}), max_priority=cap)

    assert [caller(cap).priority(None) for cap in ("low", "normal", "high")] == ["low", "normal", "normal"]
    assert caller("high").priority("high") == "high" and caller("normal").priority("low") == "low"


def test_a_request_refused_for_its_scope_does_not_use_up_the_keys_minute(keyed):
    for _ in range(3):
        assert generate(keyed, "dana").status_code == 403
    assert keyed.get("/v1/models", headers=auth("dana")).status_code == 200  # its 2 a minute are untouched
    assert keyed.get("/v1/models", headers=auth("dana")).status_code == 200
    assert keyed.get("/v1/models", headers=auth("dana")).status_code == 429


def test_keys_created_or_revoked_with_diffusion_keys_take_effect_without_a_restart(
    tmp_path, store, monkeypatch, caplog
):
    from app.api import auth as auth_module

    monkeypatch.setattr(auth_module, "KEYS_LOOK_S", 0.0)  # look at every request (the service: once a second)
    path = tmp_path / "keys.json"

    def keys(*args):
        command = [sys.executable, "-m", "app.cli", "keys", "--file", str(path), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    first = keys("create", "first", "--scopes", "generate")
    with TestClient(create_app(make_settings(store, api_keys_file=path))) as client:

        def status(key):
            body = {"model": "tiny-gen", "class_label": 0, "steps": 1}
            return client.post("/v1/generate", json=body, headers={"X-API-Key": key}).status_code

        assert status(first) == 200
        second = keys("create", "second", "--scopes", "generate")
        assert status(second) == 200
        keys("revoke", "first")
        assert (status(first), status(second)) == (401, 200)
        valid = path.read_text()
        path.write_text("[{")  # a file broken by hand: the keys read before stay in force, and the log says why
        assert (status(first), status(second)) == (401, 200)
        assert "keys read before stay in force" in caplog.text
        path.write_text(valid)  # mended
        assert (status(first), status(second)) == (401, 200)
        caplog.clear()
        path.unlink()  # gone (a mounted secret removed, say): the same, and the log says so too
        assert (status(first), status(second)) == (401, 200)
        (said,) = [r.getMessage() for r in caplog.records if "stay in force" in r.getMessage()]
        assert "No such file" in said and "the 1 keys read before stay in force" in said


def test_a_body_refused_before_it_is_read_is_not_counted_on_any_route(tmp_path, store):
    """The upload routes counted the request before reading their body, so a body that was not JSON, a cut-off
    form or one over the size limit used up the key's minute there and not on /v1/generate; a 415 was counted
    everywhere; and an empty body was counted on /v1/generate (FastAPI finds it missing after the key check)
    and not on the upload routes."""
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            [
                {
                    "name": "erin",
                    "sha256": digest("key-erin"),
                    "scopes": ["generate", "denoise"],
                    "requests_per_minute": 2,
                }
            ]
        )
    )
    erin = {"Authorization": "Bearer key-erin"}
    cut = b'--b\r\nContent-Disposition: form-data; name="sigma"\r\n\r\n25\r\n--b\r\nContent-Disposition: form-da'

    def chunks():
        for _ in range(8):
            yield b"x" * 1024

    refused = [
        ("/v1/denoise", b"{bad", "application/json", 422),
        ("/denoise", b"{bad", "application/json", 422),
        ("/v1/noise", cut, "multipart/form-data; boundary=b", 400),
        ("/v1/img2img", chunks(), "application/json", 413),
        ("/v1/denoise", b"sigma=25", "text/plain", 415),
        ("/v1/generate", b"{}", "text/plain", 415),
        ("/v1/generate", b"{bad", "application/json", 422),
        ("/v1/generate", b"", "application/json", 422),
        ("/generate", b"", "application/json", 422),
        ("/v1/denoise", b"", "application/json", 422),
    ]
    with TestClient(create_app(make_settings(store, api_keys_file=keys, max_body_bytes=4096))) as client:
        assert (
            client.post("/v1/denoise", content=b"{bad", headers={"content-type": "application/json"}).status_code == 401
        )
        twice = [("content-type", "application/json"), ("content-type", "application/json")]
        for path in ("/v1/generate", "/v1/denoise"):  # the key check's 401 first, before the header's 400
            assert client.post(path, content=b"{}", headers=twice).status_code == 401
        assert client.post("/v1/generate", content=b"{}", headers=[*twice, *erin.items()]).status_code == 400
        empty = client.post("/v1/generate", content=b"", headers={**erin, "content-type": "application/json"})
        assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body"]
        assert empty.json()["detail"][0]["type"] == "missing"
        for path, body, content_type, status in refused:
            r = client.post(path, content=body, headers={**erin, "content-type": content_type})
            assert r.status_code == status, (path, r.text)
        assert client.get("/v1/models", headers=erin).status_code == 200  # its 2 a minute are untouched
        r = client.post("/v1/denoise", json={"image": "not base64!"}, headers=erin)  # parsed: a field's 422 counts
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image"]
        assert client.get("/v1/models", headers=erin).status_code == 429


def test_an_upload_without_a_valid_key_is_refused_before_its_body_is_read(keyed, monkeypatch):
    """The upload routes read and parsed their body before the key check: 19.5 MB of JSON sent with no key held
    the event loop 2.6 s before its 401 (liveness probes time out at 3 s)."""
    import app.api.errors as errors

    parsed = []
    real = errors.parse_json
    monkeypatch.setattr(errors, "parse_json", lambda raw: parsed.append(len(raw)) or real(raw))
    body = json.dumps({"image": base64.b64encode(png_bytes(photo())).decode(), "sigma": 25})
    for headers in ({}, {"X-API-Key": "nope"}, auth("alice")):  # alice may generate, not denoise
        r = keyed.post("/v1/denoise", content=body, headers={"content-type": "application/json", **headers})
        assert r.status_code == (403 if headers == auth("alice") else 401), r.text
    assert parsed == []
    r = keyed.post("/v1/denoise", content=body, headers={"content-type": "application/json", **auth("bob")})
    assert r.status_code == 200 and parsed == [len(body)]


def test_errors_about_a_key_name_the_header_it_came_in(keyed):
    """A key sent as X-API-Key got its 401, 403 and 429 at ["header", "authorization"], a header the client may
    never have sent."""
    for header, value in (("X-API-Key", "key-bob"), ("Authorization", "Bearer key-bob")):
        r = keyed.post("/v1/generate", json={"class_label": 0}, headers={header: value})  # bob may not generate
        assert r.status_code == 403 and r.json()["detail"][0]["loc"] == ["header", header.lower()], r.text
    r = keyed.get("/v1/models", headers={"X-API-Key": "nope"})
    assert r.status_code == 401 and r.json()["detail"][0]["loc"] == ["header", "x-api-key"]
    r = keyed.get("/v1/models")  # no key at all: the header to send it in
    assert r.status_code == 401 and r.json()["detail"][0]["loc"] == ["header", "authorization"]
    dana = {"X-API-Key": "key-dana"}  # two requests a minute
    answers = [keyed.get("/v1/models", headers=dana) for _ in range(3)]
    assert answers[-1].status_code == 429 and answers[-1].json()["detail"][0]["loc"] == ["header", "x-api-key"]
