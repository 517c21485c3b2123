"""Save a screenshot of the web page with a sample scene segmented by the demo model (for docs/).

    .venv/bin/python -m tests.browser.screenshot            # writes docs/screenshot.png

It starts the same server and headless Chromium as the browser tests.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, run_server
from tests.browser.helpers import open_page, wait_for
from tests.serverproc import REPO_ROOT

SAMPLE = "heldout-002.png"
"""The sample shown: four classes."""


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshot.png")
    parser.add_argument("--sample", default=SAMPLE, help="file name under server/static/samples/")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as workdir,
        run_server(Path(workdir)) as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        with open_page(browser, server) as page:
            page.locator(f"button.sample[data-file='{args.sample}']").click()
            wait_for(page, "done")
            page.locator("#labels").scroll_into_view_if_needed()
            box = page.locator("#labels").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
            page.mouse.move(0, 0)  # no hover highlight on the buttons; the hover line keeps its text
            page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
