"""Request IDs (echoed, made, attached to jobs and log lines), JSON logs, CORS."""

from __future__ import annotations

import json
import logging

from app.logs import JsonFormatter, RequestIdFilter, request_id


def test_a_given_request_id_is_echoed_and_attached_to_the_job(client):
    r = client.post("/v1/generate", json={"class_label": 0}, headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42" and r.json()["request_id"] == "trace-42"
    job = r.json()["job_id"]
    assert client.get(f"/v1/jobs/{job}").json()["request_id"] == "trace-42"


def test_a_missing_or_unusable_request_id_is_made(client):
    made = client.get("/healthz").headers["x-request-id"]
    bad = client.get("/healthz", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]
    assert len(made) == 32 and len(bad) == 32 and made != bad
    assert client.get("/nowhere").headers["x-request-id"]  # errors carry it too


def test_log_lines_carry_the_request_id_and_json_logs_are_one_object_per_line():
    record = logging.LogRecord("app.test", logging.INFO, __file__, 1, "job %s done", ("abc",), None)
    token = request_id.set("req-7")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-7" and line["message"] == "job abc done" and line["level"] == "INFO"


def test_cors_answers_a_browsers_preflight_for_configured_origins(make_client):
    client = make_client(cors_origins="https://app.example")
    r = client.options(
        "/v1/generate",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    other = client.options(
        "/v1/generate", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in other.headers


def test_urls_in_logs_show_no_user_password_or_query():
    from app.logs import url_for_log

    assert url_for_log("redis://:pw@127.0.0.1:6379/0") == "redis://***@127.0.0.1:6379/0"
    assert url_for_log("https://tok3n@hooks.example.com/in?sig=abc#x") == "https://***@hooks.example.com/in?…"
    assert url_for_log("http://[2001:db8::1]:8080/hook") == "http://[2001:db8::1]:8080/hook"
    assert url_for_log("unix:///run/redis.sock?db=2") == "unix:///run/redis.sock?…"
    assert url_for_log("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_an_unhandled_error_is_a_json_500_with_the_request_id_on_the_answer_and_the_log_line(make_client, caplog):
    """Starlette runs a handler for Exception outside every middleware: the 500 had no X-Request-ID and its log
    line no request ID, where an operator needs them most."""
    client = make_client()

    async def broken(job_id):  # stands for a bug
        raise RuntimeError("simulated bug")

    client.app.state.queue.get = broken
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.ERROR, logger="app"):
        r = client.get("/v1/jobs/" + "a" * 32, headers={"X-Request-ID": "trace-500"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "trace-500"
    assert r.json() == {"detail": [{"loc": [], "msg": "internal error", "type": "internal"}]}
    (logged,) = [rec for rec in caplog.records if rec.getMessage().startswith("unhandled error on GET /v1/jobs/")]
    assert logged.request_id == "trace-500" and logged.exc_info[0] is RuntimeError
    assert client.get("/healthz").status_code == 200  # and the service keeps serving
