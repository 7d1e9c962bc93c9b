"""Reading the model store again (SIGHUP): models added are served, removed ones refused and unloaded, a changed
one finishes its running jobs on its old weights and then runs its new files; an unchanged one stays loaded."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from app.jobs import GenerateSpec
from app.store.card import ModelCard, SamplingDefaults
from app.store.catalog import scan_store
from app.store.writer import save_model
from tests.engine.harness import EngineHarness, pixels
from tests.tiny_models import tiny_scheduler, tiny_unet, write_generator


def spec(model, *, steps=4, seed=0):
    return GenerateSpec(model=model, steps=steps, sampler="ddim", seeds=[seed], class_label=0)


def write_other_weights(folder):
    """``write_generator``'s model with other weights (another seed): the same configs and card."""
    card = ModelCard(
        tasks=["generate"],
        class_names=["a", "b", "c"],
        null_class=3,
        image_size=(16, 16),
        channels=1,
        defaults=SamplingDefaults(sampler="ddim", steps=4, guidance_scale=0.0),
    )
    return save_model(folder, unet=tiny_unet(num_class_embeds=4, seed=7), scheduler=tiny_scheduler(), card=card)


def change_under_a_running_job(h, store, new):
    """Job "long" runs on gen-a; meanwhile the store's gen-a is replaced by the one in ``new``."""
    h.submit("long", spec("gen-a", steps=60, seed=1))
    h.wait_for_step("long", 2)
    shutil.rmtree(store / "gen-a")
    shutil.copytree(new / "gen-a", store / "gen-a")


def reload(h, store):
    return h.engine.reload(scan_store(store)).result(30)


@pytest.fixture
def served_a(tmp_path):
    """A store holding gen-a, and an engine serving it (loaded)."""
    store = tmp_path / "store"
    write_generator(store / "gen-a")
    h = EngineHarness(store)
    yield store, h
    h.close()


def test_a_model_added_is_served_and_one_removed_is_refused_and_unloaded(served_a):
    store, h = served_a
    assert list(h.engine.models) == ["gen-a"]
    h.submit("early", spec("gen-b"))
    assert h.outcome("early").type == "failed"  # not in the store yet
    write_generator(store / "gen-b")
    shutil.rmtree(store / "gen-a")
    served = reload(h, store)
    assert list(served) == ["gen-b"] and served is h.engine.entries
    assert list(h.engine.models) == ["gen-b"]  # gen-a was idle: unloaded at once; gen-b loaded, as at start
    h.submit("b", spec("gen-b"))
    assert h.outcome("b").type == "succeeded"
    h.submit("a", spec("gen-a"))
    a = h.outcome("a")
    assert a.type == "failed" and "not served" in a.error


def test_an_unchanged_loaded_model_stays_loaded_with_its_entry(served_a):
    store, h = served_a
    model, entry = h.engine.models["gen-a"], h.engine.entries["gen-a"]
    served = reload(h, store)
    assert served["gen-a"] is entry and h.engine.models["gen-a"] is model and entry.loaded


def test_a_changed_model_finishes_its_running_job_on_the_old_weights_then_runs_the_new_files(tmp_path):
    store, new = tmp_path / "store", tmp_path / "new"
    write_generator(store / "gen-a")
    write_other_weights(new / "gen-a")
    before = EngineHarness(store)
    after = EngineHarness(new)
    try:  # what each set of weights gives for the two jobs below, each alone
        before.submit("long", spec("gen-a", steps=60, seed=1))
        after.submit("next", spec("gen-a", seed=5))
        old_long, new_next = pixels(before.outcome("long")), pixels(after.outcome("next"))
        before.submit("next", spec("gen-a", seed=5))
        old_next = pixels(before.outcome("next"))
    finally:
        before.close()
        after.close()
    assert not np.array_equal(old_next, new_next)  # the two weights tell apart

    h = EngineHarness(store)
    try:
        change_under_a_running_job(h, store, new)
        served = reload(h, store)
        assert served["gen-a"] is not h.engine.pool.loaded["gen-a"].entry  # the old weights still run "long"
        h.submit("next", spec("gen-a", seed=5))
        long, following = h.outcome("long"), h.outcome("next")
        assert long.type == following.type == "succeeded"
        assert np.array_equal(pixels(long), old_long)  # begun on the old weights, finished on them
        assert np.array_equal(pixels(following), new_next)  # the new files, once the old job was done
        long_done = [e.at for e in h.events["long"] if e.type == "succeeded"][0]
        next_started = [e.at for e in h.events["next"] if e.type == "started"][0]
        assert next_started >= long_done
        assert h.engine.pool.loaded["gen-a"].entry is served["gen-a"] and h.engine.pool.stale == set()
    finally:
        h.close()


