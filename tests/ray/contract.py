"""The holdout-style contract between two deployments of the service: same labels, same 4xx JSON."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tests.server.conftest import png_bytes, random_image

SETTINGS: dict[str, object] = {
    "backend": "onnxruntime",
    "max_side": 128,
    "bucket": 32,
    "warmup": False,
    "max_batch_size": 4,
    "max_body_bytes": 300_000,
    "max_pixels": 1_000_000,
    "instances": 1,
    "threads_per_instance": 1,
}
"""Server settings of both sides (small images keep the two shared cores free)."""

IMAGES = [png_bytes(random_image(h, w, seed)) for seed, (h, w) in enumerate([(96, 128), (60, 45), (128, 80)])]


def huge_header_png(width: int = 1200, height: int = 1000) -> bytes:
    """A small file whose header announces more pixels than ``max_pixels`` allows."""
    out = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()


PNG = {"content-type": "image/png"}
BAD_REQUESTS: dict[str, dict[str, Any]] = {
    "undecodable": {"content": b"not an image at all", "headers": PNG},
    "wrong media type": {"content": b"hello", "headers": {"content-type": "text/plain"}},
    "body too large": {"content": b"\0" * 400_000, "headers": PNG},
    "too many pixels": {"content": huge_header_png(), "headers": PNG},
    "bad format": {"content": IMAGES[0], "headers": PNG, "params": {"format": "gif"}},
    "unknown model": {"content": IMAGES[0], "headers": PNG, "params": {"model": "nope"}},
    "multipart without image": {"files": {"other": ("a.png", IMAGES[0], "image/png")}},
}
"""POST /segment requests the service must refuse with a 4xx JSON body."""


def segment(base: str, image: bytes, fmt: str) -> httpx.Response:
    return httpx.post(f"{base}/segment", params={"format": fmt}, content=image, headers=PNG, timeout=60)


def assert_same_labels(plain: str, ray: str) -> int:
    """Every image gives byte-identical label PNGs and equal JSON through both; the number compared."""
    for image in IMAGES:
        for fmt in ("png", "json"):
            a, b = segment(plain, image, fmt), segment(ray, image, fmt)
            assert a.status_code == b.status_code == 200, (a.text[:200], b.text[:200])
            assert a.headers["content-type"] == b.headers["content-type"]
            assert a.headers["x-model"] == b.headers["x-model"]
            if fmt == "png":
                assert a.content == b.content
            else:
                assert a.json() == b.json()
            assert len(b.headers.get_list("x-request-id")) == 1
    return 2 * len(IMAGES)


def assert_same_errors(plain: str, ray: str) -> dict[str, int]:
    """Every bad request gets the same 4xx status and the same JSON body through both; status by case."""
    seen = {}
    for name, request in BAD_REQUESTS.items():
        a = httpx.post(f"{plain}/segment", timeout=60, **request)
        b = httpx.post(f"{ray}/segment", timeout=60, **request)
        assert 400 <= a.status_code < 500, (name, a.status_code, a.text)
        assert (b.status_code, b.json()) == (a.status_code, a.json()), name
        assert "detail" in b.json()
        seen[name] = b.status_code
    a, b = httpx.get(f"{plain}/v2/models/nope", timeout=30), httpx.get(f"{ray}/v2/models/nope", timeout=30)
    assert (b.status_code, b.json()) == (a.status_code, a.json()) and b.status_code == 404
    return seen
