"""Models, health, offline docs, start-up refusals, and the HTTP layer's independence from torch."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from app.api.main import NoModels, create_app
from tests.helpers import make_settings
from tests.tiny_models import write_bare, write_generator


def test_models_list_cards_and_status(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["tiny-gen"]["card"]["class_names"] == ["a", "b", "c"]
    assert models["tiny-gen"]["card"]["guidance"] is True
    assert models["tiny-rgb"]["card"]["guidance"] is False
    assert client.get("/v1/models/tiny-gen").json()["status"] == "ready"
    assert client.get("/v1/models/absent").status_code == 404


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["models"] == ["tiny-gen", "tiny-rgb"]


def test_readiness_is_503_when_the_worker_is_gone(make_client):
    client = make_client()
    client.app.state.queue.engine.stop()
    assert client.get("/readyz").status_code == 503


def test_when_the_engine_dies_its_jobs_fail_new_ones_get_503_and_liveness_says_restart(make_client, monkeypatch):
    client = make_client()
    engine = client.app.state.queue.engine

    def broken():
        raise RuntimeError("a bug in the scheduler")

    monkeypatch.setattr(engine.scheduler, "schedule", broken)
    r = client.post("/v1/generate", json={"class_label": 0, "steps": 5}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202  # accepted before the engine reached it
    job = r.json()["job_id"]
    engine._thread.join(30)
    record = client.get(f"/v1/jobs/{job}").json()
    assert record["status"] == "failed" and "engine stopped" in record["error"]  # not queued for ever
    r = client.post("/v1/generate", json={"class_label": 0, "steps": 5})
    assert r.status_code == 503 and r.json()["detail"][0]["type"] == "engine_stopped" and r.headers["retry-after"]
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "engine stopped"}
    assert client.get("/readyz").status_code == 503


def status_within(client, job: str, wanted: str, seconds: float) -> bool:
    """Whether the job reaches ``wanted`` within about ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if client.get(f"/v1/jobs/{job}").json()["status"] == wanted:
            return True
        time.sleep(0.05)
    return client.get(f"/v1/jobs/{job}").json()["status"] == wanted


def test_a_stuck_engine_turns_liveness_to_503_keeps_its_jobs_and_recovers_if_it_moves_again(make_client):
    client = make_client(engine_stuck_s=0.3)
    engine = client.app.state.queue.engine
    inside, release = threading.Event(), threading.Event()
    real = engine.runner.step

    def hung(rows):  # a forward pass that does not return (a hung device, a deadlock)
        inside.set()
        release.wait(30)
        return real(rows)

    engine.runner.step = hung
    r = client.post("/v1/generate", json={"class_label": 0, "steps": 2}, headers={"Prefer": "respond-async"})
    job = r.json()["job_id"]
    assert inside.wait(30)
    time.sleep(0.5)  # past engine_stuck_s
    assert engine.busy_s() > 0.3
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "engine stopped"}
    assert client.get("/readyz").status_code == 503  # no new traffic to it either, until it moves or restarts
    r = client.post("/v1/generate", json={"class_label": 0, "steps": 2})
    assert r.status_code == 503 and r.json()["detail"][0]["type"] == "engine_stopped"
    assert client.get(f"/v1/jobs/{job}").json()["status"] in ("queued", "running")  # not failed: it may finish
    release.set()
    assert status_within(client, job, "succeeded", 15)
    assert client.get("/healthz").json() == {"status": "ok"}  # it moved again: the waiting turn is not stuck
    assert client.get("/readyz").status_code == 200


def test_a_model_load_on_first_use_that_hangs_an_idle_engine_is_stuck_too(make_client, monkeypatch):
    from app.engine import models

    inside, release = threading.Event(), threading.Event()
    real = models.load_model

    def load(entry, device):
        if entry.name == "tiny-rgb":  # not preloaded: loaded by the first job, on an engine that waited idle
            inside.set()
            release.wait(30)
        return real(entry, device)

    monkeypatch.setattr(models, "load_model", load)
    client = make_client(engine_stuck_s=0.3, preload="tiny-gen")
    engine = client.app.state.queue.engine
    assert engine.busy_s() == 0.0  # idle
    r = client.post("/v1/generate", json={"model": "tiny-rgb", "steps": 2}, headers={"Prefer": "respond-async"})
    job = r.json()["job_id"]
    assert inside.wait(30)
    time.sleep(0.5)
    assert engine.busy_s() > 0.3 and client.get("/healthz").status_code == 503
    release.set()
    assert status_within(client, job, "succeeded", 15)
    assert client.get("/healthz").status_code == 200


