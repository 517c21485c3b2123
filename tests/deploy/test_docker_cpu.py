"""The CPU image and `docker compose --profile cpu up`, for real: a private dockerd, a local base image, a
build, the service under compose (host networking, 127.0.0.1 only), real /segment requests, then teardown.

Installs what it needs (Debian's docker.io, debootstrap) and stops only what it started. Cached between
runs: the base image and the build layers (in the private engine's data root). Measurements (image sizes,
seconds from `compose up` to ready) are printed; run with `-s` to see them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from common.classes import VOC_CLASSES
from tests.reliability.helpers import wait_until

from .helpers import COMPOSE_FILE, REPO_ROOT, TEST_OVERRIDE, clean_env, run, tool

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

SCRIPTS = REPO_ROOT / "scripts"
BASE_IMAGE = "local/debian-py:bookworm"
IMAGE = "fcn8s-serving:cpu-test"
MODEL_DIR = REPO_ROOT / "models"
DEMO_ONNX = MODEL_DIR / "demo" / "fcn8s-demo.onnx"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
READY_TIMEOUT_S = 300


def check(result: subprocess.CompletedProcess[str], what: str) -> str:
    """stdout of a finished command; fails the test with the output's tail when it did not exit 0."""
    tail = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{tail}"
    return result.stdout


