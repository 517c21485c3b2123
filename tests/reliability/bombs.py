"""Decode bombs (small files that are expensive to decode) and what each costs the server's decode step.

    python -m tests.reliability.bombs                  # every bomb against this checkout
    python -m tests.reliability.bombs --root /work/main --only jpeg-scans png16-zeros

Each bomb is decoded by ``server.pipeline.prepare`` with the default settings in a fresh Python process
(``--root`` picks the checkout whose ``server`` package runs), which reports the CPU seconds of the
decode (``time.process_time``) and the growth of its peak RSS (``VmHWM`` reset just before the decode).
Every generator builds its file in memory in well under a second.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
BOMB_SIDE = 6300
"""6300 x 6300 = 39.69 M pixels: just under the default ``FCN_MAX_PIXELS`` of 40 M."""
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def jpeg_scans(data: bytes) -> tuple[list[tuple[int, int]], int]:
    """(start, end) of every scan (SOS segment + entropy-coded data) of a JPEG, and the EOI's offset."""
    scans: list[tuple[int, int]] = []
    pos = 2
    while data[pos + 1] != 0xD9:
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if data[pos + 1] == 0xDA:
            found = _NEXT_MARKER.search(data, end)
            assert found is not None, "scan without an end"
            end = found.start()
            scans.append((pos, end))
        pos = end
    return scans, pos


def progressive_scan_bomb(side: int = BOMB_SIDE, repeats: int = 2000, refinement: bool = False) -> bytes:
    """A grayscale progressive JPEG of zeros with one of its scans repeated ``repeats`` times before EOI.

    ``refinement=False`` repeats the first smallest scan (61 bytes, an AC first scan: about 5 ms per
    repeat at 6300x6300); ``refinement=True`` the last AC refinement scan (also 61 bytes, about 40 ms
    per repeat: the issue's 77 s variant).
    """
    data = _encode(Image.new("L", (side, side)), "JPEG", progressive=True, quality=75)
    scans, eoi = jpeg_scans(data)
    sizes = [end - start for start, end in scans]
    index = len(scans) - 1 - sizes[::-1].index(min(sizes)) if refinement else sizes.index(min(sizes))
    start, end = scans[index]
    return data[:eoi] + data[start:end] * repeats + data[eoi:]


def png16_zeros(side: int = BOMB_SIDE) -> bytes:
    """A 16-bit grayscale PNG of zeros (about 77 KB at 6300x6300)."""
    return _encode(Image.new("I;16", (side, side)), "PNG")


def tiff_zeros(mode: str, side: int = BOMB_SIDE) -> bytes:
    """A deflate-compressed TIFF of zeros in ``mode`` (``F`` = float32, ``I`` = int32, ``RGB``...)."""
    return _encode(Image.new(mode, (side, side)), "TIFF", compression="tiff_adobe_deflate")


def rgb_zeros_png(side: int = BOMB_SIDE) -> bytes:
    """An 8-bit RGB PNG of zeros: the ordinary image of the bombs' size, for comparison."""
    return _encode(Image.new("RGB", (side, side)), "PNG")


def zeros_deflate(size: int) -> bytes:
    """A zlib stream of ``size`` zero bytes, made in a fraction of a second: full flushes every 16 MiB
    leave the compressor in the same state, so every 16 MiB piece but the first compresses to the same
    bytes and is repeated instead of recompressed."""
    piece = 16 << 20
    if size < 2 * piece:
        return zlib.compress(bytes(size), 9)
    compressor = zlib.compressobj(9)
    zeros = bytes(piece)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    middle = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(size, piece)
    tail = zlib.compressobj(9)  # the last, partial piece from a fresh compressor, minus its zlib header
    last = (tail.compress(bytes(rest)) + tail.flush(zlib.Z_FULL_FLUSH))[2:] if rest else b""
    adler = 1
    for _ in range(whole):
        adler = zlib.adler32(zeros, adler)
    adler = zlib.adler32(bytes(rest), adler)
    return first + middle * (whole - 1) + last + b"\x03\x00" + struct.pack(">I", adler)


def tiff_tile_bomb(width: int = 64, height: int = 64, tile: int = 16384) -> bytes:
    """A little-endian RGB TIFF of ``width`` x ``height`` stored as ONE deflate tile of ``tile`` x ``tile``
    zeros (783 KB for the default 16384 tile, 768 MiB decoded)."""
    payload = zeros_deflate(tile * tile * 3)
    entries = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, None),  # BitsPerSample 8,8,8 (stored after the IFD)
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 2),  # Photometric: RGB
        (277, 3, 1, 3),  # SamplesPerPixel
        (284, 3, 1, 1),  # PlanarConfiguration: chunky
        (322, 4, 1, tile),  # TileWidth
        (323, 4, 1, tile),  # TileLength
        (324, 4, 1, None),  # TileOffsets
        (325, 4, 1, len(payload)),  # TileByteCounts
    ]
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + 12 * len(entries) + 4
    data_offset = bits_offset + 6
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {258: bits_offset, 324: data_offset}.get(tag, value)
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + struct.pack("<HHH", 8, 8, 8) + payload


