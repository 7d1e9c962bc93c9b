"""Continuous-batching scheduler: decides which rows run in the next forward pass. Never touches tensors.

1. Admission. Waiting rows join the running set while it has room, in rows (``max_batch``; a guided row
   costs two network rows: conditional and null label) and in pixels (``max_pixels``, the rows' image
   area: a 256x256 tile weighs as much as 84 28x28 digits). The next row comes from the waiting job of
   the highest priority (low, normal, high; a job that has had no row admitted for ``aging_s`` rises a
   level per ``aging_s``, so no priority starves), then with the fewest rows running, the earliest on a
   tie: a job of 300 tiles cannot hold the door shut on a job of one image that arrived after it.
2. The pass. Only rows of one group (same model, same image shape) can share a forward pass. Groups with
   running rows share the device by time (start-time fair queuing): the group that has had the least
   pass time runs next, ties in turn. A 20-step generate next to a huge denoise gets about half the
   device, not one pass in two: its cheap passes are not queued behind the expensive ones.
3. Between two passes, new rows join and finished or cancelled rows leave.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Hashable

from app.jobs import PRIORITY_AGING_S, aged_level


@dataclass(frozen=True)
class Ticket:
    row_id: int
    job_id: str
    group: Hashable
    cost: int = 1  # network rows
    pixels: int = 0  # network rows x image area
    priority: int = 1  # 0 low, 1 normal, 2 high


class Scheduler:
    def __init__(
        self, max_batch: int, max_pixels: int | None = None, *, aging_s: float = PRIORITY_AGING_S, clock=time.monotonic
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self._waiting: OrderedDict[str, deque[Ticket]] = OrderedDict()  # job -> its rows, in arrival order
        self._running: OrderedDict[int, Ticket] = OrderedDict()
        self._running_per_job: dict[str, int] = {}
        self.running_cost = 0  # network rows running, kept as rows come and go
        self.running_pixels = 0
        self._arrived: dict[str, float] = {}  # job -> since when it has waited without a row admitted (aging)
        self.aging_s, self.clock = aging_s, clock
        self._served: dict[Hashable, float] = {}  # group -> pass seconds, for the groups with running rows
        self._last_group: Hashable | None = None

    # -- queries -------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running

    # -- changes ------------------------------------------------------------------------------
    def add(self, tickets: list[Ticket], since: float | None = None) -> None:
        """Rows waiting their turn; ``since``: when their job began to wait, if before now (on this clock)."""
        now = self.clock() if since is None else since
        for ticket in tickets:
            self._waiting.setdefault(ticket.job_id, deque()).append(ticket)
            self._arrived.setdefault(ticket.job_id, now)

    def cancel(self, job_id: str) -> list[int]:
        """Drop every row of ``job_id``, waiting or running; returns their row ids."""
        dropped = [t.row_id for t in self._waiting.pop(job_id, ())]
        for row_id, ticket in list(self._running.items()):
            if ticket.job_id == job_id:
                dropped.append(row_id)
                self._retire(row_id)
        self._running_per_job.pop(job_id, None)
        self._arrived.pop(job_id, None)
        return dropped

    def _fits(self, ticket: Ticket, cost: int, pixels: int) -> bool:
        if not self._running:
            return True  # a row larger than the caps still runs, alone
        if cost + ticket.cost > self.max_batch:
            return False
        return self.max_pixels is None or pixels + ticket.pixels <= self.max_pixels

    def _admit(self) -> list[Ticket]:
        admitted = []
        cost, pixels = self.running_cost, self.running_pixels
        now = self.clock()

        def rank(job: str) -> tuple[int, int]:
            # Higher priority first; a job that has had no row admitted for aging_s gains a level per aging_s
            # (up to high), so lower priorities never starve; then the job with the fewest rows running;
            # min() keeps arrival order among equals.
            level = aged_level(self._waiting[job][0].priority, now - self._arrived[job], self.aging_s)
            return -level, self._running_per_job.get(job, 0)

        while self._waiting:
            job_id = min(self._waiting, key=rank)
            rows = self._waiting[job_id]
            ticket = rows[0]
            if not self._fits(ticket, cost, pixels):
                break
            rows.popleft()
            if not rows:
                del self._waiting[job_id]
            self._running[ticket.row_id] = ticket
            self._running_per_job[job_id] = self._running_per_job.get(job_id, 0) + 1
            self._arrived[job_id] = now  # served: its wait starts again
            admitted.append(ticket)
            cost, pixels = cost + ticket.cost, pixels + ticket.pixels
        self.running_cost, self.running_pixels = cost, pixels
        return admitted

    def _retire(self, row_id: int) -> Ticket | None:
        ticket = self._running.pop(row_id, None)
        if ticket is not None:
            self.running_cost -= ticket.cost
            self.running_pixels -= ticket.pixels
        return ticket

    def _pick_group(self) -> Hashable:
        groups = list(dict.fromkeys(t.group for t in self._running.values()))
        floor = min((self._served[g] for g in groups if g in self._served), default=0.0)
        self._served = {g: self._served.get(g, floor) for g in groups}  # a new group starts level with the rest
        least = min(self._served.values())
        candidates = [g for g in groups if self._served[g] == least]
        if self._last_group in groups:  # ties go round robin, starting after the group that ran last
            after = groups.index(self._last_group) + 1
            order = groups[after:] + groups[:after]
            candidates = [g for g in order if g in candidates]
        return candidates[0]

    def schedule(self) -> tuple[list[Ticket], list[Ticket]]:
        """Admit waiting rows, then pick the group for the next pass.

        Returns (batch, admitted): the rows to run now, and the rows that joined the running set.
        """
        admitted = self._admit()
        if not self._running:
            return [], admitted
        group = self._pick_group()
        self._last_group = group
        return [t for t in self._running.values() if t.group == group], admitted

    def update(self, finished: list[int], *, seconds: float = 0.0) -> None:
        """Retire rows that reached the end of their plan (or failed); charge the pass's time to its group."""
        if self._last_group in self._served:
            self._served[self._last_group] += seconds
        for row_id in finished:
            ticket = self._retire(row_id)
            if ticket is not None:
                left = self._running_per_job.get(ticket.job_id, 1) - 1
                if left > 0:
                    self._running_per_job[ticket.job_id] = left
                else:
                    self._running_per_job.pop(ticket.job_id, None)
                    if ticket.job_id not in self._waiting:
                        self._arrived.pop(ticket.job_id, None)
