"""Tiling, the noise-level estimator, the forward process and the sigma <-> timestep map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.diffusion.forward import q_sample, start_for_restoration
from app.diffusion.noise_level import estimate_sigma
from app.diffusion.schedule import NoiseSchedule, restoration_plan
from app.diffusion.tiling import blend, blend_window, pad_to_multiple, tile_boxes


def smooth_image(h=96, w=120, c=3):
    yy, xx = torch.meshgrid(torch.linspace(0, 3, h), torch.linspace(0, 4, w), indexing="ij")
    return torch.stack([torch.sin(xx + k) * torch.cos(yy) * 0.8 for k in range(c)])


def test_tiles_cover_the_image_and_blend_back_exactly():
    image = smooth_image().numpy()
    boxes = tile_boxes(96, 120, tile=40, overlap=10)
    assert {(h, w) for _, _, h, w in boxes} == {(39, 38)}  # 3 x 4 tiles spread evenly, not 40 x 40 piled up
    tiles = [image[:, y : y + h, x : x + w] for y, x, h, w in boxes]
    assert np.allclose(blend(tiles, boxes, 96, 120, 10), image, atol=1e-6)


@pytest.mark.parametrize(
    "height, width, tile, overlap, multiple",
    [
        (400, 640, 256, 32, 8),
        (1000, 700, 256, 32, 8),
        (512, 512, 32, 8, 8),
        (257, 256, 256, 32, 8),
        (97, 300, 64, 16, 1),
    ],
)
def test_tiles_are_as_few_as_the_tile_allows_even_and_overlap_enough(height, width, tile, overlap, multiple):
    boxes = tile_boxes(height, width, tile=tile, overlap=overlap, multiple=multiple)
    (th, tw), *others = {(h, w) for _, _, h, w in boxes}
    assert not others and th <= tile and tw <= tile
    for size, length in ((th, height), (tw, width)):
        assert size == length or size % multiple == 0
    assert all(y >= 0 and x >= 0 and y + h <= height and x + w <= width for y, x, h, w in boxes)  # inside
    covered = np.zeros((height, width), dtype=int)
    for y, x, h, w in boxes:
        covered[y : y + h, x : x + w] += 1
    assert covered.min() >= 1
    ys, xs = sorted({y for y, *_ in boxes}), sorted({x for _, x, *_ in boxes})
    for starts, size, length in ((ys, th, height), (xs, tw, width)):
        assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))  # every overlap >= overlap
        assert len(starts) == (1 if length <= tile else -(-(length - overlap) // (tile - overlap)))  # fewest


def test_a_640_by_400_photo_takes_six_even_tiles_not_six_piled_up_at_the_edge():
    # the old plan (fixed tiles, the last one flush with the edge) covered it with 6 tiles of 256: 1.54x its
    # pixels; the even plan covers it with 6 of 240 x 216, 1.21x
    boxes = tile_boxes(400, 640, tile=256, overlap=32, multiple=8)
    assert {(h, w) for _, _, h, w in boxes} == {(216, 240)} and len(boxes) == 6


def test_blend_window_ramps_to_a_floor_not_to_zero():
    window = blend_window(40, 40, 10)
    assert window.min() > 0 and window[20, 20] == 1


@pytest.mark.parametrize("width, tile, overlap", [(260, 192, 16), (260, 192, 95), (300, 256, 100)])
def test_neighbouring_tiles_fade_into_each_other_even_when_no_wider_than_two_overlaps(width, tile, overlap):
    """Tiles of at most twice the overlap (a large overlap the settings accept) were blended flat: a tile of
    0s beside a tile of 1s jumped by 0.5 at the second tile's edge."""
    boxes = tile_boxes(1, width, tile=tile, overlap=overlap)
    assert len(boxes) == 2
    tiles = [np.full((1, h, w), float(i), np.float32) for i, (_, _, h, w) in enumerate(boxes)]
    row = blend(tiles, boxes, 1, width, overlap)[0, 0]
    assert row[0] == 0 and row[-1] == 1 and np.all(np.diff(row) >= 0)
    assert np.abs(np.diff(row)).max() < 0.1


