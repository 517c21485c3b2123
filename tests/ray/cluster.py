"""A real Ray cluster on 127.0.0.1 for the tests, and Ray Serve deployed on it with the ``serve`` CLI.

Each node is a separate ``ray start --block`` process in its own process group, with its own loopback
address (127.0.0.2 for the head, .3, .4 for workers: Ray swaps 127.0.0.1 itself for the machine's network
address, so the first loopback address is the one it cannot use), free ports and its own short temporary
folder (Unix socket paths must stay under 108 bytes). Stopping a node signals that
process group and then kills, by PID, whatever of its descendants is left. Nothing else is touched: never
``ray stop``, which kills every Ray process of the machine.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.serverproc import REPO_ROOT, free_port

BIN = Path(sys.executable).parent
SERVE_CONFIG = REPO_ROOT / "deploy" / "ray" / "serve.yaml"
NODE_START_TIMEOUT_S = 120.0
NODE_RESOURCE = "fcn_node_"
"""Each node carries one unit of the custom resource ``fcn_node_<name>``: how tests tell nodes apart."""

CLUSTER_ENV = {
    "PYTHONPATH": str(REPO_ROOT),
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",  # loopback only; the token file in $HOME is left alone
    "OMP_NUM_THREADS": "1",
    # Faster signals than production defaults, so the tests see scaling and node loss within seconds.
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def wait_for(what: str, check: Callable[[], Any], timeout: float, poll: float = 0.25) -> Any:
    """Poll ``check`` until it returns a truthy value (returned); AssertionError naming ``what`` after
    ``timeout`` seconds. Exceptions of ``check`` count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def node_ip(index: int) -> str:
    """The loopback address of the cluster's ``index``-th node (the head is 0)."""
    return f"127.0.0.{2 + index}"


def descendants(root: int) -> set[int]:
    """PIDs of every live process below ``root`` or in its process group (from /proc)."""
    parents: dict[int, int] = {}
    groups: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid], groups[pid] = int(fields[1]), int(fields[2])
    found = {pid for pid, group in groups.items() if group == root}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    found.discard(root)
    return found


