"""Image bytes <-> uint8 arrays with Pillow: upload checks (size before decoding) and result encoding.

Shared by the HTTP layer (decoding uploads) and the worker (encoding results); no torch here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

OutputFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMAT_OF_MEDIA_TYPE = {v: k for k, v in MEDIA_TYPES.items()}


class ImageTooLarge(ValueError):
    """More pixels than allowed (checked from the header, before decoding)."""


class ImageUndecodable(ValueError):
    """Not an image Pillow can decode."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8, [H, W, C] with C in (1, 3)
    alpha_dropped: bool
    source_mode: str


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode an upload to grey or RGB uint8; refuse images over ``max_pixels`` before decoding them."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own header check, at twice its default limit
        raise ImageTooLarge(f"image has more pixels than the limit of {max_pixels}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageUndecodable("not a decodable image (PNG, JPEG, WebP, BMP, TIFF, ...)") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels, more than the limit of {max_pixels}")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageUndecodable(f"image could not be decoded: {exc}") from exc
    mode = image.mode
    alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info)
    if mode in ("L", "1", "I;16", "I", "F", "LA") or (mode == "P" and _palette_is_grey(image)):
        grey = image.convert("L")
        pixels = np.asarray(grey, dtype=np.uint8)[:, :, None]
    else:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return DecodedImage(pixels=np.ascontiguousarray(pixels), alpha_dropped=alpha, source_mode=mode)


def _palette_is_grey(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    triples = [palette[i : i + 3] for i in range(0, len(palette), 3)]
    return all(r == g == b for r, g, b in triples)


def encode_image(pixels: np.ndarray, fmt: str) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) to PNG, JPEG (quality 95) or lossless WebP bytes."""
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"unknown output format {fmt!r}")
    array = pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(array))
    if fmt == "png":
        image.save(buffer, format="PNG")
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()
