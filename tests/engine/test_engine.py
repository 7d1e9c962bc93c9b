"""The engine with a real (tiny) network: continuous batching, cancellation, failure isolation, seeds."""

from __future__ import annotations


import time

import numpy as np
import pytest

from app.jobs import GenerateSpec
from tests.engine.harness import EngineHarness, pixels


@pytest.fixture
def harness(store):
    h = EngineHarness(store)
    yield h
    h.close()


def spec(steps=4, seed=0, label=0, **kw) -> GenerateSpec:
    return GenerateSpec(
        model="tiny-gen", steps=steps, sampler=kw.pop("sampler", "ddim"), seeds=[seed], class_label=label, **kw
    )


def test_request_joins_a_batch_already_running(harness):
    harness.submit("long", spec(steps=300))
    harness.wait_for_step("long", 5)
    harness.submit("short", spec(steps=5, seed=1))
    assert harness.outcome("short").type == "succeeded"
    long_steps = [e.progress.step for e in harness.events["long"] if e.type == "progress"]
    assert max(long_steps) < 300  # the short job finished while the long one was still running
    assert harness.outcome("long").type == "succeeded"
    # Shared forward passes: both jobs together took the long job's 300 passes, not 305.
    assert harness.engine.passes == 300


def test_a_job_is_told_started_before_its_first_pass_ends(harness):
    """A first pass may take minutes (a large image): the job had read "queued" for all of it, and its
    "started" webhook waited as long."""
    inside, release = harness.hold_passes()
    try:
        harness.submit("first", spec(steps=2))
        assert inside.wait(30)
        assert [e.type for e in harness.events["first"]] == ["started"]  # published while the pass runs
    finally:
        release.set()
    assert harness.outcome("first").type == "succeeded"


def test_cancelled_job_leaves_at_the_next_step(harness):
    harness.submit("doomed", spec(steps=1000))
    harness.submit("other", spec(steps=40, seed=5))
    harness.wait_for_step("doomed", 3)
    harness.engine.cancel("doomed")
    assert harness.outcome("doomed").type == "canceled"
    events = harness.events["doomed"]
    after = events[[e.type for e in events].index("canceled") + 1 :]
    assert after == []
    assert harness.outcome("other").type == "succeeded"
    assert not any(r.job_id == "doomed" for r in harness.engine._rows.values())


def test_a_failing_job_fails_alone_and_the_worker_keeps_serving(harness):
    unet = harness.engine.models["tiny-gen"].unet
    original = unet.forward

    def forward(x, t, class_labels=None, **kw):
        if class_labels is not None and (class_labels == 2).any():
            raise RuntimeError("poisoned label")
        return original(x, t, class_labels=class_labels, **kw)

    unet.forward = forward
    for label in (0, 1, 2):
        harness.submit(f"job{label}", spec(steps=20, seed=label, label=label))
    assert harness.outcome("job2").type == "failed"
    assert "poisoned label" in harness.outcome("job2").error
    assert harness.outcome("job0").type == "succeeded"
    assert harness.outcome("job1").type == "succeeded"
    harness.submit("after", spec(steps=3, seed=9, label=1))
    assert harness.outcome("after").type == "succeeded"


@pytest.mark.parametrize("sampler", ["ddpm", "euler_a"])
def test_a_failed_step_leaves_the_other_jobs_images_as_their_seeds_make_them(store, monkeypatch, sampler):
    """When a step fails, the engine runs each job alone to find the one that fails. The others' noise
    generators must not have moved on: a seed gives one image, whatever failed beside it."""
    import dataclasses

    from app.diffusion import samplers

    alone = EngineHarness(store)
    alone.submit("A", spec(steps=6, seed=7, sampler=sampler))
    expected = pixels(alone.outcome("A"))
    alone.close()

    original = samplers.SAMPLERS[sampler].step

    def step(out, x, **kw):
        if (kw["eta"] == 0.5).any():  # only the poisoned job's rows have this eta
            raise RuntimeError("sampler blew up")
        return original(out, x, **kw)

    monkeypatch.setitem(samplers.SAMPLERS, sampler, dataclasses.replace(samplers.SAMPLERS[sampler], step=step))
    harness = EngineHarness(store)
    try:
        harness.engine.submit("A", spec(steps=6, seed=7, sampler=sampler))
        harness.engine.submit("B", spec(steps=6, seed=99, sampler=sampler, eta=0.5))
        assert harness.outcome("B").type == "failed"
        assert np.array_equal(pixels(harness.outcome("A")), expected)
    finally:
        harness.close()


