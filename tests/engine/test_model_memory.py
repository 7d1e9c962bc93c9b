"""Models load on first use within a memory budget; the least recently used idle model makes room; a job
whose model must wait for room runs once a model is idle; a model larger than the budget is not served."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.jobs import GenerateSpec
from app.store.catalog import scan_store
from tests.engine.harness import EngineHarness
from tests.helpers import make_settings
from tests.tiny_models import write_generator

GB = 1024**3


@pytest.fixture(scope="module")
def two_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory-store")
    write_generator(root / "gen-a")
    write_generator(root / "gen-b")
    return root


def budget_for(store, models: float) -> float:
    size = max(e.weights_bytes for e in scan_store(store).values())
    return size * models / GB


def spec(model, steps=4, seed=0):
    return GenerateSpec(model=model, steps=steps, sampler="ddim", seeds=[seed], class_label=0)


def write_hashed_generators(root) -> str:
    """gen-a and gen-b in ``root``, each card naming its weights' sha256 (checked before each load); the
    weights file's path in a model folder."""
    from app.store.hashing import sha256_file

    weights = "unet/diffusion_pytorch_model.safetensors"
    for name in ("gen-a", "gen-b"):
        folder = write_generator(root / name)
        card = json.loads((folder / "model_card.json").read_text())
        card["sha256"] = {weights: sha256_file(folder / weights)}
        (folder / "model_card.json").write_text(json.dumps(card))
    return weights


def test_models_load_on_first_use_and_the_idle_one_makes_room(two_store):
    h = EngineHarness(two_store, model_memory_gb=budget_for(two_store, 1.5))
    try:
        assert list(h.engine.models) == ["gen-a"]  # preloaded while it fits; gen-b does not fit beside it
        h.submit("b", spec("gen-b"))
        assert h.outcome("b").type == "succeeded"
        assert list(h.engine.models) == ["gen-b"] and h.engine.entries["gen-a"].loaded is False
        h.submit("a", spec("gen-a"))
        assert h.outcome("a").type == "succeeded" and list(h.engine.models) == ["gen-a"]
    finally:
        h.close()


def test_a_job_waits_while_the_model_in_the_way_is_busy_then_runs(two_store):
    h = EngineHarness(two_store, model_memory_gb=budget_for(two_store, 1.5), preload="gen-a")
    try:
        h.submit("long", spec("gen-a", steps=200))
        h.wait_for_step("long", 2)
        h.submit("other", spec("gen-b", seed=1))
        assert h.outcome("other").type == "succeeded"
        # gen-a could only go once idle: the long job finished first
        long_done = [e.at for e in h.events["long"] if e.type == "succeeded"][0]
        other_started = [e.at for e in h.events["other"] if e.type == "started"][0]
        assert long_done <= other_started
    finally:
        h.close()


def test_a_waiting_job_can_be_cancelled_and_then_holds_nothing_back(two_store):
    h = EngineHarness(two_store, model_memory_gb=budget_for(two_store, 1.5), preload="gen-a")
    try:
        h.submit("long", spec("gen-a", steps=300))
        h.wait_for_step("long", 2)
        h.submit("waiting", spec("gen-b"))
        h.engine.cancel("waiting")
        assert h.outcome("waiting").type == "canceled"
        # gen-a need not drain any more: a new job for it joins the running batch
        h.submit("short", spec("gen-a", steps=3, seed=2))
        assert h.outcome("short").type == "succeeded"
        long_steps = [e.progress.step for e in h.events["long"] if e.type == "progress"]
        assert max(long_steps) < 300  # the short job finished while the long one still ran
        assert h.outcome("long").type == "succeeded"
    finally:
        h.close()


def test_a_model_larger_than_the_budget_is_not_served_and_says_why(tmp_path):
    write_generator(tmp_path / "small")
    write_generator(tmp_path / "large", classes=2000)  # a large class table: far more weights
    sizes = {name: e.weights_bytes for name, e in scan_store(tmp_path).items()}
    assert sizes["large"] > 2 * sizes["small"]
    budget = (sizes["small"] + sizes["large"]) / 2 / GB
    with TestClient(create_app(make_settings(tmp_path, model_memory_gb=budget))) as client:
        model = client.get("/v1/models/large").json()
        assert model["status"] == "error" and "DIFFUSION_MODEL_MEMORY_GB" in model["error"]
        r = client.post("/v1/generate", json={"model": "large", "class_label": 0})
        assert r.status_code == 503 and "memory budget" in r.json()["detail"][0]["msg"]
        ok = client.post("/v1/generate", json={"model": "small", "class_label": 0})
        assert ok.status_code == 200 and client.get("/v1/models/small").json()["loaded"] is True


