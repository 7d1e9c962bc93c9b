"""The engine's loaded models, within a memory budget (owned by the engine thread, like everything it runs).

A store may hold more models than fit: a model loads on first use, and when the budget is full the least
recently used model with no job in the engine is unloaded to make room. A job whose model cannot get room
yet (every loaded model is busy) waits until one is idle; a model larger than the whole budget is not
served, and says so. Sizes are what the weights take once loaded, in float32 (app/store/weights.py).
"""

from __future__ import annotations

import gc
import logging
import os
from collections import OrderedDict

import torch

from app.engine.device import container_memory_limit
from app.metrics import MODELS_LOADED
from app.store.catalog import ModelEntry, ModelRefused, check_hashes
from app.store.loader import LoadedModel, load_model

log = logging.getLogger(__name__)
GB = 1024**3


def size(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= GB // 10 else f"{n / 1024**2:.2f} MB"


def memory_budget(device: torch.device, setting_gb: float | None) -> int:
    """Bytes of weights the engine may hold: the setting, else what the device has less a margin (2 GiB on a
    GPU; a quarter of the RAM, at least 2 GiB, on the CPU, which also holds the service and the jobs). The
    CPU's RAM is the container's memory limit where one is set below the host's."""
    if setting_gb is not None:
        return int(setting_gb * GB)
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return max(0, total - 2 * GB)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = container_memory_limit()
    if limit is not None:
        total = min(total, limit)
    return max(0, total - max(2 * GB, total // 4))


class ModelPool:
    def __init__(self, entries: dict[str, ModelEntry], device: torch.device, budget: int) -> None:
        self.entries, self.device, self.budget = entries, device, budget
        self.loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self.stale: set[str] = set()  # loaded, but changed or removed in the store since: unloaded once idle

    @property
    def used(self) -> int:
        return sum(model.entry.weights_bytes for model in self.loaded.values())

    def reload(self, fresh: dict[str, ModelEntry], *, busy: set[str]) -> dict[str, ModelEntry]:
        """Take a new scan of the store as the served models. A loaded model whose folder is unchanged keeps
        its entry and stays in memory; one changed or removed is stale: the jobs running on it finish on the
        weights they began with, and it is unloaded once none does (a new job for it waits until then, and
        runs on the new files)."""
        merged = {}
        for name, entry in fresh.items():
            old = self.loaded[name].entry if name in self.loaded else None  # the entry it was loaded from
            merged[name] = old if old is not None and old.files == entry.files and old.ready else entry
        self.stale = {name for name, model in self.loaded.items() if merged.get(name) is not model.entry}
        self.entries = merged
        self.refuse_oversized()
        self.drop_stale(busy=busy)
        return merged

    def drop_stale(self, *, busy: set[str]) -> list[str]:
        """Unload the stale models no job uses any more; the names unloaded."""
        dropped = [n for n in self.stale if n not in busy]
        for name in dropped:
            self.stale.discard(name)
            self.unload(name, why="its folder changed or left the store")
        return dropped

    def refuse_oversized(self) -> None:
        for entry in self.entries.values():
            if entry.ready and entry.weights_bytes > self.budget:
                entry.fail(
                    f"its weights need {size(entry.weights_bytes)}; the model memory budget is {size(self.budget)} "
                    "(DIFFUSION_MODEL_MEMORY_GB)"
                )

    def preload(self, names: list[str], *, busy: set[str]) -> None:
        """Load these models where they fit beside those in memory (none is unloaded for them). They go in as
        the least recently used: a model no job has asked for yet is the first to make room for one asked for."""
        for name in names:
            entry = self.entries.get(name)
            if entry is None or not entry.ready:
                log.error("DIFFUSION_PRELOAD names %r, which is not a served model", name)
            elif self.used + entry.weights_bytes > self.budget:
                log.warning("model %s does not fit the memory budget beside the others: it loads on first use", name)
            else:
                try:
                    if self.get(name, busy=busy) is not None:
                        self.loaded.move_to_end(name, last=False)
                except ModelRefused:
                    continue  # marked with its reason; the others still load

    def in_the_way(self, name: str, *, busy: set[str]) -> list[str]:
        """The models whose jobs must end before ``name`` can be had (``get`` gives None until then): itself
        while jobs on the weights its folder has since changed run; else the least recently used models, busy
        or idle, that loading it unloads (``get`` unloads idle ones in this order once it can make room)."""
        if name in self.stale and name in busy:
            return [name]
        excess = self.used + self.entries[name].weights_bytes - self.budget
        found = []
        for other, model in self.loaded.items():  # least recently used first
            if excess <= 0:
                break
            if other != name:
                found.append(other)
                excess -= model.entry.weights_bytes
        return found

    def get(self, name: str, *, busy: set[str]) -> LoadedModel | None:
        """The model, loaded if need be; None when it cannot have room yet (the models that would have to
        go are all busy). Raises ModelRefused when it does not load."""
        if name in self.stale:
            if name in busy:
                return None  # its jobs finish on the weights they began with; then it loads from its new files
            self.drop_stale(busy=busy)
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        entry = self.entries[name]
        idle = [n for n in self.loaded if n not in busy]
        freeable = sum(self.loaded[n].entry.weights_bytes for n in idle)
        if self.used - freeable + entry.weights_bytes > self.budget:
            return None  # not even unloading every idle model makes room: unload none of them yet
        while self.used + entry.weights_bytes > self.budget:
            self.unload(idle.pop(0))
        try:
            check_hashes(entry)
            model = load_model(entry, self.device)
        except ModelRefused as exc:
            entry.fail(str(exc))
            raise
        except Exception as exc:  # out of memory moving it to the device, say: not served here, with why
            log.error("model %s failed to load: %s: %s", name, type(exc).__name__, exc)
            entry.fail(f"failed to load: {type(exc).__name__}: {exc}")
            raise ModelRefused(entry.error) from exc
        self.loaded[name] = model
        entry.loaded = True
        MODELS_LOADED.set(len(self.loaded))
        log.info("loaded model %s on %s (%.2f of %.2f GB used)", name, self.device, self.used / GB, self.budget / GB)
        return model

    def unload(self, name: str, why: str = "least recently used, idle, to make room") -> None:
        model = self.loaded.pop(name, None)
        if model is None:
            return
        model.entry.loaded = False
        self.stale.discard(name)
        MODELS_LOADED.set(len(self.loaded))
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("unloaded model %s (%s)", name, why)
