"""Plans: a job spec becomes rows for the runner, and finished rows become the job's result.

generate: one row per image, from noise drawn with the image's own seed.
denoise:  one row per (view, plane, tile): per tile of a large image, per channel for an RGB image on a
          grey model, per view when several samples or flipped/rotated copies are averaged. The chain
          starts at the timestep whose noise level matches sigma (DMID); ``mmse`` is one step straight to
          the posterior mean (Tweedie), ``sample`` walks the reverse chain from there.
noise:    no network at all: the forward process, applied at once.

Rows build their tensors only when admitted, and a finished row's output is taken in at once
(``collect``): a job waiting in the queue holds its upload, not its tiles.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from app.diffusion.forward import add_gaussian_noise, q_sample
from app.diffusion.layout import DenoiseLayout
from app.diffusion.noise_level import estimate_sigma
from app.diffusion.pixels import (
    apply_transform,
    image_to_unit,
    invert_transform,
    sigma_255_to_unit,
    to_channels,
    unit_to_image,
)
from app.diffusion.samplers import Step, get_sampler
from app.diffusion.schedule import NoiseSchedule, restoration_plan
from app.diffusion.tiling import Box, Canvas, pad_to_multiple
from app.engine.runner import Known, Row, Runner
from app.imaging import MEDIA_TYPES, encode_image
from app.jobs import DenoiseSpec, GenerateSpec, ImageData, Img2ImgSpec, JobResult, NoiseSpec, ResultImage
from app.settings import Settings
from app.store.loader import LoadedModel


@dataclass
class Plan:
    """A job's rows, where each finished row's output goes (``collect``), and the result (``finish``)."""

    rows: list[Row]
    collect: Callable[[Row], None]
    finish: Callable[[], JobResult | Unencoded]
    preview: Callable[[Row], ResultImage] | None = None  # a row's kept estimate as a small image


PREVIEW_SIDE = 128  # previews are downscaled to at most this many pixels a side
PREVIEW_FORMAT = "webp"


def image_pixels(image: ImageData) -> np.ndarray:
    """The upload's uint8 [H, W, C] pixels (a view of its bytes, no copy)."""
    return np.frombuffer(image.pixels, dtype=np.uint8).reshape(image.height, image.width, image.channels)


def upload_info(image: ImageData) -> dict:
    """What the service changed about an upload before using it: an alpha channel dropped, the frames of an
    animation after the first ignored, the pixels turned by their EXIF orientation."""
    info: dict = {"alpha_dropped": image.alpha_dropped}
    if image.frames_dropped:
        info["frames_dropped"] = image.frames_dropped
    if image.exif_orientation != 1:
        info["exif_orientation"] = image.exif_orientation
    return info


def require_finite(x: torch.Tensor) -> None:
    """Refuse a result that is not numbers (NaN or infinity): encoded, it would be a black image, "succeeded"."""
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(
            "the model produced values that are not numbers (NaN or infinity) at these settings: "
            "try a lower guidance_scale, other steps or another sampler"
        )


def result_image(
    index: int, seed: int | None, x: torch.Tensor | np.ndarray, fmt: str, upload: ImageData | None = None
) -> ResultImage:
    """A result encoded in ``fmt``, with the colour profile of the ``upload`` it was made from, if any."""
    return Unencoded.of(index, seed, x, fmt, upload).encode().images[0]


@dataclass
class Unencoded:
    """A job's result as pixels, its files not written yet (no torch left in it): the engine writes a large
    one off its thread (a 16 Mpx PNG takes about 1.8 s, which no forward pass should wait for)."""

    images: list[tuple[int, int | None, np.ndarray]]  # (index, seed, uint8 [H, W, C])
    fmt: str
    icc_profile: bytes | None = None
    info: dict = field(default_factory=dict)

    @classmethod
    def of(cls, index, seed, x, fmt: str, upload: ImageData | None = None, info: dict | None = None) -> "Unencoded":
        """One image, x [C, H, W] in [-1, 1], with the colour profile of the ``upload`` it was made from."""
        icc = upload.icc_profile if upload is not None else None
        return cls([(index, seed, unit_to_image(x))], fmt, icc, info or {})

    @property
    def area(self) -> int:
        return sum(pixels.shape[0] * pixels.shape[1] for _, _, pixels in self.images)

    def encode(self) -> JobResult:
        media_type = MEDIA_TYPES[self.fmt]
        return JobResult(
            images=[
                ResultImage(
                    index=i, seed=seed, media_type=media_type, data=encode_image(px, self.fmt, self.icc_profile)
                )
                for i, seed, px in self.images
            ],
            info=self.info,
        )