def test_a_model_that_fails_to_load_for_any_reason_is_marked_and_the_others_are_served(make_client, monkeypatch):
    from app.engine import models

    real = models.load_model

    def load(entry, device):
        if entry.name == "tiny-rgb":
            raise RuntimeError("CUDA out of memory")  # not a refusal of the folder: the device ran out
        return real(entry, device)

    monkeypatch.setattr(models, "load_model", load)
    client = make_client()
    assert client.get("/healthz").json() == {"status": "ok"}
    broken = client.get("/v1/models/tiny-rgb").json()
    assert broken["status"] == "error" and "CUDA out of memory" in broken["error"]
    assert client.post("/v1/generate", json={"class_label": 0, "steps": 2}).status_code == 200


def test_a_broken_model_is_shown_with_its_reason_and_the_others_are_served(tmp_path):
    write_generator(tmp_path / "good")
    broken = write_bare(tmp_path / "broken")
    torch.save({}, broken / "unet" / "weights.ckpt")
    with TestClient(create_app(make_settings(tmp_path))) as client:
        body = client.get("/v1/models/broken").json()
        assert body["status"] == "error" and "pickle" in body["error"]
        r = client.post("/v1/generate", json={"model": "broken"})
        assert r.status_code == 503 and "pickle" in r.json()["detail"][0]["msg"]
        assert client.post("/v1/generate", json={"model": "good", "class_label": 0}).status_code == 200


def test_a_task_whose_only_models_are_broken_is_a_503_naming_them_not_a_404(tmp_path):
    broken = write_generator(tmp_path / "broken-gen")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    denoiser = write_bare(tmp_path / "denoiser")
    (denoiser / "model_card.json").write_text('{"tasks": ["denoise"]}')
    with TestClient(create_app(make_settings(tmp_path))) as client:
        r = client.post("/v1/generate", json={"class_label": 0})
        assert r.status_code == 503, r.text
        error = r.json()["detail"][0]
        assert error["type"] == "model_unavailable" and error["loc"] == ["body", "model"]
        assert "'broken-gen'" in error["msg"] and "generate" in error["msg"]
        assert client.get("/readyz").status_code == 200  # the denoiser is served


def test_the_service_refuses_to_start_without_a_loadable_model(tmp_path):
    broken = write_bare(tmp_path / "only")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(NoModels, match="scripts/train_digits.py"):
        with TestClient(create_app(make_settings(tmp_path))):
            pass


def test_the_cli_exits_with_a_message_on_an_empty_store(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "--model-store", str(tmp_path), "--port", "8765"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DIFFUSION_SHUTDOWN_GRACE": "5"},  # misspelled: said, not ignored in silence
    )
    assert out.returncode == 2 and "no loadable model" in out.stderr
    assert "DIFFUSION_SHUTDOWN_GRACE (did you mean DIFFUSION_SHUTDOWN_GRACE_S?) is not a setting" in out.stderr