def mpo(width: int = 64, height: int = 48, frames: int = 2) -> bytes:
    """A multi-picture JPEG (Pillow's ``MPO``, what many phone cameras write): frame i is uniform grey
    ``40 * (i + 1)``, so which picture was decoded is visible in the pixels."""
    images = [Image.new("RGB", (width, height), (40 * (i + 1),) * 3) for i in range(frames)]
    return _encode(images[0], "MPO", save_all=True, append_images=images[1:], quality=95)


def scans_at_limit(mode: str = "L", scans: int = 32, side: int = BOMB_SIDE) -> bytes:
    """A progressive JPEG of ``side``² whose last smallest scan (an AC refinement) is repeated up to
    ``scans`` scans in all: the most scans the default limit lets through. ``L`` is all zeros; ``RGB``
    is a smooth colour gradient at quality 90, 4:4:4 (the most coefficients per pixel)."""
    if mode == "RGB":
        ramp = (np.arange(side) * 255 // side).astype(np.uint8)[None, :].repeat(side, axis=0)
        image = Image.fromarray(np.dstack([ramp, ramp.T, ramp[::-1]]))
    else:
        image = Image.new("L", (side, side))
    data = _encode(image, "JPEG", progressive=True, quality=90, subsampling=0)
    found, eoi = jpeg_scans(data)
    sizes = [end - start for start, end in found]
    start, end = found[len(sizes) - 1 - sizes[::-1].index(min(sizes))]
    return data[:eoi] + data[start:end] * (scans - len(found)) + data[eoi:]


def jpeg_marker_spam(count: int = 4_500_000) -> bytes:
    """A 16x16 JPEG with ``count`` empty COM segments before its frame (4 bytes each)."""
    data = _encode(Image.new("L", (16, 16)), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def png_chunk_spam(count: int = 1_600_000) -> bytes:
    """A 16x16 PNG with ``count`` empty ancillary chunks before its data (12 bytes each)."""
    data = _encode(Image.new("L", (16, 16)), "PNG")
    chunk = b"\x00\x00\x00\x00abCd" + struct.pack(">I", zlib.crc32(b"abCd"))
    return data[:33] + chunk * count + data[33:]  # after the signature and IHDR


def gif_block_spam(count: int = 9_000_000) -> bytes:
    """A 16x16 GIF with a comment extension of ``count`` one-byte sub-blocks before its image."""
    data = _encode(Image.new("L", (16, 16)), "GIF")
    flags = data[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    return data[:start] + b"\x21\xfe" + b"\x01x" * count + b"\x00" + data[start:]


def tiff_strip_spam(rows: int = 4_500_000) -> bytes:
    """A 1 x ``rows`` grey TIFF of one row per strip: ``rows`` strips (offsets and counts as SHORTs)."""
    entries = 9
    arrays = 8 + 2 + 12 * entries + 4
    offsets, counts = arrays, arrays + 2 * rows
    ifd = struct.pack("<H", entries)
    for tag, kind, count, value in (
        (256, 3, 1, 1), (257, 4, 1, rows), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 3, rows, offsets), (277, 3, 1, 1), (278, 3, 1, 1), (279, 3, rows, counts),
    ):  # fmt: skip
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + b"\x08\x00" * rows + b"\x01\x00" * rows


def bmp_rle_runs(width: int = 3000, height: int = 3000) -> bytes:
    """An RLE8 BMP whose every run is one pixel long (2 bytes per pixel: Pillow decodes it in Python)."""
    body = (b"\x01\x05" * width + b"\x00\x00") * height + b"\x00\x01"
    palette = b"\x00" * 4 * 256
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + palette + body


@dataclass(frozen=True)
class Bomb:
    """One input of the issue's table."""

    name: str
    make: Callable[[], bytes]
    what: str


BOMBS: tuple[Bomb, ...] = (
    Bomb("jpeg-scans", progressive_scan_bomb, "6300² progressive grey JPEG, smallest scan repeated 2000×"),
    Bomb(
        "jpeg-refine-scans",
        lambda: progressive_scan_bomb(refinement=True),
        "6300² progressive grey JPEG, an AC refinement scan repeated 2000×",
    ),
    Bomb("png16-zeros", png16_zeros, "6300² 16-bit grey PNG of zeros"),
    Bomb("tiff-float", lambda: tiff_zeros("F"), "6300² float32 TIFF of zeros (deflate)"),
    Bomb("tiff-int32", lambda: tiff_zeros("I"), "6300² int32 TIFF of zeros (deflate)"),
    Bomb("tiff-tile", tiff_tile_bomb, "64² TIFF with one 16384² deflate tile"),
    Bomb("rgb-png", rgb_zeros_png, "6300² 8-bit RGB PNG of zeros (an ordinary image, for scale)"),
    Bomb("jpeg-markers", jpeg_marker_spam, "16² JPEG with 4.5 M empty COM segments (18 MB)"),
    Bomb("png-chunks", png_chunk_spam, "16² PNG with 1.6 M empty ancillary chunks (19 MB)"),
    Bomb("gif-blocks", gif_block_spam, "16² GIF with 9 M one-byte comment sub-blocks (18 MB)"),
    Bomb("tiff-strips", tiff_strip_spam, "1×4.5 M grey TIFF of one row per strip (18 MB)"),
    Bomb("bmp-rle", bmp_rle_runs, "3000² RLE8 BMP of one-pixel runs (18 MB)"),
)
"""The issue's bombs (the first six), an ordinary image of their size, and further part-count bombs."""

AT_LIMITS: tuple[Bomb, ...] = (
    Bomb("grey-scans-32", scans_at_limit, "6300² progressive grey JPEG, 32 scans (the scan limit)"),
    Bomb("rgb444-scans-32", lambda: scans_at_limit("RGB"), "6300² progressive 4:4:4 RGB JPEG, 32 scans"),
    Bomb("png16-max", png16_zeros, "6300² 16-bit grey PNG (at the pixel limit)"),
    Bomb("float-max", lambda: tiff_zeros("F", 5477), "5477² float32 TIFF (at the decoded-bytes limit)"),
    Bomb("rgba-max", lambda: _encode(Image.new("RGBA", (5477, 5477)), "PNG"), "5477² RGBA PNG (bytes limit)"),
    Bomb("rgb-max", rgb_zeros_png, "6300² RGB PNG (at the pixel limit)"),
)
"""The most expensive inputs the default limits let through, one of each kind."""

_CHILD = r"""
import json, resource, sys, threading, time
from common.geometry import NetworkGeometry, ServingGeometry
from server.pipeline import prepare
from server.settings import Settings

settings = Settings()
geometry = ServingGeometry(NetworkGeometry(), settings.max_side, settings.bucket)
try:  # this checkout's decode limits; before the decode budget, prepare took max_pixels alone
    from server.imaging import DecodeLimits
    limits = DecodeLimits.from_settings(settings)
except ImportError:
    limits = settings.max_pixels
data = open(sys.argv[1], "rb").read()
parallel = int(sys.argv[2])
outcome = []

def run():
    try:
        prepare(data, geometry, (0, 0, 0), limits)
        outcome.append("decoded")
    except Exception as exc:
        outcome.append(f"{type(exc).__name__}: {getattr(exc, 'detail', exc)}"[:160])

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM (peak RSS) to the current RSS
before_rss = status("VmRSS:")
cpu, wall = time.process_time(), time.perf_counter()
threads = [threading.Thread(target=run) for _ in range(parallel)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({
    "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
    "rss_delta_mb": (status("VmHWM:") - before_rss) / 2**20, "outcome": outcome[0],
}))
"""


def measure(data: bytes, root: Path = REPO_ROOT, parallel: int = 1) -> dict[str, object]:
    """CPU seconds, wall seconds, peak-RSS growth (MiB) and outcome of ``parallel`` simultaneous decodes
    of ``data`` by ``root``'s ``server.pipeline.prepare`` with default settings, in a fresh process."""
    with tempfile.NamedTemporaryFile(suffix=".img") as file:
        file.write(data)
        file.flush()
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, file.name, str(parallel)],
            cwd=root, env={"PYTHONPATH": str(root), "MALLOC_ARENA_MAX": "2", "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"measuring child exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="checkout whose server decodes")
    parser.add_argument("--only", nargs="*", help="bomb names (default: all)")
    parser.add_argument("--parallel", type=int, default=1, help="simultaneous decodes of each bomb")
    parser.add_argument("--at-limits", action="store_true", help="the largest inputs the limits allow")
    args = parser.parse_args(argv)
    chosen = [b for b in (AT_LIMITS if args.at_limits else BOMBS) if not args.only or b.name in args.only]
    print(f"decode cost in {args.root} (default settings, {args.parallel} at a time)", flush=True)
    print(f"{'bomb':18} {'file KB':>8} {'CPU s':>7} {'wall s':>7} {'peak RSS +MiB':>14}  outcome")
    for bomb in chosen:
        data = bomb.make()
        cost = measure(data, args.root, args.parallel)
        print(
            f"{bomb.name:18} {len(data) / 1000:8.0f} {cost['cpu_s']:7.2f} {cost['wall_s']:7.2f} "
            f"{cost['rss_delta_mb']:14.0f}  {cost['outcome']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
