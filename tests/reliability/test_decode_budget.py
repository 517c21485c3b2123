"""The decode budget (``server/imaging.py``, ``server/structure.py``) against the bombs of issue #18.

Structures that make decoding expensive are refused from the headers (JPEG scans and markers, PNG
chunks, GIF blocks, TIFF tiles, strips and directory entries, RLE BMP data, decoded bytes per pixel);
high-bit-depth images are reduced to 8 bits in proportion to their size; decoding stops when the
request's deadline passes or its client leaves; MPO (phone photos) is decoded as its first picture.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from server import structure
from server.errors import status_of
from server.imaging import (
    MAX_PARTS,
    Budget,
    DecodeCancelled,
    DecodeDeadline,
    DecodeLimits,
    DecodeTooExpensive,
    ImageError,
    decode_image,
)

from . import bombs, inputs
from .fakes import FakeSpec
from .helpers import assert_clean_error, failures, metrics, post_image, wait_until
from .serverproc import ServerProcess, fake_server

DEFAULTS = DecodeLimits(40_000_000)
"""The server's default limits (FCN_MAX_PIXELS, FCN_MAX_JPEG_SCANS)."""


def cpu_seconds(action: Callable[[], object]) -> tuple[float, object]:
    """CPU seconds ``action`` took in this process, and what it returned or raised."""
    start = time.process_time()
    try:
        outcome: object = action()
    except Exception as exc:  # the outcome under test
        outcome = exc
    return time.process_time() - start, outcome


@pytest.mark.parametrize(
    "make",
    [bombs.progressive_scan_bomb, lambda: bombs.progressive_scan_bomb(refinement=True)],
    ids=["smallest-scan-x2000", "refinement-scan-x2000"],
)
def test_progressive_scan_bombs_are_refused_before_decoding(make: Callable[[], bytes]) -> None:
    """Issue #18.1: 2000 repeated scans cost 12 s and 81 s of CPU before; now a 413 from the markers."""
    data = make()
    seconds, outcome = cpu_seconds(lambda: decode_image(data, DEFAULTS))
    assert isinstance(outcome, DecodeTooExpensive) and status_of(outcome) == 413, outcome
    assert "more than 32 scans" in outcome.detail
    assert seconds < 0.2


def test_tiff_tile_bomb_is_refused_from_its_tags() -> None:
    """Issue #18.3: one 16384² tile in a 64² TIFF cost 3.3 s and +771 MiB before."""
    data = bombs.tiff_tile_bomb()
    seconds, outcome = cpu_seconds(lambda: decode_image(data, DEFAULTS))
    assert isinstance(outcome, DecodeTooExpensive) and status_of(outcome) == 413, outcome
    assert "TIFF tile of 16384x16384 needs 805306368 bytes" in outcome.detail
    assert seconds < 0.2
    small_tile = decode_image(bombs.tiff_tile_bomb(100, 70, 128), DEFAULTS)  # an ordinary tile: decoded
    assert small_tile.shape == (70, 100, 3) and small_tile.max() == 0


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda: bombs.jpeg_marker_spam(MAX_PARTS + 1), "marker segments"),
        (lambda: bombs.png_chunk_spam(MAX_PARTS + 1), "chunks"),
        (lambda: bombs.gif_block_spam(MAX_PARTS + 1), "extension blocks"),
        (lambda: bombs.tiff_strip_spam(MAX_PARTS + 1), "strips or tiles"),
        (lambda: bombs.bmp_rle_runs(800, 700), "run-length-encoded BMP"),
    ],
    ids=["jpeg-markers", "png-chunks", "gif-blocks", "tiff-strips", "bmp-rle"],
)
def test_files_of_too_many_parts_are_refused_before_pillow_walks_them(
    make: Callable[[], bytes], what: str
) -> None:
    """Pillow walks these parts in Python (the 18 MB versions cost 4.5 to 57 s of CPU before)."""
    data = make()
    seconds, outcome = cpu_seconds(lambda: decode_image(data, DEFAULTS))
    assert isinstance(outcome, DecodeTooExpensive) and status_of(outcome) == 413, outcome
    assert what in outcome.detail
    assert seconds < 0.5
    fewer = {"marker segments": bombs.jpeg_marker_spam, "chunks": bombs.png_chunk_spam}.get(what)
    if fewer is not None:  # just under the limit is still an image
        assert decode_image(fewer(1000), DEFAULTS).shape == (16, 16, 3)


