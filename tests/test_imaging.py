"""app.imaging: decoding uploads (truncation, modes, 16-bit grey, animations) and encoding results.

Every image is built in memory, with Pillow or by hand (PNG chunks, patched TIFF tags).
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, ImageOps

from app.imaging import (
    FORMAT_OF_MEDIA_TYPE,
    MEDIA_TYPES,
    DecodedImage,
    ImageTooLarge,
    ImageUndecodable,
    ImageUnsupported,
    MAX_FRAMES_COUNTED,
    decode_image,
    encode_image,
    image_to_pixels,
)

LIMIT = 1_000_000


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(height: int = 64, width: int = 64, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


# --- hand-made PNGs ------------------------------------------------------------------------------------------

SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel by PNG colour type


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(
    width: int, height: int, rows: bytes, *, colour_type: int = 0, depth: int = 8, interlace: int = 0, plte=True
) -> bytes:
    """A PNG around already filtered scanlines, whatever their length (so it can claim more rows than it holds)."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, interlace)
    palette = chunk(b"PLTE", bytes(range(256)) * 3) if colour_type == 3 and plte else b""  # 256 entries
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + palette
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def row_bytes(width: int, colour_type: int, depth: int) -> int:
    return (width * SAMPLES[colour_type] * depth + 7) // 8


def adam7_rows(width: int, height: int) -> list[tuple[int, int]]:
    """(rows, columns) of each non-empty Adam7 pass, by listing the pixels of each pass (independent of the code)."""
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    shapes = []
    for row0, col0, row_step, col_step in passes:
        rows = len(range(row0, height, row_step))
        cols = len(range(col0, width, col_step))
        if rows and cols:
            shapes.append((rows, cols))
    return shapes


def scanlines(width: int, height: int, colour_type: int, depth: int, *, interlaced: bool, value: int) -> list[bytes]:
    """Every filtered row (filter byte 0, then bytes of ``value``), all passes in order when interlaced."""
    shapes = adam7_rows(width, height) if interlaced else [(height, width)]
    return [
        b"\x00" + bytes([value]) * row_bytes(cols, colour_type, depth) for rows, cols in shapes for _ in range(rows)
    ]


# --- 1. truncated images ---------------------------------------------------------------------------------------


def one_row_of_4000x4000() -> bytes:
    data = png(4000, 4000, b"\x00" + b"\x80" * 4000)
    assert len(data) < 100
    return data


def test_png_holding_one_row_of_4000x4000_is_refused():
    # Pillow alone decodes this: its zlib decoder stops at the end of the stream and leaves 3999 black rows.
    with pytest.raises(ImageUndecodable, match="truncated"):
        decode_image(one_row_of_4000x4000(), max_pixels=4000 * 4000)


def test_pixel_limit_is_checked_before_truncation():
    with pytest.raises(ImageTooLarge, match="4000x4000"):
        decode_image(one_row_of_4000x4000(), max_pixels=4000 * 4000 - 1)


