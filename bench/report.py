"""Markdown tables of a results folder, for the README's Performance section.

python -m bench.report bench/results/amd-epyc-2c-avx2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: list[Sequence[object]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join([_row(header), _row(align), *(_row(r) for r in rows)])


def machine_line(report: dict[str, Any]) -> str:
    """One line naming the machine and the run."""
    m = report["machine"]
    device = m.get("gpu") or f"{m['cpu_model']} ({m['cores']} cores, {', '.join(m['simd'])})"
    libraries = m["libraries"]
    load_start, load_end = m.get("load_average_at_start", [None])[0], m.get("load_average_at_end", [None])[0]
    note = f"; {report['note']}" if report.get("note") else ""
    return (
        f"Machine `{m['slug']}`: {device}, {m['memory_gib']} GiB; "
        f"onnxruntime {libraries.get('onnxruntime')}, torch {libraries.get('torch')}; "
        f"run {report['started']}; 1-minute load average "
        f"{_num(load_start)} at start, {_num(load_end)} at end{note}."
    )


def forward_table(report: dict[str, Any]) -> str:
    """The forward-pass table."""
    header = [
        "backend",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "ms/image",
        "images/s",
        "GFLOP/s",
        "% of peak",
    ]
    header += ["× paper 175 ms", "× paper 210 ms"]
    rows = []
    for r in report["results"]:
        share = "–" if r["peak_share"] is None else f"{100 * r['peak_share']:.0f}%"
        rows.append([
            r["backend"], r["batch"], _num(r["p50_ms"], 0), _num(r["p90_ms"], 0), _num(r["p99_ms"], 0),
            _num(r["ms_per_image"], 0), _num(r["images_per_s"], 2), _num(r["gflops"], 0), share,
            f"{r['time_vs_paper_fcn8s']:.2f}", f"{r['time_vs_paper_fcn_vgg16']:.2f}",
        ])  # fmt: skip
    return _table(header, rows)


def http_table(report: dict[str, Any]) -> str:
    """The HTTP sweep table."""
    header = ["server", "level", "ok/sent", "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "mean batch"]
    header += ["queue ms", "inference ms", "errors"]
    rows = []
    for r in report["results"]:
        level = f"c={r['concurrency']}" if r["mode"] == "closed" else f"{r['rate']:g} req/s"
        rows.append([
            r["server"], level, f"{r['ok']}/{r['requests']}", _num(r["throughput_rps"], 2),
            _num(r["p50_ms"], 0), _num(r["p90_ms"], 0), _num(r["p95_ms"], 0), _num(r["p99_ms"], 0),
            _num(r["mean_batch_size"], 2),
            _num(r["metrics_queue_ms"]), _num(r["metrics_inference_ms"]),
            ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0",
        ])  # fmt: skip
    return _table(header, rows)


def int8_table(report: dict[str, Any]) -> str:
    """The INT8 accuracy table."""
    header = [
        "kept in FP32",
        "int8 convs",
        "label agreement",
        "FP32 mean IU",
        "INT8 mean IU",
        "FP32 ms",
        "INT8 ms",
    ]
    rows = [
        [
            " ".join(r["keep_fp32"]) or "–",
            r["int8_convolutions"],
            f"{100 * r['agreement']:.2f}%",
            f"{100 * r['fp32_mean_iu']:.2f}",
            f"{100 * r['int8_mean_iu']:.2f}",
            _num(r["fp32_ms"]),
            _num(r["int8_ms"]),
        ]
        for r in report["results"]
    ]
    return _table(header, rows)


def targets_list(report: dict[str, Any]) -> str:
    """Each target as a bullet: value, goal, met / missed / not measured."""
    items = report.get("targets") or ([report["target"]] if "target" in report else [])
    lines = []
    for t in items:
        value = "–" if t.get("value") is None else f"{t['value']:.3g}"
        name = t.get("target", "INT8 label agreement vs FP32 (best variant)")
        lines.append(f"- {name}: {value} (goal {t['goal']}) — **{t['status']}**")
    return "\n".join(lines)


def render(folder: Path) -> str:
    """Markdown for every report in ``folder``."""
    parts = []
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        kind = report.get("benchmark")
        table = {"forward": forward_table, "http": http_table, "int8-accuracy": int8_table}.get(kind)
        if table is None:
            continue
        parts += [
            f"#### `{path.name}`",
            "",
            machine_line(report),
            "",
            table(report),
            "",
            targets_list(report),
            "",
        ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="bench/results/<machine>")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"no such folder: {args.folder}", file=sys.stderr)
        return 1
    print(render(args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