@pytest.mark.parametrize(
    ("command", "env", "said"),
    [
        (
            ["serve"],
            {"DIFFUSION_QUEUE_LIMIT": "abc"},
            "diffusion-serve: DIFFUSION_QUEUE_LIMIT: Input should be a valid",
        ),
        (["serve"], {"DIFFUSION_LEASE_S": "900"}, "diffusion-serve: worker_forget_s must be longer than lease_s"),
        (["worker"], {"DIFFUSION_WEBHOOK_SECRET": "whsec_c2hvcnQtc2VjcmV0"}, "diffusion-worker: webhook_secret must"),
        (["serve"], {"DIFFUSION_API_KEYS_FILE": "/nonexistent/keys.json"}, "diffusion-serve: DIFFUSION_API_KEYS_FILE"),
        # /metrics was served open, without a word, to an operator who asked for a key there
        (["serve"], {"DIFFUSION_METRICS_REQUIRE_KEY": "true"}, "diffusion-serve: DIFFUSION_METRICS_REQUIRE_KEY needs"),
        # a traceback and exit 1 after the model scan, which crash-looped a worker on a node without a GPU
        (["worker"], {"DIFFUSION_DEVICE": "cuda"}, "diffusion-worker: DIFFUSION_DEVICE=cuda but no CUDA device"),
        (["serve"], {"DIFFUSION_DEVICE": "cuda"}, "diffusion-serve: DIFFUSION_DEVICE=cuda but no CUDA device"),
        (["serve"], {"DIFFUSION_DTYPE": "float16"}, "diffusion-serve: DIFFUSION_DTYPE=float16 needs a CUDA device"),
    ],
)
def test_a_bad_setting_stops_the_cli_with_one_line_naming_it_and_never_its_value(tmp_path, command, env, said):
    """Pydantic's traceback (18 to 44 lines, exit 1) had echoed the start and end of the value, a secret's too;
    a keys file that does not read was found only after the models had loaded."""
    if "CUDA" in said:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    write_generator(tmp_path / "tiny-gen")
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", *command, "--model-store", str(tmp_path), "--queue-url", "redis://h:1/0"]
        if command == ["worker"]
        else [sys.executable, "-m", "app.cli", *command, "--model-store", str(tmp_path), "--port", "8766"],
        capture_output=True,
        text=True,
        timeout=120,  # a bound on a hang, not a measure
        env={**os.environ, "DIFFUSION_DEVICE": "cpu", **env},
    )
    assert out.returncode == 2 and out.stderr.startswith(said), out.stderr
    assert "Traceback" not in out.stderr and "loaded model" not in out.stderr
    assert all(value[6:] not in out.stderr for value in env.values() if value.startswith("whsec_"))


def test_json_logs_put_uvicorns_lines_in_json_too_with_the_requests_id(tmp_path):
    """uvicorn kept its own plain-text configuration: its start-up and access lines were not JSON, and the
    access lines had no request ID."""
    import httpx

    from tests.redis.helpers import free_port

    write_generator(tmp_path / "tiny-gen")
    logs, port = tmp_path / "log.txt", free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--model-store", str(tmp_path), "--port", str(port)]
    env = {**os.environ, "DIFFUSION_DEVICE": "cpu", "DIFFUSION_LOG_FORMAT": "json"}
    with logs.open("w") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=sink)
        try:
            deadline = time.monotonic() + 60  # a bound on start-up, not a measure of it
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline and process.poll() is None
                    time.sleep(0.1)
            assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"X-Request-ID": "trace-77"}).is_success
        finally:
            process.terminate()
            process.wait(30)
    lines = [json.loads(line) for line in logs.read_text().splitlines() if line.strip()]
    assert any(line["logger"] == "uvicorn.error" and "Uvicorn running" in line["message"] for line in lines)
    (access,) = [line for line in lines if line["logger"] == "uvicorn.access" and "/v1/models" in line["message"]]
    assert access["request_id"] == "trace-77"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_reference_no_external_host(client, path):
    page = client.get(path)
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href)=["\']([^"\']+)', page.text) + re.findall(r"url:\s*['\"]([^'\"]+)", page.text)
    assert urls, "the page loads its assets from somewhere"
    assert not [u for u in urls if u.startswith(("http:", "https:", "//"))]
    assert "googleapis" not in page.text and "cdn." not in page.text
    for url in urls:
        if url.startswith("/docs-assets/"):
            assert client.get(url).status_code == 200


def test_openapi_documents_v1_only(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/generate" in paths and "/v1/denoise" in paths and "/generate" not in paths
    assert set(paths["/v1/denoise"]["post"]["requestBody"]["content"]) == {"multipart/form-data", "application/json"}


def test_the_http_layer_imports_no_torch():
    code = "import sys, app.api.main, app.api.routes.jobs; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
