"""Request bodies: the one content-type parser, and the image of a denoise/noise request read from a
multipart upload or from base64 JSON, with its options and its fingerprint (for Idempotency-Key)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from anyio import to_thread
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from app.api.errors import (
    JSON_FAILURES,
    ApiError,
    brief,
    invalid_json,
    parse_json_aside,
    refusal,
    single_header,
)
from app.imaging import ImageTooLarge, ImageUndecodable, ImageUnsupported, decode_image
from app.jobs import DEFAULT_PRIORITY, ImageData

P = TypeVar("P", bound=BaseModel)
MIN_SIDE = 8
FORM_FILE = ("body", "file")  # an upload's place in a form, as errors name it; in a JSON body ("body", "image")


def media_type(request: Request) -> str:
    """The request's content type, lower case, without parameters ("" when absent). Content-Type is a
    single-valued field: given twice, which one the body is in is not guessed (400)."""
    return (single_header(request, "Content-Type") or "").split(";")[0].strip().lower()


def unsupported_media_type(found: str, expected: str) -> ApiError:
    return ApiError(
        415,
        ["header", "content-type"],
        f"unsupported media type {brief(found or '(none)')}: send {expected}",
        type="unsupported_media_type",
    )


def fingerprint(kind: str, options: BaseModel, image: bytes = b"") -> str:
    """What makes two requests the same request: their kind, their options as validated, their image. A
    priority left out reads as the default one, as before it could be left out (the same request either way
    for a key without a cap, and across an upgrade)."""
    values = options.model_dump(mode="json")
    if "priority" in values and values["priority"] is None:
        values["priority"] = DEFAULT_PRIORITY
    body = json.dumps({"kind": kind, "options": values}, sort_keys=True)
    return hashlib.sha256(body.encode() + hashlib.sha256(image).digest()).hexdigest()


@dataclass(frozen=True)
class ImageRequest(Generic[P]):
    options: P
    image: ImageData
    fingerprint: str
    mask: ImageData | None = None  # inpainting: a second image (multipart ``mask``, JSON ``mask``)
    loc: tuple = FORM_FILE  # where the image came, for the errors about it


def _validate(model: type[P], data: dict, prefix: str) -> P:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": (prefix, *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        ) from exc


@dataclass(frozen=True)
class UploadBody:
    """An upload route's body as parsed, not yet validated: a multipart form, or a JSON document."""

    form: FormData | None = None
    document: Any = None


async def parse_upload_body(request: Request) -> UploadBody:
    """The body of an upload route parsed (415 for another content type, 400 for a malformed form, 422 for
    what is not JSON; the size limit's 413 as it streams), nothing in it validated yet."""
    content_type = media_type(request)
    if content_type == "multipart/form-data":
        return UploadBody(form=await _read_form(request))
    if content_type == "application/json":
        try:
            return UploadBody(document=await parse_json_aside(await request.body()))
        except JSON_FAILURES as exc:
            raise invalid_json(exc) from exc
    raise unsupported_media_type(content_type, "multipart/form-data (field 'file') or application/json (field 'image')")


async def upload_body_first(request: Request) -> AsyncIterator[None]:
    """The upload routes' first dependency, before the key check counts the request: their body is read and
    parsed here, as FastAPI parses a JSON body before any dependency, so a body refused before it could be
    read (over the size limit, not JSON, a malformed form, another content type) is not counted on these
    routes either. The key check's 401 or 403 comes first, as on every route, and before the body is read: a
    caller without a valid key makes the service read and parse nothing."""
    refused = refusal(request)
    if refused is not None:
        raise refused
    body = await parse_upload_body(request)
    request.state.upload_body = body
    try:
        yield
    finally:
        if body.form is not None:
            await body.form.close()


async def json_body_first(request: Request) -> None:
    """The JSON routes' first dependency, before the key check counts the request: another content type is
    415, an empty body or a name given twice in one object 422, none counted (the key check's 401 or 403
    first). FastAPI refuses a body that is not JSON before any dependency, but passes an empty one on to be
    found missing after them, and reads a repeated name as its last."""
    try:
        found = media_type(request)
    except ApiError as exc:  # Content-Type given twice
        raise refusal(request) or exc from None
    if found != "application/json":
        raise refusal(request) or unsupported_media_type(found, "application/json")
    body = await request.body()  # read by FastAPI already: no second read
    if not body:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise refusal(request) or RequestValidationError([missing])
    try:  # FastAPI parsed it already (a body that is not JSON never gets here), keeping a repeated name's last
        await parse_json_aside(body)
    except JSON_FAILURES as exc:
        raise refusal(request) or invalid_json(exc) from None


