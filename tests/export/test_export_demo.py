"""The shipped demo ONNX is what the export CLI makes of the shipped demo checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from common.digest import file_sha256
from common.onnxrt import create_session
from export.graph import deployable_graph
from export.images import synthetic_batch
from export.onnx import read_properties, trace_to_onnx
from training.weights import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "models" / "demo" / "fcn8s-demo.safetensors"
SHIPPED = REPO / "models" / "demo" / "fcn8s-demo.onnx"


def test_shipped_onnx_matches_a_fresh_export(tmp_path: Path) -> None:
    props = read_properties(onnx.load(str(SHIPPED), load_external_data=False))
    assert props["source_sha256"] == file_sha256(CHECKPOINT), "re-export the demo ONNX from the checkpoint"
    assert props["precision"] == "fp32"
    model, metadata = load_checkpoint(CHECKPOINT)
    fresh = tmp_path / "fresh.onnx"
    trace_to_onnx(deployable_graph(model, metadata), fresh)
    shipped_session, fresh_session = create_session(SHIPPED), create_session(fresh)
    for n, h, w in [(1, 96, 128), (2, 75, 61)]:
        images = synthetic_batch(n, h, w, seed=11)
        (expected,) = shipped_session.run(None, {"image": images})
        (labels,) = fresh_session.run(None, {"image": images})
        np.testing.assert_array_equal(labels, expected)
        assert len(np.unique(expected)) > 1


def test_server_side_modules_do_not_import_torch() -> None:
    code = (
        "import sys, common.onnxrt, engine.spec, engine.runtime, export.trt, export.triton, "
        "export.precision, server.app; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


SHIPPED_FP16 = REPO / "models" / "demo" / "fcn8s-demo-fp16.onnx"


def test_shipped_fp16_onnx_is_the_conversion_of_the_shipped_fp32() -> None:
    from export.agreement import FP16_GATE
    from export.fp16 import convert_to_fp16, label_agreement

    shipped = onnx.load(str(SHIPPED_FP16))
    assert read_properties(shipped)["precision"] == "fp16"
    fresh = convert_to_fp16(onnx.load(str(SHIPPED))).model
    assert [n.op_type for n in fresh.graph.node] == [n.op_type for n in shipped.graph.node]
    fp16_inits = {i.name for i in shipped.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert fp16_inits, "the shipped FP16 graph has no FP16 weights"
    images = [synthetic_batch(1, 96, 128, seed=s)[0] for s in (3, 4)]
    agreement, _ = label_agreement(onnx.load(str(SHIPPED)), shipped, images)
    assert agreement.passes(FP16_GATE), agreement.summary()


SHIPPED_INT8 = REPO / "models" / "demo" / "fcn8s-demo-int8.onnx"


def test_shipped_int8_onnx_is_the_quantisation_of_the_shipped_fp32(tmp_path: Path) -> None:
    """``python -m export.quantize --onnx fcn8s-demo.onnx --out fcn8s-demo-int8.onnx --keep-fp32 conv1_1``
    (the accuracy table's choice, docs/export.md) gives the shipped file's labels, and they agree with FP32
    on >= 99% of held-out pixels."""
    from export.quantize import main as quantize_main
    from training.synth import HELD_OUT_SEED, make_scene, scene_rng

    shipped = onnx.load(str(SHIPPED_INT8))
    assert read_properties(shipped)["precision"] == "int8"
    assert any(n.op_type == "QuantizeLinear" for n in shipped.graph.node)
    fresh = tmp_path / "int8.onnx"
    assert quantize_main(["--onnx", str(SHIPPED), "--out", str(fresh), "--keep-fp32", "conv1_1"]) == 0
    int8, again, fp32 = (create_session(p, intra_op_threads=1) for p in (SHIPPED_INT8, fresh, SHIPPED))
    equal = total = 0
    for index in range(12):
        image = make_scene(scene_rng(HELD_OUT_SEED, index), 160, 160)[0][None]
        labels = int8.run(None, {"image": image})[0]
        np.testing.assert_array_equal(labels, again.run(None, {"image": image})[0])
        equal += int((labels == fp32.run(None, {"image": image})[0]).sum())
        total += labels.size
    assert equal / total >= 0.99, equal / total