# every sample depth PNG allows per colour type (grey, RGB, palette, grey + alpha, RGBA)
PNG_LAYOUTS = [(0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (2, 8), (2, 16), (3, 1), (3, 2), (3, 4), (3, 8)]
PNG_LAYOUTS += [(4, 8), (4, 16), (6, 8), (6, 16)]


@pytest.mark.parametrize("interlaced", [False, True], ids=["plain", "interlaced"])
@pytest.mark.parametrize("colour_type, depth", PNG_LAYOUTS)
def test_png_missing_its_last_row_is_refused_and_complete_one_decodes(colour_type, depth, interlaced):
    width, height = 13, 11  # odd sizes: partial bytes per row, uneven Adam7 passes
    rows = scanlines(width, height, colour_type, depth, interlaced=interlaced, value=0x11)
    complete = png(width, height, b"".join(rows), colour_type=colour_type, depth=depth, interlace=int(interlaced))
    decoded = decode_image(complete, max_pixels=LIMIT)
    assert decoded.pixels.shape[:2] == (height, width)
    short = png(width, height, b"".join(rows[:-1]), colour_type=colour_type, depth=depth, interlace=int(interlaced))
    with pytest.raises(ImageUndecodable, match="truncated"):
        decode_image(short, max_pixels=LIMIT)


def test_png_with_corrupt_image_data_is_refused():
    good = png(8, 8, b"".join(scanlines(8, 8, 0, 8, interlaced=False, value=0)))
    idat = good.index(b"IDAT") + 4
    broken = good[:idat] + b"\xff" * 8 + good[idat + 8 :]
    with pytest.raises(ImageUndecodable):
        decode_image(broken, max_pixels=LIMIT)


def idat_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each IDAT chunk, length field to CRC."""
    spans, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if data[pos + 4 : pos + 8] == b"IDAT":
            spans.append((pos, pos + 12 + length))
        pos += 12 + length
    return spans


def test_png_over_several_idat_chunks_decodes_and_refuses_one_missing():
    array = noise(300, 300)
    data = save(Image.fromarray(array), "PNG")
    spans = idat_chunks(data)
    assert len(spans) > 2
    np.testing.assert_array_equal(decode_image(data, max_pixels=LIMIT).pixels, array)
    start, end = spans[-1]
    with pytest.raises(ImageUndecodable):
        decode_image(data[:start] + data[end:], max_pixels=LIMIT)


@pytest.mark.parametrize(
    "fmt, options",
    [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("GIF", {}), ("WEBP", {}), ("TIFF", {}), ("BMP", {})],
    ids=["png", "jpeg", "jpeg-progressive", "gif", "webp", "tiff", "bmp"],
)
def test_file_cut_in_half_is_refused(fmt, options):
    data = save(Image.fromarray(noise()), fmt, **options)
    with pytest.raises(ImageUndecodable):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def test_png_cut_after_its_last_row_still_decodes():
    # Only IEND and the chunk checksum are missing: every pixel is there (browsers show it too).
    array = noise(16, 16)
    data = save(Image.fromarray(array), "PNG")
    decoded = decode_image(data[: -len(chunk(b"IEND", b"")) - 4], max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded.pixels, array)


def test_global_truncated_images_switch_is_left_alone():
    from PIL import ImageFile

    decode_image(save(Image.new("RGB", (8, 8)), "PNG"), max_pixels=LIMIT)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- 2. 16-bit grey ------------------------------------------------------------------------------------------


def test_16_bit_grey_png_ramp_scales_to_8_bits():
    ramp = np.arange(65536, dtype=np.uint32).reshape(256, 256).astype(np.uint16)
    data = save(Image.fromarray(ramp), "PNG")
    decoded = decode_image(data, max_pixels=LIMIT)
    assert decoded.source_mode == "I;16"
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (256, 256, 1)
    expected = np.round(ramp.astype(np.float64) / 257).astype(np.uint8)
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], expected)
    flat = decoded.pixels.ravel()
    assert flat[0] == 0 and flat[65535] == 255 and flat[257 * 100] == 100 and flat[128] == 0 and flat[129] == 1
    assert set(np.unique(flat)) == set(range(256))  # a ramp, not clipped to white


# --- 3. every mode: converted with the right values, or refused ----------------------------------------------


@dataclass(frozen=True)
class ModeCase:
    mode: str
    label: str  # how the image is made, for the test id
    make: Callable[[], bytes | Image.Image]  # file bytes for decode_image, or an Image for image_to_pixels
    expected: dict[tuple[int, int], tuple[int, ...]] | None  # (x, y) -> values; None: ImageUnsupported
    tolerance: int = 0
    alpha: bool = False
    match: str = ""


def two_values(mode: str, size: tuple[int, int], first, second) -> Image.Image:
    """``first`` everywhere but ``second`` at (2, 1)."""
    image = Image.new(mode, size, first)
    image.putpixel((2, 1), second)
    return image


def palette_image(mode: str, palette: list[int], transparency: int | None = None) -> Image.Image:
    image = Image.new(mode, (8, 6), 1 if mode == "P" else (1, 255))
    image.putpalette(palette)
    image.putpixel((2, 1), 2 if mode == "P" else (2, 0))
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


GREY_PALETTE = [0, 0, 0, 128, 128, 128, 255, 255, 255]
COLOUR_PALETTE = [0, 0, 0, 255, 0, 0, 0, 255, 0]


def tiff_extra_samples(data: bytes, value: int) -> bytes:
    """Rewrite the ExtraSamples tag (338) of a little-endian TIFF: 1 = associated (premultiplied) alpha."""
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack_from("<H", data, entry)[0] == 338:
            return data[: entry + 8] + struct.pack("<H", value) + data[entry + 10 :]
    raise AssertionError("no ExtraSamples tag")


def premultiplied_grey_tiff() -> bytes:
    straight = save(two_values("LA", (8, 6), (100, 128), (50, 255)), "TIFF")
    return tiff_extra_samples(straight, 1)


def grey_tiff(bits: int, sample_format: int, values: list[int]) -> Callable[[], bytes]:
    """A one-row little-endian grey TIFF made by hand (Pillow writes neither 12-bit nor signed 8-bit ones): one
    uncompressed strip of ``values``, packed at ``bits`` per sample (MSB first) as signed or unsigned."""

    def make() -> bytes:
        if bits == 12:
            data = b"".join(bytes([a >> 4, (a & 15) << 4 | b >> 8, b & 255]) for a, b in zip(values[::2], values[1::2]))
        else:
            data = np.array(values, dtype=f"<{'i' if sample_format == 2 else 'u'}{bits // 8}").tobytes()
        tags = {256: len(values), 257: 1, 258: bits, 259: 1, 262: 1, 273: 0, 277: 1, 278: 1, 279: len(data), 339: 0}
        tags[339] = sample_format
        tags[273] = 8 + 2 + 12 * len(tags) + 4  # the strip follows the one IFD
        entries = b"".join(struct.pack("<HHII", tag, 4, 1, value) for tag, value in tags.items())
        return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + struct.pack("<I", 0) + data

    return make


GREY, COLOUR = {(0, 0): (128,), (2, 1): (255,)}, {(0, 0): (255, 0, 0), (2, 1): (0, 255, 0)}  # palette pixels
SIXTEEN = {(0, 0): (10,), (2, 1): (255,)}  # 257 * 10 and 65535
RGB_PIXELS = {(0, 0): (1, 2, 3), (2, 1): (250, 128, 0)}


def pillow_file(mode: str, fmt: str, first, second) -> Callable[[], bytes]:
    return lambda: save(two_values(mode, (8, 6), first, second), fmt)


def palette_file(mode: str, palette: list[int], fmt: str, transparency: int | None = None) -> Callable[[], bytes]:
    return lambda: save(palette_image(mode, palette, transparency), fmt)


MODE_CASES = [
    ModeCase("1", "png", pillow_file("1", "PNG", 0, 1), {(0, 0): (0,), (2, 1): (255,)}),
    ModeCase("L", "png", pillow_file("L", "PNG", 10, 200), {(0, 0): (10,), (2, 1): (200,)}),
    ModeCase("LA", "png", pillow_file("LA", "PNG", (10, 0), (200, 255)), {(0, 0): (10,), (2, 1): (200,)}, alpha=True),
    # premultiplied: 100 at alpha 128 is 199 straight
    ModeCase("La", "tiff", premultiplied_grey_tiff, {(0, 0): (199,), (2, 1): (50,)}, tolerance=1, alpha=True),
    ModeCase("P", "grey-png", palette_file("P", GREY_PALETTE, "PNG"), GREY),
    ModeCase("P", "grey-png-transparent", palette_file("P", GREY_PALETTE, "PNG", 2), GREY, alpha=True),
    ModeCase("P", "colour-png", palette_file("P", COLOUR_PALETTE, "PNG"), COLOUR),
    ModeCase("P", "colour-png-transparent", palette_file("P", COLOUR_PALETTE, "PNG", 1), COLOUR, alpha=True),
    ModeCase("P", "colour-gif-transparent", palette_file("P", COLOUR_PALETTE, "GIF", 2), COLOUR, alpha=True),
    ModeCase("PA", "grey-tiff", palette_file("PA", GREY_PALETTE, "TIFF"), GREY, alpha=True),
    ModeCase("PA", "colour-tiff", palette_file("PA", COLOUR_PALETTE, "TIFF"), COLOUR, alpha=True),
    ModeCase("RGB", "png", pillow_file("RGB", "PNG", (1, 2, 3), (250, 128, 0)), RGB_PIXELS),
    ModeCase("RGBA", "png", pillow_file("RGBA", "PNG", (1, 2, 3, 0), (250, 128, 0, 255)), RGB_PIXELS, alpha=True),
    # no file format opens as RGBa, RGBX or HSV: their conversion is checked on the image itself
    ModeCase(
        "RGBa",
        "image",
        lambda: two_values("RGBa", (8, 6), (50, 25, 10, 128), (1, 2, 3, 255)),
        {(0, 0): (99, 50, 20), (2, 1): (1, 2, 3)},
        tolerance=1,
    ),
    ModeCase(
        "RGBX",
        "image",
        lambda: two_values("RGBX", (8, 6), (10, 20, 30, 0), (40, 50, 60, 255)),
        {(0, 0): (10, 20, 30), (2, 1): (40, 50, 60)},
    ),
    ModeCase("HSV", "image", lambda: two_values("HSV", (8, 6), (0, 255, 255), (85, 255, 255)), COLOUR),
    ModeCase(
        "CMYK",
        "tiff",
        pillow_file("CMYK", "TIFF", (0, 0, 0, 0), (255, 0, 0, 0)),
        {(0, 0): (255, 255, 255), (2, 1): (0, 255, 255)},
    ),
    ModeCase(
        "CMYK",
        "jpeg",
        lambda: save(Image.new("CMYK", (16, 16), (0, 255, 0, 0)), "JPEG"),
        {(5, 5): (255, 0, 255)},
        tolerance=8,
    ),
    ModeCase(
        "YCbCr",
        "tiff",
        pillow_file("YCbCr", "TIFF", (128, 128, 128), (76, 85, 255)),
        {(0, 0): (128, 128, 128), (2, 1): (255, 0, 0)},
        tolerance=2,
    ),
    # CIE Lab (L* scaled to 0..255, a* b* offset by 128) through littlecms to sRGB: L* 53.6 is grey 128, L* 100
    # white; (53.2, 80, 67) is sRGB red, within the rounding of 8-bit Lab and the D50 -> D65 adaptation
    ModeCase(
        "LAB",
        "tiff-grey",
        pillow_file("LAB", "TIFF", (137, 128, 128), (255, 128, 128)),
        {(0, 0): (128, 128, 128), (2, 1): (255, 255, 255)},
        tolerance=1,
    ),
    ModeCase(
        "LAB",
        "tiff-colour",
        pillow_file("LAB", "TIFF", (136, 208, 195), (137, 128, 128)),
        {(0, 0): (255, 0, 0)},
        tolerance=12,
    ),
    ModeCase("I", "tiff-16-bit-range", pillow_file("I", "TIFF", 0, 65535), {(0, 0): (0,), (2, 1): (255,)}),
    ModeCase("I", "tiff-mid-values", pillow_file("I", "TIFF", 257 * 7, 30000), {(0, 0): (7,), (2, 1): (117,)}),
    ModeCase("I", "tiff-above-65535", pillow_file("I", "TIFF", 0, 65536), None, match="mode I.*0..65535"),
    ModeCase("I", "tiff-negative", pillow_file("I", "TIFF", -1, 100), None, match="mode I.*0..65535"),
    ModeCase("I;16", "png", pillow_file("I;16", "PNG", 257 * 10, 65535), SIXTEEN),
    ModeCase("I;16", "tiff-rounding", pillow_file("I;16", "TIFF", 128, 129), {(0, 0): (0,), (2, 1): (1,)}),
    ModeCase("I;16B", "tiff", pillow_file("I;16B", "TIFF", 257 * 10, 65535), SIXTEEN),
    # a 12-bit TIFF, which Pillow holds as I;16 with values 0..4095: scaled from 12 bits, not read as near black
    ModeCase(
        "I;16",
        "tiff-12-bit",
        grey_tiff(12, 1, [0, 2048, 4095, 16]),
        {(0, 0): (0,), (1, 0): (128,), (2, 0): (255,), (3, 0): (1,)},
    ),
    # signed samples: Pillow reads signed 8-bit as unsigned (-1 as 255) and signed 16-bit as mode I
    ModeCase("L", "tiff-signed-8-bit", grey_tiff(8, 2, [-1, 127]), None, match="signed 8-bit integer images"),
    ModeCase("I", "tiff-signed-16-bit", grey_tiff(16, 2, [5, 32767]), None, match="signed 16-bit integer images"),
    # no upload format taken here stores I;16L (Pillow's own IM does; it is not taken): the image itself
    ModeCase("I;16L", "image", lambda: two_values("I;16L", (8, 6), 257 * 10, 65535), SIXTEEN),
    ModeCase("F", "tiff", pillow_file("F", "TIFF", 0.5, 2.0), None, match=r"float images \(mode F\)"),
]


@pytest.mark.parametrize("case", MODE_CASES, ids=[f"{c.mode}-{c.label}" for c in MODE_CASES])
def test_mode_is_converted_or_refused(case: ModeCase):
    made = case.make()

    def run() -> tuple[np.ndarray, bool]:
        if isinstance(made, Image.Image):
            assert made.mode == case.mode
            return image_to_pixels(made), False
        decoded = decode_image(made, max_pixels=LIMIT)
        assert decoded.source_mode == case.mode  # the file really exercised this mode
        return decoded.pixels, decoded.alpha_dropped

    if case.expected is None:
        with pytest.raises(ImageUnsupported, match=case.match):
            run()
        return
    pixels, alpha_dropped = run()
    channels = len(next(iter(case.expected.values())))
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == channels
    assert pixels.flags["C_CONTIGUOUS"]
    for (x, y), values in case.expected.items():
        got = pixels[y, x].astype(int)
        assert np.all(np.abs(got - np.array(values)) <= case.tolerance), f"pixel ({x}, {y}): {got} != {values}"
    if not isinstance(made, Image.Image):
        assert alpha_dropped is case.alpha


def test_mode_cases_cover_the_modes_asked_for():
    wanted = {
        "1",
        "L",
        "LA",
        "La",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "RGBX",
        "CMYK",
        "YCbCr",
        "LAB",
        "HSV",
        "I",
        "I;16",
        "I;16B",
        "I;16L",
        "F",
    }
    assert wanted <= {case.mode for case in MODE_CASES}


def test_float_refusal_is_an_undecodable_image_with_a_clear_message():
    data = save(Image.new("F", (8, 8), 1.0), "TIFF")
    message = r"^32-bit float images \(mode F\) are not supported: send 8- or 16-bit$"
    with pytest.raises(ImageUndecodable, match=message):
        decode_image(data, max_pixels=LIMIT)


def test_unknown_mode_is_refused_naming_it():
    image = Image.new("L", (4, 4))
    image._mode = "XYZ"  # stands for a mode a future Pillow might add
    with pytest.raises(ImageUnsupported, match="mode XYZ"):
        image_to_pixels(image)


# --- 4. animations ---------------------------------------------------------------------------------------------

FRAME_COLOURS = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]


def three_frames(fmt: str, **options) -> bytes:
    frames = [Image.new("RGB", (16, 12), colour) for colour in FRAME_COLOURS]
    frames[0].putpixel((3, 4), (250, 250, 0))
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)


@pytest.mark.parametrize("fmt, options", [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})])
def test_animation_decodes_its_first_frame_and_counts_the_others(fmt, options):
    decoded = decode_image(three_frames(fmt, **options), max_pixels=LIMIT)
    assert decoded.frames_dropped == 2
    assert decoded.pixels.shape == (12, 16, 3)
    assert tuple(decoded.pixels[0, 0]) == FRAME_COLOURS[0]
    assert tuple(decoded.pixels[4, 3]) == (250, 250, 0)


def test_still_image_drops_no_frames():
    decoded = decode_image(save(Image.new("RGB", (8, 8)), "GIF"), max_pixels=LIMIT)
    assert decoded.frames_dropped == 0


# --- 5. behaviour kept -----------------------------------------------------------------------------------------


def test_grey_palette_decodes_to_one_channel_and_colour_to_three():
    grey = decode_image(save(Image.fromarray(noise(8, 8, 1)[:, :, 0]).convert("P"), "GIF"), max_pixels=LIMIT)
    assert grey.pixels.shape == (8, 8, 1)
    colour = decode_image(save(Image.fromarray(noise()).quantize(16), "PNG"), max_pixels=LIMIT)
    assert colour.pixels.shape == (64, 64, 3)


def test_a_palette_png_without_its_palette_is_undecodable_not_black():
    """Colour type 3 without PLTE (which libpng and browsers refuse) decoded as an all-black image, and the job
    ran on it."""
    rows = b"".join(b"\x00" + bytes(range(100, 132)) for _ in range(32))  # filter byte 0, then 32 indices
    with pytest.raises(ImageUndecodable, match="without its palette"):
        decode_image(png(32, 32, rows, colour_type=3, plte=False), max_pixels=LIMIT)
    with_palette = decode_image(png(32, 32, rows, colour_type=3), max_pixels=LIMIT).pixels
    assert with_palette.shape == (32, 32, 3) and with_palette.min() == 44  # entry 100 is bytes 300..302 mod 256


def test_opaque_rgb_reports_no_alpha_and_rgba_does():
    assert decode_image(save(Image.new("RGB", (8, 8)), "PNG"), max_pixels=LIMIT).alpha_dropped is False
    assert decode_image(save(Image.new("RGBA", (8, 8)), "PNG"), max_pixels=LIMIT).alpha_dropped is True


def test_not_an_image_is_undecodable():
    with pytest.raises(ImageUndecodable, match="not a decodable image"):
        decode_image(b"hello, world", max_pixels=LIMIT)


def test_formats_outside_the_upload_list_are_not_opened():
    """EPS would run Ghostscript where it is installed; formats no photo comes in are not parsed at all."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n"
    sgi = save(Image.new("RGB", (8, 8)), "SGI")
    for data in (eps, sgi):
        with pytest.raises(ImageUndecodable, match="PNG, JPEG, WebP"):
            decode_image(data, max_pixels=LIMIT)
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "PPM", "TGA"):
        assert decode_image(save(Image.new("RGB", (8, 8)), fmt), max_pixels=LIMIT).pixels.shape == (8, 8, 3)
    assert decode_image(save(Image.new("L", (8, 8)), "GIF"), max_pixels=LIMIT).pixels.shape == (8, 8, 1)


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_the_exif_orientation_is_applied_as_a_viewer_shows_the_photo(fmt):
    stored = np.zeros((16, 48, 3), dtype=np.uint8)  # wide as stored: a phone held upright writes it so
    stored[:8, :8] = 255  # the stored top-left corner
    lossless = {"WEBP": {"lossless": True}}.get(fmt, {})
    data = save(Image.fromarray(stored), fmt, exif=exif(6), **lossless)
    decoded = decode_image(data, max_pixels=LIMIT)
    assert decoded.exif_orientation == 6 and decoded.pixels.shape == (48, 16, 3)  # tall, as shown
    # orientation 6: shown turned 90 degrees clockwise, so the stored top-left corner is at the top right
    assert decoded.pixels[:8, -8:].mean() > 200 and decoded.pixels[-8:, :8].mean() < 50
    assert decode_image(
        save(Image.fromarray(stored), fmt, exif=exif(1), **lossless), max_pixels=LIMIT
    ).pixels.shape == (16, 48, 3)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_each_orientation_is_undone_as_pillows_exif_transpose_does(orientation):
    stored = noise(12, 20)
    data = save(Image.fromarray(stored), "PNG", exif=exif(orientation))
    oracle = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert np.array_equal(decode_image(data, max_pixels=LIMIT).pixels, oracle)


