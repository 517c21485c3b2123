"""FP16 conversion: contract kept, FP32 islands where asked, label agreement gate."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from common.onnxrt import create_session
from export import fp16
from export.agreement import FP16_GATE, Agreement, with_scores_output
from export.fp16 import Runner, convert_to_fp16, label_agreement, preprocessing_nodes
from export.images import synthetic_batch
from export.onnx import read_properties

from .conftest import Exported


def types_of(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


@pytest.fixture(scope="module")
def fp32_model(exported: Exported) -> onnx.ModelProto:
    return onnx.load(str(exported.onnx))


@pytest.fixture(scope="module")
def converted(fp32_model: onnx.ModelProto) -> fp16.Conversion:
    return convert_to_fp16(fp32_model)


def test_contract_and_metadata_are_kept(fp32_model: onnx.ModelProto, converted: fp16.Conversion) -> None:
    model = converted.model
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [
        ("image", TensorProto.UINT8)
    ]
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == [
        ("labels", TensorProto.UINT8)
    ]
    props, before = read_properties(model), read_properties(fp32_model)
    assert props["precision"] == "fp16" and before["precision"] == "fp32"
    assert (
        props["fcn_metadata"] == before["fcn_metadata"] and props["source_sha256"] == before["source_sha256"]
    )


def test_convolutions_are_fp16_and_islands_fp32(converted: fp16.Conversion) -> None:
    model, types = converted.model, types_of(converted.model)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(types[n.input[1]] == TensorProto.FLOAT16 for n in convs)
    assert all(types[n.output[0]] == TensorProto.FLOAT16 for n in convs)
    pre = [model.graph.node[i] for i in preprocessing_nodes(model.graph)]
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    normalisation = [n for n in pre if n.op_type in ("Sub", "Div") and types[n.output[0]] in floats]
    assert len(normalisation) == 2 and all(types[n.output[0]] == TensorProto.FLOAT for n in normalisation)
    (argmax,) = [n for n in model.graph.node if n.op_type == "ArgMax"]
    assert types[argmax.input[0]] == TensorProto.FLOAT
    assert converted.casts == 2  # normalised image -> FP16, scores -> FP32 for ArgMax
    assert sum(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer) > 0


def test_named_nodes_and_op_types_stay_fp32(fp32_model: onnx.ModelProto) -> None:
    first_conv = next(n.name for n in fp32_model.graph.node if n.op_type == "Conv")
    model = convert_to_fp16(fp32_model, keep_nodes=[first_conv]).model
    types = types_of(model)
    node = next(n for n in model.graph.node if n.name == first_conv)
    assert types[node.input[1]] == TensorProto.FLOAT and types[node.output[0]] == TensorProto.FLOAT
    no_upsampling = convert_to_fp16(fp32_model, keep_op_types=["ConvTranspose", "ArgMax"]).model
    types = types_of(no_upsampling)
    assert all(
        types[n.output[0]] == TensorProto.FLOAT
        for n in no_upsampling.graph.node
        if n.op_type == "ConvTranspose"
    )
    with pytest.raises(ValueError, match="no nodes named"):
        convert_to_fp16(fp32_model, keep_nodes=["not-a-node"])


def test_scores_output_stays_float32(fp32_model: onnx.ModelProto) -> None:
    with_scores = with_scores_output(fp32_model)
    model = convert_to_fp16(with_scores, keep_op_types=[]).model
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [
        TensorProto.UINT8,
        TensorProto.FLOAT,
    ]
    image = synthetic_batch(1, 48, 64, seed=5)
    (scores32,) = create_session(with_scores).run([model.graph.output[1].name], {"image": image})
    labels16, scores16 = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"image": image})
    assert scores16.dtype == np.float32
    np.testing.assert_allclose(scores16, scores32, atol=0.05 * float(np.abs(scores32).max()))
    assert np.mean(labels16 == scores32.argmax(1)) > 0.99


def test_label_agreement_meets_the_gate(fp32_model: onnx.ModelProto, converted: fp16.Conversion) -> None:
    images = list(synthetic_batch(4, 96, 128, seed=7))
    agreement, engine = label_agreement(fp32_model, converted.model, images)
    assert engine.startswith("onnxruntime CPU (FP16 tensors")
    assert agreement.pixels == 4 * 96 * 128 and agreement.passes(FP16_GATE), agreement.summary()
    assert agreement.equal + agreement.near_ties + agreement.real == agreement.pixels


def test_cli_writes_and_reports(exported: Exported, tmp_path: Path) -> None:
    out = tmp_path / "fp16.onnx"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = fp16.main(["--onnx", str(exported.onnx), "--out", str(out), "--count", "3", "--size", "80"])
    assert code == 0, buffer.getvalue()
    assert "label agreement FP16 vs FP32: " in buffer.getvalue()
    assert out.stat().st_size < 0.6 * exported.onnx.stat().st_size
    (labels,) = create_session(out).run(None, {"image": synthetic_batch(2, 33, 47)})
    assert labels.shape == (2, 33, 47) and labels.dtype == np.uint8


def test_cli_gate_blocks_the_write(exported: Exported, tmp_path: Path, monkeypatch, capsys) -> None:
    disagreeing = Agreement(pixels=1000, equal=980, near_ties=10, real=10, worst_real_margin=3.0)
    monkeypatch.setattr(fp16, "label_agreement", lambda *args: (disagreeing, "onnxruntime CPU"))
    out = tmp_path / "fp16.onnx"
    assert fp16.main(["--onnx", str(exported.onnx), "--out", str(out), "--count", "1", "--size", "16"]) == 1
    err = capsys.readouterr().err
    assert "for real on 1.000% of pixels" in err and "10 near-tie and 10 real" in err and not out.exists()
    out.unlink(missing_ok=True)
    args = ["--onnx", str(exported.onnx), "--out", str(out), "--count", "1", "--size", "16"]
    assert fp16.main([*args, "--min-agreement", "0.99"]) == 0 and out.exists()  # 1% real allowed


def test_runner_falls_back_to_the_reference_evaluator(monkeypatch) -> None:
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])
    labels = helper.make_tensor_value_info("labels", TensorProto.UINT8, ["N", "H", "W"])
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT16),
        helper.make_node("ArgMax", ["f"], ["i"], axis=3, keepdims=0),
        helper.make_node("Cast", ["i"], ["labels"], to=TensorProto.UINT8),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [image], [labels]), opset_imports=[helper.make_opsetid("", 18)]
    )

    def no_session(*args, **kwargs):
        raise RuntimeError("NOT_IMPLEMENTED: no FP16 kernel")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    runner = Runner(model)
    assert runner.engine.startswith("onnx reference evaluator") and "NOT_IMPLEMENTED" in runner.engine
    batch = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(runner.labels(batch), batch.argmax(-1).astype(np.uint8))
