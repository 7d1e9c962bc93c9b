"""Turn a validated request into a fully resolved job spec: pick the model, fill every default from its
card, and check the request against what the model can do and what the service allows, so that no
input, for any model the store accepts, ends as a failed job. Errors name the field at fault."""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, TypeVar

from app.api.errors import ApiError, brief
from app.api.schemas import JOB_FIELDS, SEED_MAX, DenoiseParams, GenerateRequest, NoiseParams
from app.api.uploads import FORM_FILE
from app.diffusion.samplers import SAMPLERS, get_sampler
from app.imaging import OUTPUT_FORMATS
from app.jobs import DenoiseSpec, GenerateSpec, ImageData, Img2ImgSpec, NoiseSpec, img2img_steps
from app.settings import Settings
from app.store.catalog import ModelEntry

if TYPE_CHECKING:
    from app.api.results import Submission

T = TypeVar("T")
MAX_PREVIEWS = 50  # a job's previews (each a decode, on a latent model a VAE pass): their cost stays bounded


def or_default(value: T | None, default: T) -> T:
    """The request's value, else the card's default."""
    return default if value is None else value


def none_announced(loc: list[str | int], settings: Settings) -> ApiError:
    """The answer while the catalog is empty: no worker has announced its models (yet, or again after Redis
    lost its data). It comes back within a heartbeat of a worker's."""
    return ApiError(
        503,
        loc,
        "no model is announced yet: no worker is serving; retry shortly",
        type="model_unavailable",
        headers={"Retry-After": str(max(1, int(settings.heartbeat_s)))},
    )


def pick_model(models: dict[str, ModelEntry], name: str | None, *, task: str | None, settings: Settings) -> ModelEntry:
    """The named model, or the default for ``task`` (a setting, else the first ready model serving it)."""
    if not models:
        raise none_announced(["body", "model"], settings)
    if name is None:
        name = {"generate": settings.default_generator, "denoise": settings.default_denoiser}.get(task)
    if name is None:
        serving = [e for e in models.values() if task is None or task in e.tasks]
        candidates = [e for e in serving if e.ready]
        if candidates:
            return candidates[0]
        if serving:
            why = "; ".join(f"{e.name!r}: {e.error}" for e in serving)
            raise ApiError(
                503,
                ["body", "model"],
                f"no model serving {task or 'requests'} is loaded ({why})",
                type="model_unavailable",
            )
        raise ApiError(404, ["body", "model"], f"no model in the store serves {task or 'requests'}", type="not_found")
    entry = models.get(name)
    if entry is None:
        raise ApiError(
            404, ["body", "model"], f"unknown model {brief(name)}; GET /v1/models lists them", type="not_found"
        )
    if not entry.ready:
        raise ApiError(503, ["body", "model"], f"model {name!r} is not served: {entry.error}", type="model_unavailable")
    why = entry.refusal(task) if task is not None else None
    if why is not None:
        raise ApiError(422, ["body", "model"], f"model {name!r} does not serve {task}: {why}", type="wrong_task")
    return entry


def random_seed() -> int:
    return secrets.randbits(63)


def seeds_for(seed: int | None, count: int) -> list[int]:
    """Image i gets ``seed + i`` (wrapping at 2**63), or a fresh random seed each."""
    if seed is None:
        return [random_seed() for _ in range(count)]
    return [(seed + i) % (SEED_MAX + 1) for i in range(count)]


def check_plan(entry: ModelEntry, sampler: str, steps: int) -> None:
    """The sampler's timestep grid must stay on the model's schedule (else the job could only fail)."""
    config = entry.scheduler_config
    spacing = get_sampler(sampler).spacing(config.get("timestep_spacing"))
    offset = int(config.get("steps_offset", 0))
    if not get_sampler(sampler).fits(entry.train_timesteps, steps, spacing, offset):
        fitting = [
            n
            for n in range(1, entry.train_timesteps + 1)
            if get_sampler(sampler).fits(entry.train_timesteps, n, spacing, offset)
        ]
        where = f"on model {entry.name!r} ({spacing} spacing, steps_offset {offset})"
        if steps > max(fitting):
            why = f"{sampler} takes at most {max(fitting)} steps {where}"
        else:  # a count whose grid leaves the schedule between counts that fit
            near = sorted(fitting, key=lambda n: (abs(n - steps), n))[:2]
            why = f"{sampler} cannot take {steps} steps {where}: its timesteps leave the schedule; "
            why += f"{near[0]} or {near[1]} can"
        raise ApiError(422, ["body", "steps"], why, type="out_of_range")