def preview_image(index: int, seed: int | None, x: torch.Tensor) -> ResultImage:
    """A small preview of pixels x [C, H, W] in [-1, 1]: at most PREVIEW_SIDE a side (area-averaged)."""
    side = max(x.shape[-2:])
    if side > PREVIEW_SIDE:
        size = [max(1, round(n * PREVIEW_SIDE / side)) for n in x.shape[-2:]]
        x = torch.nn.functional.interpolate(x[None].float(), size=size, mode="area")[0]
    return result_image(index, seed, x, PREVIEW_FORMAT)


# -- generate and img2img ---------------------------------------------------------------------------------
def _from_noise(shape: tuple[int, ...], scale: float) -> Callable[[torch.Generator], torch.Tensor]:
    """Pure noise, the seed's first draw. Pipelines that multiply it by init_noise_sigma (Stable Diffusion's)
    differ from those that do not (DDPMPipeline, DiTPipeline) only on the Euler samplers' grids (``scale``)."""

    def start(generator: torch.Generator) -> torch.Tensor:
        x = torch.randn((1, *shape), generator=generator)
        return x if scale == 1.0 else x * scale

    return start


class _from_image:
    """Where img2img and inpainting start, drawing from the seed in the order diffusers' pipelines do.

    img2img (StableDiffusionImg2ImgPipeline): the image's latent (a VAE posterior sample: the first draw),
    noised to the first step with the second draw: x_t = sqrt(ab) x_0 + sqrt(1 - ab) n.
    Inpainting (StableDiffusionInpaintPipeline): the image's latent when the network is a plain one (for the
    kept region) or when strength < 1, then the noise; at strength 1 the start is that noise alone (times
    the pipeline's init_noise_sigma); then the masked image's latent (kept grey where the mask is white),
    which an inpainting network (9 input channels) reads beside the mask at every step.
    """

    def __init__(self, spec: Img2ImgSpec, model: LoadedModel, ab: float, noise_scale: float) -> None:
        pixels = to_channels(image_to_unit(image_pixels(spec.image)), model.entry.channels)
        self.pixels, self.model, self.ab, self.noise_scale = pixels[None].contiguous(), model, ab, noise_scale
        factor = model.entry.latent_factor
        self.latent_shape = (model.entry.latent_channels, spec.image.height // factor, spec.image.width // factor)
        self.full_strength = spec.strength == 1.0
        self.mask = self.masked = None
        if spec.mask is not None:
            full = repaint_mask(spec.mask)  # at the image's size
            self.mask = torch.nn.functional.interpolate(full, size=self.latent_shape[1:], mode="nearest")
            self.masked = self.pixels * (full < 0.5)  # the image, grey where it is repainted

    def __call__(self, generator: torch.Generator) -> torch.Tensor | Known:
        inpainting = self.mask is not None
        network_inpaints = inpainting and self.model.entry.extra_channels > 0
        x0 = None
        if not (network_inpaints and self.full_strength):
            x0 = self.model.encode(self.pixels, generator).cpu()
        noise = torch.randn(self.latent_shape, generator=generator)[None]
        if inpainting and self.full_strength:
            start = noise * self.noise_scale
        else:
            start = self.ab**0.5 * x0 + (1 - self.ab) ** 0.5 * noise
        if not inpainting:
            return start
        extra = None
        if self.model.entry.spec.latent:  # diffusers encodes the masked image whatever the network
            masked = self.model.encode(self.masked, generator).cpu()
            extra = torch.cat([self.mask, masked], dim=1) if network_inpaints else None
        if network_inpaints:
            return Known(start, None, None, self.mask, extra)
        return Known(start, x0, noise, self.mask, extra)


def repaint_mask(mask: ImageData) -> torch.Tensor:
    """[1, 1, H, W]: 1 where the mask is white (luma >= half: repaint), 0 where the image is kept, as
    diffusers' mask processor reads it (grey by Pillow's luma, then binarized)."""
    pixels = image_pixels(mask).astype(np.float32)
    grey = pixels[..., 0] if pixels.shape[2] == 1 else pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    return torch.from_numpy((grey >= 127.5).astype(np.float32))[None, None]


def plan_generate(job_id: str, spec: GenerateSpec, model: LoadedModel) -> Plan:
    entry = model.entry
    sampler = get_sampler(spec.sampler)
    plan = sampler.plan(model.schedule, spec.steps)
    if isinstance(spec, Img2ImgSpec):
        # the last steps x strength of the chain (diffusers' rule), counted on the plan itself: DPM-Solver's
        # grid merges repeated timesteps, so it can be shorter than ``steps``
        plan = plan[max(0, len(plan) - spec.total_steps) :]
        scale = sampler.noise_scale(model.schedule, plan) if entry.spec.scales_initial_noise else 1.0
        start = _from_image(spec, model, plan[0].ab, scale)
        shape = tuple(start.latent_shape)
    else:
        native_h, native_w = entry.image_size
        h, w = (spec.height or native_h) // entry.latent_factor, (spec.width or native_w) // entry.latent_factor
        shape = (entry.latent_channels, h, w)
        scale = sampler.noise_scale(model.schedule, plan) if entry.spec.scales_initial_noise else 1.0
        start = _from_noise(shape, scale)
    cond, uncond = model.conditions(spec)  # a prompt is encoded here, once for the job's images

    rows = [
        Row(
            job_id=job_id,
            model=model,
            shape=shape,
            plan=plan,
            sampler=sampler,
            seed=seed,
            init=start,
            key=i,
            eta=spec.eta,
            cond=cond,
            uncond=uncond,
            guidance=spec.guidance_scale,
            preview_every=spec.preview_every,
        )
        for i, seed in enumerate(spec.seeds)
    ]
    images: dict[int, ResultImage] = {}

    def collect(row: Row) -> None:
        """Decode (latent models: one image at a time through the VAE) and encode each image as it finishes."""
        upload = spec.image if isinstance(spec, Img2ImgSpec) else None
        pixels = model.decode(row.x)
        require_finite(pixels)  # a VAE may overflow where the latents did not (float16 on CUDA)
        images[row.key] = result_image(row.key, spec.seeds[row.key], pixels, spec.output_format, upload)

    # an upload's changes (alpha, frames, orientation: as a denoise reports them) and the steps run
    info = {**upload_info(spec.image), "steps_run": len(plan)} if isinstance(spec, Img2ImgSpec) else {}

    def finish() -> JobResult:
        return JobResult(images=[images[i] for i in range(len(spec.seeds))], info=info)

    def preview(row: Row) -> ResultImage:
        """The row's clean-image estimate (latent models: through the VAE, at full size, then downscaled)."""
        return preview_image(row.key, spec.seeds[row.key], model.decode(row.preview))

    return Plan(rows=rows, collect=collect, finish=finish, preview=preview if spec.preview_every else None)


# -- denoise -------------------------------------------------------------------------------------------
SIGMA_255_MAX = 255.0  # the API's bound on a given sigma


def _start_timestep(spec: DenoiseSpec, pixels: np.ndarray, schedule: NoiseSchedule, info: dict) -> float:
    """The timestep whose noise level matches the image's sigma (given, or estimated; 0-255 scale)."""
    if spec.sigma is None:  # at most the largest sigma a request may give (an image of pure noise reads above)
        sigma_255 = min(estimate_sigma(image_to_unit(pixels)) * 127.5, SIGMA_255_MAX)
        info["sigma_estimated"] = round(sigma_255, 3)
    else:
        sigma_255 = spec.sigma
    sigma_255 = max(sigma_255, 0.1)  # a clean image: the lowest noise level still maps to a timestep
    t_start = schedule.sigma_to_t(sigma_255_to_unit(sigma_255))
    info.update(sigma=round(sigma_255, 3), t_start=round(t_start, 3))
    return t_start


def _chain(spec: DenoiseSpec, schedule: NoiseSchedule, t_start: float) -> tuple[list[Step], str]:
    """mmse: one DDIM step from t_start to alpha_bar = 1, which is Tweedie's posterior mean; sample: the
    reverse chain from t_start."""
    if spec.mode == "mmse":
        return [Step(t_start, schedule.alpha_bar(t_start), 1.0)], "ddim"
    return restoration_plan(schedule, t_start, spec.steps), spec.sampler


def _layout_info(spec: DenoiseSpec, layout: DenoiseLayout) -> dict:
    info = {"tiles": len(layout.boxes) * len(layout.planes)}
    if len(layout.views) > spec.ensemble:
        info["samples"] = len(layout.views) // spec.ensemble
    if spec.ensemble > 1:
        info["ensemble"] = spec.ensemble
    return info


def _tile_start(padded: np.ndarray, layout: DenoiseLayout, key: tuple[int, int, int], channels: int, scale: float):
    """How row ``key`` = (view, plane, tile) builds its x_t* = sqrt(ab) y when admitted (DMID): crop the
    tile from the padded uint8 image, take the plane, replicate grey for an RGB model, turn/flip the view."""
    view, plane, box = key

    def start(_: torch.Generator) -> torch.Tensor:
        y, x, h, w = layout.boxes[box]
        part = image_to_unit(padded[y : y + h, x : x + w])
        part = part if layout.planes[plane] is None else part[layout.planes[plane]]
        part = to_channels(part, channels)  # grey image, RGB model: replicated
        return (scale * apply_transform(part, layout.views[view]))[None]

    return start


FIELD_BLOCK = 64  # the noise field of a tiled denoise is drawn in blocks of this many pixels a side


def field_noise(entropy: tuple[int, ...], step: int, channels: int, box: Box) -> torch.Tensor:
    """Standard normal noise on ``box`` (top, left, h, w) of an image-wide field, [channels, h, w]: each
    FIELD_BLOCK square of the image is drawn from its own generator, seeded by ``entropy``, the step and
    the square's place. Tiles that overlap draw the same noise where they overlap, whatever the layout."""
    top, left, h, w = box
    size = FIELD_BLOCK
    out = torch.empty(channels, h, w)
    for by in range(top // size, (top + h - 1) // size + 1):
        for bx in range(left // size, (left + w - 1) // size + 1):
            seed = np.random.SeedSequence([*entropy, step, by, bx]).generate_state(1, np.uint64)[0]
            block = torch.randn(channels, size, size, generator=torch.Generator().manual_seed(int(seed)))
            y0, y1 = max(top, by * size), min(top + h, (by + 1) * size)
            x0, x1 = max(left, bx * size), min(left + w, (bx + 1) * size)
            out[:, y0 - top : y1 - top, x0 - left : x1 - left] = block[
                :, y0 - by * size : y1 - by * size, x0 - bx * size : x1 - bx * size
            ]
    return out


def _tile_noise(
    seed: int, ensemble: int, layout: DenoiseLayout, key: tuple[int, int, int], channels: int
) -> Callable[[int], torch.Tensor]:
    """What row ``key`` = (view, plane, tile) draws at each step of ``mode: sample``: its tile's share of the
    field of its view and plane, turned as the view is. Where tiles overlap their chains draw the same
    noise, so the blend cross-fades two near-equal draws instead of averaging two independent ones (which
    left bands of less grain along every seam).

    Sample k of seed s draws as the single sample of seed s + k, each of its flips/rotations (``ensemble``)
    from a field of its own: the identity's is seed s + k's, another's is seeded by a hash of (s + k, the
    transform), so seeds s and s + 1 share none (with the seed plus the view index, seed s + 1's identity
    drew what seed s's mirror did)."""
    view, plane, box = key
    sample, transform = divmod(view, ensemble)
    base = (seed + sample) % 2**63
    if transform:
        base = int(np.random.SeedSequence([base, transform]).generate_state(1, np.uint64)[0]) % 2**63
    entropy = (base, plane)

    def noise_at(step: int) -> torch.Tensor:
        field = field_noise(entropy, step, channels, layout.boxes[box])
        return apply_transform(field, layout.views[view])[None]

    return noise_at


class _Blend:
    """Finished tiles, their views' transforms undone, blended into one canvas per plane; the views of a
    tile add up on the same canvas, so the blend is their average.

    Tiles are added in row order whatever order they finish in (a quarter-turned view of a non-square tile
    runs in another group, so it may finish first): float sums depend on their order, and a seed must give
    the same image whatever else is in the batch. A tile that finishes early waits, as numpy, for its turn;
    rows are admitted in order, so only tiles finished ahead of a running one wait."""

    def __init__(self, spec: DenoiseSpec, layout: DenoiseLayout, channels: int, overlap: int) -> None:
        self.spec, self.layout, self.channels, self.overlap = spec, layout, channels, overlap
        self.canvases: dict[int, Canvas] = {}
        self.early: dict[int, tuple[tuple[int, int, int], np.ndarray]] = {}
        self.next = 0

    def add(self, row: Row) -> None:
        view = row.key[0]
        tile = invert_transform(row.x[0], self.layout.views[view]).float().cpu().numpy()
        self.early[self.layout.index(*row.key)] = (row.key, tile)
        while self.next in self.early:
            (_, plane, box), tile = self.early.pop(self.next)
            if plane not in self.canvases:
                self.canvases[plane] = Canvas(self.channels, self.layout.height, self.layout.width, self.overlap)
            self.canvases[plane].add(tile, self.layout.boxes[box])
            self.next += 1

    def result(self, info: dict) -> Unencoded:
        h, w = self.spec.image.height, self.spec.image.width
        image = np.concatenate([self.canvases[p].result()[:, :h, :w] for p in range(len(self.layout.planes))])
        if image.shape[0] == 3 and self.spec.image.channels == 1:
            image = image.mean(axis=0, keepdims=True)
        seed = self.spec.seed if self.spec.mode == "sample" else None
        return Unencoded.of(0, seed, image, self.spec.output_format, self.spec.image, info)


def denoise_tile(settings: Settings, runner: Runner) -> int:
    """The tile edge the engine denoises with on ``runner``: the setting, else by the network's precision."""
    return settings.denoise_tile_for(runner.autocast_dtype is not None)


def plan_denoise(job_id: str, spec: DenoiseSpec, model: LoadedModel, *, tile: int, overlap: int) -> Plan:
    pixels = image_pixels(spec.image)
    info = {**upload_info(spec.image), "mode": spec.mode}
    t_start = _start_timestep(spec, pixels, model.schedule, info)
    steps, sampler = _chain(spec, model.schedule, t_start)
    scale = model.schedule.alpha_bar(t_start) ** 0.5
    channels, factor = model.entry.channels, model.entry.downsample_factor
    layout = spec.layout(model_channels=channels, factor=factor, tile=tile, overlap=overlap)
    info.update(_layout_info(spec, layout))
    padded, _ = pad_to_multiple(pixels, factor)
    th, tw = layout.boxes[0][2:]
    rows = []
    for key in itertools.product(range(len(layout.views)), range(len(layout.planes)), range(len(layout.boxes))):
        quarter_turned = layout.views[key[0]][0] % 2
        rows.append(
            Row(
                job_id=job_id,
                model=model,
                shape=(channels, tw, th) if quarter_turned else (channels, th, tw),
                plan=steps,
                sampler=get_sampler(sampler),
                seed=(spec.seed + layout.index(*key)) % 2**63,
                init=_tile_start(padded, layout, key, channels, scale),
                key=key,
                eta=spec.eta,
                noise_at=_tile_noise(spec.seed, spec.ensemble, layout, key, channels),
            )
        )
    blend = _Blend(spec, layout, channels, overlap)
    return Plan(rows=rows, collect=blend.add, finish=lambda: blend.result(info))


# -- noise (forward process) ----------------------------------------------------------------------------
def run_noise(spec: NoiseSpec, schedule: NoiseSchedule | None) -> Unencoded:
    image = image_to_unit(image_pixels(spec.image))
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(spec.seed))
    info = upload_info(spec.image)
    if spec.timestep is not None:
        if schedule is None:
            raise ValueError("a timestep needs a model's schedule")
        ab = schedule.alpha_bar(spec.timestep)
        noisy = q_sample(image, ab=ab, noise=noise)
        info.update(timestep=spec.timestep, alpha_bar=ab, sigma=round(math.sqrt((1 - ab) / ab) * 127.5, 3))
    else:
        noisy = add_gaussian_noise(image, sigma=sigma_255_to_unit(spec.sigma), noise=noise)
        info.update(sigma=spec.sigma)
    return Unencoded.of(0, spec.seed, noisy, spec.output_format, spec.image, info)
