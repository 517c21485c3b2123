"""The service as a Ray Serve application: every replica runs the whole app of ``python -m server``.

Each replica builds :func:`server.app.create_app` itself (same routes, errors and responses), loads the
models of ``FCN_MODEL`` / ``FCN_MODEL_REPOSITORY`` with its own instances, threads and batcher, and only
starts taking traffic once its models are loaded and warmed up (the app's lifespan runs inside the
replica, and Ray Serve's start-up waits for readiness). Ray Serve routes requests to replicas, scales
their number on ongoing requests per replica, replaces replicas that die or turn unhealthy (a stalled
backend or a failed warm-up, as ``/health/ready`` would say) and drains a replica before stopping it.

    serve run deploy.ray.app:build max_replicas=4        # any Ray cluster (RAY_ADDRESS) or a new local one
    serve deploy deploy/ray/serve.yaml --address URL     # a running cluster, from the config file
    python -m deploy.ray                                 # local, on FCN_HOST:FCN_PORT (make serve-ray)
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.app import create_app
from server.backends.select import BackendLoader
from server.lifecycle import Service
from server.settings import Settings

DEPLOYMENT = "fcn8s"
"""The deployment's name (Ray Serve's status API and the replica actors' class name carry it)."""


class RayOptions(BaseSettings):
    """How Ray Serve runs the replicas: ``FCN_RAY_<NAME>`` variables, or ``name=value`` builder arguments
    (``serve run deploy.ray.app:build max_replicas=4``, ``args:`` in a ``serve deploy`` config file)."""

    model_config = SettingsConfigDict(env_prefix="FCN_RAY_", extra="forbid", frozen=True)

    min_replicas: int = Field(1, ge=0, description="fewest replicas (0 = scale to zero when idle)")
    max_replicas: int = Field(2, ge=1, description="most replicas the autoscaler starts")
    initial_replicas: int | None = Field(None, ge=0, description="replicas at deploy time (default: min)")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="requests running or queued per replica the autoscaler aims at"
    )
    max_ongoing_requests: int = Field(
        8, ge=1, description="most requests a replica holds at once; more wait in Ray Serve's router"
    )
    upscale_delay_s: float = Field(5.0, ge=0, description="how long load stays above target before adding")
    downscale_delay_s: float = Field(30.0, ge=0, description="how long it stays below before removing")
    look_back_period_s: float = Field(
        15.0, gt=10, description="window the ongoing requests are averaged over (above Ray's 10 s interval)"
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per replica (also its default threads)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica (fractions share one)")
    health_check_period_s: float = Field(5.0, gt=0, description="how often Ray asks a replica its health")
    loader: str = Field(
        "server.backends.select:load_backend",
        description="module:function that loads a backend from Settings (the server's own by default)",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict, description="server settings for the replicas, over their FCN_* variables"
    )


def replica_settings(options: RayOptions) -> Settings:
    """The server settings every replica runs with: ``FCN_*`` variables, then ``options.settings``; unless
    set, one instance per replica with as many threads as the CPUs Ray reserved for it (``auto`` would
    measure against every core of the node, which the replica does not own)."""
    settings = Settings(**options.settings)
    given = settings.model_fields_set
    update: dict[str, Any] = {}
    if "instances" not in given:
        update["instances"] = 1
    if "threads_per_instance" not in given:
        update["threads_per_instance"] = max(1, int(options.num_cpus))
    return settings.model_copy(update=update)


def resolve(path: str) -> BackendLoader:
    """The function ``module:attribute`` names."""
    module, _, attribute = path.partition(":")
    if not module or not attribute:
        raise ValueError(f"loader must be module:function, got {path!r}")
    loader: BackendLoader = getattr(importlib.import_module(module), attribute)
    return loader


async def until_ready(service: Service, poll_s: float = 0.05) -> None:
    """Return once the models are loaded and warmed up; RuntimeError if their warm-up failed."""
    while not service.ready:
        if service.fatal:
            raise RuntimeError(service.fatal)
        await asyncio.sleep(poll_s)


def ready_gated(app: FastAPI, service: Service) -> None:
    """Make the app's lifespan start-up end only when the service is ready, so Ray Serve sends a replica
    no traffic while its models load and warm up (``python -m server`` answers 503 meanwhile instead)."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            await until_ready(service)
            yield state

    app.router.lifespan_context = lifespan


class ProxyOwnsRequestId:
    """Drops the app's ``X-Request-ID`` response header: Ray Serve's proxy adds the same id (it gives the
    request the client's id or a new one, which the app then echoes), and one header is what the plain
    server sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_without_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
            await send(message)

        await self.app(scope, receive, send_without_id if scope["type"] == "http" else send)


class ReplicaApp:
    """One replica: the service's FastAPI app, built and started inside the replica's process."""

    def __init__(self, settings: Settings, loader: str) -> None:
        self.settings = settings
        self.loader = resolve(loader)
        self.service: Service | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Ray Serve calls this once the replica is constructed, then runs the app's lifespan start-up."""
        app = create_app(self.settings, backend_loader=self.loader)
        self.service = app.state.service
        ready_gated(app, self.service)
        app.add_middleware(ProxyOwnsRequestId)
        return app

    def check_health(self) -> None:
        """Ray Serve's periodic health check: raising makes it replace the replica (a stalled backend or
        a failed load; draining is Ray Serve's own business)."""
        service = self.service
        if service is None or service.draining:
            return
        reason = service.not_ready_reason()
        if reason is not None:
            raise RuntimeError(reason)


Segmentation = serve.ingress()(ReplicaApp)
"""The deployment class: Ray Serve routes HTTP to the app ``__serve_build_asgi_app__`` returns."""


def deployment_options(options: RayOptions, settings: Settings) -> dict[str, Any]:
    """Ray Serve's options of the deployment (a ``serve deploy`` config file may override any of them)."""
    return {
        "name": DEPLOYMENT,
        "autoscaling_config": {
            "min_replicas": options.min_replicas,
            "initial_replicas": options.initial_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
            "upscale_delay_s": options.upscale_delay_s,
            "downscale_delay_s": options.downscale_delay_s,
            "look_back_period_s": options.look_back_period_s,
        },
        "max_ongoing_requests": options.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
        "health_check_period_s": options.health_check_period_s,
        # The server's drain budget: Ray Serve waits this long for a stopping replica's requests.
        "graceful_shutdown_timeout_s": settings.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
    }


def build(args: Mapping[str, Any] | None = None) -> Application:
    """The application builder ``serve run``/``serve deploy`` call with the ``name=value`` arguments."""
    options = RayOptions(**dict(args or {}))
    settings = replica_settings(options)
    deployment = serve.deployment(Segmentation).options(**deployment_options(options, settings))
    return deployment.bind(settings, options.loader)
