"""The web page's choices: the shipped sample scenes (one click each) and the model selector."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import httpx
import numpy as np
import pytest

from tests.browser.helpers import TWO_MODELS, api_labels, canvas_rgb, colours_to_ids, open_page, wait_for
from training.samples import MANIFEST, SAMPLES_DIR
from training.synth import make_scene, scene_rng

pytestmark = pytest.mark.browser

SHOWN_RESULT = """([model, version]) => {
  const terms = [...document.querySelectorAll("#timings dt")].map((e) => e.textContent);
  const values = [...document.querySelectorAll("#timings dd")].map((e) => e.textContent);
  const row = (term) => values[terms.indexOf(term)];
  return document.body.dataset.state === "done" && row("Model") === model && row("Version") === version;
}"""


def timings(page: Any) -> dict[str, str]:
    terms = page.locator("#timings dt").all_inner_texts()
    return dict(zip(terms, page.locator("#timings dd").all_inner_texts(), strict=True))


def shipped_samples() -> list[dict[str, Any]]:
    return list(json.loads((SAMPLES_DIR / MANIFEST).read_text())["samples"])


def test_a_sample_scene_is_one_click(page: Any, server: Any) -> None:
    samples = shipped_samples()
    buttons = page.get_by_role("button", name=re.compile(r"^Sample scene "))
    buttons.first.wait_for()
    assert buttons.count() == len(samples) == 4
    note = page.locator("#samples").inner_text()
    assert "trained on synthetic shapes" in note and "docs/pretrained.md" in note
    assert page.locator("#model-choice").is_hidden()  # one model: nothing to choose

    sample = samples[1]
    expected, palette, response = api_labels(server, (SAMPLES_DIR / sample["file"]).read_bytes())
    page.get_by_role("button", name=f"Sample scene {sample['index']}: {', '.join(sample['classes'])}").click()
    wait_for(page, "done")

    # The label map is exactly the API's answer for the shipped file, the timings name the model.
    num_classes = len(httpx.get(f"{server.url}/v1/model", timeout=10).json()["classes"])
    np.testing.assert_array_equal(colours_to_ids(canvas_rgb(page, "labels"), palette, num_classes), expected)
    shown = timings(page)
    assert shown["Model"] == response.headers["X-Model"]
    assert shown["Version"] == response.headers["X-Model-Version"]
    assert shown["Image"] == f"{sample['width']} × {sample['height']}"
    assert sample["file"] in page.locator("#status").inner_text()

    if "FCN_MODEL" not in os.environ:  # a held-out scene the demo model never saw, segmented well
        _, truth = make_scene(scene_rng(sample["seed"], sample["index"]), sample["height"], sample["width"])
        valid = truth != 255
        assert (expected[valid] == truth[valid]).mean() >= 0.8


def test_the_model_selector_chooses_the_model(browser: Any, two_model_server: Any) -> None:
    listing = httpx.get(f"{two_model_server.url}/v1/models", timeout=10).json()
    served = {m["model"]: str(m["version"]) for m in listing["models"]}
    assert served == {name: str(version) for name, version in TWO_MODELS.items()}
    first, second = sorted(served)
    assert listing["default"] == first

    with open_page(browser, two_model_server) as page:
        select = page.get_by_label("Model", exact=True)
        assert select.is_visible()
        options = select.locator("option")
        assert [o.get_attribute("value") for o in options.all()] == [m["model"] for m in listing["models"]]
        assert all(f"v{served[o.get_attribute('value')]}" in o.inner_text() for o in options.all())
        assert select.input_value() == listing["default"]
        assert f"{first} v{served[first]}" in page.locator("#model").inner_text()

        sample = shipped_samples()[0]
        data = (SAMPLES_DIR / sample["file"]).read_bytes()
        page.locator(f"button.sample[data-file='{sample['file']}']").click()
        page.wait_for_function(SHOWN_RESULT, arg=[first, served[first]], timeout=60_000)

        # Choosing the second model segments the image on screen again, with that model.
        select.select_option(second)
        page.wait_for_function(SHOWN_RESULT, arg=[second, served[second]], timeout=60_000)
        assert f"{second} v{served[second]}" in page.locator("#model").inner_text()
        expected, palette, response = api_labels(two_model_server, data, model=second)
        assert response.headers["X-Model"] == second
        info = httpx.get(f"{two_model_server.url}/v1/model", params={"model": second}, timeout=10).json()
        num_classes = len(info["classes"])
        np.testing.assert_array_equal(
            colours_to_ids(canvas_rgb(page, "labels"), palette, num_classes), expected
        )

        # The JSON download asks the model version that made the label map on screen.
        with page.expect_request(re.compile(r"/segment\?format=json")) as request, page.expect_download():
            page.get_by_role("button", name="Download JSON").click()
        assert f"model={second}&version={served[second]}" in request.value.url
