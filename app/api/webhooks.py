"""Webhooks: the check of a request's ``webhook`` (with the SSRF guard), and the dispatcher that signs
deliveries by the Standard Webhooks specification and sends them, retrying with exponential backoff.

Deliveries wait in the queue backend's outbox (app.queue.outbox): in Redis mode they outlive any API
node, and whichever node is up sends them. Each message keeps its ``webhook-id`` across attempts, so a
receiver can drop a repeat (delivery is at least once: a node that dies after sending, before recording
it, leaves the message to be sent again).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import re
import socket
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, get_args
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook as Signer

from app import background
from app.api.errors import PARSE_ON_LOOP_BYTES, ApiError, brief
from app.api.schemas import JobOut, job_body
from app.jobs import JobRecord, Webhook, WebhookEvent
from app.logs import url_for_log
from app.metrics import WEBHOOK_DELIVERIES
from app.queue.outbox import Delivery, Outbox
from app.settings import Settings

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_S = 3.0
EVENTS = list(get_args(WebhookEvent))  # in the order they happen
CLOUD_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


NAT64 = ipaddress.ip_network("64:ff9b::/96")
# RFC 8215's local-use NAT64 prefix: a network's own translators, not globally reachable (IANA's registry, and
# Python's ipaddress from 3.12.4 on; 3.11's counts it global), whatever IPv4 address it carries
NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT (RFC 2765)
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated (RFC 4291), still routed by some tunnels


def address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What makes an address unfit for a webhook (None: a public address). An IPv6 address that carries an
    IPv4 one (mapped, translated, compatible, NAT64 on the well-known prefix, 6to4, Teredo) is judged by the
    IPv4 address it reaches; the local-use NAT64 prefix and site-local addresses are never public."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and (ip in NAT64 or ip in IPV4_TRANSLATED or (ip in IPV4_COMPATIBLE and int(ip) > 1)):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)  # (IPv4-compatible: not :: nor ::1)
        if embedded is not None:
            return address_kind(embedded)
        if ip in NAT64_LOCAL_USE:
            return "private"
        if ip.is_site_local:  # fec0::/10: deprecated, yet Python counts it global
            return "site-local"
    for kind, test in (
        ("cloud-metadata", lambda: ip in CLOUD_METADATA),
        ("loopback", lambda: ip.is_loopback),
        ("unspecified", lambda: ip.is_unspecified),
        ("link-local", lambda: ip.is_link_local),
        ("multicast", lambda: ip.is_multicast),
        ("private", lambda: ip.is_private),
        ("non-public", lambda: not ip.is_global),
    ):
        if test():
            return kind
    return None


def message_body(delivery: Delivery) -> str:
    """The JSON a delivery sends: its job as GET /v1/jobs/{id} answers; where the outbox left the images' data
    out, each image's ``data`` is null and its ``url`` gives it (while the job is kept)."""
    record = JobRecord.model_validate_json(delivery.record)
    job = JobOut.model_validate(job_body(record, include_data=delivery.images_inline))
    return json.dumps(job.model_dump(mode="json"), separators=(",", ":"))


class Refused(Exception):
    """A webhook URL that may not receive deliveries, with the reason."""


class Unresolved(Refused):
    """A webhook host that does not resolve now: refused at submit; at delivery, where the resolver may be
    away for a moment (EAI_AGAIN, a timeout), the attempt fails and is retried."""