def test_pad_to_multiple_reflects_and_keeps_the_original_size():
    image = smooth_image(30, 45).permute(1, 2, 0).numpy()  # [H, W, C]
    padded, size = pad_to_multiple(image, 8)
    assert padded.shape[:2] == (32, 48) and size == (30, 45)
    assert np.array_equal(padded[30, :45], image[28]) and np.array_equal(padded[:30, 45], image[:, 43])  # reflected


@pytest.mark.parametrize("sigma_255", [5, 15, 25, 50])
def test_noise_level_estimate_is_close_on_a_smooth_image(sigma_255):
    image = smooth_image(256, 256)
    noisy = image + (2 * sigma_255 / 255) * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    estimate = estimate_sigma(noisy) * 127.5
    assert abs(estimate - sigma_255) < 0.1 * sigma_255 + 1


@pytest.mark.parametrize("sigma_255", [50, 75])
def test_noise_level_estimate_undoes_the_clipping_of_a_uint8_upload(sigma_255):
    """A photo-like image reaching both ends of the range, noised and clipped to [0, 255] as an upload is:
    the plain wavelet estimate reads low (clipping removed noise), the estimate corrects for it."""
    clean = (smooth_image(256, 256) * 1.6).clamp(-1, 1)  # dark and bright regions at the bounds
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    upload = torch.round((clean + 1) * 127.5 + sigma_255 * noise).clamp(0, 255) / 127.5 - 1
    plain = float((_haar_hh(upload).abs().flatten(1).median(dim=1).values / 0.6745).mean()) * 127.5
    estimate = estimate_sigma(upload) * 127.5
    assert plain < 0.9 * sigma_255  # the clipping's bite, which the estimate must undo
    assert abs(estimate - sigma_255) < 0.04 * sigma_255


@pytest.mark.parametrize("sigma_255", [5, 10])
def test_noise_level_estimate_is_not_raised_by_fine_texture(sigma_255):
    """Fine texture over part of a photo leaks into the HH band, so the median over all of it reads high; the
    estimate takes the flattest blocks (judged by LL, whose noise is independent of HH's) and does not."""
    image = smooth_image(256, 256) * 0.5
    grain = torch.randn(3, 1, 258, 258, generator=torch.Generator().manual_seed(5))
    texture = 0.5 * torch.nn.functional.avg_pool2d(grain, 3, stride=1)[:, 0]  # fine, but not only at Nyquist
    image[:, :, :144] += texture[:, :, :144]  # textured over 56% of the image
    noisy = image + (2 * sigma_255 / 255) * torch.randn(image.shape, generator=torch.Generator().manual_seed(4))
    plain = float((_haar_hh(noisy).abs().flatten(1).median(dim=1).values / 0.6745).mean()) * 127.5
    estimate = estimate_sigma(noisy) * 127.5
    assert plain > sigma_255 + 1  # the leak the estimate must avoid (well outside its tolerance)
    assert abs(estimate - sigma_255) < 0.05 * sigma_255 + 0.2


@pytest.mark.parametrize("height,width", [(1600, 1400), (6000, 360), (300, 7200)])
def test_a_large_upload_is_estimated_on_a_bounded_mosaic_of_its_crops(height, width):
    from app.diffusion import noise_level

    image = torch.zeros(1, height, width)
    mosaic = noise_level._sampled(image)
    assert height * width > noise_level.MAX_PIXELS >= mosaic.shape[1] * mosaic.shape[2] > noise_level.MAX_PIXELS // 2
    small = torch.zeros(3, 256, 300)
    assert noise_level._sampled(small) is small  # below the bound: the whole image, as before


def test_a_large_uploads_estimate_holds_on_its_crops():
    clean = torch.nn.functional.interpolate(smooth_image(200, 175)[None], size=(1600, 1400), mode="bilinear")[0]
    noisy = (clean * 0.7) + (2 * 20 / 255) * torch.randn(clean.shape, generator=torch.Generator().manual_seed(8))
    assert abs(estimate_sigma(noisy) * 127.5 - 20) < 0.5