@dataclass
class Node:
    """One ``ray start --block`` process (the node's supervisor) and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    temp_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> list[int]:
        """SIGKILL the node's supervisor and every process below it, at once (a machine lost); the PIDs."""
        pids = sorted(descendants(self.proc.pid) | {self.proc.pid})
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        return pids

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the node (Ray stops its own processes), then SIGKILL what is left of it, by PID."""
        pids = descendants(self.proc.pid)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in pids | descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class LocalRayCluster:
    """A head node and worker nodes on 127.0.0.1 (tests add workers and kill nodes)."""

    logs: Path
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        return f"{node_ip(0)}:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> Node:
        temp_dir = Path(tempfile.mkdtemp(prefix="fcnray-"))
        log_path = self.logs / f"ray-{name}.log"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FCN_", "RAY_"))}, **CLUSTER_ENV}
        cmd = [
            str(BIN / "ray"), "start", "--block", f"--node-ip-address={node_ip(len(self.nodes))}",
            f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats",
            f"--resources={json.dumps({NODE_RESOURCE + name: 1})}", *args,
        ]  # fmt: skip
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        node = Node(name, proc, log_path, temp_dir)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int) -> Node:
        """The head: GCS, dashboard (``serve deploy`` talks to its REST API), Serve's controller."""
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        head = self._start(
            "head",
            [
                "--head", f"--port={self.gcs_port}", f"--num-cpus={num_cpus}", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
            ],
        )  # fmt: skip
        self.wait_nodes(1)
        return head

    def add_worker(self, num_cpus: int) -> Node:
        """A worker node joining the head; returns once the cluster counts it alive."""
        alive = len(self.alive_nodes())
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}"]
        node = self._start(f"worker{len(self.nodes)}", args)
        self.wait_nodes(alive + 1)
        return node

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The nodes the cluster's state API reports ALIVE."""
        response = httpx.get(f"{self.dashboard}/api/v0/nodes", params={"limit": 100}, timeout=10)
        response.raise_for_status()
        return [n for n in response.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def node_ids(self) -> dict[str, str]:
        """Ray's node id of each alive node, by the name this cluster gave it (head, worker1, ...)."""
        ids = {}
        for node in self.alive_nodes():
            for resource in node["resources_total"]:
                if resource.startswith(NODE_RESOURCE):
                    ids[resource.removeprefix(NODE_RESOURCE)] = node["node_id"]
        return ids

    def wait_nodes(self, count: int, timeout: float = NODE_START_TIMEOUT_S) -> None:
        def ready() -> bool:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited:\n{node.log()[-3000:]}")
            return len(self.alive_nodes()) == count

        try:
            wait_for(f"{count} alive Ray nodes", ready, timeout, poll=0.5)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def serve(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The ``serve`` CLI against this cluster's dashboard; fails the test if it fails."""
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FCN_", "RAY_"))}, **CLUSTER_ENV}
        result = subprocess.run(
            [str(BIN / "serve"), *args, "--address", self.dashboard],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"serve {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result

    def applications(self) -> dict[str, Any]:
        """Ray Serve's status API: applications, their deployments and replicas (state, PID, node)."""
        response = httpx.get(f"{self.dashboard}/api/serve/applications/", timeout=10)
        response.raise_for_status()
        return response.json()["applications"]  # type: ignore[no-any-return]

    def replicas(self, app: str, deployment: str = "fcn8s", state: str = "RUNNING") -> list[dict[str, Any]]:
        """The deployment's replicas in ``state`` (``replica_id``, ``pid``, ``node_id``, ...)."""
        apps = self.applications()
        if app not in apps:
            return []
        found = apps[app]["deployments"].get(deployment, {}).get("replicas", [])
        return [r for r in found if r["state"] == state]

    def wait_app_running(self, app: str, timeout: float = 180) -> None:
        def running() -> bool:
            status = self.applications().get(app, {}).get("status")
            if status == "DEPLOY_FAILED":
                raise AssertionError(json.dumps(self.applications()[app], indent=1)[-3000:])
            return status == "RUNNING"

        try:
            wait_for(f"application {app} RUNNING", running, timeout, poll=0.5)
        except AssertionError:
            raise AssertionError(f"{app} not running; head log:\n{self.logs_tail()}") from None

    def logs_tail(self, chars: int = 4000) -> str:
        """The end of the Serve controller's log (replica start-up errors land there)."""
        head = self.nodes[0].temp_dir / "session_latest" / "logs" / "serve"
        texts = [p.read_text(errors="replace")[-chars:] for p in sorted(head.glob("controller_*.log"))]
        return "\n".join(texts) or "(no controller log)"

    def stop(self) -> None:
        """Workers first, then the head; every process by PID; the temporary folders removed."""
        for node in reversed(self.nodes):
            node.stop()
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(logs: Path, head_cpus: int, worker_cpus: list[int]) -> Iterator[LocalRayCluster]:
    """A running cluster for the ``with`` block; every process it started is gone afterwards."""
    cluster = LocalRayCluster(logs)
    try:
        cluster.start_head(head_cpus)
        for cpus in worker_cpus:
            cluster.add_worker(cpus)
        yield cluster
    finally:
        cluster.stop()


def serve_config(http_port: int, apps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The shipped ``deploy/ray/serve.yaml`` on ``http_port`` with the proxy on the head only (every node
    of this machine would bind the same port), and its ``fcn8s`` application's args updated per ``apps``
    (a name other than fcn8s adds a copy of it on the route ``/<name>``)."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"] = {**config["http_options"], "host": "127.0.0.1", "port": http_port}
    config["proxy_location"] = "HeadOnly"
    (template,) = config["applications"]
    config["applications"] = []
    for name, given in apps.items():
        args = dict(given)
        app = copy.deepcopy(template)
        app["name"] = name
        app["route_prefix"] = "/" if name == template["name"] else f"/{name}"
        settings = {**app["args"].get("settings", {}), **args.pop("settings", {})}
        app["args"] = {**app["args"], **args, "settings": settings}
        config["applications"].append(app)
    return config
