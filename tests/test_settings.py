"""Settings that would break the service later are refused at start, naming the setting."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from app.api.auth import ApiKey, Gate
from app.queue.memory import PURGE_MIN_S, MemoryJobQueue
from tests.helpers import make_settings


@pytest.mark.parametrize(
    "name", ["job_retention_s", "sync_timeout_s", "shutdown_grace_s", "model_memory_gb", "webhook_backoff_s"]
)
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_infinite_or_nan_numbers_are_refused_naming_the_setting(tmp_path, name, value):
    with pytest.raises(ValidationError, match=name):
        make_settings(tmp_path, **{name: value})


def test_a_tiny_retention_does_not_make_the_purge_timer_spin(tmp_path, monkeypatch):
    queue = MemoryJobQueue(make_settings(tmp_path, job_retention_s=1e-6), {}, engine=None)
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    asyncio.run(queue._purge_later())
    assert slept == [PURGE_MIN_S]


def test_the_rate_limiter_takes_a_unix_socket_queue_url(tmp_path):
    key = ApiKey(name="k", sha256="0" * 64, scopes=["generate"], requests_per_minute=60)
    gate = Gate([key], make_settings(tmp_path, queue_url="unix:///run/redis.sock"))
    assert gate.limiter is not None and type(gate.limiter.storage).__name__ == "RedisStorage"


@pytest.mark.parametrize(
    "setting, value",
    [("default_generator", "tiny-gne"), ("default_denoiser", "nope"), ("preload", "tiny-gen, tiny-rbg")],
)
def test_a_model_name_the_store_lacks_is_refused_at_start_naming_the_setting(store, setting, value):
    from fastapi.testclient import TestClient

    from app.api.main import NoModels, create_app

    with pytest.raises(NoModels, match=f"DIFFUSION_{setting.upper()} names '{value.split(', ')[-1]}'.*tiny-gen"):
        with TestClient(create_app(make_settings(store, **{setting: value}))):
            pass
    with TestClient(create_app(make_settings(store, default_generator="tiny-gen", preload="tiny-gen"))) as client:
        assert client.get("/readyz").status_code == 200  # names the store holds start as before


@pytest.mark.parametrize("database", ["l5", "staging", "0/extra"])
def test_a_queue_url_whose_database_is_not_a_number_is_refused(tmp_path, database):
    """redis-py ignores a database path it cannot read and takes database 0, beside whatever else is there."""
    with pytest.raises(ValidationError, match=f"queue_url's database must be a number.*{database!r}"):
        make_settings(tmp_path, queue_url=f"redis://127.0.0.1:6379/{database}")
    for fine in ("redis://h:6379/15", "redis://h:6379/", "redis://h:6379", "rediss://:pw@h/2", "unix:///r.sock?db=3"):
        assert make_settings(tmp_path, queue_url=fine).queue_url == fine


def test_no_embedded_worker_without_redis_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="embedded_worker=false needs a queue_url"):
        make_settings(tmp_path, embedded_worker=False)
    assert make_settings(tmp_path, embedded_worker=False, queue_url="redis://127.0.0.1:6379/0").embedded_worker is False


def test_a_diffusion_variable_no_setting_reads_is_named_with_the_setting_meant():
    """pydantic-settings ignores them: a misspelled one had left its setting at the default without a word."""
    from app.settings import unknown_variables

    environ = {
        "DIFFUSION_SHUTDOWN_GRACE": "5",
        "diffusion_port": "8001",  # a setting, in any case, as pydantic-settings reads it
        "DIFFUSION_BROWSER_TESTS": "required",  # the test suite's
        "DIFFUSION_NOTHING_LIKE_IT_AT_ALL_XYZ": "1",
        "PATH": "/bin",
    }
    assert unknown_variables(environ) == [
        "DIFFUSION_NOTHING_LIKE_IT_AT_ALL_XYZ",
        "DIFFUSION_SHUTDOWN_GRACE (did you mean DIFFUSION_SHUTDOWN_GRACE_S?)",
    ]


def test_the_variables_kubernetes_sets_for_the_namespaces_services_are_not_reported_as_misspelt_settings():
    """A Service named diffusion-redis gave every pod DIFFUSION_REDIS_PORT and seven more, each logged at start
    as a misspelt setting (DIFFUSION_REDIS_PORT: did you mean DIFFUSION_REDIS_PREFIX?), burying real typos."""
    from app.settings import unknown_variables

    environ = {"DIFFUSION_SHUTDOWN_GRACE": "5"}
    for service, port in (("DIFFUSION_REDIS", 6379), ("DIFFUSION_API", 8000)):
        environ |= {
            f"{service}_SERVICE_HOST": "10.0.0.9",
            f"{service}_SERVICE_PORT": str(port),
            f"{service}_SERVICE_PORT_HTTP": str(port),
            f"{service}_PORT": f"tcp://10.0.0.9:{port}",
            f"{service}_PORT_{port}_TCP": f"tcp://10.0.0.9:{port}",
            f"{service}_PORT_{port}_TCP_PROTO": "tcp",
            f"{service}_PORT_{port}_TCP_PORT": str(port),
            f"{service}_PORT_{port}_TCP_ADDR": "10.0.0.9",
        }
    assert unknown_variables(environ) == ["DIFFUSION_SHUTDOWN_GRACE (did you mean DIFFUSION_SHUTDOWN_GRACE_S?)"]
    del environ["DIFFUSION_API_SERVICE_HOST"]  # without its Service, DIFFUSION_API_PORT is someone's typo
    assert "DIFFUSION_API_PORT (did you mean DIFFUSION_PORT?)" in unknown_variables(environ)
