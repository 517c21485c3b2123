"""HTTP behaviour of a real uvicorn process serving the fake backend: outputs, batching, errors, health."""

from __future__ import annotations

import concurrent.futures
import io
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pycocotools.mask as coco
import pytest
from PIL import Image

from common.classes import VOC_CLASSES
from tests.polling import sample, wait_until
from tests.server.conftest import FAKE_SETTINGS, ServerProcess, png_bytes, random_image, running
from tests.server.server_fakes import FAIL, SLOW, fake_labels


def post(
    server: ServerProcess, body: bytes, content_type: str = "image/png", **kwargs: object
) -> httpx.Response:
    headers = {"content-type": content_type, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.post(server.url + "/segment", content=body, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def expected_labels(image: np.ndarray, max_side: int) -> np.ndarray:
    """What the server must return for the fake model: resize like the server, label, resize back."""
    from common.geometry import NetworkGeometry, ServingGeometry
    from server.imaging import resize_labels, resize_rgb

    size = ServingGeometry(NetworkGeometry(), max_side).inference_size(*image.shape[:2])
    return resize_labels(fake_labels(resize_rgb(image, size)), image.shape[:2])


def test_png_output_is_palette_png_of_input_size(fake_server: ServerProcess) -> None:
    image = random_image(300, 200, seed=1)  # larger than max_side: resized for inference and back
    response = post(fake_server, png_bytes(image), headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["x-model"] == "fake"
    assert response.headers["x-batch-size"] == "1"  # alone on the server: a batch of one
    assert float(response.headers["x-queue-ms"]) >= 0 and float(response.headers["x-inference-ms"]) >= 0
    out = Image.open(io.BytesIO(response.content))
    assert out.mode == "P" and out.size == (200, 300)
    from common.classes import voc_palette

    assert out.getpalette()[:63] == [c for color in voc_palette(21) for c in color]
    np.testing.assert_array_equal(np.asarray(out), expected_labels(image, int(FAKE_SETTINGS["max_side"])))


def test_json_masks_decode_to_the_png(fake_server: ServerProcess) -> None:
    image = random_image(120, 90, seed=2)
    body = png_bytes(image)
    as_png = np.asarray(Image.open(io.BytesIO(post(fake_server, body).content)))
    response = post(fake_server, body, headers={"Accept": "application/json"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    data = response.json()
    assert (data["model"], data["width"], data["height"]) == ("fake", 90, 120)
    rebuilt = np.full(as_png.shape, 255, dtype=np.uint8)
    for entry in data["classes"]:
        mask = coco.decode({"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()})
        assert entry["pixels"] == mask.sum() and entry["fraction"] == pytest.approx(mask.mean())
        assert entry["name"] == VOC_CLASSES[entry["id"]]
        rebuilt[mask.astype(bool)] = entry["id"]
    np.testing.assert_array_equal(rebuilt, as_png)
    assert sorted(e["id"] for e in data["classes"]) == sorted(np.unique(as_png).tolist())


def test_multipart_and_format_query(fake_server: ServerProcess) -> None:
    body = png_bytes(random_image(64, 64, seed=3))
    response = httpx.post(
        fake_server.url + "/segment?format=json",
        files={"image": ("x.png", body, "image/png")},
        headers={"Accept": "image/png"},  # the query wins over Accept
        timeout=30,
    )
    assert response.status_code == 200 and response.json()["width"] == 64


def test_concurrent_requests_are_batched(fake_server: ServerProcess) -> None:
    bodies = [png_bytes(random_image(100 + i, 120 - i, seed=i)) for i in range(12)]  # all in bucket 122x122
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda b: post(fake_server, b), bodies))
    assert all(r.status_code == 200 for r in responses)
    sizes = [int(r.headers["x-batch-size"]) for r in responses]
    assert max(sizes) > 1, sizes


def test_batch_independence_with_mixed_sizes(fake_server: ServerProcess) -> None:
    """An image's labels do not depend on its batch-mates: the same image alone and in a full batch of
    images of other sizes (one bucket, padded differently) gets the same labels."""
    target = random_image(90, 70, seed=7)
    alone = post(fake_server, png_bytes(target))
    assert alone.headers["x-batch-size"] == "1"
    others = [png_bytes(random_image(80 + 3 * i, 75 - 2 * i, seed=20 + i)) for i in range(3)]  # same bucket
    images_before = sample(fake_server.url, "fcn_inference_images_total")
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        blocker = pool.submit(post, fake_server, _slow_image())  # holds the model while the batch forms
        assert wait_until(lambda: sample(fake_server.url, "fcn_inference_images_total") > images_before, 10)
        mixed = [pool.submit(post, fake_server, body) for body in [png_bytes(target), *others]]
        assert wait_until(lambda: sample(fake_server.url, "fcn_queue_depth") == 4, 10)
        assert blocker.result().status_code == 200
        results = [future.result() for future in mixed]
    assert [r.headers["x-batch-size"] for r in results] == ["4"] * 4  # max_batch_size: one full batch
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(results[0].content))),
        np.asarray(Image.open(io.BytesIO(alone.content))),
    )


def _slow_image() -> bytes:
    image = random_image(64, 64, seed=9)
    image[0, 0] = SLOW
    return png_bytes(image)


def test_health_answers_while_a_long_batch_runs(fake_server: ServerProcess) -> None:
    """Health checks and metrics are answered while the model is busy: the 1.5 s batch is still running
    when they have all been answered."""
    images_before = sample(fake_server.url, "fcn_inference_images_total")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, fake_server, _slow_image())
        assert wait_until(lambda: sample(fake_server.url, "fcn_inference_images_total") > images_before, 10)
        with httpx.Client(base_url=fake_server.url, timeout=5) as client:
            for path in ("/health/live", "/health/ready", "/health/live", "/metrics"):
                assert client.get(path).status_code == 200
        assert not slow.done(), "health checks waited for the running batch"
        assert slow.result().status_code == 200


def test_backend_failure_only_fails_its_batch(fake_server: ServerProcess) -> None:
    bad = random_image(64, 64, seed=10)
    bad[0, 0] = FAIL
    response = post(fake_server, png_bytes(bad))
    assert response.status_code == 500
    assert "InjectedFault" in response.json()["detail"] and "Traceback" not in response.text
    assert post(fake_server, png_bytes(random_image(64, 64, seed=11))).status_code == 200
    assert 'fcn_failures_total{reason="backend"}' in httpx.get(fake_server.url + "/metrics").text


def _bomb_png() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels, with no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _raw(body: object, content_type: str = "image/png", **extra: object) -> dict[str, object]:
    return {"content": body, "headers": {"content-type": content_type}, **extra}


def _error_cases() -> list[tuple[str, dict[str, object], int, str]]:
    good = png_bytes(random_image(40, 40, seed=12))
    big_pixels = png_bytes(np.zeros((1100, 1000, 3), dtype=np.uint8))  # 1.1 MP > 1 MP, small file
    huge = b"\x00" * 400_000
    ppm = b"P6\n2 2\n255\n" + bytes(12)
    two_files = [("image", ("a.png", good, "image/png")), ("image", ("b.png", good, "image/png"))]
    return [
        ("empty body", _raw(b""), 400, "empty"),
        ("text file", _raw(b"hello", "text/plain"), 415, "content type"),
        ("no content type", {"content": good}, 415, "image/*"),
        ("random bytes", _raw(b"\x01\x02" * 100), 400, "decode"),
        ("truncated png", _raw(good[: len(good) // 2]), 400, "decode"),
        ("pixel bomb header", _raw(_bomb_png()), 413, "pixels"),
        ("over pixel limit", _raw(big_pixels), 413, "pixels"),
        ("over byte limit", _raw(huge), 413, "bytes"),
        ("over byte limit, chunked", _raw(iter([huge[:100_000]] * 4)), 413, "bytes"),
        ("bad format value", _raw(good, params={"format": "xml"}), 422, "png or json"),
        ("wrong field name", {"files": {"file": ("a.png", good, "image/png")}}, 422, "'image'"),
        ("two files", {"files": two_files}, 422, "exactly one"),
        ("unsupported format", _raw(ppm, "image/x-portable-pixmap"), 415, "PPM"),
        (
            "headers too large",
            {"content": good, "headers": {"content-type": "image/png", "x-big": "a" * 20_000}},
            431,
            "limit",
        ),
    ]


@pytest.mark.parametrize("case", _error_cases(), ids=lambda c: c[0])
def test_error_cases_answer_json_and_server_keeps_serving(
    fake_server: ServerProcess, case: tuple[str, dict[str, object], int, str]
) -> None:
    _, request, status, phrase = case
    response = httpx.post(fake_server.url + "/segment", timeout=30, **request)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and phrase.lower() in detail.lower(), detail
    assert "Traceback" not in detail and "/work" not in detail
    assert post(fake_server, png_bytes(random_image(32, 32, seed=13))).status_code == 200


def test_model_info_and_openapi(fake_server: ServerProcess) -> None:
    info = httpx.get(fake_server.url + "/v1/model").json()
    assert info["backend"] == "fake" and info["provider"] == "FakeExecutionProvider"
    assert info["classes"][15] == {"id": 15, "name": "person", "color": [192, 128, 128]}
    assert info["batching"]["max_batch_size"] == FAKE_SETTINGS["max_batch_size"]
    assert info["limits"]["max_pixels"] == FAKE_SETTINGS["max_pixels"]
    spec = httpx.get(fake_server.url + "/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/segment"]["post"]["requestBody"]["content"]
    assert httpx.get(fake_server.url + "/docs").status_code == 404  # FCN_DOCS_PAGES=true turns it on


def test_queue_full_and_deadline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = {**FAKE_SETTINGS, "queue_size": 1, "max_batch_size": 1, "deadline_ms": 1500}
    settings["idle_timeout_s"] = 1
    with running(
        tmp_path, settings, module="tests.server.server_fakes", extra_env={"FAKE_SLOW_S": "2.5"}
    ) as srv:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            slow = pool.submit(post, srv, _slow_image())  # runs 2.5 s, past its own deadline
            assert wait_until(lambda: sample(srv.url, "fcn_inference_images_total") == 1, 10)
            queued = pool.submit(post, srv, png_bytes(random_image(32, 32, seed=14)))  # waits in the queue
            assert wait_until(lambda: sample(srv.url, "fcn_queue_depth") == 1, 10)
            rejected = post(srv, png_bytes(random_image(32, 32, seed=15)))
            assert rejected.status_code == 429 and rejected.headers["retry-after"] == "1"
            assert "queue full" in rejected.json()["detail"]
            assert not slow.done(), "the refusal waited for the model"
            assert queued.result().status_code == 504
            assert "while queued" in queued.result().json()["detail"]
            assert slow.result().status_code == 504
            assert "during inference" in slow.result().json()["detail"]
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'fcn_failures_total{reason="expired"} 2.0' in metrics
        assert 'fcn_failures_total{reason="rejected"} 1.0' in metrics
        # the queued request never reached the model: only warm-up-free traffic counted (slow image only)
        assert 'fcn_inference_images_total{model="fake",version="1"} 1.0' in metrics
        assert post(srv, png_bytes(random_image(32, 32, seed=16))).status_code == 200

        def trickle() -> Iterator[bytes]:
            for byte in png_bytes(random_image(32, 32, seed=17))[:12]:
                time.sleep(0.2)
                yield bytes([byte])

        slow_client = post(srv, trickle())  # type: ignore[arg-type]
        assert slow_client.status_code == 408 and "did not arrive" in slow_client.json()["detail"]

        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as half_head:  # 3 x the deadline
            half_head.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n")
            assert httpx.get(srv.url + "/health/live").status_code == 200  # others are served meanwhile
            answer = b""
            while chunk := half_head.recv(1024):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408 "), "a head that never completes is answered 408"
