"""Read the image of a denoise/noise request, from a multipart upload or base64 JSON, with its options."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from app.api.errors import ApiError
from app.imaging import ImageTooLarge, ImageUndecodable, decode_image
from app.jobs import ImageData

P = TypeVar("P", bound=BaseModel)
MIN_SIDE = 8


def _validate(model: type[P], data: dict, prefix: str) -> P:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": (prefix, *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        ) from exc


async def read_image_request(request: Request, params: type[P], json_model: type[BaseModel], *, max_pixels: int) -> tuple[P, ImageData]:
    """(options, decoded image) from ``multipart/form-data`` (field ``file``) or JSON (field ``image``)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form()
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, ["body", "file"], "multipart upload needs an image in the field 'file'", type="missing")
            fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str) and v != ""}
            options = _validate(params, fields, "body")
            raw = await upload.read()
        finally:
            await form.close()
        loc = ["body", "file"]
    elif content_type == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(422, ["body"], f"invalid JSON: {exc}", type="json_invalid") from exc
        if not isinstance(body, dict):
            raise ApiError(422, ["body"], "the JSON body must be an object", type="model_attributes_type")
        full = _validate(json_model, body, "body")
        options = params.model_validate(full.model_dump(exclude={"image"}, exclude_unset=True))
        try:
            raw = base64.b64decode(full.image, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(422, ["body", "image"], "image is not valid base64", type="base64_invalid") from exc
        loc = ["body", "image"]
    else:
        raise ApiError(
            415, ["header", "content-type"],
            f"unsupported media type {content_type or '(none)'!r}: send multipart/form-data (field 'file') or application/json (field 'image')",
            type="unsupported_media_type",
        )
    if not raw:
        raise ApiError(422, loc, "the image is empty", type="missing")
    try:
        decoded = decode_image(raw, max_pixels=max_pixels)
    except ImageTooLarge as exc:
        raise ApiError(413, loc, str(exc), type="too_many_pixels") from exc
    except ImageUndecodable as exc:
        raise ApiError(422, loc, str(exc), type="image_undecodable") from exc
    height, width, channels = decoded.pixels.shape
    if min(height, width) < MIN_SIDE:
        raise ApiError(422, loc, f"image is {width}x{height}; both sides must be at least {MIN_SIDE} pixels", type="too_small")
    image = ImageData(width=width, height=height, channels=channels, pixels=decoded.pixels.tobytes(), alpha_dropped=decoded.alpha_dropped)
    return options, image
