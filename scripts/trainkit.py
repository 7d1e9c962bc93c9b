"""What the training scripts share: the autocast choice, the learning-rate curve, checkpoints, and the
optimisation loop around a script's own loss (AdamW, gradient clipping, EMA weights, resume). The device
comes from the service's own ``app.engine.device.pick_device``."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from app.engine.device import cpu_name, cpu_prefers_bf16  # (one home; tests patch cpu_prefers_bf16 here)


PRECISIONS = ("fp32", "cuda-bf16", "bf16")


def resolve_precision(choice: str, device: torch.device) -> str:
    """The precision a run really uses: ``fp32`` or ``bf16`` (autocast; weights and optimiser stay float32).

    ``cuda-bf16``: bf16 on CUDA only; ``bf16``: on CUDA and on a CPU where it pays (AMX, or AVX512-BF16
    on AMD: ``cpu_prefers_bf16``), float32 elsewhere."""
    if choice not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {choice!r}")
    if device.type == "cuda" and choice != "fp32":
        return "bf16"
    if device.type == "cpu" and choice == "bf16" and cpu_prefers_bf16():
        return "bf16"
    return "fp32"


def autocast_for(device: torch.device, precision: str):
    """The autocast context for a resolved ``precision`` on ``device``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def lr_at(step: int, *, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to 10% of it at ``total``, and 10% from there on."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return decayed((step - warmup) / max(1, total - warmup), peak)


def decayed(progress: float, peak: float) -> float:
    """The cosine decay from ``peak`` (``progress`` 0) to 10% of it (``progress`` 1)."""
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Checkpoints:
    """One rolling ``latest.pt`` per run folder, replaced atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.latest = self.folder / "latest.pt"

    def load(self, device: torch.device) -> dict | None:
        if not self.latest.exists():
            return None
        return torch.load(self.latest, map_location=device, weights_only=True)

    def save(self, state: dict) -> None:
        tmp = self.folder / "tmp.pt"
        torch.save(state, tmp)
        tmp.replace(self.latest)


def add_training_args(
    parser: argparse.ArgumentParser,
    *,
    name: str,
    iters: int,
    batch: int,
    lr: float,
    channels: list[int],
    precision: str = "cuda-bf16",
    decay_iters: int | None = None,
    layers_per_block: int = 1,
) -> None:
    """The options every training script takes; ``name`` picks the default output and checkpoint folders."""
    parser.add_argument("--out", default=f"model_store/{name}")
    parser.add_argument("--ckpt-dir", default=f".cache/ckpt/{name}")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--iters", type=int, default=iters)
    parser.add_argument(
        "--decay-iters",
        type=int,
        default=decay_iters,
        help="length of the cosine decay (default: --iters); the learning rate stays at its floor after it",
    )
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--channels", type=int, nargs="+", default=channels)
    parser.add_argument("--layers-per-block", type=int, default=layers_per_block)
    parser.add_argument("--ckpt-every", type=int, default=250)
    parser.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="end the run, checkpointed, once its wall time (resumed parts included) reaches this, --iters "
        "being then at most; after the warm-up the cosine decay follows the clock and reaches its floor at "
        "that time (for a machine whose speed is not known beforehand, such as a lent GPU)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=precision,
        help="bf16 autocast: cuda-bf16 = on CUDA only; bf16 = also on a CPU with native bf16 (AVX512-BF16/AMX)",
    )


class TrainLoop:
    """AdamW with warm-up and cosine decay, gradient clipping at 1, EMA weights, a checkpoint every
    ``--ckpt-every`` iterations, resumed from the newest one unless ``--fresh``.

    ``rng`` is the script's numpy generator for data and timesteps; on resume it and torch's seed are
    re-derived from (seed, step), so a resumed run does not replay the draws of its first part.
    """

    def __init__(self, unet: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> None:
        self.unet, self.args, self.device = unet, args, device
        self.precision = resolve_precision(args.precision, device)
        self.decay_iters = args.decay_iters or args.iters
        self.ema = EMAModel(unet.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=2 / 3, foreach=True)
        self.optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
        self.checkpoints = Checkpoints(args.ckpt_dir)
        self.rng = np.random.default_rng(args.seed)
        self.start, self.elapsed_before = 0, 0.0
        state = None if args.fresh else self.checkpoints.load(device)
        if state is not None:
            unet.load_state_dict(state["unet"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.ema.load_state_dict(state["ema"])
            self.start, self.elapsed_before = state["step"], state["elapsed_s"]
            self.rng = np.random.default_rng([args.seed, self.start])
            torch.manual_seed(args.seed + self.start)
            print(f"resumed from {self.checkpoints.latest} at step {self.start}")
        self.ema.to(device)
        self.done = self.start  # iterations run, the resumed ones included
        self.began = time.time()
        self.bar = None
        self.wall_clock = self.elapsed_before

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.began

    def steps(self, desc: str) -> Iterator[int]:
        """The iterations still to run, each with its learning rate set; call ``update`` once in each. With
        ``--stop-after``, they end (checkpointed) once the run's wall time reaches it."""
        args = self.args
        self.began = time.time()
        self.bar = tqdm(range(self.start, args.iters), initial=self.start, total=args.iters, desc=desc)
        for step in self.bar:
            if args.stop_after and self.elapsed >= args.stop_after:
                if self.done > self.start:
                    self._save()
                print(f"stopped at iteration {step} after {self.elapsed:.0f} s (--stop-after {args.stop_after:g})")
                break
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr(step)
            yield step
        self.wall_clock = self.elapsed

    def lr(self, step: int) -> float:
        """The learning rate of ``step``: by iterations, or after the warm-up by the clock (``--stop-after``)."""
        args = self.args
        if args.stop_after and step >= args.warmup:
            return decayed(self.elapsed / args.stop_after, args.lr)
        return lr_at(step, total=self.decay_iters, peak=args.lr, warmup=args.warmup)

    def autocast(self):
        """The forward pass's autocast context (see ``--precision``)."""
        return autocast_for(self.device, self.precision)

    def update(self, step: int, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss``, the EMA update, and a checkpoint when one is due."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.ema.step(self.unet.parameters())
        self.done = step + 1
        if self.done % 10 == 0 or self.done == self.args.iters:  # reading the loss waits for the GPU: not every step
            self.bar.set_postfix(loss=f"{loss.item():.4f}")
        if self.done % self.args.ckpt_every == 0 or self.done == self.args.iters:
            self._save()

    def _save(self) -> None:
        self.checkpoints.save(
            {
                "unet": self.unet.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict(),
                "step": self.done,
                "elapsed_s": self.elapsed,
            }
        )

    def finish(self) -> torch.nn.Module:
        """The network with its EMA weights, on the CPU, in eval mode."""
        self.ema.copy_to(self.unet.parameters())
        return self.unet.to("cpu").eval()

    def record(self, **extra) -> dict:
        """The card's ``training`` entry: the shared recipe fields plus the script's own ``extra``."""
        args, device = self.args, self.device
        return {
            **extra,
            "iters": self.done,
            **({"stop_after_s": args.stop_after} if args.stop_after else {"decay_iters": self.decay_iters}),
            "batch": args.batch,
            "lr": args.lr,
            "ema_decay": args.ema_decay,
            "channels": list(args.channels),
            "layers_per_block": args.layers_per_block,
            "seed": args.seed,
            "device": device.type,
            "precision": self.precision,
            "wall_clock_s": round(self.wall_clock, 1),
            "host": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"{cpu_name()}, {torch.get_num_threads()} threads",
            "parameters": sum(p.numel() for p in self.unet.parameters()),
        }
