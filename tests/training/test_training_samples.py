"""The web page's sample scenes: the shipped files are exactly what ``python -m training.samples`` makes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.classes import VOC_CLASSES
from training.samples import MANIFEST, SAMPLES_DIR, main, sample_scenes, stale, write_samples
from training.synth import HELD_OUT_SEED, make_scene, scene_rng


def test_shipped_samples_are_what_the_generator_makes() -> None:
    assert stale(SAMPLES_DIR) == [], "run: python -m training.samples"


def test_samples_are_held_out_scenes_with_several_classes() -> None:
    samples = sample_scenes()
    assert len(samples) == 4 and len({s.index for s in samples}) == 4
    for sample in samples:
        assert sample.seed == HELD_OUT_SEED  # neither the training (0) nor the validation (1) seed
        image, labels = make_scene(scene_rng(HELD_OUT_SEED, sample.index), *sample.image.shape[:2])
        np.testing.assert_array_equal(sample.image, image)
        shown = {VOC_CLASSES[c] for c in np.unique(labels).tolist() if c not in (0, 255)}
        assert set(sample.classes) == shown and len(shown) >= 2


def test_a_drifted_copy_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = write_samples(tmp_path)
    assert stale(tmp_path) == []
    entries = json.loads((tmp_path / MANIFEST).read_text())["samples"]
    assert [e["file"] for e in entries] == [s.file for s in samples]

    first, second = tmp_path / samples[0].file, tmp_path / samples[1].file
    pixels = np.asarray(Image.open(first)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(first)
    second.unlink()
    (tmp_path / "extra.png").write_bytes(first.read_bytes())
    assert sorted(stale(tmp_path)) == sorted(
        [f"{first.name} (pixels differ)", f"{second.name} (missing)", "extra.png (not a sample)"]
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--check"])
    assert exit_info.value.code == 1 and "pixels differ" in capsys.readouterr().out

    main(["--out", str(tmp_path)])
    assert stale(tmp_path) == [] and not (tmp_path / "extra.png").exists()
