"""Row groups: on the CPU a forward pass split by rows over one thread per core (app/engine/runner.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from app.engine.engine import Engine
from app.engine.plans import plan_generate
from app.engine.runner import RowGroups, Runner
from app.jobs import GenerateSpec
from app.store.catalog import scan_store
from app.store.loader import load_model
from tests.helpers import make_settings

ROOT = Path(__file__).resolve().parents[2]


BIG = RowGroups.MIN_PIXELS


@pytest.mark.parametrize(
    "threads, rows, pixels, groups",
    [
        (2, 4, BIG, [slice(0, 2), slice(2, 4)]),
        (3, 6, BIG, [slice(0, 2), slice(2, 4), slice(4, 6)]),
        # rows that do not split evenly: not split (the odd row after the groups, on all the threads, made the
        # engine's passes of five bf16 tiles 9-12% slower than spread ones)
        (2, 5, BIG, []),
        (3, 7, BIG, []),
        (2, 2, BIG, []),  # fewer than two rows a group: not split
        (2, 64, BIG - 1, []),  # small rows (the digits' 28 x 28): not split
        (1, 6, BIG, []),  # one thread: no groups
    ],
)
def test_large_rows_are_split_into_even_groups_only(threads, rows, pixels, groups):
    assert RowGroups(threads).parts(rows, pixels) == groups


def test_each_group_runs_on_one_thread_of_its_own_and_an_uneven_pass_on_the_callers():
    groups = RowGroups(2)
    seen: dict[tuple[int, int], tuple[str, int]] = {}

    def forward(part: slice) -> torch.Tensor:
        seen[part.start, part.stop] = (threading.current_thread().name, torch.get_num_threads())
        return torch.arange(part.start, part.stop)

    try:
        before = torch.get_num_threads()
        assert groups.run(forward, 4, BIG).tolist() == [0, 1, 2, 3]  # in row order
        caller = threading.current_thread().name
        assert groups.run(forward, 5, BIG).tolist() == [0, 1, 2, 3, 4]
        assert seen[0, 5] == (caller, before)  # not split: all on the caller's threads
        assert {seen[0, 2][1], seen[2, 4][1]} == {1}
        assert seen[0, 2][0] != seen[2, 4][0] and caller not in (seen[0, 2][0], seen[2, 4][0])
        # the caller keeps its threads, and a thread started later takes the caller's count, not the groups' one
        assert torch.get_num_threads() == before
        later: list[int] = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [before]
    finally:
        groups.close()


def test_a_pass_still_running_in_a_group_does_not_hold_the_process_at_its_exit():
    """The groups ran on executor threads, which Python waits for at exit even after a shutdown: a hung pass
    (a stuck engine its worker gave up on) kept the process alive for good, where the engine's own thread is a
    daemon and does not."""
    code = """
import threading, time, torch
from app.engine.runner import RowGroups
groups = RowGroups(2)
def forward(part):
    time.sleep(3600)  # hangs
threading.Thread(target=lambda: groups.run(forward, 4, RowGroups.MIN_PIXELS), daemon=True).start()
time.sleep(0.5)
groups.close()
print("main ends")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and "main ends" in done.stdout, done.stderr


def test_an_error_in_a_group_reaches_the_caller():
    groups = RowGroups(2)

    finished = []

    def forward(part: slice) -> torch.Tensor:
        if part.start == 0:
            raise RuntimeError("out of memory in the first group")
        time.sleep(0.2)
        finished.append(part.start)
        return torch.zeros(part.stop - part.start)

    try:
        with pytest.raises(RuntimeError, match="first group"):
            groups.run(forward, 4, BIG)
        assert finished == [2]  # the other group had ended: the caller's next pass runs alone
        assert groups.run(lambda part: torch.ones(part.stop - part.start), 4, BIG).tolist() == [1, 1, 1, 1]
    finally:
        groups.close()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_grouped_rows_give_the_outputs_of_one_pass_under_the_same_modes(store, monkeypatch, dtype):
    """Gradients' mode and autocast hold per thread: each group's thread sets them as the caller does. Four
    rows, two of them guided (six network rows: two groups of three), split though small."""
    monkeypatch.setattr(RowGroups, "MIN_PIXELS", 1)
    model = load_model(scan_store(store)["tiny-gen"], torch.device("cpu"))
    specs = [
        GenerateSpec(
            model="tiny-gen",
            steps=4,
            sampler="ddim",
            seeds=[i],
            class_label=i % 3,
            guidance_scale=1.5 if i < 2 else 0.0,
        )
        for i in range(4)
    ]
    modes: list[tuple] = []
    predict = model.predict

    def recorded(x, t, conds):
        modes.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), len(x)))
        return predict(x, t, conds)

    monkeypatch.setattr(model, "predict", recorded)
    outputs = []
    for row_groups in (False, True):
        runner = Runner(torch.device("cpu"), dtype, row_groups=row_groups)
        rows = [row for i, s in enumerate(specs) for row in plan_generate(f"j{i}", s, model).rows]
        for row in rows:
            row.begin(runner.device)
        try:
            outputs.append(runner.denoiser_output(rows))
        finally:
            runner.groups.close()
    autocast = dtype is not None
    assert modes[0] == (False, autocast, 6)
    assert sorted(modes[1:]) == [(False, autocast, 3), (False, autocast, 3)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5 if dtype is None else 2e-2)


@pytest.mark.parametrize("setting", [True, False])
def test_the_engine_splits_its_passes_on_the_cpu_unless_told_not_to(store, setting):
    from tests.engine.harness import EngineHarness

    h = EngineHarness(store, cpu_row_groups=setting)
    try:
        assert h.engine.runner.groups.threads == (torch.get_num_threads() if setting else 1)
    finally:
        h.close()


def _group_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("diffusion-rows-"))


@pytest.mark.parametrize("load_fails", [False, True])
def test_the_engines_row_groups_end_with_its_thread(store, monkeypatch, load_fails):
    """The engine starts its row groups' threads on its own thread and ends them when that thread ends: after
    its loop, and when loading the models failed before the loop began."""
    if load_fails:
        monkeypatch.setattr(Engine, "_load", lambda self: (_ for _ in ()).throw(RuntimeError("a bug")))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two groups, whatever this machine's count
    before = _group_threads()
    try:
        engine = Engine(make_settings(store, cpu_row_groups=True), scan_store(store), lambda events: None)
        try:
            if load_fails:
                with pytest.raises(RuntimeError, match="died while loading"):
                    engine.start()
            else:
                engine.start()
            assert engine.runner.groups.threads == 2
            if not load_fails:
                assert _group_threads() == before + 2  # running while the engine is
        finally:
            engine.stop()
    finally:
        torch.set_num_threads(threads)
    deadline = time.monotonic() + 30
    while _group_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_threads() == before
    assert engine.runner.groups._queues == []