def test_a_job_whose_network_output_is_not_a_number_fails_saying_so_not_a_black_image(harness):
    unet = harness.engine.models["tiny-gen"].unet
    original = unet.forward

    def forward(x, t, class_labels=None, **kw):
        out = original(x, t, class_labels=class_labels, **kw)
        if class_labels is not None and (class_labels == 2).any():
            out.sample[class_labels == 2] = float("nan")
        return out

    unet.forward = forward
    for label in (0, 2):
        harness.submit(f"job{label}", spec(steps=5, seed=label, label=label))
    assert harness.outcome("job2").type == "failed" and "NaN" in harness.outcome("job2").error
    assert harness.outcome("job0").type == "succeeded"
    assert np.isfinite(pixels(harness.outcome("job0"))).all()


def test_a_job_that_cannot_be_planned_fails_without_stopping_the_engine(harness):
    harness.submit("bad", GenerateSpec(model="missing", steps=3, sampler="ddim", seeds=[1]))
    assert harness.outcome("bad").type == "failed"
    harness.submit("good", spec())
    assert harness.outcome("good").type == "succeeded"


@pytest.mark.parametrize(
    "sampler,eta,dtype",
    [
        ("ddim", 0.0, "float32"),
        ("ddpm", 0.0, "float32"),
        ("dpmpp_2m", 0.0, "float32"),
        ("ddim", 1.0, "float32"),
        ("dpmpp_2m", 0.0, "bfloat16"),
    ],
)
def test_same_seed_same_image_alone_or_beside_63_others(store, sampler, eta, dtype):
    h = EngineHarness(store, max_batch=64, dtype=dtype)
    try:
        h.submit("alone", spec(steps=10, seed=1234, label=1, sampler=sampler, eta=eta, guidance_scale=1.5))
        alone = pixels(h.outcome("alone"))
        for i in range(63):
            h.submit(
                f"other{i}", spec(steps=10 + i % 7, seed=i, label=i % 3, sampler=("ddim", "ddpm", "dpmpp_2m")[i % 3])
            )
        h.submit("crowd", spec(steps=10, seed=1234, label=1, sampler=sampler, eta=eta, guidance_scale=1.5))
        crowd = pixels(h.outcome("crowd"))
        diff = np.abs(alone - crowd)
        assert (diff <= 1).mean() >= 0.999
        assert diff.max() <= 4
        for i in range(63):
            assert h.outcome(f"other{i}").type == "succeeded"
    finally:
        h.close()


def test_accepted_jobs_are_never_dropped_under_a_small_batch_cap(store):
    h = EngineHarness(store, max_batch=3)
    try:
        for i in range(40):
            h.submit(f"j{i}", spec(steps=2 + i % 5, seed=i, label=i % 3, guidance_scale=1.0 if i % 2 else 0.0))
        assert all(h.outcome(f"j{i}").type == "succeeded" for i in range(40))
    finally:
        h.close()


def test_models_of_different_shapes_share_the_worker(harness):
    harness.submit("grey", spec(steps=20))
    harness.submit("rgb", GenerateSpec(model="tiny-rgb", steps=20, sampler="ddim", seeds=[3]))
    assert harness.outcome("grey").type == "succeeded"
    assert harness.outcome("rgb").type == "succeeded"
    assert pixels(harness.outcome("rgb")).shape == (16, 16, 3)
    assert harness.engine.passes == 40  # two groups cannot share a pass: they take turns


def test_a_short_generate_finishes_while_a_huge_denoise_still_runs(store):
    from app.jobs import DenoiseSpec, ImageData
    from tests.api.helpers import photo

    harness = EngineHarness(store, denoise_tile=32, denoise_overlap=8, max_batch_pixels=4 * 32 * 32)
    try:
        image = photo(512, 512, seed=1)  # 441 tiles of 32 x 32: over 100 passes of 4 tiles
        data = ImageData(width=512, height=512, channels=3, pixels=image.tobytes())
        harness.submit("huge", DenoiseSpec(model="tiny-rgb", image=data, sigma=20.0))
        harness.wait_for_step("huge", 0)
        harness.submit("short", spec(steps=4, seed=2))
        assert harness.outcome("short").type == "succeeded"
        done = [e for e in harness.events["huge"] if e.type == "succeeded"]
        assert not done  # the short job did not wait for the huge one
        # Rows build their tensors only when admitted: the waiting tiles hold no image memory.
        holding = [r for r in harness.engine._rows.values() if r.job_id == "huge" and r.x is not None]
        assert len(holding) <= 4
        assert harness.outcome("huge").type == "succeeded"
    finally:
        harness.close()


