"""Faults: a backend that raises or hangs, deadlines, client disconnects, SIGTERM under load, bad model files.

Uses real server processes: ``python -m server`` for start-up faults and the fake-backend launcher (same
``serve()``: uvicorn, lifespan, drain) where a fault must be injected into the model.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .fakes import HANG, POISON, FakeSpec, read_calls, seen_marks
from .helpers import assert_clean_error, failures, metrics, post_image, solid_png, unique_colours, wait_until
from .rawhttp import Trickler, connect, read_response, request_head, wait_closed
from .serverproc import ServerProcess, fake_server, spawn

FAULTY_SETTINGS: dict[str, object] = {
    "max_batch_size": 4,
    "max_delay_ms": 300,
    "queue_size": 32,
    "deadline_ms": 1000,
    "stall_timeout_s": 0.5,
}
HANG_S = 2.0


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server over the fake backend: POISON batches raise, HANG batches sleep 2 s (deadline 1 s)."""
    tmp = tmp_path_factory.mktemp("faulty")
    with fake_server(tmp, FAULTY_SETTINGS, FakeSpec(hang_s=HANG_S)) as server:
        server.calls_path = tmp / "backend-calls.jsonl"  # type: ignore[attr-defined]
        yield server


def test_backend_error_fails_only_its_batch(faulty: ServerProcess) -> None:
    calls_path: Path = faulty.calls_path  # type: ignore[attr-defined]
    before = metrics(faulty.url)
    colours = unique_colours(5, start=100)
    bodies = [solid_png(c) for c in colours[:3]] + [solid_png(POISON)]  # one bucket: batched together
    bodies += [solid_png(c, 100, 100) for c in colours[3:]]  # another bucket: another batch
    marks = [*colours[:3], POISON, *colours[3:]]
    with httpx.Client(timeout=10) as client, concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: post_image(client, faulty.url, b), bodies))
        poisoned = next(c for c in read_calls(calls_path) if list(POISON) in c["marks"])
        in_bad_batch = {tuple(m) for m in poisoned["marks"]}
        assert len(in_bad_batch) >= 2, "the poison request ran alone; batching did not happen"
        for mark, response in zip(marks, responses, strict=True):
            if mark in in_bad_batch:
                detail = assert_clean_error(response, {500})
                assert "PoisonedBatchError" in detail, detail
            else:
                assert response.status_code == 200, (mark, response.text)
        after_fault = post_image(client, faulty.url, solid_png(unique_colours(1, start=120)[0]))
        assert after_fault.status_code == 200
    after = metrics(faulty.url)
    assert failures(after, "backend") - failures(before, "backend") == len(in_bad_batch)
    assert httpx.get(faulty.url + "/health/ready").status_code == 200


def test_hang_beyond_deadline_times_out_cleanly_and_readiness_reports_it(faulty: ServerProcess) -> None:
    """A batch that hangs: its request and those queued behind it get 504, queued ones never reach the model,
    clients that leave are counted as cancelled, readiness is 503 while stalled and 200 again after."""
    calls_path: Path = faulty.calls_path  # type: ignore[attr-defined]
    before = metrics(faulty.url)
    queued_colours = unique_colours(3, start=200)
    gone_colours = unique_colours(2, start=210)
    with httpx.Client(timeout=10) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        hung = pool.submit(post_image, client, faulty.url, solid_png(HANG))
        assert wait_until(lambda: any(list(HANG) in c["marks"] for c in read_calls(calls_path)), 2.0)
        queued = [pool.submit(post_image, client, faulty.url, solid_png(c)) for c in queued_colours]
        leavers = []
        for colour in gone_colours:
            body = solid_png(colour)
            sock = connect(faulty.url)
            sock.sendall(
                request_head("/segment", {"Content-Type": "image/png", "Content-Length": str(len(body))})
            )
            sock.sendall(body)
            leavers.append(sock)
        waiting = len(queued_colours) + len(gone_colours)
        assert wait_until(lambda: metrics(faulty.url)["fcn_queue_depth"] == waiting, 5.0), "not all queued"
        for sock in leavers:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        stalled = wait_until(lambda: httpx.get(faulty.url + "/health/ready").status_code == 503, 1.0)
        assert stalled, "readiness never reported the stalled backend"
        ready_body = httpx.get(faulty.url + "/health/ready").json()
        assert "stall" in ready_body["detail"]
        assert httpx.get(faulty.url + "/health/live").status_code == 200
        assert "during inference" in assert_clean_error(hung.result(), {504})
        for future in queued:
            assert "while queued" in assert_clean_error(future.result(), {504})
        assert wait_until(lambda: httpx.get(faulty.url + "/health/ready").status_code == 200, HANG_S + 2)
        assert post_image(client, faulty.url, solid_png((9, 9, 9))).status_code == 200
    after = metrics(faulty.url)
    reached = seen_marks(calls_path)
    assert not reached & {*queued_colours, *gone_colours}, "an expired or abandoned request reached the model"
    assert failures(after, "expired") - failures(before, "expired") == 1 + len(queued_colours)
    assert failures(after, "cancelled") - failures(before, "cancelled") == len(gone_colours)
    images = after["fcn_inference_images_total"] - before["fcn_inference_images_total"]
    assert images == 2  # the hung image and the one after recovery; none of the expired or cancelled


