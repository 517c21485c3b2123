"""The VOC and SBD loaders, augmentation and input normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.classes import IGNORE_INDEX
from common.metadata import Normalization
from training.data import Augment, collate, normalize_batch, open_dataset, read_label_png
from training.synth import label_png, make_scene, scene_rng


def test_voc_loader_reads_palette_pngs_as_indices_and_keeps_void(synth_voc: Path) -> None:
    dataset = open_dataset(synth_voc, "train")
    assert len(dataset) == 8
    image, labels = dataset[0]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    _, expected = make_scene(scene_rng(0, 0), 64, 64)
    assert np.array_equal(labels, expected)
    assert IGNORE_INDEX in labels
    assert len(open_dataset(synth_voc, "val")) == 4


def test_voc_loader_hand_made_palette_png(tmp_path: Path) -> None:
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / folder).mkdir(parents=True)
    labels = np.array([[0, 15, 255], [20, 1, 0]], dtype=np.uint8)
    label_png(labels).save(tmp_path / "SegmentationClass" / "a.png")
    Image.new("RGB", (3, 2), (10, 20, 30)).save(tmp_path / "JPEGImages" / "a.jpg")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    _, loaded = open_dataset(tmp_path, "val")[0]
    assert np.array_equal(loaded, labels)
    # the colours the palette gives those indices are not what the loader returns
    assert np.array(Image.open(tmp_path / "SegmentationClass" / "a.png").convert("RGB"))[0, 1].tolist() == [
        192,
        128,
        128,
    ]


def test_rgb_label_images_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(ValueError, match="palette"):
        read_label_png(path)


def test_missing_files_and_unknown_layouts_are_named(synth_voc: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a VOC folder"):
        open_dataset(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        open_dataset(synth_voc, "nope")


def test_sbd_loader_reads_mat_labels(tmp_path: Path) -> None:
    from scipy.io import savemat

    (tmp_path / "img").mkdir()
    (tmp_path / "cls").mkdir()
    labels = np.array([[0, 3, 3], [255, 7, 0]], dtype=np.uint8)
    savemat(
        tmp_path / "cls" / "2008_000002.mat", {"GTcls": {"Segmentation": labels, "CategoriesPresent": [3, 7]}}
    )
    Image.new("RGB", (3, 2)).save(tmp_path / "img" / "2008_000002.jpg")
    (tmp_path / "train.txt").write_text("2008_000002\n")
    _, loaded = open_dataset(tmp_path, "train")[0]
    assert loaded.dtype == np.uint8
    assert np.array_equal(loaded, labels)


def test_augment_crops_pads_with_void_scales_and_flips() -> None:
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    labels = np.arange(24, dtype=np.uint8).reshape(4, 6)
    rng = np.random.default_rng(0)
    cropped_image, cropped = Augment(crop=(8, 3))((image, labels), rng)
    assert cropped_image.shape == (8, 3, 3) and cropped.shape == (8, 3)
    assert (cropped[4:] == IGNORE_INDEX).all() and (cropped_image[4:] == 0).all()
    flipped = [Augment(flip=True)((image, labels), rng)[1] for _ in range(20)]
    assert any(np.array_equal(f, labels[:, ::-1]) for f in flipped)
    assert any(np.array_equal(f, labels) for f in flipped)
    scaled_image, scaled = Augment(scale=(2.0, 2.0))((image, labels), rng)
    assert scaled.shape == (8, 12) and scaled_image.shape == (8, 12, 3)
    assert set(np.unique(scaled)) == set(np.unique(labels))  # nearest: no invented label values


def test_collate_and_normalize() -> None:
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red
    images, labels = collate([(image, np.zeros((2, 3), np.uint8)), (image, np.ones((2, 3), np.uint8))])
    assert images.shape == (2, 2, 3, 3) and labels.dtype == torch.int64
    caffe = normalize_batch(images, Normalization.caffe())
    assert caffe.shape == (2, 3, 2, 3)
    assert caffe[0, 2, 0, 0].item() == pytest.approx(255 - 122.67892)  # R is the last channel in BGR
    assert caffe[0, 0, 0, 0].item() == pytest.approx(-104.00699)
    imagenet = normalize_batch(images, Normalization())
    assert imagenet[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229)
    with pytest.raises(ValueError, match="one size"):
        collate([(image, np.zeros((2, 3), np.uint8)), (image[:1], np.zeros((1, 3), np.uint8))])
