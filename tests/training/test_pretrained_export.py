"""Download → conversion → ``export``: the served ONNX labels equal PyTorch's for the same weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from common.metadata import Normalization
from tests.training.caffe_files import fcn_caffemodel, random_state
from tests.training.file_server import FileServer, Routes
from training import pretrained
from training.data import normalize_batch
from training.download import Digest
from training.model import build_model

WIDTH = 1 / 32


def _labels(path: Path, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["labels"], {"image": images})[0]


@pytest.mark.slow
def test_fetch_export_serves_the_labels_of_the_same_weights_in_pytorch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    state = random_state("fcn8s", WIDTH, seed=3)
    data = fcn_caffemodel(state)
    net = pretrained.NETS["fcn8s"]
    caffe = dataclasses.replace(net.sources[0], checksum=Digest("sha1", hashlib.sha1(data).hexdigest()))
    monkeypatch.setitem(pretrained.NETS, "fcn8s", dataclasses.replace(net, sources=(caffe,)))
    out = tmp_path / "fcn8s-heavy"
    with FileServer(Routes(files={"/caffe/fcn8s-heavy-pascal.caffemodel": data})) as server:
        args = ["--mirror", server.url(), "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out)]
        assert pretrained.main(["fetch", "fcn8s", *args]) == 0
    exported = pretrained.main(
        ["export", "fcn8s", "--out-dir", str(out), "--check-shapes", "1x64x64", "2x45x71",
         "--size", "64", "--count", "2"]
    )  # fmt: skip
    assert exported == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "model-fp16.onnx", "model-int8.onnx", "model.onnx", "model.safetensors"
    ]  # fmt: skip

    images = np.random.default_rng(0).integers(0, 256, size=(2, 57, 83, 3), dtype=np.uint8)
    reference = build_model("fcn8s", 21, WIDTH).eval()
    reference.load_state_dict(state)
    with torch.no_grad():
        scores = reference(normalize_batch(torch.from_numpy(images), Normalization.caffe()))
    expected = scores.argmax(1).to(torch.uint8).numpy()
    assert len(np.unique(expected)) > 3  # the comparison is not one flat class
    np.testing.assert_array_equal(_labels(out / "model.onnx", images), expected)

    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    metadata = json.loads(props["fcn_metadata"])
    assert metadata["name"] == "fcn8s-heavy-pascal"
    assert metadata["normalization"]["channel_order"] == "BGR"
    assert metadata["metrics"]["mean_iu"] == 0.655
    assert metadata["training"]["checksum"]["verified"] is True
    for name, precision in (("model-fp16.onnx", "fp16"), ("model-int8.onnx", "int8")):
        quantised = onnx.load(str(out / name), load_external_data=False)
        assert {p.key: p.value for p in quantised.metadata_props}["precision"] == precision
        labels = _labels(out / name, images)
        assert labels.shape == expected.shape and labels.dtype == np.uint8


def test_export_without_a_checkpoint_says_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pretrained.main(["export", "fcn16s", "--out-dir", str(tmp_path)]) == 1
    assert "run python -m training.pretrained fetch fcn16s" in capsys.readouterr().err
