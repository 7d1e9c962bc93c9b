"""Train the photo denoiser (an RGB diffusion model on photo crops) into the model store.

    python scripts/train_denoiser.py                      # defaults: the shipped recipe
    python scripts/train_denoiser.py --iters 100 --out /tmp/photos-smoke

Recipe: a fully convolutional diffusers ``UNet2DModel`` (no attention anywhere, so any image size
works), epsilon prediction, the standard linear DDPM schedule (1,000 steps), trained on random crops
of the training photos (``scripts/fetch_photos.py``) with the 8 flips/rotations as augmentation.

Timesteps are drawn where denoising uses them, while every timestep keeps some weight (so ``sample``
mode's reverse chain and the model stay a valid diffusion model):
- 40%: sigma (0-255 scale) log-uniform in [1, 100]; 40%: uniform in [5, 100]; the timestep is the
  schedule's real-valued t for that sigma (the same ``sigma_to_t`` the service uses);
- 20%: t uniform over all 1,000 steps.
Loss: the epsilon MSE times sigma^2 / (sigma^2 + c^2), c = 5 on the 0-255 scale, i.e. the x_0 error
relative to the noise level, with the very lowest levels (where the noise cannot be told from grain)
weighted down. Grey photos are replicated to three channels with the same noise in each, which is
what the service does with a grey upload. EMA weights, AdamW with warm-up and cosine decay, a
checkpoint every ``--ckpt-every`` iterations (resumed automatically), CUDA with bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from app.diffusion.schedule import NoiseSchedule  # noqa: E402
from app.store.card import ModelCard, SamplingDefaults  # noqa: E402
from app.store.writer import save_model  # noqa: E402
from fetch_photos import load as load_photos  # noqa: E402
from trainkit import Checkpoints, autocast_for, lr_at, pick_device  # noqa: E402

LOSS_FLOOR_255 = 5.0


def build_unet(channels: tuple[int, ...], layers_per_block: int) -> UNet2DModel:
    return UNet2DModel(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        add_attention=False,
        norm_num_groups=8,
    )


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
        timestep_spacing="trailing",
    )


class CropSampler:
    """Random crops of the training photos, uniform over pixels, with a random flip/rotation."""

    def __init__(self, photos: dict[str, np.ndarray], crop: int, rng: np.random.Generator) -> None:
        self.photos = [torch.from_numpy(p if p.ndim == 3 else p[:, :, None]).permute(2, 0, 1).contiguous() for p in photos.values()]
        self.photos = [p for p in self.photos if min(p.shape[1:]) >= crop]
        areas = np.array([p.shape[1] * p.shape[2] for p in self.photos], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.crop, self.rng = crop, rng

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x_0 in [-1, 1], [B, 3, crop, crop], and a [B] bool mask of the grey crops."""
        crops, grey = [], []
        for index in self.rng.choice(len(self.photos), size=size, p=self.weights):
            photo = self.photos[index]
            top = self.rng.integers(0, photo.shape[1] - self.crop + 1)
            left = self.rng.integers(0, photo.shape[2] - self.crop + 1)
            crop = photo[:, top : top + self.crop, left : left + self.crop]
            crop = torch.rot90(crop, int(self.rng.integers(4)), dims=(1, 2))
            if self.rng.random() < 0.5:
                crop = crop.flip(2)
            grey.append(crop.shape[0] == 1)
            crops.append(crop.expand(3, -1, -1))
        x0 = torch.stack(crops).float().div(127.5).sub(1.0)
        return x0, torch.tensor(grey)


