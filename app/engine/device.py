"""Pick the device and the network precision from settings; what the CPU and the container give the engine."""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)
# What a container gives the process, from its cgroup (v2, then v1). CPU: v2's "quota period" (or "max
# period"); v1's quota (-1: none) and period. Memory: the limit past which the process is killed, whatever
# the host has
CGROUP_CPU = (Path("/sys/fs/cgroup/cpu.max"), Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


@lru_cache
def _cpuinfo() -> str:
    """Linux's /proc/cpuinfo, read once ("" elsewhere)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name as Linux reports it ("" where it does not), for records of runs and benches."""
    lines = _cpuinfo().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it bf16 is slower than float32."""
    flags = _cpuinfo().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_prefers_bf16() -> bool:
    """Whether bf16 autocast pays on this CPU: it has AMX, or AVX512-BF16 on an AMD CPU. On an Intel Xeon VM
    with AVX512-BF16 but no AMX (as a hypervisor may hide it) bf16 convolutions took up to 1.9x float32's
    time (bench/bench_bf16_convs.py) and the photo denoiser's default path 1.70x FFDNet's time, against
    1.16x in float32, where AMD EPYC VMs with AVX512-BF16 and an Intel one with AMX ran that path in bf16 in
    about 0.6x of its float32 time (docs/denoising.md). A rule by the CPU's features, not a timing: every
    worker on one kind of machine takes the same precision, so a seed gives the same image whichever worker
    runs it (a timed probe at start, tried first, chose differently on two workers that started together)."""
    flags = _cpuinfo().split()
    return "amx_bf16" in flags or ("avx512_bf16" in flags and "AuthenticAMD" in flags)


def container_cpu_limit() -> float | None:
    """The CPUs this process's cgroup may use (its CPU quota over its period), None where no quota is set."""
    v2, v1 = CGROUP_CPU
    try:
        quota, period = v2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = v1.read_text().strip(), (v1.parent / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def container_memory_limit() -> int | None:
    """The memory limit of this process's cgroup, None where none is set ("max", or v1's huge default)."""
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
        return None
    return None


def fit_threads_to_container() -> int | None:
    """torch takes a thread per core of the machine, whatever CPU quota its container has: on a 64-core node a
    worker limited to 2 CPUs ran 32 threads, throttled for most of each period. Where a quota is set below
    torch's count, torch's threads are set to the whole CPUs it allows (at least 1), unless OMP_NUM_THREADS
    chose them. Returns the count set, None where it was left alone. Call it before any other torch work."""
    limit = container_cpu_limit()
    if limit is None or "OMP_NUM_THREADS" in os.environ:
        return None
    wanted, threads = max(1, int(limit)), torch.get_num_threads()
    if wanted >= threads:
        return None
    log.info("the container's CPU quota is %.2f CPUs: torch runs %d threads, not %d", limit, wanted, threads)
    torch.set_num_threads(wanted)
    return wanted


def device_problem(device: str, dtype: str) -> str | None:
    """Why an engine cannot run with these DIFFUSION_DEVICE and DIFFUSION_DTYPE settings on this machine
    (None when it can): the processes check it before they load anything, and answer it in one line."""
    if device == "cuda" and not torch.cuda.is_available():
        return "DIFFUSION_DEVICE=cuda but no CUDA device is available"
    if dtype == "float16" and pick_device(device).type != "cuda":
        return "DIFFUSION_DTYPE=float16 needs a CUDA device"
    return None


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(device_problem(choice, "auto"))
    if choice in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the network, or None for plain float32.

    bfloat16 by default on CUDA and on a CPU where it pays (``cpu_prefers_bf16``: AMX, or AVX512-BF16 on
    AMD): it keeps float32's range, so the UNet's activations cannot overflow as they can in float16,
    and on such a CPU it cuts the photo denoiser's time by about 40% for 0.01 dB
    (bench/bench_denoise_speed.py); sampler arithmetic stays in float32 either way. Other CPUs run float32.
    float16 needs CUDA.
    """
    if choice == "float32":
        return None
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_prefers_bf16() else None
    if choice == "float16" and device.type != "cuda":
        raise RuntimeError("DIFFUSION_DTYPE=float16 needs a CUDA device")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[choice]