@pytest.mark.parametrize("mode", ["F", "I"])
def test_decoded_bytes_count_bytes_per_pixel(mode: str) -> None:
    """Issue #18.2: a 6300² float or int32 TIFF (159 MB decoded) is over the 120 MB of 40 M RGB pixels."""
    data = bombs.tiff_zeros(mode)
    seconds, outcome = cpu_seconds(lambda: decode_image(data, DEFAULTS))
    assert isinstance(outcome, ImageError) and status_of(outcome) == 413, outcome
    assert f"6300x6300 {mode} = 158760000 bytes decoded; the limit is 120000000 bytes" in outcome.detail
    assert seconds < 0.2
    limits = DecodeLimits(40_000)  # 120 000 bytes: a 180² grey image fits, the same size in float does not
    assert decode_image(inputs.encode(Image.new("L", (180, 180)), "PNG"), limits).shape == (180, 180, 3)
    with pytest.raises(ImageError, match="bytes decoded"):
        decode_image(inputs.encode(Image.new(mode, (180, 180)), "TIFF"), limits)


def test_high_bit_depth_conversion_is_memory_proportional() -> None:
    """Issue #18.2: the 77 KB 16-bit 6300² PNG cost +1061 MiB (float64 copies) and 3.5 s before; two at
    once +1907 MiB. Measured in a fresh process (peak RSS growth of the decode alone)."""
    data = bombs.png16_zeros()
    one = bombs.measure(data)
    assert one["outcome"] == "decoded"
    assert one["rss_delta_mb"] < 250 and one["cpu_s"] < 2.0, one
    two = bombs.measure(data, parallel=2)
    assert two["rss_delta_mb"] < 450, two


def test_high_bit_depth_values_match_the_exact_scaling() -> None:
    """16-bit: round(v / 257); 32-bit integer and float: scaled from 0..65535 when the maximum is above
    255, else clipped to 0..255; NaN is 0 (as the float64 code before, without its copies)."""
    rng = np.random.default_rng(0)
    wide = rng.integers(-70_000, 140_000, (37, 29)).astype(np.int32)
    narrow = rng.integers(-300, 256, (37, 29)).astype(np.int32)
    floats = rng.uniform(-10, 70_000, (37, 29)).astype(np.float32)
    floats[0, :4] = [np.nan, np.inf, -np.inf, 65535.0]
    sixteen = rng.integers(0, 65536, (37, 29)).astype(np.uint16)
    cases = [(sixteen, "PNG", 65535), (wide, "TIFF", 65535), (narrow, "TIFF", 255), (floats, "TIFF", 65535)]
    for values, fmt, top in cases:
        decoded = decode_image(inputs.encode(Image.fromarray(values), fmt), DEFAULTS)[..., 0]
        with np.errstate(invalid="ignore"):
            reference = np.clip(values.astype(np.float64) / top * 255 + 0.5, 0, 255)
        reference = np.nan_to_num(reference, nan=0.0).astype(np.uint8)
        if values.dtype.kind == "f":  # float32 arithmetic: at most 1 apart at a rounding boundary
            assert np.abs(decoded.astype(int) - reference).max() <= 1
        else:
            np.testing.assert_array_equal(decoded, reference)


def test_mpo_is_decoded_as_its_first_picture() -> None:
    """Issue #18.8: phone photos (JPEG + further pictures, Pillow's MPO) were refused with 415."""
    data = bombs.mpo(64, 48)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    rgb = decode_image(data, DEFAULTS)
    assert rgb.shape == (48, 64, 3) and abs(int(rgb.mean()) - 40) <= 2  # the first picture is grey 40


