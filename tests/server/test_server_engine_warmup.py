"""The first GPU start, on a fake TensorRT that keeps the real one's profile rules (``tests/trtfake.py``).

An engine built by ``build_engine.py`` with its defaults is served with the server's default settings:
every warm-up shape must fall inside the engine's optimisation profile, or the server never gets ready.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from common.geometry import Profile
from engine import runtime as rt
from engine.spec import read_sidecar
from export import build_engine, trt
from server.app import create_app
from server.backends.select import Environment, load_backend
from server.settings import DEFAULT_MODEL, Settings
from tests.trtfake import FakeDevice, fake_plan, install

CONV_LAYER = {
    "Name": "conv1_1",
    "LayerType": "CaskConvolution",
    "Inputs": [],
    "Outputs": [{"Name": "conv1_1_out", "Dimensions": [1, 64, 226, 226], "Format/Datatype": "Float"}],
}
H100 = rt.Environment("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeDevice:
    """TensorRT and cuda-python replaced by the fakes; a 'build' writes a plan of the chosen profile."""
    device = install(monkeypatch).device
    monkeypatch.setattr(rt, "environment", lambda device=0: H100)

    def build(onnx_path: Path, options: trt.BuildOptions) -> trt.BuiltEngine:
        return trt.BuiltEngine(fake_plan(options.profile), json.dumps({"Layers": [CONV_LAYER]}), 1.0, False)

    monkeypatch.setattr(trt, "build_engine", build)
    return device


def test_default_engine_serves_every_warm_up_shape(fake_gpu: FakeDevice, tmp_path: Path) -> None:
    plan = tmp_path / "fcn8s-demo.plan"
    assert build_engine.main(["--onnx", str(DEFAULT_MODEL), "--out", str(plan)]) == 0
    profile = read_sidecar(plan).profile
    settings = Settings(model=plan, backend="tensorrt")  # every other setting at its default
    backend = load_backend(settings, Environment(gpu=True, tensorrt=True, ort_cuda=False))
    assert backend.name == "tensorrt"
    with TestClient(create_app(settings, backend_loader=lambda _: backend)) as client:
        deadline = time.monotonic() + 120
        while (ready := client.get("/health/ready")).status_code != 200 and time.monotonic() < deadline:
            assert "warm-up failed" not in ready.json()["detail"], ready.json()
            time.sleep(0.05)
        assert ready.status_code == 200, ready.json()
    assert profile.min_side == 26 and profile.max_batch == settings.max_batch_size


def test_the_fake_refuses_shapes_outside_the_profile(fake_gpu: FakeDevice, tmp_path: Path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(fake_plan(Profile(1, 2, 4, 32, 64, 128)))
    context = rt.trt.Runtime(None).deserialize_cuda_engine(plan.read_bytes()).create_execution_context()
    assert context.set_input_shape("image", (1, 32, 32, 3))
    assert not context.set_input_shape("image", (1, 26, 26, 3))  # what the real context returns
    assert not context.set_input_shape("image", (5, 64, 64, 3))
    assert not context.set_input_shape("labels", (1, 32, 32))
    assert not context.set_input_shape("image", (32, 32, 3))
    assert not context.set_tensor_address("nope", 1)
    assert not context.execute_async_v3(0)  # addresses unset