def check_steps(entry: ModelEntry, steps: int, loc: list) -> int:
    if steps > entry.train_timesteps:
        raise ApiError(
            422, loc, f"steps must be at most {entry.train_timesteps} for model {entry.name!r}", type="out_of_range"
        )
    return steps


def _amount(value: float) -> str:
    """A cost as people read it: whole numbers with thousands separators, small ones to three figures."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def check_cost(megapixel_steps: float, settings: Settings, fields: str) -> None:
    """A request's compute (network evaluations x pixels per evaluation) against the configured cap."""
    cap = settings.max_job_megapixel_steps
    if megapixel_steps > cap:
        raise ApiError(
            422,
            ["body"],
            f"this request costs {_amount(megapixel_steps)} megapixel-steps ({fields}), more than the limit of "
            f"{_amount(cap)} (DIFFUSION_MAX_JOB_MEGAPIXEL_STEPS): ask for fewer",
            type="too_expensive",
        )


def check_attention(entry: ModelEntry, height: int, width: int, settings: Settings, loc: list | None) -> None:
    """The image against the model's finest attention layer: its cost grows with the square of its positions,
    which megapixel-steps (linear in pixels) do not price; one forward pass of a model that attends at a
    coarse level could otherwise take hours for an image ``max_pixels`` allows (the engine judged stuck).
    ``loc``: the field that chose the size; None where the request chose none (the model's native size)."""
    found = entry.attention_stride
    if found is None:
        return
    stride, where = found
    positions, cap = -(-height // stride) * -(-width // stride), settings.max_attention_positions
    if positions <= cap:
        return
    side = stride * math.isqrt(cap)
    example = f", e.g. {side}x{side}" if side % entry.size_multiple == 0 else ""
    remedy = f"ask for at most {cap * stride * stride:,} pixels{example}"
    if loc is None:  # the model's own size: nothing the client can change
        remedy = "this service does not run it at its native size"
    raise ApiError(
        422,
        loc or ["body", "model"],
        f"at {width}x{height} model {entry.name!r} attends over {positions:,} positions in {where} (one per "
        f"{stride}x{stride} pixels; attention's cost grows with their square), more than the limit of {cap:,} "
        f"(DIFFUSION_MAX_ATTENTION_POSITIONS): {remedy}",
        type="too_expensive",
    )


def output_format(
    submission: Submission,
    requested: str | None,
    width: int,
    height: int,
    images: int = 1,
    *,
    alpha: bool = False,
) -> str:
    """The negotiated output format (406 when Accept allows no answer for this many ``images``), refused (422)
    when the format cannot hold the result, which the encoder would fail on: larger than it holds (WebP:
    16383 pixels a side, JPEG: 65500), or with an ``alpha`` channel it has no place for (JPEG). A format
    Accept chose (none requested) gives way to the next one Accept takes that holds the result; 406 naming
    the header when there is none."""

    def holds(kind) -> bool:
        return max(width, height) <= kind.max_side and (kind.alpha or not alpha)

    chosen = submission.negotiated(requested, images=images).output_format
    kind = OUTPUT_FORMATS[chosen]
    if holds(kind):
        return chosen
    if max(width, height) > kind.max_side:
        why, kind_of = (
            f"{chosen} holds at most {kind.max_side} pixels a side; the result would be {width}x{height}",
            "too_large_for_format",
        )
    else:
        why, kind_of = f"{chosen} has no alpha channel, and this model's images have one", "no_alpha_in_format"
    if requested is not None:
        raise ApiError(422, ["body", "output_format"], f"{why}: choose png", type=kind_of)
    fits = [name for name, candidate in OUTPUT_FORMATS.items() if holds(candidate)]
    try:
        return submission.negotiated(None, images=images, formats=fits).output_format
    except ApiError as exc:
        msg = f"Accept chose {chosen}, and {why}: accept image/png or application/json"
        raise ApiError(406, ["header", "accept"], msg, type="not_acceptable") from exc


def check_pixels(pixels: int, settings: Settings, loc: list) -> None:
    """A job larger than everything the queue may hold could never be admitted: refuse it now."""
    if pixels > settings.queue_max_pixels:
        raise ApiError(
            413,
            loc,
            f"the job holds {pixels:,} pixels, more than the queue's limit of {settings.queue_max_pixels:,}",
            type="too_many_pixels",
        )


# -- generate ------------------------------------------------------------------------------------------
def class_index(entry: ModelEntry, label: int | str | None) -> int | None:
    """The class index to condition on; None means unconditional (the model's null class)."""
    if isinstance(label, str) and entry.num_classes:
        named = entry.card.class_names
        if named and label in entry.class_lookup:
            return entry.class_lookup[label]
        if not (label.isascii() and label.isdigit() and len(label) <= 9):  # not '٣' nor '𝟕'
            valid = brief(", ".join(named), 200) if named else f"0..{entry.class_count - 1}"
            raise ApiError(
                422, ["body", "class_label"], f"unknown class {brief(label)}; valid: {valid}", type="unknown_class"
            )
        label = int(label)
    refused = entry.label_refusal(0 if isinstance(label, str) else label)  # a name, to an unconditional model
    if refused is not None:
        kind, why = refused
        raise ApiError(422, ["body", "class_label"], why, type=kind)
    return label


def check_parameters(req: GenerateRequest, entry: ModelEntry, also: tuple[str, ...] = ()) -> None:
    """A field the model does not take is a 422 naming the field and the model."""
    taken = set(entry.parameters) | set(also) | JOB_FIELDS
    for field in sorted(req.model_fields_set - taken):
        if getattr(req, field) is not None:
            raise ApiError(
                422,
                ["body", field],
                f"model {entry.name!r} ({entry.family}, conditioned on {entry.conditioning}) does not take {field}; "
                f"it takes: {', '.join(sorted(taken - {'model'} - JOB_FIELDS))}",
                type="unsupported",
            )


def image_size(req: GenerateRequest, entry: ModelEntry, settings: Settings) -> tuple[int, int]:
    """(height, width) of the images: the model's native size, or what a latent text model is asked for
    (multiples of its VAE's and UNet's factors, at most ``max_pixels``)."""
    native_h, native_w = entry.image_size
    height, width = req.height or native_h, req.width or native_w
    multiple = entry.size_multiple
    for field, value in (("height", height), ("width", width)):
        if value % multiple:
            raise ApiError(
                422,
                ["body", field],
                f"{field} must be a multiple of {multiple} for model {entry.name!r}",
                type="not_multiple",
            )
    if height * width > settings.max_pixels:
        raise ApiError(
            422,
            ["body", "width"],
            f"{width}x{height} is more than {settings.max_pixels} pixels",
            type="too_many_pixels",
        )
    return height, width


def start_image_size(
    req: GenerateRequest, image: ImageData, entry: ModelEntry, image_loc: tuple = FORM_FILE
) -> tuple[int, int]:
    """img2img and inpainting work at the image's own size: a multiple of the model's factors."""
    for field in ("width", "height"):
        if getattr(req, field) is not None:
            raise ApiError(
                422, ["body", field], "img2img works at the image's own size: omit width and height", type="unsupported"
            )
    multiple = entry.size_multiple
    if image.width % multiple or image.height % multiple:
        raise ApiError(
            422,
            list(image_loc),
            f"image is {image.width}x{image.height}; model {entry.name!r} needs both sides multiples of {multiple}",
            type="not_multiple",
        )
    if entry.square_only and image.width != image.height:
        raise ApiError(
            422,
            list(image_loc),
            f"image is {image.width}x{image.height}; model {entry.name!r} ({entry.family}) takes square images only",
            type="not_square",
        )
    return image.height, image.width


def generate_spec(
    req: GenerateRequest,
    submission: Submission,
    *,
    image: ImageData | None = None,
    mask: ImageData | None = None,
    image_loc: tuple = FORM_FILE,
) -> GenerateSpec:
    """A generate job, or with ``image`` an img2img job (``mask``: inpainting) from an Img2ImgParams;
    ``image_loc``: where the image came, for the errors about it."""
    settings = submission.settings
    entry = pick_model(submission.models, req.model, task="generate", settings=settings)
    check_parameters(req, entry, also=("strength",) if image is not None else ())
    priority = submission.caller.priority(req.priority)
    if entry.extra_channels and mask is None:
        what = f"model {entry.name!r} is an inpainting model (its network reads a mask and a masked image)"
        if image is None:  # on /v1/generate
            msg = f"{what}: send an image and a mask to /v1/img2img"
            raise ApiError(422, ["body", "model"], msg, type="wrong_task")
        raise ApiError(422, ["body", "mask"], f"{what}: send a mask (white = repaint) with the image", type="missing")
    if mask is not None and mask.transparent:  # which convention it follows cannot be told from the file
        raise ApiError(
            422,
            ["body", "mask"],
            "the mask has transparent pixels, and its alpha is not read: send it opaque, white where the image is "
            "repainted and black where it is kept (a mask whose transparent areas mark the repaint, as OpenAI's "
            "image edits take, is not this service's)",
            type="mask_transparent",
        )
    defaults = entry.defaults
    label = class_index(entry, req.class_label)
    text = entry.conditioning == "text"
    guidance = or_default(req.guidance_scale, defaults.guidance_scale if label is not None or text else 0.0)
    if guidance > 0 and not text and entry.null_class is None:
        raise ApiError(
            422,
            ["body", "guidance_scale"],
            f"model {entry.name!r} has no null class: guidance is not available",
            type="unsupported",
        )
    if guidance > 0 and label is None and not text:
        raise ApiError(
            422, ["body", "guidance_scale"], "guidance needs a class_label to guide towards", type="unsupported"
        )
    steps = check_steps(entry, or_default(req.steps, defaults.steps), ["body", "steps"])
    if image is not None and int(steps * req.strength) < 1:
        raise ApiError(
            422, ["body", "strength"], f"steps x strength must be at least 1 (steps {steps})", type="out_of_range"
        )
    run = steps if image is None else img2img_steps(steps, req.strength)  # the steps the job runs
    if image is None:
        height, width = image_size(req, entry, settings)
    else:
        height, width = start_image_size(req, image, entry, image_loc)
    sized = list(image_loc) if image is not None else ["body", "width"] if (req.width or req.height) else None
    check_attention(entry, height, width, settings, sized)
    pixels = req.num_images * height * width
    evaluated = pixels // entry.latent_factor**2  # a latent model's network sees its latents
    check_cost(evaluated * run * (2 if guidance > 0 else 1) / 1e6, settings, "num_images x steps x image size")
    # the images' count is to blame only when there are several; else the image, or the size asked for
    check_pixels(pixels, settings, ["body", "num_images"] if req.num_images > 1 else sized or ["body", "width"])
    sampler = or_default(req.sampler, defaults.sampler)
    check_plan(entry, sampler, steps)
    check_eta(sampler, req.eta, chosen=req.sampler is not None)
    if req.preview_every and run // req.preview_every > MAX_PREVIEWS:
        raise ApiError(
            422,
            ["body", "preview_every"],
            f"{run} steps with a preview every {req.preview_every} make more than {MAX_PREVIEWS} previews: "
            f"ask for one every {-(-run // MAX_PREVIEWS)} steps or more",
            type="too_many_previews",
        )
    fields = dict(
        model=entry.name,
        steps=steps,
        sampler=sampler,
        eta=or_default(req.eta, defaults.eta),
        seeds=seeds_for(req.seed, req.num_images),
        class_label=label,
        prompt=req.prompt if text else None,
        negative_prompt=req.negative_prompt if text else None,
        width=width if (req.width or req.height) else None,
        height=height if (req.width or req.height) else None,
        guidance_scale=guidance,
        output_format=output_format(
            submission, req.output_format, width, height, images=req.num_images, alpha=entry.channels in (2, 4)
        ),
        pixels=pixels,
        priority=priority,
        preview_every=req.preview_every or 0,
    )
    if image is None:
        return GenerateSpec(**fields)
    if mask is not None and (mask.width, mask.height) != (image.width, image.height):
        raise ApiError(
            422,
            ["body", "mask"],
            f"the mask is {mask.width}x{mask.height}, the image {image.width}x{image.height}: they must match",
            type="size_mismatch",
        )
    return Img2ImgSpec(**fields, image=image, strength=req.strength, mask=mask)


# -- denoise -------------------------------------------------------------------------------------------
def denoise_spec(
    options: DenoiseParams, image: ImageData, submission: Submission, image_loc: tuple = FORM_FILE
) -> DenoiseSpec:
    settings = submission.settings
    entry = pick_model(submission.models, options.model, task="denoise", settings=settings)
    priority = submission.caller.priority(options.priority)
    if options.mode == "mmse" and (options.steps or options.sampler or options.eta is not None or options.samples > 1):
        raise ApiError(
            422,
            ["body", "mode"],
            "steps, sampler, eta and samples apply to mode 'sample'; mmse is one network evaluation",
            type="conflict",
        )
    if isinstance(options.sigma, float) and not 0 < options.sigma <= 255:
        raise ApiError(422, ["body", "sigma"], "sigma must be in (0, 255] or 'auto'", type="out_of_range")
    check_pixels(image.area, settings, list(image_loc))
    defaults = entry.defaults
    sampler, eta = or_default(options.sampler, defaults.sampler), or_default(options.eta, defaults.eta)
    steps = or_default(options.steps, defaults.steps)
    if options.mode == "sample":
        check_eta(sampler, options.eta, chosen=options.sampler is not None)
        check_sample_mode(sampler, eta, steps, options)
    spec = DenoiseSpec(
        model=entry.name,
        image=image,
        sigma=None if options.sigma == "auto" else options.sigma,
        mode=options.mode,
        steps=check_steps(entry, steps, ["body", "steps"]),
        sampler=sampler,
        eta=eta,
        samples=options.samples,
        ensemble=options.ensemble,
        seed=or_default(options.seed, random_seed()),
        output_format=output_format(submission, options.output_format, image.width, image.height),
        priority=priority,
    )
    layout = spec.layout(
        model_channels=entry.channels,
        factor=entry.downsample_factor,
        tile=settings.denoise_tile_for(None),  # the worker's precision is not known here: the most pixels
        overlap=settings.denoise_overlap,
    )
    check_cost(layout.megapixel_steps(spec.total_steps), settings, "tiles x views x steps")
    return spec


def check_eta(sampler: str, eta: float | None, *, chosen: bool) -> None:
    """An ``eta`` given for a sampler that does not read it (only DDIM scales its noise by eta) would be
    ignored without a word, as diffusers' pipelines ignore it: refused instead (``chosen``: the request named
    the sampler, else it is the model card's default)."""
    if eta is None or get_sampler(sampler).reads_eta:
        return
    readers = ", ".join(repr(s.name) for s in SAMPLERS.values() if s.reads_eta)
    default = "" if chosen else " (the model card's default)"
    raise ApiError(
        422,
        ["body", "eta"],
        f"eta is DDIM's noise scale and sampler {sampler!r}{default} does not read it: leave eta out, or ask "
        f"for sampler {readers}",
        type="conflict",
    )


def check_sample_mode(sampler: str, eta: float, steps: int, options: DenoiseParams) -> None:
    """A denoise's chain starts at the image's own noise level: a sampler whose steps are spaced from pure
    noise cannot walk it, and one that draws no noise on the way gives the same image for every seed."""
    chosen = "" if options.sampler else " (the model card's default)"
    if sampler == "dpmpp_2m_karras":
        raise ApiError(
            422,
            ["body", "sampler"],
            f"sampler 'dpmpp_2m_karras'{chosen} spaces its steps from pure noise (Karras sigmas); a denoise starts "
            "at the image's noise level: use dpmpp_2m, the same solver on even steps",
            type="unsupported",
        )
    if options.samples > 1 and steps < 2:  # the one step lands on the clean image: its noise is scaled by 0
        raise ApiError(
            422,
            ["body", "samples"],
            f"a chain of {steps} step draws no noise on the way: each of {options.samples} samples would be the "
            "same image; ask for samples 1, or 2 steps or more",
            type="conflict",
        )
    if options.samples > 1 and not any(get_sampler(sampler).draws_noise(t, eta) for t in (1.0, 500.0)):
        deterministic = f"sampler {sampler!r}{chosen}" + (" with eta 0" if sampler == "ddim" else "")
        raise ApiError(
            422,
            ["body", "samples"],
            f"{deterministic} draws no noise along the chain: each of {options.samples} samples would be the "
            "same image; ask for samples 1, or a sampler that draws noise (ddpm, euler_a, ddim with eta > 0)",
            type="conflict",
        )


# -- noise ---------------------------------------------------------------------------------------------
def noise_spec(
    options: NoiseParams, image: ImageData, submission: Submission, image_loc: tuple = FORM_FILE
) -> NoiseSpec:
    if (options.sigma is None) == (options.timestep is None):
        raise ApiError(422, ["body", "sigma"], "give exactly one of sigma and timestep", type="conflict")
    check_pixels(image.area, submission.settings, list(image_loc))
    model = None
    if options.timestep is not None:
        entry = pick_model(submission.models, options.model, task=None, settings=submission.settings)
        if options.timestep >= entry.train_timesteps:
            raise ApiError(
                422,
                ["body", "timestep"],
                f"timestep must be below {entry.train_timesteps} for model {entry.name!r}",
                type="out_of_range",
            )
        model = entry.name
    elif options.model is not None and options.model not in submission.models:
        pick_model(submission.models, options.model, task=None, settings=submission.settings)  # its 404 (or 503)
    return NoiseSpec(
        model=model,
        image=image,
        sigma=options.sigma,
        timestep=options.timestep,
        seed=or_default(options.seed, random_seed()),
        output_format=output_format(submission, options.output_format, image.width, image.height),
    )
