"""Prometheus text exposition → ``{"name{labels}": value}``, summed over the labels a caller does not need."""

from __future__ import annotations

import re
from collections.abc import Iterable

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
PER_MODEL = ("model", "version")


def parse_samples(text: str, drop: Iterable[str] = PER_MODEL) -> dict[str, float]:
    """Every sample keyed ``name`` or ``name{a="x",b="y"}`` (labels sorted), with the ``drop`` labels
    removed and the samples that then share a key summed (e.g. one total over every model version)."""
    dropped = set(drop)
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if line.startswith("#") or match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = sorted((m["key"], m["value"]) for m in _LABEL.finditer(match["labels"] or ""))
        kept = ",".join(f'{key}="{val}"' for key, val in labels if key not in dropped)
        key = f"{match['name']}{{{kept}}}" if kept else match["name"]
        samples[key] = samples.get(key, 0.0) + value
    return samples
