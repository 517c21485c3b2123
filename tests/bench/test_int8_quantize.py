"""export.quantize: the INT8 graph keeps the deployable interface and metadata and agrees with FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from bench.int8_accuracy import compare, evaluate
from export.quantize import QuantizationError, main, quantize_onnx, resolve_nodes, synthetic_images
from training.synth import make_scene, scene_rng

DEMO_ONNX = Path(__file__).resolve().parents[2] / "models" / "demo" / "fcn8s-demo.onnx"


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _agreement(fp32: Path, int8: Path, count: int, size: int) -> float:
    a, b = _session(fp32), _session(int8)
    images = [make_scene(scene_rng(4242, i), size, size)[0][None] for i in range(count)]
    return float(
        np.mean([np.mean(a.run(None, {"image": x})[0] == b.run(None, {"image": x})[0]) for x in images])
    )


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_int8_keeps_interface_and_metadata(tiny_fp32: Path, tiny_int8: Path) -> None:
    model = onnx.load(str(tiny_int8))
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("image", onnx.TensorProto.UINT8)
    assert (out.name, out.type.tensor_type.elem_type) == ("labels", onnx.TensorProto.UINT8)
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) > 10
    original, quantized = _props(tiny_fp32), _props(tiny_int8)
    assert quantized.pop("precision") == "int8" and original.pop("precision") == "fp32"
    assert quantized == original
    labels = _session(tiny_int8).run(None, {"image": np.zeros((2, 37, 53, 3), np.uint8)})[0]
    assert labels.shape == (2, 37, 53) and labels.dtype == np.uint8


def test_random_small_model_agrees_with_fp32(tiny_fp32: Path, tiny_int8: Path) -> None:
    # random weights leave many near-ties between classes, so this bound is loose; the trained demo is below
    assert _agreement(tiny_fp32, tiny_int8, count=3, size=96) > 0.85


def test_demo_model_int8_agrees_with_fp32(tmp_path: Path) -> None:
    out = tmp_path / "demo-int8.onnx"
    quantize_onnx(DEMO_ONNX, out, synthetic_images(8, 160))  # the demo's training scenes are 160 px
    assert _agreement(DEMO_ONNX, out, count=8, size=160) >= 0.97


def test_keep_fp32_leaves_named_layers_unquantised(tiny_fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep.onnx"
    result = quantize_onnx(tiny_fp32, out, synthetic_images(2, 64), keep_fp32=["fc6", "conv1_1"])
    assert len(result.kept_fp32) == 2
    initializers = {t.name for t in onnx.load(str(out)).graph.initializer}
    assert "model.fc6.weight" in initializers and "model.fc6.weight_quantized" not in initializers
    assert "model.fc7.weight_quantized" in initializers


def test_unknown_layer_and_wrong_graph_are_refused(tiny_fp32: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="no node implements layer 'fc9'"):
        resolve_nodes(onnx.load(str(tiny_fp32)), ["fc9"])
    plain = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )  # fmt: skip
    path = tmp_path / "plain.onnx"
    onnx.save(plain, str(path))
    with pytest.raises(QuantizationError, match="deployable graph"):
        quantize_onnx(path, tmp_path / "out.onnx", synthetic_images(1, 32))


def test_cli_with_an_image_folder(
    tiny_fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(make_scene(scene_rng(9, index), 64, 80)[0]).save(folder / f"{index}.png")
    out = tmp_path / "cli-int8.onnx"
    assert main(["--onnx", str(tiny_fp32), "--out", str(out), "--calib-dir", str(folder)]) == 0
    assert _props(out)["precision"] == "int8"
    assert "2 calibration images" in capsys.readouterr().out
    assert main(["--onnx", str(tiny_fp32), "--out", str(out), "--calib-dir", str(tmp_path / "none")]) == 1


def test_accuracy_comparison_counts_agreement_and_iu() -> None:
    truth = [np.array([[0, 0], [1, 255]], np.uint8)]
    fp32 = [np.array([[0, 0], [1, 1]], np.uint8)]
    int8 = [np.array([[0, 1], [1, 0]], np.uint8)]
    result = compare(fp32, int8, truth, num_classes=2)
    assert result["agreement"] == pytest.approx(0.5)  # all pixels, void included
    assert result["fp32_mean_iu"] == pytest.approx(1.0)  # the void pixel is not scored
    assert result["int8_mean_iu"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert result["mean_iu_change"] == pytest.approx(-0.5)


def test_accuracy_report_on_the_tiny_model(tiny_fp32: Path, tmp_path: Path) -> None:
    rows = evaluate(
        tiny_fp32, [(), ("fc6",)], count=2, size=64, calib_count=2, calib_size=64, runs=1, threads=1,
        work_dir=tmp_path,
    )  # fmt: skip
    assert [r["keep_fp32"] for r in rows] == [[], ["fc6"]]
    assert rows[1]["int8_convolutions"] == rows[0]["int8_convolutions"] - 1
    assert all(0 <= r["agreement"] <= 1 and r["int8_ms"] > 0 for r in rows)
