"""The Ray Serve application on a real multi-node Ray cluster on this machine (``-m cluster``, run by
``make test-cluster`` and ``.ci/run``): a head and a worker node as separate ``ray start`` processes, the
shipped ``deploy/ray/serve.yaml`` deployed with ``serve deploy``. In order: the contract against
``python -m server``; autoscaling up to the maximum under load and back down after it; a replica killed by
its PID under load; the worker node killed under load; the application removed under load (drained).
Each step prints its figures."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.ray.cluster import LocalRayCluster, local_cluster, serve_config, wait_for
from tests.ray.contract import IMAGES, SETTINGS, assert_same_errors, assert_same_labels
from tests.ray.load import Load, Outcome, figures
from tests.serverproc import free_port, running_server

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MAX_ONGOING = 4
APP = {
    "min_replicas": 2,
    "max_replicas": 3,
    "target_ongoing_requests": 1,
    "max_ongoing_requests": MAX_ONGOING,
    "upscale_delay_s": 1,
    "downscale_delay_s": 3,
    "look_back_period_s": 11,
    "num_cpus": 0.5,
    "health_check_period_s": 2,
    "settings": {**SETTINGS, "drain_timeout_s": 20},
}
"""Replicas of half a CPU: each worker (1 CPU) holds two; the head (0 CPUs, as in the RayService) none."""


class Served:
    """The cluster, the application's URL and the config that removes it."""

    def __init__(self, cluster: LocalRayCluster, url: str, empty_config: str) -> None:
        self.cluster, self.url, self.empty_config = cluster, url, empty_config

    def running(self) -> list[dict]:
        return self.cluster.replicas("fcn8s")

    def load(self, concurrency: int) -> Load:
        return Load(f"{self.url}/segment", IMAGES[0], concurrency, max_seconds=240).start()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("ray-cluster")
    port = free_port()
    config, empty = tmp / "serve.yaml", tmp / "serve-empty.yaml"
    config.write_text(yaml.safe_dump(serve_config(port, {"fcn8s": APP})))
    empty.write_text(yaml.safe_dump(serve_config(port, {})))
    started = time.monotonic()
    with local_cluster(tmp, head_cpus=0, worker_cpus=[1, 1]) as cluster:
        up = time.monotonic() - started
        cluster.serve("deploy", str(config))
        cluster.wait_app_running("fcn8s")
        served = Served(cluster, f"http://127.0.0.1:{port}", str(empty))
        wait_for("2 replicas", lambda: len(served.running()) == 2, timeout=120)
        total = time.monotonic() - started
        print(f"\ncluster of 3 nodes up in {up:.0f} s; application running after {total:.0f} s")
        yield served


def count_while(served: Served, predicate, what: str, timeout: float) -> tuple[float, list[int]]:
    """Seconds until ``predicate(running replicas)`` holds, and the replica counts seen meanwhile."""
    seen: list[int] = []
    start = time.monotonic()

    def check() -> bool:
        running = served.running()
        if not seen or seen[-1] != len(running):
            seen.append(len(running))
        return bool(predicate(running))

    wait_for(what, check, timeout=timeout, poll=0.5)
    return time.monotonic() - start, seen


def answered_after(outcomes: list[Outcome], moment: float) -> int:
    return sum(1 for o in outcomes if o.ok and o.sent > moment)


def test_contract_same_labels_and_errors_as_the_plain_server(served, tmp_path):
    with running_server(SETTINGS, tmp_path / "plain.log") as plain:
        compared = assert_same_labels(plain.url, served.url)
        statuses = assert_same_errors(plain.url, served.url)
    nodes = {r["node_id"][:8] for r in served.running()}
    print(f"{compared} responses byte-identical; 4xx equal: {statuses}; replicas on nodes {sorted(nodes)}")


