"""The shipped demo model: size, metadata, and accuracy on freshly generated held-out scenes."""

from __future__ import annotations

import numpy as np
import torch

from training.data import normalize_batch
from training.demo import CHECKPOINT, HELDOUT_DATA
from training.metrics import ConfusionMeter
from training.synth import make_scene, scene_rng
from training.weights import load_checkpoint


def test_demo_checkpoint_is_small_and_describes_itself() -> None:
    assert CHECKPOINT.stat().st_size <= 10_000_000
    _, metadata = load_checkpoint(CHECKPOINT)
    assert metadata.architecture == "fcn8s" and metadata.width == 0.0625
    assert metadata.metrics["mean_iu"] >= 0.85
    assert {"command", "iterations", "train_seconds", "train_data", "heldout_data"} <= set(metadata.training)


@torch.no_grad()
def test_demo_model_segments_held_out_scenes() -> None:
    model, metadata = load_checkpoint(CHECKPOINT)
    size = HELDOUT_DATA["size"]
    scenes = [make_scene(scene_rng(HELDOUT_DATA["seed"], i), size, size) for i in range(6)]
    images = torch.from_numpy(np.stack([rgb for rgb, _ in scenes]))
    prediction = model(normalize_batch(images, metadata.normalization)).argmax(1).numpy()
    meter = ConfusionMeter(metadata.num_classes)
    meter.update(np.stack([labels for _, labels in scenes]), prediction)
    assert meter.scores().mean_iu >= 0.85
