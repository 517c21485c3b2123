"""Shared fixtures: one small synthetic VOC-layout data set per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.synth import write_dataset


@pytest.fixture(scope="session")
def synth_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic 64x64 scenes (seed 0) in the VOC layout: 8 train, 4 val."""
    root = tmp_path_factory.mktemp("synth_voc")
    write_dataset(root, count=12, seed=0, height=64, width=64, val_fraction=1 / 3)
    return root