async def read_image_request(
    request: Request, kind: str, params: type[P], json_model: type[BaseModel], *, max_pixels: int
) -> ImageRequest[P]:
    """Options and decoded image from ``multipart/form-data`` (field ``file``) or JSON (field ``image``); a
    ``mask`` image too where the JSON model has that field (multipart field ``mask``). The body as
    ``upload_body_first`` parsed it, or parsed here."""
    body = getattr(request.state, "upload_body", None) or await parse_upload_body(request)
    if body.form is not None:
        takes_mask = "mask" in json_model.model_fields
        options, raw, loc, raw_mask = await _from_form(body.form, params, takes_mask=takes_mask)
    else:
        # validated and its base64 decoded in a thread: a photo's is megabytes, the event loop serves others
        options, raw, loc, raw_mask = await run_in_threadpool(_from_json, body.document, params, json_model)
    if not raw:
        raise ApiError(422, loc, "the image is empty", type="missing")
    if raw_mask is not None and not raw_mask:  # given, but empty: not the same request as no mask
        raise ApiError(422, ["body", "mask"], "the mask is empty", type="missing")
    # decoded on a worker thread (a large upload takes the event loop from no other request meanwhile), a few
    # at a time (app.state.decode_slots: each may take 100 MB)
    slots = request.app.state.decode_slots
    image = await to_thread.run_sync(_decode, raw, loc, max_pixels, limiter=slots)
    mask = None
    if raw_mask is not None:
        mask = await to_thread.run_sync(_decode, raw_mask, ["body", "mask"], max_pixels, True, limiter=slots)
    return ImageRequest(
        options, image, fingerprint(kind, options, raw + b"|mask|" + (raw_mask or b"")), mask, tuple(loc)
    )


class _WholeMultipart(MultiPartParser):
    """Starlette's parser, which also refuses a body that ends before its closing boundary: the part it was
    in would otherwise be dropped in silence (and reported as a missing field)."""

    ended = False

    def on_end(self) -> None:
        self.ended = True

    async def parse(self) -> FormData:
        form = await super().parse()
        if not self.ended:
            await form.close()
            raise MultiPartException("the body ends before its closing boundary (cut off?)")
        return form


async def _read_form(request: Request) -> FormData:
    """The multipart form, with the limits of Starlette's ``Request.form()``; 400 for a malformed body."""
    try:
        async with aclosing(request.stream()) as stream:
            return await _WholeMultipart(request.headers, stream).parse()
    except MultiPartException as exc:
        raise StarletteHTTPException(400, detail=exc.message) from exc


async def _from_form(form: FormData, params: type[P], *, takes_mask: bool) -> tuple[P, bytes, list, bytes | None]:
    try:
        upload = form.get("file")
        if isinstance(upload, str):
            raise _came_as_text("file", "the image", "photo.png")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, ["body", "file"], "multipart upload needs an image in the field 'file'", type="missing")
        _check_form_fields(form)
        mask = form.get("mask")
        if isinstance(mask, str) and takes_mask:
            raise _came_as_text("mask", "the mask", "mask.png")
        if mask is not None and not (isinstance(mask, UploadFile) and takes_mask):
            raise ApiError(422, ["body", "mask"], "this request takes no mask", type="extra_forbidden")
        fields = {k: v for k, v in form.items() if k not in ("file", "mask") and isinstance(v, str) and v != ""}
        raw_mask = await mask.read() if isinstance(mask, UploadFile) else None
        return _validate(params, fields, "body"), await upload.read(), ["body", "file"], raw_mask
    finally:
        await form.close()


def _came_as_text(field: str, what: str, example: str) -> ApiError:
    """A part without a filename is a text field to multipart parsers (``curl -F mask=mask.png``, no ``@``)."""
    return ApiError(
        422,
        ["body", field],
        f"the field '{field}' came as text: send {what} as a file part, with a filename "
        f'(Content-Disposition: form-data; name="{field}"; filename="{example}"; curl -F {field}=@{example})',
        type="missing",
    )


