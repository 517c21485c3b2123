"""One file from a URL into a cache, verified: resume, redirects, a pinned checksum, atomic rename.

The bytes go to ``<dest>.partial``. A cut connection is resumed with an HTTP ``Range`` request (a server
that ignores it and answers 200 restarts the file); the partial file stays on disk when every retry fails,
so running the command again resumes it. Only once the whole file's checksum equals the expected one is it
renamed to ``dest`` (``os.replace``); a mismatch deletes the partial file. Redirects are followed; an HTML
page where a model file was expected is either a Google Drive confirmation page (followed, see
``training.gdrive``) or an error.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import HTTPCookieProcessor, OpenerDirector, Request, build_opener

from tqdm import tqdm

from training.gdrive import confirmation_url

ALGORITHMS = ("md5", "sha1", "sha256")
CHUNK = 1 << 20
USER_AGENT = "fcn8s-serving/0.1 (python urllib)"
MAX_HTML_HOPS = 3


@dataclass(frozen=True)
class Digest:
    """An expected checksum: ``algorithm`` is one of ``md5``, ``sha1``, ``sha256``; ``value`` is hex."""

    algorithm: str
    value: str

    def __str__(self) -> str:
        return f"{self.algorithm} {self.value}"


class DownloadError(RuntimeError):
    """The file could not be fetched (network, HTTP status, an HTML page instead of the file)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected checksum (the partial file was deleted)."""


class _Interrupted(Exception):
    """The body ended early; what arrived is on disk."""


def file_digests(path: Path, algorithms: tuple[str, ...] = ALGORITHMS) -> dict[str, str]:
    """Hex digests of a file's bytes for each algorithm, in one pass."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            for digest in hashes.values():
                digest.update(block)
    return {name: digest.hexdigest() for name, digest in hashes.items()}


def _opener() -> OpenerDirector:
    """urllib with redirects (default handler) and a cookie jar (Google Drive's download_warning)."""
    return build_opener(HTTPCookieProcessor(CookieJar()))


def _resume_start(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def _fetch(opener: OpenerDirector, url: str, partial: Path, timeout: float, progress: bool) -> str | None:
    """One request: append to (or restart) ``partial``. Returns the next URL for a Drive confirmation page.

    Raises DownloadError for a failure a retry would not fix and _Interrupted for a cut connection.
    """
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = opener.open(Request(url, headers=headers), timeout=timeout)
    except HTTPError as error:
        if error.code == 416 and offset:  # nothing after offset: the partial file is (at least) complete
            return None
        raise DownloadError(url, f"HTTP {error.code} {error.reason}") from None
    except (URLError, OSError) as error:
        raise DownloadError(url, str(getattr(error, "reason", error))) from None
    with response:
        if response.headers.get_content_type() == "text/html":
            page = response.read(1 << 20).decode("utf-8", errors="replace")
            follow = confirmation_url(page, response.url)
            if follow is None:
                raise DownloadError(url, "an HTML page, not the file (quota exceeded or sign-in needed?)")
            return follow
        if response.status == 206:
            if _resume_start(response.headers.get("Content-Range")) != offset:
                partial.unlink(missing_ok=True)
                raise _Interrupted(f"asked to resume at byte {offset}, the server sent another range")
            mode = "ab"
        else:
            if offset:
                print(f"{url}: the server did not resume at byte {offset}; starting again", flush=True)
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        written = offset
        with (
            partial.open(mode) as handle,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=partial.name.removesuffix(".partial"), disable=not progress, leave=False,
            ) as bar,
        ):  # fmt: skip
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    handle.write(block)
                    written += len(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, OSError) as error:
                raise _Interrupted(str(error)) from None
        if total is not None and written < total:
            raise _Interrupted(f"{written} of {total} bytes")
    return None


def download(
    url: str,
    dest: Path,
    expected: Digest | None = None,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict[str, str]:
    """Download ``url`` to ``dest`` (resuming ``dest.partial``); returns the file's md5/sha1/sha256.

    Raises ChecksumError (partial file deleted) if the bytes do not match ``expected``, DownloadError if the
    server cannot be reached, answers with an error status, or the connection is cut ``retries`` times in a
    row without progress (the partial file is kept for the next run).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    opener = _opener()
    failures = hops = 0
    while True:
        before = partial.stat().st_size if partial.exists() else 0
        try:
            follow = _fetch(opener, url, partial, timeout, progress)
        except _Interrupted as cut:
            after = partial.stat().st_size if partial.exists() else 0
            failures = failures + 1 if after <= before else 1
            if failures > retries:
                raise DownloadError(
                    url, f"connection lost ({cut}); {after} bytes kept in {partial}, run again to resume"
                ) from None
            print(f"{url}: connection lost after {after} bytes ({cut}); resuming", flush=True)
            continue
        if follow is None:
            break
        hops += 1
        if hops > MAX_HTML_HOPS:
            raise DownloadError(url, f"still an HTML page after {MAX_HTML_HOPS} confirmations")
        url = follow
    digests = file_digests(partial)
    if expected is not None and digests[expected.algorithm] != expected.value.lower():
        partial.unlink()
        raise ChecksumError(
            url,
            f"checksum mismatch: expected {expected}, got {expected.algorithm} "
            f"{digests[expected.algorithm]}; deleted {partial}",
        )
    os.replace(partial, dest)
    return digests
