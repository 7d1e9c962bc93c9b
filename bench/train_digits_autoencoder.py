"""Train the autoencoder whose latent is the second FID feature space (bench/digits_autoencoder.py) on the
first half of the training digits; report its held-out reconstruction error.

python bench/train_digits_autoencoder.py     # about two minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))
sys.path.insert(0, str(HERE.parent))

from digits_autoencoder import CARD, WEIGHTS, DigitsAutoencoder, to_input  # noqa: E402
from fetch_mnist import load as load_mnist  # noqa: E402


def main(epochs: int = 15, seed: int = 0) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = load_mnist()
    x = data["train_x"][: len(data["train_x"]) // 2]  # the first half: data the classifier is not alone on
    net = DigitsAutoencoder()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (len(x) // 128 + 1))
    began = time.time()
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(x))
        for start in range(0, len(x), 128):
            batch = to_input(x[order[start : start + 128]])
            loss = F.mse_loss(net(batch), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            held = to_input(data["heldout_x"])
            error = float(F.mse_loss(net(held), held))
        print(f"epoch {epoch + 1}: held-out reconstruction MSE {error:.4f}", flush=True)
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, WEIGHTS)
    CARD.write_text(
        json.dumps(
            {
                "heldout_reconstruction_mse": round(error, 5),
                "trained_on": f"the first {len(x)} training digits (bench/train_digits_autoencoder.py)",
                "epochs": epochs,
                "seed": seed,
                "train_seconds": round(time.time() - began, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {WEIGHTS}")


if __name__ == "__main__":
    main()
