"""A container's CPU quota sets torch's threads (torch itself counts the machine's cores)."""

from __future__ import annotations

import argparse

import pytest
import torch

from app.engine import device


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """Where the cgroup files are read from: (v2's cpu.max, v1's cpu.cfs_quota_us beside its period)."""
    v2, v1 = tmp_path / "cpu.max", tmp_path / "v1" / "cpu.cfs_quota_us"
    v1.parent.mkdir()
    monkeypatch.setattr(device, "CGROUP_CPU", (v2, v1))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    yield v2, v1
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "v2, v1, expected",
    [
        ("200000 100000\n", None, 2.0),  # cgroup v2: 2 CPUs
        ("150000 100000\n", None, 1.5),
        ("max 100000\n", None, None),  # no quota
        (None, ("50000", "100000"), 0.5),  # cgroup v1
        (None, ("-1", "100000"), None),  # v1's "no quota"
        (None, None, None),  # no cgroup files: not in a container
    ],
)
def test_the_cpu_quota_is_read_from_either_cgroup_version(cgroup, v2, v1, expected):
    if v2 is not None:
        cgroup[0].write_text(v2)
    if v1 is not None:
        cgroup[1].write_text(v1[0])
        (cgroup[1].parent / "cpu.cfs_period_us").write_text(v1[1])
    assert device.container_cpu_limit() == expected


def test_a_quota_below_torchs_threads_sets_them_and_one_above_leaves_them(cgroup):
    torch.set_num_threads(8)  # a node's cores, as torch counts them
    cgroup[0].write_text("150000 100000\n")  # 1.5 CPUs: one whole
    assert device.fit_threads_to_container() == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    cgroup[0].write_text("400000 100000\n")
    assert device.fit_threads_to_container() is None and torch.get_num_threads() == 2


def test_omp_num_threads_wins_over_the_quota(cgroup, monkeypatch):
    torch.set_num_threads(4)
    cgroup[0].write_text("100000 100000\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert device.fit_threads_to_container() is None and torch.get_num_threads() == 4


def test_the_console_scripts_fit_the_threads_of_a_process_that_runs_an_engine(cgroup, monkeypatch):
    from app import cli

    torch.set_num_threads(4)
    cgroup[0].write_text("200000 100000\n")
    monkeypatch.setenv("DIFFUSION_KEEP_FREED_MEMORY", "false")
    args = argparse.Namespace(model_store=None, queue_url=None, log_level="warning")
    cli._settings(args)  # serve without a queue URL runs its engine in-process
    assert torch.get_num_threads() == 2
