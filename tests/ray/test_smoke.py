"""One-node smoke test of the Ray Serve application (part of ``make test``): a real ``ray start --head``,
the shipped ``deploy/ray/serve.yaml`` deployed with ``serve deploy``; the same labels and errors as
``python -m server``; deleting an application drains its in-flight requests."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.ray.cluster import LocalRayCluster, local_cluster, serve_config, wait_for
from tests.ray.contract import PNG, SETTINGS, assert_same_errors, assert_same_labels
from tests.server.conftest import png_bytes, random_image
from tests.server.server_fakes import SLOW, fake_labels
from tests.serverproc import ServerProcess, free_port, running_server

pytestmark = pytest.mark.slow

APPS = {
    "fcn8s": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.5, "settings": SETTINGS},
    "slow": {
        "min_replicas": 1,
        "max_replicas": 1,
        "num_cpus": 0.25,
        "loader": "tests.ray.fakes:slow_loader",
        "settings": {"model": "fake.onnx", "max_batch_size": 1, "drain_timeout_s": 20},
    },
}


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRayCluster, str, Path]]:
    """A one-node cluster serving both applications; the HTTP base URL; the config deploying fcn8s alone."""
    tmp = tmp_path_factory.mktemp("ray-smoke")
    port = free_port()
    config, without_slow = tmp / "serve.yaml", tmp / "serve-fcn8s.yaml"
    config.write_text(yaml.safe_dump(serve_config(port, APPS)))
    without_slow.write_text(yaml.safe_dump(serve_config(port, {"fcn8s": APPS["fcn8s"]})))
    with local_cluster(tmp, head_cpus=2, worker_cpus=[]) as cluster:
        cluster.serve("deploy", str(config))
        for app in APPS:
            cluster.wait_app_running(app)
        yield cluster, f"http://127.0.0.1:{port}", without_slow


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(SETTINGS, tmp_path_factory.mktemp("plain") / "server.log") as server:
        yield server


def test_same_labels_and_errors_as_the_plain_server(serving, plain):
    _, url, _ = serving
    assert httpx.get(f"{url}/health/ready", timeout=30).json() == {"status": "ready"}
    assert assert_same_labels(plain.url, url) == 6
    statuses = assert_same_errors(plain.url, url)
    print("4xx through Ray Serve, equal to the plain server's:", statuses)


def inference_images(url: str) -> float:
    """The ``fcn_inference_images`` total of the (one) replica behind ``url``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^fcn_inference_images_total\{[^}]*\} (\S+)$", text, re.M))


def test_deleting_the_application_drains_in_flight_requests(serving):
    """Requests already running when a ``serve deploy`` without their application starts all finish."""
    cluster, url, without_slow = serving
    slow_url = f"{url}/slow"
    image = random_image(40, 40, seed=7)
    image[0, 0] = SLOW
    body = png_bytes(image)
    results: list[httpx.Response | Exception] = []

    def send() -> None:
        try:
            results.append(
                httpx.post(f"{slow_url}/segment?format=png", content=body, headers=PNG, timeout=60)
            )
        except httpx.HTTPError as exc:
            results.append(exc)

    senders = [threading.Thread(target=send) for _ in range(3)]
    for thread in senders:
        thread.start()
    wait_for("3 slow requests at the model", lambda: inference_images(slow_url) >= 3, timeout=30, poll=0.1)
    started = time.monotonic()
    cluster.serve("deploy", str(without_slow))
    wait_for("slow deleted", lambda: "slow" not in cluster.applications(), timeout=60)
    for thread in senders:
        thread.join(60)
    deleted_after = time.monotonic() - started
    assert len(results) == 3
    for response in results:
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200, response.text
    labels = np.asarray(Image.open(io.BytesIO(results[0].content)))
    assert (labels == fake_labels(image[None])[0]).all()
    refused = httpx.post(f"{slow_url}/segment", content=body, headers=PNG, timeout=30)
    assert refused.status_code == 404
    print(f"3 in-flight requests answered 200 while the application was deleted ({deleted_after:.1f} s)")