def test_a_cancelled_job_releases_its_rows_at_once(harness):
    harness.submit(
        "doomed", GenerateSpec(model="tiny-gen", steps=1000, sampler="ddim", seeds=list(range(8)), class_label=0)
    )
    harness.wait_for_step("doomed", 2)
    rows = [r for r in harness.engine._rows.values() if r.job_id == "doomed"]
    harness.engine.cancel("doomed")
    assert harness.outcome("doomed").type == "canceled"
    assert rows and all(r.x is None and r.prev_x0 is None for r in rows)


def test_a_job_whose_rows_cannot_be_built_fails_alone(harness, monkeypatch):
    from app.engine.runner import Row

    original = Row.begin

    def begin(self, device):
        if self.job_id == "bad":
            raise RuntimeError("out of device memory (simulated)")
        original(self, device)

    monkeypatch.setattr(Row, "begin", begin)
    harness.submit("bad", spec(steps=5))
    harness.submit("good", spec(steps=5, seed=3))
    assert harness.outcome("bad").type == "failed" and "simulated" in harness.outcome("bad").error
    assert harness.outcome("good").type == "succeeded"
    harness.submit("after", spec(steps=3))
    assert harness.outcome("after").type == "succeeded" and harness.engine.alive


def test_finished_tiles_are_blended_in_row_order_whatever_order_they_finish_in(harness):
    """Non-square tiles with quarter-turned views run in two groups that finish in varying order; float sums
    depend on their order, so the blend takes tiles in row order and a seed gives one image."""
    import numpy as np

    from app.engine.plans import plan_denoise
    from app.engine.runner import run_until_done
    from app.jobs import DenoiseSpec, ImageData
    from tests.api.helpers import photo

    image = photo(40, 150, seed=6)  # tiles 40 x 64: the turned views are 64 x 40
    data = ImageData(width=150, height=40, channels=3, pixels=image.tobytes())
    job = DenoiseSpec(model="tiny-rgb", image=data, sigma=30.0, mode="sample", steps=3, sampler="ddpm", ensemble=4)
    model = harness.engine.models["tiny-rgb"]
    canvases = []
    for order in (lambda rows: rows, lambda rows: rows[::-1]):
        plan = plan_denoise("d", job, model, tile=64, overlap=16)
        run_until_done(harness.engine.runner, plan.rows, 64)
        for row in order(plan.rows):
            plan.collect(row)
        canvases.append(plan.collect.__self__.canvases[0].result())
    assert np.array_equal(canvases[0], canvases[1])


def test_run_until_done_makes_the_passes_the_engine_makes_for_a_job_alone(harness):
    """It ran every row of a group in one pass, ignoring DIFFUSION_MAX_BATCH_PIXELS, so the benchmarks that use
    it (bench/eval_denoise.py's service path) timed passes the service never runs: a photo's 6 tiles of 256
    in one pass, where the engine runs three of two."""
    from app.engine.plans import plan_denoise
    from app.engine.runner import run_until_done
    from app.jobs import DenoiseSpec, ImageData
    from tests.api.helpers import photo

    data = ImageData(width=96, height=64, channels=3, pixels=photo(64, 96, seed=2).tobytes())
    job = DenoiseSpec(model="tiny-rgb", image=data, sigma=30.0, mode="mmse")
    model = harness.engine.models["tiny-rgb"]
    runner = harness.engine.runner
    passes = []
    real = runner.step
    runner.step = lambda batch: passes.append([row.pixels for row in batch]) or real(batch)
    try:
        for caps in ((64, None), (64, 2 * 32 * 32), (3, None), (64, 100)):
            passes.clear()
            plan = plan_denoise("d", job, model, tile=32, overlap=0)  # 6 tiles of 32 x 32
            run_until_done(runner, plan.rows, caps[0], max_pixels=caps[1])
            assert all(row.done for row in plan.rows)
            sizes = [len(p) for p in passes]
            assert sizes == {(64, None): [6], (64, 2048): [2, 2, 2], (3, None): [3, 3], (64, 100): [1] * 6}[caps]
    finally:
        runner.step = real


