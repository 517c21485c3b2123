"""Decoding (formats, modes, EXIF, limits), resizing and label PNG / RLE encoding."""

from __future__ import annotations

import io

import numpy as np
import pycocotools.mask as coco
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from common.geometry import NetworkGeometry, ServingGeometry
from server.errors import status_of
from server.imaging import ImageError, decode_image, encode_label_png, resize_labels
from server.masks import class_rles

RGB = np.array([[[10, 20, 30], [200, 100, 50]], [[0, 255, 0], [90, 90, 90]]], dtype=np.uint8)


def _save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_round_trip(fmt: str) -> None:
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    np.testing.assert_array_equal(decode_image(_save(Image.fromarray(RGB), fmt, **kwargs), 100), RGB)


def test_jpeg_decodes_to_rgb() -> None:
    out = decode_image(_save(Image.fromarray(np.full((16, 24, 3), 128, np.uint8)), "JPEG"), 10_000)
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8 and abs(int(out.mean()) - 128) <= 2


def test_modes_become_rgb() -> None:
    assert decode_image(_save(Image.fromarray(RGB).convert("CMYK"), "JPEG"), 100).shape == (2, 2, 3)
    gray16 = Image.fromarray(np.array([[0, 65535], [32768, 256]], dtype=np.uint16))
    np.testing.assert_array_equal(decode_image(_save(gray16, "PNG"), 100)[..., 0], [[0, 255], [128, 1]])
    rgba = np.dstack([RGB, np.zeros((2, 2), np.uint8)])  # alpha is dropped, colours kept
    np.testing.assert_array_equal(decode_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"), 100), RGB)
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    np.testing.assert_array_equal(decode_image(_save(palette, "PNG"), 100), RGB)
    la = Image.fromarray(np.dstack([RGB[..., 0], RGB[..., 1]]), "LA")
    np.testing.assert_array_equal(decode_image(_save(la, "PNG"), 100), np.repeat(RGB[..., :1], 3, axis=2))


def test_gif_first_frame() -> None:
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (0, 255)]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, 100).max() == 0


def test_exif_orientation_is_applied() -> None:
    image = Image.fromarray(np.zeros((10, 30, 3), np.uint8))  # 30 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    assert decode_image(_save(image, "JPEG", exif=exif), 1000).shape == (30, 10, 3)


def test_limits_and_bad_data() -> None:
    with pytest.raises(ImageError) as too_big:
        decode_image(_save(Image.fromarray(np.zeros((20, 20, 3), np.uint8)), "PNG"), 399)
    assert status_of(too_big.value) == 413
    for data in (b"", b"GIF89a", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30):
        with pytest.raises(ImageError) as bad:
            decode_image(data, 100)
        assert status_of(bad.value) == 400


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_garbage_only_raises_input_errors(data: bytes) -> None:
    for prefix in (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM"):
        try:
            decode_image(prefix + data, 10_000)
        except ImageError as exc:
            assert status_of(exc) in (400, 413, 415)


@pytest.mark.parametrize(
    ("shape", "expected"), [((300, 200), (256, 171)), ((100, 50), (100, 50)), ((1, 5000), (1, 256))]
)
def test_inference_size(shape: tuple[int, int], expected: tuple[int, int]) -> None:
    assert ServingGeometry(NetworkGeometry(), 256).inference_size(*shape) == expected


def test_label_png_carries_indices_and_palette() -> None:
    labels = np.array([[0, 1], [15, 20]], dtype=np.uint8)
    image = Image.open(io.BytesIO(encode_label_png(labels, [(i, i, i) for i in range(21)])))
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), labels)
    assert image.getpalette()[15 * 3 : 16 * 3] == [15, 15, 15]
    np.testing.assert_array_equal(resize_labels(labels, (4, 4))[::2, ::2], labels)


@settings(max_examples=80, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, 4)))
def test_rle_matches_pycocotools(labels: np.ndarray) -> None:
    rles = class_rles(labels)
    assert sorted(rles) == np.unique(labels).tolist()
    for cls, (pixels, rle) in rles.items():
        mask = np.asfortranarray(labels == cls).astype(np.uint8)
        assert rle["counts"] == coco.encode(mask)["counts"].decode()
        decoded = coco.decode({"size": rle["size"], "counts": rle["counts"].encode()})  # type: ignore[arg-type]
        np.testing.assert_array_equal(decoded, mask)
        assert pixels == mask.sum()


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_large_jpeg_is_decoded_at_reduced_scale_with_its_full_size(orientation: int) -> None:
    from server.imaging import decode_for_inference, resize_rgb

    blocks = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    big = Image.fromarray(blocks).resize((2400, 1800), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(big, "JPEG", quality=92, exif=exif)
    geometry = ServingGeometry(NetworkGeometry(), 256)
    array, original = decode_for_inference(data, 10**8, geometry.inference_size)
    full = decode_image(data, 10**8)
    assert original == full.shape[:2] == ((2400, 1800) if orientation != 1 else (1800, 2400))
    assert array.shape[:2] == geometry.inference_size(*original)
    reference = resize_rgb(full, array.shape[:2])
    assert np.abs(array.astype(int) - reference).mean() < 2.0
    small = _save(Image.fromarray(RGB), "PNG")
    np.testing.assert_array_equal(decode_for_inference(small, 100, geometry.inference_size)[0], RGB)
