"""Synthetic segmentation scenes in the PASCAL VOC layout, deterministic for a seed.

Each scene is a textured background with one to four overlapping objects. Every object class has
its own shape family, colour range and texture; sizes, aspect ratios, rotations and positions vary.
Labels are VOC class indices with a 255 (void) band on object boundaries, as VOC has.

    python -m training.synth --out data/synth --count 400 --seed 0 --size 160
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.classes import IGNORE_INDEX, VOC_CLASSES, flat_palette, voc_palette

Mask = np.ndarray  # bool HxW
Texture = np.ndarray  # float HxW in [-1, 1]


@dataclass(frozen=True)
class ObjectClass:
    """How one class looks: its VOC index, shape family, base RGB colour and texture."""

    index: int
    shape: str
    color: tuple[int, int, int]
    texture: str


OBJECT_CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass(VOC_CLASSES.index("aeroplane"), "triangle", (205, 45, 40), "hstripes"),
    ObjectClass(VOC_CLASSES.index("car"), "rectangle", (40, 75, 205), "checker"),
    ObjectClass(VOC_CLASSES.index("cat"), "ellipse", (235, 155, 30), "speckle"),
    ObjectClass(VOC_CLASSES.index("person"), "diamond", (45, 175, 65), "dstripes"),
    ObjectClass(VOC_CLASSES.index("tvmonitor"), "cross", (155, 55, 185), "dots"),
)
"""The object classes the generator draws (background is index 0)."""

SYNTH_CLASS_INDICES: tuple[int, ...] = (0, *(c.index for c in OBJECT_CLASSES))
HELD_OUT_SEED = 20261125
"""Seed of held-out evaluation scenes: the demo trains on seed 0 (also used to calibrate), validates on 1."""
BOUNDARY_WIDTH = 1
"""Pixels on each side of a label change that become void (255)."""


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width]
    return ys.astype(np.float32), xs.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random ``cells`` x ``cells`` grid resized bilinearly."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BILINEAR), dtype=np.float32) / 255


def _shape_mask(rng: np.random.Generator, shape: str, ys: np.ndarray, xs: np.ndarray, size: float) -> Mask:
    """A mask of ``shape`` at a random centre, scale ``size`` (pixels), aspect ratio and rotation."""
    height, width = ys.shape
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    half_h, half_w = size * np.sqrt(aspect) / 2, size / np.sqrt(aspect) / 2
    angle = rng.uniform(0, np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    # u, v: coordinates in the object's frame, scaled so the object spans [-1, 1].
    u = ((xs - cx) * cos + (ys - cy) * sin) / half_w
    v = (-(xs - cx) * sin + (ys - cy) * cos) / half_h
    if shape == "ellipse":
        return u * u + v * v <= 1
    if shape == "rectangle":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    if shape == "triangle":
        return (v <= 1) & (v >= 2 * np.abs(u) - 1)
    if shape == "cross":
        arm = 0.38
        return ((np.abs(u) <= 1) & (np.abs(v) <= arm)) | ((np.abs(u) <= arm) & (np.abs(v) <= 1))
    raise ValueError(f"unknown shape {shape!r}")


def _texture(rng: np.random.Generator, kind: str, ys: np.ndarray, xs: np.ndarray) -> Texture:
    """A texture pattern in [-1, 1] with a random period and phase."""
    period = rng.uniform(5, 9)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "hstripes":
        return np.sign(np.sin(2 * np.pi * ys / period + phase))
    if kind == "dstripes":
        return np.sign(np.sin(2 * np.pi * (xs + ys) / (period * 1.4) + phase))
    if kind == "checker":
        return np.sign(np.sin(np.pi * xs / period * 2 + phase) * np.sin(np.pi * ys / period * 2 + phase))
    if kind == "speckle":
        return rng.uniform(-1, 1, ys.shape).astype(np.float32)
    if kind == "dots":
        dots = np.sin(2 * np.pi * xs / period + phase) * np.sin(2 * np.pi * ys / period + phase) > 0.5
        return np.where(dots, 1.0, -0.4).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def _background(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """A desaturated textured background: two blended earthy/grey tones, low-frequency blobs, fine grain."""
    height, width = ys.shape
    tones = rng.uniform(70, 190, size=(2, 1)) + rng.uniform(-18, 18, size=(2, 3))
    blend = _smooth_noise(rng, height, width, int(rng.integers(3, 7)))[..., None]
    image = tones[0] * blend + tones[1] * (1 - blend)
    direction = rng.uniform(-1, 1, size=2)
    image += (12 * np.sin(2 * np.pi * (xs * direction[0] + ys * direction[1]) / rng.uniform(12, 30)))[
        ..., None
    ]
    image += rng.normal(0, 7, size=(height, width, 1))
    return image


def _boundary(labels: np.ndarray, width: int) -> Mask:
    """Pixels within ``width`` of a change of label (4-neighbourhood, grown by ``width``)."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    grown = edge.copy()
    for _ in range(width - 1):
        grown[1:, :] |= edge[:-1, :]
        grown[:-1, :] |= edge[1:, :]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown.copy()
    return grown


