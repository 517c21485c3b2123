"""The TensorRT build path against the fake TensorRT (``tests/trtfake.py``) and the CPU graph lint: the
uint8 I/O rules, the timing cache, the FP16 gate on fused engines, and the whole ``build_engine.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from common.geometry import Profile
from common.onnxrt import create_session
from engine import runtime as rt
from engine.spec import read_sidecar
from export import build_engine, trt
from export.images import synthetic_batch
from export.passes import labels_via_float, shapes_from_cast
from export.precision import PrecisionError, check_fp16, graph_convolutions, layer_precisions
from export.trtlint import TensorRTGraphError, lint
from export.trtlint import check as check_tensorrt_graph
from tests.trtfake import VERSION, FakeTensorRT, FakeTimingCache, install

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / "models" / "demo" / "fcn8s-demo.onnx", REPO / "models" / "demo" / "fcn8s-demo-fp16.onnx"]
PROFILE = Profile(1, 2, 4, 32, 64, 128)
A100_40GB = ("NVIDIA A100-SXM4-40GB", "8.0")


def parse(fake: FakeTensorRT, path: Path) -> tuple[bool, list]:
    """Run the fake ONNX parser on a file: (accepted, errors)."""
    parser = fake.OnnxParser(fake.Builder(None).create_network(0), None)
    accepted = parser.parse_from_file(str(path))
    return accepted, [parser.get_error(i) for i in range(parser.num_errors)]


def test_the_fake_parser_rejects_what_the_exporter_writes_before_the_passes(raw_trace: Path) -> None:
    """Items 1 and 2: the uint8 ``image`` read by ``Shape`` nodes, ``labels`` cast from INT64."""
    accepted, errors = parse(FakeTensorRT(), raw_trace)
    assert not accepted
    rejected = {(e.node_name(), e.node_operator()) for e in errors}
    graph = onnx.load(str(raw_trace)).graph
    shapes = {(n.name, n.op_type) for n in graph.node if "image" in n.input and n.op_type != "Cast"}
    assert shapes and shapes <= rejected, rejected
    labels = next(n for n in graph.node if "labels" in n.output)
    assert (labels.name, "Cast") in rejected
    assert any("float32, float16" in e.desc() for e in errors if e.node_name() == labels.name)


def test_the_lint_names_each_node_tensorrt_would_reject(raw_trace: Path) -> None:
    problems = lint(onnx.load(str(raw_trace)))
    text = "\n".join(str(p) for p in problems)
    assert [p.op_type for p in problems] == ["Shape", "Shape", "Cast"], text
    assert "reads the UINT8 tensor 'image'" in text and "converts INT64 to UINT8" in text
    with pytest.raises(TensorRTGraphError, match=r"node 'node_Shape_0' \(Shape\)"):
        check_tensorrt_graph(raw_trace)


def test_the_passes_fix_the_graph_and_keep_its_labels(raw_trace: Path, tmp_path: Path) -> None:
    model = onnx.load(str(raw_trace))
    assert (shapes_from_cast(model), labels_via_float(model)) == (2, 1)
    onnx.checker.check_model(model, full_check=True)
    assert lint(model) == []
    assert parse(FakeTensorRT(), _save(model, tmp_path / "fixed.onnx"))[0]
    producers = {out: node for node in model.graph.node for out in node.output}
    cast = producers["labels"]
    via = producers[cast.input[0]]
    assert (via.op_type, producers[via.input[0]].op_type) == ("Cast", "ArgMax")
    assert model.graph.node[0].op_type == "Cast" and model.graph.node[0].input[0] == "image"
    before, after = create_session(raw_trace), create_session(model)
    for n, h, w in [(1, 33, 47), (3, 80, 64)]:
        images = synthetic_batch(n, h, w, seed=5)
        expected = before.run(None, {"image": images})[0]
        np.testing.assert_array_equal(after.run(None, {"image": images})[0], expected)
    assert (shapes_from_cast(model), labels_via_float(model)) == (0, 0), "a second run changes nothing"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_the_shipped_graphs_pass_the_lint_and_the_fake_parser(path: Path) -> None:
    assert lint(onnx.load(str(path))) == []
    assert parse(FakeTensorRT(), path) == (True, [])


def test_the_export_lints_its_graph(monkeypatch, exported, checkpoint: Path, tmp_path: Path, capsys) -> None:
    """``python -m export.onnx`` writes nothing TensorRT's parser would reject (here: without the pass)."""
    from export import onnx as export_onnx

    assert "the TensorRT graph lint (export/trtlint.py) passed" in exported.log
    monkeypatch.setattr(export_onnx, "shapes_from_cast", lambda model: 0)
    out = tmp_path / "m.onnx"
    assert export_onnx.main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 1
    assert "node 'node_Shape_0' (Shape): reads the UINT8 tensor 'image'" in capsys.readouterr().err
    assert not out.exists()


