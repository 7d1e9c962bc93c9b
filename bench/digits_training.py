"""What the two digit-evaluation trainers share (bench/train_digits_classifier.py and
bench/train_digits_autoencoder.py): AdamW with a one-cycle learning rate over shuffled batches of 128, and
the weights plus a JSON record written beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file

BATCH = 128


def fit(
    net: torch.nn.Module,
    count: int,
    batch_loss: Callable[[np.ndarray], torch.Tensor],
    *,
    epochs: int,
    rng: np.random.Generator,
    after_epoch: Callable[[int], None],
) -> None:
    """``epochs`` passes over ``count`` examples in a fresh ``rng`` order; ``batch_loss`` gets a batch's indices,
    ``after_epoch`` the epoch's number (from 1) with the network in eval mode."""
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (count // BATCH + 1))
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(count)
        for start in range(0, count, BATCH):
            loss = batch_loss(order[start : start + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        after_epoch(epoch + 1)


def save(net: torch.nn.Module, weights: Path, card: Path, record: dict) -> None:
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    card.write_text(json.dumps(record, indent=2) + "\n")