def make_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(rgb uint8 HxWx3, labels uint8 HxW)``; labels are VOC indices, 255 on boundaries."""
    if height < 8 or width < 8:
        raise ValueError(f"scenes need at least 8x8 pixels, got {height}x{width}")
    ys, xs = _grid(height, width)
    image = _background(rng, ys, xs)
    labels = np.zeros((height, width), dtype=np.uint8)
    side = min(height, width)
    for _ in range(int(rng.integers(1, 5))):
        cls = OBJECT_CLASSES[int(rng.integers(len(OBJECT_CLASSES)))]
        mask = _shape_mask(rng, cls.shape, ys, xs, size=rng.uniform(0.22, 0.6) * side)
        if not mask.any():
            continue
        color = np.clip(np.array(cls.color) + rng.uniform(-25, 25, size=3), 0, 255)
        shade = 1 + 0.22 * _texture(rng, cls.texture, ys, xs)
        light = 0.85 + 0.3 * _smooth_noise(rng, height, width, 3)
        image[mask] = (color[None, :] * (shade * light)[mask][:, None]).astype(np.float32)
        labels[mask] = cls.index
    image += rng.normal(0, 4, size=image.shape)
    labels[_boundary(labels, BOUNDARY_WIDTH)] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), labels


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of a data set: independent of how many scenes are written."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def label_png(labels: np.ndarray) -> Image.Image:
    """A VOC-style palette ("P") PNG image of a label map."""
    image = Image.fromarray(labels, mode="P")
    image.putpalette(flat_palette(voc_palette(len(VOC_CLASSES))))
    return image


def write_dataset(
    out: Path, count: int, seed: int, height: int, width: int, val_fraction: float = 0.2, quality: int = 92
) -> dict[str, int]:
    """Write ``count`` scenes in the VOC layout under ``out``; returns the split sizes."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if not 0 <= val_fraction <= 1:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    out = Path(out)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"synth{seed}_{index:06d}" for index in range(count)]
    for index, image_id in enumerate(tqdm(ids, desc=f"synth seed {seed}", unit="scene")):
        rgb, labels = make_scene(scene_rng(seed, index), height, width)
        Image.fromarray(rgb).save(out / "JPEGImages" / f"{image_id}.jpg", quality=quality)
        label_png(labels).save(out / "SegmentationClass" / f"{image_id}.png")
    val_count = round(count * val_fraction)
    splits = {"train": ids[: count - val_count], "val": ids[count - val_count :], "trainval": ids}
    for name, members in splits.items():
        (out / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in members))
    return {name: len(members) for name, members in splits.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (VOC layout)")
    parser.add_argument("--count", type=int, required=True, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (same seed, same scenes)")
    parser.add_argument(
        "--size", type=int, nargs="+", default=[160], metavar="PX", help="SIDE or HEIGHT WIDTH"
    )
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of scenes listed in val.txt")
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error("--size takes SIDE or HEIGHT WIDTH")
    height, width = args.size if len(args.size) == 2 else (args.size[0], args.size[0])
    start = time.perf_counter()
    sizes = write_dataset(args.out, args.count, args.seed, height, width, args.val_fraction)
    print(
        f"wrote {args.count} scenes of {height}x{width} (seed {args.seed}) to {args.out} in "
        f"{time.perf_counter() - start:.1f} s: train {sizes['train']}, val {sizes['val']}"
    )


if __name__ == "__main__":
    main()
