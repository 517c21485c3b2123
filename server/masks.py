"""COCO compressed run-length encoding of class masks (pure numpy; decodes with pycocotools)."""

from __future__ import annotations

import numpy as np


def _compress(counts: list[int]) -> str:
    """COCO's string form of run lengths (``rleToString`` in pycocotools' maskApi.c)."""
    chars: list[str] = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            char = value & 0x1F
            value >>= 5
            more = value != -1 if char & 0x10 else value != 0
            if more:
                char |= 0x20
            chars.append(chr(char + 48))
    return "".join(chars)


def class_rles(labels: np.ndarray) -> dict[int, tuple[int, dict[str, object]]]:
    """For each class present in ``labels`` [H, W]: (pixel count, COCO RLE ``{"size": [H, W], "counts"}``).

    Runs are taken in column-major order, starting with a (possibly empty) run of zeros, as COCO does.
    """
    height, width = labels.shape
    flat = np.asarray(labels).ravel(order="F")
    total = flat.size
    if total == 0:
        return {}
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], changes))
    ends = np.concatenate((changes, [total]))
    values = flat[starts]
    result: dict[int, tuple[int, dict[str, object]]] = {}
    for cls in np.unique(values):
        chosen = values == cls
        run_starts, run_ends = starts[chosen], ends[chosen]
        bounds = np.empty(2 * run_starts.size + 2, dtype=np.int64)
        bounds[0] = 0
        bounds[1:-1:2] = run_starts
        bounds[2:-1:2] = run_ends
        bounds[-1] = total
        counts = np.diff(bounds).tolist()
        if counts[-1] == 0:
            counts.pop()
        pixels = int((run_ends - run_starts).sum())
        result[int(cls)] = (pixels, {"size": [height, width], "counts": _compress(counts)})
    return result
