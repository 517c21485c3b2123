"""Images for export checks: synthetic scenes (deterministic) or a VOC-layout folder's validation split.

torch-free (numpy + PIL), so engine verification on a GPU box needs no training stack beyond this.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from training.synth import make_scene, scene_rng


def synthetic_batch(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``batch`` synthetic scenes as uint8 ``[N, H, W, 3]`` (the training helper's generator)."""
    return np.stack([make_scene(scene_rng(seed, index), height, width)[0] for index in range(batch)])


def voc_images(root: Path, split: str = "val", limit: int | None = None) -> list[np.ndarray]:
    """RGB uint8 images listed in ``root/ImageSets/Segmentation/<split>.txt`` (``JPEGImages/<id>.jpg``)."""
    listing = Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(
            f"no {listing}: expected a VOC-layout folder (python -m training.synth --out ...)"
        )
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{listing} lists no images")
    ids = ids[:limit] if limit is not None else ids
    return [np.asarray(Image.open(Path(root) / "JPEGImages" / f"{i}.jpg").convert("RGB")) for i in ids]


def validation_images(
    root: Path | None, count: int, size: tuple[int, int], seed: int = 1
) -> list[np.ndarray]:
    """The first ``count`` validation images of a VOC folder, or ``count`` synthetic scenes of ``size``."""
    if root is not None:
        return voc_images(root, "val", count)
    return list(synthetic_batch(count, size[0], size[1], seed))
