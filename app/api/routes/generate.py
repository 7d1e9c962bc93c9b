"""POST /v1/generate: images from noise."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.api.errors import ApiError
from app.api.resolve import generate_spec, pick_model
from app.api.results import RESPONSES, SubmissionDep
from app.api.schemas import GenerateRequest

router = APIRouter(tags=["generate"])


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, ["header", "content-type"], f"unsupported media type {content_type or '(none)'!r}: send application/json", type="unsupported_media_type")


@router.post("/generate", responses=RESPONSES, dependencies=[Depends(require_json)])
async def generate(body: GenerateRequest, job: SubmissionDep):
    """Generate `num_images` images. Sync by default; `Prefer: respond-async` answers 202 with a job."""
    entry = pick_model(job.queue.models, body.model, task="generate", settings=job.settings)
    if job.raw and body.num_images != 1:
        raise ApiError(406, ["body", "num_images"], "raw image bytes (Accept: image/...) carry one image: set num_images to 1 or accept JSON", type="not_acceptable")
    return await job.run(generate_spec(body, entry, job.output_format(body.output_format)))
