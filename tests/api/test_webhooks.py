"""Webhooks against a real HTTP receiver: Standard Webhooks signatures (verified with the standardwebhooks
package), the body as GET /v1/jobs/{id} answers, retries with backoff, no redirects, the SSRF guard."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time

import pytest
from prometheus_client import REGISTRY
from standardwebhooks import Webhook as Verifier

from app.api import webhooks
from app.api.webhooks import Destination, Refused, destination
from app.jobs import JobRecord
from app.settings import Settings
from tests.api.helpers import photo, png_bytes
from tests.helpers import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
ASYNC = {"Prefer": "respond-async"}


def hooked(make_client, **overrides):
    settings = dict(
        webhook_secret=SECRET, webhook_allow_hosts="127.0.0.1", webhook_backoff_s=0.05, webhook_timeout_s=1.0
    )
    return make_client(**{**settings, **overrides})


def deliveries(event: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("diffusion_webhook_deliveries_total", {"event": event, "outcome": outcome})
    return value or 0.0


def verified(request: dict) -> dict:
    """The delivery's body, after its signature checks out (raises WebhookVerificationError otherwise)."""
    return Verifier(SECRET).verify(request["body"], request["headers"])


def test_started_and_completed_are_signed_and_carry_the_job_as_get_returns_it(make_client):
    client = hooked(make_client)
    with WebhookReceiver() as receiver:
        body = {
            "class_label": 0,
            "steps": 60,
            "seed": 5,
            "webhook": receiver.url,
            "webhook_events": ["started", "completed"],
        }
        job_id = client.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"]
        got = receiver.wait_for(2)
        time.sleep(0.3)  # nothing more arrives
        assert len(receiver.received) == 2
    started, completed = (verified(r) for r in got)
    assert started["job_id"] == completed["job_id"] == job_id
    # "started" carries the record as it stood then: running, or already done when the job's first report
    # was its last (a tiny model can finish within one report)
    assert started["status"] in ("running", "succeeded") and completed["status"] == "succeeded"
    assert completed == client.get(f"/v1/jobs/{job_id}").json()
    assert completed["images"][0]["seed"] == 5 and completed["images"][0]["data"]
    ids = [r["headers"]["webhook-id"] for r in got]
    assert ids == [f"msg_{job_id}_started", f"msg_{job_id}_completed"]
    assert all(r["headers"]["content-type"] == "application/json" for r in got)
    assert all(r["headers"]["webhook-signature"].startswith("v1,") for r in got)
    tampered = {**got[1], "body": got[1]["body"].replace(b"succeeded", b"failed")}
    with pytest.raises(Exception, match="signature"):
        verified(tampered)


def test_the_default_is_completed_only_and_it_fires_for_failures_and_cancels_too(make_client):
    client = hooked(make_client)
    with WebhookReceiver() as receiver:
        job_id = client.post(
            "/v1/generate", json={"class_label": 0, "steps": 1000, "webhook": receiver.url}, headers=ASYNC
        ).json()["job_id"]
        client.delete(f"/v1/jobs/{job_id}")
        (request,) = receiver.wait_for(1)
        time.sleep(0.3)
        assert len(receiver.received) == 1
    assert verified(request)["status"] == "canceled"


def test_a_job_that_fails_before_it_runs_never_started_so_it_fires_completed_only(make_client, monkeypatch):
    from app.engine import engine

    def unplannable(*args, **kwargs):
        raise ValueError("no plan for this job")

    monkeypatch.setattr(engine, "plan_generate", unplannable)
    client = hooked(make_client)
    with WebhookReceiver() as receiver:
        body = {"class_label": 0, "steps": 5, "webhook": receiver.url, "webhook_events": ["started", "completed"]}
        job_id = client.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"]
        (request,) = receiver.wait_for(1)
        time.sleep(0.5)  # a "started" message would have come by now
        assert len(receiver.received) == 1
    assert request["headers"]["webhook-id"] == f"msg_{job_id}_completed"
    job = verified(request)
    assert job["status"] == "failed" and "no plan for this job" in job["error"]
    assert job["timings"]["run_ms"] == 0 and job["timings"]["queued_ms"] == job["timings"]["total_ms"]


