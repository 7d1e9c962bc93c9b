"""Sample-mode denoising averages several reverse-diffusion samples when asked."""

from __future__ import annotations

import numpy as np

from app.jobs import DenoiseSpec, ImageData
from tests.api.helpers import photo
from tests.engine.harness import EngineHarness
from tests.engine.test_engine import pixels


def run(harness, job_id, image, **options) -> tuple[np.ndarray, dict]:
    height, width, channels = image.shape
    data = ImageData(width=width, height=height, channels=channels, pixels=image.tobytes())
    harness.submit(job_id, DenoiseSpec(model="tiny-rgb", image=data, sigma=40.0, mode="sample", steps=3, sampler="ddpm", **options))
    event = harness.outcome(job_id)
    assert event.type == "succeeded", event.error
    return pixels(event).astype(np.float64), event.result.info


def test_averaged_samples_are_the_mean_of_the_single_samples(store):
    harness = EngineHarness(store)
    try:
        image = photo(32, 32, seed=2)  # one tile: sample k of seed s draws with seed s + k
        first, _ = run(harness, "a", image, seed=7)
        second, _ = run(harness, "b", image, seed=8)
        both, info = run(harness, "c", image, seed=7, samples=2)
    finally:
        harness.close()
    assert info["samples"] == 2
    assert np.abs(first - second).max() > 10  # the two samples really differ (ancestral noise)
    # averaging happens before rounding to uint8, so the mean of the rounded singles is within one level
    assert np.abs(both - (first + second) / 2).max() <= 1.0
