"""Continuous-batching scheduler: decides which rows run in the next forward pass. Never touches tensors.

Rows are admitted first come, first served while the running set has room (a guided row costs two
network rows: conditional and null label). Only rows of one group (same model, same image shape) can
share a forward pass, so groups with running rows take turns, round robin. Between two passes, new
rows join and finished or cancelled rows leave.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True)
class Ticket:
    row_id: int
    job_id: str
    group: Hashable
    cost: int = 1


class Scheduler:
    def __init__(self, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self._waiting: deque[Ticket] = deque()
        self._running: OrderedDict[int, Ticket] = OrderedDict()
        self._last_group: Hashable | None = None

    # -- queries -------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running

    @property
    def running_cost(self) -> int:
        return sum(t.cost for t in self._running.values())

    # -- changes ------------------------------------------------------------------------------
    def add(self, tickets: list[Ticket]) -> None:
        self._waiting.extend(tickets)

    def cancel(self, job_id: str) -> list[int]:
        """Drop every row of ``job_id``, waiting or running; returns their row ids."""
        dropped = [t.row_id for t in self._waiting if t.job_id == job_id]
        self._waiting = deque(t for t in self._waiting if t.job_id != job_id)
        for row_id, ticket in list(self._running.items()):
            if ticket.job_id == job_id:
                dropped.append(row_id)
                del self._running[row_id]
        return dropped

    def schedule(self) -> tuple[list[Ticket], list[Ticket]]:
        """Admit waiting rows, then pick the group for the next pass.

        Returns (batch, admitted): the rows to run now, and the rows that joined the running set.
        """
        admitted = []
        cost = self.running_cost
        while self._waiting:
            ticket = self._waiting[0]
            if cost + ticket.cost > self.max_batch and self._running:
                break
            self._waiting.popleft()
            self._running[ticket.row_id] = ticket
            admitted.append(ticket)
            cost += ticket.cost
        if not self._running:
            return [], admitted
        groups = list(dict.fromkeys(t.group for t in self._running.values()))
        group = groups[0]
        if self._last_group in groups:
            group = groups[(groups.index(self._last_group) + 1) % len(groups)]
        self._last_group = group
        return [t for t in self._running.values() if t.group == group], admitted

    def update(self, finished: list[int]) -> None:
        """Retire rows that reached the end of their plan (or failed)."""
        for row_id in finished:
            self._running.pop(row_id, None)
