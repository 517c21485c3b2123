"""Generators of hostile and unusual inputs for the server, all built in memory (no files shipped).

Each image generator returns encoded bytes. ``CASES`` lists every single-body case with the content type
it is sent with and the statuses the API documents for it, so tests can iterate over them.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import bombs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112


def _rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB test pattern: gradients plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255) // max(width - 1, 1), (y * 255) // max(height - 1, 1), (x + y) % 256], axis=-1)
    img = img + rng.integers(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode a Pillow image into ``fmt`` (e.g. ``"PNG"``, ``"JPEG"``) and return the bytes."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid 8-bit RGB PNG."""
    return encode(Image.fromarray(_rgb(width, height, seed)), "PNG")


def jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A valid baseline RGB JPEG."""
    return encode(Image.fromarray(_rgb(width, height, seed)), "JPEG", quality=quality)


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid PNG of uniform noise: it hardly compresses, so its size is about 3 * width * height bytes."""
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)), "PNG")


def empty() -> bytes:
    return b""


def text_file() -> bytes:
    return b"This is a plain text file, not an image.\n" * 20


def random_bytes(size: int = 4096, seed: int = 0) -> bytes:
    """Bytes that are not any image format (the first byte is forced away from every known signature)."""
    data = bytearray(random.Random(seed).randbytes(size))
    data[0] = 0x00
    return bytes(data)


def truncated_jpeg(width: int = 96, height: int = 64) -> bytes:
    """A JPEG cut at half its length: valid SOI/headers, missing scan data and EOI."""
    data = jpeg(width, height)
    return data[: len(data) // 2]


def truncated_png(width: int = 96, height: int = 64) -> bytes:
    """A PNG cut at half its length: valid signature and IHDR, an IDAT chunk that ends early."""
    data = png(width, height)
    return data[: len(data) // 2]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload and CRC-32 of type + payload."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG assembled by hand from an IHDR with any claimed size and an already-compressed IDAT payload."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A decompression bomb: a tiny file whose IHDR claims ``width`` x ``height`` RGB pixels (30 GB decoded).

    The IDAT holds the compressed first rows of zeros (1 MiB of zeros deflates to about 1 KiB), so a decoder
    that trusts the header would allocate the full image before noticing the data is short.
    """
    return raw_png(width, height, 8, 2, zlib.compress(b"\x00" * (1 << 20), 9))


def png16_rgb(width: int = 64, height: int = 48) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), written by hand since Pillow cannot."""
    rgb = _rgb(width, height).astype(">u2") * 257
    rows = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))
    return raw_png(width, height, 16, 2, zlib.compress(rows))