def test_build_engine_lints_before_tensorrt_sees_the_graph(monkeypatch, raw_trace: Path) -> None:
    install(monkeypatch)
    with pytest.raises(trt.EngineBuildError, match=r"node_Shape_0.*\n.*node_Shape_1"):
        trt.build_engine(raw_trace, trt.BuildOptions(PROFILE))


def test_every_parser_error_is_reported(monkeypatch, raw_trace: Path) -> None:
    install(monkeypatch)
    monkeypatch.setattr(trt, "check_tensorrt_graph", lambda path: None)  # let the parser see it
    with pytest.raises(trt.EngineBuildError) as caught:
        trt.build_engine(raw_trace, trt.BuildOptions(PROFILE))
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("the ONNX parser rejected")
    assert len(lines) == 4 and "at node node_Shape_0 (Shape)" in lines[1]


def test_build_flow_and_timing_cache_reuse(monkeypatch, exported, tmp_path: Path) -> None:
    fake = install(monkeypatch)
    cache = tmp_path / "timing.cache"
    options = trt.BuildOptions(PROFILE, 1 << 30, 5, cache)
    built = trt.build_engine(exported.onnx, options)
    assert not built.timing_cache_reused and built.notes == ()
    assert fake.calls["flags"] == 1 << 1  # STRONGLY_TYPED
    assert fake.calls["workspace"] == ("workspace", 1 << 30)
    assert fake.calls["shapes"] == {"image": ((1, 32, 32, 3), (2, 64, 64, 3), (4, 128, 128, 3))}
    assert FakeTimingCache.parse(cache.read_bytes()) == FakeTimingCache(fake.device.gpu, VERSION, 1)
    again = trt.build_engine(exported.onnx, options)
    assert again.timing_cache_reused and FakeTimingCache.parse(cache.read_bytes()).entries == 2
    engine = fake.Runtime(None).deserialize_cuda_engine(again.plan)
    assert engine.get_tensor_profile_shape("image", 0) == [(1, 32, 32, 3), (2, 64, 64, 3), (4, 128, 128, 3)]
    del fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED  # TensorRT 11: always strongly typed, no flag
    trt.build_engine(exported.onnx, options)
    assert fake.calls["flags"] == 0


@pytest.mark.parametrize(
    ("gpu", "version"), [(A100_40GB, VERSION), (("NVIDIA H200", "9.0"), VERSION), (None, "10.12.0.36")]
)
def test_a_refused_timing_cache_is_replaced_by_a_fresh_one(
    monkeypatch, exported, tmp_path, gpu, version
) -> None:
    """Item 3: ``set_timing_cache`` returns False for another device's cache and ``get_timing_cache`` then
    returns None; the build starts a fresh cache instead of crashing after the build."""
    fake = install(monkeypatch)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(bytes(FakeTimingCache(gpu or fake.device.gpu, version, 7).serialize()))
    built = trt.build_engine(exported.onnx, trt.BuildOptions(PROFILE, timing_cache=cache))
    assert not built.timing_cache_reused
    assert any("refused the timing cache" in note for note in built.notes), built.notes
    assert FakeTimingCache.parse(cache.read_bytes()) == FakeTimingCache(fake.device.gpu, VERSION, 1)


def test_the_default_timing_cache_is_per_gpu_name() -> None:
    """Item 3: one capability, two GPUs (A100 40/80 GB, H100/H200): two caches."""
    folder = Path("/engines")
    paths = {
        build_engine.timing_cache_path(folder, "10.13.3.9", name, cc)
        for name, cc in [
            ("NVIDIA A100-SXM4-40GB", "8.0"),
            ("NVIDIA A100-SXM4-80GB", "8.0"),
            ("NVIDIA H100 80GB HBM3", "9.0"),
            ("NVIDIA H200", "9.0"),
        ]
    }
    assert len(paths) == 4
    assert folder / "timing-trt10.13.3.9-nvidia-h200-sm90.cache" in paths


