"""End to end: the web page at ``GET /`` in headless Chromium against a real server process.

The page must show exactly the label map the API returns (read back pixel for pixel from its canvases),
the classes the API's JSON lists, the request's timings, and the API's own message when a request fails.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.browser.helpers import api_labels, api_segment, canvas_rgb, colours_to_ids, wait_for
from training.synth import make_scene, scene_rng

pytestmark = pytest.mark.browser

SCENE_SEED = 8
SCENE_SIZE = (176, 240)  # (h, w): near the training scenes' size and within the server's max_side

FILE_FROM_BASE64 = """(b64, name, type) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  return transfer;
}"""

DROP = f"""([b64, name, type]) => {{
  const transfer = ({FILE_FROM_BASE64})(b64, name, type);
  const zone = document.getElementById("dropzone");
  for (const kind of ["dragenter", "dragover", "drop"]) {{
    zone.dispatchEvent(new DragEvent(kind, {{ dataTransfer: transfer, bubbles: true, cancelable: true }}));
  }}
}}"""

PASTE = f"""([b64, name, type]) => {{
  const transfer = ({FILE_FROM_BASE64})(b64, name, type);
  document.dispatchEvent(new ClipboardEvent("paste", {{ clipboardData: transfer, bubbles: true }}));
}}"""


# ---------- inputs and the API's answers ----------


@pytest.fixture(scope="module")
def scene() -> tuple[bytes, np.ndarray]:
    """A synthetic scene (PNG bytes) with at least two object classes, and its ground-truth labels."""
    for index in range(50):
        image, truth = make_scene(scene_rng(SCENE_SEED, index), *SCENE_SIZE)
        if len(set(np.unique(truth).tolist()) - {0, 255}) >= 2:
            out = io.BytesIO()
            Image.fromarray(image).save(out, format="PNG")
            return out.getvalue(), truth
    raise AssertionError("no scene with two object classes in 50 tries")


@pytest.fixture(scope="module")
def model_info(server: Any) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/model", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def noise_png(min_bytes: int) -> bytes:
    """A PNG of random pixels (incompressible), longer than ``min_bytes``."""
    side = int(np.sqrt(min_bytes / 3)) + 16
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


# ---------- reading the page ----------


def interior(mask: np.ndarray, margin: int = 3) -> np.ndarray:
    """Pixels of ``mask`` whose whole (2 * margin + 1)² neighbourhood is in the mask."""
    inner = mask.copy()
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            inner &= np.roll(mask, (dy, dx), axis=(0, 1))
    inner[:margin] = inner[-margin:] = False
    inner[:, :margin] = inner[:, -margin:] = False
    return inner


def upload(page: Any, data: bytes, tmp_path: Path, name: str = "scene.png") -> None:
    path = tmp_path / name
    path.write_bytes(data)
    page.set_input_files("#file", str(path))


def shown_error(page: Any, status: int) -> str:
    """The page's error message, once it shows one for HTTP ``status``."""
    page.wait_for_function(f"document.getElementById('error').textContent.endsWith('(HTTP {status})')")
    alert = page.get_by_role("alert")
    assert alert.is_visible()
    return str(alert.inner_text())


# ---------- tests ----------


