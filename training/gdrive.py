"""Google Drive's "can't scan this file for viruses" page: the URL that confirms the download.

For files over ~100 MB, ``https://drive.google.com/uc?id=ID`` answers with an HTML page instead of the
file. Newer pages hold a form (``action=".../download"`` with hidden ``id``, ``export``, ``confirm``,
``uuid`` inputs); older ones a link carrying ``confirm=TOKEN`` (with a ``download_warning`` cookie, which
the downloader's cookie jar keeps). Either becomes the next URL to request.
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlencode, urljoin


class _ConfirmPage(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.inputs: dict[str, str] = {}
        self.link: str | None = None
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "form" and self.action is None and "action" in values:
            self.action, self._in_form = values["action"], True
        elif tag == "input" and self._in_form and values.get("type") == "hidden" and "name" in values:
            self.inputs[values["name"]] = values.get("value", "")
        elif tag == "a" and self.link is None and "confirm=" in values.get("href", ""):
            self.link = values["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def confirmation_url(html: str, page_url: str) -> str | None:
    """The URL that fetches the file behind a Drive confirmation page, or None if the page has none."""
    page = _ConfirmPage()
    page.feed(html)
    if page.action is not None and "confirm" in page.inputs:
        return f"{urljoin(page_url, page.action)}?{urlencode(page.inputs)}"
    if page.link is not None:
        return urljoin(page_url, page.link)
    return None
