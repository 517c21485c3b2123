"""The service against the naive baseline and the best raw throughput: ratios per level, targets, tables.

Every number here is a ratio of two measurements of the same sweep (same images, levels alternating between
the servers); nothing is a constant but the goals. Servers of kind ``service`` are configurations of
``python -m server``; ``naive-plain`` is :mod:`bench.naive` on the plain export (dense upsampling, numpy
pre/post-processing), ``naive-graph`` the same naive server on the service's deployable graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NAIVE = "naive-plain"
NAIVE_GRAPH = "naive-graph"
TARGET_CONCURRENCY = 16
IDENTICAL_GOAL = 1.5
FASTEST_GOAL = 2.0
AGREEMENT_FLOOR = 0.99
P50_GOAL = 0.9
RAW_GOAL = 0.95
WALL_STAGES = ("receive", "queue", "infer")
"""Stages of ``fcn_stage_seconds`` measured in wall time (server/metrics.py); the others are thread CPU."""


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _closed(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["server"], r["concurrency"]): r for r in rows if r["mode"] == "closed"}


def compare(
    rows: Sequence[dict[str, Any]], agreements: dict[str, dict[str, Any]], best_raw: float | None
) -> dict[str, Any]:
    """Per server and level: throughput ÷ naive-plain, ÷ naive-graph, ÷ best raw; p50 ÷ naive-plain's."""
    by = _closed(rows)
    levels = sorted({c for _, c in by})
    servers = list(dict.fromkeys(r["server"] for r in rows))
    kinds = {r["server"]: r.get("kind", "service") for r in rows}
    result: dict[str, Any] = {"levels": levels, "best_raw_images_per_s": best_raw, "servers": {}}
    for server in servers:
        mine = {c: by[server, c] for c in levels if (server, c) in by}

        def per_level(field: str, other: str, mine: dict[int, dict[str, Any]] = mine) -> dict[str, Any]:
            return {
                str(c): _ratio(row[field], by[other, c][field]) if (other, c) in by else None
                for c, row in mine.items()
            }

        result["servers"][server] = {
            "kind": kinds[server],
            "agreement": agreements.get(server),
            "throughput_vs_naive": per_level("throughput_rps", NAIVE),
            "throughput_vs_naive_graph": per_level("throughput_rps", NAIVE_GRAPH),
            "p50_vs_naive": per_level("p50_ms", NAIVE),
            "throughput_vs_best_raw": {
                str(c): _ratio(r["throughput_rps"], best_raw) for c, r in mine.items()
            },
        }
    return result


def target_level(comparison: dict[str, Any]) -> int:
    """Concurrency 16 if it was measured, else the highest measured level (quick runs)."""
    levels = comparison["levels"]
    return TARGET_CONCURRENCY if TARGET_CONCURRENCY in levels else max(levels)


def _target(
    name: str, value: float | None, goal: str, met: bool | None, server: str | None
) -> dict[str, Any]:
    status = "not measured" if met is None else "met" if met else "missed"
    return {"target": name, "value": value, "goal": goal, "status": status, "server": server}


