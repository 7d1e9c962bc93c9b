"""Small helpers for API tests: images as upload bytes, decoding answers."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def photo(height=40, width=48, channels=3, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.float64)
    image = np.stack([base, base[::-1], base[:, ::-1]], axis=-1)[:, :, :channels]
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8).squeeze()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def decode_b64(text: str) -> np.ndarray:
    return decode(base64.b64decode(text))


def errors_at(response) -> list[list]:
    return [e["loc"] for e in response.json()["detail"]]
