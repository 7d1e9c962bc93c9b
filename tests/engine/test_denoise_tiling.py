"""A large image denoised in overlapping tiles matches the same image denoised whole: no seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.jobs import DenoiseSpec, ImageData
from tests.api.helpers import photo
from tests.engine.harness import EngineHarness, pixels


def denoise(store, tile, overlap, image, **settings):
    h = EngineHarness(store, denoise_tile=tile, denoise_overlap=overlap, **settings)
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


def test_default_tile_follows_the_workers_precision(store):
    """Unset, the tile is 192 where the network computes in bf16 and 640 in float32 (the faster plan where
    time is tightest: a 0.25 Mpx photo in one tile); a set tile holds in both; the API, not knowing the
    worker's precision, prices a job by the smaller default, whose plan has the most pixels."""
    from app.diffusion.layout import DenoiseLayout
    from app.settings import DEFAULT_DENOISE_TILE, Settings

    image = photo(400, 640, seed=5)

    def plan(tile):
        return DenoiseLayout.of(
            height=400,
            width=640,
            image_channels=3,
            model_channels=3,
            factor=1,
            tile=tile,
            overlap=16,
            samples=1,
            ensemble=1,
        )

    reduced, full = plan(DEFAULT_DENOISE_TILE["reduced"]), plan(DEFAULT_DENOISE_TILE["float32"])
    assert len(reduced.boxes) > 1 and len(full.boxes) == 1  # float32: the whole 640x400 photo in one tile
    assert reduced.megapixel_steps(1) > full.megapixel_steps(1)

    _, tiles = denoise(store, None, 16, image, dtype="bfloat16")
    assert tiles == len(reduced.boxes)
    _, tiles = denoise(store, None, 16, image, dtype="float32")
    assert tiles == len(full.boxes)
    _, tiles = denoise(store, 640, 16, image, dtype="bfloat16")
    assert tiles == len(full.boxes)

    assert Settings().denoise_tile_for(None) == DEFAULT_DENOISE_TILE["reduced"]
    assert Settings(denoise_tile=300).denoise_tile_for(None) == 300


def test_an_overlap_too_large_for_the_default_tile_is_refused():
    import pydantic
    from app.settings import Settings

    Settings(denoise_overlap=95)
    with pytest.raises(pydantic.ValidationError, match=r"less than half of denoise_tile \(192, set or by default\)"):
        Settings(denoise_overlap=96)
    Settings(denoise_tile=256, denoise_overlap=127)


def test_tiles_draw_one_noise_field_where_they_overlap():
    """mode: sample draws each step's noise from one field over the image (per view and plane), so two
    tiles' chains draw the same noise where they overlap, whichever way a view turns them."""

    from app.diffusion.layout import DenoiseLayout
    from app.diffusion.pixels import invert_transform
    from app.engine.plans import _tile_noise

    layout = DenoiseLayout.of(
        height=150, width=200, image_channels=3, model_channels=3, factor=8, tile=64, overlap=16, samples=2, ensemble=8
    )
    assert len(layout.boxes) > 4
    fields = []
    for view in range(len(layout.views)):
        canvas = torch.full((3, layout.height, layout.width), float("nan"))
        shared = 0
        for b, (y, x, h, w) in enumerate(layout.boxes):
            drawn = _tile_noise(5, 8, layout, (view, 0, b), 3)(2)
            assert drawn.shape[1:] == ((3, w, h) if layout.views[view][0] % 2 else (3, h, w))
            noise = invert_transform(drawn[0], layout.views[view])
            region = canvas[:, y : y + h, x : x + w]
            seen = ~torch.isnan(region)
            assert torch.equal(noise[seen], region[seen])
            shared += int(seen.sum())
            canvas[:, y : y + h, x : x + w] = noise
        assert shared > 0 and not torch.isnan(canvas).any()
        fields.append(canvas)
    assert abs(float(fields[0].mean())) < 0.05 and abs(float(fields[0].std()) - 1) < 0.05  # standard normal
    assert all(not torch.equal(fields[0], other) for other in fields[1:])  # views (and samples) draw their own
    step_3 = invert_transform(_tile_noise(5, 8, layout, (0, 0, 0), 3)(3)[0], layout.views[0])
    assert not torch.equal(step_3, fields[0][:, : step_3.shape[1], : step_3.shape[2]])  # and each step anew


def test_the_noise_field_does_not_depend_on_the_tile_layout():
    from app.engine.plans import FIELD_BLOCK, field_noise

    whole = field_noise((7, 0), 4, 3, (0, 0, 200, 260))
    for box in [(0, 0, 64, 64), (10, 37, 100, 90), (FIELD_BLOCK - 1, FIELD_BLOCK + 1, 3, 130), (136, 196, 64, 64)]:
        y, x, h, w = box
        assert torch.equal(field_noise((7, 0), 4, 3, box), whole[:, y : y + h, x : x + w])
    assert not torch.equal(field_noise((8, 0), 4, 3, (0, 0, 64, 64)), whole[:, :64, :64])
