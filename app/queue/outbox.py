"""Webhook deliveries waiting to be sent: the job's record as it stood when the event fired, with a due time.

The queue backend adds a delivery in the same step that changes the record (so no event is lost between
the two); the API's dispatcher (app.api.webhooks) claims due deliveries, sends them, and finishes or
reschedules each. A claim moves the delivery's due time a lease ahead instead of removing it: a node that
dies mid-delivery leaves it to be claimed again once the lease is over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from app.jobs import JobRecord, webhook_events


@dataclass
class Delivery:
    id: str  # the Standard Webhooks message ID: the same for every attempt, so receivers can deduplicate
    url: str
    event: str
    record: str  # the job record's JSON at the moment of the event
    attempts: int = 0
    images_inline: bool = True  # False: the record's images were left out (their data), sent by URL only

    @classmethod
    def message_id(cls, job_id: str, event: str) -> str:
        return f"msg_{job_id}_{event}"

    @property
    def job_id(self) -> str:
        return self.id.split("_")[1]


def deliveries_for(record: JobRecord, before, *, images: bool = True) -> list[Delivery]:
    """The deliveries a record's change from status ``before`` fires, for the events its webhook asked for;
    without ``images`` their records leave the images' data out (the body then gives each image's URL only)."""
    events = [e for e in webhook_events(before, record) if e in record.webhook.events] if record.webhook else []
    if not events:
        return []
    if not images and record.result is not None:
        kept = [image.model_copy(update={"data": b""}) for image in record.result.images]
        record = record.model_copy(update={"result": record.result.model_copy(update={"images": kept})})
    source = record.model_dump_json()
    return [
        Delivery(Delivery.message_id(record.id, e), record.webhook.url, e, source, images_inline=images) for e in events
    ]


class Outbox(Protocol):
    async def claim(self, *, lease_s: float, limit: int) -> list[Delivery]:
        """Deliveries due now, each held for ``lease_s`` seconds (then due again unless finished)."""

    async def finish(self, delivery: Delivery) -> None:
        """Delivered, or given up: forget it."""

    async def retry(self, delivery: Delivery, delay_s: float) -> None:
        """Send it again in ``delay_s`` seconds, with its attempt count as it now stands."""


class MemoryOutbox:
    """The in-process backend's outbox: deliveries live as long as the process does. Their records' JSON
    counts against ``max_bytes``: a receiver that fails for its 20 minutes of retries, or never answers,
    would otherwise hold a copy of every result sent to it, beyond the caps on finished jobs."""

    def __init__(self, max_bytes: float = float("inf")) -> None:
        self._due: dict[str, tuple[float, Delivery]] = {}
        self.max_bytes = max_bytes
        self.held_bytes = 0

    def has_room(self, size: int) -> bool:
        """Whether a record of ``size`` bytes of JSON may be added whole."""
        return self.held_bytes + size <= self.max_bytes

    def add(self, delivery: Delivery) -> None:
        self._forget(delivery.id)
        self._due[delivery.id] = (time.time(), delivery)
        self.held_bytes += len(delivery.record)

    def _forget(self, delivery_id: str) -> None:
        if (kept := self._due.pop(delivery_id, None)) is not None:
            self.held_bytes -= len(kept[1].record)

    def __len__(self) -> int:
        return len(self._due)

    async def claim(self, *, lease_s: float, limit: int) -> list[Delivery]:
        now = time.time()
        due = sorted((at, d.id) for at, d in self._due.values() if at <= now)[:limit]
        claimed = [self._due[i][1] for _, i in due]
        for delivery in claimed:
            self._due[delivery.id] = (now + lease_s, delivery)
        return claimed

    async def finish(self, delivery: Delivery) -> None:
        self._forget(delivery.id)

    async def retry(self, delivery: Delivery, delay_s: float) -> None:
        # counted again as it is put back (a lease that ran out mid-send: another attempt may have finished it)
        self._forget(delivery.id)
        self._due[delivery.id] = (time.time() + delay_s, delivery)
        self.held_bytes += len(delivery.record)
