"""``python -m server``: flags mirror the settings fields (``--max-batch-size`` == ``FCN_MAX_BATCH_SIZE``).

The model is loaded before the port opens, so a bad model file ends the process with one clear line and
exit code 2. SIGTERM/SIGINT drain: readiness turns 503 at once, new requests get 503, in-flight requests
finish (at most ``drain_timeout_s``), then the process exits 0. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError

from server.app import create_app
from server.backends.base import Backend, BackendError
from server.backends.select import BackendLoader, load_backend
from server.lifecycle import Service, repository_of
from server.logs import configure_logging
from server.protocol import http_protocol
from server.repository import RepositoryError
from server.settings import Settings

log = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    """One ``--flag`` per settings field; unset flags fall back to FCN_* variables, then defaults."""
    parser = argparse.ArgumentParser(prog="python -m server", description="FCN segmentation inference server")
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"FCN_{name.upper()}"
        default = info.get_default(call_default_factory=True)
        shown = default if name != "api_key" else None
        parser.add_argument(flag, dest=name, default=None, metavar=env, help=f"{info.description} [{shown}]")
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from flags (highest priority), FCN_* environment variables, then defaults."""
    args = build_parser().parse_args(argv)
    given = {name: value for name, value in vars(args).items() if value is not None}
    return Settings(**given)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains the service before shutting down."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self.service.fatal:
            self.force_exit = self.should_exit  # a second signal after shutdown began: stop now
            self.should_exit = True
            return
        log.info(
            "signal %s: draining (readiness 503, finishing in-flight requests)", signal.Signals(sig).name
        )
        self.service.draining = True
        self._drain_task = asyncio.get_event_loop().create_task(self._drain())

    async def _drain(self) -> None:
        timeout = self.service.settings.drain_timeout_s
        finished = await self.service.drain(timeout)
        if not finished:
            log.warning(
                "drain timeout of %s s passed with %d requests in flight", timeout, self.service.inflight
            )
            await self.service.abort()
        self.should_exit = True


def preload(settings: Settings, backend_loader: BackendLoader) -> BackendLoader:
    """Load every start-up model now (a bad file ends the process before the port opens); the returned
    loader hands these backends out once, then loads as ``backend_loader`` does."""
    loaded: dict[Path, Backend] = {}
    for target in repository_of(settings).latest():
        loaded[target.path] = backend_loader(settings.model_copy(update={"model": target.path}))

    def loader(wanted: Settings) -> Backend:
        return loaded.pop(wanted.model, None) or backend_loader(wanted)

    return loader


def serve(settings: Settings, backend_loader: BackendLoader = load_backend) -> int:
    """Load the models, serve until a signal, drain; returns the process exit code."""
    configure_logging(settings.log_level, settings.log_format)
    log.info("settings", extra={"settings": settings.public_dict()})
    try:
        loader = preload(settings, backend_loader)
    except (BackendError, RepositoryError) as exc:
        log.error("cannot start: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, backend_loader=loader)
    service: Service = app.state.service
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        loop="asyncio",  # server/protocol.py is written against asyncio transports (uvloop may be present)
        http=http_protocol(settings, service.metrics),  # idle, send and connection limits; JSON errors
        server_header=False,
    )
    server = DrainingServer(config, service)

    def stop_after_fatal() -> None:
        server.should_exit = True

    service.on_fatal = stop_after_fatal
    server.run()
    if service.fatal:
        print(f"error: {service.fatal}", file=sys.stderr)
        return 1
    if not server.started:
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m server``."""
    try:
        settings = parse_settings(argv)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
