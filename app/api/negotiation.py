"""Content negotiation for results: JSON by default; raw image bytes when the client accepts only images."""

from __future__ import annotations

from app.api.errors import ApiError
from app.imaging import FORMAT_OF_MEDIA_TYPE

ASYNC_PREFERENCE = "respond-async"


def accepted_types(accept: str | None) -> list[str]:
    return [part.split(";")[0].strip().lower() for part in (accept or "").split(",") if part.strip()]


def wants_raw_image(accept: str | None) -> bool:
    """True when every type the client accepts is an image type (``Accept: image/png``)."""
    types = accepted_types(accept)
    return bool(types) and all(t.startswith("image/") for t in types)


def choose_format(requested: str | None, accept: str | None) -> str:
    """The output format: the request's, else the first image type the client accepts, else PNG.
    A request asking for raw bytes in a format other than the one it names is refused (406)."""
    if not wants_raw_image(accept):
        return requested or "png"
    formats = [FORMAT_OF_MEDIA_TYPE[t] for t in accepted_types(accept) if t in FORMAT_OF_MEDIA_TYPE]
    wildcard = "image/*" in accepted_types(accept)
    if requested:
        if requested in formats or wildcard:
            return requested
        raise ApiError(406, ["header", "accept"], f"Accept does not include the requested output_format {requested!r}", type="not_acceptable")
    if formats:
        return formats[0]
    if wildcard:
        return "png"
    raise ApiError(406, ["header", "accept"], "Accept names no image type this service produces (png, jpeg, webp)", type="not_acceptable")


def prefers_async(prefer: str | None) -> bool:
    return any(p.strip().lower() == ASYNC_PREFERENCE for p in (prefer or "").split(","))
