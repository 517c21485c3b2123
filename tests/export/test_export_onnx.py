"""Checkpoint → ONNX: I/O contract, metadata, the multi-size verification and what it catches."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from common.digest import file_sha256
from common.metadata import ModelMetadata, Normalization
from common.onnxrt import create_session
from export import onnx as export_onnx_module
from export.graph import deployable_graph
from export.onnx import (
    CHECK_SHAPES,
    TRACE_SHAPE,
    VerificationError,
    export_onnx,
    main,
    read_properties,
    verify_onnx,
)
from training.weights import load_checkpoint

from .conftest import Exported
from .export_helpers import random_model


def dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_cli_writes_a_verified_model(exported: Exported) -> None:
    assert exported.returncode == 0, exported.log
    for n, h, w in CHECK_SHAPES:
        assert (
            f"{n}x{h}x{w}: 100.0000% equal, 0 near-tie and 0 real disagreements; max |Δscore|" in exported.log
        )
    assert (1, 333, 517) in CHECK_SHAPES and any(n == 3 for n, _, _ in CHECK_SHAPES)
    assert TRACE_SHAPE not in CHECK_SHAPES
    assert f"wrote {exported.onnx}" in exported.log


def test_io_contract_and_opset(exported: Exported) -> None:
    model = onnx.load(str(exported.onnx))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    (image,) = model.graph.input
    (labels,) = model.graph.output
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert labels.name == "labels" and labels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    batch, height, width, channels = dims(image)
    assert channels == 3 and all(isinstance(d, str) for d in (batch, height, width))
    assert dims(labels) == [batch, height, width]


def test_metadata_props(exported: Exported) -> None:
    props = read_properties(onnx.load(str(exported.onnx)))
    _, expected = load_checkpoint(exported.checkpoint)
    assert ModelMetadata.from_json(props["fcn_metadata"]) == expected
    assert props["source_sha256"] == file_sha256(exported.checkpoint)
    assert props["precision"] == "fp32"


def test_onnx_runtime_matches_pytorch_at_untraced_sizes(exported: Exported) -> None:
    model, metadata = load_checkpoint(exported.checkpoint)
    session = create_session(exported.onnx)
    rng = np.random.default_rng(3)
    for shape in [(1, 1, 1), (2, 7, 13), (1, 101, 33)]:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        (labels,) = session.run(None, {"image": image})
        with torch.no_grad():
            expected = deployable_graph(model, metadata, friendly=False)(torch.from_numpy(image)).numpy()
        assert labels.dtype == np.uint8 and labels.shape == shape
        np.testing.assert_array_equal(labels, expected)


def test_frozen_crop_offsets_are_caught(checkpoint: Path, tmp_path: Path) -> None:
    """A graph with crop sizes frozen at the trace size passes at that size and fails at the others."""
    model, metadata = load_checkpoint(checkpoint)
    path = tmp_path / "frozen.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            deployable_graph(model, metadata), (torch.zeros(1, 64, 96, 3, dtype=torch.uint8),), str(path),
            dynamo=False, input_names=["image"], output_names=["labels"], opset_version=18,
        )  # fmt: skip
    frozen = onnx.load(str(path))
    for value in [*frozen.graph.input, *frozen.graph.output]:  # claim dynamic N/H/W like the trap does
        for dim, name in zip(value.type.tensor_type.shape.dim, "NHW", strict=False):
            dim.dim_param = name
    reference = deployable_graph(model, metadata, scores=True, friendly=False)
    (at_trace_size,) = verify_onnx(frozen, reference, [(1, 64, 96)])
    assert at_trace_size.agreement == 1.0
    with pytest.raises(VerificationError, match="80x96"):
        verify_onnx(frozen, reference, [(1, 64, 96), (1, 80, 96)])


def test_disagreeing_labels_fail_the_export(exported: Exported, tmp_path: Path, monkeypatch) -> None:
    """The gate is on labels: an export that differs from its PyTorch model is not written."""
    model, metadata = load_checkpoint(exported.checkpoint)
    other = random_model(seed=1)  # the ONNX file below holds the fixture's weights, not these

    def trace_fixture_onnx(graph, path, opset):
        path.write_bytes(exported.onnx.read_bytes())

    monkeypatch.setattr(export_onnx_module, "trace_to_onnx", trace_fixture_onnx)
    out = tmp_path / "bad.onnx"
    with pytest.raises(VerificationError, match="disagrees"):
        export_onnx(other, metadata, out, source_sha256="0" * 64, shapes=[(1, 40, 56)])
    assert not list(tmp_path.iterdir())
    export_onnx(model, metadata, out, source_sha256="0" * 64, shapes=[(1, 40, 56)])
    assert out.is_file()


def test_scores_output(tmp_path: Path) -> None:
    model = random_model("fcn16s", seed=2)
    metadata = ModelMetadata(architecture="fcn16s", width=model.width, normalization=Normalization())
    out = tmp_path / "scores.onnx"
    checks = export_onnx(model, metadata, out, source_sha256="ab" * 32, scores=True, shapes=[(2, 45, 61)])
    assert checks[0].agreement == 1.0 and checks[0].max_abs_score_diff < 1e-3
    proto = onnx.load(str(out))
    assert [o.name for o in proto.graph.output] == ["labels", "scores"]
    assert proto.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch, height, width, _ = dims(proto.graph.input[0])
    assert dims(proto.graph.output[1]) == [batch, 21, height, width]
    labels, scores = create_session(out).run(None, {"image": np.zeros((1, 20, 30, 3), dtype=np.uint8)})
    assert scores.shape == (1, 21, 20, 30)
    np.testing.assert_array_equal(labels, scores.argmax(1).astype(np.uint8))


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x.onnx")]) == 1
    )
    assert "export failed:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--out", "y", "--opset", "17"])
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--out", "y", "--check-shapes", "1x2"])
