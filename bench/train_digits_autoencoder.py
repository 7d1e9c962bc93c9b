"""Train the autoencoder whose latent is the second FID feature space (bench/digits_autoencoder.py) on half
of the training digits, drawn at random in each class (seeded); report its held-out reconstruction error.

python bench/train_digits_autoencoder.py     # about two minutes on 2 CPU cores
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))
sys.path.insert(0, str(HERE.parent))

from digits_autoencoder import CARD, WEIGHTS, DigitsAutoencoder, to_input  # noqa: E402
from digits_training import fit, save  # noqa: E402
from fetch_mnist import load as load_mnist  # noqa: E402


def main(epochs: int = 15, seed: int = 0) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = load_mnist()
    # half of each class, drawn at random: the training digits are stored sorted by class, so "the first half"
    # (the rule until 2026-12-06) held digits 0-4 only, and the latent knew nothing of 5-9
    labels = data["train_y"]
    picked = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: (labels == c).sum() // 2] for c in range(10)])
    )
    x = data["train_x"][picked]
    net = DigitsAutoencoder()
    held = to_input(data["heldout_x"])
    errors = []

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        batch = to_input(x[idx])
        return F.mse_loss(net(batch), batch)

    def after_epoch(epoch: int) -> None:
        with torch.no_grad():
            errors.append(float(F.mse_loss(net(held), held)))
        print(f"epoch {epoch}: held-out reconstruction MSE {errors[-1]:.4f}", flush=True)

    began = time.time()
    fit(net, len(x), batch_loss, epochs=epochs, rng=rng, after_epoch=after_epoch)
    record = {
        "heldout_reconstruction_mse": round(errors[-1], 5),
        "trained_on": f"{len(x)} training digits, half of each class drawn with the seed below "
        "(bench/train_digits_autoencoder.py)",
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(time.time() - began, 1),
    }
    save(net, WEIGHTS, CARD, record)
    print(f"wrote {WEIGHTS}")


if __name__ == "__main__":
    main()
