"""Image bytes <-> uint8 arrays with Pillow: upload checks (size before decoding) and result encoding.

Shared by the HTTP layer (decoding uploads) and the worker (encoding results); no torch here.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFormat:
    """An output format: its name in requests, its media type, and how Pillow writes it."""

    name: str
    media_type: str
    save: dict[str, Any]
    max_side: int = 2**31 - 1  # the largest width or height the format can hold
    alpha: bool = True  # whether it holds an alpha channel (grey + alpha, RGBA)


# The output formats, one entry each: the API's enum, content negotiation and encoding all read this.
# PNG at zlib's fastest level: a 0.256 Mpx photo encodes in 36 ms instead of Pillow's default level 6's
# 189 ms (2 CPU cores; the worker encodes, so this is latency for every job), for a file about 16% larger
# (docs/denoising.md, "Speed against FFDNet"). Run-length matching (Z_RLE) on PNG's filtered rows then
# makes photos' files 5-22% smaller than level 1's default matching, in 7-15% less time (three held-out
# photos, 2026-12-05; mate-LadyBird-x4: 341 kB against 407, and 351 at level 6; a flat graphic 493 bytes
# against 1350; a 28x28 digit 107 against 94).
OUTPUT_FORMATS: dict[str, ImageFormat] = {
    f.name: f
    for f in (
        ImageFormat("png", "image/png", {"format": "PNG", "compress_level": 1, "compress_type": zlib.Z_RLE}),
        ImageFormat("jpeg", "image/jpeg", {"format": "JPEG", "quality": 95}, max_side=65500, alpha=False),
        ImageFormat("webp", "image/webp", {"format": "WEBP", "lossless": True}, max_side=16383),
    )
}
OutputFormat = Literal[tuple(OUTPUT_FORMATS)]  # type: ignore[valid-type]
MEDIA_TYPES: dict[str, str] = {name: f.media_type for name, f in OUTPUT_FORMATS.items()}
FORMAT_OF_MEDIA_TYPE = {v: k for k, v in MEDIA_TYPES.items()}


class ImageTooLarge(ValueError):
    """More pixels than allowed (checked from the header, before decoding)."""


class ImageUndecodable(ValueError):
    """Not an image Pillow can decode, or one whose data is truncated or corrupt."""


class ImageUnsupported(ImageUndecodable):
    """A decodable image whose pixel mode has no faithful 8-bit grey/RGB reading (e.g. 32-bit float)."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8, [H, W, C] with C in (1, 3)
    alpha_dropped: bool
    source_mode: str
    transparent: bool = False  # some pixel's alpha was below 255 (only looked for with ``transparency=True``)
    frames_dropped: int = 0  # frames (or pages) after the first, not decoded: GIF/APNG/WebP animations, TIFF, MPO
    exif_orientation: int = 1  # the EXIF orientation (2-8) the pixels were turned by, as a viewer shows them
    icc_profile: bytes | None = None  # the upload's colour profile (a phone's Display P3, say), for its results


# The upload formats Pillow may open: raster formats it decodes itself or with the libraries its wheels carry.
# Not EPS (it runs Ghostscript where that is installed), nor the scientific and legacy formats no photo comes in.
# (A camera's multi-picture JPEG, MPO, opens through JPEG.)
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "AVIF", "GIF", "BMP", "DIB", "TIFF", "PPM", "TGA", "QOI")
ACCEPTED = ("PNG", "JPEG", "WebP", "AVIF", "GIF", "BMP", "TIFF", "PNM", "TGA", "QOI")  # the same, as people name them


