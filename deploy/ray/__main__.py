"""``python -m deploy.ray`` (``make serve-ray``): the service on Ray Serve on this machine, until a signal.

Starts a one-node Ray cluster (or joins ``--address``), serves :func:`deploy.ray.app.build` on
``FCN_HOST:FCN_PORT`` with the ``FCN_RAY_*`` options, and on SIGINT/SIGTERM deletes the application (Ray
Serve drains every replica's in-flight requests first) and stops Ray.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import ray
from ray import serve

from deploy.ray.app import DEPLOYMENT, RayOptions, build
from server.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def python_path() -> str:
    """This repository first on the replicas' PYTHONPATH, so they import ``server`` and ``deploy``."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.ray", description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="join this Ray cluster (host:port) instead of starting one")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray node [all]")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings, options = Settings(), RayOptions()
    started = time.monotonic()
    ray.init(
        address=args.address,
        num_cpus=None if args.address else args.num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": python_path()}},
    )
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build(), name=DEPLOYMENT, route_prefix="/")
    print(
        f"ready: http://{settings.host}:{settings.port} ({options.min_replicas}..{options.max_replicas} "
        f"replicas, {time.monotonic() - started:.0f} s); Ctrl-C drains and stops",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("draining: in-flight requests finish, then the replicas stop", flush=True)
    serve.delete(DEPLOYMENT)
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
