"""The Open Inference Protocol and the model repository, driven by the real tritonclient against a server
process serving a repository: two versions of the demo model (the second predicts more 'person') and its
FP16 graph as a second model."""

from __future__ import annotations

import io
import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from onnx import numpy_helper
from PIL import Image
from tritonclient.utils import InferenceServerException

from server.app import create_app
from server.settings import Settings
from tests.polling import wait_until
from tests.server.conftest import DEMO_ONNX, png_bytes, random_image, running
from tests.server.server_fakes import FakeBackend
from tests.serverproc import REPO_ROOT, ServerProcess

PERSON = 15


def person_biased(source: Path, out: Path, bias: float = 5.0) -> None:
    """The demo graph with the 'person' score raised: same classes, other labels (a second version)."""
    model = onnx.load(str(source))
    for init in model.graph.initializer:
        if init.name.endswith("score_fr.bias"):
            values = numpy_helper.to_array(init).copy()
            values[PERSON] += bias
            init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(out))


def make_repository(root: Path) -> Path:
    """demo/1 (the shipped model), demo/2 (person-biased) and demo-fp16/1."""
    for name, version in (("demo", 1), ("demo", 2), ("demo-fp16", 1)):
        (root / name / str(version)).mkdir(parents=True)
    shutil.copy(DEMO_ONNX, root / "demo" / "1" / "model.onnx")
    person_biased(DEMO_ONNX, root / "demo" / "2" / "model.onnx")
    shutil.copy(
        REPO_ROOT / "models" / "demo" / "fcn8s-demo-fp16.onnx", root / "demo-fp16" / "1" / "model.onnx"
    )
    return root


REPO_SETTINGS = {
    "backend": "onnxruntime",
    "max_side": 128,
    "bucket": 32,
    "max_batch_size": 4,
    "max_delay_ms": 5,
}


@pytest.fixture(scope="module")
def repo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = make_repository(tmp_path_factory.mktemp("repository"))
    settings = {**REPO_SETTINGS, "model_repository": root, "default_model": "demo"}
    with running(tmp_path_factory.mktemp("v2-server"), settings) as server:
        yield server


@pytest.fixture
def client(repo_server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(repo_server.url.removeprefix("http://"))
    yield client
    client.close()


IMAGE = random_image(96, 120, seed=4)


def segment_labels(
    server: ServerProcess, image: np.ndarray, **params: object
) -> tuple[np.ndarray, httpx.Response]:
    response = httpx.post(
        server.url + "/segment",
        params=params,
        content=png_bytes(image),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content))), response


def image_input(image: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image, binary_data=binary)
    return tensor


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert set(server["extensions"]) >= {"binary_tensor_data", "model_repository"}
    meta = client.get_model_metadata("demo")
    assert meta["versions"] == ["2"] and meta["platform"] == "onnxruntime_onnx"
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "image": ("UINT8", [-1, -1, -1, 3]),
        "image_bytes": ("BYTES", [-1]),
    }
    assert meta["outputs"] == [{"name": "labels", "datatype": "UINT8", "shape": [-1, -1, -1]}]
    assert client.is_model_ready("demo") and client.is_model_ready("demo", "2")
    assert not client.is_model_ready("demo", "1") and not client.is_model_ready("absent")
    assert client.get_model_metadata("demo-fp16", "1")["versions"] == ["1"]


def test_binary_json_and_bytes_inputs_give_the_labels_of_segment(
    client: triton.InferenceServerClient, repo_server: ServerProcess
) -> None:
    expected, response = segment_labels(repo_server, IMAGE)
    assert (response.headers["x-model"], response.headers["x-model-version"]) == ("demo", "2")
    binary = client.infer("demo", [image_input(IMAGE[None])], outputs=[triton.InferRequestedOutput("labels")])
    json_in = client.infer(
        "demo",
        [image_input(IMAGE[None], binary=False)],
        outputs=[triton.InferRequestedOutput("labels", False)],
    )
    encoded = triton.InferInput("image_bytes", [2], "BYTES")
    encoded.set_data_from_numpy(np.array([png_bytes(IMAGE)] * 2, dtype=np.object_))
    from_bytes = client.infer("demo", [encoded])
    assert binary.get_response()["model_version"] == "2"
    for result, rows in ((binary, 1), (json_in, 1), (from_bytes, 2)):
        labels = result.as_numpy("labels")
        assert labels.shape == (rows, *IMAGE.shape[:2]) and labels.dtype == np.uint8
        for row in labels:
            np.testing.assert_array_equal(row, expected)
    assert "parameters" not in json_in.get_output("labels")  # JSON data, not binary


