"""Triton model repository: each config.pbtxt parsed with Triton's protobuf and checked against the model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import onnx
import pytest

from common import onnxrt
from common.geometry import NetworkGeometry, ServingGeometry
from common.metadata import ModelMetadata
from engine.spec import Sidecar, write_sidecar
from export import triton
from export.agreement import with_scores_output

from .conftest import Exported


def model_config_module():
    """``tritonclient.grpc.model_config_pb2`` without importing the grpc client (needs only protobuf)."""
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None and spec.submodule_search_locations, (
        "tritonclient is pinned in requirements/dev.txt"
    )
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse_config(path: Path):
    from google.protobuf import text_format

    pb2 = model_config_module()
    return text_format.Parse(path.read_text(), pb2.ModelConfig()), pb2


def check_against_onnx(config, pb2, model: onnx.ModelProto) -> None:
    """Names, types and shapes of the config equal the ONNX graph's (batch dim dropped, -1 where dynamic)."""
    onnx_types = {onnx.TensorProto.UINT8: pb2.TYPE_UINT8, onnx.TensorProto.FLOAT: pb2.TYPE_FP32}

    def expected(values):
        return [
            (
                v.name,
                onnx_types[v.type.tensor_type.elem_type],
                [d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim][1:],
            )
            for v in values
        ]

    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == expected(model.graph.input)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == expected(model.graph.output)


def test_repository_for_onnx_and_plan(exported: Exported, tmp_path: Path) -> None:
    plan = tmp_path / "engine" / "m.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"not a real engine")
    metadata = ModelMetadata()
    write_sidecar(
        plan,
        Sidecar(
            "10.13.0.35",
            "NVIDIA H100",
            "9.0",
            ServingGeometry(NetworkGeometry()).engine_profile(12),
            "fp16",
            "0",
            1.0,
            metadata,
        ),
    )
    repo = tmp_path / "repo"
    written = triton.write_repository(repo, exported.onnx, plan, max_batch_size=6)
    assert (repo / "fcn8s_onnx" / "1" / "model.onnx").read_bytes() == exported.onnx.read_bytes()
    assert (repo / "fcn8s" / "1" / "model.plan").read_bytes() == b"not a real engine"
    assert all(path.is_file() for path in written)
    model = onnx.load(str(exported.onnx))

    config, pb2 = parse_config(repo / "fcn8s_onnx" / "config.pbtxt")
    assert (
        config.name == "fcn8s_onnx" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 6
    )
    assert (
        config.HasField("dynamic_batching")
        and config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    )
    check_against_onnx(config, pb2, model)
    assert list(config.input[0].dims) == [-1, -1, 3] and list(config.output[0].dims) == [-1, -1]

    config, pb2 = parse_config(repo / "fcn8s" / "config.pbtxt")
    assert config.name == "fcn8s" and config.platform == "tensorrt_plan"
    assert config.max_batch_size == 12, "the engine's profile caps the batch"
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    check_against_onnx(config, pb2, model)


def test_scores_output_and_cli(exported: Exported, tmp_path: Path, capsys) -> None:
    scored = tmp_path / "scored.onnx"
    onnx.save(with_scores_output(onnx.load(str(exported.onnx))), str(scored))
    assert triton.main(["--onnx", str(scored), "--out", str(tmp_path / "repo"), "--name", "seg"]) == 0
    assert "docker run" in capsys.readouterr().out
    config, pb2 = parse_config(tmp_path / "repo" / "seg_onnx" / "config.pbtxt")
    assert config.output[0].name == "labels" and config.output[1].data_type == pb2.TYPE_FP32
    assert list(config.output[1].dims) == [21, -1, -1]
    assert triton.main(["--onnx", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "r2")]) == 1


def test_static_batch_is_rejected() -> None:
    image = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, [1, 8, 8, 3])
    graph = onnx.helper.make_graph([], "g", [image], [image])
    with pytest.raises(ValueError, match="dynamic batch"):
        triton.tensor_specs(onnx.helper.make_model(graph))


def test_onnxrt_reads_props_with_and_without_onnx(exported: Exported, monkeypatch) -> None:
    metadata, props = onnxrt.read_metadata(exported.onnx)
    assert props["precision"] == "fp32" and metadata.architecture == "fcn8s"
    monkeypatch.setitem(sys.modules, "onnx", None)  # the server installs only onnxruntime
    assert onnxrt.read_props(exported.onnx) == props
