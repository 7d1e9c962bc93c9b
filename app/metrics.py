"""The service's Prometheus metrics (prometheus-client), all named ``diffusion_*``, in the process's default
registry: API nodes serve them at ``/metrics``; a Redis worker on ``DIFFUSION_WORKER_METRICS_PORT``, beside its
``/healthz``. The list, with example queries: docs/metrics.md."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

HTTP_REQUESTS = Counter("diffusion_http_requests_total", "HTTP requests answered", ["route", "method", "status"])
HTTP_SECONDS = Histogram(
    "diffusion_http_request_duration_seconds", "HTTP request latency", ["route", "method"], buckets=SECONDS
)
JOBS_SUBMITTED = Counter("diffusion_jobs_submitted_total", "jobs accepted", ["kind", "model"])
JOBS_FINISHED = Counter("diffusion_jobs_finished_total", "jobs finished", ["kind", "model", "outcome"])
JOB_WAIT_SECONDS = Histogram(
    "diffusion_job_queue_wait_seconds", "time from submission to the first step", ["kind"], buckets=SECONDS
)
JOB_RUN_SECONDS = Histogram(
    "diffusion_job_run_seconds", "time from the first step to the result", ["kind"], buckets=SECONDS
)
QUEUE_DEPTH = Gauge("diffusion_queue_depth", "jobs queued or running (this node's view)")
JOBS_KEPT = Gauge("diffusion_finished_jobs_kept", "finished jobs whose results this process holds (in-process mode)")
ROWS_RUNNING = Gauge("diffusion_rows_running", "rows in the engine's running set")
PASS_ROWS = Histogram("diffusion_pass_rows", "rows per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
PASS_SECONDS = Histogram(
    "diffusion_pass_duration_seconds", "forward pass duration (network and sampler step)", buckets=SECONDS
)
MODELS_LOADED = Gauge("diffusion_models_loaded", "models in the engine's memory")
WEBHOOK_DELIVERIES = Counter(
    "diffusion_webhook_deliveries_total",
    "webhook delivery attempts by outcome (delivered, retried, failed: given up, refused: address not allowed)",
    ["event", "outcome"],
)
QUOTA_REFUSALS = Counter("diffusion_quota_refusals_total", "requests refused by a key's quota", ["key", "quota"])


def job_submitted(record) -> None:
    """Count a job just accepted (by the queue that created it: a replayed Idempotency-Key creates none)."""
    JOBS_SUBMITTED.labels(record.kind, record.model or "").inc()


def job_finished(record) -> None:
    """Count a job that just became final, with its wait and run times (from its record)."""
    JOBS_FINISHED.labels(record.kind, record.model or "", record.status.value).inc()
    if record.started_at is not None:
        JOB_WAIT_SECONDS.labels(record.kind).observe(max(0.0, record.started_at - record.created_at))
        if record.finished_at is not None:
            JOB_RUN_SECONDS.labels(record.kind).observe(max(0.0, record.finished_at - record.started_at))


def serve_worker_http(
    port: int, addr: str, live: Callable[[], bool], ready: Callable[[], bool] | None = None
) -> ThreadingWSGIServer:
    """A Redis worker's port, on a thread of its own: ``/metrics`` for Prometheus, ``/healthz`` for its
    liveness probe (200 while ``live()``, else 503: restart the process), and ``/readyz`` for its readiness
    (200 while ``ready()``: its models loaded and jobs taken; a rollout waits for it before it stops an old
    worker). Every other path answers 404."""
    metrics = make_wsgi_app()
    probes = {  # path: (check, what 200 says, what 503 says)
        "/healthz": (live, "ok", "worker stuck or stopped"),
        "/readyz": (ready or live, "ready", "loading models, stopping, stuck or stopped"),
    }

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path in probes:
            check, up, down = probes[path]
            ok = check()
            body = json.dumps({"status": up if ok else down}).encode()
            status = "200 OK" if ok else "503 Service Unavailable"
        else:
            body = json.dumps({"detail": "not found: /metrics, /healthz or /readyz"}).encode()
            status = "404 Not Found"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]  # "::" and "::1" are IPv6 addresses
    server_class = type("WorkerHTTPServer", (ThreadingWSGIServer,), {"address_family": family})
    server = make_server(addr, port, app, server_class=server_class, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()
    return server


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # probes every few seconds: not a log line each
        pass
