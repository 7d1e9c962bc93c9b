"""Continuous-batching scheduler: decides which rows run in the next forward pass. Never touches tensors.

1. Admission. Waiting rows join the running set while their group (below) has room for its next pass, in
   rows (``max_batch``; a guided row costs two network rows: conditional and null label) and in pixels
   (``max_pixels``, the rows' image area: a 256x256 tile weighs as much as 84 28x28 digits), and while
   the running set as a whole holds at most ``RUNNING_PASSES`` such passes (it holds the rows' tensors).
   A full group does not hold the door shut on the others: two tiles sampling a 30-step chain fill their
   group's pass for all its steps, and a digits row still joins beside them. The next row comes from the
   waiting job of the highest priority (low, normal, high; a job that has had no row admitted for
   ``aging_s`` rises a level per ``aging_s``, so no priority starves), then with the fewest rows running,
   the earliest on a tie: a job of 300 tiles cannot hold the door shut on a job of one image that arrived
   after it.
2. The pass. Only rows of one group (same model, same image shape) can share a forward pass. Groups with
   running rows share the device by time (start-time fair queuing): the group that has had the least
   pass time runs next, ties in turn. A 20-step generate next to a huge denoise gets about half the
   device, not one pass in two: its cheap passes are not queued behind the expensive ones. A group's pass
   time is counted ``PRIORITY_SHARE`` times less per level its highest running row stands above normal
   (and as many times more per level below), so a group running high rows gets twice the device time of
   one running normal rows only, four times that of one running low rows only.
3. Between two passes, new rows join and finished or cancelled rows leave.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Hashable

from app.jobs import PRIORITY_AGING_S, aged_level

RUNNING_PASSES = 8  # the running set holds at most this many passes' worth of rows, across its groups
PRIORITY_SHARE = 2  # a group's device time per priority level above another's


def within_passes(cost: int, pixels: int, max_batch: int | None, max_pixels: int | None, passes: int = 1) -> bool:
    """Whether ``cost`` network rows of ``pixels`` pixels fit ``passes`` forward passes' caps (None: no such
    cap). A pass's first row runs whatever its size: callers check this only past it."""
    rows_fit = max_batch is None or cost <= passes * max_batch
    return rows_fit and (max_pixels is None or pixels <= passes * max_pixels)


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
        self._group_load: dict[Hashable, tuple[int, int]] = {}  # group -> (network rows, pixels) running
        self._arrived: dict[str, float] = {}  # job -> since when it has waited without a row admitted (aging)
        self.aging_s, self.clock = aging_s, clock
        self._served: dict[Hashable, float] = {}  # group -> pass seconds, for the groups with running rows
        self._last_group: Hashable | None = None

    # -- queries -------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running

    @property
    def running_cost(self) -> int:
        """Network rows running, across the groups."""
        return sum(cost for cost, _ in self._group_load.values())

    @property
    def running_pixels(self) -> int:
        return sum(pixels for _, pixels in self._group_load.values())

    def waiting_since(self, job_id: str) -> float | None:
        """Since when ``job_id`` has waited without a row admitted (on this clock), if it waits."""
        return self._arrived.get(job_id)

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

    def _within(self, cost: int, pixels: int, passes: int = 1) -> bool:
        return within_passes(cost, pixels, self.max_batch, self.max_pixels, passes)

    def _fits(self, ticket: Ticket) -> str | None:
        """None if the row may join now; "group" if its group's next pass is full (rows of other groups may
        join); "full" if the running set is (none may: a smaller row does not overtake it)."""
        if not self._running:
            return None  # a row larger than the caps still runs, alone
        if not self._within(self.running_cost + ticket.cost, self.running_pixels + ticket.pixels, RUNNING_PASSES):
            return "full"
        cost, pixels = self._group_load.get(ticket.group, (0, 0))
        if cost and not self._within(cost + ticket.cost, pixels + ticket.pixels):
            return "group"  # (a group's first row larger than a pass still runs, alone in its passes)
        return None

    def _admit(self) -> list[Ticket]:
        admitted = []
        full: set[Hashable] = set()  # groups whose next pass is full
        now = self.clock()

        def rank(job: str) -> tuple[int, int]:
            # Higher priority first; a job that has had no row admitted for aging_s gains a level per aging_s
            # (up to high), so lower priorities never starve; then the job with the fewest rows running;
            # min() keeps arrival order among equals.
            level = aged_level(self._waiting[job][0].priority, now - self._arrived[job], self.aging_s)
            return -level, self._running_per_job.get(job, 0)

        while candidates := [job for job, rows in self._waiting.items() if rows[0].group not in full]:
            job_id = min(candidates, key=rank)
            rows = self._waiting[job_id]
            ticket = rows[0]
            refused = self._fits(ticket)
            if refused == "full":
                break
            if refused == "group":
                full.add(ticket.group)
                continue
            rows.popleft()
            if not rows:
                del self._waiting[job_id]
            self._running[ticket.row_id] = ticket
            self._running_per_job[job_id] = self._running_per_job.get(job_id, 0) + 1
            self._arrived[job_id] = now  # served: its wait starts again
            admitted.append(ticket)
            self._charge(ticket, 1)
        return admitted

    def _charge(self, ticket: Ticket, sign: int) -> None:
        cost, pixels = self._group_load.get(ticket.group, (0, 0))
        cost, pixels = cost + sign * ticket.cost, pixels + sign * ticket.pixels
        if cost or pixels:
            self._group_load[ticket.group] = (cost, pixels)
        else:
            self._group_load.pop(ticket.group, None)

    def _retire(self, row_id: int) -> Ticket | None:
        ticket = self._running.pop(row_id, None)
        if ticket is not None:
            self._charge(ticket, -1)
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
            top = max((t.priority for t in self._running.values() if t.group == self._last_group), default=1)
            self._served[self._last_group] += seconds / PRIORITY_SHARE ** (top - 1)
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
