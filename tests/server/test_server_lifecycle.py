"""Start-up, readiness, client disconnects and SIGTERM draining of a real server process."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from tests.polling import sample, wait_until
from tests.server.conftest import FAKE_SETTINGS, png_bytes, random_image, running, start_server
from tests.server.server_fakes import SLOW

FAKES = "tests.server.server_fakes"


def _slow_png() -> bytes:
    image = random_image(64, 64, seed=1)
    image[0, 0] = SLOW
    return png_bytes(image)


def _segment(url: str, body: bytes, timeout: float = 30) -> httpx.Response:
    return httpx.post(url + "/segment", content=body, headers={"content-type": "image/png"}, timeout=timeout)


def test_ready_only_after_warm_up_and_sigterm_drains(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, FAKE_SETTINGS, module=FAKES, extra_env={"FAKE_WARMUP_S": "2", "FAKE_SLOW_S": "2"}
    )
    try:
        statuses = []
        while not statuses or statuses[-1] != 200:
            assert server.proc.poll() is None, server.log()
            try:
                live = httpx.get(server.url + "/health/live", timeout=1)
                ready = httpx.get(server.url + "/health/ready", timeout=1)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            assert live.status_code == 200
            statuses.append(ready.status_code)
            if ready.status_code == 503:
                assert "warming up" in ready.json()["detail"]
                early = _segment(server.url, png_bytes(random_image(8, 8)))
                ready_now = httpx.get(server.url + "/health/ready", timeout=1).status_code == 200
                assert early.status_code == 503 or ready_now, "requests before readiness get 503"
            time.sleep(0.05)
        assert statuses[0] == 503, "readiness must be 503 while warming up"

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            inflight = pool.submit(_segment, server.url, _slow_png())
            assert wait_until(lambda: sample(server.url, "fcn_inference_images_total") == 1, 10)
            server.proc.send_signal(15)
            assert wait_until(
                lambda: httpx.get(server.url + "/health/ready", timeout=2).status_code == 503, 5
            )
            ready = httpx.get(server.url + "/health/ready", timeout=2)
            assert "shutting down" in ready.json()["detail"]
            late = _segment(server.url, png_bytes(random_image(16, 16)))
            assert late.status_code == 503 and "shutting down" in late.json()["detail"]
            assert inflight.result().status_code == 200, "in-flight requests finish during the drain"
        assert server.proc.wait(10) == 0
    finally:
        server.stop()


def test_disconnected_client_is_dropped_before_compute(tmp_path: Path) -> None:
    settings = {**FAKE_SETTINGS, "max_batch_size": 1}
    with running(tmp_path, settings, module=FAKES, extra_env={"FAKE_SLOW_S": "1.5"}) as server:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            busy = pool.submit(_segment, server.url, _slow_png())
            assert wait_until(lambda: sample(server.url, "fcn_inference_images_total") == 1, 10)
            with pytest.raises(httpx.ReadTimeout):
                _segment(server.url, png_bytes(random_image(32, 32)), timeout=0.4)  # gives up while queued
            assert busy.result().status_code == 200
        cancelled = 'fcn_failures_total{reason="cancelled"}'
        assert wait_until(lambda: sample(server.url, cancelled) == 1, 5)
        assert sample(server.url, "fcn_inference_images_total") == 1, "the abandoned image reached the model"


def test_bad_model_file_exits_with_one_clear_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    for model, phrase in ((tmp_path / "missing.onnx", "not found"), (broken, "cannot load ONNX model")):
        server = start_server(tmp_path, {"model": model})
        try:
            assert server.proc.wait(60) == 2
        finally:
            server.stop()
        errors = [line for line in server.log().splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and phrase in errors[0], server.log()
        assert "Traceback" not in server.log()


def test_failed_warm_up_exits_non_zero_without_ever_being_ready(tmp_path: Path) -> None:
    server = start_server(tmp_path, FAKE_SETTINGS, module=FAKES, extra_env={"FAKE_BROKEN": "1"})
    try:
        assert server.proc.wait(60) == 1
    finally:
        server.stop()
    errors = [line for line in server.log().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "failed its warm-up: InjectedFault" in errors[0], server.log()


def test_sigterm_with_a_hung_batch_answers_503_and_exits_after_the_drain_timeout(tmp_path: Path) -> None:
    settings = {**FAKE_SETTINGS, "deadline_ms": 60_000, "drain_timeout_s": 1}
    server = start_server(tmp_path, settings, module=FAKES, extra_env={"FAKE_SLOW_S": "60"})
    try:
        server.wait_ready()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            hung = pool.submit(_segment, server.url, _slow_png())
            assert wait_until(lambda: sample(server.url, "fcn_inference_images_total") == 1, 10)
            server.proc.send_signal(15)
            assert server.proc.wait(10) == 0  # the batch hangs for 60 s; the drain timeout is 1 s
            answer = hung.result()
        assert answer.status_code == 503 and "shutting down" in answer.json()["detail"]
    finally:
        server.stop()
