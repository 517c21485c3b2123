"""Content negotiation of ``POST /segment``: label PNG or class-mask JSON."""

from __future__ import annotations

from server.pipeline import OutputFormat


def choose_format(query: OutputFormat | None, accept: str | None) -> OutputFormat:
    """``?format`` wins; else ``application/json`` in Accept with a higher q than ``image/png``; else PNG."""
    if query is not None:
        return query
    weights: dict[str, float] = {}
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        weights[media.lower()] = max(weights.get(media.lower(), 0.0), quality)
    json_q = weights.get("application/json", 0.0)
    return "json" if json_q > 0 and json_q > weights.get("image/png", 0.0) else "png"
