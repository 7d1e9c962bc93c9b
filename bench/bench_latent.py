"""Stable-Diffusion-1.5-shaped throughput on this machine (a benchmark, not a test): random weights, since
speed does not depend on them; 64x64 latents (512x512 images).

    python bench/bench_latent.py                 # raw UNet, then the service with 8 clients; a few steps
    python bench/bench_latent.py --steps 2 --clients 4

1. raw: the UNet2DConditionModel alone (SD 1.5's shape: 320/640/1280/1280, cross-attention 768), rows/s at
   batch 1 and at the batch the service then forms (clients x 2 with guidance).
2. service: a whole StableDiffusionPipeline folder (that UNet, an SD-shaped VAE, a CLIP-L-shaped text encoder)
   served over HTTP; ``clients`` concurrent requests of one 512x512 image each, ``steps`` steps, guidance on.
Prints rows/s (network rows: a guided image is two) and images/s for both, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_service import Server  # noqa: E402


def sd15_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768).eval()  # diffusers' defaults: SD 1.5


def sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
    ).eval()  # SD's VAE


def write_folder(folder: Path, unet) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import clip_text_encoder, save_stable_diffusion, sd_scheduler, tiny_tokenizer

    vae = sd_vae()
    tokenizer = tiny_tokenizer()
    text = clip_text_encoder(tokenizer, width=768, layers=12, heads=12, positions=77)  # CLIP ViT-L/14's
    tokenizer.model_max_length = 77
    save_stable_diffusion(folder, unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=sd_scheduler())


@torch.no_grad()
def raw(unet, batch: int, passes: int) -> float:
    x, t, text = torch.randn(batch, 4, 64, 64), torch.full((batch,), 500.0), torch.randn(batch, 77, 768)
    unet(x, t, encoder_hidden_states=text)  # warm-up
    began = time.perf_counter()
    for _ in range(passes):
        unet(x, t, encoder_hidden_states=text)
    return batch * passes / (time.perf_counter() - began)


async def service(url: str, clients: int, steps: int) -> float:
    async with httpx.AsyncClient(timeout=3600) as http:
        body = {
            "model": "sd15-shape",
            "prompt": "a lighthouse",
            "steps": steps,
            "guidance_scale": 6.5,
            "sampler": "ddim",
        }
        began = time.perf_counter()
        answers = await asyncio.gather(
            *(http.post(url + "/v1/generate", json={**body, "seed": i}) for i in range(clients))
        )
        elapsed = time.perf_counter() - began
    assert all(a.status_code == 200 for a in answers), [a.text[:200] for a in answers]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    unet = sd15_unet()
    print(f"UNet parameters: {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M", flush=True)
    one = raw(unet, 1, 2)
    batch = args.clients * 2
    many = raw(unet, batch, 1)
    print(f"raw UNet: batch 1 {one:.3f} rows/s, batch {batch} {many:.3f} rows/s", flush=True)
    store = Path(tempfile.mkdtemp(prefix="bench-latent-"))
    write_folder(store / "sd15-shape", unet)
    del unet
    sizes = {p.parent.name: p.stat().st_size / 1e9 for p in (store / "sd15-shape").rglob("*.safetensors")}
    print("weights (GB):", {k: round(v, 2) for k, v in sizes.items()}, flush=True)
    server = Server(store, 64, DIFFUSION_SYNC_TIMEOUT_S="3600", DIFFUSION_MAX_BATCH_PIXELS=str(64 * 64 * 64))
    try:
        elapsed = asyncio.run(service(server.url, args.clients, args.steps))
    finally:
        server.close()
    rows = args.clients * 2 * args.steps
    print(
        f"service, {args.clients} clients x 1 image x {args.steps} steps, guided: {elapsed:.1f} s, "
        f"{rows / elapsed:.3f} rows/s, {args.clients / elapsed:.4f} images/s (VAE decode included)"
    )
    print(f"service rows/s over raw batch-1 rows/s: {rows / elapsed / one:.2f}")


if __name__ == "__main__":
    main()
