"""Content negotiation on ``Accept`` (RFC 9110 sec. 12.5.1), written by hand to stay small and free of torch.

Results are JSON by default; a client that prefers an image type gets the raw image bytes instead. Media
ranges are weighed by their ``q`` (0 means "not acceptable"), and an offered type takes the ``q`` of the most
specific range that matches it (``type/subtype`` beats ``type/*`` beats ``*/*``), so ``image/png;q=0, */*``
refuses PNG while accepting JSON. Malformed ranges are ignored; when nothing offered is acceptable the answer
is 406, as the README promises.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header

from app.api.errors import ApiError
from app.imaging import FORMAT_OF_MEDIA_TYPE, MEDIA_TYPES

ASYNC_PREFERENCE = "respond-async"
JSON_MEDIA_TYPE = "application/json"
RESULT_TYPES = [JSON_MEDIA_TYPE, *MEDIA_TYPES.values()]
DEFAULT_FORMAT = "png"

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_RANGE = re.compile(rf"^({_TOKEN})/({_TOKEN})$")
_PARAMETER = re.compile(rf'^({_TOKEN})=({_TOKEN}|"(?:[^"\\]|\\.)*")$')
_QVALUE = re.compile(r"^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?|\.\d{1,3})$")  # ".5" is tolerated: old Java clients
# What our representations carry without saying it: JSON is UTF-8 (RFC 8259), so ``charset=utf-8`` matches it.
_IMPLIED_PARAMETERS = {JSON_MEDIA_TYPE: {"charset": "utf-8"}}


@dataclass(frozen=True)
class MediaRange:
    type: str
    subtype: str
    params: dict[str, str]
    q: float

    @property
    def specificity(self) -> tuple[int, int]:
        """``*/*`` < ``type/*`` < ``type/subtype``, then more parameters beat fewer."""
        level = 0 if self.type == "*" else 1 if self.subtype == "*" else 2
        return level, len(self.params)

    def matches(self, media_type: str) -> bool:
        kind, _, sub = media_type.partition("/")
        if self.type not in ("*", kind) or self.subtype not in ("*", sub):
            return False
        implied = _IMPLIED_PARAMETERS.get(media_type, {})
        return all(implied.get(name) == value for name, value in self.params.items())


@dataclass(frozen=True)
class Negotiated:
    """``raw``: answer with the image bytes themselves; ``output_format``: the image format (png/jpeg/webp)."""

    raw: bool
    output_format: str


def _split(text: str, separator: str) -> list[str]:
    """``text`` cut at each ``separator`` outside a quoted string (one linear pass, whatever the header holds)."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _parse_parameter(text: str) -> tuple[str, str] | None:
    match = _PARAMETER.match(text.strip())
    if not match:
        return None
    name, value = match.group(1).lower(), match.group(2)
    if value.startswith('"'):
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return name, value.lower()


def parse_media_range(text: str) -> MediaRange | None:
    """One element of ``Accept`` (``image/png;q=0.5``), or None when it is malformed."""
    head, *rest = _split(text, ";")
    head = head.strip().lower()
    match = _MEDIA_RANGE.match("*/*" if head == "*" else head)  # a bare "*" is an old spelling of */*
    if not match or (match.group(1) == "*" and match.group(2) != "*"):
        return None
    params, q = {}, 1.0
    for item in rest:
        parsed = _parse_parameter(item)
        if parsed is None:
            return None
        name, value = parsed
        if name != "q":
            params[name] = value
        elif _QVALUE.match(value):
            q = float(value)
        else:
            return None
    return MediaRange(match.group(1), match.group(2), params, q)


def parse_accept(accept: str | None) -> list[MediaRange]:
    """The well-formed media ranges of an ``Accept`` header; no header, or an empty one, is ``*/*``."""
    elements = [e for e in _split(accept or "", ",") if e.strip()]
    if not elements:
        return [MediaRange("*", "*", {}, 1.0)]
    return [r for r in map(parse_media_range, elements) if r is not None]


def quality(ranges: list[MediaRange], media_type: str) -> float:
    """The ``q`` the client gives ``media_type``: that of the most specific matching range (first listed on ties)."""
    matching = [r for r in ranges if r.matches(media_type)]
    if not matching:
        return 0.0
    return max(matching, key=lambda r: r.specificity).q


def negotiate(accept: str | None, offered: list[str]) -> str | None:
    """The offered media type the client likes best (earlier offered wins ties), or None if none is acceptable."""
    ranges = parse_accept(accept)
    best, best_q = None, 0.0
    for media_type in offered:
        q = quality(ranges, media_type.lower())
        if q > best_q:
            best, best_q = media_type, q
    return best


def not_acceptable(offered: list[str]) -> ApiError:
    msg = f"Accept allows none of the media types this resource can produce: {', '.join(offered)}"
    return ApiError(406, ["header", "accept"], msg, type="not_acceptable")


def negotiate_result(
    accept: str | None, requested_format: str | None, *, images: int = 1, formats: list[str] | None = None
) -> Negotiated:
    """JSON or raw image bytes for a job result, and the image format; 406 when nothing offered is acceptable.

    With a ``requested_format`` only JSON and that format's media type are offered, else JSON and the image
    types of ``formats`` (default: every one); for several ``images`` only JSON (raw bytes carry one image),
    however much more the client likes an image type."""
    if requested_format is not None and requested_format not in MEDIA_TYPES:
        raise ValueError(f"unknown output format {requested_format!r}")
    if images != 1:
        if negotiate(accept, [JSON_MEDIA_TYPE]) is None:
            raise ApiError(
                406,
                ["body", "num_images"],
                "raw image bytes (Accept: image/...) carry one image: set num_images to 1 or accept JSON",
                type="not_acceptable",
            )
        return Negotiated(raw=False, output_format=requested_format or DEFAULT_FORMAT)
    if requested_format:
        offered = [JSON_MEDIA_TYPE, MEDIA_TYPES[requested_format]]
    else:
        offered = [JSON_MEDIA_TYPE, *(t for f, t in MEDIA_TYPES.items() if formats is None or f in formats)]
    best = negotiate(accept, offered)
    if best is None:
        raise not_acceptable(offered)
    if best == JSON_MEDIA_TYPE:
        return Negotiated(raw=False, output_format=requested_format or DEFAULT_FORMAT)
    return Negotiated(raw=True, output_format=FORMAT_OF_MEDIA_TYPE[best])


def require_acceptable(accept: str | None, media_type: str) -> None:
    """Raise the 406 unless the client accepts ``media_type`` (routes that produce one type only)."""
    if negotiate(accept, [media_type]) is None:
        raise not_acceptable([media_type])


def accepting(media_type: str) -> Callable[..., None]:
    """A route dependency: 406 unless ``Accept`` allows ``media_type`` (routes that answer in one type only),
    checked before the route runs (before a stream starts)."""

    def check(accept: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
        require_acceptable(accept, media_type)

    return check


def prefers_async(prefer: str | None) -> bool:
    """``Prefer`` names respond-async (RFC 7240: each preference is a token, then ``=value`` and ``;``
    parameters, which are ignored here)."""
    preferences = _split(prefer or "", ",")
    return any(p.split(";", 1)[0].split("=", 1)[0].strip().lower() == ASYNC_PREFERENCE for p in preferences)
