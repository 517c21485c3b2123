"""Real photographs shipped inside scikit-image's wheel, resized for benchmarks (no download needed)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOGRAPHS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
)


def skimage_data_dir() -> Path:
    """The ``skimage/data`` folder of the installed scikit-image (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed: pip install -r requirements/dev.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_photographs(long_side: int = 500) -> list[Image.Image]:
    """The benchmark photographs as RGB images, resized so the long side is ``long_side`` pixels."""
    if long_side < 1:
        raise ValueError(f"long_side must be positive, got {long_side}")
    images = []
    for name in PHOTOGRAPHS:
        image = Image.open(skimage_data_dir() / name).convert("RGB")
        scale = long_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        images.append(image.resize(size, Image.Resampling.BILINEAR))
    return images


def photograph_batch(batch: int, height: int, width: int) -> np.ndarray:
    """uint8 ``[batch, height, width, 3]``: the photographs cycled, resized to exactly ``height x width``."""
    photos = load_photographs(max(height, width))
    frames = [
        np.asarray(photos[i % len(photos)].resize((width, height), Image.Resampling.BILINEAR))
        for i in range(batch)
    ]
    return np.ascontiguousarray(np.stack(frames))


def encoded_photographs(long_side: int = 500, image_format: str = "JPEG") -> list[tuple[str, bytes, str]]:
    """``(file name, encoded bytes, content type)`` of each photograph, for HTTP request bodies."""
    encoded = []
    for name, image in zip(PHOTOGRAPHS, load_photographs(long_side), strict=True):
        buffer = io.BytesIO()
        image.save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
        suffix = "jpg" if image_format == "JPEG" else image_format.lower()
        encoded.append(
            (f"{Path(name).stem}.{suffix}", buffer.getvalue(), f"image/{suffix.replace('jpg', 'jpeg')}")
        )
    return encoded