def test_autoscaling_up_to_the_maximum_under_load_and_back_after(served):
    load = served.load(concurrency=8)
    try:
        up_s, up_counts = count_while(served, lambda r: len(r) == APP["max_replicas"], "scale up", 120)
    finally:
        outcomes = load.stop()
    down_s, down_counts = count_while(served, lambda r: len(r) == APP["min_replicas"], "scale down", 120)
    result = figures(outcomes)
    print(
        f"scaled {up_counts} in {up_s:.1f} s under c=8, then {down_counts} {down_s:.1f} s after the load "
        f"stopped; load: {result}"
    )
    assert result["failed"] == 0, result


def kill_and_recover(served: Served, kill, concurrency: int = 4) -> tuple[dict, float, float]:
    """Under load: ``kill()``, then wait for 2 running replicas again and for requests to succeed after
    that; the load figures, seconds to 2 running replicas, and to the first success sent after the kill."""
    before = {r["replica_id"] for r in served.running()}
    load = served.load(concurrency)
    try:
        wait_for("load flowing", lambda: answered_after(load.outcomes, 0) >= 10, timeout=60)
        killed_at = time.monotonic()
        kill()
        wait_for(
            "a replacement replica",
            lambda: len(r := served.running()) == 2 and {x["replica_id"] for x in r} != before,
            timeout=180,
            poll=0.25,
        )
        recovered_s = time.monotonic() - killed_at
        after = time.monotonic()
        wait_for("requests after recovery", lambda: answered_after(load.outcomes, after) >= 10, timeout=60)
    finally:
        outcomes = load.stop()
    first_ok = min(o.done for o in outcomes if o.ok and o.sent > killed_at)
    return figures(outcomes), recovered_s, first_ok - killed_at


def test_replica_killed_by_pid_under_load(served):
    victim = served.running()[0]
    result, recovered_s, first_ok_s = kill_and_recover(served, lambda: os.kill(victim["pid"], signal.SIGKILL))
    print(
        f"replica pid {victim['pid']} killed: {result}; replaced (2 running) in {recovered_s:.1f} s; "
        f"first success sent after the kill {first_ok_s:.2f} s after it"
    )
    assert result["failed"] <= MAX_ONGOING, result  # only what the killed replica held


def test_worker_node_killed_under_load(served):
    ids = served.cluster.node_ids()
    running = served.running()
    by_node = {name: [r for r in running if r["node_id"] == ids[name]] for name in ("worker1", "worker2")}
    name = max(by_node, key=lambda n: len(by_node[n]))
    survivor = ids["worker2" if name == "worker1" else "worker1"]
    node = next(n for n in served.cluster.nodes if n.name == name)
    killed: list[int] = []
    result, recovered_s, first_ok_s = kill_and_recover(served, lambda: killed.extend(node.kill()))
    assert all(r["node_id"] == survivor for r in served.running())
    print(
        f"{name} killed ({len(killed)} processes, {len(by_node[name])} of 2 replicas): {result}; 2 replicas "
        f"running on the other worker after {recovered_s:.1f} s; first success sent after the kill "
        f"{first_ok_s:.2f} s after it"
    )
    assert result["failed"] <= MAX_ONGOING * len(by_node[name]), result


def test_removing_the_application_drains_in_flight_requests(served):
    load = served.load(concurrency=4)
    try:
        wait_for("load flowing", lambda: answered_after(load.outcomes, 0) >= 10, timeout=60)
        removed_at = time.monotonic()
        served.cluster.serve("deploy", served.empty_config)
        wait_for("application removed", lambda: "fcn8s" not in served.cluster.applications(), timeout=120)
        gone_s = time.monotonic() - removed_at
    finally:
        outcomes = load.stop()
    before = [o for o in outcomes if o.sent < removed_at]
    print(f"removed in {gone_s:.1f} s under c=4; sent before: {figures(before)}; all: {figures(outcomes)}")
    assert all(o.ok for o in before), figures(before)
    assert httpx.post(f"{served.url}/segment", content=IMAGES[0], timeout=30).status_code == 404