def test_a_waiting_job_is_not_starved_by_a_stream_for_the_busy_model(two_store):
    h = EngineHarness(two_store, model_memory_gb=budget_for(two_store, 1.5), preload="gen-a")
    try:
        h.submit("a0", spec("gen-a", steps=60))
        h.wait_for_step("a0", 2)
        h.submit("b", spec("gen-b", seed=1))  # needs gen-a gone
        for i in range(1, 6):
            h.submit(f"a{i}", spec("gen-a", steps=60, seed=i))  # a steady stream for gen-a
        assert h.outcome("b").type == "succeeded"
        b_done = [e.at for e in h.events["b"] if e.type == "succeeded"][0]
        a5_done = [e.at for e in h.outcome("a5", timeout=120) and h.events["a5"] if e.type == "succeeded"][0]
        assert b_done < a5_done  # b ran before the stream behind it, not after all of it
    finally:
        h.close()


def event_at(h: EngineHarness, job_id: str, kind: str) -> float:
    return next(e.at for e in h.events[job_id] if e.type == kind)


def test_a_job_that_needs_two_busy_models_gone_is_not_starved_by_streams_for_both(tmp_path):
    """z needs both x and y unloaded. Once x drained, z still did not fit beside the busy y, the models it
    waited on were counted again as the busy ones only, and x's later jobs started: x and y took turns
    draining and z waited behind every job that came after it."""
    write_generator(tmp_path / "gen-x")
    write_generator(tmp_path / "gen-y")
    write_generator(tmp_path / "gen-z", classes=2000)  # more weights: fits only alone
    sizes = {name: e.weights_bytes for name, e in scan_store(tmp_path).items()}
    assert sizes["gen-x"] + sizes["gen-y"] <= sizes["gen-z"] < sizes["gen-x"] + sizes["gen-z"]
    h = EngineHarness(tmp_path, model_memory_gb=sizes["gen-z"] / GB, preload="gen-x,gen-y")
    try:
        assert sorted(h.engine.models) == ["gen-x", "gen-y"]
        h.submit("x1", spec("gen-x", steps=40))
        h.submit("y1", spec("gen-y", steps=120))
        h.wait_for_step("x1", 2)
        h.wait_for_step("y1", 2)
        h.submit("z", spec("gen-z"))
        later = [f"{m}{i}" for i in range(2, 5) for m in ("x", "y")]
        for i, job in enumerate(later):
            h.submit(job, spec(f"gen-{job[0]}", steps=20, seed=i))
        assert h.outcome("z").type == "succeeded"
        assert all(h.outcome(job).type == "succeeded" for job in later)
        z_started = event_at(h, "z", "started")
        assert all(event_at(h, job, "started") > z_started for job in later)
    finally:
        h.close()


def test_a_model_changed_in_the_store_holds_back_only_its_own_new_jobs(two_store, tmp_path):
    """While a changed model's job on its old weights runs, its new jobs wait; those for another loaded model
    join that model's running batch (every busy model had been counted as in the way, and drained)."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(two_store, store)
    h = EngineHarness(store)  # room for both
    try:
        h.submit("a-old", spec("gen-a", steps=400))
        h.submit("b1", spec("gen-b", steps=150))
        h.wait_for_step("a-old", 2)
        h.wait_for_step("b1", 2)
        config = store / "gen-a" / "unet" / "config.json"
        config.write_text(config.read_text() + " ")  # the folder changed: gen-a's next job takes its new files
        h.engine.reload(scan_store(store)).result(30)
        h.submit("a-new", spec("gen-a", seed=1))
        h.submit("b2", spec("gen-b", steps=3, seed=2))
        assert h.outcome("b2").type == "succeeded" and h.outcome("b1").type == "succeeded"
        assert event_at(h, "b2", "succeeded") < event_at(h, "b1", "succeeded")  # joined b1's batch
        assert h.outcome("a-new").type == "succeeded" and h.outcome("a-old").type == "succeeded"
        assert event_at(h, "a-new", "started") > event_at(h, "a-old", "succeeded")  # on the new weights
    finally:
        h.close()


def test_a_high_priority_job_is_not_held_behind_a_low_one_waiting_for_room(two_store):
    """b (low) waits for gen-a to drain; a high-priority job for gen-a had queued behind it, and so behind the
    whole low job once gen-b was loaded in gen-a's place."""
    h = EngineHarness(two_store, model_memory_gb=budget_for(two_store, 1.5), preload="gen-a")
    try:
        h.submit("a1", spec("gen-a", steps=100))
        h.wait_for_step("a1", 2)
        h.submit("b-low", spec("gen-b", steps=100).model_copy(update={"priority": "low"}))
        h.submit("a-normal", spec("gen-a", steps=3, seed=1).model_copy(update={"priority": "low"}))
        h.submit("a-high", spec("gen-a", steps=3, seed=2).model_copy(update={"priority": "high"}))
        assert all(h.outcome(job).type == "succeeded" for job in ("a1", "b-low", "a-normal", "a-high"))
        assert event_at(h, "a-high", "succeeded") < event_at(h, "a1", "succeeded")  # joined a1's batch
        assert event_at(h, "a-normal", "started") > event_at(h, "b-low", "started")  # of b's level: behind it
    finally:
        h.close()


