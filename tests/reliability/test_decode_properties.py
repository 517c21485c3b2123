"""Property-based tests of the decode path (``server/imaging.py``): only documented errors escape."""

from __future__ import annotations

import asyncio
import io
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from common.geometry import NetworkGeometry, ServingGeometry
from server.errors import status_of
from server.imaging import ImageError, decode_image, resize_labels
from server.upload import UploadError, read_limited

from . import inputs

MAX_PIXELS = 1_000_000
DOCUMENTED = {400, 413, 415}
PNG_MAX_SIDE = (1 << 31) - 1
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS = [
    inputs.png(24, 16),
    inputs.jpeg(24, 16),
    inputs.animated_gif(16, 12, 2),
    inputs.other_format("WEBP", 16, 12),
    inputs.other_format("BMP", 16, 12),
    inputs.other_format("TIFF", 16, 12),
    inputs.png16_rgb(16, 12),
    inputs.cmyk_jpeg(16, 12),
    inputs.exif_rotated_jpeg(16, 12, 6),
]


def decode_or_documented_error(data: bytes) -> np.ndarray | None:
    """Decode; an ImageError with a documented status and a one-line detail is fine, anything else fails."""
    try:
        array = decode_image(data, MAX_PIXELS)
    except ImageError as exc:
        assert status_of(exc) in DOCUMENTED, status_of(exc)
        assert exc.detail and "\n" not in exc.detail and "Traceback" not in exc.detail
        assert "/" not in exc.detail.replace("image/", "").replace("n/a", ""), exc.detail
        return None
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    assert 0 < array.shape[0] * array.shape[1] <= MAX_PIXELS
    return array


@FAST
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_input_error(data: bytes) -> None:
    decode_or_documented_error(data)


@FAST
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(0, 1 << 16)),
)
def test_corrupted_images_raise_only_input_error(
    seed: bytes, flips: list[tuple[int, int]], cut: int | None
) -> None:
    """Valid files with random bytes overwritten, maybe truncated: decoded or refused, nothing else."""
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    decode_or_documented_error(bytes(data))


MODES = {
    "RGB": ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"),
    "L": ("PNG", "JPEG", "BMP", "TIFF"),
    "RGBA": ("PNG", "WEBP", "TIFF"),
    "LA": ("PNG",),
    "P": ("PNG", "GIF", "BMP"),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG",),
    "1": ("PNG", "BMP", "TIFF"),
}


@st.composite
def valid_images(draw: st.DrawFn) -> tuple[bytes, int, int, np.ndarray, str, str]:
    width = draw(st.integers(1, 48))
    height = draw(st.integers(1, 48))
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    seed = draw(st.integers(0, 2**32 - 1))
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    return inputs.encode(image, fmt), width, height, rgb, mode, fmt


@FAST
@given(valid_images())
def test_valid_images_decode_to_their_size(case: tuple[bytes, int, int, np.ndarray, str, str]) -> None:
    data, width, height, rgb, mode, fmt = case
    array = decode_image(data, MAX_PIXELS)
    assert array.shape == (height, width, 3), (mode, fmt)
    if (mode, fmt) in {("RGB", "PNG"), ("RGB", "BMP"), ("RGB", "TIFF")}:
        np.testing.assert_array_equal(array, rgb)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 8))
def test_exif_orientation_gives_the_displayed_size(width: int, height: int, orientation: int) -> None:
    array = decode_image(inputs.exif_rotated_jpeg(width, height, orientation), MAX_PIXELS)
    expected = (width, height) if orientation >= 5 else (height, width)
    assert array.shape == (*expected, 3)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, PNG_MAX_SIDE), st.integers(1, PNG_MAX_SIDE), st.sampled_from([0, 2, 3, 4, 6]))
def test_header_size_over_limit_is_413_before_decoding(width: int, height: int, color_type: int) -> None:
    """Any PNG header claiming more than the pixel limit is refused with 413 however little data follows."""
    data = inputs.raw_png(width, height, 8, color_type, zlib.compress(b"\x00" * 64))
    if width * height > MAX_PIXELS:
        with pytest.raises(ImageError) as info:
            decode_image(data, MAX_PIXELS)
        assert status_of(info.value) == 413, info.value.detail
    else:
        decode_or_documented_error(data)


@FAST
@given(st.integers(1, 20_000), st.integers(1, 20_000), st.integers(32, 2048))
def test_inference_size_respects_max_side(height: int, width: int, max_side: int) -> None:
    h, w = ServingGeometry(NetworkGeometry(), max_side).inference_size(height, width)
    long_side = max(height, width)
    if long_side <= max_side:
        assert (h, w) == (height, width)
    else:
        scale = max_side / long_side
        assert max(h, w) == max_side
        assert abs(h - height * scale) <= 0.5 + 1e-9 or h == 1
        assert abs(w - width * scale) <= 0.5 + 1e-9 or w == 1
        assert h >= 1 and w >= 1


@FAST
@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 300), st.integers(1, 300))
def test_resize_labels_gives_the_requested_size(h: int, w: int, height: int, width: int) -> None:
    labels = np.random.default_rng(h * w).integers(0, 21, (h, w), dtype=np.uint8)
    resized = resize_labels(labels, (height, width))
    assert resized.shape == (height, width)
    assert set(np.unique(resized)) <= set(np.unique(labels))


@FAST
@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 3000))
def test_read_limited_refuses_exactly_over_the_limit(chunks: list[bytes], limit: int) -> None:
    async def stream():  # type: ignore[no-untyped-def]
        for chunk in chunks:
            yield chunk

    total = b"".join(chunks)
    try:
        body = asyncio.run(read_limited(stream(), limit))
    except UploadError as exc:
        assert status_of(exc) == 413 and len(total) > limit
    else:
        assert body == total and len(total) <= limit


def test_png_bomb_is_refused_from_the_header_quickly() -> None:
    """The 100000x100000 PNG costs nothing: refused before any pixel is inflated."""
    with pytest.raises(ImageError) as info:
        decode_image(inputs.png_bomb(), 40_000_000)
    assert status_of(info.value) == 413
    assert "100000" in info.value.detail


def test_truncated_files_are_400_with_a_reason() -> None:
    for data in (inputs.truncated_jpeg(), inputs.truncated_png()):
        with pytest.raises(ImageError) as info:
            decode_image(data, MAX_PIXELS)
        assert status_of(info.value) == 400
        assert "decode" in info.value.detail


def test_first_frame_of_animated_gif() -> None:
    gif = inputs.animated_gif(32, 24, 3)
    first = np.asarray(Image.open(io.BytesIO(gif)).convert("RGB"))
    np.testing.assert_array_equal(decode_image(gif, MAX_PIXELS), first)
