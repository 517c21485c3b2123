"""Counting the parts of an image file that make decoding cost more than its pixel count says.

Each function walks one format's container structure without decoding a pixel and stops as soon as a
count exceeds ``stop_after``, so the walk itself costs at most that many steps. The policy (which counts
are too many) is :mod:`server.imaging`'s.

- JPEG: marker segments, and scans (each scan of a progressive JPEG is one more pass over the image);
- PNG: chunks (Pillow handles each one in Python);
- GIF: data sub-blocks of the extensions before the first image (read one by one in Python);
- TIFF: strips or tiles of the first image (Pillow makes one Python object per strip or tile).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

_MARKER = re.compile(rb"\xff([^\x00\xff])")
"""A JPEG marker as libjpeg finds it: 0xFF, then a byte that is neither 0 (stuffing) nor 0xFF (a fill byte:
the marker follows the last one)."""
_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RST0-7: no length field
EOI, SOS = 0xD9, 0xDA
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_STRIP_OFFSETS, TIFF_TILE_OFFSETS = 273, 324


@dataclass(frozen=True)
class JpegParts:
    """What :func:`jpeg_parts` counted in the first picture of a JPEG."""

    markers: int
    scans: int


def jpeg_parts(data: bytes, max_markers: int, max_scans: int) -> JpegParts:
    """Markers and scans (SOS) of the first JPEG picture in ``data``, walking its markers as libjpeg does.

    Segment payloads (EXIF thumbnails included) are skipped by their length; entropy-coded data and
    garbage between segments are skipped to the next marker (restart markers are part of the data),
    like libjpeg's ``next_marker``. Stops at the first EOI (the further pictures of an MPO are never
    decoded), or once a count exceeds its maximum.
    """
    markers = scans = 0
    pos = 2  # after SOI
    while markers <= max_markers and scans <= max_scans and (found := _MARKER.search(data, pos)):
        marker, pos = found.group(1)[0], found.end()
        markers += 1
        if marker == EOI:
            break
        if marker not in _STANDALONE:
            pos += int.from_bytes(data[pos : pos + 2], "big")
            scans += marker == SOS
    return JpegParts(markers, scans)


def png_chunks(data: bytes, stop_after: int) -> int:
    """Chunks of a PNG up to IEND (or the end of the data), counting at most ``stop_after + 1``."""
    chunks, pos = 0, len(PNG_SIGNATURE)
    while chunks <= stop_after and pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if kind == b"IEND":
            break
        pos += 12 + length
    return chunks


def gif_extension_blocks(data: bytes, stop_after: int) -> int:
    """Data sub-blocks of the extensions before a GIF's first image descriptor (at most ``stop_after + 1``).

    Pillow reads these one by one in Python to reach the first frame; the image data after the
    descriptor is read by its C decoder.
    """
    if len(data) < 13:
        return 0
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks = 0
    while blocks <= stop_after and pos + 1 < len(data) and data[pos] == 0x21:  # extension introducer
        pos += 2  # introducer, label
        while blocks <= stop_after and pos < len(data) and data[pos] != 0:
            blocks += 1
            pos += 1 + data[pos]
        pos += 1  # block terminator
    return blocks


@dataclass(frozen=True)
class TiffParts:
    """What :func:`tiff_parts` counted in a TIFF's first directory."""

    entries: int
    units: int
    """Strips or tiles: the larger count of the StripOffsets / TileOffsets tags."""


def tiff_parts(data: bytes, stop_after: int) -> TiffParts:
    """Entries of a TIFF's first directory (classic or BigTIFF) and its strips or tiles; the entries are
    read only when there are at most ``stop_after`` of them (all zero when the header cannot be read)."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return TiffParts(0, 0)
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    offset = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    start = offset + (8 if big else 2)
    if start > len(data):
        return TiffParts(0, 0)
    entries = struct.unpack_from(order + ("Q" if big else "H"), data, offset)[0]
    if entries > stop_after:
        return TiffParts(entries, 0)
    size, layout = (20, order + "HHQ") if big else (12, order + "HHI")
    units = 0
    for index in range(min(entries, (len(data) - start) // size)):
        tag, _, count = struct.unpack_from(layout, data, start + index * size)
        if tag in (TIFF_STRIP_OFFSETS, TIFF_TILE_OFFSETS):
            units = max(units, count)
    return TiffParts(entries, units)
