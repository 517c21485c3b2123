"""In-process costs of per-request steps the service could trim: PNG compression level, the JSON log line.

The PNG encoder is the service's (``server.imaging.encode_label_png``, which fixes ``compress_level``); the
same palette image is saved here at each level with Pillow directly, on real label maps (the served model's
labels of the benchmark photographs), so CPU time and size are compared on what the service really encodes.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from common.classes import flat_palette

PNG_LEVELS = (1, 3, 6)


def _thread_cpu_ms(func: Any, repeats: int) -> float:
    """Median thread CPU milliseconds of ``func()``."""
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        func()
        times.append(time.thread_time() - start)
    return 1000 * float(np.median(times))


def png_levels(
    label_maps: Sequence[np.ndarray],
    palette: Sequence[Sequence[int]],
    levels: Sequence[int] = PNG_LEVELS,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """Per level: mean thread CPU ms and mean bytes per label map, and whether the service's encoder matches
    that level byte for byte (which tells the level it uses)."""
    from server.imaging import encode_label_png

    flat = flat_palette([tuple(c) for c in palette])
    service = [encode_label_png(labels, palette) for labels in label_maps]
    rows = []
    for level in levels:
        cpu, size, same = [], [], []
        for labels, served in zip(label_maps, service, strict=True):
            image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
            image.putpalette(flat)

            def save(image: Image.Image = image, level: int = level) -> bytes:
                out = io.BytesIO()
                image.save(out, format="PNG", compress_level=level)
                return out.getvalue()

            body = save()
            cpu.append(_thread_cpu_ms(save, repeats))
            size.append(len(body))
            same.append(body == served)
        rows.append(
            {
                "level": level,
                "cpu_ms": float(np.mean(cpu)),
                "bytes": float(np.mean(size)),
                "service_default": all(same),
            }
        )
    return rows


def log_line_us(repeats: int = 2000) -> float:
    """Thread CPU microseconds to format one request log line as the service does (``server.logs``' JSON
    formatter on the record its request middleware emits)."""
    from server.logs import JsonFormatter, request_id_var

    formatter = JsonFormatter()
    record = logging.LogRecord(
        "server", logging.INFO, __file__, 0, "%s %s %s", ("POST", "/segment", 200), None
    )
    record.status, record.ms = 200, 12.34
    token = request_id_var.set("0123456789abcdef0123456789abcdef")
    try:
        start = time.thread_time()
        for _ in range(repeats):
            formatter.format(record)
        return 1e6 * (time.thread_time() - start) / repeats
    finally:
        request_id_var.reset(token)


def recommendation(rows: Sequence[dict[str, Any]]) -> str:
    """One sentence comparing the service's level with the cheapest one."""
    current = next((r for r in rows if r["service_default"]), None)
    cheapest = min(rows, key=lambda r: r["cpu_ms"])
    if current is None:
        return "the service's PNG matches none of the measured levels"
    if cheapest is current:
        return f"compress_level {current['level']} (the service's) is already the cheapest measured"
    saved = current["cpu_ms"] - cheapest["cpu_ms"]
    growth = cheapest["bytes"] / current["bytes"] - 1
    return (
        f"compress_level {cheapest['level']} instead of {current['level']}: {saved:.2f} ms less CPU per "
        f"response ({100 * saved / current['cpu_ms']:.0f}%), bodies {100 * growth:+.0f}% in size"
    )