def test_versions_and_models_are_selected(
    client: triton.InferenceServerClient, repo_server: ServerProcess
) -> None:
    v2 = client.infer("demo", [image_input(IMAGE[None])], model_version="2").as_numpy("labels")[0]
    fp16, response = segment_labels(repo_server, IMAGE, model="demo-fp16")
    assert response.headers["x-model"] == "demo-fp16"
    assert (v2 == PERSON).sum() > (
        fp16 == PERSON
    ).sum()  # demo 2 is person-biased; demo-fp16 is demo 1's graph
    with pytest.raises(InferenceServerException, match="version 1 is not loaded") as info:
        client.infer("demo", [image_input(IMAGE[None])], model_version="1")
    assert info.value.status() == "404"
    assert httpx.post(repo_server.url + "/segment?model=absent", content=png_bytes(IMAGE),
                      headers={"content-type": "image/png"}).status_code == 404  # fmt: skip


def test_repository_load_unload_and_index(
    client: triton.InferenceServerClient, repo_server: ServerProcess
) -> None:
    states = {(e["name"], e["version"]): e["state"] for e in client.get_model_repository_index()}
    assert states == {("demo", "1"): "UNAVAILABLE", ("demo", "2"): "READY", ("demo-fp16", "1"): "READY"}
    client.unload_model("demo-fp16")
    assert not client.is_model_ready("demo-fp16")
    with pytest.raises(InferenceServerException) as gone:
        client.infer("demo-fp16", [image_input(IMAGE[None])])
    assert gone.value.status() == "404"
    client.load_model("demo-fp16")
    assert client.is_model_ready("demo-fp16")
    loaded = httpx.post(
        repo_server.url + "/v2/repository/models/demo/load", json={"parameters": {"version": 1}}
    )
    assert loaded.status_code == 200 and loaded.json()["version"] == "1"
    v1, response = segment_labels(repo_server, IMAGE)
    assert response.headers["x-model-version"] == "1"
    client.load_model("demo")  # back to the latest on disk
    v2, response = segment_labels(repo_server, IMAGE)
    assert response.headers["x-model-version"] == "2" and (v2 == PERSON).sum() > (v1 == PERSON).sum()


def raw_infer(
    server: ServerProcess, header: dict, binary: bytes = b"", length: int | None = None
) -> httpx.Response:
    text = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(text) if length is None else length)}
    return httpx.post(server.url + "/v2/models/demo/infer", content=text + binary, headers=headers)


def request(name: str, datatype: str, shape: list[int], size: int | None = None, **extra: object) -> dict:
    """A one-input infer request header (binary when ``size`` is given)."""
    tensor: dict[str, object] = {"name": name, "datatype": datatype, "shape": shape, **extra}
    if size is not None:
        tensor["parameters"] = {"binary_data_size": size}
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("header", "binary", "length", "status", "phrase"),
    [
        (request("image", "UINT8", [1, 4, 4, 3], 40), b"\0" * 40, None, 400, "needs 48"),
        (request("image", "UINT8", [1, 4, 4, 3], 48), b"\0" * 48, 10_000, 400, "whole body"),
        (request("image", "FP32", [1, 4, 4, 3], data=[0] * 48), b"", None, 400, "must be UINT8"),
        (request("pixels", "UINT8", [1, 4, 4, 3], data=[0] * 48), b"", None, 400, "unknown input"),
        (request("image", "UINT8", [9, 4, 4, 3], 432), b"\0" * 432, None, 413, "limit is 4"),
        (request("image_bytes", "BYTES", [1], 8), struct.pack("<I", 4) + b"abcd", None, 400, "decode"),
        (request("image", "UINT8", [1, 2, 2, 3], data=[300] * 12), b"", None, 400, "0..255"),
    ],
)
def test_bad_tensors_get_400_naming_the_problem(
    repo_server: ServerProcess, header: dict, binary: bytes, length: int | None, status: int, phrase: str
) -> None:
    response = raw_infer(repo_server, header, binary, length)
    assert response.status_code == status and phrase in response.json()["error"], response.text