def naive_targets(rows: Sequence[dict[str, Any]], comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issue #12 item 7, each naming the server configuration it was judged on."""
    level, key = target_level(comparison), str(target_level(comparison))
    services = {n: s for n, s in comparison["servers"].items() if s["kind"] == "service"}

    def agreement(server: dict[str, Any], field: str) -> float:
        found = server["agreement"] or {}
        return found.get(field) if found.get(field) is not None else -1.0

    def best(candidates: dict[str, Any], field: str, at: str, lowest: bool = False) -> tuple[str | None, Any]:
        values = {n: s[field][at] for n, s in candidates.items() if s[field].get(at) is not None}
        if not values:
            return None, None
        name = (min if lowest else max)(values, key=lambda n: values[n])
        return name, values[name]

    identical = {n: s for n, s in services.items() if agreement(s, "identical_share") == 1.0}
    close = {n: s for n, s in services.items() if agreement(s, "agreement") >= AGREEMENT_FLOOR}
    targets = []
    name, value = best(identical, "throughput_vs_naive", key)
    targets.append(
        _target(
            f"throughput at c={level} / naive, labels identical to ORT FP32",
            value,
            f">= {IDENTICAL_GOAL}",
            None if value is None else value >= IDENTICAL_GOAL,
            name,
        )
    )
    if not identical:
        targets[-1]["status"] = "missed" if services else "not measured"
    name, value = best(close, "throughput_vs_naive", key)
    targets.append(
        _target(
            f"throughput at c={level} / naive, fastest with label agreement >= {AGREEMENT_FLOOR:.0%}",
            value,
            f">= {FASTEST_GOAL}",
            None if value is None else value >= FASTEST_GOAL,
            name,
        )
    )
    name, value = best(close, "p50_vs_naive", "1", lowest=True)
    targets.append(
        _target(
            "p50 at c=1 / naive p50 at c=1",
            value,
            f"<= {P50_GOAL}",
            None if value is None else value <= P50_GOAL,
            name,
        )
    )
    name, value = best(close, "throughput_vs_best_raw", key)
    targets.append(
        _target(
            f"throughput at c={level} / best raw throughput",
            value,
            f">= {RAW_GOAL}",
            None if value is None else value >= RAW_GOAL,
            name,
        )
    )
    errors = sum(sum(r["errors"].values()) for r in rows)
    targets.append(_target("errors in every level of every server", float(errors), "== 0", errors == 0, None))
    return targets


def stage_order(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The stages found in the rows in request order (``server.metrics.STAGES``), unknown ones last."""
    from server.metrics import STAGES

    found = dict.fromkeys(s for r in rows for s in r.get("stage_ms") or {})
    return sorted(found, key=lambda s: STAGES.index(s) if s in STAGES else len(STAGES))


def _num(value: float | None, width: int, digits: int = 1) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}s}"


def ratio_table(comparison: dict[str, Any]) -> str:
    """Each server's ratios at each level (fixed width)."""
    levels = [str(c) for c in comparison["levels"]]
    header = f"{'server':18s} {'ratio':28s} " + " ".join(f"{'c=' + c:>7s}" for c in levels)
    lines = [header, "-" * len(header)]
    for server, s in comparison["servers"].items():
        for field, text, denominator in (
            ("throughput_vs_naive", f"req/s / {NAIVE}", NAIVE),
            ("throughput_vs_naive_graph", f"req/s / {NAIVE_GRAPH}", NAIVE_GRAPH),
            ("throughput_vs_best_raw", "req/s / best raw img/s", None),
            ("p50_vs_naive", f"p50 / {NAIVE} p50", NAIVE),
        ):
            if server != denominator:
                lines.append(
                    f"{server:18s} {text:28s} " + " ".join(_num(s[field].get(c), 7, 2) for c in levels)
                )
    return "\n".join(lines)


def stage_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per level: the service's stage means (ms per request) and the CPU per request of every server."""
    stages = stage_order(rows)
    header = f"{'server':18s} {'level':>5s} " + " ".join(f"{s[:7]:>7s}" for s in stages)
    header += f" {'infer/img':>9s} {'cpu/req':>8s} {'loop':>6s} {'codec':>6s} {'other':>6s} {'client':>7s}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if r["mode"] != "closed":
            continue
        stage = r.get("stage_ms") or {}
        lines.append(
            f"{r['server']:18s} {'c=' + str(r['concurrency']):>5s} "
            + " ".join(_num(stage.get(s), 7, 2) for s in stages)
            + f" {_num(r.get('infer_ms_per_image'), 9)} {_num(r.get('cpu_ms_per_request'), 8)}"
            f" {_num(r.get('loop_cpu_ms_per_request'), 6)}"
            f" {_num(r.get('codec_cpu_ms_per_request'), 6)} {_num(r.get('other_cpu_ms_per_request'), 6)}"
            f" {_num(r.get('client_cpu_ms_per_request'), 7)}"
        )
    return "\n".join(lines)
