"""Turn a job spec into rows for the runner, and finished rows back into a result.

generate: one row per image, from noise drawn with the image's own seed.
denoise:  one row per tile (per channel for an RGB image on a grey model, per view when several
          samples or flipped/rotated copies are averaged); the chain starts at the timestep whose noise level matches sigma
          (DMID); ``mmse`` is one step straight to the posterior mean (Tweedie), ``sample`` walks the
          reverse chain from there.
noise:    no network at all: the forward process, applied at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from app.diffusion.forward import add_gaussian_noise, q_sample, sigma_255_to_unit, start_for_restoration
from app.diffusion.noise_level import estimate_sigma
from app.diffusion.schedule import NoiseSchedule, Step, generation_plan, restoration_plan
from app.diffusion.tiling import blend, pad_to_multiple, tile_boxes
from app.imaging import MEDIA_TYPES, encode_image
from app.jobs import DenoiseSpec, GenerateSpec, ImageData, JobResult, NoiseSpec, ResultImage
from app.engine.runner import Row
from app.store.loader import LoadedModel

NewRow = Callable[..., Row]


@dataclass
class Assembly:
    """A job's rows and how to turn them into its result once all are done."""

    rows: list[Row]
    finish: Callable[[list[Row]], JobResult]


# -- pixels <-> tensors -------------------------------------------------------------------------------
def to_tensor(image: ImageData) -> torch.Tensor:
    """[C, H, W] float32 in [-1, 1]."""
    pixels = np.frombuffer(image.pixels, dtype=np.uint8).reshape(image.height, image.width, image.channels)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [-1, 1] to uint8 [H, W, C] (rounded, clipped)."""
    return ((x.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _result_image(index: int, seed: int | None, x: torch.Tensor, fmt: str) -> ResultImage:
    return ResultImage(index=index, seed=seed, media_type=MEDIA_TYPES[fmt], data=encode_image(to_pixels(x), fmt))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- generate ------------------------------------------------------------------------------------------
def plan_generate(spec: GenerateSpec, model: LoadedModel, new_row: NewRow, device: torch.device) -> Assembly:
    plan = generation_plan(model.schedule, spec.sampler, spec.steps)
    h, w = model.entry.image_size
    shape = (1, model.entry.channels, h, w)
    rows = []
    for seed in spec.seeds:
        generator = _generator(seed)
        x = torch.randn(shape, generator=generator).to(device)
        rows.append(
            new_row(
                model=model, x=x, plan=plan, sampler=spec.sampler, generator=generator, eta=spec.eta,
                label=spec.class_label, guidance=spec.guidance_scale,
            )
        )

    def finish(done: list[Row]) -> JobResult:
        images = [_result_image(i, seed, r.x[0], spec.output_format) for i, (seed, r) in enumerate(zip(spec.seeds, done))]
        return JobResult(images=images)

    return Assembly(rows=rows, finish=finish)


# -- denoise -------------------------------------------------------------------------------------------
# Geometric self-ensemble (Lim et al. 2017, "EDSR", sec. 4.4): (quarter turns, mirrored) per view, in the
# order views are added: 2 = identity + mirror, 4 = + a quarter turn, 8 = the whole dihedral group.
ENSEMBLE_ORDER = [(0, False), (0, True), (1, False), (1, True), (2, False), (2, True), (3, False), (3, True)]


def apply_transform(x: torch.Tensor, transform: tuple[int, bool]) -> torch.Tensor:
    turns, mirrored = transform
    x = torch.rot90(x, turns, dims=(-2, -1))
    return x.flip(-1) if mirrored else x


def invert_transform(x: torch.Tensor, transform: tuple[int, bool]) -> torch.Tensor:
    turns, mirrored = transform
    x = x.flip(-1) if mirrored else x
    return torch.rot90(x, -turns, dims=(-2, -1))


def plan_denoise(
    spec: DenoiseSpec, model: LoadedModel, new_row: NewRow, device: torch.device, *, tile: int, overlap: int
) -> Assembly:
    image = to_tensor(spec.image)
    info: dict = {"alpha_dropped": spec.image.alpha_dropped, "mode": spec.mode}
    if spec.sigma is None:
        sigma_255 = estimate_sigma(image) * 127.5
        info["sigma_estimated"] = round(sigma_255, 3)
    else:
        sigma_255 = spec.sigma
    sigma_255 = max(sigma_255, 0.1)  # a clean image: the lowest noise level still maps to a timestep
    info["sigma"] = round(sigma_255, 3)
    schedule = model.schedule
    t_start, _ = start_for_restoration(image[:1], schedule, sigma_255_to_unit(sigma_255))
    info["t_start"] = round(t_start, 3)
    if spec.mode == "mmse":
        plan, sampler = [Step(t_start, schedule.alpha_bar(t_start), 1.0)], "ddim"
    else:
        plan, sampler = restoration_plan(schedule, t_start, spec.steps), spec.sampler

    # Colour handling: an RGB model takes grey input with the channel replicated; a grey model takes
    # each channel of an RGB image as its own grey image.
    in_channels, model_channels = image.shape[0], model.entry.channels
    if model_channels == in_channels:
        planes = [image]
    elif model_channels == 3 and in_channels == 1:
        planes = [image.expand(3, -1, -1)]
    elif model_channels == 1:
        planes = [image[c : c + 1] for c in range(in_channels)]
    else:
        raise ValueError(f"model {model.name} has {model_channels} channels; cannot denoise a {in_channels}-channel image")
    padded = [pad_to_multiple(p, model.entry.downsample_factor)[0] for p in planes]
    height, width = padded[0].shape[1:]
    tile = max(model.entry.downsample_factor, tile // model.entry.downsample_factor * model.entry.downsample_factor)
    boxes = tile_boxes(height, width, tile=tile, overlap=overlap)
    info["tiles"] = len(boxes) * len(planes)
    ab0 = schedule.alpha_bar(t_start)
    # Views: every (sample, flip/rotation) pair is denoised on its own and the results are averaged.
    samples = spec.samples if spec.mode == "sample" else 1
    views = [transform for _ in range(samples) for transform in ENSEMBLE_ORDER[: spec.ensemble]]
    if samples > 1:
        info["samples"] = samples
    if spec.ensemble > 1:
        info["ensemble"] = spec.ensemble
    per_view = len(padded) * len(boxes)
    rows = []
    for view_index, transform in enumerate(views):
        for plane_index, plane in enumerate(padded):
            for box_index, (y, x, h, w) in enumerate(boxes):
                crop = apply_transform(plane[:, y : y + h, x : x + w], transform)
                seed = (spec.seed + view_index * per_view + plane_index * len(boxes) + box_index) % 2**63
                rows.append(
                    new_row(
                        model=model, x=(ab0**0.5 * crop)[None].to(device), plan=plan, sampler=sampler,
                        generator=_generator(seed), eta=spec.eta,
                    )
                )

    def finish(done: list[Row]) -> JobResult:
        """Blend each plane's tiles, undoing each view's transform; average the views."""
        outputs = []
        for plane_index in range(len(padded)):
            blended = []
            for view_index, transform in enumerate(views):
                first = view_index * per_view + plane_index * len(boxes)
                tiles = [invert_transform(r.x[0], transform) for r in done[first : first + len(boxes)]]
                blended.append(blend(tiles, boxes, height, width, overlap)[:, : image.shape[1], : image.shape[2]])
            outputs.append(torch.stack(blended).mean(dim=0))
        result = torch.cat(outputs)
        if result.shape[0] == 3 and in_channels == 1:
            result = result.mean(dim=0, keepdim=True)
        return JobResult(images=[_result_image(0, spec.seed if spec.mode == "sample" else None, result, spec.output_format)], info=info)

    return Assembly(rows=rows, finish=finish)


# -- noise (forward process) ----------------------------------------------------------------------------
def run_noise(spec: NoiseSpec, schedule: NoiseSchedule | None) -> JobResult:
    image = to_tensor(spec.image)
    noise = torch.randn(image.shape, generator=_generator(spec.seed))
    info: dict = {"alpha_dropped": spec.image.alpha_dropped}
    if spec.timestep is not None:
        if schedule is None:
            raise ValueError("a timestep needs a model's schedule")
        ab = schedule.alpha_bar(spec.timestep)
        noisy = q_sample(image, ab=ab, noise=noise)
        info.update(timestep=spec.timestep, alpha_bar=ab, sigma=round(math.sqrt((1 - ab) / ab) * 127.5, 3))
    else:
        noisy = add_gaussian_noise(image, sigma=sigma_255_to_unit(spec.sigma), noise=noise)
        info.update(sigma=spec.sigma)
    return JobResult(images=[_result_image(0, spec.seed, noisy, spec.output_format)], info=info)