def png16_gray(width: int = 64, height: int = 48) -> bytes:
    """A 16-bit grayscale PNG."""
    gray = _rgb(width, height)[..., 0].astype(np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


def palette_png(width: int = 64, height: int = 48) -> bytes:
    """An 8-bit palette (mode ``P``) PNG."""
    return encode(Image.fromarray(_rgb(width, height)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")


def rgba_png(width: int = 64, height: int = 48) -> bytes:
    """An RGBA PNG with a varying alpha channel."""
    rgb = _rgb(width, height)
    alpha = np.linspace(0, 255, width * height, dtype=np.uint8).reshape(height, width, 1)
    return encode(Image.fromarray(np.concatenate([rgb, alpha], axis=-1)), "PNG")


def la_png(width: int = 64, height: int = 48) -> bytes:
    """A grayscale + alpha (mode ``LA``) PNG."""
    return encode(Image.fromarray(_rgb(width, height)).convert("LA"), "PNG")


def grayscale_jpeg(width: int = 64, height: int = 48) -> bytes:
    return encode(Image.fromarray(_rgb(width, height)).convert("L"), "JPEG")


def cmyk_jpeg(width: int = 64, height: int = 48) -> bytes:
    """A CMYK JPEG (Adobe marker, as Photoshop writes them)."""
    return encode(Image.fromarray(_rgb(width, height)).convert("CMYK"), "JPEG")


def animated_gif(width: int = 64, height: int = 48, frames: int = 4) -> bytes:
    """An animated GIF whose frames differ; the server must use the first one."""
    images = [Image.fromarray(_rgb(width, height, seed=i)).convert("P") for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def exif_rotated_jpeg(width: int, height: int, orientation: int) -> bytes:
    """A JPEG stored as ``width`` x ``height`` with an EXIF orientation tag.

    Orientations 5-8 swap the axes: the displayed (and served) image is ``height`` x ``width``.
    """
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(Image.fromarray(_rgb(width, height)), "JPEG", exif=exif.tobytes())


def gif_with_screen(width: int, height: int) -> bytes:
    """A small GIF whose logical screen descriptor claims ``width`` x ``height``."""
    data = bytearray(animated_gif(16, 16, 2))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def svg() -> bytes:
    """An SVG that points at a local file (a vector format the server must not render)."""
    return b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><image href="file:///etc/passwd"/></svg>'


def other_format(fmt: str, width: int = 64, height: int = 48) -> bytes:
    """The test pattern in another accepted format (``WEBP``, ``BMP``, ``TIFF``, ``GIF``)."""
    return encode(Image.fromarray(_rgb(width, height)), fmt)


@dataclass(frozen=True)
class Case:
    """One raw-body request: the body, its content type and the statuses the API documents for it.

    ``size`` is the (width, height) the PNG answer must have for a 200, else ``None``.
    """

    name: str
    make: Callable[[], bytes]
    content_type: str
    expected: frozenset[int]
    size: tuple[int, int] | None = None


def _case(
    name: str, make: Callable[[], bytes], ctype: str, *expected: int, size: tuple[int, int] | None = None
) -> Case:
    return Case(name, make, ctype, frozenset(expected), size)


BAD_CASES: tuple[Case, ...] = (
    _case("empty body", empty, "image/png", 400),
    _case("text file as text/plain", text_file, "text/plain", 415),
    _case("text file as image/png", text_file, "image/png", 400),
    _case("random bytes as image/jpeg", lambda: random_bytes(4096), "image/jpeg", 400),
    _case("truncated JPEG", truncated_jpeg, "image/jpeg", 400),
    _case("truncated PNG", truncated_png, "image/png", 400),
    _case("PNG header claiming 100000x100000", png_bomb, "image/png", 413),
    _case("PDF content type", text_file, "application/pdf", 415),
    _case("no content type", lambda: png(16, 16), "", 415),
    _case("SVG referencing a local file", svg, "image/svg+xml", 400),
    _case("PPM (Pillow reads it, not accepted)", lambda: other_format("PPM"), "image/x-portable-pixmap", 415),
    _case("ICO", lambda: other_format("ICO", 16, 16), "image/x-icon", 415),
    _case("TGA", lambda: other_format("TGA"), "image/x-tga", 415),
    _case("EPS (would need Ghostscript)", lambda: other_format("EPS", 16, 16), "image/eps", 415),
    _case("PNG header claiming 0x0", lambda: raw_png(0, 0, 8, 2, b""), "image/png", 400),
    _case("PNG header claiming 1x(2^31-1)", lambda: raw_png(1, 2**31 - 1, 8, 2, b""), "image/png", 413),
    _case("GIF screen claiming 65535x65535", lambda: gif_with_screen(65535, 65535), "image/gif", 413),
    _case(
        "progressive JPEG with a scan repeated 2000 times",
        lambda: bombs.progressive_scan_bomb(512, 2000, refinement=True),
        "image/jpeg",
        413,
    ),
    _case("64x64 TIFF of one 4096x4096 tile", lambda: bombs.tiff_tile_bomb(tile=4096), "image/tiff", 413),
    _case("float TIFF over the decoded-bytes limit", lambda: bombs.tiff_zeros("F", 2300), "image/tiff", 413),
)
"""Inputs the server must refuse with a documented 4xx (and keep serving)."""

ODD_CASES: tuple[Case, ...] = (
    _case("1x1 PNG", lambda: png(1, 1), "image/png", 200, size=(1, 1)),
    _case("1x5000 PNG", lambda: png(1, 5000), "image/png", 200, size=(1, 5000)),
    _case("5000x1 PNG", lambda: png(5000, 1), "image/png", 200, size=(5000, 1)),
    _case("animated GIF", animated_gif, "image/gif", 200, size=(64, 48)),
    _case("CMYK JPEG", cmyk_jpeg, "image/jpeg", 200, size=(64, 48)),
    _case("grayscale JPEG", grayscale_jpeg, "image/jpeg", 200, size=(64, 48)),
    _case("16-bit RGB PNG", png16_rgb, "image/png", 200, size=(64, 48)),
    _case("16-bit grayscale PNG", png16_gray, "image/png", 200, size=(64, 48)),
    _case("palette PNG", palette_png, "image/png", 200, size=(64, 48)),
    _case("RGBA PNG", rgba_png, "image/png", 200, size=(64, 48)),
    _case("LA PNG", la_png, "image/png", 200, size=(64, 48)),
    _case("EXIF orientation 6 JPEG", lambda: exif_rotated_jpeg(80, 40, 6), "image/jpeg", 200, size=(40, 80)),
    _case("EXIF orientation 8 JPEG", lambda: exif_rotated_jpeg(80, 40, 8), "image/jpeg", 200, size=(40, 80)),
    _case("EXIF orientation 3 JPEG", lambda: exif_rotated_jpeg(80, 40, 3), "image/jpeg", 200, size=(80, 40)),
    _case("WebP", lambda: other_format("WEBP"), "image/webp", 200, size=(64, 48)),
    _case("BMP", lambda: other_format("BMP"), "image/bmp", 200, size=(64, 48)),
    _case("TIFF", lambda: other_format("TIFF"), "image/tiff", 200, size=(64, 48)),
    _case("MPO (a phone camera's JPEG with a second picture)", bombs.mpo, "image/jpeg", 200, size=(64, 48)),
    _case(
        "16-bit grayscale PNG of 2400x2400",
        lambda: bombs.png16_zeros(2400),
        "image/png",
        200,
        size=(2400, 2400),
    ),
)
"""Unusual but valid inputs the server must accept, answering a label map of the (oriented) input size."""


def multipart_cases(image: bytes) -> dict[str, dict[str, object]]:
    """Malformed multipart uploads as httpx keyword arguments, each expected to get a 4xx.

    ``image`` is a valid encoded image, so only the form structure is wrong.
    """
    boundary = "reliability-boundary"
    no_file = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="note"\r\n\r\n'
        f"no file here\r\n--{boundary}--\r\n"
    ).encode()
    return {
        "multipart without any file": {
            "content": no_file,
            "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        },
        "multipart with the image as a text field": {
            "data": {"image": "not a file"},
            "files": {"x": ("x", b"")},
        },
        "multipart with wrong field name": {"files": {"file": ("a.png", image, "image/png")}},
        "multipart with two image files": {
            "files": [("image", ("a.png", image, "image/png")), ("image", ("b.png", image, "image/png"))]
        },
        "multipart with image and an extra file": {
            "files": [("image", ("a.png", image, "image/png")), ("other", ("b.png", image, "image/png"))]
        },
    }