def test_a_failing_receiver_is_retried_with_the_same_message_id_until_it_takes_it(make_client):
    client = hooked(make_client)
    before = deliveries("completed", "retried"), deliveries("completed", "delivered")
    with WebhookReceiver(statuses=(500, 503, 200)) as receiver:
        client.post("/v1/generate", json={"class_label": 1, "steps": 2, "webhook": receiver.url}, headers=ASYNC)
        got = receiver.wait_for(3)
        time.sleep(0.5)
        assert len(receiver.received) == 3
    assert len({r["headers"]["webhook-id"] for r in got}) == 1
    assert all(verified(r)["status"] == "succeeded" for r in got)
    assert deliveries("completed", "retried") - before[0] == 2
    assert deliveries("completed", "delivered") - before[1] == 1
    metrics = client.get("/metrics").text
    assert 'diffusion_webhook_deliveries_total{event="completed",outcome="delivered"}' in metrics


def test_a_delivery_is_given_up_after_its_attempts_and_redirects_are_not_followed(make_client, caplog):
    client = hooked(make_client, webhook_attempts=3)
    failed = deliveries("completed", "failed")
    with WebhookReceiver(statuses=(302,)) as receiver:
        url = receiver.url.replace("http://", "http://user:s3cret@") + "?token=t0ken"
        client.post("/v1/generate", json={"class_label": 1, "steps": 2, "webhook": url}, headers=ASYNC)
        receiver.wait_for(3)
        time.sleep(1.0)  # backoff 0.05, 0.15 s: a fourth attempt would have come
        assert [r["path"] for r in receiver.received] == ["/hook?token=t0ken"] * 3  # never /redirected
    assert deliveries("completed", "failed") - failed == 1
    (given_up,) = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert receiver.url.replace("http://", "http://***@") + "?…" in given_up
    assert "user" not in given_up and "s3cret" not in given_up and "t0ken" not in given_up