def test_loading_a_broken_or_foreign_version_leaves_the_serving_one(tmp_path: Path) -> None:
    root = make_repository(tmp_path / "repo")
    app = create_app(Settings(model_repository=root, **REPO_SETTINGS, instances=1, warmup=False))
    with TestClient(app) as client:
        _wait_ready(client)
        (root / "demo" / "3").mkdir()
        (root / "demo" / "3" / "model.onnx").write_bytes(DEMO_ONNX.read_bytes()[:5000])  # truncated
        refused = client.post("/v2/repository/models/demo/load", json={"parameters": {"version": 3}})
        assert refused.status_code == 400 and "cannot load demo version 3" in refused.json()["error"]
        outside = client.post("/v2/repository/models/%2E%2E/load")  # the route sees the name ".."
        assert outside.status_code == 400 and "invalid model name" in outside.json()["error"], outside.text
        traversal = client.post("/v2/repository/models/..%2F..%2Fetc/load")  # no route: the path has slashes
        assert traversal.status_code == 404 and traversal.json()
        assert client.get("/v1/model", params={"model": "demo"}).json()["version"] == 2
        index = {(e["name"], e["version"]): e for e in client.post("/v2/repository/index").json()}
        assert (
            index[("demo", "3")]["state"] == "UNAVAILABLE" and "cannot load" in index[("demo", "3")]["reason"]
        )


def test_a_version_with_other_classes_is_refused(tmp_path: Path) -> None:
    from common.metadata import ModelMetadata

    two_classes = ModelMetadata(name="x", width=1 / 32, classes=("a", "b"), palette=((0, 0, 0), (1, 1, 1)))
    loads = iter([FakeBackend(), FakeBackend(metadata=two_classes)])  # start-up (version 2), then version 1
    root = tmp_path / "repo"
    for version in (1, 2):
        (root / "m" / str(version)).mkdir(parents=True)
        (root / "m" / str(version) / "model.onnx").write_bytes(b"read by the fake loader only")
    app = create_app(
        Settings(model_repository=root, max_side=64, bucket=32), backend_loader=lambda _: next(loads)
    )
    with TestClient(app) as client:
        _wait_ready(client)
        refused = client.post("/v2/repository/models/m/load", json={"parameters": {"version": 1}})
        assert refused.status_code == 400 and "has 2 classes" in refused.json()["error"], refused.text
        info = client.get("/v1/model").json()
        assert (info["model"], info["version"], len(info["classes"])) == ("m", 2, 21)


def test_repository_api_needs_the_key(tmp_path: Path) -> None:
    root = make_repository(tmp_path / "repo")
    app = create_app(
        Settings(model_repository=root, **REPO_SETTINGS, instances=1, warmup=False, api_key="k3y")
    )
    with TestClient(app) as client:
        _wait_ready(client)
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/demo/unload",
            "/v2/repository/models/demo/load",
        ):
            response = client.post(path)
            assert response.status_code == 401 and "API key" in response.json()["error"]
        assert client.get("/v2/models/demo").status_code == 401
        assert client.get("/v2/health/ready").status_code == 200  # health stays open
        assert client.post("/v2/repository/index", headers={"X-API-Key": "k3y"}).status_code == 200


def _wait_ready(client: TestClient) -> None:
    assert wait_until(lambda: client.get("/health/ready").status_code == 200, 60), client.get(
        "/health/ready"
    ).json()