def _check_form_fields(form) -> None:
    """Each field once, and only ``file`` and ``mask`` as files: a field given twice, or an option sent as a
    file (``-F sigma=@x``), would otherwise be dropped in silence and its default used."""
    seen: dict[str, int] = {}
    for name, value in form.multi_items():
        seen[name] = seen.get(name, 0) + 1
        if name not in ("file", "mask") and not isinstance(value, str):
            raise ApiError(422, ["body", name], f"{name} must be a plain form field, not a file", type="string_type")
    for name, count in seen.items():
        if count > 1:
            hint = " (webhook_events takes a comma-separated list)" if name == "webhook_events" else ""
            raise ApiError(422, ["body", name], f"{name} is given {count} times; give it once{hint}", type="duplicate")


# RFC 2397: data:[<media type>][;<parameter>=<value>]*;base64,<data> (the media type may be left out)
_DATA_URL = re.compile(r'data:(?:[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=(?:[\w.+-]+|"[^"]*"))*;base64,', re.IGNORECASE)
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
_WHITESPACE = re.compile(r"\s+")
_URL_SAFE = str.maketrans("-_", "+/")


def _base64(text: str, field: str) -> bytes:
    """An image in base64 as clients write it: the standard or the URL-safe alphabet, padded or not, with line
    breaks (``base64`` wraps at 76 columns, Python's ``encodebytes`` too) and a ``data:`` URL's prefix (a
    browser's ``FileReader.readAsDataURL``) allowed; anything else is a 422 naming what is wrong."""
    data = text.strip()
    prefix = _DATA_URL.match(data)
    # whitespace removed by a regular expression: str.split() would make a string of each piece (+0.5 GB for
    # 20 MB of "AB AB ...")
    data = _WHITESPACE.sub("", data[prefix.end() if prefix else 0 :]).translate(_URL_SAFE)
    bad = _NOT_BASE64.search(data)  # a regular expression: a 20 MB field in tens of ms, not a Python loop's 0.5 s
    if bad is not None:
        why = f"{brief(bad.group())} is not a base64 character"
        if data[:5].lower() == "data:":
            why = "a data: URL must be base64 (data:<type>;base64,<data>)"
        raise ApiError(422, ["body", field], f"{field} is not valid base64: {why}", type="base64_invalid")
    try:
        return base64.b64decode(data if "=" in data else data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        why = "its length or padding is wrong (cut short?)"
        raise ApiError(422, ["body", field], f"{field} is not valid base64: {why}", type="base64_invalid") from exc


def _from_json(body: Any, params: type[P], json_model: type[BaseModel]) -> tuple[P, bytes, list, bytes | None]:
    if not isinstance(body, dict):
        raise ApiError(422, ["body"], "the JSON body must be an object", type="model_attributes_type")
    full = _validate(json_model, body, "body")
    options = params.model_validate(full.model_dump(exclude={"image", "mask"}, exclude_unset=True))
    mask = getattr(full, "mask", None)
    return options, _base64(full.image, "image"), ["body", "image"], None if mask is None else _base64(mask, "mask")


def _decode(raw: bytes, loc: list, max_pixels: int, mask: bool = False) -> ImageData:
    """An upload decoded (``mask``: whether it has transparent pixels is looked at too), or a 4xx saying why not."""
    try:
        decoded = decode_image(raw, max_pixels=max_pixels, transparency=mask)
    except ImageTooLarge as exc:
        raise ApiError(413, loc, str(exc), type="too_many_pixels") from exc
    except ImageUnsupported as exc:
        raise ApiError(422, loc, str(exc), type="image_unsupported") from exc
    except ImageUndecodable as exc:
        raise ApiError(422, loc, str(exc), type="image_undecodable") from exc
    height, width, channels = decoded.pixels.shape
    if min(height, width) < MIN_SIDE:
        raise ApiError(
            422, loc, f"image is {width}x{height}; both sides must be at least {MIN_SIDE} pixels", type="too_small"
        )
    return ImageData(
        width=width,
        height=height,
        channels=channels,
        pixels=decoded.pixels.tobytes(),
        alpha_dropped=decoded.alpha_dropped,
        transparent=decoded.transparent,
        frames_dropped=decoded.frames_dropped,
        exif_orientation=decoded.exif_orientation,
        icc_profile=decoded.icc_profile,
    )
