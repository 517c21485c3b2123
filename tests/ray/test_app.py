"""The Ray Serve application's own logic, without a Ray cluster: options, replica settings, Ray Serve's
deployment options, the readiness gate on the app's lifespan, the health check, the request-id header."""

from __future__ import annotations

import asyncio
import io
import os
import time

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from deploy.ray.app import (
    RayOptions,
    ReplicaApp,
    build,
    deployment_options,
    replica_settings,
    resolve,
)
from server.backends.base import BackendError
from server.settings import Settings
from tests.ray.cluster import SERVE_CONFIG
from tests.server.conftest import png_bytes, random_image
from tests.server.server_fakes import FakeBackend, fake_labels

FAKE = {"model": "fake.onnx", "warmup": False, "max_side": 128, "bucket": 32}


@pytest.fixture(autouse=True)
def no_fcn_env(monkeypatch):
    """Only what a test sets: no FCN_* variable of the caller's environment."""
    for name in [n for n in os.environ if n.startswith("FCN_")]:
        monkeypatch.delenv(name)


def test_options_from_arguments_over_environment(monkeypatch):
    monkeypatch.setenv("FCN_RAY_MAX_REPLICAS", "6")
    monkeypatch.setenv("FCN_RAY_MIN_REPLICAS", "2")
    options = RayOptions(**{"max_replicas": "3"})  # `serve run ... max_replicas=3` passes strings
    assert (options.min_replicas, options.max_replicas) == (2, 3)
    with pytest.raises(ValueError, match="look_back_period_s"):
        RayOptions(look_back_period_s=5)
    with pytest.raises(ValueError, match="extra"):
        RayOptions(max_replica=3)


def test_replicas_get_one_instance_with_their_reserved_cpus_unless_set(monkeypatch):
    settings = replica_settings(RayOptions(num_cpus=2.5, settings={"max_side": 256}))
    assert (settings.instances, settings.threads_per_instance, settings.max_side) == (1, 2, 256)
    assert replica_settings(RayOptions(num_cpus=0.5)).threads_per_instance == 1
    monkeypatch.setenv("FCN_INSTANCES", "2")
    explicit = replica_settings(RayOptions(num_cpus=4, settings={"threads_per_instance": 3}))
    assert (explicit.instances, explicit.threads_per_instance) == (2, 3)


def test_deployment_options_are_valid_ray_serve_options():
    options = RayOptions(min_replicas=2, max_replicas=5, target_ongoing_requests=3, num_cpus=0.5)
    settings = Settings(drain_timeout_s=12)
    opts = deployment_options(options, settings)
    scaling = AutoscalingConfig(**opts["autoscaling_config"])
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (2, 5, 3)
    assert opts["graceful_shutdown_timeout_s"] == 12  # the server's own drain budget
    assert opts["ray_actor_options"]["num_cpus"] == 0.5
    app = build({"min_replicas": 2, "max_replicas": 5})  # Ray Serve accepts them (raises otherwise)
    assert app is not None
    with pytest.raises(ValueError):
        build({"min_replicas": 3, "max_replicas": 2})


def test_the_shipped_config_passes_ray_serve_and_our_options():
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    ServeDeploySchema.model_validate(config)
    for app in config["applications"]:
        assert app["import_path"] == "deploy.ray.app:build"
        options = RayOptions(**app["args"])
        replica_settings(options)  # the settings validate too


def test_resolve_names_a_loader():
    assert resolve("tests.ray.fakes:slow_loader").__name__ == "slow_loader"
    with pytest.raises(ValueError, match="module:function"):
        resolve("tests.ray.fakes")


def replica(backend_loader) -> ReplicaApp:
    """A replica's object as Ray Serve builds it (the class under ``serve.ingress``'s wrapper)."""
    target = ReplicaApp(Settings(**FAKE), "tests.ray.fakes:slow_loader")
    target.loader = backend_loader
    return target


def test_start_up_ends_only_when_the_model_is_ready_and_the_app_answers_like_the_server():
    backend = FakeBackend(warmup_s=0.5)
    target = replica(lambda _: backend)
    app = target.__serve_build_asgi_app__()
    started = time.monotonic()
    with TestClient(app) as client:  # runs the lifespan start-up, as Ray Serve does
        assert time.monotonic() - started >= 0.4
        assert target.service.ready
        assert client.get("/health/ready").json() == {"status": "ready"}
        image = random_image(40, 56)
        headers = {"x-request-id": "r1", "content-type": "image/png"}
        response = client.post("/segment?format=png", content=png_bytes(image), headers=headers)
        assert response.status_code == 200
        labels = np.asarray(Image.open(io.BytesIO(response.content)))
        assert (labels == fake_labels(image[None])[0]).all()
        assert "x-request-id" not in response.headers  # Ray Serve's proxy adds the one header
        bad = client.post("/segment", content=b"nope", headers={"content-type": "image/png"})
        assert bad.status_code == 400 and "cannot decode" in bad.json()["detail"]
        target.check_health()  # healthy


def test_a_failed_load_fails_the_replica_start_with_the_reason():
    def broken(_: Settings):
        raise BackendError("no such model file: fake.onnx")

    app = replica(broken).__serve_build_asgi_app__()
    with pytest.raises(RuntimeError, match="no such model file"), TestClient(app):
        pass


def test_health_check_fails_on_a_stalled_backend_not_while_draining():
    target = replica(lambda _: FakeBackend())
    app = target.__serve_build_asgi_app__()
    with TestClient(app):
        service = target.service
        service.settings = Settings(**FAKE, stall_timeout_s=0.01)
        registry = service.registry
        registry.busy_since = lambda: time.monotonic() - 1.0  # a batch running for a second
        with pytest.raises(RuntimeError, match="stalled"):
            target.check_health()
        service.draining = True
        target.check_health()  # Ray Serve is stopping it anyway
        service.draining = False
        service.fatal = "warm-up failed: boom"
        with pytest.raises(RuntimeError, match="boom"):
            target.check_health()
        service.fatal = None


def test_until_ready_raises_on_a_fatal_service():
    from deploy.ray.app import until_ready
    from server.lifecycle import Service
    from server.metrics import Metrics
    from server.upload import BodyBudget

    service = Service(
        settings=Settings(**FAKE), metrics=Metrics(), bodies=BodyBudget(1 << 20), fatal="warm-up failed: x"
    )
    with pytest.raises(RuntimeError, match="warm-up failed"):
        asyncio.run(until_ready(service))