# What Pillow raises for a broken file: OSError (truncated, decoder errors), SyntaxError (bad structure),
# EOFError / struct.error (short reads while parsing), ValueError (bad values), and its own bomb check.
_BROKEN = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def decode_image(data: bytes, *, max_pixels: int, transparency: bool = False) -> DecodedImage:
    """Decode an upload to grey or RGB uint8; refuse images over ``max_pixels`` before decoding them.
    ``transparency``: also look whether a pixel is not fully opaque (a mask's; a pass over the alpha, and a
    conversion of a palette image with a transparent index, which no other upload needs).

    Only the first frame of an animation (or page of a multi-page file) is decoded; the others are counted in
    ``frames_dropped`` (up to MAX_FRAMES_COUNTED). Raises ImageTooLarge, ImageUndecodable (truncated or
    corrupt data) or its subclass ImageUnsupported (a mode such as 32-bit float, see ``image_to_pixels``).
    """
    try:
        return _decode(data, max_pixels, transparency)
    except (ImageTooLarge, ImageUndecodable, MemoryError):
        raise
    except Exception as exc:  # Pillow's parsers raise TypeError, IndexError, KeyError ... on malformed files too
        if not isinstance(exc, _BROKEN):  # may be a bug here rather than in the file: keep its traceback
            log.warning("an upload failed to decode with %s", type(exc).__name__, exc_info=True)
        raise ImageUndecodable(f"image could not be decoded: {type(exc).__name__}: {exc}") from exc


def _decode(data: bytes, max_pixels: int, transparency: bool) -> DecodedImage:
    image = _open(data, max_pixels)
    if image.format == "PNG":
        _check_png_complete(data)
    elif image.format in ("JPEG", "MPO"):  # MPO: a camera's multi-picture JPEG, checked up to its first image's end
        _check_jpeg_data(data, *image.size)
    elif image.format == "TIFF":
        _check_tiff_tiles(image)
    # Not caught: a JPEG cut part way and closed with an EOI marker decodes with grey rows (libjpeg only warns,
    # and Pillow does not report its warnings). A JPEG simply cut short fails in ``load``.
    frames_dropped = _extra_frames(image)
    # Pillow turns a TIFF by its orientation tag as it loads it, and drops the tag: read it first
    turned_on_load = _orientation(image) if image.format == "TIFF" else None
    try:
        image.load()
    except _BROKEN as exc:
        raise ImageUndecodable(f"image could not be decoded: {exc}") from exc
    alpha_dropped = _has_alpha(image)
    transparent = transparency and alpha_dropped and _transparent(image)
    if turned_on_load is not None:
        orientation = turned_on_load
    else:
        orientation = _orientation(image)
        if orientation != 1:  # a phone's photo, stored sideways: turned as every viewer (and browser) shows it
            image = image.transpose(_TURNS[orientation])
    return DecodedImage(
        pixels=image_to_pixels(image),
        alpha_dropped=alpha_dropped,
        source_mode=image.mode,
        transparent=transparent,
        frames_dropped=frames_dropped,
        exif_orientation=orientation,
        icc_profile=_icc_profile(image),
    )


MAX_ICC_BYTES = 1 << 20  # a profile is a few kB; a larger one is not carried


def _icc_profile(image: Image.Image) -> bytes | None:
    """The image's embedded ICC profile (PNG, JPEG, WebP, TIFF ...), if it has a plausible one."""
    profile = image.info.get("icc_profile")
    return profile if isinstance(profile, bytes) and 128 <= len(profile) <= MAX_ICC_BYTES else None


def icc_for(profile: bytes | None, channels: int, fmt: str) -> bytes | None:
    """``profile`` if it describes the encoded image: an RGB profile for RGB, a grey one for grey (its header's
    colour space, bytes 16-20). A CMYK upload's profile does not describe its RGB pixels, nor a grey profile
    a WebP (which has no grey mode: Pillow stores grey as RGB)."""
    if profile is None:
        return None
    wanted = b"RGB " if channels == 3 or fmt == "webp" else b"GRAY"
    return profile if profile[16:20] == wanted else None