@pytest.mark.parametrize("split", [False, True])
def test_a_denoise_gives_the_same_bytes_alone_and_in_a_crowd(store, monkeypatch, split):
    """Non-square tiles with quarter-turned views run in two groups that finish in varying order; the blend
    adds them in row order, so the image does not depend on what else runs. ``split``: every pass of two rows
    or more split into row groups (app/engine/runner.py), whose tiles here are far below the size it takes."""
    from app.engine.runner import RowGroups

    split_passes = []
    if split:
        monkeypatch.setattr(RowGroups, "MIN_PIXELS", 1)
        monkeypatch.setattr(RowGroups, "MIN_ROWS", 1)
        parts = RowGroups.parts

        def counted(self, *args):
            split_passes.append(parts(self, *args)[0])
            return parts(self, *args)

        monkeypatch.setattr(RowGroups, "parts", counted)
    from app.jobs import DenoiseSpec, ImageData
    from tests.api.helpers import photo

    image = photo(40, 150, seed=6)  # tiles 40 x 64: the turned views are 64 x 40
    data = ImageData(width=150, height=40, channels=3, pixels=image.tobytes())
    job = DenoiseSpec(
        model="tiny-rgb", image=data, sigma=30.0, mode="sample", steps=4, sampler="ddpm", ensemble=4, seed=9
    )
    h = EngineHarness(store, max_batch=8 if split else 3)
    try:
        h.submit("alone", job)
        alone = h.outcome("alone").result.images[0].data
        for i in range(6):
            h.submit(f"other{i}", spec(steps=3 + i, seed=i))
        h.submit("crowd", job)
        crowd = h.outcome("crowd").result.images[0].data
    finally:
        h.close()
    assert alone == crowd
    assert not split or sum(1 for groups in split_passes if groups) >= 10


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_previews_change_nothing_in_the_result_and_cost_nothing_when_off(harness, sampler):
    harness.submit("plain", spec(steps=12, seed=7, sampler=sampler))
    harness.submit("previewed", spec(steps=12, seed=7, sampler=sampler, preview_every=4))
    plain, previewed = harness.outcome("plain"), harness.outcome("previewed")
    assert pixels(plain).tolist() == pixels(previewed).tolist()
    assert [e.progress.step for e in harness.events["previewed"] if e.type == "preview"] == [4, 8]
    assert not [e for e in harness.events["plain"] if e.type == "preview"]


def test_a_row_keeps_no_estimate_unless_its_job_asked_for_previews(store):
    from app.engine.plans import plan_generate
    from app.engine.runner import Runner
    from app.store.catalog import scan_store
    from app.store.loader import load_model

    import torch

    model = load_model(scan_store(store)["tiny-gen"], torch.device("cpu"))
    rows = (
        plan_generate("j", spec(steps=6), model).rows + plan_generate("k", spec(steps=6, preview_every=2), model).rows
    )
    runner = Runner(torch.device("cpu"), None)
    for row in rows:
        row.begin(runner.device)
    kept = []
    for _ in range(6):
        runner.step(rows)
        kept.append([row.preview is not None for row in rows])
        for row in rows:
            row.preview = None  # taken, as the engine does after each pass
    assert kept == [[False, False], [False, True], [False, False], [False, True], [False, False], [False, False]]


@pytest.mark.parametrize(
    "cpuinfo, expected",
    [
        ("vendor_id : GenuineIntel\nflags : avx2 avx512_bf16 amx_bf16 amx_tile", "bfloat16"),  # AMX
        ("vendor_id : AuthenticAMD\nflags : avx2 avx512_bf16", "bfloat16"),  # AMD EPYC with AVX512-BF16
        ("vendor_id : GenuineIntel\nflags : avx2 avx512_bf16 avx512_fp16", None),  # no AMX: bf16 is slower
        ("vendor_id : GenuineIntel\nflags : avx2 avx512f", None),
    ],
)
def test_auto_precision_on_the_cpu_is_bf16_only_where_it_pays(monkeypatch, cpuinfo, expected):
    """An Intel Xeon VM with AVX512-BF16 but no AMX ran bf16 convolutions in up to 1.9x float32's time: the
    instructions are not enough. The rule reads the CPU's features, so every worker picks alike."""
    import torch

    from app.engine import device

    monkeypatch.setattr(device, "_cpuinfo", lambda: cpuinfo)
    picked = device.pick_dtype("auto", torch.device("cpu"))
    assert picked == (getattr(torch, expected) if expected else None)
    assert device.pick_dtype("float32", torch.device("cpu")) is None
    assert device.pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(RuntimeError, match="float16 needs a CUDA device"):
        device.pick_dtype("float16", torch.device("cpu"))