def test_a_photo_with_one_mistyped_exif_tag_is_still_turned():
    """ImageOps.exif_transpose rewrites the EXIF data it carries, and fails on such a tag (a 500 before);
    only the pixels are kept here, so only the orientation is read."""
    ifd = struct.pack("<H", 2) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)  # orientation 6
    ifd += struct.pack("<HHII", 0x011A, 2, 8, 38) + b"\0" * 4 + b"72/1\0\0\0\0"  # XResolution as text
    raw = b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd
    data = save(Image.fromarray(noise(16, 24)), "JPEG", exif=raw)
    with pytest.raises(Exception):  # noqa: B017 - the failure this guards against, whatever Pillow raises
        ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    decoded = decode_image(data, max_pixels=LIMIT)
    assert decoded.exif_orientation == 6 and decoded.pixels.shape == (24, 16, 3)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow says so of the cut TIFF, then fails
def test_multi_frame_files_cut_inside_a_later_frame_are_undecodable_not_errors():
    first = Image.fromarray(noise(24, 32)).convert("P")
    one = save(first, "GIF")
    two = save(first, "GIF", save_all=True, append_images=[first.rotate(90)])
    tiff = save(Image.fromarray(noise(24, 32)), "TIFF", save_all=True, append_images=[Image.fromarray(noise(24, 32))])
    for data in (two[: len(one)], two[: len(one) + 20], tiff[:140]):  # Pillow raises IndexError, TypeError here
        with pytest.raises(ImageUndecodable):
            decode_image(data, max_pixels=LIMIT)
    assert decode_image(two, max_pixels=LIMIT).frames_dropped == 1


