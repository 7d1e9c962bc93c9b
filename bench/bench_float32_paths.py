"""Where the photo network's float32 time goes, and what a compiled path buys (CPUs without native bf16):

    ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_float32_paths.py    # oneDNN as on a CPU without AVX-512
    python bench/bench_float32_paths.py --no-compile                # skip torch.compile (about a minute)

Three measurements on the shipped ``photos`` network, float32, channels-last, the loader's phase
upsamplers, on the service's tiles of a 640x400 photo (6 tiles of 224x208 in one batch):

1. oneDNN's 3x3 convolution rate (GFLOP/s) at the widths and resolutions of the network, and at
   FFDNet's (96 channels at half resolution), each alone: is a narrow layer slower per FLOP?
2. A profile of the eager forward pass: each operator's share of the CPU time.
3. The eager pass against ``torch.compile`` (inductor, with ``freezing``: weights prepacked for oneDNN,
   the element-wise work around the convolutions fused), taking turns; the compile time; the largest
   difference between their outputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_denoise_speed import timed  # noqa: E402

from app.engine.device import cpu_name  # noqa: E402
from app.store.catalog import scan_store  # noqa: E402
from app.store.loader import load_model  # noqa: E402

TILES = (6, 208, 224)  # the service's plan for mate-LadyBird-x4: batch, height, width
CONVS = [  # (in, out, height, width): the network's levels, then FFDNet's body at half resolution
    (3, 16, 400, 640),
    (16, 16, 400, 640),
    (32, 16, 400, 640),
    (16, 32, 200, 320),
    (32, 32, 200, 320),
    (64, 64, 100, 160),
    (128, 128, 50, 80),
    (96, 96, 200, 320),
]


def seconds(fn, repeats: int) -> float:
    """The median of ``repeats`` timed calls after a warm-up (bench_denoise_speed's timing, one function)."""
    return timed(fn, repeats=repeats)[0][0]


def conv_rates(repeats: int) -> None:
    print("\n| 3x3 convolution | pixels | ms | GFLOP/s |\n|---|---:|---:|---:|")
    for cin, cout, h, w in CONVS:
        x = torch.randn(1, cin, h, w).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=torch.channels_last)
        s = seconds(lambda conv=conv, x=x: conv(x), repeats)
        print(f"| {cin} -> {cout} | {h}x{w} | {s * 1e3:.2f} | {2 * cin * cout * 9 * h * w / s / 1e9:.0f} |")


def profile(unet, x, t, rows: int = 8) -> None:
    with torch.profiler.profile() as prof:
        for _ in range(3):
            unet(x, t)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("\n| operator | share of CPU time |\n|---|---:|")
    for event in events[:rows]:
        print(f"| {event.key} | {100 * event.self_cpu_time_total / total:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(ROOT / "model_store"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, float32, channels-last")
    conv_rates(args.repeats)
    unet = load_model(scan_store(Path(args.store))["photos"], torch.device("cpu")).unet.eval()
    x = torch.randn(TILES[0], 3, TILES[1], TILES[2]).contiguous(memory_format=torch.channels_last)
    t = torch.full((TILES[0],), 50)
    with torch.inference_mode():
        profile(unet, x, t)
    if args.no_compile:
        return
    import torch._inductor.config as inductor

    inductor.freezing = True
    compiled = torch.compile(unet)
    with torch.no_grad():
        began = time.perf_counter()
        compiled(x, t)
        compile_s = time.perf_counter() - began
        eager_s, compiled_s = [], []
        for _ in range(args.turns):
            eager_s.append(seconds(lambda: unet(x, t), args.repeats))
            compiled_s.append(seconds(lambda: compiled(x, t), args.repeats))
        difference = float((unet(x, t).sample - compiled(x, t).sample).abs().max())
    print(f"\ncompiling (first call): {compile_s:.0f} s; largest output difference {difference:.1e}")
    print("\n| turn | eager (s per pass) | compiled | compiled / eager |\n|---:|---:|---:|---:|")
    for turn, (e, c) in enumerate(zip(eager_s, compiled_s), 1):
        print(f"| {turn} | {e:.3f} | {c:.3f} | {c / e:.2f} |")


if __name__ == "__main__":
    main()
