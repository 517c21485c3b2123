"""The web page's sample scenes: held-out ``training.synth`` scenes shipped under ``server/static/samples/``.

The demo model trains on seed 0 and validates on seed 1; these come from ``HELD_OUT_SEED`` (scenes it never
saw, as ``bench.int8_accuracy`` uses). The first ``--count`` scenes that show at least two object
classes are written as PNGs with an ``index.json`` manifest the page reads to offer them.

    python -m training.samples            # rewrites server/static/samples/
    python -m training.samples --check    # exit 1 if the shipped files differ from what it would write
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.classes import IGNORE_INDEX, VOC_CLASSES
from training.synth import HELD_OUT_SEED, make_scene, scene_rng

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "server" / "static" / "samples"
MANIFEST = "index.json"
COUNT = 4
SIZE = (192, 256)  # (height, width)
MIN_OBJECT_CLASSES = 2
MAX_TRIES = 100


@dataclass(frozen=True)
class Sample:
    """One sample scene: its file name, seed and index, pixels and the object classes it shows."""

    file: str
    seed: int
    index: int
    image: np.ndarray
    classes: tuple[str, ...]

    def png(self) -> bytes:
        out = io.BytesIO()
        Image.fromarray(self.image).save(out, format="PNG", optimize=True)
        return out.getvalue()


def sample_scenes(
    count: int = COUNT, size: tuple[int, int] = SIZE, seed: int = HELD_OUT_SEED
) -> list[Sample]:
    """The first ``count`` scenes of ``seed`` with at least ``MIN_OBJECT_CLASSES`` object classes."""
    samples: list[Sample] = []
    for index in range(MAX_TRIES):
        if len(samples) == count:
            break
        image, labels = make_scene(scene_rng(seed, index), *size)
        present = sorted(set(np.unique(labels).tolist()) - {0, IGNORE_INDEX})
        if len(present) >= MIN_OBJECT_CLASSES:
            names = tuple(VOC_CLASSES[c] for c in present)
            samples.append(Sample(f"heldout-{index:03d}.png", seed, index, image, names))
    if len(samples) < count:
        raise RuntimeError(f"only {len(samples)} of {MAX_TRIES} scenes show {MIN_OBJECT_CLASSES}+ classes")
    return samples


def manifest_text(samples: list[Sample]) -> str:
    """What the page reads: per scene, its file, seed, index, size and the object classes it shows."""
    entries = [
        {
            "file": s.file,
            "seed": s.seed,
            "index": s.index,
            "width": s.image.shape[1],
            "height": s.image.shape[0],
            "classes": list(s.classes),
        }
        for s in samples
    ]
    return json.dumps({"samples": entries}, indent=2) + "\n"


def write_samples(out: Path = SAMPLES_DIR, count: int = COUNT) -> list[Sample]:
    """Replace the sample PNGs and the manifest in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    samples = sample_scenes(count)
    for sample in samples:
        (out / sample.file).write_bytes(sample.png())
    (out / MANIFEST).write_text(manifest_text(samples))
    return samples


def stale(folder: Path = SAMPLES_DIR, count: int = COUNT) -> list[str]:
    """Files in ``folder`` that differ from what the generator makes (pixels, manifest), missing or extra."""
    samples = sample_scenes(count)
    expected = {s.file: s for s in samples}
    problems = [f"{p.name} (not a sample)" for p in sorted(folder.glob("*.png")) if p.name not in expected]
    for name, sample in expected.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} (missing)")
            continue
        with Image.open(path) as shipped:
            if shipped.mode != "RGB" or not np.array_equal(np.asarray(shipped), sample.image):
                problems.append(f"{name} (pixels differ)")
    manifest = folder / MANIFEST
    if not manifest.is_file() or manifest.read_text() != manifest_text(samples):
        problems.append(f"{MANIFEST} (differs)")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--count", type=int, default=COUNT, help="number of scenes (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 if --out is not up to date")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale(args.out, args.count)
        print(f"stale in {args.out}: {', '.join(problems)}" if problems else f"{args.out} is up to date")
        raise SystemExit(1 if problems else 0)
    samples = write_samples(args.out, args.count)
    total = sum((args.out / s.file).stat().st_size for s in samples)
    print(f"wrote {len(samples)} scenes ({total / 1024:.0f} KiB) and {MANIFEST} to {args.out}:")
    for sample in samples:
        print(f"  {sample.file}: {', '.join(sample.classes)}")


if __name__ == "__main__":
    main()
