"""What the browser tests share: the API's answers and the page's canvases, read back as class ids."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
from PIL import Image

TWO_MODELS = {"demo": 1, "demo-b": 2}
"""The repository of ``two_model_server``: model name → its one version, both the same model file."""


READ_CANVAS = """(id) => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let text = "";
  for (let i = 0; i < data.length; i += 8192) text += String.fromCharCode(...data.subarray(i, i + 8192));
  return { width: canvas.width, height: canvas.height, rgba: btoa(text) };
}"""


def api_segment(
    server: Any,
    data: bytes,
    fmt: str,
    name: str = "scene.png",
    media_type: str = "image/png",
    model: str | None = None,
) -> httpx.Response:
    """``POST /segment`` of one image as the multipart field ``image`` (to ``model``, or the default)."""
    files = {"image": (name, data, media_type)}
    params = {"format": fmt, **({"model": model} if model else {})}
    return httpx.post(f"{server.url}/segment", params=params, files=files, timeout=60)


def api_labels(
    server: Any, data: bytes, model: str | None = None
) -> tuple[np.ndarray, list[tuple[int, ...]], httpx.Response]:
    """The API's label map (class ids), the PNG's palette and the response."""
    response = api_segment(server, data, "png", model=model)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "P"
    flat = image.getpalette() or []
    return np.asarray(image), [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)], response


def canvas_rgb(page: Any, canvas_id: str) -> np.ndarray:
    """A canvas's pixels as uint8 [H, W, 3]."""
    got = page.evaluate(READ_CANVAS, canvas_id)
    rgba = np.frombuffer(base64.b64decode(got["rgba"]), dtype=np.uint8)
    return rgba.reshape(got["height"], got["width"], 4)[..., :3]


def colours_to_ids(rgb: np.ndarray, palette: list[tuple[int, ...]], num_classes: int) -> np.ndarray:
    """Each pixel's class id, found from its colour through the palette (-1 = no class has that colour)."""
    keys = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(palette[:num_classes])}
    assert len(table) == num_classes, "palette colours must be distinct to read class ids back"
    ids = np.full(keys.shape, -1, dtype=np.int64)
    for key, class_id in table.items():
        ids[keys == key] = class_id
    return ids


def wait_for(page: Any, state: str) -> None:
    page.wait_for_selector(f"body[data-state={state}]", timeout=60_000)


@contextlib.contextmanager
def open_page(browser: Any, server: Any) -> Iterator[Any]:
    """A desktop-sized tab on ``GET /`` with the model information loaded; fails if the page throws."""
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        tab.goto(f"{server.url}/")
        tab.wait_for_function("document.getElementById('model').textContent.startsWith('Model:')")
        yield tab
    finally:
        tab.close()
    assert errors == [], f"the page threw: {errors}"
