"""Bytes -> RGB array (header-only size check, EXIF, mode conversion, resize) and labels -> PNG.

Failures raise :class:`ImageError` subclasses that say what was wrong and what is accepted; only the
HTTP layer (``server/errors.py``) turns them into status codes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.classes import flat_palette

ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
ACCEPTED_TEXT = "JPEG, PNG, WebP, BMP, TIFF or GIF"

# Pillow's own decompression-bomb guard is replaced by the configurable ``max_pixels`` check in ``_open``,
# which reads the size from the header before any pixel is decoded and names the image's real size.
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
    """More pixels than the configured limit (read from the header, before decoding)."""


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse unknown formats and oversized images before decoding."""
    if not data:
        raise UndecodableImage(f"empty image: send a {ACCEPTED_TEXT} file")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UndecodableImage(f"cannot decode the image: not a readable {ACCEPTED_TEXT} file") from None
    except Exception as exc:  # PIL raises many types on corrupt headers
        raise UndecodableImage(f"cannot decode the image header ({type(exc).__name__})") from None
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedImageFormat(f"unsupported image format {image.format}; accepted: {ACCEPTED_TEXT}")
    width, height = image.size
    if width < 1 or height < 1:
        raise UndecodableImage(f"image has an invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB (alpha dropped, 16-bit scaled down, CMYK converted)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an upload to ``uint8 [H, W, 3]`` RGB after EXIF orientation (first frame of animations)."""
    return _decode(_open(data, max_pixels), None)


def decode_for_inference(data: bytes, max_pixels: int, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB at least as large as the inference size, and the full oriented (H, W) of the upload.

    A JPEG much larger than ``max_side`` is decoded at a reduced DCT scale (``Image.draft``), which is
    several times faster than decoding every pixel and resizing afterwards.
    """
    image = _open(data, max_pixels)
    width, height = image.size
    scale = max_side / max(width, height)
    draft = (math.ceil(width * scale), math.ceil(height * scale)) if scale < 0.5 else None
    array = _decode(image, draft)
    decoded_h, decoded_w = array.shape[:2]
    if (decoded_h, decoded_w) in ((height, width), (width, height)):
        return array, (decoded_h, decoded_w)
    same_way = (decoded_h >= decoded_w) == (height >= width)  # drafted: orientation from the aspect
    return array, ((height, width) if same_way else (width, height))


def _decode(image: Image.Image, draft: tuple[int, int] | None) -> np.ndarray:
    try:
        image.seek(0)
        if draft is not None and image.format == "JPEG":
            image.draft("RGB", draft)
        image.load()
        image = ImageOps.exif_transpose(image) or image
        rgb = _to_rgb(image)
        array = np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:  # truncated data, broken chunks, bad EXIF...
        raise UndecodableImage(f"cannot decode the image: {_short(exc)}") from None
    if array.ndim != 3 or array.shape[2] != 3:
        raise UndecodableImage(f"decoded image has an unexpected shape {array.shape}")
    return array


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