def test_an_estimated_sigma_is_at_most_the_largest_a_request_may_give(store):
    from app.jobs import DenoiseSpec, ImageData

    salt_and_pepper = np.random.default_rng(0).integers(0, 2, (32, 32, 3), dtype=np.uint8) * 255
    image = ImageData(width=32, height=32, channels=3, pixels=salt_and_pepper.tobytes())
    h = EngineHarness(store)
    try:
        h.submit("noise", DenoiseSpec(model="tiny-rgb", image=image, sigma=None))
        info = h.outcome("noise").result.info
    finally:
        h.close()
    assert info["sigma_estimated"] == info["sigma"] == 255.0


@pytest.mark.parametrize("ending", ["cancel", "fail"])
def test_the_rows_running_gauge_falls_when_the_last_job_is_canceled_or_fails(harness, monkeypatch, ending):
    """The gauge was set only after a pass: a job canceled or failed while it ran left its rows counted for as
    long as no other pass came."""
    from prometheus_client import REGISTRY

    harness.submit("long", spec(steps=1000))
    harness.wait_for_step("long", 2)
    assert REGISTRY.get_sample_value("diffusion_rows_running") == 1
    if ending == "cancel":
        harness.engine.cancel("long")
    else:
        monkeypatch.setattr(harness.engine.runner, "step", lambda rows: (_ for _ in ()).throw(RuntimeError("boom")))
    assert harness.outcome("long").type == ("canceled" if ending == "cancel" else "failed")
    assert REGISTRY.get_sample_value("diffusion_rows_running") == 0


def test_a_large_result_is_written_off_the_engines_thread_and_passes_go_on_meanwhile(harness, monkeypatch):
    # a 16 Mpx noise job's PNG took 1.8 s on the engine's thread, and every running job waited for it
    import threading

    from app.engine import plans
    from app.jobs import ImageData, NoiseSpec

    writing, release = threading.Event(), threading.Event()
    real = plans.Unencoded.encode

    def slow(self):
        if self.area > 1 << 20:
            writing.set()
            release.wait(30)
        return real(self)

    monkeypatch.setattr(plans.Unencoded, "encode", slow)
    side = 1100  # 1.2 Mpx: past ENCODE_ASIDE_PIXELS
    image = ImageData(width=side, height=side, channels=3, pixels=bytes(side * side * 3))
    harness.submit("noise", NoiseSpec(image=image, sigma=25.0, seed=1))
    assert writing.wait(30)
    harness.submit("gen", GenerateSpec(model="tiny-gen", steps=4, sampler="ddim", seeds=[0], class_label=0))
    assert harness.outcome("gen").type == "succeeded"  # while the noise job's file is still being written
    assert not [e for e in harness.events["noise"] if e.type == "succeeded"]
    release.set()
    done = harness.outcome("noise")
    assert done.type == "succeeded" and done.result.images[0].media_type == "image/png"
    assert [e.type for e in harness.events["noise"]] == ["started", "succeeded"]
    assert pixels(done).shape == (side, side, 3)


def test_a_result_being_written_at_a_stop_is_still_published(store, monkeypatch):
    import threading

    from app.engine import plans
    from app.jobs import ImageData, NoiseSpec

    writing = threading.Event()
    real = plans.Unencoded.encode

    def slow(self):
        writing.set()
        time.sleep(0.5)
        return real(self)

    monkeypatch.setattr(plans.Unencoded, "encode", slow)
    h = EngineHarness(store)
    side = 1100
    h.submit(
        "noise", NoiseSpec(image=ImageData(width=side, height=side, channels=1, pixels=bytes(side * side)), sigma=9.0)
    )
    assert writing.wait(30)
    h.close()  # the engine stops while the file is written
    assert h.outcome("noise", timeout=1).type == "succeeded"
