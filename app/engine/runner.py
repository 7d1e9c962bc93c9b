"""The runner: holds every admitted row's tensors and runs one forward pass plus one sampler step for
a batch of rows chosen by the scheduler. It never decides who is admitted."""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import threading
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, NamedTuple

import torch

from app.diffusion.samplers import Sampler, Step, cfg_combine
from app.engine.scheduler import within_passes
from app.store.loader import LoadedModel


_ROW_IDS = itertools.count()


class Known(NamedTuple):
    """What an inpainting row keeps: its start, the image (latent) to keep and its first noise (None when the
    network inpaints by itself), the mask (1 = repaint), all [1, C, h, w] ([1, 1, h, w] for the mask), and
    the extra input channels an inpainting network reads (mask and masked image latent), or None."""

    start: torch.Tensor
    image: torch.Tensor | None
    noise: torch.Tensor | None
    mask: torch.Tensor
    extra: torch.Tensor | None = None


@dataclass(eq=False)
class Row:
    """One image (or one tile) walking its own plan, with its own noise generator and sampler state.

    A row is cheap until it is admitted: ``begin`` seeds its generator and builds its starting tensor, so
    rows waiting their turn hold no image memory; ``release`` drops the tensors once its output is taken.
    """

    job_id: str
    model: LoadedModel
    shape: tuple[int, int, int]  # C, H, W of x
    plan: list[Step]
    sampler: Sampler
    seed: int
    init: Callable[[torch.Generator], torch.Tensor]  # the starting x, [1, C, H, W] on the CPU
    key: Hashable = None  # where the row's output goes in its job's result
    eta: float = 0.0
    cond: Any = None  # what the model is conditioned on: a class label, a prompt's embedding, None
    uncond: Any = None  # what guidance pulls away from: the null class, the negative prompt's embedding
    guidance: float = 0.0
    id: int = field(default_factory=lambda: next(_ROW_IDS))
    index: int = 0
    x: torch.Tensor | None = field(default=None, repr=False)  # [1, C, H, W] on the device, float32
    generator: torch.Generator | None = field(default=None, repr=False)
    prev_x0: torch.Tensor | None = field(default=None, repr=False)
    prev_ab: float = math.nan
    known: Known | None = field(default=None, repr=False)
    preview_every: int = 0  # keep the clean-image estimate every k steps (0: never; it costs nothing then)
    preview: torch.Tensor | None = field(default=None, repr=False)  # the latest kept estimate, until taken
    # step index -> the noise to draw then, [1, C, H, W] on the CPU; None: draws from the row's generator
    noise_at: Callable[[int], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.index >= len(self.plan)

    @property
    def guided(self) -> bool:
        return self.guidance > 0

    @property
    def group(self) -> tuple:
        return (self.model.name, self.shape)

    @property
    def network_rows(self) -> int:
        """Rows of the forward pass: a guided row also runs with the null label."""
        return 2 if self.guided else 1

    @property
    def pixels(self) -> int:
        return self.network_rows * self.shape[1] * self.shape[2]

    def begin(self, device: torch.device) -> None:
        # Noise is drawn on the CPU, so a seed gives the same draws on any device.
        self.generator = torch.Generator().manual_seed(self.seed)
        start = self.init(self.generator)
        if isinstance(start, Known):  # inpainting: the part of the image to keep, and the mask
            self.known = Known(*(None if t is None else t.to(device) for t in start))
            start = start.start
        self.x = start.to(device)

    def release(self) -> None:
        self.x = self.prev_x0 = self.generator = self.known = self.preview = None

    @property
    def extra(self) -> torch.Tensor | None:
        return None if self.known is None else self.known.extra

    def keep_known(self, x: torch.Tensor) -> torch.Tensor:
        """Inpainting by replacement (RePaint, Lugmayr et al. 2022; diffusers' inpainting with a 4-channel
        network), after the step at ``self.index``: the region to keep is the image itself noised to the
        level of the next step in the plan, sqrt(ab') x_0 + sqrt(1 - ab') n with the row's first noise (as
        diffusers noises it to ``timesteps[i + 1]``; DDIM's own target t - T // N differs from it except on
        leading spacing), and the bare image after the last step. An inpainting network (``known.image``
        None) needs none of it."""
        if self.known is None or self.known.image is None:
            return x
        ab_next = 1.0 if self.index == len(self.plan) - 1 else self.plan[self.index + 1].ab
        kept = ab_next**0.5 * self.known.image + (1 - ab_next) ** 0.5 * self.known.noise
        return self.known.mask * x + (1 - self.known.mask) * kept

    def noise(self) -> torch.Tensor:
        """Standard normal noise for this step, from ``noise_at`` (a tile's share of an image-wide field) or
        the row's own generator (CPU, so seeds give the same draws on any device), on the row's device."""
        if self.noise_at is not None:
            return self.noise_at(self.index).to(self.x.device)
        return torch.randn(self.x.shape, generator=self.generator).to(self.x.device)


class RowGroups:
    """On the CPU, a forward pass split by rows into one group per thread, each group computed by a thread of
    its own with one intra-op thread, instead of every operator of one pass spread over all the threads (each
    ending in a barrier of them). The groups' threads hold Python's lock only between operators, so this pays
    where an operator's work is large beside that: rows of at least ``MIN_PIXELS`` pixels, two or more per
    group, as many in each. On 2 cores a photo's 12 bf16 tiles in one pass took 0.94-0.97x the spread pass's
    time; one row per group, or rows of 28x28 (the digits), took up to 1.10x and 1.32x
    (``bench/bench_row_groups.py``). A pass whose rows do not split evenly is not split: its odd row, run
    after the groups on all the threads, made the engine's passes of five bf16 tiles 9-12% slower than
    spread ones (``bench/bench_denoise_speed.py``, two runs; docs/denoising.md). A row's output differs from
    the spread pass's by float rounding only (operators split their work another way on one thread).
    """

    MIN_PIXELS = 128 * 128
    MIN_ROWS = 2  # per group

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._queues: list[queue.SimpleQueue] = []  # one per group's thread

    def parts(self, rows: int, pixels: int) -> list[slice]:
        """The groups of ``rows`` rows of ``pixels`` pixels each; none where splitting would not pay."""
        each = rows // self.threads if self.threads > 1 and pixels >= self.MIN_PIXELS else 0
        if each < self.MIN_ROWS or rows % self.threads:
            return []
        return [slice(i * each, (i + 1) * each) for i in range(self.threads)]

    def run(self, forward: Callable[[slice], torch.Tensor], rows: int, pixels: int) -> torch.Tensor:
        """``forward`` of each group of rows, concatenated in row order."""
        groups = self.parts(rows, pixels)
        if not groups:
            return forward(slice(0, rows))
        self.start()
        running = [Future() for _ in groups]
        for inbox, part, future in zip(self._queues, groups, running):
            inbox.put((forward, part, future))
        futures.wait(running)  # all of them, so that none still runs once a failure is raised
        return torch.cat([future.result() for future in running])

    def start(self) -> None:
        """Start the groups' threads (once; the engine does so on its thread before it loads anything).

        torch.set_num_threads sets the calling thread's OpenMP threads and also the count a thread takes at its
        first torch call: each group's thread sets one for itself, then the caller's count is put back, so
        threads whose first torch call comes later take the caller's. Daemon threads, so that a pass still
        running (or hung) in one does not hold the process at its exit, as the engine's own thread does not.
        """
        if self._queues or self.threads < 2:
            return
        threads = torch.get_num_threads()
        ready = threading.Barrier(self.threads + 1)
        self._queues = [queue.SimpleQueue() for _ in range(self.threads)]
        for i, inbox in enumerate(self._queues):
            name = f"diffusion-rows-{i}"
            threading.Thread(target=_group_thread, args=(inbox, ready), name=name, daemon=True).start()
        ready.wait()
        torch.set_num_threads(threads)

    def close(self) -> None:
        for inbox in self._queues:
            inbox.put(None)
        self._queues = []


def _group_thread(inbox: queue.SimpleQueue, ready: threading.Barrier) -> None:
    torch.get_num_threads()  # torch's first call in a thread sets its threads to the process's count
    torch.set_num_threads(1)
    ready.wait()
    while (work := inbox.get()) is not None:
        forward, part, future = work
        try:
            future.set_result(forward(part))
        except BaseException as exc:  # the caller raises it
            future.set_exception(exc)


class Runner:
    def __init__(self, device: torch.device, autocast_dtype: torch.dtype | None, *, row_groups: bool = False) -> None:
        """``row_groups``: on the CPU, split each forward pass by rows over the cores (``RowGroups``)."""
        self.device = device
        self.autocast_dtype = autocast_dtype
        threads = torch.get_num_threads() if row_groups and device.type == "cpu" else 1
        self.groups = RowGroups(threads)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def denoiser_output(self, rows: list[Row]) -> torch.Tensor:
        """The network output for each row at its current timestep, guidance applied: one forward pass, with
        copies of the guided rows under their unconditional condition appended to the batch."""
        model = rows[0].model
        x = torch.cat([r.x for r in rows])
        t = torch.tensor([r.plan[r.index].t for r in rows], dtype=torch.float32, device=self.device)
        guided = [i for i, r in enumerate(rows) if r.guided]
        conds = [r.cond for r in rows] + [rows[i].uncond for i in guided]
        if rows[0].extra is not None:  # an inpainting network reads the mask and the masked image too
            x = torch.cat([x, torch.cat([r.extra for r in rows])], dim=1)
        if guided:
            idx = torch.tensor(guided, device=self.device)
            x = torch.cat([x, x[idx]])
            t = torch.cat([t, t[idx]])

        @torch.no_grad()  # gradients' mode and autocast hold per thread: the groups' threads set their own
        def forward(part: slice) -> torch.Tensor:
            with self._autocast():
                return model.predict(x[part], t[part], conds[part]).float()

        out = self.groups.run(forward, len(x), x.shape[-2] * x.shape[-1])
        main = out[: len(rows)]
        if guided:
            idx = torch.tensor(guided, device=self.device)
            scale = torch.tensor([rows[i].guidance for i in guided], dtype=torch.float32, device=self.device)
            main = main.index_copy(0, idx, cfg_combine(main[idx], out[len(rows) :], scale))
        return main

    @torch.no_grad()
    def step(self, rows: list[Row]) -> list[Row]:
        """Advance every row by one step of its own sampler; returns the rows that reached the end. A step
        that fails changes no row, its generators included: the engine runs the rows again (each job alone,
        to find the one that fails), and the others must draw the same noise as they would have."""
        drawn: list[tuple[torch.Generator, torch.Tensor]] = []  # generators this step drew from, as they were
        try:
            return self._step(rows, drawn)
        except BaseException:
            for generator, state in drawn:
                generator.set_state(state)
            raise

    def _step(self, rows: list[Row], drawn: list[tuple[torch.Generator, torch.Tensor]]) -> list[Row]:
        output = self.denoiser_output(rows)
        schedule = rows[0].model.schedule
        updates = []  # applied only once every sub-batch has succeeded, so a failed step changes no row
        for name in dict.fromkeys(r.sampler.name for r in rows):
            members = [i for i, r in enumerate(rows) if r.sampler.name == name]
            subset = [rows[i] for i in members]
            sampler = subset[0].sampler
            steps = [r.plan[r.index] for r in subset]

            def per_row(values: list[float]) -> torch.Tensor:
                return torch.tensor(values, dtype=torch.float32, device=self.device)

            draws = [sampler.draws_noise(s.t, r.eta) for r, s in zip(subset, steps)]
            noise = None
            if any(draws):
                for r, d in zip(subset, draws):  # a deterministic step saves nothing: its rows draw no noise
                    if d and r.noise_at is None and r.generator is not None:
                        drawn.append((r.generator, r.generator.get_state()))
                noise = torch.cat([r.noise() if d else torch.zeros_like(r.x) for r, d in zip(subset, draws)])
            prev = None
            if sampler.keeps_history and any(r.prev_x0 is not None for r in subset):
                prev = torch.cat([r.x * 0 if r.prev_x0 is None else r.prev_x0 for r in subset])
            x_next, x0 = sampler.step(
                output[members],
                torch.cat([r.x for r in subset]),
                schedule=schedule,
                ab=per_row([s.ab for s in steps]),
                ab_prev=per_row([s.ab_prev for s in steps]),
                eta=per_row([r.eta for r in subset]),
                noise=noise,
                prev_x0=prev,
                prev_ab=per_row([r.prev_ab for r in subset]),
            )
            keep = sampler.keeps_history
            for j, (r, s) in enumerate(zip(subset, steps)):
                updates.append((r, x_next[j : j + 1], x0[j : j + 1], keep, s.ab))
        for row, x, x0, keep, ab in updates:
            row.x, row.prev_x0, row.prev_ab = row.keep_known(x), x0 if keep else None, ab if keep else math.nan
            row.index += 1
            if row.preview_every and row.index % row.preview_every == 0 and not row.done:
                row.preview = x0
        return [r for r in rows if r.done]


def run_until_done(
    runner: Runner,
    rows: list[Row],
    max_batch: int | None,
    on_done: Callable[[Row], None] | None = None,
    *,
    max_pixels: int | None = None,
) -> list[Row]:
    """Walk ``rows`` to the end of their plans with no scheduler, no threads and no queue: the engine's step
    for scripts and benchmarks. A pass holds at most ``max_batch`` network rows and ``max_pixels`` pixels, as
    the engine's scheduler fills one for a job alone (its first row runs whatever its size); None: no cap.
    ``on_done`` gets each row as it finishes (a plan's ``collect``). Returns the rows."""
    pending = list(rows)
    while pending:
        group = pending[0].group  # rows of one model and shape share a pass, as in the engine
        batch, cost, pixels = [], 0, 0
        for row in (r for r in pending if r.group == group):
            with_row = cost + row.network_rows, pixels + row.pixels
            if batch and not within_passes(*with_row, max_batch, max_pixels):
                break
            batch.append(row)
            cost, pixels = with_row
        for row in batch:
            if row.x is None:
                row.begin(runner.device)
        for row in runner.step(batch):
            if on_done is not None:
                on_done(row)
        pending = [r for r in pending if not r.done]
    return rows
