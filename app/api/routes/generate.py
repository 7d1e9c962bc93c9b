"""POST /v1/generate: images from noise."""

from __future__ import annotations

from fastapi import APIRouter

from app.api import resolve
from app.api.results import RESPONSES, SubmissionDep
from app.api.schemas import GenerateRequest, JobOut
from app.api.uploads import fingerprint

router = APIRouter(tags=["generate"])


@router.post("/generate", response_model=JobOut, responses=RESPONSES)
async def generate(body: GenerateRequest, submission: SubmissionDep):
    """Generate `num_images` images. Sync by default; `Prefer: respond-async` answers 202 with a job."""
    spec = resolve.generate_spec(body, submission)
    return await submission.run(spec, fingerprint=fingerprint("generate", body), options=body)
