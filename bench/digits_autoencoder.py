"""A second, independent feature space for FID on digits: the 32-d latent of a small convolutional
autoencoder, trained to reconstruct (no labels) on half of each class of the training digits, where the
classifier (bench/digits_classifier.py) learnt to label all of them. A different kind of network with a
different objective on other data: a generator that fools one space is unlikely to fool both. Weights:
bench/assets/digits_autoencoder.safetensors, from bench/train_digits_autoencoder.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from digits_classifier import to_input  # noqa: F401  (the same input as the classifier; re-exported)

ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS = ASSETS / "digits_autoencoder.safetensors"
CARD = ASSETS / "digits_autoencoder.json"
LATENT = 32


class DigitsAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1),  # 14
            nn.SiLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),  # 7
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, LATENT),
        )
        self.decoder = nn.Sequential(
            nn.Linear(LATENT, 64 * 7 * 7),
            nn.SiLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def load_autoencoder() -> DigitsAutoencoder:
    net = DigitsAutoencoder()
    net.load_state_dict(load_file(WEIGHTS))
    return net.eval()


@torch.no_grad()
def encode(net: DigitsAutoencoder, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """The 32-d latents of uint8 [N, 28, 28] digits."""
    return np.concatenate(
        [net.encoder(to_input(images[s : s + batch])).numpy().astype(np.float64) for s in range(0, len(images), batch)]
    )


def card() -> dict:
    return json.loads(CARD.read_text())
