"""A short training run on synthetic data: loss falls, the checkpoint reloads, resume continues exactly."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from common.metadata import Normalization
from training import demo, evaluate, train
from training.model import build_model
from training.weights import load_checkpoint, read_metadata

WIDTH = "0.03125"


def _train(data: Path, out: Path, *extra: str) -> tuple[torch.nn.Module, Any]:
    return train.main(
        ["--data", str(data), "--arch", "fcn8s", "--width", WIDTH, "--batch-size", "2", "--loss", "mean",
         "--optimizer", "adam", "--lr", "2e-3", "--weight-decay", "0", "--seed", "0", "--out", str(out),
         "--no-progress", *extra]
    )  # fmt: skip


def _log(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def short_run(synth_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, Any]:
    out = tmp_path_factory.mktemp("run")
    model, metadata = _train(synth_voc, out, "--iterations", "16", "--checkpoint-every", "0")
    return out, model, metadata


def test_loss_falls(short_run: tuple[Path, torch.nn.Module, Any]) -> None:
    out, _, _ = short_run
    losses = [float(row["loss"]) for row in _log(out)]
    assert len(losses) == 16
    assert losses[0] == pytest.approx(math.log(21), rel=1e-4)  # zero-initialised score layers: uniform
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4


def test_checkpoint_reloads_to_identical_outputs(short_run: tuple[Path, torch.nn.Module, Any]) -> None:
    out, model, metadata = short_run
    loaded, loaded_metadata = load_checkpoint(out / "model.safetensors")
    assert loaded_metadata == metadata
    assert metadata.training["iterations"] == 16 and metadata.training["optimizer"] == "adam"
    assert metadata.training["command"].startswith("python -m training.train --data ")
    assert set(metadata.metrics) >= {"pixel_accuracy", "mean_accuracy", "mean_iu", "frequency_weighted_iu"}
    x = torch.randn(2, 3, 41, 37)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_evaluate_cli_reproduces_the_training_metrics(
    short_run: tuple[Path, torch.nn.Module, Any], synth_voc: Path, tmp_path: Path
) -> None:
    out, _, metadata = short_run
    report = evaluate.main(
        ["--checkpoint", str(out / "model.safetensors"), "--data", str(synth_voc), "--split", "val",
         "--json", str(tmp_path / "eval.json")]
    )  # fmt: skip
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written == report
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "frequency_weighted_iu", "class_iu"):
        assert written[key] == pytest.approx(metadata.metrics[key]), key


def test_resume_continues_exactly(synth_voc: Path, tmp_path: Path) -> None:
    augment = ("--flip", "--scale", "0.8", "1.2", "--crop", "48", "56")
    reference, _ = _train(
        synth_voc, tmp_path / "straight", "--iterations", "6", "--checkpoint-every", "0", *augment
    )
    resumed_dir = tmp_path / "resumed"
    _train(synth_voc, resumed_dir, "--iterations", "3", "--checkpoint-every", "3", *augment)
    resumed, _ = _train(synth_voc, resumed_dir, "--iterations", "6", "--resume", *augment)
    assert [int(row["step"]) for row in _log(resumed_dir)] == list(range(1, 7))
    with pytest.raises(ValueError, match="other settings: lr"):
        _train(synth_voc, resumed_dir, "--iterations", "7", "--resume", "--lr", "1e-2", *augment)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bad_settings_are_refused(synth_voc: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _train(synth_voc, tmp_path, "--init", "vgg16")  # no --init-from
    with pytest.raises(FileNotFoundError, match=r"resume\.pt"):
        _train(synth_voc, tmp_path / "empty", "--iterations", "1", "--resume")


def test_staged_cli_from_a_caffe_converted_32s_to_16s_to_8s(synth_voc: Path, tmp_path: Path) -> None:
    fcn32 = build_model("fcn32s", 21, float(WIDTH))
    for parameter in fcn32.parameters():
        parameter.data.normal_(0, 0.01)
    torch.save(fcn32.state_dict(), tmp_path / "fcn32s_from_caffe.pth")
    stage16, metadata16 = train.main(
        ["--data", str(synth_voc), "--arch", "fcn16s", "--width", WIDTH, "--init", "checkpoint",
         "--init-from", str(tmp_path / "fcn32s_from_caffe.pth"), "--lr", "1e-12", "--iterations", "1",
         "--out", str(tmp_path / "16s"), "--no-progress"]
    )  # fmt: skip
    assert metadata16.normalization == Normalization.caffe()
    assert "layers copied by name" in metadata16.training["init"]
    assert torch.allclose(stage16.conv1_1.weight, fcn32.conv1_1.weight, atol=1e-6)
    stage8, metadata8 = train.main(
        ["--data", str(synth_voc), "--arch", "fcn8s", "--width", WIDTH, "--init", "checkpoint",
         "--init-from", str(tmp_path / "16s" / "model.safetensors"), "--lr", "1e-14", "--iterations", "1",
         "--out", str(tmp_path / "8s"), "--no-progress"]
    )  # fmt: skip
    assert metadata8.normalization == Normalization.caffe() and metadata8.architecture == "fcn8s"
    assert torch.allclose(stage8.score_pool4.weight, stage16.score_pool4.weight, atol=1e-9)


def test_demo_packaging_adds_data_seeds_metrics_and_loss_plot(
    short_run: tuple[Path, torch.nn.Module, Any], tmp_path: Path
) -> None:
    out, _, metadata = short_run
    target = tmp_path / "fcn8s-demo.safetensors"
    demo.package(out, target, wall_seconds=12.34)
    packaged = read_metadata(target)
    assert packaged.name == "fcn8s-demo"
    assert packaged.metrics == metadata.metrics
    assert packaged.training["train_data"]["seed"] != packaged.training["heldout_data"]["seed"]
    assert packaged.training["reproduce"] == "python -m training.demo"
    assert packaged.training["wall_seconds"] == 12.3
    assert json.loads((tmp_path / "fcn8s-demo-metrics.json").read_text())["metrics"] == metadata.metrics
    assert (tmp_path / "fcn8s-demo-loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_epochs_set_the_number_of_steps(synth_voc: Path, tmp_path: Path) -> None:
    _, metadata = _train(
        synth_voc, tmp_path, "--epochs", "0.5", "--checkpoint-every", "0"
    )  # 8 images, batch 2
    assert metadata.training["iterations"] == 2 and metadata.training["epochs"] == 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (AMP runs on CUDA only)")
def test_amp_training_on_cuda(synth_voc: Path, tmp_path: Path) -> None:
    model, metadata = _train(
        synth_voc, tmp_path, "--iterations", "4", "--device", "cuda", "--checkpoint-every", "2"
    )
    assert metadata.training["amp"] is True and metadata.training["device"] == "cuda"
    assert next(model.parameters()).is_cuda
    assert all(math.isfinite(float(row["loss"])) for row in _log(tmp_path))