def test_body_slower_than_the_deadline_gets_408(faulty: ServerProcess) -> None:
    """A client trickling its body past the deadline is answered 408 and the connection closed."""
    body = solid_png((11, 12, 13))
    trickler = Trickler(faulty.url, body, "image/png", interval=0.05)
    try:
        trickler.trickle(3.0)  # the deadline is 1 s
        assert trickler.sent < len(body)
        response = read_response(trickler.sock)
        assert response.headers["connection"] == "close"
        assert wait_closed(trickler.sock, 1.0)
    finally:
        trickler.close()
    assert response.status_code == 408
    assert "did not arrive" in response.json()["detail"]  # type: ignore[operator]
    assert (11, 12, 13) not in seen_marks(faulty.calls_path)  # type: ignore[attr-defined]
    assert httpx.get(faulty.url + "/health/ready").status_code == 200


def test_sigterm_under_load_drains(tmp_path: Path) -> None:
    """SIGTERM: readiness 503 at once, new requests 503, in-flight ones finish, exit 0 within the timeout."""
    settings = {"max_batch_size": 2, "max_delay_ms": 10, "deadline_ms": 10_000, "drain_timeout_s": 10}
    with fake_server(tmp_path, settings, FakeSpec(delay_s=0.4)) as server:
        calls_path = tmp_path / "backend-calls.jsonl"
        colours = unique_colours(6, start=300)
        with httpx.Client(timeout=15) as client, concurrent.futures.ThreadPoolExecutor(6) as pool:
            inflight = [pool.submit(post_image, client, server.url, solid_png(c)) for c in colours]

            def admitted() -> int:  # images seen by the model (read first), then those queued
                seen = sum(len(call["marks"]) for call in read_calls(calls_path))
                return seen + int(metrics(server.url)["fcn_queue_depth"])

            assert wait_until(lambda: admitted() >= len(colours), 5.0), "not every request was admitted"
            server.proc.send_signal(signal.SIGTERM)
            ready = httpx.get(server.url + "/health/ready", timeout=2)
            assert ready.status_code == 503 and not all(f.done() for f in inflight), (
                "503 only after the drain"
            )
            assert "shutting down" in ready.json()["detail"]
            late = post_image(client, server.url, solid_png((5, 5, 5)))
            assert "shutting down" in assert_clean_error(late, {503})
            statuses = [f.result().status_code for f in inflight]
        assert statuses == [200] * len(colours), statuses
        assert server.proc.wait(10) == 0  # within the drain timeout
        assert seen_marks(calls_path) >= set(colours)


