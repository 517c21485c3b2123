"""Bytes -> RGB array under a decode budget, and labels -> PNG.

Decoding an upload is bounded before and while it runs:

- **before** (from the headers, no pixel decoded): the format, the pixel count, the decoded bytes
  (pixels x bytes per pixel of the image's mode), the JPEG scan count (each scan of a progressive JPEG
  is one more pass over the whole image), the parts Pillow walks in Python (JPEG markers, PNG chunks,
  GIF blocks, TIFF entries, strips and tiles: :mod:`server.structure`, RLE BMP data) and the size of a
  TIFF's tiles or strips (libtiff allocates one whole tile, however small the image);
- **while** (:class:`Budget`): the decoder reads the file in pieces (Pillow's 64 KiB; 4 KiB for a
  progressive JPEG, where a few bytes can hold a whole scan) and every piece, and every step after it,
  first checks the request's deadline and whether its client is still there;
- **memory-proportional**: 16-bit, 32-bit integer and float images become 8-bit in slices of rows with
  integer (or float32) arithmetic; the image is resized to the inference size before it becomes RGB,
  and the EXIF orientation is applied to the small image.

Failures raise :class:`ImageError` subclasses that say what was wrong and what is accepted, or
:class:`DecodeStopped` when the budget ran out; only the HTTP layer (``server/errors.py``) turns them
into status codes.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageMode, UnidentifiedImageError

from common.classes import flat_palette
from server import structure

if TYPE_CHECKING:
    from server.settings import Settings

ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
ACCEPTED_TEXT = "JPEG, PNG, WebP, BMP, TIFF or GIF"
FORMAT_ALIASES = {"MPO": "JPEG"}
"""Pillow's name for a JPEG with further pictures appended (phone cameras): decoded as its first one."""

DEFAULT_MAX_JPEG_SCANS = 32
"""Default scan limit: progressive JPEGs from common encoders have 3-12 scans."""
DECODED_BYTES_PER_PIXEL = 3
"""The decoded-bytes limit is ``max_pixels`` 8-bit RGB pixels."""
SLICE_PIXELS = 1 << 20
"""Pixels per slice when a high-bit-depth image is reduced to 8 bits."""
PROGRESSIVE_READ_PIECE = 4096
"""Bytes a progressive JPEG's decoder is given at a time (Pillow's default, kept for every other image, is
64 KiB; smaller pieces slowed a reduced-scale baseline decode by about 40%): a 61-byte scan can cost 40 ms,
so the budget is checked about every 67 scans at most."""
MAX_PARTS = 65536
"""Most JPEG markers, PNG chunks, GIF extension blocks, TIFF directory entries, strips or tiles: Pillow
handles each one in Python (a few microseconds each); ordinary files have at most a few thousand."""
MAX_BMP_RLE_BYTES = 1 << 20
"""Most bytes of run-length-encoded BMP data (Pillow decodes them in Python: about 0.4 s per MiB)."""

TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation -> the transposition that displays the image (as ``ImageOps.exif_transpose``)."""
EXIF_ORIENTATION = 0x0112

# Pillow's own decompression-bomb guard is replaced by the configurable checks in ``_open``, which read
# the size from the header before any pixel is decoded and name the image's real size.
Image.MAX_IMAGE_PIXELS = None


class ImageError(Exception):
    """An upload that cannot be segmented; ``detail`` is one line for the client."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UndecodableImage(ImageError):
    """Empty, truncated or corrupt data, or an image of an invalid size."""


class UnsupportedImageFormat(ImageError):
    """A readable image in a format this service does not accept."""


class ImageTooLarge(ImageError):
    """More pixels or decoded bytes than the configured limits (read from the header, before decoding)."""


class DecodeTooExpensive(ImageTooLarge):
    """A structure that makes decoding cost more than the budget: too many JPEG scans, a huge TIFF tile."""


class DecodeStopped(Exception):
    """Decoding was stopped by its :class:`Budget` (not the upload's fault)."""


class DecodeDeadline(DecodeStopped):
    """The request's deadline passed while its image was being decoded."""


class DecodeCancelled(DecodeStopped):
    """The request was given up (its client left) while its image was being decoded."""


