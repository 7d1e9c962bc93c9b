"""POST /v1/generate: images from noise."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request

from app.api.deps import QueueDep, SettingsDep
from app.api.errors import ApiError
from app.api.negotiation import choose_format, prefers_async, wants_raw_image
from app.api.resolve import generate_spec, pick_model
from app.api.results import run_job
from app.api.schemas import GenerateRequest

router = APIRouter(tags=["generate"])

RESPONSES = {
    200: {"description": "the images (JSON with base64 data, or raw bytes with `Accept: image/png`)",
          "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
    202: {"description": "accepted (`Prefer: respond-async`, or still running after the sync timeout)"},
    404: {"description": "unknown model"},
    406: {"description": "Accept cannot be satisfied"},
    415: {"description": "body is not JSON"},
    422: {"description": "invalid field (named in `detail[].loc`)"},
    503: {"description": "queue full (see Retry-After) or model not served"},
}


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, ["header", "content-type"], f"unsupported media type {content_type or '(none)'!r}: send application/json", type="unsupported_media_type")


@router.post("/generate", responses=RESPONSES, dependencies=[Depends(require_json)])
async def generate(
    body: GenerateRequest,
    queue: QueueDep,
    settings: SettingsDep,
    accept: Annotated[str | None, Header()] = None,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
):
    """Generate `num_images` images. Sync by default; `Prefer: respond-async` answers 202 with a job."""
    entry = pick_model(queue.models, body.model, task="generate", settings=settings)
    raw = wants_raw_image(accept)
    if raw and body.num_images != 1:
        raise ApiError(406, ["body", "num_images"], "raw image bytes (Accept: image/...) carry one image: set num_images to 1 or accept JSON", type="not_acceptable")
    spec = generate_spec(body, entry, choose_format(body.output_format, accept))
    return await run_job(queue, spec, idempotency_key=idempotency_key, prefer_async=prefers_async(prefer), raw=raw, timeout=settings.sync_timeout_s)
