"""Small client-side helpers shared by the reliability tests: solid images, metrics, error-body checks."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable

import httpx
import numpy as np
from PIL import Image

from bench.prometheus import parse_samples
from tests.polling import wait_until  # noqa: F401  (the suite's polling helper, used from here)

from .serverproc import REPO_ROOT

LEAK_PATTERNS = ("Traceback", 'File "', str(REPO_ROOT), "site-packages", '.py"', ".py:", "/usr/", "/tmp/")


def solid_png(colour: tuple[int, int, int], width: int = 40, height: int = 30) -> bytes:
    """A PNG of one colour: the fake backend sees ``colour`` as its first pixel, whatever the resize."""
    image = Image.fromarray(np.full((height, width, 3), colour, dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def unique_colours(count: int, start: int = 1) -> list[tuple[int, int, int]]:
    """``count`` distinct colours that are neither the fake's POISON nor HANG marks (blue channel = 7)."""
    return [((start + i) % 250, (start + i) // 250 + 10, 7) for i in range(count)]


def post_image(
    client: httpx.Client,
    url: str,
    data: bytes,
    content_type: str = "image/png",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST raw image bytes to ``/segment``."""
    return client.post(
        url + "/segment", content=data, headers={"Content-Type": content_type, **(headers or {})}
    )


def label_map(response: httpx.Response) -> np.ndarray:
    """The class-index array of a PNG answer."""
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "P", image.mode
    return np.asarray(image)


def metrics(url: str, client: httpx.Client | None = None) -> dict[str, float]:
    """The server's Prometheus samples as ``{'name{labels}': value}``, summed over model versions."""
    return parse_samples((client or httpx).get(url + "/metrics", timeout=10).text)


def failures(samples: dict[str, float], reason: str) -> float:
    return samples.get(f'fcn_failures_total{{reason="{reason}"}}', 0.0)


def assert_clean_error(response: httpx.Response, statuses: Iterable[int]) -> str:
    """The response is one of ``statuses``, JSON ``{"detail": str}``, with no stack trace or file path."""
    allowed = set(statuses)
    assert response.status_code in allowed, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"], body
    for pattern in LEAK_PATTERNS:
        assert pattern not in response.text, (pattern, response.text)
    assert not re.search(r"\bline \d+\b", response.text), response.text
    return str(body["detail"])


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, by linear interpolation."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")
