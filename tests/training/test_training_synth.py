"""The synthetic scene generator: determinism, label values, void band, VOC layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.classes import IGNORE_INDEX, voc_palette
from training.synth import SYNTH_CLASS_INDICES, main, make_scene, scene_rng


def test_scenes_are_deterministic_per_seed_and_index() -> None:
    first = make_scene(scene_rng(3, 5), 64, 80)
    again = make_scene(scene_rng(3, 5), 64, 80)
    other = make_scene(scene_rng(4, 5), 64, 80)
    assert first[0].shape == (64, 80, 3) and first[0].dtype == np.uint8
    assert first[1].shape == (64, 80) and first[1].dtype == np.uint8
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_labels_use_the_synthetic_classes_and_a_void_band_separates_them() -> None:
    seen: set[int] = set()
    for index in range(40):
        _, labels = make_scene(scene_rng(0, index), 96, 96)
        values = set(np.unique(labels).tolist())
        assert values <= {*SYNTH_CLASS_INDICES, IGNORE_INDEX}
        seen |= values
        # no two different real classes touch: a 255 pixel always lies between them
        for a, b in ((labels[1:, :], labels[:-1, :]), (labels[:, 1:], labels[:, :-1])):
            touching = (a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert not touching.any()
    assert seen == {*SYNTH_CLASS_INDICES, IGNORE_INDEX}


def test_classes_differ_in_colour() -> None:
    sums = {index: np.zeros(3) for index in SYNTH_CLASS_INDICES[1:]}
    counts = dict.fromkeys(SYNTH_CLASS_INDICES[1:], 0)
    for index in range(30):
        rgb, labels = make_scene(scene_rng(1, index), 96, 96)
        for cls in sums:
            mask = labels == cls
            sums[cls] += rgb[mask].sum(axis=0)
            counts[cls] += int(mask.sum())
    means = np.array([sums[c] / counts[c] for c in sums])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(len(means), dtype=bool)].min() > 40


def test_cli_writes_the_voc_layout(tmp_path: Path) -> None:
    main(
        ["--out", str(tmp_path), "--count", "5", "--seed", "2", "--size", "48", "64", "--val-fraction", "0.4"]
    )
    splits = tmp_path / "ImageSets" / "Segmentation"
    train = (splits / "train.txt").read_text().split()
    val = (splits / "val.txt").read_text().split()
    assert len(train) == 3 and len(val) == 2
    assert (splits / "trainval.txt").read_text().split() == train + val
    for image_id in train + val:
        image = Image.open(tmp_path / "JPEGImages" / f"{image_id}.jpg")
        label = Image.open(tmp_path / "SegmentationClass" / f"{image_id}.png")
        assert image.size == label.size == (64, 48)
        assert image.mode == "RGB" and label.mode == "P"
        assert label.getpalette()[: 3 * 21] == [c for color in voc_palette(21) for c in color]
    index = int(val[-1].rsplit("_", 1)[1])
    _, expected = make_scene(scene_rng(2, index), 48, 64)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "SegmentationClass" / f"{val[-1]}.png")), expected)