def myelin_json(fp16: bool) -> str:
    output = {"Name": "out", "Format/Datatype": "Half" if fp16 else "Float"}
    layer = {
        "Name": "{ForeignNode[node_conv1_1...node_upscore8]}",
        "LayerType": "Myelin",
        "Outputs": [output],
    }
    return json.dumps({"Layers": [layer]})


def test_the_fp16_gate_accepts_fused_convolutions_of_an_fp16_graph(exported_fp16: Path, exported) -> None:
    """Item 8: no convolution visible (Myelin) is a warning for a graph whose convolutions are all FP16."""
    report = layer_precisions(myelin_json(fp16=True))
    assert report.convolutions == 0
    fp16, total = graph_convolutions(exported_fp16)
    assert fp16 == total > 0 and graph_convolutions(exported.onnx) == (0, total)
    (warning,) = check_fp16(report, graph=(fp16, total))
    assert "no convolution layer" in warning and f"all {total} convolutions" in warning
    with pytest.raises(PrecisionError, match="not all FP16"):
        check_fp16(report, graph=graph_convolutions(exported.onnx))


def test_build_engine_cli_with_the_fake_tensorrt(
    monkeypatch, exported, exported_fp16, tmp_path, capsys
) -> None:
    """The whole CLI on the fake: lint, parse, profile, timing cache per GPU, inspector gate (also with
    Myelin's fusion), atomic writes, and the plan runs."""
    fake = install(monkeypatch, myelin=True)
    plan = tmp_path / "engines" / "m.plan"
    code = build_engine.main(["--onnx", str(exported_fp16), "--out", str(plan), "--max-side", "128"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "WARNING: the engine inspector shows no convolution layer" in out.out
    info = read_sidecar(plan)
    assert (info.gpu_name, info.precision, info.profile.max_side) == (fake.device.gpu[0], "fp16", 128)
    assert sorted(p.name for p in plan.parent.iterdir()) == [
        "m.plan",
        "m.plan.json",
        "timing-trt10.13.0.35-nvidia-h100-80gb-hbm3-sm90.cache",
    ], "no temporary files left behind"
    assert plan.stat().st_mode & 0o777 == 0o644
    runner = rt.TensorRTRunner(plan)
    assert runner.run(np.full((2, 40, 56, 3), 44, dtype=np.uint8)).shape == (2, 40, 56)
    runner.close()


def test_build_engine_cli_refuses_an_fp32_engine_from_an_fp16_graph_that_is_not(
    monkeypatch, exported, tmp_path, capsys
) -> None:
    """The gate still fails an engine whose visible convolutions run in FP32."""
    install(monkeypatch)
    fp16_props = onnx.load(str(exported.onnx))
    for prop in fp16_props.metadata_props:
        if prop.key == "precision":
            prop.value = "fp16"  # claims FP16, has FP32 weights
    source = _save(fp16_props, tmp_path / "liar.onnx")
    assert build_engine.main(["--onnx", str(source), "--out", str(tmp_path / "m.plan")]) == 1
    assert "convolution layers run in FP32" in capsys.readouterr().err
    assert not (tmp_path / "m.plan").exists()


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("name", "low", "opt", "high"),
    [
        ("image", (1, 64, 64, 3), (1, 32, 32, 3), (1, 128, 128, 3)),  # min > opt
        ("input", (1, 32, 32, 3), (1, 64, 64, 3), (1, 128, 128, 3)),  # not the network's input
        ("image", (1, 32, 32), (1, 64, 64), (1, 128, 128)),  # wrong rank
        ("image", (1, 32, 32, 1), (1, 64, 64, 3), (1, 128, 128, 3)),  # a fixed dim (channels) varies
    ],
)
def test_the_fake_builder_refuses_an_invalid_profile(exported, name, low, opt, high) -> None:
    """``build_serialized_network`` returns None (the real builder logs why) for a profile that breaks
    ``IOptimizationProfile.set_shape``'s documented conditions; a valid one builds."""
    fake = FakeTensorRT()
    builder = fake.Builder(None)
    network = builder.create_network(0)
    assert fake.OnnxParser(network, None).parse_from_file(str(exported.onnx))

    def build(*shape: tuple) -> object:
        config, profile = builder.create_builder_config(), builder.create_optimization_profile()
        profile.set_shape(*shape)
        config.add_optimization_profile(profile)
        return builder.build_serialized_network(network, config)

    assert build(name, low, opt, high) is None
    assert build("image", (1, 32, 32, 3), (2, 64, 64, 3), (4, 128, 128, 3)) is not None