def test_undelivered_messages_hold_images_up_to_their_cap_and_past_it_send_them_by_url(make_client):
    # a receiver failing for its 20 minutes of retries held a copy of every result sent to it, past the caps
    # on finished jobs (255 MB in 11 s of 16 MP noise jobs): now the images past the cap go by URL only
    body = {"class_label": 1, "steps": 2, "seed": 4}
    probe = make_client()
    image = base64.b64decode(probe.post("/v1/generate", json=body).json()["images"][0]["data"])
    room_mb = (4 * len(image) // 3) / 1e6  # one such image's base64, and no more
    client = hooked(make_client, webhook_backoff_s=60.0, webhook_max_pending_mb=room_mb)
    with WebhookReceiver(statuses=(500, 200)) as receiver:
        first = client.post("/v1/generate", json={**body, "webhook": receiver.url}, headers=ASYNC).json()["job_id"]
        receiver.wait_for(1)  # refused: due again in a minute, its message held meanwhile
        second = client.post("/v1/generate", json={**body, "webhook": receiver.url}, headers=ASYNC).json()["job_id"]
        got = receiver.wait_for(2)
    held, by_url = (verified(r) for r in got)
    assert held["job_id"] == first and base64.b64decode(held["images"][0]["data"]) == image
    assert by_url["job_id"] == second and by_url["status"] == "succeeded"
    (sent,) = by_url["images"]
    assert sent["data"] is None and sent["url"] == f"/v1/jobs/{second}/images/0"
    assert client.get(sent["url"]).content == image  # where the receiver finds it while the job is kept
    assert {k: v for k, v in by_url.items() if k != "images"} == {
        k: v for k, v in client.get(f"/v1/jobs/{second}").json().items() if k != "images"
    }


def test_the_outbox_counts_what_its_messages_hold_and_frees_it_when_each_is_done():
    from app.queue.outbox import Delivery, MemoryOutbox

    outbox = MemoryOutbox(max_bytes=100)
    assert outbox.has_room(100) and not outbox.has_room(101)
    outbox.add(Delivery("msg_a_completed", "http://x/", "completed", "r" * 60))
    assert outbox.held_bytes == 60 and outbox.has_room(40) and not outbox.has_room(41)
    outbox.add(Delivery("msg_a_completed", "http://x/", "completed", "r" * 70))  # the same message again
    assert outbox.held_bytes == 70
    (claimed,) = asyncio.run(outbox.claim(lease_s=10, limit=5))
    asyncio.run(outbox.retry(claimed, 5))
    assert outbox.held_bytes == 70  # held while it waits for its next attempt
    asyncio.run(outbox.finish(claimed))
    assert outbox.held_bytes == 0 and len(outbox) == 0 and outbox.has_room(100)
    # a lease that ran out mid-send: one attempt finished it, the other puts it back; it is counted as it is held
    outbox.add(Delivery("msg_b_completed", "http://x/", "completed", "r" * 50))
    (first,) = asyncio.run(outbox.claim(lease_s=0, limit=5))
    (second,) = asyncio.run(outbox.claim(lease_s=10, limit=5))
    asyncio.run(outbox.finish(first))
    asyncio.run(outbox.retry(second, 5))
    assert outbox.held_bytes == 50 and len(outbox) == 1
    asyncio.run(outbox.finish(second))
    assert outbox.held_bytes == 0 and len(outbox) == 0


def test_a_receiver_that_does_not_answer_in_time_is_retried(make_client):
    client = hooked(make_client, webhook_timeout_s=0.3)
    with WebhookReceiver(delay_s=1.0) as receiver:
        client.post("/v1/generate", json={"class_label": 1, "steps": 2, "webhook": receiver.url}, headers=ASYNC)
        got = receiver.wait_for(2, timeout=30)
    assert got[0]["headers"]["webhook-id"] == got[1]["headers"]["webhook-id"]


def test_multipart_requests_take_webhook_fields(make_client):
    client = hooked(make_client)
    with WebhookReceiver() as receiver:
        r = client.post(
            "/v1/noise",
            files={"file": ("x.png", png_bytes(photo()), "image/png")},
            data={"sigma": "20", "webhook": receiver.url, "webhook_events": "started,completed"},
            headers=ASYNC,
        )
        assert r.status_code == 202, r.text
        got = receiver.wait_for(2)
    statuses = {g["headers"]["webhook-id"].rsplit("_", 1)[1]: json.loads(g["body"])["status"] for g in got}
    assert statuses["completed"] == "succeeded" and set(statuses) == {"started", "completed"}


@pytest.mark.parametrize(
    "url, kind",
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
        ("http://169.254.10.1/", "link-local"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://224.0.0.251/", "multicast"),
        ("http://100.100.100.200/", "non-public"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[64:ff9b:1::7f00:1]/", "private"),  # the local-use NAT64 prefix, here carrying 127.0.0.1
        ("http://[::ffff:0:a9fe:a9fe]/", "cloud-metadata"),  # IPv4-translated (SIIT) 169.254.169.254
        ("http://[fec0::1]/", "site-local"),
    ],
)
def test_webhooks_to_internal_addresses_are_refused_at_submit(make_client, url, kind):
    client = make_client(webhook_secret=SECRET)
    r = client.post("/v1/generate", json={"class_label": 0, "webhook": url}, headers=ASYNC)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "webhook"] and error["type"] == "webhook_refused" and kind in error["msg"]


def test_bad_webhook_fields_are_422_naming_the_field(make_client):
    client = hooked(make_client)
    cases = [
        ({"webhook": "ftp://example.com/x"}, ["body", "webhook"]),
        ({"webhook": "http://:80/x"}, ["body", "webhook"]),
        ({"webhook": "http://127.0.0.1:99999/x"}, ["body", "webhook"]),
        ({"webhook": "http://no-such-host.invalid/x"}, ["body", "webhook"]),
        ({"webhook": "http://a..b/x"}, ["body", "webhook"]),  # an empty label, which IDNA refuses
        ({"webhook": f"http://{'a' * 64}.com/x"}, ["body", "webhook"]),  # a label over 63 characters
        # control characters (urlsplit drops tabs and line breaks before it parses; httpx refuses them)
        ({"webhook": "http://127.0.0.1/ho\nok"}, ["body", "webhook"]),
        ({"webhook": "https://example.com/ho\rok"}, ["body", "webhook"]),  # refused before it is resolved
        ({"webhook": "http://127.0.0.1/a\tb"}, ["body", "webhook"]),
        ({"webhook": "http://127.0.0.1/x?q=\x7f"}, ["body", "webhook"]),
        ({"webhook": "http://127.0.0.1:0/x"}, ["body", "webhook"]),
        ({"webhook_events": ["completed"]}, ["body", "webhook_events"]),
        ({"webhook": "http://127.0.0.1/x", "webhook_events": ["finished"]}, ["body", "webhook_events", 0]),
        ({"webhook": "http://127.0.0.1/x", "webhook_events": []}, ["body", "webhook_events"]),
    ]
    for extra, loc in cases:
        r = client.post("/v1/generate", json={"class_label": 0, **extra}, headers=ASYNC)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, (extra, r.text)
    spaced = client.post("/v1/generate", json={"class_label": 0, "webhook": "http://127.0.0.1/a b"}, headers=ASYNC)
    assert spaced.status_code == 202  # httpx percent-encodes a space


def test_without_a_secret_the_server_refuses_webhooks(make_client):
    client = make_client()
    r = client.post("/v1/generate", json={"class_label": 0, "webhook": "https://example.com/x"}, headers=ASYNC)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "webhooks_disabled"


def test_the_secret_must_be_a_standard_webhooks_secret(tmp_path):
    with pytest.raises(ValueError, match="webhook_secret"):
        Settings(model_store=tmp_path, webhook_secret="whsec_not-base64!")
    with pytest.raises(ValueError, match="webhook_secret"):
        Settings(model_store=tmp_path, webhook_secret="whsec_" + base64.b64encode(b"short").decode())


def test_the_default_retries_make_at_least_five_attempts_over_at_least_ten_minutes(tmp_path):
    settings = Settings(model_store=tmp_path)
    waits = [settings.webhook_backoff_after(attempt) for attempt in range(1, settings.webhook_attempts)]
    assert settings.webhook_attempts >= 5
    assert 0.9 * sum(waits) >= 600  # even with the jitter at its lowest
    assert waits == sorted(waits) and waits[1] / waits[0] > 1


def test_a_delivery_is_kept_in_redis_past_its_last_attempt_however_many_are_set(tmp_path):
    for attempts in (6, 12, 20):
        settings = Settings(model_store=tmp_path, webhook_attempts=attempts)
        last = sum(1.1 * settings.webhook_backoff_after(a) for a in range(1, attempts))  # jitter at its highest
        assert settings.webhook_delivery_ttl_s > last + attempts * settings.webhook_timeout_s
        assert settings.webhook_delivery_ttl_s >= 2 * 24 * 3600


def test_the_receiver_example_in_the_docs_accepts_our_signature_and_refuses_a_forged_one(monkeypatch, capsys):
    from datetime import datetime, timezone
    from pathlib import Path

    from fastapi.testclient import TestClient

    doc = (Path(__file__).parents[2] / "docs" / "webhooks.md").read_text()
    code = doc.split("```python\n")[1].split("```")[0]
    monkeypatch.setenv("DIFFUSION_WEBHOOK_SECRET", SECRET)
    namespace: dict = {}
    exec(compile(code, "docs/webhooks.md", "exec"), namespace)
    body = json.dumps({"job_id": "ab" * 16, "status": "succeeded"})
    now = datetime.now(timezone.utc)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Verifier(SECRET).sign("msg_1", now, body),
    }
    with TestClient(namespace["app"]) as receiver:
        assert receiver.post("/hook", content=body, headers=headers).status_code == 200
        forged = receiver.post("/hook", content=body.replace("succeeded", "failed"), headers=headers)
        assert forged.status_code == 400
    assert "succeeded" in capsys.readouterr().out