# How each EXIF orientation is undone (as ImageOps.exif_transpose does, without rewriting the EXIF data it
# carries, which fails on a file with one mistyped tag: only the pixels are kept here)
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag, 1 (as stored) when absent, unreadable or not one of the eight values. From
    the EXIF data only (a TIFF's own tags): Pillow's ``getexif`` falls back to an XMP ``tiff:Orientation``,
    which browsers ignore, and an editor may leave a stale one on pixels it has already turned."""
    try:
        if image.format == "TIFF":
            value = image.getexif().get(0x0112, 1)
        else:
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(0x0112, 1)
    except _BROKEN:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only, and check the pixel count before anything is decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own header check, at twice its default limit
        raise ImageTooLarge(f"image has more pixels than the limit of {max_pixels}") from exc
    except (UnidentifiedImageError, *_BROKEN) as exc:
        if data.startswith(b"P7"):
            raise ImageUndecodable("PAM (P7) files are not taken: send PNM (P1-P6) or another format") from exc
        known = _sniff(data)
        if known is not None:  # the format is one taken here, its layout or data is not
            raise ImageUndecodable(f"a {known} file whose pixel layout or data this service cannot read") from exc
        raise ImageUndecodable(f"not a decodable image of a format taken here ({', '.join(ACCEPTED)})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels, more than the limit of {max_pixels}")
    return image


# The leading bytes of formats taken here.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"qoif", "QOI"),
)


_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})  # the DIB headers' sizes, after the 14-byte file header


def _sniff(data: bytes) -> str | None:
    """The format an upload says it is by its first bytes, where it is one of those above, or WebP/AVIF."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "AVIF"
    if data[:2] == b"BM" and len(data) >= 18 and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if len(data) >= 3 and data[0:1] == b"P" and data[1:2] in b"123456" and data[2:3] in b" \t\r\n#":
        return "PNM"  # P1-P6, then whitespace or a comment before the width
    return next((name for signature, name in _SIGNATURES if data.startswith(signature)), None)


# --- JPEG whose coded data is too short for its size -------------------------------------------------------
# Every 8x8 block of a Huffman-coded JPEG (baseline, extended or progressive) costs at least one bit of coded
# data (its DC difference), so a file whose scans hold fewer bits than its largest component has blocks was
# cut (or its header altered) and libjpeg would fill the rest with grey. Arithmetic-coded files, which can
# code a block in less than a bit, are not checked.
_HUFFMAN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
_MAX_MARKERS = 4096  # a real file has tens (a progressive one, with its tables, a few hundred at most)
_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn: markers without a length
# A marker that ends a scan: 0xFF (and any fill bytes 0xFF) then a byte that is not a stuffed 0x00 nor an RSTn
_SCAN_END = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


# A progressive JPEG's scans: the standard scripts have about ten, libjpeg's most elaborate a few dozen.
# Each costs the decoder a pass over the image's coefficients, so a file of repeated tiny scans took about
# 1 ms a scan for a 4000x4000 image: 20,000 of them (under 1 MB) 20 s of a core, the body limit's worth minutes.
MAX_JPEG_SCANS = 256


def _check_jpeg_data(data: bytes, width: int, height: int) -> None:
    coded, huffman, at, scans = 0, False, 2, 0
    for _ in range(_MAX_MARKERS):
        if at + 4 > len(data):
            break
        if data[at] != 0xFF:
            return  # not where a marker should be: leave the verdict to the decoder
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if marker in _NO_LENGTH:
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        huffman = huffman or marker in _HUFFMAN_FRAMES
        at += 2 + length
        if marker == 0xDA:  # a scan: coded bytes up to the next marker that is not a stuffed 0xFF or an RSTn
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageUndecodable(
                    f"the JPEG has more than {MAX_JPEG_SCANS} scans: a real one has a few dozen at most, and each "
                    "costs a pass over the whole image"
                )
            end = _SCAN_END.search(data, at)
            start, at = at, (end.start() if end else len(data))
            coded += at - start
    else:
        return  # markers without end (a hostile file of fill bytes or empty segments): the decoder judges it
    blocks = -(-width // 8) * -(-height // 8)
    if huffman and coded * 8 < blocks:
        raise ImageUndecodable(
            f"image data is truncated: a {width}x{height} JPEG codes {blocks} blocks of 8x8 pixels in at least "
            f"{blocks} bits, and this one holds {coded * 8}"
        )


# A TIFF tile is decoded into a buffer of its declared size, whatever the image's: a 64x64 image declaring one
# 16384x131056 tile (a 2 MB file) made the decoder allocate 2 GiB. Tiles are refused beyond 4 times the image,
# or 1024x1024 pixels where that is more (a small image in the usual 256 or 512 tiles is fine).
MIN_TILE_ALLOWANCE = 1024 * 1024


def _check_tiff_tiles(image: Image.Image) -> None:
    tags = getattr(image, "tag_v2", {})
    tile_width, tile_length = tags.get(322), tags.get(323)  # TileWidth, TileLength
    if not isinstance(tile_width, int) or not isinstance(tile_length, int):
        return  # strips: libtiff sizes them by the rows the image has
    width, height = image.size
    if tile_width * tile_length > max(4 * width * height, MIN_TILE_ALLOWANCE):
        raise ImageUndecodable(
            f"the TIFF declares tiles of {tile_width}x{tile_length} pixels for a {width}x{height} image: "
            "tiles that much larger than the image are not taken"
        )


MAX_FRAMES_COUNTED = 1000  # a file of more frames says 999 dropped


def _extra_frames(image: Image.Image) -> int:
    """Frames after the first, up to MAX_FRAMES_COUNTED - 1 (as the README says). A TIFF's pages are counted
    to the cap: Pillow's ``n_frames`` walks every page in time that grows with the square of their number (a
    20 MB upload of tiny pages: minutes). Other formats take ``n_frames``, capped: PNG and WebP read it from a
    header (which may claim any number), and GIF's count skips the frames' data, where seeking to each frame
    would decode them all. Called before ``load``: counting seeks through the file and back to frame 0, which
    throws away an already loaded frame (GIF)."""
    if image.format != "TIFF":
        return min(max(getattr(image, "n_frames", 1) - 1, 0), MAX_FRAMES_COUNTED - 1)
    if not image.is_animated:
        return 0
    count = 1
    try:
        while count < MAX_FRAMES_COUNTED:
            try:
                image.seek(count)
            except EOFError:
                break
            count += 1
        image.seek(0)
    except _BROKEN as exc:
        raise ImageUndecodable(f"image could not be decoded: {exc}") from exc
    return count - 1


_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


def _has_alpha(image: Image.Image) -> bool:
    """Alpha band, or a transparent palette index / colour key (PNG tRNS, GIF): both are dropped."""
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _transparent(image: Image.Image) -> bool:
    """Whether some pixel of an image with alpha is not fully opaque (many tools write RGBA that is)."""
    if image.mode not in _ALPHA_MODES:  # a transparent palette index or colour key (PNG tRNS, GIF)
        image = image.convert("RGBA")
    return image.getextrema()[-1][0] < 255  # the alpha band is the last


# --- truncated PNG -------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel by colour type: grey, RGB, palette, grey+A, RGBA
# Adam7 passes: (first row, first column, row step, column step)
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
_INFLATE_STEP = 1 << 20  # bytes of inflated output held at a time while counting


def _check_png_complete(data: bytes) -> None:
    """Refuse a PNG whose pixel data ends before its last row.

    Pillow's PNG decoder stops without an error where the zlib stream ends, even when rows are still missing
    (they stay zero, black): a 4000x4000 header with one row of data decodes "fine". So inflate the IDAT data (the
    first frame, also of an APNG) and compare its length with what the header needs. A file cut only after its
    last row (no IEND, no checksum) keeps every pixel and still decodes, as in browsers.
    """
    header, idat = _png_header_and_idat(data)
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header[:13])
    bits_per_pixel = depth * _PNG_SAMPLES.get(colour_type, 1)  # Pillow refuses unknown colour types on open
    needed = _png_data_size(width, height, bits_per_pixel, interlaced=interlace == 1)
    found = _inflated_size(idat, limit=needed)
    if found < needed:
        raise ImageUndecodable(f"image data is truncated: {found} of the {needed} bytes of pixel rows are present")


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(type, body) of each chunk; the body comes out short when the file is cut inside it."""
    view = memoryview(data)
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", view[pos : pos + 8])
        yield kind, view[pos + 8 : pos + 8 + length]
        pos += 12 + length  # length, type, body, CRC


def _png_header_and_idat(data: bytes) -> tuple[bytes, list[memoryview]]:
    header, idat = b"", []
    for kind, body in _png_chunks(data):
        if kind == b"IHDR":
            header = bytes(body)
        elif kind == b"IDAT":
            idat.append(body)
        elif idat:  # IDAT chunks are consecutive; later fdAT chunks are other APNG frames
            break
    if len(header) < 13 or not idat:
        raise ImageUndecodable("PNG without a header or image data")
    return header, idat


def _png_data_size(width: int, height: int, bits_per_pixel: int, *, interlaced: bool) -> int:
    """Bytes of filtered scanlines: a filter byte plus the packed pixels per row, per Adam7 pass if interlaced."""
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for first_row, first_col, row_step, col_step in passes:
        rows = (height - first_row + row_step - 1) // row_step
        cols = (width - first_col + col_step - 1) // col_step
        if rows > 0 and cols > 0:  # an empty pass has no rows at all, not even filter bytes
            total += rows * (1 + (cols * bits_per_pixel + 7) // 8)
    return total


def _inflated_size(parts: list[memoryview], *, limit: int) -> int:
    """Length of the zlib stream split over ``parts`` once inflated, counted up to ``limit``, output discarded."""
    inflater = zlib.decompressobj()
    size = 0
    try:
        for part in parts:
            pending = bytes(part)
            while pending and size < limit and not inflater.eof:
                size += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
            if size >= limit or inflater.eof:
                break
    except zlib.error as exc:
        raise ImageUndecodable(f"image data is corrupt: {exc}") from exc
    return size


# --- modes ---------------------------------------------------------------------------------------------------

_REFUSED = {"F": "32-bit float images (mode F) are not supported: send 8- or 16-bit"}
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# Mode -> (Pillow mode to convert to, channels kept). Converting La/RGBa (premultiplied) to LA/RGBA divides the
# alpha back out before it is dropped; LAB -> RGB goes through Pillow's littlecms (sRGB).
_CONVERSIONS = {
    "1": ("L", 1),
    "L": ("L", 1),
    "LA": ("LA", 1),
    "La": ("LA", 1),
    "RGB": ("RGB", 3),
    "RGBA": ("RGBA", 3),
    "RGBX": ("RGB", 3),
    "RGBa": ("RGBA", 3),
    "CMYK": ("RGB", 3),
    "YCbCr": ("RGB", 3),
    "HSV": ("RGB", 3),
    "LAB": ("RGB", 3),
}


def image_to_pixels(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 1] (grey) or [H, W, 3] (colour) pixels of a Pillow image; alpha is dropped, not composited.

    16-bit grey (I;16*, and I holding 0..65535) is scaled to 8 bits with rounding, a 12-bit TIFF's grey from its
    12 bits; palettes become grey if every palette colour is grey, else RGB. Raises ImageUnsupported for F
    (float, unknown range), I outside 0..65535, a TIFF's signed 8- or 16-bit samples, and modes this code does
    not know.
    """
    mode = image.mode
    if mode in _REFUSED:
        raise ImageUnsupported(_REFUSED[mode])
    bits, signed = _tiff_samples(image)
    if signed and bits < 32:  # Pillow reads signed 8-bit as unsigned (-1 as 255); 32-bit is its own mode I
        raise ImageUnsupported(
            f"signed {bits}-bit integer images (TIFF SampleFormat 2) are not supported: send unsigned 8- or 16-bit"
        )
    if mode in _SIXTEEN_BIT:
        return _sixteen_bit_pixels(image, bits if 8 < bits < 16 else 16)
    if mode in ("P", "PA"):
        return _palette_pixels(image)
    if mode in _CONVERSIONS:
        return _converted_pixels(image, *_CONVERSIONS[mode])
    raise ImageUnsupported(f"images in mode {mode} are not supported: send grey, RGB or RGBA, 8- or 16-bit")


def _tiff_samples(image: Image.Image) -> tuple[int, bool]:
    """(bits per sample, signed) from a TIFF's BitsPerSample and SampleFormat tags; (0, False) for other files."""
    tags = getattr(image, "tag_v2", None)
    if image.format != "TIFF" or tags is None:
        return 0, False
    bits, sample_format = (_first(tags.get(tag, default)) for tag, default in ((258, 0), (339, 1)))
    return int(bits or 0), sample_format == 2


def _first(value):
    """A TIFF tag's first value (Pillow gives a tuple per sample, or one value)."""
    return value[0] if isinstance(value, tuple) and value else value


def _sixteen_bit_pixels(image: Image.Image, bits: int = 16) -> np.ndarray:
    """Grey of ``bits`` significant bits (16; 12 in a 12-bit TIFF, which Pillow holds as I;16) to 8 bits."""
    values = np.asarray(image)  # uint16 in the mode's byte order (>u2 for I;16B), int32 for I
    if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageUnsupported(
            "32-bit integer images (mode I) with values outside 0..65535 are not supported: send 8- or 16-bit"
        )
    # round(v * 255 / top), for 16 bits round(v / 257), which maps 257 * k to k. No ties to break: v * 255 / top
    # = k + 0.5 would need 510 * v (even) = (2k + 1) * top (odd, as top is).
    top = (1 << bits) - 1
    eight = (np.minimum(values.astype(np.uint32), top) * 510 + top) // (2 * top)
    return np.ascontiguousarray(eight.astype(np.uint8)[:, :, None])


def _palette_pixels(image: Image.Image) -> np.ndarray:
    """P and PA through the palette as a lookup table (PA's second band is alpha)."""
    indices = np.asarray(image)
    if indices.ndim == 3:
        indices = indices[:, :, 0]
    palette = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)[:256]
    if len(palette) == 0:  # a PNG of colour type 3 without its PLTE chunk, which libpng and browsers refuse too
        raise ImageUndecodable("a palette image without its palette (no PLTE chunk): its colours are unknown")
    table = np.zeros((256, 3), dtype=np.uint8)  # indices past a short palette read black
    table[: len(palette)] = palette
    rgb = table[indices]
    grey = bool(np.all(palette[:, 0] == palette[:, 1]) and np.all(palette[:, 1] == palette[:, 2]))
    return np.ascontiguousarray(rgb[:, :, :1] if grey else rgb)


def _converted_pixels(image: Image.Image, target: str, channels: int) -> np.ndarray:
    try:
        converted = image if image.mode == target else image.convert(target)
    except (ImportError, OSError, ValueError) as exc:  # LAB needs Pillow built with littlecms (ImageCms)
        raise ImageUnsupported(f"images in mode {image.mode} could not be converted to {target}: {exc}") from exc
    array = np.asarray(converted, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array[:, :, :channels])


def encode_image(pixels: np.ndarray, fmt: str, icc_profile: bytes | None = None) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) to the bytes of an output format (``OUTPUT_FORMATS``), with the upload's
    colour profile where it describes the result (``icc_for``), so viewers show its colours as the upload's."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    array = pixels[:, :, 0] if channels == 1 and pixels.ndim == 3 else pixels
    options = dict(OUTPUT_FORMATS[fmt].save)
    if profile := icc_for(icc_profile, channels, fmt):
        options["icc_profile"] = profile
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, **options)
    return buffer.getvalue()
