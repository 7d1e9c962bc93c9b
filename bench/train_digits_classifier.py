"""Train the evaluation classifier on the digits training split; report held-out accuracy.

python bench/train_digits_classifier.py     # a few minutes on 2 CPU cores
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

from digits_classifier import CARD, WEIGHTS, DigitsClassifier, classify, to_input  # noqa: E402
from fetch_mnist import load as load_mnist  # noqa: E402


def main(epochs: int = 12, seed: int = 0) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = load_mnist()
    x, y = data["train_x"], torch.from_numpy(data["train_y"])
    net = DigitsClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (len(x) // 128 + 1))
    began = time.time()
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(x))
        for start in range(0, len(x), 128):
            idx = order[start : start + 128]
            batch = to_input(x[idx])
            # light augmentation: shifts of up to 2 pixels
            dy, dx = rng.integers(-2, 3, 2)
            batch = torch.roll(batch, shifts=(int(dy), int(dx)), dims=(2, 3))
            loss = F.cross_entropy(net(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        pred, _ = classify(net, data["heldout_x"])
        print(f"epoch {epoch + 1}: held-out accuracy {(pred == data['heldout_y']).mean():.4f}", flush=True)
    pred, _ = classify(net, data["heldout_x"])
    accuracy = float((pred == data["heldout_y"]).mean())
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, WEIGHTS)
    CARD.write_text(
        json.dumps(
            {
                "heldout_accuracy": accuracy,
                "heldout_size": int(len(pred)),
                "epochs": epochs,
                "seed": seed,
                "train_seconds": round(time.time() - began, 1),
                "script": "bench/train_digits_classifier.py",
            },
            indent=2,
        )
        + "\n"
    )
    print(f"held-out accuracy {accuracy:.4f}; wrote {WEIGHTS}")


if __name__ == "__main__":
    main()
