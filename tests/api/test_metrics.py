"""GET /metrics: Prometheus text with the service's diffusion_* series, moving as the service works."""

from __future__ import annotations

import json
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api.auth import digest


def samples(client, **headers) -> dict[tuple, float]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snapshot, name, **labels) -> float:
    return snapshot.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_jobs_and_passes(client):
    before = samples(client)
    for seed in range(3):
        assert client.post("/v1/generate", json={"class_label": 0, "seed": seed, "steps": 4}).status_code == 200
    after = samples(client)
    route = dict(route="/v1/generate", method="POST", status="200")
    assert (
        value(after, "diffusion_http_requests_total", **route) - value(before, "diffusion_http_requests_total", **route)
        == 3
    )
    assert value(after, "diffusion_jobs_submitted_total", kind="generate", model="tiny-gen") >= 3
    finished = dict(kind="generate", model="tiny-gen", outcome="succeeded")
    assert (
        value(after, "diffusion_jobs_finished_total", **finished)
        - value(before, "diffusion_jobs_finished_total", **finished)
        == 3
    )
    assert value(after, "diffusion_pass_rows_count") > value(before, "diffusion_pass_rows_count")
    assert value(after, "diffusion_job_run_seconds_count", kind="generate") >= 3
    assert ("diffusion_models_loaded", ()) in after and ("diffusion_queue_depth", ()) in after


def test_a_replayed_idempotency_key_is_not_counted_as_a_new_job(client):
    before = samples(client)
    body, headers = {"class_label": 1, "steps": 2}, {"Prefer": "respond-async", "Idempotency-Key": "counted-once"}
    job_ids = {client.post("/v1/generate", json=body, headers=headers).json()["job_id"] for _ in range(4)}
    after = samples(client)
    submitted = dict(kind="generate", model="tiny-gen")
    assert len(job_ids) == 1
    assert (
        value(after, "diffusion_jobs_submitted_total", **submitted)
        - value(before, "diffusion_jobs_submitted_total", **submitted)
        == 1
    )


def test_job_routes_are_counted_by_template_not_by_id(client):
    client.get("/v1/jobs/" + "a" * 32)
    text = client.get("/metrics").text
    assert 'route="/v1/jobs/{job_id}"' in text and "a" * 32 not in text


def test_methods_a_client_makes_up_are_counted_as_other_not_one_series_each(client):
    for made_up in ("FOO", "BAR1", "PROPFIND"):
        assert client.request(made_up, "/healthz").status_code == 405
    after = samples(client)
    methods = {dict(labels)["method"] for name, labels in after if name == "diffusion_http_requests_total"}
    assert methods & {"FOO", "BAR1", "PROPFIND"} == set()
    assert value(after, "diffusion_http_requests_total", route="/healthz", method="other", status="405") >= 3


def test_metrics_can_require_a_key_and_quota_refusals_are_counted(make_client, tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps([{"name": "quick", "sha256": digest("kq"), "scopes": ["generate"], "requests_per_minute": 1}])
    )
    client = make_client(api_keys_file=keys, metrics_require_key=True)
    assert client.get("/metrics").status_code == 401
    headers = {"Authorization": "Bearer kq"}
    client.post("/v1/generate", json={"class_label": 0}, headers=headers)
    assert client.post("/v1/generate", json={"class_label": 0}, headers=headers).status_code == 429
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 429  # the scrape itself is over this key's minute: a scraper gets its own key
    assert re.search(
        r'diffusion_quota_refusals_total\{key="quick",quota="requests_per_minute"\} [1-9]',
        make_client(api_keys_file=keys).get("/metrics").text,
    )


def test_every_series_the_service_defines_is_a_row_of_the_one_metrics_table():
    import re
    from pathlib import Path

    from prometheus_client.metrics import MetricWrapperBase

    import app.metrics as defined

    metrics = [m for m in vars(defined).values() if isinstance(m, MetricWrapperBase)]
    names = {m._name + ("_total" if m._type == "counter" else "") for m in metrics}
    lines = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text().splitlines()
    rows = [n for n, line in enumerate(lines) if re.match(r"\| `diffusion_\w+` \|", line)]
    assert {re.match(r"\| `(\w+)`", lines[n]).group(1) for n in rows} == names
    assert rows == list(range(rows[0], rows[0] + len(rows)))  # no blank line cuts the table in two


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param("::1", marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")),
    ],
)
def test_a_workers_port_serves_metrics_and_its_liveness_on_ipv4_and_ipv6(host):
    import urllib.error
    import urllib.request

    from app.metrics import serve_worker_http

    live = [True]
    server = serve_worker_http(0, host, lambda: live[0])
    base = f"http://{'[::1]' if ':' in host else host}:{server.server_port}"

    def get(path):
        try:
            with urllib.request.urlopen(base + path, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()

    try:
        code, text = get("/metrics")
        assert code == 200 and any(f.name == "diffusion_rows_running" for f in text_string_to_metric_families(text))
        assert get("/healthz") == (200, '{"status": "ok"}')
        live[0] = False
        assert get("/healthz") == (503, '{"status": "worker stuck or stopped"}')
        assert get("/other")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_routes_outside_fastapis_own_and_answers_before_routing_are_counted_by_their_template(client):
    """Only FastAPI's routes name themselves in the scope: /openapi.json and the /ui files were counted as
    "unmatched", the label meant for paths no route has, and so were the middlewares' 413 and 415."""
    before = samples(client)
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/ui/app.js").status_code == 200
    assert client.get("/ui/style.css").status_code == 200
    assert client.get("/v1/nope").status_code == 404
    assert client.post("/v1/generate", content=b"{}", headers={"content-encoding": "gzip"}).status_code == 415
    after = samples(client)

    def moved(route, method, status):
        labels = dict(route=route, method=method, status=status)
        return value(after, "diffusion_http_requests_total", **labels) - value(
            before, "diffusion_http_requests_total", **labels
        )

    assert moved("/openapi.json", "GET", "200") == 1
    assert moved("/ui/{path}", "GET", "200") == 2
    assert moved("/v1/generate", "POST", "415") == 1
    assert moved("unmatched", "GET", "404") == 1
    assert moved("unmatched", "GET", "200") == 0