def docker(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """stdout of a `docker` client command against the private engine (asserts success)."""
    return check(run(["docker", *args], env=env, timeout=timeout), "docker " + " ".join(args[:2]))


@pytest.fixture(scope="module")
def docker_env() -> Iterator[dict[str, str]]:
    """An environment whose DOCKER_HOST is a private engine, stopped at the end if this test started it."""
    if os.geteuid() != 0:
        pytest.skip("installing and starting dockerd needs root")
    if shutil.which("dockerd") is None and shutil.which("apt-get") is None:
        pytest.skip("no dockerd and no apt-get to install Debian's docker.io")
    pidfile = Path(os.environ.get("FCN_DOCKER_RUN", "/run/fcn8s-docker")) / "docker.pid"
    already = pidfile.is_file() and Path(f"/proc/{pidfile.read_text().strip()}").exists()
    host = check(run([str(SCRIPTS / "start-dockerd.sh")], timeout=900), "start-dockerd.sh").strip()
    try:
        yield clean_env(DOCKER_HOST=host, DOCKER_BUILDKIT="0")
    finally:
        if not already:
            check(run([str(SCRIPTS / "stop-dockerd.sh")], timeout=60), "stop-dockerd.sh")


def build_context(dest: Path) -> Path:
    """What .dockerignore lets in, plus the host's CA bundle in docker/certs/ (the repo stays untouched)."""
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    for name in (line[1:].rstrip("/") for line in lines if line.startswith("!")):
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.crt"))
    shutil.copy2(REPO_ROOT / ".dockerignore", dest / ".dockerignore")
    if HOST_CA.is_file():  # TLS-intercepting proxy: pip in the build must trust what the host trusts
        shutil.copy2(HOST_CA, dest / "docker" / "certs" / "host-ca.crt")
    return dest


@pytest.fixture(scope="module")
def cpu_image(docker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CPU image, built with the classic builder on a debootstrapped local base (no registry needed)."""
    check(run([str(SCRIPTS / "build-local-base.sh"), BASE_IMAGE], env=docker_env, timeout=900), "local base")
    context = build_context(tmp_path_factory.mktemp("context"))
    started = time.perf_counter()
    dockerfile = str(context / "docker" / "Dockerfile.cpu")
    build_arg = f"BASE_IMAGE={BASE_IMAGE}"
    docker(docker_env, "build", "--network", "host", "-f", dockerfile, "--build-arg", build_arg, "-t", IMAGE,
           str(context), timeout=1200)  # fmt: skip
    print(f"\n[deploy] CPU image built in {time.perf_counter() - started:.1f} s")
    sizes = docker(docker_env, "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}")
    print(
        "[deploy] image sizes:\n"
        + "\n".join(f"  {line}" for line in sizes.splitlines() if "<none>" not in line)
    )
    return IMAGE


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComposeProject:
    """`docker compose --profile cpu` on the repo's file + the test override, under a unique project name."""

    def __init__(self, env: dict[str, str], image: str, port: int) -> None:
        self.name = f"fcn8s-test-{uuid.uuid4().hex[:8]}"
        self.env = {
            **env,
            "FCN_CPU_IMAGE": image,
            "FCN_TEST_PORT": str(port),
            "FCN_MODEL_DIR": str(MODEL_DIR),
        }

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        files = ["-f", str(COMPOSE_FILE), "-f", str(TEST_OVERRIDE)]
        cmd = [tool("docker-compose"), "-p", self.name, *files, "--profile", "cpu", *args]
        return run(cmd, env=self.env, cwd=REPO_ROOT, timeout=timeout)

    def container(self) -> str:
        """The server-cpu container's id."""
        return check(self("ps", "-q", "server-cpu"), "compose ps").strip()

    def restarts(self) -> int:
        """How often Docker has restarted the server-cpu container (its restart policy)."""
        state = json.loads(docker(self.env, "inspect", self.container()))[0]
        return int(state["RestartCount"])


def wait_ready(base: str, deadline_s: float, project: ComposeProject, restarts: int = 0) -> float:
    """Seconds until GET /health/ready answers 200; fails at once when the container has stopped or was
    restarted more than ``restarts`` times (a server that crashes at start-up, restarted in a loop)."""
    started = time.perf_counter()
    while time.perf_counter() - started < deadline_s:
        assert project.container(), "the server-cpu container stopped"
        assert project.restarts() <= restarts, "the server-cpu container crashed and was restarted"
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready within {deadline_s} s")


@pytest.fixture(scope="module")
def service(docker_env: dict[str, str], cpu_image: str) -> Iterator[tuple[str, ComposeProject]]:
    """`docker compose --profile cpu up -d` on a free port; yields (base URL, project); `down -v` after."""
    assert DEMO_ONNX.is_file(), f"{DEMO_ONNX} is missing (shipped; docs/training.md remakes it)"
    port = free_port()
    project = ComposeProject(docker_env, cpu_image, port)
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        check(project("up", "-d", "--no-build"), "compose up")
        up_s = time.perf_counter() - started
        ready_s = up_s + wait_ready(base, READY_TIMEOUT_S, project)
        print(
            f"\n[deploy] compose up -d returned after {up_s:.1f} s; /health/ready 200 after {ready_s:.1f} s"
        )
        yield base, project
    except BaseException:
        print("[deploy] service logs:\n" + project("logs", "--no-color").stdout[-5000:])
        raise
    finally:
        check(project("down", "-v", "--timeout", "30"), "compose down")


def photo_png(width: int, height: int) -> bytes:
    """A real photograph (scikit-image's astronaut) resized to an odd size, as PNG bytes."""
    from skimage import data

    out = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((width, height)).save(out, format="PNG")
    return out.getvalue()


def test_compose_cpu_service_segments(service):
    base, _ = service
    photo = photo_png(301, 217)

    png = httpx.post(f"{base}/segment", files={"image": ("astronaut.png", photo, "image/png")}, timeout=120)
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    labels = np.asarray(Image.open(io.BytesIO(png.content)))
    assert labels.shape == (217, 301)

    raw = {"Content-Type": "image/png"}
    answer = httpx.post(f"{base}/segment?format=json", content=photo, headers=raw, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["width"], body["height"]) == (301, 217)
    listed = {c["id"]: c for c in body["classes"]}
    assert listed and all(VOC_CLASSES[i] == c["name"] for i, c in listed.items())
    assert sum(c["pixels"] for c in listed.values()) == 301 * 217
    present, counts = np.unique(labels, return_counts=True)  # same image, same model: both answers agree
    assert dict(zip(present.tolist(), counts.tolist(), strict=True)) == {
        i: c["pixels"] for i, c in listed.items()
    }


def test_container_is_non_root_healthy_and_without_pip(service, docker_env):
    _, project = service
    container = project.container()
    assert json.loads(docker(docker_env, "inspect", container))[0]["Config"]["User"] == "10001:10001"
    assert (
        docker(docker_env, "exec", container, "python", "-c", "import os; print(os.getuid())").strip()
        == "10001"
    )
    assert "pip" not in docker(docker_env, "exec", container, "ls", "/opt/venv/bin").split()
    health = {}
    for _ in range(60):  # the image's HEALTHCHECK (every 2 s under the test override) turns healthy
        health = json.loads(docker(docker_env, "inspect", container))[0]["State"]["Health"]
        if health["Status"] == "healthy":
            break
        time.sleep(1)
    assert health["Status"] == "healthy", health


class Load:
    """Clients posting a small PNG in a closed loop until stopped; every outcome kept with its time."""

    def __init__(self, base: str, clients: int = 4) -> None:
        self.base, self.stopped = base, threading.Event()
        self.outcomes: list[tuple[float, str]] = []  # (time.monotonic(), "200" / "503" / exception name)
        self.lock = threading.Lock()
        self.image = photo_png(64, 48)
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopped.is_set():
                try:
                    response = client.post(f"{self.base}/segment", content=self.image, headers=PNG)
                    outcome = str(response.status_code)
                except httpx.TransportError as error:
                    outcome = type(error).__name__
                with self.lock:
                    self.outcomes.append((time.monotonic(), outcome))
                if outcome != "200":
                    time.sleep(0.05)  # what a retrying client does (the 503 says Retry-After: 1)

    def count(self, since: float, outcome: str = "200") -> int:
        with self.lock:
            return sum(1 for t, o in self.outcomes if t >= since and o == outcome)

    def stop(self) -> list[tuple[float, str]]:
        self.stopped.set()
        for thread in self.threads:
            thread.join(15)
        return self.outcomes


PNG = {"Content-Type": "image/png"}


def server_pid(container_pid: int) -> int:
    """The host PID of `python -m server` in a container whose init (compose's `init: true`) is
    ``container_pid``."""
    children = Path(f"/proc/{container_pid}/task/{container_pid}/children").read_text().split()
    for child in children:
        if b"server" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError(f"no server process under the container's init {container_pid}: {children}")


def test_server_killed_under_load_is_restarted_by_its_policy(service, docker_env):
    """SIGKILL the server process (an OOM kill or a crash in native code) while 4 clients send requests:
    the container exits, Docker restarts it (compose's `restart: unless-stopped`), readiness returns and
    every request after recovery succeeds. Prints the downtime and what the clients saw meanwhile."""
    base, project = service
    container = project.container()

    def state() -> dict:
        return json.loads(docker(docker_env, "inspect", container))[0]

    before = state()
    assert before["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"  # compose's, not overridden
    load = Load(base)
    try:
        started = time.monotonic()
        assert wait_until(lambda: load.count(started) >= 8, 60), "no load established"
        killed_at = time.monotonic()
        os.kill(server_pid(before["State"]["Pid"]), signal.SIGKILL)
        assert wait_until(lambda: state()["RestartCount"] > before["RestartCount"], 60), "not restarted"
        restarted_at = time.monotonic()
        wait_ready(base, READY_TIMEOUT_S, project, restarts=before["RestartCount"] + 1)
        ready_at = time.monotonic()
        assert wait_until(lambda: load.count(ready_at + 1.0) >= 20, 60), "requests fail after recovery"
    finally:
        outcomes = load.stop()
    first_ok = min(t for t, o in outcomes if t > killed_at and o == "200")
    during = [o for t, o in outcomes if killed_at <= t < first_ok]
    after = [o for t, o in outcomes if t >= ready_at + 1.0]  # answers to requests sent after recovery
    kinds = ", ".join(f"{o} ×{during.count(o)}" for o in sorted(set(during))) or "none"
    print(
        f"\n[deploy] crash recovery: SIGKILL at 0 s; container restarted after "
        f"{restarted_at - killed_at:.1f} s, /health/ready 200 after {ready_at - killed_at:.1f} s, first 200 "
        f"after {first_ok - killed_at:.1f} s (downtime); {len(during)} requests failed meanwhile: {kinds}; "
        f"{len(after)} requests after recovery, {sum(o != '200' for o in after)} failed"
    )
    assert after and all(o == "200" for o in after), after
    assert state()["State"]["Status"] == "running" and project.container() == container