def _haar_hh(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return (x[:, 0::2, 0::2] - x[:, 0::2, 1::2] - x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 2


def test_sigma_maps_to_the_timestep_with_that_noise_level():
    schedule = NoiseSchedule.from_config({"beta_schedule": "linear"})
    for sigma in (0.05, 0.2, 0.5, 1.0, 3.0):
        t = schedule.sigma_to_t(sigma)
        assert math.isclose(schedule.t_to_sigma(t), sigma, rel_tol=1e-2)
    assert schedule.sigma_to_t(0.2) != round(schedule.sigma_to_t(0.2))  # between grid points


@pytest.mark.parametrize("timesteps", [1000, 100])
@pytest.mark.parametrize("sigma", [0.0118, 0.0157, 0.0392, 0.2, 1.0])  # 1.5, 2 and 5 of 255 on [-1, 1], ...
def test_a_noise_level_maps_to_a_timestep_whose_alpha_bar_has_exactly_that_level(timesteps, sigma):
    """sigma_to_t interpolates log(sigma) between grid points and alpha_bar interpolated log(alpha_bar): a start
    drawn at sigma 1.5/255 had 3.8% less noise than its chain took it to have (11% with 100 timesteps)."""
    schedule = NoiseSchedule.from_config({"beta_schedule": "linear", "num_train_timesteps": timesteps})
    t = schedule.sigma_to_t(sigma)
    assert t != round(t)  # between grid points
    assert schedule.alpha_bar(t) == pytest.approx(1 / (1 + sigma**2), rel=1e-9)
    assert schedule.t_to_sigma(t) == pytest.approx(sigma, rel=1e-9)
    assert schedule.alpha_bar(7.0) == float(schedule.alphas_cumprod[7])  # on the grid: the schedule's own


def test_restoration_start_is_a_sample_of_q_at_the_matched_step():
    schedule = NoiseSchedule.from_config({"beta_schedule": "linear"})
    x0 = smooth_image(64, 64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sigma = 0.3
    t, x_t = start_for_restoration(x0 + sigma * noise, schedule, sigma)
    expected = q_sample(x0, ab=schedule.alpha_bar(t), noise=noise)
    assert torch.allclose(x_t, expected, atol=1e-4)


def test_restoration_plan_ends_at_the_clean_image():
    schedule = NoiseSchedule.from_config({})
    plan = restoration_plan(schedule, 123.4, 5)
    assert len(plan) == 5 and plan[0].t == pytest.approx(123.4) and plan[-1].ab_prev == 1.0
    assert all(a.ab < b.ab for a, b in zip(plan, plan[1:]))


@pytest.mark.parametrize("steps", [1, 2, 7, 8, 32, 33])
def test_blend_ramps_are_the_float32_points_torch_linspace_gives(steps):
    from app.diffusion.tiling import linspace32

    assert np.array_equal(linspace32(0.05, 1.0, steps), torch.linspace(0.05, 1.0, steps).numpy())


def test_a_restoration_chain_from_the_clean_end_does_not_repeat_a_timestep():
    schedule = NoiseSchedule.from_config({})
    plan = restoration_plan(schedule, 0.0, 5)
    assert len(plan) == 1 and plan[0].ab_prev == 1.0


def test_a_first_beta_below_float32s_resolution_still_has_a_noise_level_between_grid_points():
    """With beta_start 1e-8, alpha_bar at t = 0 rounds to 1 (sigma 0): log(sigma) has no value there, and every
    restoration plan that crossed t in (0, 1) raised a math domain error."""
    schedule = NoiseSchedule.from_config({"beta_start": 1e-8})
    assert float(schedule.alphas_cumprod[0]) == 1.0
    assert float(schedule.alphas_cumprod[1]) < schedule.alpha_bar(0.5) < 1.0
    plan = restoration_plan(schedule, 2.034, 3)
    assert all(0 < step.ab <= 1 for step in plan)
