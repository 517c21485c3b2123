"""Hostile and unusual inputs against a real ``python -m server`` process (ONNX Runtime on the tiny model).

Every refusal is a documented 4xx with a JSON ``detail`` and no internals, and the server keeps serving:
a good request succeeds after each case.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from server.imaging import decode_image

from . import inputs
from .conftest import TINY_SETTINGS
from .helpers import assert_clean_error, failures, label_map, metrics, post_image
from .models import expected_labels
from .rawhttp import Trickler, send_head_only, stream_chunked_until_answer
from .serverproc import ServerProcess

GOOD = inputs.png(48, 32, seed=1)
MAX_BODY = int(TINY_SETTINGS["max_body_bytes"])  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def assert_still_serving(client: httpx.Client, server: ServerProcess) -> None:
    response = post_image(client, server.url, GOOD)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(label_map(response), expected_labels(decode_image(GOOD, 10**6)))
    assert server.proc.poll() is None


@pytest.mark.parametrize("case", inputs.BAD_CASES, ids=lambda c: c.name)
def test_bad_body_gets_documented_4xx(
    client: httpx.Client, tiny_server: ServerProcess, case: inputs.Case
) -> None:
    before = failures(metrics(tiny_server.url, client), "bad_input")
    response = post_image(client, tiny_server.url, case.make(), case.content_type)
    assert_clean_error(response, case.expected)
    assert failures(metrics(tiny_server.url, client), "bad_input") == before + 1
    assert_still_serving(client, tiny_server)


@pytest.mark.parametrize("case", inputs.ODD_CASES, ids=lambda c: c.name)
def test_odd_but_valid_images_are_served_at_their_oriented_size(
    client: httpx.Client, tiny_server: ServerProcess, case: inputs.Case
) -> None:
    data = case.make()
    response = post_image(client, tiny_server.url, data, case.content_type)
    assert response.status_code == 200, response.text
    labels = label_map(response)
    assert case.size is not None
    assert (labels.shape[1], labels.shape[0]) == case.size
    rgb = decode_image(data, 10**8)
    if max(rgb.shape[:2]) <= int(TINY_SETTINGS["max_side"]):  # type: ignore[call-overload]
        # no resize: every pixel's label is the tiny model's function of the decoded (oriented, RGB) pixel
        np.testing.assert_array_equal(labels, expected_labels(rgb))


def test_multipart_mistakes_get_422(client: httpx.Client, tiny_server: ServerProcess) -> None:
    for name, kwargs in inputs.multipart_cases(GOOD).items():
        response = client.post(tiny_server.url + "/segment", **kwargs)  # type: ignore[arg-type]
        detail = assert_clean_error(response, {422})
        assert "image" in detail, (name, detail)
    response = client.post(tiny_server.url + "/segment", files={"image": ("a.png", GOOD, "image/png")})
    assert response.status_code == 200
    assert_still_serving(client, tiny_server)


def test_multipart_with_too_many_parts_is_refused(client: httpx.Client, tiny_server: ServerProcess) -> None:
    fields = {f"field{i}": str(i) for i in range(int(TINY_SETTINGS["max_form_parts"]) + 4)}  # type: ignore[call-overload]
    response = client.post(
        tiny_server.url + "/segment", data=fields, files={"image": ("a.png", GOOD, "image/png")}
    )
    detail = assert_clean_error(response, {400, 413, 422})
    assert "fields" in detail.lower() or "parts" in detail.lower(), detail
    assert_still_serving(client, tiny_server)


def test_format_parameter_and_accept_header(client: httpx.Client, tiny_server: ServerProcess) -> None:
    url = tiny_server.url + "/segment"
    headers = {"Content-Type": "image/png"}
    for bad in ("gif", "PNG ", "", "json,png"):
        response = client.post(url, params={"format": bad}, content=GOOD, headers=headers)
        assert "png or json" in assert_clean_error(response, {422})
    cases = [  # (query, Accept, expected content type): the query wins, else the higher-q Accept, else PNG
        ("png", "application/json", "image/png"),
        ("json", "image/png", "application/json"),
        (None, "application/json", "application/json"),
        (None, "image/png;q=0.2, application/json;q=0.9", "application/json"),
        (None, "application/json;q=0.1, image/png", "image/png"),
        (None, "text/html", "image/png"),
        (None, "*/*", "image/png"),
        (None, "application/json;q=oops", "image/png"),
    ]
    for query, accept, expected in cases:
        params = {"format": query} if query else {}
        response = client.post(url, params=params, content=GOOD, headers={**headers, "Accept": accept})
        assert response.status_code == 200, (query, accept, response.text)
        assert response.headers["content-type"].startswith(expected), (query, accept)
    assert_still_serving(client, tiny_server)


def test_body_over_limit_with_content_length_is_refused_before_the_body(tiny_server: ServerProcess) -> None:
    """A huge Content-Length is answered 413 from the head alone: no body byte is sent."""
    response = send_head_only(tiny_server.url, {"Content-Type": "image/png", "Content-Length": str(10**10)})
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]  # type: ignore[operator]


def test_chunked_body_over_limit_is_refused_while_streaming(
    client: httpx.Client, tiny_server: ServerProcess
) -> None:
    """No Content-Length: the server counts while streaming and answers 413 long before the sender stops."""
    response, sent = stream_chunked_until_answer(
        tiny_server.url, "image/png", b"\x89" * 16384, max_bytes=100 * MAX_BODY
    )
    assert response.status_code == 413, response.body
    assert "limit" in response.json()["detail"]  # type: ignore[operator]
    assert sent < 20 * MAX_BODY, f"server let {sent} bytes in before refusing (limit {MAX_BODY})"
    big = inputs.noise_png(400, 400)
    assert len(big) > MAX_BODY
    assert_clean_error(post_image(client, tiny_server.url, big), {413})
    chunked = client.post(
        tiny_server.url + "/segment",
        content=iter([big[i : i + 8192] for i in range(0, len(big), 8192)]),
        headers={"Content-Type": "image/png"},
    )
    assert_clean_error(chunked, {413})
    assert_still_serving(client, tiny_server)


def test_chunked_multipart_over_limit_is_refused(client: httpx.Client, tiny_server: ServerProcess) -> None:
    big = inputs.noise_png(400, 400)
    head = (
        b'--bnd\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    body = head + big + b"\r\n--bnd--\r\n"
    response = client.post(
        tiny_server.url + "/segment",
        content=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
        headers={"Content-Type": "multipart/form-data; boundary=bnd"},
    )
    assert "limit" in assert_clean_error(response, {413})
    no_boundary = client.post(
        tiny_server.url + "/segment", content=b"x", headers={"Content-Type": "multipart/form-data"}
    )
    assert "boundary" in assert_clean_error(no_boundary, {400})
    assert_still_serving(client, tiny_server)


def test_oversized_request_head_is_refused(client: httpx.Client, tiny_server: ServerProcess) -> None:
    """Heads over FCN_MAX_HEADER_BYTES get 431 JSON; heads past h11's read buffer are cut off at the
    connection level (400 or a closed connection); either way the server keeps serving."""
    limit = int(TINY_SETTINGS["max_header_bytes"])  # type: ignore[call-overload]
    for size in (limit + 512, 4 * limit):
        response = client.post(
            tiny_server.url + "/segment",
            content=GOOD,
            headers={"Content-Type": "image/png", "X-Padding": "a" * size},
        )
        assert str(limit) in assert_clean_error(response, {431})
    try:
        huge = client.post(
            tiny_server.url + "/segment",
            content=GOOD,
            headers={"Content-Type": "image/png", "X-Pad": "a" * 300_000},
        )
        assert huge.status_code in (400, 431) and "Traceback" not in huge.text
    except httpx.TransportError:
        pass  # the connection was closed on the oversized head: refused as well
    small = client.post(
        tiny_server.url + "/segment",
        content=GOOD,
        headers={"Content-Type": "image/png", "X-Padding": "a" * (limit // 4)},
    )
    assert small.status_code == 200
    assert_still_serving(client, tiny_server)


def test_slow_client_does_not_block_others(client: httpx.Client, tiny_server: ServerProcess) -> None:
    """While one client trickles its body a byte at a time, other requests are served at normal speed."""
    slow_body = inputs.png(40, 30, seed=5)
    trickler = Trickler(tiny_server.url, slow_body, "image/png", interval=0.01)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            trickling = pool.submit(trickler.trickle, 3.0)
            served = 0
            while not trickling.done():  # each answered while the trickled body is incomplete
                assert post_image(client, tiny_server.url, GOOD).status_code == 200
                served += 1
            trickling.result()
        assert 0 < trickler.sent < len(slow_body)
        assert served >= 3, served
        response = trickler.finish()
        assert response.status_code == 200
    finally:
        trickler.close()
    assert_still_serving(client, tiny_server)


def test_decompression_bomb_costs_no_memory(client: httpx.Client, tiny_server: ServerProcess) -> None:
    """The 100000x100000 PNG (30 GB decoded) is refused from its header; the server's RSS stays flat."""
    assert_still_serving(client, tiny_server)
    before = tiny_server.rss_kib()
    bomb = inputs.png_bomb()
    assert len(bomb) < 4096
    for _ in range(5):
        response = post_image(client, tiny_server.url, bomb)
        assert "pixels" in assert_clean_error(response, {413})
    growth_mib = (tiny_server.rss_kib() - before) / 1024
    assert growth_mib < 20, f"RSS grew by {growth_mib:.1f} MiB while refusing bombs"
    assert_still_serving(client, tiny_server)


def test_pixel_limit_from_the_header(client: httpx.Client, tiny_server: ServerProcess) -> None:
    """An image just over FCN_MAX_PIXELS is refused 413 even though its bytes are small."""
    limit = int(TINY_SETTINGS["max_pixels"])  # type: ignore[call-overload]
    side = int(limit**0.5) + 2
    data = inputs.encode(Image.new("RGB", (side, side)), "PNG")
    assert len(data) < MAX_BODY
    detail = assert_clean_error(post_image(client, tiny_server.url, data), {413})
    assert str(limit) in detail
    assert_still_serving(client, tiny_server)