def test_jpeg_walk_counts_scans_as_libjpeg_sees_them() -> None:
    """EXIF thumbnails and the later pictures of an MPO are not scanned; garbage before a marker and
    restart markers do not hide a scan."""
    photo = inputs.encode(Image.fromarray(inputs._rgb(64, 48)), "JPEG", progressive=True)
    scans = len(bombs.jpeg_scans(photo)[0])
    assert scans == 10 and structure.jpeg_parts(photo, MAX_PARTS, 1000).scans == scans
    thumbnail = inputs.encode(Image.new("L", (8, 8)), "JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x0201], exif[0x0202] = 0, len(thumbnail)  # a thumbnail pointer, and the thumbnail bytes in APP1
    with_thumbnail = photo[:2] + b"\xff\xe1" + (len(thumbnail) + 8).to_bytes(2, "big") + b"Exif\x00\x00"
    with_thumbnail += thumbnail + photo[2:]
    assert structure.jpeg_parts(with_thumbnail, MAX_PARTS, 1000).scans == scans
    second = bombs.progressive_scan_bomb(side=16, repeats=100)
    assert structure.jpeg_parts(photo + second, MAX_PARTS, 1000).scans == scans
    start, _ = bombs.jpeg_scans(photo)[0][3]
    garbage = photo[:start] + b"\x00\x12junk\xff\x00" + photo[start:]
    assert structure.jpeg_parts(garbage, MAX_PARTS, 1000).scans == scans
    restarts = inputs.encode(Image.fromarray(inputs._rgb(64, 48)), "JPEG", restart_marker_blocks=1)
    assert b"\xff\xd0" in restarts and structure.jpeg_parts(restarts, MAX_PARTS, 1000).scans == 1
    bomb_second = bombs.mpo(64, 48)
    assert structure.jpeg_parts(bomb_second + second, MAX_PARTS, 1000).scans == 1


def slow_jpeg() -> bytes:
    """A 1000² progressive JPEG with 60 000 repeated refinement scans (3.7 MB): about 60 s of CPU to
    decode in full, 1 ms per scan, so a 4 KiB piece (67 scans) takes about 0.07 s."""
    return bombs.progressive_scan_bomb(side=1000, repeats=60_000, refinement=True)


NO_SCAN_LIMIT = DecodeLimits(40_000_000, max_jpeg_scans=10**6)


def test_decoding_stops_at_the_deadline() -> None:
    data = slow_jpeg()
    with pytest.raises(DecodeDeadline):
        decode_image(data, NO_SCAN_LIMIT, Budget(time.monotonic() - 1))  # already passed: nothing decoded
    seconds, outcome = cpu_seconds(lambda: decode_image(data, NO_SCAN_LIMIT, Budget(time.monotonic() + 0.3)))
    assert isinstance(outcome, DecodeDeadline), outcome
    assert seconds < 2.0


def test_decoding_stops_when_cancelled_from_another_thread() -> None:
    data = slow_jpeg()
    budget = Budget()
    outcome: list[object] = []

    def decode() -> None:
        try:
            decode_image(data, NO_SCAN_LIMIT, budget)
        except DecodeCancelled as exc:
            outcome.append(exc)

    worker = threading.Thread(target=decode)
    started = time.perf_counter()
    worker.start()
    worker.join(0.3)
    assert worker.is_alive()  # still decoding
    budget.cancel()
    worker.join(10)
    assert not worker.is_alive() and isinstance(outcome[0], DecodeCancelled)
    assert time.perf_counter() - started < 3.0


# ---- over HTTP: the request's deadline and its client's disconnection stop the decoder ----

SLOW_DECODE_SETTINGS: dict[str, object] = {
    "max_pixels": 40_000_000,
    "max_body_bytes": 4_000_000,
    "max_jpeg_scans": 10**6,  # let the slow JPEG through the header checks: only the budget can stop it
    "deadline_ms": 2000,
    "codec_threads": 1,  # one decoder: a small image is served only once the slow one has stopped
}


@pytest.fixture(scope="module")
def slow_decoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with fake_server(tmp_path_factory.mktemp("slow-decode"), SLOW_DECODE_SETTINGS, FakeSpec()) as server:
        yield server


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (USER_HZ = 100)


def test_deadline_stops_a_slow_decode(slow_decoder: ServerProcess) -> None:
    """Issue #18.1: the quality-50 bomb ran 77 s and then got its 504; now the 504 comes at the deadline
    and the decoder stops with it."""
    data, cpu = slow_jpeg(), server_cpu_s(slow_decoder.proc.pid)
    with httpx.Client(timeout=30) as client:
        started = time.perf_counter()
        response = post_image(client, slow_decoder.url, data, "image/jpeg")
        assert "while decoding the image" in assert_clean_error(response, {504})
        assert time.perf_counter() - started < 5.0  # the 2 s deadline, on a busy machine
        small = post_image(client, slow_decoder.url, inputs.png(32, 32))  # the one decoder is free again
        assert small.status_code == 200, small.text
    assert server_cpu_s(slow_decoder.proc.pid) - cpu < 6.0  # not the 80 s a full decode takes


def test_client_that_leaves_stops_its_decode(slow_decoder: ServerProcess) -> None:
    """Issue #18.1: a client gave up after 2 s and the server still spent 11.8 s; a 32x32 PNG sent
    meanwhile waited 10.7 s. Now the disconnection stops the decoder."""
    data, cpu = slow_jpeg(), server_cpu_s(slow_decoder.proc.pid)
    before = failures(metrics(slow_decoder.url), "cancelled")
    impatient = httpx.Timeout(10, read=0.5)
    with httpx.Client(timeout=impatient) as client, pytest.raises(httpx.ReadTimeout):
        post_image(client, slow_decoder.url, data, "image/jpeg")
    assert wait_until(lambda: failures(metrics(slow_decoder.url), "cancelled") == before + 1, 5.0)
    with httpx.Client(timeout=5) as client:
        started = time.perf_counter()
        small = post_image(client, slow_decoder.url, inputs.png(32, 32))
        assert small.status_code == 200, small.text
        assert time.perf_counter() - started < 2.0
    assert server_cpu_s(slow_decoder.proc.pid) - cpu < 6.0
