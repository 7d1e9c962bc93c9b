"""Denoising averages several views when asked: reverse-diffusion samples (sample mode) and
flipped/rotated copies of the image (geometric self-ensemble)."""

from __future__ import annotations

import numpy as np

import pytest
import torch

from app.diffusion.layout import ENSEMBLE_ORDER
from app.diffusion.pixels import apply_transform, invert_transform
from app.jobs import DenoiseSpec, ImageData
from tests.api.helpers import photo
from tests.engine.harness import EngineHarness, pixels


def run(harness, job_id, image, **options) -> tuple[np.ndarray, dict]:
    height, width, channels = image.shape
    data = ImageData(width=width, height=height, channels=channels, pixels=image.tobytes())
    options = {"mode": "sample", "steps": 3, "sampler": "ddpm", **options}
    harness.submit(job_id, DenoiseSpec(model="tiny-rgb", image=data, sigma=40.0, **options))
    event = harness.outcome(job_id)
    assert event.type == "succeeded", event.error
    return pixels(event).astype(np.float64), event.result.info


@pytest.mark.parametrize("size, tiles", [((32, 32), 1), ((80, 96), 4)], ids=["one tile", "four tiles"])
def test_averaged_samples_are_the_mean_of_the_single_samples(store, size, tiles):
    harness = EngineHarness(store)
    try:
        image = photo(*size, seed=2)  # sample k of seed s draws as the single sample of seed s + k, tiled or not
        first, _ = run(harness, "a", image, seed=7)
        second, _ = run(harness, "b", image, seed=8)
        both, info = run(harness, "c", image, seed=7, samples=2)
    finally:
        harness.close()
    assert info["samples"] == 2 and info["tiles"] == tiles
    assert np.abs(first - second).max() > 10  # the two samples really differ (ancestral noise)
    # averaging happens before rounding to uint8, so the mean of the rounded singles is within one level
    assert np.abs(both - (first + second) / 2).max() <= 1.0


@pytest.mark.parametrize("transform", ENSEMBLE_ORDER)
def test_every_ensemble_transform_is_undone(transform):
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    assert torch.equal(invert_transform(apply_transform(x, transform), transform), x)


def test_ensemble_of_two_is_the_mean_of_the_image_and_its_mirror(store):
    harness = EngineHarness(store)
    try:
        image = photo(32, 32, seed=5)  # one tile, no padding: the mirror view is the mirrored image
        plain, _ = run(harness, "a", image, mode="mmse", steps=1)
        mirrored, _ = run(harness, "b", np.ascontiguousarray(image[:, ::-1]), mode="mmse", steps=1)
        both, info = run(harness, "c", image, mode="mmse", steps=1, ensemble=2)
    finally:
        harness.close()
    assert info["ensemble"] == 2
    assert np.abs(plain - mirrored[:, ::-1]).max() > 2  # the tiny network is not mirror-symmetric
    assert np.abs(both - (plain + mirrored[:, ::-1]) / 2).max() <= 1.0