def test_a_job_not_started_when_its_model_is_removed_fails_as_not_served(tmp_path):
    store = tmp_path / "store"
    write_generator(store / "gen-a")
    h = EngineHarness(store, max_batch=1)  # the second job waits for the first one's place
    try:
        h.submit("long", spec("gen-a", steps=60, seed=1))
        h.wait_for_step("long", 2)
        h.submit("queued", spec("gen-a", seed=5))
        shutil.rmtree(store / "gen-a")
        reload(h, store)
        queued = h.outcome("queued")
        assert queued.type == "failed" and "not served" in queued.error  # it had run on the removed model
        assert "started" not in [e.type for e in h.events["queued"]]
        assert h.outcome("long").type == "succeeded"  # begun: it finishes on the weights it began with
        assert "gen-a" not in h.engine.models
    finally:
        h.close()


def test_a_job_not_started_when_its_model_changes_runs_on_the_new_files(tmp_path):
    store, new = tmp_path / "store", tmp_path / "new"
    write_generator(store / "gen-a")
    write_other_weights(new / "gen-a")
    after = EngineHarness(new)
    try:
        after.submit("queued", spec("gen-a", seed=5))
        new_queued = pixels(after.outcome("queued"))
    finally:
        after.close()
    h = EngineHarness(store, max_batch=1)
    try:
        h.submit("long", spec("gen-a", steps=60, seed=1))
        h.wait_for_step("long", 2)
        h.submit("queued", spec("gen-a", seed=5))  # planned on the old weights, waiting for a place
        shutil.rmtree(store / "gen-a")
        shutil.copytree(new / "gen-a", store / "gen-a")
        served = reload(h, store)
        queued = h.outcome("queued")
        assert queued.type == "succeeded" and np.array_equal(pixels(queued), new_queued)  # it ran on the old ones
        assert h.outcome("long").type == "succeeded"
        assert h.engine.pool.loaded["gen-a"].entry is served["gen-a"] and h.engine.pool.stale == set()
    finally:
        h.close()


def test_a_replanned_job_keeps_its_age_and_does_not_hold_back_a_model_the_same_reload_added(tmp_path):
    # the job planned again waited for gen-a's old weights, and counted as one waiting for room in memory:
    # the reload then loaded nothing it added, and jobs for models not in memory queued behind it
    store, new = tmp_path / "store", tmp_path / "new"
    write_generator(store / "gen-a")
    write_other_weights(new / "gen-a")
    h = EngineHarness(store, max_batch=1)
    try:
        h.submit("long", spec("gen-a", steps=200, seed=1))
        h.wait_for_step("long", 2)
        h.submit("queued", spec("gen-a", seed=5))
        time.sleep(0.05)
        since = h.engine.scheduler.waiting_since("queued")
        assert since is not None
        shutil.rmtree(store / "gen-a")
        shutil.copytree(new / "gen-a", store / "gen-a")
        write_generator(store / "gen-b")
        reload(h, store)
        assert "gen-b" in h.engine.models  # loaded by the reload, before it answered
        h.submit("b", spec("gen-b", seed=2))
        assert h.outcome("b").type == "succeeded"
        assert not [e for e in h.events["long"] if e.type == "succeeded"]  # b did not wait for the old weights
        assert [m.waiting_since for m in h.engine._deferred if m.job_id == "queued"] == [since]  # its age kept
        assert h.outcome("queued").type == "succeeded" and h.outcome("long").type == "succeeded"
    finally:
        h.close()


def test_models_added_or_changed_are_loaded_by_the_reload_or_when_the_old_weights_last_job_ends(tmp_path):
    """As at start (DIFFUSION_PRELOAD, by default every served model that fits), so the first job after a
    reload does not wait for its model to load."""
    store, new = tmp_path / "store", tmp_path / "new"
    write_generator(store / "gen-a")
    write_other_weights(new / "gen-a")
    h = EngineHarness(store)
    try:
        change_under_a_running_job(h, store, new)
        write_generator(store / "gen-b")
        served = reload(h, store)
        assert h.engine.models["gen-b"].entry is served["gen-b"]  # added: loaded before the answer
        assert h.engine.models["gen-a"].entry is not served["gen-a"]  # "long" still runs on the old weights
        assert h.outcome("long").type == "succeeded"
        deadline = time.monotonic() + 30
        while getattr(h.engine.models.get("gen-a"), "entry", None) is not served["gen-a"]:
            assert time.monotonic() < deadline, "the changed model was not loaded again"
            time.sleep(0.01)
        # its new files, before any job asks
        assert served["gen-a"].loaded and h.engine.pool.stale == set()
    finally:
        h.close()


def test_a_reload_its_caller_stopped_waiting_for_changes_nothing_and_the_engine_goes_on(served_a):
    store, h = served_a
    inside, release = h.hold_passes()
    h.submit("a", spec("gen-a"))
    assert inside.wait(30)
    write_generator(store / "gen-b")
    asked = h.engine.reload(scan_store(store))
    assert asked.cancel()  # the caller gave up (it was stopping) before the engine took it
    release.set()
    assert h.outcome("a").type == "succeeded"
    h.submit("b", spec("gen-b"))
    assert h.outcome("b").type == "failed" and h.engine.alive  # not taken; the engine lives on
    assert reload(h, store).keys() == {"gen-a", "gen-b"}


