"""Downloads from a local HTTP server: resume, redirects, Range ignored, checksums, Google Drive pages."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.training.file_server import FileServer, Routes
from training.download import ChecksumError, Digest, DownloadError, download
from training.gdrive import confirmation_url

PAYLOAD = bytes(range(256)) * 1200  # 300 KiB: several 1 MiB-chunk-free reads, cut mid-way


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def _sha1(data: bytes) -> Digest:
    return Digest("sha1", hashlib.sha1(data).hexdigest())


def test_download_follows_redirects_and_returns_all_digests(tmp_path: Path) -> None:
    routes = Routes(files={"/files/net.bin": PAYLOAD}, redirects={"/net.bin": "/files/net.bin"})
    with FileServer(routes) as server:
        digests = download(server.url("/net.bin"), tmp_path / "net.bin", _sha1(PAYLOAD), progress=False)
    assert (tmp_path / "net.bin").read_bytes() == PAYLOAD
    assert not (tmp_path / "net.bin.partial").exists()
    assert digests == {
        "md5": hashlib.md5(PAYLOAD).hexdigest(),
        "sha1": hashlib.sha1(PAYLOAD).hexdigest(),
        "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
    }
    assert routes.requests == [("/net.bin", None), ("/files/net.bin", None)]


def test_cut_connection_is_resumed_with_a_range_request(tmp_path: Path) -> None:
    cut = 100_000
    routes = Routes(files={"/net.bin": PAYLOAD}, cut_after={"/net.bin": [cut]})
    with FileServer(routes) as server:
        download(server.url("/net.bin"), tmp_path / "net.bin", _sha1(PAYLOAD), progress=False)
    assert (tmp_path / "net.bin").read_bytes() == PAYLOAD
    assert routes.requests == [("/net.bin", None), ("/net.bin", f"bytes={cut}-")]


def test_partial_file_of_an_earlier_run_is_resumed(tmp_path: Path) -> None:
    (tmp_path / "net.bin.partial").write_bytes(PAYLOAD[:12345])
    routes = Routes(files={"/x/net.bin": PAYLOAD}, redirects={"/net.bin": "/x/net.bin"})
    with FileServer(routes) as server:
        download(server.url("/net.bin"), tmp_path / "net.bin", _sha1(PAYLOAD), progress=False)
    assert (tmp_path / "net.bin").read_bytes() == PAYLOAD
    assert routes.requests == [("/net.bin", "bytes=12345-"), ("/x/net.bin", "bytes=12345-")]  # Range kept


def test_server_ignoring_range_restarts_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "net.bin.partial").write_bytes(b"stale bytes from another file")
    routes = Routes(files={"/net.bin": PAYLOAD}, ignore_range={"/net.bin"})
    with FileServer(routes) as server:
        download(server.url("/net.bin"), tmp_path / "net.bin", _sha1(PAYLOAD), progress=False)
    assert (tmp_path / "net.bin").read_bytes() == PAYLOAD
    assert "did not resume at byte 29; starting again" in capsys.readouterr().out


def test_complete_partial_file_gets_416_and_is_verified(tmp_path: Path) -> None:
    (tmp_path / "net.bin.partial").write_bytes(PAYLOAD)
    routes = Routes(files={"/net.bin": PAYLOAD})
    with FileServer(routes) as server:
        download(server.url("/net.bin"), tmp_path / "net.bin", _sha1(PAYLOAD), progress=False)
    assert (tmp_path / "net.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_partial_file_and_names_the_expected_checksum(tmp_path: Path) -> None:
    expected = Digest("sha1", "c449ea74dd7d83751d1357d6a8c323fcf4038962")
    routes = Routes(files={"/net.bin": PAYLOAD})
    with FileServer(routes) as server, pytest.raises(ChecksumError) as info:
        download(server.url("/net.bin"), tmp_path / "net.bin", expected, progress=False)
    message = str(info.value)
    assert "expected sha1 c449ea74dd7d83751d1357d6a8c323fcf4038962" in message
    assert f"got sha1 {hashlib.sha1(PAYLOAD).hexdigest()}" in message
    assert list(tmp_path.iterdir()) == []


def test_connection_cut_without_progress_keeps_the_partial_file_for_the_next_run(tmp_path: Path) -> None:
    routes = Routes(files={"/net.bin": PAYLOAD}, cut_after={"/net.bin": [1000, 0, 0]})
    with FileServer(routes) as server:
        with pytest.raises(DownloadError, match=r"connection lost .*1000 bytes kept in .* run again"):
            download(server.url("/net.bin"), tmp_path / "net.bin", _sha1(PAYLOAD), retries=1, progress=False)
        assert (tmp_path / "net.bin.partial").read_bytes() == PAYLOAD[:1000]
        download(server.url("/net.bin"), tmp_path / "net.bin", _sha1(PAYLOAD), progress=False)
    assert (tmp_path / "net.bin").read_bytes() == PAYLOAD
    assert [r for _, r in routes.requests] == [None, "bytes=1000-", "bytes=1000-", "bytes=1000-"]


def test_unreachable_server_and_error_status_raise_download_error(tmp_path: Path) -> None:
    routes = Routes(status={"/gone.bin": 404, "/blocked.bin": 403})
    with FileServer(routes) as server:
        for path, status in (("/gone.bin", "404"), ("/blocked.bin", "403")):
            with pytest.raises(DownloadError, match=f"HTTP {status}") as info:
                download(server.url(path), tmp_path / "x.bin", progress=False)
            assert info.value.url == server.url(path)
        closed = server.url("/x.bin")
    with pytest.raises(DownloadError) as info:
        download(closed, tmp_path / "x.bin", progress=False)
    assert info.value.url == closed
    assert not (tmp_path / "x.bin").exists()


DRIVE_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/download" method="get">
<input type="submit" value="Download anyway"/>
<input type="hidden" name="id" value="1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI">
<input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t">
<input type="hidden" name="uuid" value="4c3a">
</form></body></html>"""


def test_google_drive_confirmation_page_is_followed(tmp_path: Path) -> None:
    confirmed = "/download?id=1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI&export=download&confirm=t&uuid=4c3a"
    routes = Routes(
        redirects={"/uc?id=1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI": "/warning"},
        pages={"/warning": DRIVE_PAGE},
        files={confirmed: PAYLOAD},
        cut_after={confirmed: [5000]},
    )
    with FileServer(routes) as server:
        url = server.url("/uc?id=1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI")
        expected = Digest("md5", hashlib.md5(PAYLOAD).hexdigest())
        download(url, tmp_path / "fcn8s_from_caffe.pth", expected, progress=False)
    assert (tmp_path / "fcn8s_from_caffe.pth").read_bytes() == PAYLOAD
    assert routes.requests[-2:] == [(confirmed, None), (confirmed, "bytes=5000-")]  # the confirmed URL


def test_older_drive_link_and_plain_html_pages() -> None:
    page = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=Xy_9&amp;id=ABC">Download</a>'
    assert confirmation_url(page, "https://drive.google.com/uc?id=ABC") == (
        "https://drive.google.com/uc?export=download&confirm=Xy_9&id=ABC"
    )
    assert confirmation_url("<html><body>Quota exceeded</body></html>", "https://x/") is None


def test_html_page_without_a_confirmation_is_an_error(tmp_path: Path) -> None:
    routes = Routes(pages={"/net.bin": "<html><body>Too many users have viewed this file</body></html>"})
    with FileServer(routes) as server, pytest.raises(DownloadError, match="an HTML page, not the file"):
        download(server.url("/net.bin"), tmp_path / "net.bin", progress=False)
    assert not (tmp_path / "net.bin").exists()