def test_a_low_job_waiting_for_room_ages_past_a_stream_of_normal_ones(two_store):
    """Normal jobs for the model in its way are not held behind a low one, but its level rises while it waits
    (as the scheduler's rows age): then they are, the model drains, and the low job runs before the stream
    ends."""
    h = EngineHarness(two_store, model_memory_gb=budget_for(two_store, 1.5), preload="gen-a")
    h.engine.scheduler.aging_s = 0.05
    try:
        h.submit("a0", spec("gen-a", steps=20))
        h.wait_for_step("a0", 2)
        h.submit("b-low", spec("gen-b").model_copy(update={"priority": "low"}))
        stream = [f"a{i}" for i in range(1, 16)]
        for previous, job in zip(["a0", *stream], stream):  # two in flight: gen-a is never idle by itself
            h.submit(job, spec("gen-a", steps=20, seed=len(job)))
            h.wait_for_step(previous, 2)
        assert h.outcome("b-low").type == "succeeded"
        assert all(h.outcome(job).type == "succeeded" for job in stream)
        assert event_at(h, "b-low", "started") < event_at(h, stream[-1], "started")
    finally:
        h.close()


def test_a_job_that_aged_while_it_waited_for_room_keeps_its_age_in_the_scheduler(two_store):
    """A low job that waited for room long enough to rank as high entered the scheduler at its own level with a
    fresh aging clock, so normal jobs for its model that came after it ran first."""
    h = EngineHarness(two_store, model_memory_gb=budget_for(two_store, 1.5), preload="gen-a", max_batch=1)
    h.engine.scheduler.aging_s = 0.1
    try:
        h.submit("a0", spec("gen-a", steps=1000))
        h.wait_for_step("a0", 2)
        h.submit("b-low", spec("gen-b", seed=1).model_copy(update={"priority": "low"}))
        time.sleep(0.35)  # over three aging periods: low ranks as high now
        later = [f"b{i}" for i in range(4)]
        for job in later:
            h.submit(job, spec("gen-b", steps=10, seed=10 + len(job)))
        h.engine.cancel("a0")  # gen-a goes idle: gen-b takes its place, and the jobs waiting for it come in
        assert all(h.outcome(job).type == "succeeded" for job in ("b-low", *later))
        assert all(event_at(h, "b-low", "started") < event_at(h, job, "started") for job in later)
    finally:
        h.close()


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("4294967296\n", None, 4 * 2**30),  # a container limited to 4 GiB
        ("max\n", None, None),  # cgroup v2 without a limit
        (None, "9223372036854771712\n", None),  # cgroup v1's "no limit"
        (None, "3221225472\n", 3 * 2**30),
        (None, None, None),  # no cgroup files: not in a container
    ],
)
def test_the_cpu_budget_follows_a_containers_memory_limit(tmp_path, monkeypatch, v2, v1, expected):
    """A CPU worker in a container with a memory limit is killed past it, whatever the host has: its budget
    for weights comes from the smaller of the two."""
    import torch

    from app.engine import device, models

    files = (tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes")
    for path, text in zip(files, (v2, v1)):
        if text is not None:
            path.write_text(text)
    monkeypatch.setattr(device, "CGROUP_LIMITS", files)
    assert device.container_memory_limit() == expected
    host = models.os.sysconf("SC_PAGE_SIZE") * models.os.sysconf("SC_PHYS_PAGES")
    ram = min(host, expected) if expected else host
    budget = models.memory_budget(torch.device("cpu"), None)
    assert budget == max(0, ram - max(2 * models.GB, ram // 4))
    if expected == 4 * 2**30 and host > expected:
        assert budget == 2 * models.GB  # 4 GiB less the 2 GiB kept for the service and its jobs


def test_idle_models_stay_loaded_when_unloading_them_would_not_make_room(tmp_path, monkeypatch):
    """A job for a model that cannot fit while another is busy waits; the idle models stay loaded meanwhile
    (before, they were unloaded anyway, and reloaded for their next job, over and over)."""
    import torch

    from app.engine import models

    write_generator(tmp_path / "a")
    write_generator(tmp_path / "b")
    write_generator(tmp_path / "big", classes=1400)
    entries = scan_store(tmp_path)
    size = entries["a"].weights_bytes
    assert entries["big"].weights_bytes > 1.5 * size
    loads = []

    def fake(entry, device):  # a loaded model that only says what it was loaded from
        loads.append(entry.name)
        return SimpleNamespace(entry=entry)

    monkeypatch.setattr(models, "load_model", fake)
    pool = models.ModelPool(entries, torch.device("cpu"), budget=int(size * 2.5))
    pool.get("a", busy=set())
    pool.get("b", busy=set())
    assert pool.get("big", busy={"b"}) is None  # b is busy: unloading a alone cannot make room
    assert list(pool.loaded) == ["a", "b"] and loads == ["a", "b"]
    assert pool.get("big", busy=set()) is not None  # both idle: both go, big loads
    assert list(pool.loaded) == ["big"] and loads == ["a", "b", "big"]


def test_a_model_whose_weights_changed_on_disk_after_an_unload_is_refused_at_its_next_load(tmp_path):
    """The card's sha256 is checked before each load, not only at the scan: a model unloaded to make room
    loads again later, and its files may have been replaced meanwhile."""
    weights = write_hashed_generators(tmp_path)
    h = EngineHarness(tmp_path, model_memory_gb=budget_for(tmp_path, 1.5), preload="gen-a")
    try:
        h.submit("b", spec("gen-b"))
        assert h.outcome("b").type == "succeeded" and not h.engine.entries["gen-a"].loaded
        changed = bytearray((tmp_path / "gen-a" / weights).read_bytes())
        changed[-1] ^= 1  # one bit of the last weight: it would still load, as another model
        (tmp_path / "gen-a" / weights).write_bytes(changed)
        h.submit("a", spec("gen-a"))
        outcome = h.outcome("a")
        assert outcome.type == "failed" and "does not match the card" in outcome.error
        assert h.engine.entries["gen-a"].status == "error"
    finally:
        h.close()


def test_a_waiting_job_that_fails_when_retried_says_so_at_once(tmp_path):
    """Its "failed" event waited in the engine, unpublished, until some other request woke it: on a quiet
    server the job read queued for ever (here its model's weights changed on disk while it waited)."""
    weights = write_hashed_generators(tmp_path)
    h = EngineHarness(tmp_path, model_memory_gb=budget_for(tmp_path, 1.5), preload="gen-a")
    try:
        h.submit("long", spec("gen-a", steps=100))
        h.wait_for_step("long", 2)
        h.submit("b", spec("gen-b"))  # waits: gen-a is busy, and the two do not fit together
        deadline = time.monotonic() + 30
        while [m.job_id for m in list(h.engine._deferred)] != ["b"]:
            assert time.monotonic() < deadline, "b never waited for room"
            time.sleep(0.01)
        changed = bytearray((tmp_path / "gen-b" / weights).read_bytes())
        changed[-1] ^= 1
        (tmp_path / "gen-b" / weights).write_bytes(changed)
        assert h.outcome("long").type == "succeeded"
        outcome = h.outcome("b", timeout=30)  # nothing else is sent to the engine meanwhile
        assert outcome.type == "failed" and "does not match the card" in outcome.error
    finally:
        h.close()


def test_a_job_waiting_for_room_is_not_starved_by_jobs_for_models_not_in_memory(tmp_path):
    """z needs the busy x and the idle y gone. Jobs of its priority or lower for a model not in memory (w)
    were not held: each load of one unloaded what z counted on, and a stream cycling x, w, y kept z waiting
    for as long as it lasted (a review: 9 of 9 low jobs sent after a high z started before it)."""
    for name in ("gen-x", "gen-y", "gen-w"):
        write_generator(tmp_path / name)
    write_generator(tmp_path / "gen-z", classes=2000)  # more weights: fits only alone
    sizes = {name: e.weights_bytes for name, e in scan_store(tmp_path).items()}
    h = EngineHarness(tmp_path, model_memory_gb=sizes["gen-z"] / GB, preload="gen-x,gen-y")
    try:
        h.submit("j0", spec("gen-x", steps=30))
        h.wait_for_step("j0", 2)
        h.submit("z", spec("gen-z").model_copy(update={"priority": "high"}))
        later = []
        for k, model in enumerate(["gen-w", "gen-y", "gen-x", "gen-w", "gen-y"], start=1):
            h.wait_for_step(later[-1] if later else "j0", 10)
            later.append(f"j{k}")
            h.submit(later[-1], spec(model, steps=30, seed=k).model_copy(update={"priority": "low"}))
        assert h.outcome("z").type == "succeeded"
        assert all(h.outcome(job).type == "succeeded" for job in later)
        assert all(event_at(h, job, "started") > event_at(h, "z", "started") for job in later)
    finally:
        h.close()
