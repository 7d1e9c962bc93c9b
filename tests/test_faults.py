"""Faults at the edges of the in-process service, on a real server process: clients that disconnect or
trickle, a stop that outlasts its grace, and finished jobs that must not pile up. (Redis mode: tests/redis.)"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.redis.helpers import Proc, poll
from tests.tiny_models import write_generator

SLOW = {"class_label": 0, "steps": 1000, "num_images": 16, "seed": 1}  # seconds of work on 2 cores


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-store")
    write_generator(root / "tiny-gen", size=32)
    return root


@pytest.fixture
def serve(store):
    started: list[Proc] = []

    def start(**env) -> Proc:
        proc = Proc("serve", "unused", store, queue_url=None, **env)
        started.append(proc)
        return proc.wait_ready()

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.kill()


def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def raw_request(port: int, body: dict, headers: str = "") -> socket.socket:
    """A sync request sent on a plain socket, so the test can hang up on it."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def test_a_sync_client_that_hangs_up_cancels_its_job(serve):
    server = serve()
    sock = raw_request(server.port, SLOW)
    wait_until(lambda: metric(server.url, "diffusion_queue_depth") == 1)
    sock.close()
    wait_until(lambda: metric(server.url, "diffusion_jobs_finished_total", outcome="canceled") == 1, timeout=10)
    assert metric(server.url, "diffusion_queue_depth") == 0


def test_with_an_idempotency_key_the_job_outlives_the_hang_up(serve):
    server = serve()
    sock = raw_request(server.port, {**SLOW, "steps": 200}, headers="Idempotency-Key: come-back\r\n")
    wait_until(lambda: metric(server.url, "diffusion_queue_depth") == 1)
    sock.close()
    again = httpx.post(
        server.url + "/v1/generate",
        json={**SLOW, "steps": 200},
        headers={"Idempotency-Key": "come-back", "Prefer": "respond-async"},
        timeout=10,
    )
    assert again.status_code == 202
    assert poll(server.url, again.json()["job_id"], timeout=120)["status"] == "succeeded"
    assert metric(server.url, "diffusion_jobs_finished_total", outcome="canceled") == 0


def test_a_stop_past_its_grace_answers_waiters_with_json_503_and_exits_0(serve):
    server = serve(DIFFUSION_SHUTDOWN_GRACE_S="2")
    answers = []
    waiting = threading.Thread(
        target=lambda: answers.append(httpx.post(server.url + "/v1/generate", json=SLOW, timeout=60))
    )
    waiting.start()
    wait_until(lambda: metric(server.url, "diffusion_queue_depth") == 1)
    server.proc.send_signal(signal.SIGTERM)
    waiting.join(60)
    (answer,) = answers
    assert answer.status_code == 503 and answer.headers["retry-after"].isdigit()
    assert answer.json()["detail"][0]["type"] == "shutting_down"
    assert server.proc.wait(30) == 0


def test_slow_headers_are_cut_off_and_a_trickling_body_is_a_408(serve):
    server = serve(DIFFUSION_HEADER_TIMEOUT_S="1", DIFFUSION_BODY_TIMEOUT_S="1")
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    slow.settimeout(10)
    began = time.monotonic()
    assert slow.recv(100) == b""  # closed by the server
    assert time.monotonic() - began < 8
    slow.close()

    trickle = socket.create_connection(("127.0.0.1", server.port))
    trickle.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
    trickle.sendall(b'Content-Length: 100\r\n\r\n{"class_')
    trickle.settimeout(10)
    answer = b""
    while b"within" not in answer:
        chunk = trickle.recv(4096)
        assert chunk, answer
        answer += chunk
    answer = answer.decode()
    trickle.close()
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in answer
    assert httpx.get(server.url + "/healthz").status_code == 200  # and the server is fine


def test_finished_jobs_are_capped_and_forgotten_on_a_timer(serve, tmp_path):
    # a retention longer than the five jobs take on a busy machine: only the cap forgets the first two
    server = serve(DIFFUSION_MAX_FINISHED_JOBS="3", DIFFUSION_JOB_RETENTION_S="8", DIFFUSION_FINISHED_GRACE_S="0")
    ids = [
        httpx.post(server.url + "/v1/generate", json={"class_label": 0, "steps": 2, "seed": i}, timeout=30).json()[
            "job_id"
        ]
        for i in range(5)
    ]
    codes = [httpx.get(f"{server.url}/v1/jobs/{j}").status_code for j in ids]
    assert codes == [404, 404, 200, 200, 200]  # the oldest beyond the cap of 3 are gone
    # no request touches the jobs now: the timer forgets them once their 8 s are up
    wait_until(lambda: metric(server.url, "diffusion_finished_jobs_kept") == 0, timeout=30)
    assert re.search(r"diffusion_finished_jobs_kept 0", httpx.get(server.url + "/metrics").text)