def test_a_change_behind_a_linked_component_folder_is_seen_by_a_rescan(tmp_path):
    from app.store.catalog import scan_folder

    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    folder = write_generator(store / "gen-a")
    (folder / "unet").rename(elsewhere)
    (folder / "unet").symlink_to(elsewhere, target_is_directory=True)
    before = scan_folder(folder)
    assert before.ready and "unet/diffusion_pytorch_model.safetensors" in dict(before.files)
    write_other_weights(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "unet" / "diffusion_pytorch_model.safetensors", elsewhere)
    assert scan_folder(folder).files != before.files


def counted_loads(monkeypatch, delay_s: float = 0.0) -> list[str]:
    """The names of the models loaded from now on, in order (each load made ``delay_s`` slower)."""
    from app.engine import models

    loads, real = [], models.load_model

    def load(entry, device):
        loads.append(entry.name)
        time.sleep(delay_s)
        return real(entry, device)

    monkeypatch.setattr(models, "load_model", load)
    return loads


def test_a_model_a_job_waits_for_is_loaded_before_any_other_the_preload_would_load(tmp_path, monkeypatch):
    """Room for one model: gen-a made room for gen-b; gen-b changes under a long job, and the next job
    for it waits. When the long job ends, the room goes to gen-b's new files, not first to gen-a (the
    preload's first model), which would be unloaded again at once."""
    from tests.engine.test_model_memory import budget_for

    store, new = tmp_path / "store", tmp_path / "new"
    write_generator(store / "gen-a")
    write_generator(store / "gen-b")
    write_other_weights(new / "gen-b")
    loads = counted_loads(monkeypatch)
    h = EngineHarness(store, model_memory_gb=budget_for(store, 1.5))
    try:
        h.submit("b", spec("gen-b"))
        assert h.outcome("b").type == "succeeded"
        h.submit("long", spec("gen-b", steps=80, seed=1))
        h.wait_for_step("long", 2)
        shutil.rmtree(store / "gen-b")
        shutil.copytree(new / "gen-b", store / "gen-b")
        served = reload(h, store)
        h.submit("next", spec("gen-b", seed=5))
        assert h.outcome("long").type == h.outcome("next").type == "succeeded"
        assert loads == ["gen-a", "gen-b", "gen-b"]  # at start, for "b", for "next": none wasted
        assert list(h.engine.models) == ["gen-b"] and h.engine.models["gen-b"].entry is served["gen-b"]
    finally:
        h.close()


def test_a_reload_that_loads_several_models_times_each_load_as_one_turn(tmp_path, monkeypatch):
    """Loads in a row are not one long turn: the engine is not judged stuck for a reload that adds many."""
    store = tmp_path / "store"
    write_generator(store / "gen-a")
    h = EngineHarness(store)
    try:
        for name in ("gen-b", "gen-c", "gen-d", "gen-e", "gen-f"):
            write_generator(store / name)
        loads = counted_loads(monkeypatch, delay_s=0.4)  # 2 s in all
        asked, longest = h.engine.reload(scan_store(store)), 0.0
        while not asked.done():
            longest = max(longest, h.engine.busy_s())
            time.sleep(0.01)
        assert loads == ["gen-b", "gen-c", "gen-d", "gen-e", "gen-f"]
        assert longest < 1.2, longest  # one load and a little, not the five
    finally:
        h.close()


def test_a_model_the_reload_loaded_is_the_first_to_make_room_for_one_asked_for(tmp_path):
    from tests.engine.test_model_memory import budget_for

    store = tmp_path / "store"
    write_generator(store / "gen-a")
    h = EngineHarness(store, model_memory_gb=budget_for(store, 2.5))
    try:
        h.submit("a", spec("gen-a"))
        assert h.outcome("a").type == "succeeded"
        write_generator(store / "gen-b")
        write_generator(store / "gen-c")
        reload(h, store)
        assert list(h.engine.models) == ["gen-b", "gen-a"]  # gen-c does not fit beside them
        h.submit("c", spec("gen-c"))
        assert h.outcome("c").type == "succeeded"
        assert list(h.engine.models) == ["gen-a", "gen-c"]  # gen-b, asked for by no job, made room
    finally:
        h.close()


def test_a_job_checked_against_a_model_that_changed_since_fails_alone_saying_why(tmp_path):
    """The API checked the class label against the model as it was; the store's model now has fewer classes.
    The job fails before it runs, naming the label's range (it had failed inside the network with an
    IndexError), and a job that fits the model as it is runs."""
    store = tmp_path / "store"
    write_generator(store / "gen-a", classes=2)
    h = EngineHarness(store)
    try:
        h.submit("stale", GenerateSpec(model="gen-a", steps=4, sampler="ddim", seeds=[0], class_label=3))
        h.submit("fits", spec("gen-a"))
        stale, fits = h.outcome("stale"), h.outcome("fits")
        assert stale.type == "failed"
        assert (
            "class_label must be between 0 and 1" in stale.error and "changed since the job was accepted" in stale.error
        )
        assert "IndexError" not in stale.error
        assert fits.type == "succeeded"
    finally:
        h.close()
