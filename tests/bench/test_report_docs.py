"""The documentation: docs/benchmarks.md's generated section is current, and every relative link resolves.

Regenerate the section with ``python -m bench.report --write docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS_DOC = ROOT / "docs" / "benchmarks.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]

PENDING_PAGES = {ROOT / "docs" / "configuration.md", ROOT / "docs" / "pretrained.md"}
"""Pages written on other branches (configuration.md is generated from the Settings class, pretrained.md
comes with the weight conversion). Links to them may dangle only until they exist; once a page is in the
tree its links and anchors are checked like any other."""

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def relative_links(page: Path) -> list[str]:
    """Every link and image target of ``page`` that is not an absolute URL."""
    targets = []
    for line in _prose_lines(page.read_text()):
        for target in LINK.findall(line):
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto: ...
                targets.append(target)
    return targets


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of every heading of ``page`` (repeated headings get -1, -2, ... as on GitHub)."""
    seen: Counter[str] = Counter()
    found = set()
    fenced = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            anchor = github_anchor(match.group(2))
            found.add(anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}")
            seen[anchor] += 1
    return found


def test_benchmarks_page_matches_the_results() -> None:
    """The committed generated section equals what bench.report writes from bench/results/*/."""
    expected = report.updated_doc(BENCHMARKS_DOC, report.RESULTS_ROOT)
    assert BENCHMARKS_DOC.read_text() == expected, (
        "docs/benchmarks.md is out of date: run python -m bench.report --write docs/benchmarks.md"
    )
    assert report.main(["--check", str(BENCHMARKS_DOC)]) == 0


def test_every_result_file_and_plot_is_on_the_benchmarks_page() -> None:
    page = BENCHMARKS_DOC.read_text()
    results = sorted(report.RESULTS_ROOT.glob("*/*.json")) + sorted(report.RESULTS_ROOT.glob("*/*.png"))
    assert results, "no results under bench/results/"
    for path in results:
        link = Path("..", path.relative_to(ROOT)).as_posix()
        assert f"]({link})" in page, f"{link} is not linked from docs/benchmarks.md"


def test_write_replaces_only_the_marked_section(tmp_path: Path) -> None:
    results = tmp_path / "results" / "test-machine"
    results.mkdir(parents=True)
    for name in ("forward.json", "soak.json", "forward.png"):
        shutil.copy(report.RESULTS_ROOT / "amd-epyc-2c-avx2" / name, results / name)
    (results / "unrelated.json").write_text(json.dumps({"something": "else"}))
    doc = tmp_path / "docs" / "page.md"
    doc.parent.mkdir()
    doc.write_text(
        f"# Page\n\nprose before\n\n{report.BEGIN_MARK}\nstale\n{report.END_MARK}\n\nprose after\n"
    )

    assert report.main(["--check", str(doc), "--results", str(tmp_path / "results")]) == 1
    assert report.main(["--write", str(doc), "--results", str(tmp_path / "results")]) == 0
    text = doc.read_text()
    assert text.startswith("# Page\n\nprose before\n\n") and text.endswith(
        f"{report.END_MARK}\n\nprose after\n"
    )
    assert "stale" not in text and "### `test-machine`" in text
    assert text.index("#### Forward pass") < text.index("#### Soak")  # forward, http, INT8, soak
    assert "](../results/test-machine/forward.png)" in text and "unrelated" not in text
    assert "| requests sent / answered |" in text
    assert report.main(["--check", str(doc), "--results", str(tmp_path / "results")]) == 0
    assert report.updated_doc(doc, tmp_path / "results") == text  # idempotent


@pytest.mark.parametrize("body", ["no markers\n", f"{report.END_MARK}\n{report.BEGIN_MARK}\n"])
def test_write_refuses_a_page_without_its_markers(tmp_path: Path, body: str) -> None:
    doc = tmp_path / "page.md"
    doc.write_text(body)
    assert report.main(["--write", str(doc)]) == 1
    assert doc.read_text() == body


def test_plain_listing_still_prints_one_folder() -> None:
    text = report.render(report.RESULTS_ROOT / "amd-epyc-2c-avx2")
    assert "#### `forward.json`" in text and "| batching | c=1 |" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    """Every relative link of README.md and docs/*.md names a file in the repository (and a heading in it)."""
    problems = []
    for target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.exists():
            if path not in PENDING_PAGES:
                problems.append(f"{target}: no such file")
            continue
        if fragment and path.suffix == ".md" and fragment not in anchors(path):
            problems.append(f"{target}: no heading #{fragment} in {path.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_readme_is_one_screen_and_links_every_docs_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make serve" in text and "make test" in text
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(ROOT / "README.md")}
    for page in [*DOCS, *PENDING_PAGES]:
        assert page in linked, f"README.md does not link {page.relative_to(ROOT)}"


def test_no_page_copies_the_settings_by_hand() -> None:
    """Server settings are listed once, in the generated docs/configuration.md: no other page has a table
    row per setting."""
    from server.settings import Settings

    names = {f"FCN_{name.upper()}" for name in Settings.model_fields}
    for page in PAGES:
        if page.name == "configuration.md":
            continue
        for line in _prose_lines(page.read_text()):
            first_cell = line.strip().split("|")[1] if line.strip().startswith("|") else ""
            assert not names & set(re.findall(r"FCN_[A-Z0-9_]+", first_cell)), f"{page.name}: {line.strip()}"


def test_the_link_checker_finds_what_it_should(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A `code` title (x)\n\n[ok](other.md#the-heading) ![img](pic.png) [web](https://example.com)\n"
        "`[not](a-link.md)`\n```\n[also not](in-code.md)\n```\n## A `code` title (x)\n"
    )
    assert relative_links(page) == ["other.md#the-heading", "pic.png"]
    assert anchors(page) == {"a-code-title-x", "a-code-title-x-1"}
    assert github_anchor("Triton Inference Server (`python -m export.triton`)") == (
        "triton-inference-server-python--m-exporttriton"
    )