def test_frames_are_counted_up_to_a_cap():
    """Pillow's n_frames walks every page of a TIFF in time that grows with the square of their number: a
    20 MB upload of tiny pages would hold a core for minutes. Counting stops at the cap."""
    page = Image.fromarray(noise(4, 4))
    pages = MAX_FRAMES_COUNTED + 200
    data = save(page, "TIFF", save_all=True, append_images=[page] * (pages - 1))
    assert Image.open(io.BytesIO(data)).n_frames == pages
    decoded = decode_image(data, max_pixels=LIMIT)
    assert decoded.frames_dropped == MAX_FRAMES_COUNTED - 1 and decoded.pixels.shape == (4, 4, 3)
    few = save(page, "TIFF", save_all=True, append_images=[page] * 4)
    assert decode_image(few, max_pixels=LIMIT).frames_dropped == 4
    # other formats take Pillow's own count (a header's, or GIF's, which skips the frames' data), capped alike
    frames = [Image.new("L", (4, 4), i % 2 * 255) for i in range(pages)]  # alternating: none merged
    gif = save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(gif)).n_frames == pages
    assert decode_image(gif, max_pixels=LIMIT).frames_dropped == MAX_FRAMES_COUNTED - 1
    few_gif = save(frames[0], "GIF", save_all=True, append_images=frames[1:5])
    assert decode_image(few_gif, max_pixels=LIMIT).frames_dropped == 4
    # a PNG of one frame whose animation header claims 2**31 - 1 (it had said as many dropped)
    png = save(page, "PNG")
    actl = struct.pack(">II", 2**31 - 1, 0)
    chunk = struct.pack(">I", len(actl)) + b"acTL" + actl + struct.pack(">I", zlib.crc32(b"acTL" + actl))
    claimed = png[:33] + chunk + png[33:]  # after the signature (8) and IHDR (25)
    assert Image.open(io.BytesIO(claimed)).n_frames >= 2**31 - 1
    assert decode_image(claimed, max_pixels=LIMIT).frames_dropped == MAX_FRAMES_COUNTED - 1


