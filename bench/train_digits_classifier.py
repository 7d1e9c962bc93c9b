"""Train the evaluation classifier on the digits training split; report held-out accuracy.

python bench/train_digits_classifier.py     # a few minutes on 2 CPU cores
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

from digits_classifier import CARD, WEIGHTS, DigitsClassifier, classify, to_input  # noqa: E402
from digits_training import fit, save  # noqa: E402
from fetch_mnist import load as load_mnist  # noqa: E402


def main(epochs: int = 12, seed: int = 0) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = load_mnist()
    x, y = data["train_x"], torch.from_numpy(data["train_y"])
    net = DigitsClassifier()

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        batch = to_input(x[idx])
        # light augmentation: shifts of up to 2 pixels
        dy, dx = rng.integers(-2, 3, 2)
        batch = torch.roll(batch, shifts=(int(dy), int(dx)), dims=(2, 3))
        return F.cross_entropy(net(batch), y[idx])

    def after_epoch(epoch: int) -> None:
        pred, _ = classify(net, data["heldout_x"])
        print(f"epoch {epoch}: held-out accuracy {(pred == data['heldout_y']).mean():.4f}", flush=True)

    began = time.time()
    fit(net, len(x), batch_loss, epochs=epochs, rng=rng, after_epoch=after_epoch)
    pred, _ = classify(net, data["heldout_x"])
    accuracy = float((pred == data["heldout_y"]).mean())
    record = {
        "heldout_accuracy": accuracy,
        "heldout_size": int(len(pred)),
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(time.time() - began, 1),
        "script": "bench/train_digits_classifier.py",
    }
    save(net, WEIGHTS, CARD, record)
    print(f"held-out accuracy {accuracy:.4f}; wrote {WEIGHTS}")


if __name__ == "__main__":
    main()
