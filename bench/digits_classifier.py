"""A small CNN digit classifier: judges generated digits (accuracy) and gives the feature space for FID.

Inception features mean nothing on 28x28 digits and cannot be downloaded here, so FID uses this
network's penultimate layer (128 features). Weights: bench/assets/digits_classifier.safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from app.diffusion.pixels import from_uint8

ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS = ASSETS / "digits_classifier.safetensors"
CARD = ASSETS / "digits_classifier.json"


class DigitsClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] to the classifier's input: [N, 1, 28, 28] in [-1, 1]."""
    return from_uint8(images).unsqueeze(1)


def load_classifier() -> DigitsClassifier:
    net = DigitsClassifier()
    net.load_state_dict(load_file(WEIGHTS))
    return net.eval()


@torch.no_grad()
def classify(net: DigitsClassifier, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, 128-d penultimate features) for uint8 [N, 28, 28] images."""
    labels, feats = [], []
    for start in range(0, len(images), batch):
        f = net.features(to_input(images[start : start + batch]))
        feats.append(f.numpy().astype(np.float64))
        labels.append(net.head(f).argmax(1).numpy())
    return np.concatenate(labels), np.concatenate(feats)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    return float(
        ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(np.clip(middle, 0, None)).sum()
    )


def card() -> dict:
    return json.loads(CARD.read_text())
