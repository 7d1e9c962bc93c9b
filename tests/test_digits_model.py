"""The shipped digits model: its card's checksum holds, and the digits it draws are read as their class
by the shipped evaluation classifier (fixed seeds, a handful of images at the card's defaults)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.store.catalog import scan_store
from app.store.hashing import sha256_file
from app.store.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "model_store"
sys.path.insert(0, str(ROOT / "bench"))

pytestmark = pytest.mark.skipif(not (STORE / "digits").is_dir(), reason="model_store/digits not present")


def test_card_sha256_matches_the_weights():
    entry = scan_store(STORE)["digits"]
    assert entry.status == "ready", entry.error
    for rel, digest in entry.card.sha256.items():
        assert sha256_file(STORE / "digits" / rel) == digest


def test_generated_digits_are_read_as_their_class():
    from digits_classifier import classify, load_classifier
    from eval_digits import generate

    model = load_model(scan_store(STORE)["digits"], torch.device("cpu"))
    defaults = model.entry.card.defaults
    labels = np.repeat(np.array([0, 3, 7, 9]), 2)
    images = generate(
        model, labels, sampler=defaults.sampler, steps=defaults.steps, guidance=defaults.guidance_scale, seed=11
    )
    predicted, _ = classify(load_classifier(), images)
    assert (predicted == labels).all(), f"asked {labels.tolist()}, read {predicted.tolist()}"