def test_a_tiff_is_turned_once_and_its_orientation_reported():
    stored = np.zeros((16, 48, 3), dtype=np.uint8)
    stored[:8, :8] = 255
    tags = {274: 6}  # TIFF's own orientation tag, which Pillow applies as it loads the file
    decoded = decode_image(save(Image.fromarray(stored), "TIFF", tiffinfo=tags), max_pixels=LIMIT)
    assert decoded.exif_orientation == 6 and decoded.pixels.shape == (48, 16, 3)
    assert decoded.pixels[:8, -8:].mean() > 200 and decoded.pixels[-8:, :8].mean() < 50  # turned once, not twice


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with another size in its frame header (SOF0 from Pillow's encoder)."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def test_a_jpeg_whose_header_claims_more_pixels_than_its_data_can_hold_is_refused():
    small = save(Image.fromarray(noise(32, 32)), "JPEG", quality=90)
    with pytest.raises(ImageUndecodable, match="truncated: a 4000x4000 JPEG codes 250000 blocks"):
        decode_image(jpeg_with_size(small, 4000, 4000), max_pixels=20_000_000)
    assert decode_image(small, max_pixels=LIMIT).pixels.shape == (32, 32, 3)


def test_fill_bytes_before_a_restart_marker_do_not_end_the_check():
    """Any number of 0xFF may precede a marker (ITU T.81 B.1.1.2), a restart marker inside a scan included."""
    small = save(Image.fromarray(noise(32, 32)), "JPEG", quality=90, restart_marker_blocks=1)
    first_restart = small.index(b"\xff\xd0")
    filled = small[:first_restart] + b"\xff\xff" + small[first_restart:]
    assert decode_image(filled, max_pixels=LIMIT).pixels.shape == (32, 32, 3)
    with pytest.raises(ImageUndecodable, match="truncated: a 4000x4000 JPEG"):
        decode_image(jpeg_with_size(filled, 4000, 4000), max_pixels=20_000_000)


def test_a_cameras_multi_picture_jpeg_is_checked_too():
    first = Image.fromarray(noise(32, 32))
    mpo = save(first, "MPO", save_all=True, append_images=[Image.fromarray(noise(32, 32, seed=1))])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert decode_image(mpo, max_pixels=LIMIT).frames_dropped == 1
    with pytest.raises(ImageUndecodable, match="truncated: a 4000x4000 JPEG"):
        decode_image(jpeg_with_size(mpo, 4000, 4000), max_pixels=20_000_000)


def test_a_jpeg_of_endless_empty_markers_is_left_to_the_decoder():
    hostile = save(Image.fromarray(noise(32, 32)), "JPEG")[:2] + b"\xff\x01" * 100_000 + b"\xff\xd9"
    with pytest.raises(ImageUndecodable):
        decode_image(hostile, max_pixels=LIMIT)


def test_a_file_that_only_starts_like_a_bmp_is_not_called_one():
    with pytest.raises(ImageUndecodable, match="not a decodable image of a format taken here"):
        decode_image(b"BMW owners manual, page 1", max_pixels=LIMIT)
    broken_bmp = save(Image.new("RGB", (8, 8)), "BMP")[:40]
    with pytest.raises(ImageUndecodable, match="a BMP file whose pixel layout or data"):
        decode_image(broken_bmp, max_pixels=LIMIT)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_the_smallest_real_jpegs_of_their_size_still_decode(progressive, mode):
    """One flat colour, the lowest quality: the fewest coded bits a JPEG of that size can have."""
    data = save(Image.new(mode, (2000, 1600), 255), "JPEG", quality=1, progressive=progressive, optimize=True)
    assert decode_image(data, max_pixels=4_000_000).pixels.shape[:2] == (1600, 2000)


@pytest.mark.parametrize("mode, bits", [("LA", 16), ("F", 16)])
def test_a_tiff_layout_pillow_cannot_read_is_named_as_a_tiff(mode, bits):
    """A TIFF Pillow identifies but cannot open (here: 16-bit grey with alpha, 16-bit float): the message
    says it is a TIFF whose layout is not read, not that the format is unknown."""
    header = save(Image.new("L", (8, 8)), "TIFF")
    width, height = 8, 8
    samples = 2 if mode == "LA" else 1
    fmt = 1 if mode == "LA" else 3  # SampleFormat: unsigned integer, IEEE float
    pixels = bytes(width * height * samples * bits // 8)
    entries = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 0),
        (277, 3, 1, samples),
        (278, 3, 1, height),
        (279, 4, 1, len(pixels)),
        (339, 3, 1, fmt),
    ]
    if samples == 2:
        entries.append((338, 3, 1, 2))  # ExtraSamples: unassociated alpha
    entries.sort()
    offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = offset if tag == 273 else value
        ifd += struct.pack("<HHI", tag, kind, count) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        )
    data = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + pixels
    assert header[:4] == data[:4]
    with pytest.raises(ImageUndecodable) as refused:
        decode_image(data, max_pixels=LIMIT)
    assert "TIFF" in str(refused.value) and "format taken here" not in str(refused.value)


