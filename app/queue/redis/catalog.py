"""The model catalog of a Redis deployment: each worker publishes its own with its heartbeat, and API nodes
merge them. Workers may differ: another model store, another memory budget, a model that failed to load on
one of them. A model is served when any worker not yet forgotten serves it. It leaves the catalog when every
worker that announced it has been silent (stopped, or dead) for ``worker_forget_s``: PRUNE in
app.queue.redis.keys forgets them."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

from app.store.catalog import ModelEntry


def publish(entries: dict[str, ModelEntry]) -> str:
    """One worker's catalog as it goes into Redis."""
    return json.dumps({name: entry.to_dict() for name, entry in entries.items()})


@functools.lru_cache(maxsize=256)
def _read(raw: bytes) -> dict[str, ModelEntry]:
    """One worker's published catalog, parsed once (API nodes merge every second; catalogs rarely change)."""
    return {name: ModelEntry.from_dict(data) for name, data in json.loads(raw).items()}


def merge(
    catalogs: dict[bytes, bytes], announced: dict[bytes, bytes], *, since: float, live_since: float | None = None
) -> dict[str, ModelEntry]:
    """The deployment's catalog from the workers' own (``{p}:catalogs``) and when each was last published
    (``{p}:announced``), leaving out those older than ``since``. For each model, the entry of a worker that
    serves it (the latest published), loaded when any of them has it loaded; where none serves it, why not,
    from the latest published of the others (its folder is broken there, or too big for its memory). With
    ``live_since``, each entry counts the workers serving it that published since then (``workers``), and
    only those say whether it is loaded."""
    heard: list[tuple[float, bytes]] = []
    for worker, raw in catalogs.items():
        when = float(announced.get(worker, 0) or 0)
        if when >= since:
            heard.append((when, raw))
    heard.sort(key=lambda item: item[0], reverse=True)  # the latest first
    models: dict[str, ModelEntry] = {}
    loaded: set[str] = set()
    serving: dict[str, int] = {}
    for when, raw in heard:
        live = live_since is None or when >= live_since
        for name, entry in _read(raw).items():
            if entry.ready and entry.loaded and live:  # a stopped worker's catalog holds nothing in memory
                loaded.add(name)
            if entry.ready and live_since is not None and live:
                serving[name] = serving.get(name, 0) + 1
            chosen = models.get(name)
            if chosen is None or (entry.ready and not chosen.ready):
                models[name] = entry
    # copies: the parsed entries are shared between refreshes
    return {
        name: replace(models[name], loaded=name in loaded, workers=None if live_since is None else serving.get(name, 0))
        for name in sorted(models)
    }


def unserved(
    models: set[str], catalogs: dict[bytes, bytes], announced: dict[bytes, bytes], *, since: float
) -> dict[str, str | None]:
    """Those of ``models`` that no worker heard from since ``since`` serves, each with why: the error of the
    latest such worker's announcement, or None when none of them announced it."""
    heard = merge(catalogs, announced, since=since)
    return {
        name: heard[name].error if name in heard else None
        for name in sorted(models)
        if name not in heard or not heard[name].ready
    }
