"""Segmentation data: PASCAL VOC 2012 and SBD layouts, optional random scale/crop/flip, batching.

Labels stay class indices with 255 (void) kept; images stay uint8 RGB until ``normalize_batch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from common.classes import IGNORE_INDEX
from common.metadata import Normalization

Sample = tuple[np.ndarray, np.ndarray]
"""(image uint8 HxWx3 RGB, labels uint8 HxW)."""


def read_label_png(path: Path) -> np.ndarray:
    """Class indices of a VOC label PNG (palette "P" or greyscale "L"); colours are refused."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(
                f"{path}: label PNGs must be palette (P) or greyscale (L) images of class indices, "
                f"got mode {image.mode}"
            )
        return np.array(image, dtype=np.uint8)


def read_sbd_label(path: Path) -> np.ndarray:
    """Class indices of an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``)."""
    try:
        from scipy.io import loadmat
    except ImportError as error:  # scipy is in requirements/train.txt
        raise RuntimeError(
            "reading SBD .mat labels needs scipy (pip install -r requirements/train.txt)"
        ) from error
    return np.asarray(loadmat(str(path))["GTcls"][0]["Segmentation"][0], dtype=np.uint8)


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 array of any image file."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)


class SegmentationDataset:
    """Image/label pairs listed in a split file. ``open_dataset`` picks the layout."""

    def __init__(self, ids: list[str], image_paths: list[Path], label_paths: list[Path], sbd: bool) -> None:
        missing = [str(p) for p in (*image_paths, *label_paths) if not p.is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(f"{len(missing)} files listed in the split are missing: {shown}")
        self.ids = ids
        self.image_paths = image_paths
        self.label_paths = label_paths
        self.sbd = sbd

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image = read_image(self.image_paths[index])
        labels = (
            read_sbd_label(self.label_paths[index]) if self.sbd else read_label_png(self.label_paths[index])
        )
        if image.shape[:2] != labels.shape:
            raise ValueError(
                f"{self.ids[index]}: image {image.shape[:2]} and labels {labels.shape} differ in size"
            )
        return image, labels


def _read_ids(split_file: Path) -> list[str]:
    if not split_file.is_file():
        raise FileNotFoundError(f"split file not found: {split_file}")
    ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split file {split_file} lists no images")
    return ids


def open_dataset(root: Path, split: str) -> SegmentationDataset:
    """Open a split of a VOC layout (``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/``)
    or an SBD layout (``img/``, ``cls/*.mat``, ``<split>.txt``), detected from the folders present."""
    root = Path(root)
    if (root / "JPEGImages").is_dir():
        ids = _read_ids(root / "ImageSets" / "Segmentation" / f"{split}.txt")
        images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
        labels = [root / "SegmentationClass" / f"{i}.png" for i in ids]
        return SegmentationDataset(ids, images, labels, sbd=False)
    if (root / "img").is_dir() and (root / "cls").is_dir():
        ids = _read_ids(root / f"{split}.txt")
        return SegmentationDataset(
            ids, [root / "img" / f"{i}.jpg" for i in ids], [root / "cls" / f"{i}.mat" for i in ids], sbd=True
        )
    raise FileNotFoundError(
        f"{root} is neither a VOC folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/) "
        "nor an SBD folder (img/, cls/, <split>.txt)"
    )


@dataclass(frozen=True)
class Augment:
    """Random scale (``scale`` range), random crop to ``crop`` (H, W; void-padded), horizontal flip."""

    scale: tuple[float, float] = (1.0, 1.0)
    crop: tuple[int, int] | None = None
    flip: bool = False

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image, labels = sample
        factor = rng.uniform(*self.scale) if self.scale != (1.0, 1.0) else 1.0
        if factor != 1.0:
            height, width = labels.shape
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            labels = np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
        if self.crop is not None:
            image, labels = _random_crop(image, labels, self.crop, rng)
        if self.flip and rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def _random_crop(
    image: np.ndarray, labels: np.ndarray, crop: tuple[int, int], rng: np.random.Generator
) -> Sample:
    crop_h, crop_w = crop
    height, width = labels.shape
    pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        labels = np.pad(labels, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
        height, width = labels.shape
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return image[top : top + crop_h, left : left + crop_w], labels[top : top + crop_h, left : left + crop_w]


def collate(samples: list[Sample]) -> tuple[Tensor, Tensor]:
    """Stack samples of one size into ``(uint8 N,H,W,3, int64 N,H,W)`` tensors."""
    shapes = {labels.shape for _, labels in samples}
    if len(shapes) != 1:
        raise ValueError(
            f"a batch needs images of one size, got {sorted(shapes)}: use --crop H W or batch size 1"
        )
    images = torch.from_numpy(np.stack([image for image, _ in samples]))
    labels = torch.from_numpy(np.stack([labels for _, labels in samples]).astype(np.int64))
    return images, labels


def normalize_batch(images: Tensor, normalization: Normalization) -> Tensor:
    """uint8 ``N,H,W,3`` RGB -> float ``N,3,H,W`` network input, as the checkpoint's metadata says."""
    x = images.to(torch.float32).permute(0, 3, 1, 2)  # cast first: TensorRT takes uint8 only into a Cast
    if normalization.channel_order == "BGR":
        x = x.flip(1)
    mean = torch.tensor(normalization.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std, device=x.device).view(1, 3, 1, 1)
    return (x * normalization.scale - mean) / std