def test_pam_is_refused_naming_what_pnm_means_here():
    pam = b"P7\nWIDTH 8\nHEIGHT 8\nDEPTH 4\nMAXVAL 255\nTUPLTYPE RGB_ALPHA\nENDHDR\n" + bytes(8 * 8 * 4)
    with pytest.raises(ImageUndecodable, match=r"PAM \(P7\) files are not taken: send PNM \(P1-P6\)"):
        decode_image(pam, max_pixels=LIMIT)


def test_an_orientation_out_of_range_is_ignored():
    decoded = decode_image(save(Image.new("RGB", (12, 8)), "PNG", exif=exif(42)), max_pixels=LIMIT)
    assert decoded.exif_orientation == 1 and decoded.pixels.shape == (8, 12, 3)


def test_pixel_limit_before_decoding():
    with pytest.raises(ImageTooLarge):
        decode_image(save(Image.new("L", (100, 100)), "PNG"), max_pixels=100 * 100 - 1)


@pytest.mark.parametrize("fmt", ["png", "webp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossless_encode_decode_round_trip(fmt, channels):
    pixels = noise(16, 24, channels)
    decoded = decode_image(encode_image(pixels, fmt), max_pixels=LIMIT)
    assert isinstance(decoded, DecodedImage)
    if fmt == "webp" and channels == 1:  # WebP has no grey: it comes back as RGB with equal channels
        np.testing.assert_array_equal(decoded.pixels, np.repeat(pixels, 3, axis=2))
    else:
        np.testing.assert_array_equal(decoded.pixels, pixels)


def test_png_results_use_zlibs_fastest_level():
    data = encode_image(noise(16, 24, 3), "png")
    idat = data.index(b"IDAT") + 4  # the zlib stream's header: CMF, then FLG whose top two bits are FLEVEL
    assert data[idat] == 0x78 and data[idat + 1] >> 6 == 0  # FLEVEL 0: the fastest compression (level 1)
    default = save(Image.fromarray(noise(16, 24, 3)), "PNG")
    assert default[default.index(b"IDAT") + 5] >> 6 == 2  # Pillow's own default (level 6) writes FLEVEL 2


def test_jpeg_encoding_and_media_types():
    pixels = np.full((16, 16, 3), 90, dtype=np.uint8)
    decoded = decode_image(encode_image(pixels, "jpeg"), max_pixels=LIMIT)
    assert np.abs(decoded.pixels.astype(int) - 90).max() <= 2
    with pytest.raises(ValueError, match="unknown output format"):
        encode_image(pixels, "gif")
    assert MEDIA_TYPES == {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
    assert FORMAT_OF_MEDIA_TYPE == {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


@pytest.mark.parametrize(
    "data",
    [b"P5\n32 32\n70000\n" + bytes(4096), b"P6\n32 32\n0\n" + bytes(4096), b"P5 -4 4 255\n" + bytes(16)],
)
def test_a_broken_pnm_is_called_one_not_a_format_not_taken(data):
    """Its maximum past 65535 or 0, or a negative width: the list of formats taken names PNM, so "not a format
    taken here" had contradicted itself."""
    with pytest.raises(ImageUndecodable, match="a PNM file whose pixel layout or data"):
        decode_image(data, max_pixels=LIMIT)
    with pytest.raises(ImageUndecodable, match="not a decodable image of a format taken here"):
        decode_image(b"P9 is not a page of a PNM file", max_pixels=LIMIT)


def tiled_tiff(width: int, height: int, tile: tuple[int, int], payload: bytes) -> bytes:
    """A grey 8-bit TIFF of one uncompressed tile of ``tile`` (width, length) pixels, written by hand."""
    entries = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (277, 3, 1),
        (322, 4, tile[0]),
        (323, 4, tile[1]),
        (324, 4, None),
        (325, 4, len(payload)),
    ]
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_at if value is None else value
        out += struct.pack("<HHI", tag, kind, 1) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        )
    return out + b"\x00\x00\x00\x00" + payload


def test_a_tiff_whose_tiles_are_far_larger_than_the_image_is_refused_before_decoding():
    """A 64x64 image declaring one 16384x131056 tile (a 2 MB file) made the decoder allocate 2 GiB."""
    tile = np.arange(256 * 256, dtype=np.uint8).reshape(256, 256)
    usual = tiled_tiff(64, 64, (256, 256), tile.tobytes())  # a small image in a usual tile: decoded
    assert np.array_equal(decode_image(usual, max_pixels=LIMIT).pixels[:, :, 0], tile[:64, :64])
    with pytest.raises(ImageUndecodable, match="tiles of 2048x2048 pixels for a 64x64 image"):
        decode_image(tiled_tiff(64, 64, (2048, 2048), b"\x00" * 64), max_pixels=LIMIT)


def test_a_jpeg_of_hundreds_of_scans_is_refused_before_decoding():
    """Each scan costs a pass over the image: 20,000 repeated tiny scans (under 1 MB) took 20 s to decode."""
    data = save(Image.fromarray(noise(64, 64)), "JPEG", progressive=True, quality=90)
    assert decode_image(data, max_pixels=LIMIT).pixels.shape == (64, 64, 3)
    scans = [m.start() for m in re.finditer(rb"\xff\xda", data)]
    last = scans[-1]
    end = data.rindex(b"\xff\xd9")
    repeated = data[:end] + data[last:end] * 300 + data[end:]  # the last scan, again and again
    with pytest.raises(ImageUndecodable, match="more than 256 scans"):
        decode_image(repeated, max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_an_orientation_given_only_in_xmp_is_not_applied(fmt):
    """Browsers turn a photo by its EXIF orientation only; an XMP tiff:Orientation (which an editor may leave
    on pixels it has already turned) turned it here, and was reported as the EXIF orientation."""
    from PIL import PngImagePlugin

    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    image = Image.fromarray(noise(24, 16))
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
        data = save(image, fmt, pnginfo=info)
    else:
        data = save(image, fmt, xmp=xmp.encode(), quality=100)
    decoded = decode_image(data, max_pixels=LIMIT)
    assert decoded.exif_orientation == 1 and decoded.pixels.shape == (24, 16, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = decode_image(save(image, fmt, exif=exif.tobytes(), quality=100), max_pixels=LIMIT)
    assert turned.exif_orientation == 6 and turned.pixels.shape == (16, 24, 3)
