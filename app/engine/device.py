"""Pick the device and the network precision from settings."""

from __future__ import annotations

import logging
import statistics
import time
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)


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


BF16_SHARE = 0.9  # bf16 is taken where the probe runs in at most this share of float32's time


def cpu_prefers_bf16() -> bool:
    """Whether bf16 autocast pays on this CPU: it computes bf16 natively, and a probe measured it faster than float32.
    Having the instructions is not enough: on an Intel Xeon VM with AVX512-BF16 but no AMX, bf16 convolutions
    took up to 1.9x float32's time (bench/bench_bf16_convs.py), and the photo denoiser's default path 1.70x
    FFDNet's time in bf16 against 1.16x in float32 (docs/denoising.md), where on AMD EPYC VMs with AVX512-BF16
    and an Intel one with AMX that path ran in bf16 in about 0.6x of its float32 time."""
    if not cpu_has_bf16():
        return False
    share = bf16_probe_share()
    log.info(
        "bf16 probe: %.2fx float32's time on this CPU (bf16 is taken at %.2fx or less): %s",
        share,
        BF16_SHARE,
        "bfloat16" if share <= BF16_SHARE else "float32",
    )
    return share <= BF16_SHARE


@lru_cache
def bf16_probe_share() -> float:
    """bf16 autocast's time as a share of float32's on a small stack of the 3x3 convolutions the networks
    are made of (16 to 64 channels, channels-last, as the service runs them): medians of runs taken in turns,
    measured once per process (about half a second), on the thread that will run the networks. The global
    random state is left as it was: a training run seeded before it draws the same numbers either way."""
    with torch.random.fork_rng(devices=[]):
        return _probe()


def _probe() -> float:
    layers = [torch.nn.Conv2d(c, c, 3, padding=1) for c in (16, 32, 64)]
    inputs = [torch.randn(4, c, s, s).to(memory_format=torch.channels_last) for c, s in ((16, 96), (32, 48), (64, 24))]
    for layer in layers:
        layer.eval().to(memory_format=torch.channels_last)

    def run(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for layer, x in zip(layers, inputs):
                for _ in range(2):
                    layer(x)
        return time.perf_counter() - start

    for bf16 in (False, True, False, True):  # warm-up: oneDNN builds its kernels
        run(bf16)
    fp32_times, bf16_times = [], []
    for _ in range(5):
        fp32_times.append(run(False))
        bf16_times.append(run(True))
    return statistics.median(bf16_times) / statistics.median(fp32_times)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DIFFUSION_DEVICE=cuda but no CUDA device is available")
    if choice in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the network, or None for plain float32.

    bfloat16 by default on CUDA and on a CPU where it pays (``cpu_prefers_bf16``: native, and measured
    faster): it keeps float32's range, so the UNet's activations cannot overflow as they can in float16,
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