@dataclass(frozen=True)
class DecodeLimits:
    """What one upload may cost to decode, checked from its headers."""

    max_pixels: int
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS

    @property
    def max_bytes(self) -> int:
        """Decoded bytes: ``max_pixels`` 8-bit RGB pixels."""
        return self.max_pixels * DECODED_BYTES_PER_PIXEL

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(settings.max_pixels, settings.max_jpeg_scans)


class Budget:
    """When decoding must stop: a ``time.monotonic()`` deadline, or :meth:`cancel` from another thread."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.cancelled = False

    def cancel(self) -> None:
        """Make the next :meth:`check` raise :class:`DecodeCancelled` (thread-safe: one flag)."""
        self.cancelled = True

    def check(self) -> None:
        """Raise :class:`DecodeStopped` when the request was given up or its deadline passed."""
        if self.cancelled:
            raise DecodeCancelled("the request was given up")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DecodeDeadline("the request's deadline passed while decoding")


UNLIMITED = Budget()


class _BudgetedBytes(io.BytesIO):
    """The upload as a file whose every read first checks the budget (decoders read in pieces)."""

    def __init__(self, data: bytes, budget: Budget) -> None:
        super().__init__(data)
        self._budget = budget

    def read(self, size: int | None = -1) -> bytes:
        self._budget.check()
        return super().read(size)


def _as_limits(limits: DecodeLimits | int) -> DecodeLimits:
    return limits if isinstance(limits, DecodeLimits) else DecodeLimits(limits)


def bytes_per_pixel(mode: str) -> int:
    """Bytes of one pixel of a Pillow mode as data (``RGB`` 3, ``I;16`` 2, ``F`` 4, ``1`` 1)."""
    info = ImageMode.getmode(mode)
    return np.dtype(info.typestr).itemsize * len(info.bands)


def _open(data: bytes, limits: DecodeLimits, budget: Budget) -> Image.Image:
    """Open lazily (headers only) and refuse what the limits exclude before any pixel is decoded."""
    if not data:
        raise UndecodableImage(f"empty image: send a {ACCEPTED_TEXT} file")
    check_structure(data, limits)
    try:
        image = Image.open(_BudgetedBytes(data, budget))
    except UnidentifiedImageError:
        raise UndecodableImage(f"cannot decode the image: not a readable {ACCEPTED_TEXT} file") from None
    except DecodeStopped:
        raise
    except Exception as exc:  # PIL raises many types on corrupt headers
        raise UndecodableImage(f"cannot decode the image header ({type(exc).__name__})") from None
    kind = FORMAT_ALIASES.get(image.format or "", image.format)
    if kind not in ACCEPTED_FORMATS:
        raise UnsupportedImageFormat(f"unsupported image format {image.format}; accepted: {ACCEPTED_TEXT}")
    width, height = image.size
    if width < 1 or height < 1:
        raise UndecodableImage(f"image has an invalid size {width}x{height}")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} pixels"
        )
    decoded = width * height * bytes_per_pixel(image.mode)
    if decoded > limits.max_bytes:
        raise ImageTooLarge(
            f"image is {width}x{height} {image.mode} = {decoded} bytes decoded; the limit is "
            f"{limits.max_bytes} bytes ({limits.max_pixels} 8-bit RGB pixels)"
        )
    try:
        if kind == "TIFF":
            _check_tiff(image, data, limits)
        elif kind == "BMP" and image.tile and image.tile[0].codec_name == "bmp_rle":
            rle_bytes = len(data) - image.tile[0].offset
            if rle_bytes > MAX_BMP_RLE_BYTES:
                raise DecodeTooExpensive(
                    f"run-length-encoded BMP with {rle_bytes} bytes of data; the limit is {MAX_BMP_RLE_BYTES}"
                )
    except ImageError:
        raise
    except Exception as exc:  # tags of unexpected types in a corrupt file
        raise UndecodableImage(f"cannot decode the image header ({type(exc).__name__})") from None
    if image.info.get("progressive"):
        image.decodermaxblock = PROGRESSIVE_READ_PIECE  # type: ignore[attr-defined]
    return image


def check_structure(data: bytes, limits: DecodeLimits) -> None:
    """Refuse, before Pillow parses anything, a file with more parts than decoding it may walk: JPEG
    scans beyond ``limits.max_jpeg_scans``, or more than :data:`MAX_PARTS` JPEG markers, PNG chunks, GIF
    extension blocks before the first image, or TIFF directory entries, strips or tiles."""
    if data[:3] == b"\xff\xd8\xff":
        _check_jpeg(data, limits.max_jpeg_scans, "JPEG")
        return
    what, count = "", 0
    if data.startswith(structure.PNG_SIGNATURE):
        what, count = "chunks", structure.png_chunks(data, MAX_PARTS)
    elif data.startswith(b"GIF8"):
        what, count = (
            "extension blocks before its first image",
            structure.gif_extension_blocks(data, MAX_PARTS),
        )
    elif data[:2] in (b"II", b"MM"):
        parts = structure.tiff_parts(data, MAX_PARTS)
        big = parts.entries > MAX_PARTS
        what, count = ("directory entries", parts.entries) if big else ("strips or tiles", parts.units)
    if count > MAX_PARTS:
        raise DecodeTooExpensive(f"image has more than {MAX_PARTS} {what}, the limit")


def _check_jpeg(data: bytes, max_scans: int, what: str, max_markers: int = MAX_PARTS) -> int:
    """Refuse a JPEG stream with more than ``max_scans`` scans or ``max_markers`` markers; its markers."""
    parts = structure.jpeg_parts(data, max_markers, max_scans)
    if parts.scans > max_scans:
        raise DecodeTooExpensive(
            f"{what} has more than {max_scans} scans, the limit (progressive JPEGs have 3 to 12)"
        )
    if parts.markers > max_markers:
        raise DecodeTooExpensive(f"{what} has more than {MAX_PARTS} marker segments, the limit")
    return parts.markers


TIFF_JPEG_COMPRESSIONS = frozenset({6, 7})
"""Old- and new-style JPEG compression: each tile or strip is a JPEG stream (scans checked too)."""


def _check_tiff(image: Image.Image, data: bytes, limits: DecodeLimits) -> None:
    """Refuse a TIFF whose one tile or strip needs more bytes than the whole image may, or whose JPEG
    tiles or strips have too many scans or markers in all."""
    tags = image.tag_v2  # type: ignore[attr-defined]
    width, height = image.size
    bits = tags.get(258, 1)
    bits = max(bits) if isinstance(bits, tuple) else int(bits)
    samples = 1 if tags.get(284, 1) == 2 else int(tags.get(277, 1))  # planar: one sample per unit
    if 322 in tags or 323 in tags:
        unit_w, unit_h, kind = int(tags.get(322, width)), int(tags.get(323, height)), "tile"
    else:
        unit_w, unit_h, kind = width, min(int(tags.get(278, height)), height), "strip"
    unit_bytes = math.ceil(unit_w * samples * bits / 8) * unit_h
    if unit_bytes > limits.max_bytes:
        raise DecodeTooExpensive(
            f"TIFF {kind} of {unit_w}x{unit_h} needs {unit_bytes} bytes to decode; the limit is "
            f"{limits.max_bytes} bytes"
        )
    if tags.get(259) in TIFF_JPEG_COMPRESSIONS:
        offsets = tags.get(324 if kind == "tile" else 273, ())
        counts = tags.get(325 if kind == "tile" else 279, ())
        if sum(counts) > len(data):
            raise UndecodableImage(f"TIFF {kind}s claim {sum(counts)} bytes in a file of {len(data)}")
        markers = 0  # one marker budget for all the tiles or strips
        for offset, count in zip(offsets, counts, strict=False):
            what = f"a JPEG-compressed TIFF {kind}"
            markers += _check_jpeg(
                data[offset : offset + count], limits.max_jpeg_scans, what, MAX_PARTS - markers
            )


def _orientation(image: Image.Image) -> int:
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return orientation if orientation in TRANSPOSE else 1


def _to_8bit(image: Image.Image, budget: Budget) -> Image.Image:
    """``L`` or ``RGB`` of any decoded mode without a float64 or full-size temporary copy.

    16-bit values are scaled to 8 bits (``round(v / 257)``); 32-bit integer and float images likewise
    when their maximum exceeds 255, else clipped to 0..255 (NaN becomes 0). Alpha is dropped, colours
    kept; CMYK, YCbCr and the like are converted by Pillow.
    """
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in ("1", "LA", "La"):
        return image.convert("L")
    if mode.startswith("I;16"):
        return _scaled_to_l(image, 65535, budget)
    if mode in ("I", "F"):
        top = float(image.getextrema()[1])  # type: ignore[arg-type]  # one band: (min, max)
        return _scaled_to_l(image, 255 if top <= 255 else 65535, budget)  # a NaN maximum: 65535
    if mode in ("P", "PA"):
        image.info.pop("transparency", None)  # colours only: the alpha is dropped anyway
    return image.convert("RGB")


def _scaled_to_l(image: Image.Image, top: int, budget: Budget) -> Image.Image:
    """``L`` from a one-band 16/32-bit or float image, ``round(v * 255 / top)`` clipped, slice by slice."""
    width, height = image.size
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, SLICE_PIXELS // width)
    for top_row in range(0, height, rows):
        budget.check()
        values = np.asarray(image.crop((0, top_row, width, min(height, top_row + rows))))
        if values.dtype.kind == "f":
            scaled = np.nan_to_num(values.astype(np.float32), nan=0.0) * np.float32(255 / top) + 0.5
            np.clip(scaled, 0, 255, out=scaled)
            out[top_row : top_row + rows] = scaled
        elif top == 255:
            out[top_row : top_row + rows] = np.clip(values, 0, 255)
        else:  # round(v / 257) exactly: 65535 = 255 * 257
            out[top_row : top_row + rows] = np.clip((values.astype(np.int64) + 128) // 257, 0, 255)
    return Image.fromarray(out)


SizeFor = Callable[[int, int], tuple[int, int]]


def _same_size(height: int, width: int) -> tuple[int, int]:
    return height, width


def decode_image(data: bytes, limits: DecodeLimits | int, budget: Budget = UNLIMITED) -> np.ndarray:
    """Decode an upload to ``uint8 [H, W, 3]`` RGB after EXIF orientation (first frame of animations)."""
    return decode_for_inference(data, limits, _same_size, budget)[0]


def decode_for_inference(
    data: bytes, limits: DecodeLimits | int, size_for: SizeFor, budget: Budget = UNLIMITED
) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB of the size ``size_for(H, W)`` and the upload's full displayed size (H, W).

    ``(H, W)`` is the header's size after EXIF orientation. A JPEG more than twice as large as the
    target is decoded at a reduced DCT scale (``Image.draft``), several times faster than decoding
    every pixel. Raises :class:`ImageError` for bad or over-limit uploads and :class:`DecodeStopped`
    when ``budget`` runs out.
    """
    image = _open(data, _as_limits(limits), budget)
    try:
        image.seek(0)
        orientation = _orientation(image)
        width, height = image.size
        swapped = orientation >= 5
        original = (width, height) if swapped else (height, width)
        target_h, target_w = size_for(*original)
        stored = (target_h, target_w) if swapped else (target_w, target_h)  # (w, h) before orientation
        if image.format in ("JPEG", "MPO") and max(stored[0] / width, stored[1] / height) < 0.5:
            image.draft("RGB", stored)
        image.load()
        budget.check()
        image = _to_8bit(image, budget)
        budget.check()
        if image.size != stored:
            image = image.resize(stored, Image.Resampling.BILINEAR, reducing_gap=3.0)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if orientation != 1:
            image = image.transpose(TRANSPOSE[orientation])
        array = np.asarray(image, dtype=np.uint8)
    except (ImageError, DecodeStopped):
        raise
    except Exception as exc:  # truncated data, broken chunks, bad EXIF...
        raise UndecodableImage(f"cannot decode the image: {_short(exc)}") from None
    if array.shape != (target_h, target_w, 3):
        raise UndecodableImage(f"decoded image has an unexpected shape {array.shape}")
    return array, original


def _short(exc: Exception) -> str:
    """A one-line description of a decoder error without paths or internals."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def resize_rgb(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``uint8 [H, W, 3]`` to ``size`` = (h, w) with antialiased bilinear filtering."""
    if array.shape[:2] == size:
        return array
    image = Image.fromarray(array).resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a ``uint8 [h, w]`` label map to ``size`` = (H, W) with nearest-neighbour sampling."""
    if labels.shape == size:
        return labels
    image = Image.fromarray(labels).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(image, dtype=np.uint8)


def encode_label_png(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """A palette-mode PNG whose pixel values are the class indices, coloured with ``palette``."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(flat_palette([tuple(c) for c in palette]))  # type: ignore[misc]
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=3)
    return out.getvalue()