def test_sigterm_with_a_hung_backend_exits_within_the_drain_timeout(tmp_path: Path) -> None:
    """A batch that never ends must not keep the process alive past the drain timeout."""
    drain_s = 2.0
    settings = {"deadline_ms": 60_000, "drain_timeout_s": drain_s, "stall_timeout_s": 1}
    with fake_server(tmp_path, settings, FakeSpec(hang_s=40)) as server:
        calls_path = tmp_path / "backend-calls.jsonl"
        with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
            hung = pool.submit(post_image, client, server.url, solid_png(HANG))
            assert wait_until(
                lambda: list(HANG) in [m for c in read_calls(calls_path) for m in c["marks"]], 3
            )
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(2 * drain_s + 3)  # the batch hangs for 40 s
                exited = True
            except subprocess.TimeoutExpired:
                exited = False
            server.proc.kill()
            try:
                answer = hung.result()
            except httpx.HTTPError:
                answer = None  # connection closed without an answer: acceptable
        assert exited, f"still running {2 * drain_s + 3:g} s after SIGTERM"
        if answer is not None:
            assert_clean_error(answer, {503, 504})


def _wait_exit(server: ServerProcess, timeout: float) -> tuple[int | None, bool]:
    """Wait for the process to exit, polling readiness meanwhile; (exit code, ever answered ready)."""
    ever_ready = False
    end = time.monotonic() + timeout
    while server.proc.poll() is None and time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            ever_ready |= httpx.get(server.url + "/health/ready", timeout=0.5).status_code == 200
        time.sleep(0.1)
    return server.proc.poll(), ever_ready


def test_bad_model_files_fail_start_up_with_one_clear_line(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    plan_dir = tmp_path / "engine"
    plan_dir.mkdir()
    plan = plan_dir / "model.plan"
    plan.write_bytes(b"not really a TensorRT engine")
    cases: dict[str, tuple[dict[str, object], list[str]]] = {  # name: (settings, words in the error line)
        "missing": ({"model": tiny_models["missing"]}, ["not found", "missing.onnx"]),
        "truncated": ({"model": tiny_models["truncated"]}, ["cannot load", "truncated.onnx"]),
        "wrong architecture": ({"model": tiny_models["wrong"]}, ["not a deployable", "uint8"]),
        "labels of the wrong size": ({"model": tiny_models["half"]}, ["warm-up failed", "backend returned"]),
        "engine without GPU": ({"model": plan, "backend": "tensorrt"}, ["GPU"]),
        "engine and no ONNX beside it": ({"model": plan}, ["model.onnx"]),
    }
    servers = {
        name: spawn({**settings, "log_level": "info"}, tmp_path / f"{name.replace(' ', '-')}.log")
        for name, (settings, _) in cases.items()
    }
    try:
        for name, server in servers.items():
            code, ever_ready = _wait_exit(server, 60)
            log = server.log()
            assert code not in (None, 0), (name, code, log)
            assert not ever_ready, name
            assert "Traceback" not in log, (name, log)
            errors = [line for line in log.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, (name, log)
            for word in cases[name][1]:
                assert word in errors[0], (name, word, errors[0])
    finally:
        for server in servers.values():
            server.stop(5)


def test_engine_without_gpu_falls_back_to_the_onnx_beside_it(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """``backend=auto``, a ``.plan`` that cannot run here: the ``.onnx`` beside it is served on the CPU (by
    whichever CPU runtime ``auto`` measures faster), and the log says so."""
    plan = tmp_path / "tiny.plan"
    plan.write_bytes(b"not really a TensorRT engine")
    shutil.copy(tiny_models["good"], tmp_path / "tiny.onnx")
    server = spawn(
        {"model": plan, "log_level": "info", "max_side": 64, "bucket": 64}, tmp_path / "fallback.log"
    )
    try:
        assert wait_until(lambda: _ready(server), 60, 0.1), server.log()
        info = httpx.get(server.url + "/v1/model").json()
        assert info["backend"] in ("onnxruntime", "openvino") and "CPU" in info["provider"], info
        assert [reason["kind"] for reason in info["fallback"]] == ["no_tensorrt"], info["fallback"]
        warnings = [line for line in server.log().splitlines() if "falling back" in line]
        assert warnings and "tiny.onnx" in warnings[0], server.log()
    finally:
        assert server.stop() == 0


def _ready(server: ServerProcess) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.log()}")
    try:
        return httpx.get(server.url + "/health/ready", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False
