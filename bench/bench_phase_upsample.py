"""What the loader's phase upsamplers (app/families/phase_upsample.py) save on Stable Diffusion's shapes, on
this machine (a benchmark, not a test): random weights, since speed does not depend on them.

    python bench/bench_phase_upsample.py              # SD's VAE decoding a 64x64 latent, SD 1.5's UNet at 64x64
    python bench/bench_phase_upsample.py --turns 5

Each network runs with diffusers' own ``Upsample2D`` and with the phase rewrite, the two taking turns so a
slow minute of a shared VM falls on both; prints the median seconds of each, their ratio, and the largest
difference between their outputs.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_denoise_speed import timed  # noqa: E402
from bench_latent import sd15_unet, sd_vae  # noqa: E402

from app.families.phase_upsample import phase_upsamplers  # noqa: E402


@torch.no_grad()
def in_turns(name: str, plain, phase, turns: int) -> None:
    (a, plain_out), (b, phase_out) = timed(plain, phase, repeats=turns)
    diff = (plain_out - phase_out).abs().max().item()
    scale = plain_out.abs().max().item()
    print(f"| {name} | {a:.3f} | {b:.3f} | {b / a:.2f} | {diff:.1e} (of {scale:.1f}) |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, float32, the layout the service loads them in\n")
    print("| network | diffusers' Upsample2D (s) | phase upsamplers (s) | ratio | largest difference |")
    print("|---|---:|---:|---:|---:|")
    vae = sd_vae()  # the service loads latent families as diffusers does (no channels-last)
    fast_vae = copy.deepcopy(vae)
    replaced = phase_upsamplers(fast_vae)
    z = torch.randn(1, 4, 64, 64)
    in_turns(
        f"SD VAE decode, 64x64 latent -> 512x512 ({replaced} upsamplers)",
        lambda: vae.decode(z).sample,
        lambda: fast_vae.decode(z).sample,
        args.turns,
    )
    unet = sd15_unet()
    fast_unet = copy.deepcopy(unet)
    replaced = phase_upsamplers(fast_unet)
    x = torch.randn(1, 4, 64, 64)
    t, text = torch.tensor([500.0]), torch.randn(1, 77, 768)
    in_turns(
        f"SD 1.5 UNet, one 64x64 row ({replaced} upsamplers)",
        lambda: unet(x, t, encoder_hidden_states=text).sample,
        lambda: fast_unet(x, t, encoder_hidden_states=text).sample,
        args.turns,
    )


if __name__ == "__main__":
    main()
