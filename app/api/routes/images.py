"""POST /v1/denoise (clean a noisy photo) and POST /v1/noise (the forward process, for demos and tests)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request

from app.api.deps import QueueDep, SettingsDep
from app.api.errors import ApiError
from app.api.negotiation import choose_format, prefers_async, wants_raw_image
from app.api.resolve import check_steps, pick_model, random_seed
from app.api.results import run_job
from app.api.schemas import DenoiseJSON, DenoiseParams, NoiseJSON, NoiseParams
from app.api.uploads import read_image_request
from app.queue.jobs import DenoiseSpec, NoiseSpec

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


RESPONSES = {
    200: {"description": "the image (JSON with base64 data, or raw bytes with `Accept: image/png`)",
          "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
    202: {"description": "accepted (`Prefer: respond-async`)"},
    404: {"description": "unknown model"},
    413: {"description": "body too large, or too many pixels"},
    415: {"description": "neither multipart/form-data nor application/json"},
    422: {"description": "invalid field or undecodable image"},
    503: {"description": "queue full (see Retry-After)"},
}


@router.post("/denoise", responses=RESPONSES, openapi_extra=_upload_body(DenoiseJSON))
async def denoise(
    request: Request,
    queue: QueueDep,
    settings: SettingsDep,
    accept: Annotated[str | None, Header()] = None,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
):
    """Denoise an uploaded image (grey or RGB, any size up to the pixel limit; alpha is dropped and
    `info.alpha_dropped` says so). `sigma` is the noise std on the 0-255 scale, or `auto`."""
    options, image = await read_image_request(request, DenoiseParams, DenoiseJSON, max_pixels=settings.max_pixels)
    entry = pick_model(queue.models, options.model, task="denoise", settings=settings)
    if entry.channels not in (1, 3):
        raise ApiError(422, ["body", "model"], f"model {entry.name!r} has {entry.channels} channels: denoising needs a grey or RGB model", type="unsupported")
    if options.mode == "mmse" and (options.steps or options.sampler):
        raise ApiError(422, ["body", "mode"], "steps and sampler apply to mode 'sample'; mmse is one network evaluation", type="conflict")
    if isinstance(options.sigma, float) and not 0 < options.sigma <= 255:
        raise ApiError(422, ["body", "sigma"], "sigma must be in (0, 255] or 'auto'", type="out_of_range")
    spec = DenoiseSpec(
        model=entry.name,
        image=image,
        sigma=None if options.sigma == "auto" else options.sigma,
        mode=options.mode,
        steps=check_steps(entry, options.steps or 20, ["body", "steps"]),
        sampler=options.sampler or "ddim",
        eta=options.eta,
        seed=options.seed if options.seed is not None else random_seed(),
        output_format=choose_format(options.output_format, accept),
    )
    return await run_job(queue, spec, idempotency_key=idempotency_key, prefer_async=prefers_async(prefer),
                         raw=wants_raw_image(accept), timeout=settings.sync_timeout_s)


@noise_router.post("/noise", responses=RESPONSES, openapi_extra=_upload_body(NoiseJSON))
async def noise(
    request: Request,
    queue: QueueDep,
    settings: SettingsDep,
    accept: Annotated[str | None, Header()] = None,
    prefer: Annotated[str | None, Header()] = None,
):
    """Add seeded Gaussian noise: `sigma` on the 0-255 scale (y = x + sigma n), or `timestep` of a model's
    schedule (x_t = sqrt(alpha_bar) x + sqrt(1 - alpha_bar) n). Give exactly one."""
    options, image = await read_image_request(request, NoiseParams, NoiseJSON, max_pixels=settings.max_pixels)
    if (options.sigma is None) == (options.timestep is None):
        raise ApiError(422, ["body", "sigma"], "give exactly one of sigma and timestep", type="conflict")
    model = None
    if options.timestep is not None:
        entry = pick_model(queue.models, options.model, task=None, settings=settings)
        if options.timestep >= entry.train_timesteps:
            raise ApiError(422, ["body", "timestep"], f"timestep must be below {entry.train_timesteps} for model {entry.name!r}", type="out_of_range")
        model = entry.name
    spec = NoiseSpec(
        model=model, image=image, sigma=options.sigma, timestep=options.timestep,
        seed=options.seed if options.seed is not None else random_seed(),
        output_format=choose_format(options.output_format, accept),
    )
    return await run_job(queue, spec, idempotency_key=None, prefer_async=prefers_async(prefer),
                         raw=wants_raw_image(accept), timeout=settings.sync_timeout_s)
