"""bf16 autocast against float32 on bare 3x3 convolutions, the layers the networks are made of: whether a CPU
that has bf16 instructions runs them faster (app/engine/device.py takes bf16 only where its probe says so).

    python bench/bench_bf16_convs.py

Four convolutions of C channels in a row, batch 6, H x W, channels-last, torch's threads (2 here): the mean of
20 timed runs after 3 warm-ups, float32 then bf16, per width, and bf16's time as a share of float32's.
"""

from __future__ import annotations

import time

import torch

SHAPES = ((16, 192), (32, 96), (64, 48), (128, 24), (96, 160))


def seconds(channels: int, side: int, bf16: bool, repeats: int = 20) -> float:
    layers = [torch.nn.Conv2d(channels, channels, 3, padding=1) for _ in range(4)]
    stack = torch.nn.Sequential(*layers).eval().to(memory_format=torch.channels_last)
    x = torch.randn(6, channels, side, side).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(3):
            stack(x)
        start = time.perf_counter()
        for _ in range(repeats):
            stack(x)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for channels, side in SHAPES:
        fp32, bf16 = seconds(channels, side, False), seconds(channels, side, True)
        print(
            f"{channels:3d} channels, {side}x{side}: float32 {fp32 * 1e3:7.2f} ms, bf16 {bf16 * 1e3:7.2f} ms, "
            f"bf16/float32 {bf16 / fp32:.2f}"
        )


if __name__ == "__main__":
    main()
