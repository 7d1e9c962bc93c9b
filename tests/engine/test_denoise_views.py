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


@pytest.mark.parametrize(
    "size, tiles, ensemble",
    [((32, 32), 1, 1), ((80, 96), 4, 1), ((32, 32), 1, 2)],
    ids=["one tile", "four tiles", "two views each"],
)
def test_averaged_samples_are_the_mean_of_the_single_samples(store, size, tiles, ensemble):
    harness = EngineHarness(store)
    try:
        image = photo(*size, seed=2)  # sample k of seed s draws as the single sample of seed s + k, tiled or not
        first, _ = run(harness, "a", image, seed=7, ensemble=ensemble)
        second, _ = run(harness, "b", image, seed=8, ensemble=ensemble)
        both, info = run(harness, "c", image, seed=7, samples=2, ensemble=ensemble)
    finally:
        harness.close()
    assert info["samples"] == 2 and info["tiles"] == tiles and info.get("ensemble", 1) == ensemble
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


def test_neighbouring_seeds_share_no_noise_field_across_their_views():
    """The mirror view of seed s drew, in image coordinates, exactly what the identity view of seed s + 1
    drew: with ensemble 8, seeds s and s + 1 shared 7 of their 8 fields and came out near-duplicates."""
    from app.diffusion.layout import DenoiseLayout
    from app.engine.plans import _tile_noise

    ensemble = len(ENSEMBLE_ORDER)
    layout = DenoiseLayout.of(
        height=16,
        width=16,
        image_channels=3,
        model_channels=3,
        factor=1,
        tile=64,
        overlap=8,
        samples=1,
        ensemble=ensemble,
    )

    def fields(seed):
        return [
            invert_transform(_tile_noise(seed, ensemble, layout, (view, 0, 0), 3)(5)[0], layout.views[view])
            for view in range(ensemble)
        ]

    mine, next_seed = fields(100), fields(101)
    for a in mine:
        for b in next_seed:
            assert not torch.equal(a, b)
