"""A large image denoised in overlapping tiles matches the same image denoised whole: no seams."""

from __future__ import annotations

import numpy as np

from app.jobs import DenoiseSpec, ImageData
from tests.api.helpers import photo
from tests.engine.harness import EngineHarness, pixels


def denoise(store, tile, overlap, image):
    h = EngineHarness(store, denoise_tile=tile, denoise_overlap=overlap)
    try:
        height, width, channels = image.shape
        data = ImageData(width=width, height=height, channels=channels, pixels=image.tobytes())
        h.submit("d", DenoiseSpec(model="tiny-rgb", image=data, sigma=10.0))
        event = h.outcome("d")
        assert event.type == "succeeded", event.error
        return pixels(event), event.result.info["tiles"]
    finally:
        h.close()


def test_tiled_denoise_matches_untiled(store):
    image = photo(96, 128, seed=4)
    whole, one = denoise(store, 256, 32, image)
    tiled, many = denoise(store, 48, 16, image)
    assert one == 1 and many > 4
    diff = np.abs(whole - tiled)
    assert diff.mean() < 1.0
    assert np.percentile(diff, 99) <= 3
    # No seams: the error along tile borders is not larger than elsewhere.
    columns = diff.mean(axis=(0, 2))
    assert columns.max() <= 3 * columns.mean() + 1