def test_ipv6_addresses_that_carry_an_internal_ipv4_address_are_refused():
    import ipaddress

    from app.api.webhooks import address_kind

    for address, kind in [
        ("64:ff9b::a9fe:a9fe", "cloud-metadata"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("::ffff:192.168.1.1", "private"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible (deprecated; a tunnel may still route it)
        ("::a9fe:a9fe", "cloud-metadata"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("::ffff:0:7f00:1", "loopback"),  # IPv4-translated (SIIT, RFC 2765) 127.0.0.1
        # RFC 8215's local-use NAT64 prefix reaches whatever its network's translator does: never public
        ("64:ff9b:1::7f00:1", "private"),
        ("64:ff9b:1::808:808", "private"),
        ("64:ff9b:1:ffff::a9fe:a9fe", "private"),
        ("fec0::1", "site-local"),  # deprecated site-local, which Python 3.11 counts global
    ]:
        assert address_kind(ipaddress.ip_address(address)) == kind, address
    for public in ("2606:4700:4700::1111", "64:ff9b::808:808", "::ffff:0:808:808", "::ffff:8.8.8.8"):
        assert address_kind(ipaddress.ip_address(public)) is None, public


def fake_dns(monkeypatch, names: dict[str, str | list[str]]) -> list[str]:
    """Resolve the given names to the given address (or addresses, in that order; every other name as the
    system does); returns the list of the names looked up, in order, as they are looked up."""
    real, asked = socket.getaddrinfo, []

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        if host in names:
            addresses = [names[host]] if isinstance(names[host], str) else names[host]
            return [
                (socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in addresses
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_named_host_is_reached_at_the_address_it_was_checked_to_have(monkeypatch):
    fake_dns(monkeypatch, {"hook.example": "93.184.216.34", "six.example": "2606:2800:220:1::1"})

    def checked(url: str, allow: frozenset[str] = frozenset()) -> Destination:
        return asyncio.run(destination(url, allow))

    assert checked("http://hook.example/x?y=1") == Destination(
        "http://93.184.216.34/x?y=1", {"host": "hook.example"}, {}
    )
    assert checked("https://u:p@HOOK.example:8443/x") == Destination(
        "https://u:p@93.184.216.34:8443/x", {"host": "hook.example:8443"}, {"sni_hostname": "hook.example"}
    )
    assert checked("https://six.example/x").url == "https://[2606:2800:220:1::1]/x"
    assert checked("http://93.184.216.34:81/x") == Destination("http://93.184.216.34:81/x", {}, {})
    # a host the operator allows is reached by its name, wherever it resolves then
    assert checked("http://hook.example/x", frozenset({"hook.example"})) == Destination("http://hook.example/x", {}, {})
    with pytest.raises(Refused, match="not a valid host name"):
        checked("http://a..b/x")


def delivered_by_name(client) -> tuple[dict, int]:
    """A job whose webhook names hook.example (``fake_dns`` has it resolve to the receiver's address): its one
    delivery, checked to be signed and to carry the job, and the receiver's port."""
    with WebhookReceiver() as receiver:
        port = receiver.server.server_address[1]
        body = {"class_label": 0, "steps": 2, "webhook": f"http://hook.example:{port}/hook"}
        job_id = client.post("/v1/generate", json=body, headers=ASYNC).json()["job_id"]
        (got,) = receiver.wait_for(1)
    assert verified(got)["job_id"] == job_id
    return got, port


def test_a_delivery_connects_to_the_checked_address_and_does_not_look_the_name_up_again(make_client, monkeypatch):
    """DNS rebinding: a name that resolves to a public address when checked and to an internal one when the
    connection is made. The connection goes to the checked address, with the name in the Host header."""
    asked = fake_dns(monkeypatch, {"hook.example": "127.0.0.1"})
    monkeypatch.setattr(webhooks, "address_kind", lambda ip: None)  # 127.0.0.1 stands for a public address
    client = make_client(webhook_secret=SECRET, webhook_backoff_s=0.05, webhook_timeout_s=1.0)
    got, port = delivered_by_name(client)
    headers = {name.lower(): value for name, value in got["headers"].items()}
    assert headers["host"] == f"hook.example:{port}" and got["path"] == "/hook"
    assert asked.count("hook.example") == 2  # checked at submit and before the attempt; never by the connection


def test_a_host_with_several_addresses_is_checked_at_each_and_reached_at_the_next_when_one_refuses(
    make_client, monkeypatch
):
    """Only the first address the name resolved to was tried, so a host whose first address cannot be
    connected to (an IPv6 one on a network without IPv6 routes; one of several servers down) was never
    reached, in any attempt. Every address is checked at submit, and one that refuses to connect (nothing
    sent) passes the attempt to the next."""
    fake_dns(monkeypatch, {"two.example": ["93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"]})
    target = asyncio.run(destination("http://two.example:81/x", frozenset()))
    assert target == Destination(
        "http://93.184.216.34:81/x", {"host": "two.example:81"}, {}, ("http://[2606:2800:220:1::1]:81/x",)
    )
    fake_dns(monkeypatch, {"bad.example": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(Refused, match="10.0.0.7, a private address"):
        asyncio.run(destination("http://bad.example/x", frozenset()))

    # 127.0.0.2 stands for an address nothing listens on (the receiver binds 127.0.0.1 only)
    fake_dns(monkeypatch, {"hook.example": ["127.0.0.2", "127.0.0.1"]})
    monkeypatch.setattr(webhooks, "address_kind", lambda ip: None)  # loopback stands for public addresses
    retried = deliveries("completed", "retried")
    got, port = delivered_by_name(make_client(webhook_secret=SECRET, webhook_backoff_s=5.0, webhook_timeout_s=5.0))
    assert {name.lower(): value for name, value in got["headers"].items()}["host"] == f"hook.example:{port}"
    assert deliveries("completed", "retried") == retried  # in the first attempt: no retry after 5 s


def test_a_host_that_does_not_resolve_for_a_moment_at_delivery_is_retried(make_client, monkeypatch):
    """A resolver away for a moment (EAI_AGAIN) had counted as a refused address: the delivery was given up
    after one attempt and removed from the outbox."""
    asked = fake_dns(monkeypatch, {"hook.example": "127.0.0.1"})
    monkeypatch.setattr(webhooks, "address_kind", lambda ip: None)  # 127.0.0.1 stands for a public address
    resolve = socket.getaddrinfo

    def flaky(host, *args, **kwargs):  # the second lookup (the first attempt's) fails
        if host == "hook.example" and asked.count(host) == 1:
            asked.append(host)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", flaky)
    client = hooked(make_client)
    retried, refused = deliveries("completed", "retried"), deliveries("completed", "refused")
    delivered_by_name(client)
    assert asked.count("hook.example") == 3  # at submit, the failed lookup, the lookup of the second attempt
    assert deliveries("completed", "retried") - retried == 1 and deliveries("completed", "refused") == refused


def test_a_receiver_that_never_answers_holds_a_few_places_not_other_clients_deliveries(tmp_path):
    """Deliveries were sent 32 at a time, the next claim waiting for the slowest of them: 40 due to a receiver
    that never answers held another client's delivery for a whole timeout per 32 of them ahead."""
    from app.api.webhooks import Dispatcher
    from app.queue.outbox import Delivery, MemoryOutbox
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, webhook_secret=SECRET, webhook_allow_hosts="127.0.0.1", webhook_timeout_s=120.0)
    outbox = MemoryOutbox()

    def due(job: str, url: str) -> None:
        record = JobRecord(id=job, kind="generate", model="m", status="succeeded")
        outbox.add(Delivery(Delivery.message_id(job, "completed"), url, "completed", record.model_dump_json()))

    for i in range(40):
        due(f"{i:032x}", "http://127.0.0.1:9/slow")
    due("f" * 32, "http://127.0.0.1:8/fast")  # due last

    async def scenario() -> tuple[int, int]:
        dispatcher = Dispatcher(settings, outbox)
        release, fast = asyncio.Event(), asyncio.Event()
        hanging, most = 0, 0

        async def post(target, body, headers):
            nonlocal hanging, most
            if target.url.endswith("/fast"):
                fast.set()
                return 200
            hanging += 1
            most = max(most, hanging)
            await release.wait()  # stands for a receiver that never answers
            hanging -= 1
            return 200

        dispatcher._post = post
        dispatcher.start()
        try:
            await asyncio.wait_for(fast.wait(), 60)  # a bound on a hang, not a measure of speed
            held = hanging
            release.set()
            while len(outbox):
                await asyncio.sleep(0.05)
        finally:
            await dispatcher.close()
        return held, most

    held, most = asyncio.run(scenario())
    assert held == most == Dispatcher.PER_RECEIVER  # the slow receiver held its own places only, then the rest


def test_a_jobs_deliveries_keep_their_order_when_one_is_put_back_for_a_busy_receiver(tmp_path):
    """``started`` put back while the receiver's places were taken, then the job ended: ``completed``, due
    earlier than the put-back ``started``, had gone first."""
    from app.api.webhooks import Dispatcher
    from app.queue.outbox import Delivery, MemoryOutbox
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, webhook_secret=SECRET, webhook_allow_hosts="127.0.0.1")
    outbox = MemoryOutbox()

    def due(job: str, event: str) -> None:
        record = JobRecord(id=job, kind="generate", model="m", status="succeeded")
        outbox.add(
            Delivery(Delivery.message_id(job, event), "http://127.0.0.1:9/hook", event, record.model_dump_json())
        )

    async def scenario() -> list[str]:
        dispatcher = Dispatcher(settings, outbox)
        release, sent = asyncio.Event(), []

        async def post(target, body, headers):
            job = json.loads(body)["job_id"]
            sent.append(headers["webhook-id"])
            if job.startswith("a"):
                await release.wait()  # the receiver's places are taken
            return 200

        dispatcher._post = post
        for i in range(Dispatcher.PER_RECEIVER):
            due(f"a{i:031x}", "completed")
        dispatcher.start()
        try:
            while len(sent) < Dispatcher.PER_RECEIVER:
                await asyncio.sleep(0.01)
            due("b" * 32, "started")  # put back: the receiver is full
            while outbox._due[Delivery.message_id("b" * 32, "started")][0] <= time.time():
                await asyncio.sleep(0.01)
            release.set()
            while len(outbox) > 1:  # the four answered: places free before started is due again
                await asyncio.sleep(0.01)
            due("b" * 32, "completed")  # the job ended meanwhile
            while len(outbox):
                await asyncio.sleep(0.01)
        finally:
            await dispatcher.close()
        return [s for s in sent if "_b" in s]

    assert asyncio.run(scenario()) == [f"msg_{'b' * 32}_started", f"msg_{'b' * 32}_completed"]


def test_a_delivery_for_a_busy_receiver_is_put_back_for_about_as_long_as_its_attempts_take(tmp_path):
    """A whole timeout for every receiver had held a quick receiver's burst of more than 4 deliveries 10 s."""
    from app.api.webhooks import Dispatcher
    from app.queue.outbox import MemoryOutbox
    from tests.helpers import make_settings

    dispatcher = Dispatcher(make_settings(tmp_path, webhook_timeout_s=30.0), MemoryOutbox())
    assert dispatcher._busy_for("http://new:") == Dispatcher.POLL_S  # nothing known: soon
    for _ in range(3):
        dispatcher._took("http://quick:", 0.02)
        dispatcher._took("http://dead:", 30.0)
    assert dispatcher._busy_for("http://quick:") == Dispatcher.POLL_S
    assert dispatcher._busy_for("http://dead:") == 30.0
    dispatcher._took("http://slow:", 4.0)
    assert dispatcher._busy_for("http://slow:") == 4.0


def test_the_addresses_of_a_host_share_the_time_to_connect_and_a_silent_one_passes_to_the_next(tmp_path, monkeypatch):
    """An address that drops connections silently took the attempt's whole time (httpx's ConnectTimeout is no
    ConnectError), so the host's next address was never tried, in any attempt."""
    import httpx

    from app.api.webhooks import Dispatcher
    from app.queue.outbox import Delivery, MemoryOutbox
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, webhook_secret=SECRET, webhook_timeout_s=9.0)
    target = Destination(
        "http://93.184.216.34/hook", {"host": "two.example"}, {}, ("http://[2606:2800:220:1::1]/hook",)
    )
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.extensions["timeout"]["connect"], request.headers["host"]))
        if request.url.host == "93.184.216.34":
            raise httpx.ConnectTimeout("no answer to the SYN", request=request)
        return httpx.Response(204)

    async def scenario() -> str | None:
        dispatcher = Dispatcher(settings, MemoryOutbox())
        dispatcher.client = httpx.AsyncClient(transport=httpx.MockTransport(answer))

        async def checked(url, allow):
            return target

        monkeypatch.setattr(webhooks, "destination", checked)
        try:
            record = JobRecord(id="a" * 32, kind="generate", model="m", status="succeeded")
            message = Delivery.message_id(record.id, "completed")
            return await dispatcher._send(
                Delivery(message, "http://two.example/hook", "completed", record.model_dump_json())
            )
        finally:
            await dispatcher.client.aclose()

    assert asyncio.run(scenario()) is None  # delivered, at the second address
    assert seen == [("93.184.216.34", 4.5, "two.example"), ("2606:2800:220:1::1", 4.5, "two.example")]
