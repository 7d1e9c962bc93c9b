"""POST /v1/denoise (clean a noisy photo) and POST /v1/noise (the forward process, for demos and tests)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api import resolve
from app.api.results import RESPONSES, SubmissionDep
from app.api.schemas import DenoiseJSON, DenoiseParams, Img2ImgJSON, Img2ImgParams, JobOut, NoiseJSON, NoiseParams
from app.api.uploads import read_image_request

router = APIRouter(tags=["denoise"])
noise_router = APIRouter(tags=["noise"])
img2img_router = APIRouter(tags=["generate"])


def _form_field(schema: dict) -> dict:
    """A JSON field's schema as a multipart field: a list is one comma-separated text field (the server takes
    one part per field; OpenAPI's default for an array in a form is a part per item, which it refuses)."""
    if schema.get("type") != "array":
        return schema
    choices = ", ".join(schema.get("items", {}).get("enum", []))
    return {
        "type": "string",
        "title": schema.get("title"),
        "description": f"{schema.get('description', '')}; a comma-separated list"
        + (f" of {choices}" if choices else ""),
    }


def _upload_body(json_model) -> dict:
    """OpenAPI for an endpoint that takes the image as multipart or as base64 JSON."""
    form_schema = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "the image file"},
            **{k: _form_field(v) for k, v in json_model.model_json_schema()["properties"].items() if k != "image"},
        },
    }
    if "mask" in form_schema["properties"]:
        form_schema["properties"]["mask"] = {"type": "string", "format": "binary", "description": "the mask file"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form_schema},
                "application/json": {"schema": json_model.model_json_schema()},
            },
        }
    }


@router.post("/denoise", response_model=JobOut, responses=RESPONSES, openapi_extra=_upload_body(DenoiseJSON))
async def denoise(request: Request, submission: SubmissionDep):
    """Denoise an uploaded image (grey or RGB, any size up to the pixel limit; alpha is dropped and
    `info.alpha_dropped` says so, as `info.frames_dropped` does for the frames of an animation after the
    first, and `info.exif_orientation` for a photo turned as its EXIF orientation says). `sigma` is the noise
    std on the 0-255 scale, or `auto`."""
    upload = await read_image_request(
        request, "denoise", DenoiseParams, DenoiseJSON, max_pixels=submission.settings.max_pixels
    )
    spec = resolve.denoise_spec(upload.options, upload.image, submission, upload.loc)
    return await submission.run(spec, fingerprint=upload.fingerprint, options=upload.options)


@noise_router.post("/noise", response_model=JobOut, responses=RESPONSES, openapi_extra=_upload_body(NoiseJSON))
async def noise(request: Request, submission: SubmissionDep):
    """Add seeded Gaussian noise: `sigma` on the 0-255 scale (y = x + sigma n), or `timestep` of a model's
    schedule (x_t = sqrt(alpha_bar) x + sqrt(1 - alpha_bar) n). Give exactly one."""
    upload = await read_image_request(
        request, "noise", NoiseParams, NoiseJSON, max_pixels=submission.settings.max_pixels
    )
    spec = resolve.noise_spec(upload.options, upload.image, submission, upload.loc)
    return await submission.run(spec, fingerprint=upload.fingerprint, options=upload.options)


@img2img_router.post("/img2img", response_model=JobOut, responses=RESPONSES, openapi_extra=_upload_body(Img2ImgJSON))
async def img2img(request: Request, submission: SubmissionDep):
    """Generate from an image: it is noised `strength` of the way into the chain, which then runs from there
    (the seed draws the noise). With a `mask` (white = repaint), only the masked part is regenerated:
    inpainting. Takes the generate fields the model takes, at the image's own size."""
    upload = await read_image_request(
        request, "img2img", Img2ImgParams, Img2ImgJSON, max_pixels=submission.settings.max_pixels
    )
    spec = resolve.generate_spec(upload.options, submission, image=upload.image, mask=upload.mask, image_loc=upload.loc)
    return await submission.run(spec, fingerprint=upload.fingerprint, options=upload.options)