@dataclass(frozen=True)
class Destination:
    """Where one attempt goes: ``url`` names the address the host was checked to resolve to, so the
    connection cannot reach another one (a name that resolves to a public address when checked and to an
    internal one a moment later: DNS rebinding); ``headers`` and ``extensions`` keep the name for the
    receiver (``Host``) and for TLS (the server name sent and the certificate checked). ``others``: the same
    URL at the host's other checked addresses, in the resolver's order, tried in turn when one cannot be
    connected to (an IPv6 address first on a network without IPv6 routes, one server of several down)."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, str]
    others: tuple[str, ...] = ()


async def destination(url: str, allow_hosts: frozenset[str]) -> Destination:
    """The checked destination of ``url``; raises Refused with the reason. Its host must resolve to public
    addresses only, unless it is listed in ``allow_hosts`` (then it is reached by its name)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"webhook is not a valid URL: {exc}") from exc
    if port == 0:
        raise Refused("webhook port 0 cannot be connected to")
    port = port or (443 if parts.scheme == "https" else 80)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("webhook must be an http:// or https:// URL with a host")
    host = parts.hostname.lower()
    if host in allow_hosts:
        return Destination(url, {}, {})
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except UnicodeError as exc:  # the IDNA codec: an empty or over-long label, as in "a..b"
            raise Refused(f"webhook host {brief(host)} is not a valid host name") from exc
        except (OSError, asyncio.TimeoutError) as exc:
            raise Unresolved(f"webhook host {brief(host)} does not resolve") from exc
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        if not addresses:
            raise Unresolved(f"webhook host {brief(host)} does not resolve")
    for ip in addresses:
        kind = address_kind(ip)
        if kind is not None:
            raise Refused(
                f"webhook host {brief(host)} resolves to {ip}, a {kind} address: refused "
                "(DIFFUSION_WEBHOOK_ALLOW_HOSTS lists the hosts allowed anyway)"
            )
    if str(addresses[0]) == host:  # an address already
        return Destination(url, {}, {})
    name = host.encode("idna").decode("ascii")  # as the resolver took it (an internationalised name)
    userinfo = parts.netloc.rpartition("@")[0]

    def at(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        pinned = f"[{ip}]" if ip.version == 6 else str(ip)
        netloc = (f"{userinfo}@" if userinfo else "") + (f"{pinned}:{parts.port}" if parts.port else pinned)
        return parts._replace(netloc=netloc).geturl()

    first, *others = dict.fromkeys(addresses)  # each address once, in the resolver's order
    headers = {"host": f"{name}:{parts.port}" if parts.port else name}
    tls = {"sni_hostname": name} if parts.scheme == "https" else {}
    return Destination(at(first), headers, tls, tuple(at(ip) for ip in others))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


async def refusal(url: str, allow_hosts: frozenset[str]) -> str | None:
    """Why ``url`` may not receive webhooks, or None. A control character is refused here, at submit only:
    urlsplit drops tabs and line breaks before it parses, so such a URL would be delivered elsewhere than it
    says (its path without them) or, to an address or an allowed host, not at all (httpx refuses it); a
    delivery accepted before this check goes on as it was. Spaces are fine: httpx percent-encodes them."""
    bad = _CONTROL.search(url)
    if bad is not None:
        return f"webhook URL holds a control character ({bad.group()!r}) at {bad.start()}: percent-encode it"
    try:
        await destination(url, allow_hosts)
    except Refused as exc:
        return str(exc)
    return None


async def webhook_for(options: Any, settings: Settings) -> Webhook | None:
    """The request's webhook, checked (422 naming the fault), or None when it asks for none."""
    url = getattr(options, "webhook", None)
    if url is None:
        if "webhook_events" in getattr(options, "model_fields_set", ()):
            raise ApiError(422, ["body", "webhook_events"], "webhook_events needs a webhook URL", type="missing")
        return None
    if settings.webhook_secret is None:
        raise ApiError(
            422,
            ["body", "webhook"],
            "this server sends no webhooks (DIFFUSION_WEBHOOK_SECRET is not set): poll or stream the job instead",
            type="webhooks_disabled",
        )
    why = await refusal(url, settings.webhook_hosts)
    if why is not None:
        raise ApiError(422, ["body", "webhook"], why, type="webhook_refused")
    return Webhook(url=url, events=sorted(set(options.webhook_events), key=EVENTS.index))


def receiver_of(url: str) -> str:
    """Who receives deliveries to ``url``: its scheme, host and port (not its path or credentials)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port or ''}"
    except ValueError:  # refused at its attempt, with the reason
        return url


class Dispatcher:
    """Sends the outbox's due deliveries: one task per API node, any number of nodes. Up to ``IN_FLIGHT``
    deliveries are sent at once, each claimed as a place frees, and at most ``PER_RECEIVER`` of them to one
    receiver (scheme, host and port): one that takes its whole timeout holds a few places, not every other
    client's deliveries. One job's deliveries go in order (``started`` before ``completed``)."""

    POLL_S = 0.25
    IN_FLIGHT = 32
    PER_RECEIVER = 4

    def __init__(self, settings: Settings, outbox: Outbox) -> None:
        self.settings, self.outbox = settings, outbox
        secret = settings.webhook_secret
        self.signer = Signer(secret.get_secret_value()) if secret is not None else None
        self.client: httpx.AsyncClient | None = None
        self._task: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()
        self._last_of_job: dict[str, asyncio.Task] = {}  # each job's latest delivery in flight: the next waits
        self._to_receiver: Counter[str] = Counter()  # deliveries in flight to each receiver
        # how long each receiver's recent attempts took (a moving average; the most recent receivers only): a
        # delivery to a receiver whose places are all taken is due again about that much later, when a place
        # is likely free (a quick receiver: soon; one that never answers: its timeout)
        self._takes: OrderedDict[str, float] = OrderedDict()
        self._put_back: dict[str, float] = {}  # job -> until when one of its deliveries is put back

    def start(self) -> None:
        """Start sending, when a secret is configured (without one no webhook is accepted)."""
        if self.signer is None:
            return
        self.client = httpx.AsyncClient(
            follow_redirects=False,  # a redirect is an answer, not a delivery (and could point anywhere)
            timeout=self.settings.webhook_timeout_s,
            headers={"user-agent": "diffusion-service-webhooks"},
        )
        # the outbox away (Redis, for a moment) is an error: the deliveries wait there; retried after 1 s
        self._task = background.forever(self._dispatch_once, pause_s=1.0, name="webhook-dispatcher")

    async def close(self) -> None:
        if self._task is not None:
            await background.stop([self._task])
        if self._sending:  # their claims' leases run out: they are sent again, by this node or another
            await background.stop(list(self._sending))
        if self.client is not None:
            await self.client.aclose()

    async def _dispatch_once(self) -> None:
        free = self.IN_FLIGHT - len(self._sending)
        claimed = []
        if free > 0:
            # longer than two attempts, DNS included: a job's second delivery may wait for its first
            lease = 2 * self.settings.webhook_timeout_s + 30
            claimed = await self.outbox.claim(lease_s=lease, limit=free)
        now = time.monotonic()
        self._put_back = {job: until for job, until in self._put_back.items() if until > now}
        for delivery in sorted(claimed, key=lambda d: EVENTS.index(d.event)):
            receiver = receiver_of(delivery.url)
            until = self._put_back.get(delivery.job_id)
            if until is not None or self._to_receiver[receiver] >= self.PER_RECEIVER:
                # not an attempt: due again later, behind what falls due meanwhile (and behind its job's
                # earlier delivery, put back before it)
                delay = self._busy_for(receiver) if until is None else until - now + 0.001
                await self.outbox.retry(delivery, delay)
                self._put_back[delivery.job_id] = now + delay
                continue
            self._send_soon(delivery, receiver)
        if claimed and len(self._sending) < self.IN_FLIGHT:
            return  # more may be due already (a backlog put back is passed through at once)
        if self._sending:  # until a place frees, or a while passes
            await asyncio.wait(self._sending, timeout=self.POLL_S, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(self.POLL_S)

    def _send_soon(self, delivery: Delivery, receiver: str) -> None:
        before = self._last_of_job.get(delivery.job_id)
        task = asyncio.create_task(self._deliver_after(before, delivery, receiver), name=f"webhook {delivery.id}")
        self._sending.add(task)
        self._last_of_job[delivery.job_id] = task
        self._to_receiver[receiver] += 1

        def done(finished: asyncio.Task) -> None:
            self._sending.discard(finished)
            if self._last_of_job.get(delivery.job_id) is finished:
                del self._last_of_job[delivery.job_id]
            self._to_receiver[receiver] -= 1
            if not self._to_receiver[receiver]:
                del self._to_receiver[receiver]

        task.add_done_callback(done)

    async def _deliver_after(self, before: asyncio.Task | None, delivery: Delivery, receiver: str) -> None:
        if before is not None:
            await asyncio.wait([before])  # only the order matters here, not how it went
        began = time.monotonic()
        try:
            await self._deliver(delivery)
        finally:
            self._took(receiver, time.monotonic() - began)

    TAKES_KEPT = 1024  # receivers whose attempts' times are remembered

    def _took(self, receiver: str, seconds: float) -> None:
        before = self._takes.pop(receiver, seconds)
        self._takes[receiver] = 0.7 * before + 0.3 * seconds
        if len(self._takes) > self.TAKES_KEPT:
            self._takes.popitem(last=False)

    def _busy_for(self, receiver: str) -> float:
        """How long a delivery to ``receiver``, whose places are all taken, is put back."""
        took = self._takes.get(receiver, self.POLL_S)
        return min(max(took, self.POLL_S), self.settings.webhook_timeout_s)

    async def _deliver(self, delivery: Delivery) -> None:
        delivery.attempts += 1
        try:
            problem = await self._send(delivery)
        except Exception as exc:  # whatever went wrong, the delivery stays in the outbox's hands
            problem = f"{type(exc).__name__}: {exc}"
        try:
            await self._settle(delivery, problem)
        except Exception as exc:  # the outbox is away: the claim's lease runs out and it is sent again
            log.warning("webhook %s: could not record the attempt (%s)", delivery.id, exc)

    async def _settle(self, delivery: Delivery, problem: str | None) -> None:
        if problem is None:
            WEBHOOK_DELIVERIES.labels(delivery.event, "delivered").inc()
            await self.outbox.finish(delivery)
            return
        if problem.startswith("refused:") or delivery.attempts >= self.settings.webhook_attempts:
            outcome = "refused" if problem.startswith("refused:") else "failed"
            WEBHOOK_DELIVERIES.labels(delivery.event, outcome).inc()
            log.warning(
                "webhook %s to %s given up after %d attempt(s): %s",
                delivery.id,
                url_for_log(delivery.url),
                delivery.attempts,
                problem,
            )
            await self.outbox.finish(delivery)
            return
        delay = self.settings.webhook_backoff_after(delivery.attempts) * random.uniform(0.9, 1.1)
        WEBHOOK_DELIVERIES.labels(delivery.event, "retried").inc()
        log.info("webhook %s attempt %d: %s; next in %.0f s", delivery.id, delivery.attempts, problem, delay)
        await self.outbox.retry(delivery, delay)

    async def _send(self, delivery: Delivery) -> str | None:
        """One attempt; None when the receiver took it (2xx), else what went wrong."""
        try:  # checked again: the name may resolve elsewhere now
            target = await destination(delivery.url, self.settings.webhook_hosts)
        except Unresolved as exc:  # it resolved at submit: the resolver may be away for a moment
            return str(exc)
        except Refused as exc:
            return f"refused: {exc}"
        # a large record is read and written off the event loop (a 16 MP result: 0.4 s at each attempt)
        body = (
            await asyncio.to_thread(message_body, delivery)
            if len(delivery.record) > PARSE_ON_LOOP_BYTES
            else message_body(delivery)
        )
        now = datetime.now(timezone.utc)
        headers = {
            **target.headers,
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(delivery.id, now, body),
        }
        try:  # the whole attempt within the timeout (a receiver that trickles its answer cannot hold it);
            # its body is not read: the status says it all
            async with asyncio.timeout(self.settings.webhook_timeout_s):  # (wait_for on 3.11 can eat a cancel)
                for i, url in enumerate((target.url, *target.others)):
                    try:
                        status = await self._post(replace(target, url=url), body, headers)
                        break
                    except (httpx.ConnectError, httpx.ConnectTimeout):  # nothing sent: the next address, if any
                        if i == len(target.others):
                            raise
        except (httpx.TimeoutException, asyncio.TimeoutError):
            return f"no answer within {self.settings.webhook_timeout_s:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"

    async def _post(self, target: Destination, body: str, headers: dict) -> int:
        """POST to ``target.url``; a host's addresses share the attempt's time to connect (one that drops
        connections silently leaves the others their part), the whole attempt keeps its limit."""
        limit = self.settings.webhook_timeout_s
        timeout = httpx.Timeout(limit, connect=limit / (1 + len(target.others)))
        request = self.client.build_request(
            "POST", target.url, content=body.encode(), headers=headers, extensions=target.extensions, timeout=timeout
        )
        response = await self.client.send(request, stream=True)
        try:
            return response.status_code
        finally:
            await response.aclose()