def test_page_shows_the_api_label_map(
    page: Any, server: Any, scene: tuple[bytes, np.ndarray], model_info: dict[str, Any], tmp_path: Path
) -> None:
    data, truth = scene
    expected, palette, api_response = api_labels(server, data)
    classes = api_segment(server, data, "json").json()["classes"]
    names = {c["id"]: c["name"] for c in classes}
    num_classes = len(model_info["classes"])
    upload(page, data, tmp_path)
    wait_for(page, "done")

    # The label map alone, and the overlay at full opacity, carry exactly the API's class ids.
    np.testing.assert_array_equal(colours_to_ids(canvas_rgb(page, "labels"), palette, num_classes), expected)
    page.get_by_label("Overlay opacity in percent").fill("100")
    np.testing.assert_array_equal(colours_to_ids(canvas_rgb(page, "overlay"), palette, num_classes), expected)
    # At zero opacity the overlay is the input image itself.
    page.get_by_label("Overlay opacity in percent").fill("0")
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
    assert np.abs(canvas_rgb(page, "overlay").astype(np.int16) - rgb).mean() < 2.0
    page.get_by_label("Overlay opacity in percent").fill("60")
    assert page.locator("#opacity-value").inner_text() == "60%"

    # Legend: exactly the classes of the API's JSON answer, with their names and pixel shares.
    items = page.locator("#legend li")
    legend = {
        int(item.get_attribute("data-class-id")): (
            item.locator(".name").inner_text(),
            float(item.locator(".share").inner_text().rstrip("%")),
        )
        for item in items.all()
    }
    assert set(legend) == set(names) == set(np.unique(expected).tolist())
    for entry in classes:
        assert legend[entry["id"]][0] == entry["name"]
        assert legend[entry["id"]][1] == pytest.approx(100 * entry["fraction"], abs=0.051)

    # Hovering names the class under the pointer.
    page.locator("#labels").scroll_into_view_if_needed()
    box = page.locator("#labels").bounding_box()
    height, width = expected.shape
    for class_id, name in names.items():
        ys, xs = np.nonzero(interior(expected == class_id))
        if ys.size == 0:
            continue
        y, x = int(ys[ys.size // 2]), int(xs[ys.size // 2])
        page.mouse.move(
            box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height
        )
        hover = re.fullmatch(r"\((\d+), (\d+)\): (.+)", page.locator("#hover").inner_text())
        assert hover is not None
        assert abs(int(hover[1]) - x) <= 1 and abs(int(hover[2]) - y) <= 1
        assert hover[3] == name

    # The timings come from the response headers; the model line from /v1/model.
    terms = page.locator("#timings dt").all_inner_texts()
    timings = dict(zip(terms, page.locator("#timings dd").all_inner_texts(), strict=True))
    assert timings["Model"] == api_response.headers["X-Model"]
    assert int(timings["Batch size"]) >= 1
    assert re.fullmatch(r"\d+(\.\d+)? ms", timings["Queue"])
    assert re.fullmatch(r"\d+(\.\d+)? ms", timings["Inference"])
    assert timings["Image"] == f"{width} × {height}"
    model_line = page.locator("#model").inner_text()
    assert model_info["name"] in model_line and model_info["backend"] in model_line

    page.screenshot(path=str(tmp_path / "web-page.png"), full_page=True)
    assert Image.open(tmp_path / "web-page.png").width == 1280

    if "FCN_MODEL" not in os.environ:  # the demo model is trained on such scenes: the page shows the truth
        valid = truth != 255
        assert (expected[valid] == truth[valid]).mean() >= 0.8


def test_downloads_are_the_api_answers(
    page: Any, server: Any, scene: tuple[bytes, np.ndarray], tmp_path: Path
) -> None:
    data, _ = scene
    expected, _, _ = api_labels(server, data)
    upload(page, data, tmp_path)
    wait_for(page, "done")

    with page.expect_download() as png_download:
        page.get_by_role("button", name="Download label PNG").click()
    assert png_download.value.suggested_filename == "scene-labels.png"
    np.testing.assert_array_equal(np.asarray(Image.open(png_download.value.path())), expected)

    with page.expect_download() as json_download:
        page.get_by_role("button", name="Download JSON").click()
    assert json_download.value.suggested_filename == "scene-labels.json"
    answer = json.loads(Path(json_download.value.path()).read_text())
    assert (answer["height"], answer["width"]) == expected.shape
    assert sorted(c["id"] for c in answer["classes"]) == np.unique(expected).tolist()


def test_api_errors_are_shown_as_the_api_message(
    page: Any, server: Any, scene: tuple[bytes, np.ndarray], tmp_path: Path
) -> None:
    upload(page, scene[0], tmp_path)
    wait_for(page, "done")
    assert page.locator("#result").is_visible()

    # Too large (dropped): the API's message, but for the body size (the browser's multipart differs).
    big = noise_png(server.max_body_bytes)
    response = api_segment(server, big, "png")
    assert response.status_code == 413
    page.evaluate(DROP, [base64.b64encode(big).decode(), "big.png", "image/png"])
    shown = shown_error(page, 413)
    assert re.sub(r"\d+", "N", shown) == re.sub(r"\d+", "N", f"{response.json()['detail']} (HTTP 413)")
    assert page.locator("#result").is_hidden()  # no stale result under the error

    # Undecodable (chosen) and unsupported (dropped): exactly the API's message.
    ppm = io.BytesIO()
    Image.new("RGB", (8, 8)).save(ppm, format="PPM")
    cases = [
        (400, b"this is not an image", "notes.png", "image/png"),
        (415, ppm.getvalue(), "tiny.ppm", "image/x-portable-pixmap"),
    ]
    for status, data, name, media_type in cases:
        response = api_segment(server, data, "png", name=name, media_type=media_type)
        assert response.status_code == status
        if name.endswith(".png"):
            upload(page, data, tmp_path, name=name)
        else:
            page.evaluate(DROP, [base64.b64encode(data).decode(), name, media_type])
        assert shown_error(page, status) == f"{response.json()['detail']} (HTTP {status})"


def test_paste_on_a_phone_width_screen(page: Any, scene: tuple[bytes, np.ndarray], tmp_path: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    data, _ = scene
    page.evaluate(PASTE, [base64.b64encode(data).decode(), "pasted.png", "image/png"])
    wait_for(page, "done")
    assert page.locator("#legend li").count() >= 2
    # Nothing wider than the screen; the two views stack.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    overlay, labels = page.locator("#overlay").bounding_box(), page.locator("#labels").bounding_box()
    assert labels["y"] >= overlay["y"] + overlay["height"]
    assert overlay["width"] <= 390
    page.screenshot(path=str(tmp_path / "web-page-phone.png"), full_page=True)


def test_api_key_entered_on_the_page(
    browser: Any, keyed_server: Any, scene: tuple[bytes, np.ndarray], tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(f"{keyed_server.url}/")
        # Without the key the API's 401 message shows and the key field opens.
        page.wait_for_function("document.getElementById('model').textContent.includes('HTTP 401')")
        assert "X-API-Key" in page.locator("#model").inner_text()
        key = page.get_by_label("Sent as X-API-Key when the server requires one")
        assert key.is_visible()
        key.fill(keyed_server.api_key)
        key.press("Enter")
        page.wait_for_function("document.getElementById('model').textContent.startsWith('Model:')")
        upload(page, scene[0], tmp_path)
        wait_for(page, "done")
        assert page.locator("#legend li").count() >= 2
    finally:
        page.close()


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def palette_png(indices: np.ndarray, depth: int) -> bytes:
    """A palette PNG of ``indices`` at bit ``depth``, row ``y`` written with PNG filter ``y % 5``.

    Pillow only writes unfiltered palette rows; this exercises every filter and the packed bit depths.
    """
    height, width = indices.shape
    per_byte = 8 // depth
    rows = []
    for row in indices:
        packed = bytearray((width * depth + 7) // 8)
        for x, value in enumerate(row):
            packed[x // per_byte] |= int(value) << (8 - depth - (x % per_byte) * depth)
        rows.append(bytes(packed))
    stream = bytearray()
    for y, row in enumerate(rows):
        kind, prev = y % 5, rows[y - 1] if y else bytes(len(row))
        out = bytearray()
        for x, value in enumerate(row):
            a, b, c = (row[x - 1] if x else 0), prev[x], (prev[x - 1] if x else 0)
            predictor = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
            out.append((value - predictor) & 0xFF)
        stream += bytes([kind]) + out

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    palette = bytes(7 * i % 256 for i in range(3 * (1 << depth)))
    header = struct.pack(">IIBBBBB", width, height, depth, 3, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"PLTE", palette)
        + chunk(b"IDAT", zlib.compress(bytes(stream)))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
def test_page_decodes_every_png_filter_and_bit_depth(page: Any, depth: int) -> None:
    indices = np.random.default_rng(depth).integers(0, 1 << depth, (11, 37), dtype=np.uint8)
    decoded = page.evaluate(
        """async (b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const png = await decodeLabelPng(bytes.buffer);
          return { ...png, labels: Array.from(png.labels) };
        }""",
        base64.b64encode(palette_png(indices, depth)).decode(),
    )
    assert (decoded["height"], decoded["width"]) == indices.shape
    np.testing.assert_array_equal(np.array(decoded["labels"]).reshape(indices.shape), indices)
    assert decoded["palette"][1] == [21, 28, 35]  # entry i is (21 i, 21 i + 7, 21 i + 14) mod 256