def draw_timesteps(schedule: NoiseSchedule, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-valued timesteps [B] and their alpha_bar [B], weighted toward sigma <= 100 (see the module doc)."""
    ts = []
    for u in rng.random(size):
        if u < 0.4:
            sigma_255 = float(np.exp(rng.uniform(np.log(1.0), np.log(100.0))))
        elif u < 0.8:
            sigma_255 = float(rng.uniform(5.0, 100.0))
        else:
            ts.append(float(rng.integers(0, schedule.num_train_timesteps)))
            continue
        ts.append(schedule.sigma_to_t(2.0 * sigma_255 / 255.0))
    ab = torch.tensor([schedule.alpha_bar(t) for t in ts], dtype=torch.float32)
    return torch.tensor(ts, dtype=torch.float32), ab


def loss_weights(ab: torch.Tensor) -> torch.Tensor:
    """sigma^2 / (sigma^2 + c^2) with sigma^2 = (1 - ab) / ab: the eps MSE -> relative x_0 error, floor c."""
    sigma2 = (1 - ab) / ab
    c = 2.0 * LOSS_FLOOR_255 / 255.0
    return sigma2 / (sigma2 + c**2)


def train(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = pick_device()
    unet = build_unet(tuple(args.channels), args.layers_per_block).to(device)
    schedule = NoiseSchedule.from_config(dict(build_scheduler().config))
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=2 / 3)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    checkpoints = Checkpoints(args.ckpt_dir)
    start, elapsed_before = 0, 0.0
    state = None if args.fresh else checkpoints.load(device)
    if state is not None:
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        start, elapsed_before = state["step"], state["elapsed_s"]
        rng = np.random.default_rng([args.seed, start])
        torch.manual_seed(args.seed + start)
        print(f"resumed from {checkpoints.latest} at step {start}")
    ema.to(device)
    photos = load_photos("train")
    sampler = CropSampler(photos, args.crop, rng)

    began = time.time()
    bar = tqdm(range(start, args.iters), initial=start, total=args.iters, desc="train denoiser")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total=args.iters, peak=args.lr, warmup=args.warmup)
        x0, grey = sampler.batch(args.batch)
        t, ab = draw_timesteps(schedule, args.batch, rng)
        noise = torch.randn_like(x0)
        noise[grey] = noise[grey][:, :1].expand(-1, 3, -1, -1)  # a grey upload's noise is the same in each channel
        abc = ab.view(-1, 1, 1, 1)
        x_t = abc.sqrt() * x0 + (1 - abc).sqrt() * noise
        x_t, noise, t, weights = x_t.to(device), noise.to(device), t.to(device), loss_weights(ab).to(device)
        with autocast_for(device):
            pred = unet(x_t, t).sample
        per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.step(unet.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if done % args.ckpt_every == 0 or done == args.iters:
            checkpoints.save({
                "unet": unet.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict(),
                "step": done, "elapsed_s": elapsed_before + time.time() - began,
            })
    elapsed = elapsed_before + time.time() - began

    ema.copy_to(unet.parameters())
    unet = unet.to("cpu").eval()
    card = ModelCard(
        description="Photo denoiser (RGB; grey photos replicated), trained by scripts/train_denoiser.py",
        tasks=["denoise"],
        channels=3,
        defaults=SamplingDefaults(sampler=args.default_sampler, steps=args.default_steps),
        training={
            "script": "scripts/train_denoiser.py",
            "data": "photos from scikit-image, scikit-learn and Debian mate-backgrounds (scripts/fetch_photos.py), held-out photos excluded",
            "iters": args.iters,
            "batch": args.batch,
            "crop": args.crop,
            "lr": args.lr,
            "ema_decay": args.ema_decay,
            "channels": list(args.channels),
            "layers_per_block": args.layers_per_block,
            "seed": args.seed,
            "device": device.type,
            "wall_clock_s": round(elapsed, 1),
            "parameters": sum(p.numel() for p in unet.parameters()),
        },
    )
    out = save_model(Path(args.out), unet=unet, scheduler=build_scheduler(), card=card)
    print(json.dumps(card.training, indent=2))
    print(f"wrote {out}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="model_store/photos")
    parser.add_argument("--ckpt-dir", default=".cache/ckpt/photos")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--iters", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--ckpt-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default-sampler", default="ddpm", help="sample mode's default sampler (the card's)")
    parser.add_argument("--default-steps", type=int, default=10, help="sample mode's default steps (the card's)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
