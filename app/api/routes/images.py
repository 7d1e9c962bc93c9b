"""POST /v1/denoise (clean a noisy photo) and POST /v1/noise (the forward process, for demos and tests)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.errors import ApiError
from app.api.resolve import check_steps, pick_model, random_seed
from app.api.results import RESPONSES, SubmissionDep
from app.api.schemas import DenoiseJSON, DenoiseParams, NoiseJSON, NoiseParams
from app.api.uploads import read_image_request
from app.jobs import DenoiseSpec, NoiseSpec

router = APIRouter(tags=["denoise"])
noise_router = APIRouter(tags=["noise"])


def _upload_body(json_model) -> dict:
    """OpenAPI for an endpoint that takes the image as multipart or as base64 JSON."""
    form_schema = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "the image file"},
            **{k: v for k, v in json_model.model_json_schema()["properties"].items() if k != "image"},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form_schema},
                "application/json": {"schema": json_model.model_json_schema()},
            },
        }
    }


@router.post("/denoise", responses=RESPONSES, openapi_extra=_upload_body(DenoiseJSON))
async def denoise(request: Request, job: SubmissionDep):
    """Denoise an uploaded image (grey or RGB, any size up to the pixel limit; alpha is dropped and
    `info.alpha_dropped` says so). `sigma` is the noise std on the 0-255 scale, or `auto`."""
    options, image = await read_image_request(request, DenoiseParams, DenoiseJSON, max_pixels=job.settings.max_pixels)
    entry = pick_model(job.queue.models, options.model, task="denoise", settings=job.settings)
    if entry.channels not in (1, 3):
        raise ApiError(422, ["body", "model"], f"model {entry.name!r} has {entry.channels} channels: denoising needs a grey or RGB model", type="unsupported")
    if options.mode == "mmse" and (options.steps or options.sampler or options.eta is not None or options.samples > 1):
        raise ApiError(422, ["body", "mode"], "steps, sampler, eta and samples apply to mode 'sample'; mmse is one network evaluation", type="conflict")
    if isinstance(options.sigma, float) and not 0 < options.sigma <= 255:
        raise ApiError(422, ["body", "sigma"], "sigma must be in (0, 255] or 'auto'", type="out_of_range")
    defaults = entry.card.defaults
    spec = DenoiseSpec(
        model=entry.name,
        image=image,
        sigma=None if options.sigma == "auto" else options.sigma,
        mode=options.mode,
        steps=check_steps(entry, options.steps or defaults.steps, ["body", "steps"]),
        sampler=options.sampler or defaults.sampler,
        eta=options.eta if options.eta is not None else defaults.eta,
        samples=options.samples,
        ensemble=options.ensemble,
        seed=options.seed if options.seed is not None else random_seed(),
        output_format=job.output_format(options.output_format),
    )
    return await job.run(spec)


@noise_router.post("/noise", responses=RESPONSES, openapi_extra=_upload_body(NoiseJSON))
async def noise(request: Request, job: SubmissionDep):
    """Add seeded Gaussian noise: `sigma` on the 0-255 scale (y = x + sigma n), or `timestep` of a model's
    schedule (x_t = sqrt(alpha_bar) x + sqrt(1 - alpha_bar) n). Give exactly one."""
    options, image = await read_image_request(request, NoiseParams, NoiseJSON, max_pixels=job.settings.max_pixels)
    if (options.sigma is None) == (options.timestep is None):
        raise ApiError(422, ["body", "sigma"], "give exactly one of sigma and timestep", type="conflict")
    model = None
    if options.timestep is not None:
        entry = pick_model(job.queue.models, options.model, task=None, settings=job.settings)
        if options.timestep >= entry.train_timesteps:
            raise ApiError(422, ["body", "timestep"], f"timestep must be below {entry.train_timesteps} for model {entry.name!r}", type="out_of_range")
        model = entry.name
    spec = NoiseSpec(
        model=model, image=image, sigma=options.sigma, timestep=options.timestep,
        seed=options.seed if options.seed is not None else random_seed(),
        output_format=job.output_format(options.output_format),
    )
    return await job.run(spec)
