"""Markdown tables of benchmark results: one results folder, or the generated section of docs/benchmarks.md.

python -m bench.report bench/results/amd-epyc-2c-avx2        # print one machine's tables
python -m bench.report --write docs/benchmarks.md            # regenerate the marked section from every
                                                             # bench/results/<machine>/ folder
python -m bench.report --check docs/benchmarks.md            # exit 1 when that section is out of date

The section is everything between the lines ``<!-- generated: bench.report -->`` and
``<!-- end generated -->``; the rest of the page is prose and is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.baseline import stage_order
from bench.machine import RESULTS_ROOT

BEGIN_MARK = "<!-- generated: bench.report -->"
END_MARK = "<!-- end generated -->"
KIND_ORDER = ("forward", "upsampling", "http", "http-naive", "int8-accuracy", "soak")


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: list[Sequence[object]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join([_row(header), _row(align), *(_row(r) for r in rows)])


def _value(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _kind(report: dict[str, Any]) -> str | None:
    """``forward``, ``http``, ``int8-accuracy`` or ``soak`` (soak reports carry no ``benchmark`` key)."""
    if "benchmark" in report:
        return str(report["benchmark"])
    if "rss" in report and "latency_ok" in report:
        return "soak"
    return None


def machine_line(report: dict[str, Any], slug: str | None = None) -> str:
    """One line naming the machine (``slug`` when the report has none) and the run."""
    m = report["machine"]
    device = m.get("gpu") or f"{m['cpu_model']} ({m['cores']} cores, {', '.join(m['simd'])})"
    libraries = m["libraries"]
    load_start, load_end = m.get("load_average_at_start", [None])[0], m.get("load_average_at_end", [None])[0]
    note = f"; {report['note']}" if report.get("note") else ""
    started = report.get("started") or report.get("when")
    return (
        f"Machine `{m.get('slug') or slug}`: {device}, {m['memory_gib']} GiB; "
        f"onnxruntime {libraries.get('onnxruntime')}, torch {libraries.get('torch')}; "
        f"run {started}; 1-minute load average "
        f"{_num(load_start)} at start, {_num(load_end)} at end{note}."
    )


def run_line(report: dict[str, Any]) -> str:
    """When the run started (and finished), the machine's load then, and the report's note."""
    m = report["machine"]
    started = report.get("started") or report.get("when")
    finished = f" to {report['finished']}" if report.get("finished") else ""
    loads = []
    if m.get("load_average_at_start"):
        loads.append(f"{_num(m['load_average_at_start'][0])} at the start")
    if m.get("load_average_at_end"):
        loads.append(f"{_num(m['load_average_at_end'][0])} at the end")
    load = f"; 1-minute load average {' and '.join(loads)}" if loads else ""
    note = f". Note: {report['note']}" if report.get("note") else ""
    return f"Run {started}{finished}{load}{note}."


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


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def http_naive_table(report: dict[str, Any]) -> str:
    """The service against the naive baseline: the levels with their ratios, then the per-request split."""
    servers = report["comparison"]["servers"]
    header = ["server", "level", "ok/sent", "req/s", "p50 ms", "p99 ms", "mean batch", "÷ naive-plain"]
    header += ["÷ naive-graph", "÷ best raw", "p50 ÷ naive-plain", "errors"]
    rows = []
    for r in report["results"]:
        if r["mode"] != "closed":
            continue
        ratios, level = servers[r["server"]], str(r["concurrency"])
        rows.append([
            r["server"], f"c={level}", f"{r['ok']}/{r['requests']}", _num(r["throughput_rps"], 2),
            _num(r["p50_ms"], 0), _num(r["p99_ms"], 0), _num(r["mean_batch_size"], 2),
            _ratio(ratios["throughput_vs_naive"].get(level)),
            _ratio(ratios["throughput_vs_naive_graph"].get(level)),
            _ratio(ratios["throughput_vs_best_raw"].get(level)), _ratio(ratios["p50_vs_naive"].get(level)),
            ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0",
        ])  # fmt: skip
    levels = _table(header, rows)
    stages = stage_order(report["results"])
    header = [
        "server",
        "level",
        *stages,
        "infer / image",
        "CPU / request",
        "event loop",
        "codec stages",
        "rest",
        "load generator",
    ]
    rows = []
    for r in report["results"]:
        if r["mode"] != "closed":
            continue
        stage = r.get("stage_ms") or {}
        rows.append([
            r["server"], f"c={r['concurrency']}", *(_num(stage.get(s), 2) for s in stages),
            _num(r.get("infer_ms_per_image")), _num(r.get("cpu_ms_per_request")),
            _num(r.get("loop_cpu_ms_per_request")),
            _num(r.get("codec_cpu_ms_per_request")), _num(r.get("other_cpu_ms_per_request")),
            _num(r.get("client_cpu_ms_per_request")),
        ])  # fmt: skip
    split = _table(header, rows)
    png = _table(
        ["PNG compress_level", "CPU ms per label map", "bytes", "the service's"],
        [
            [
                row["level"],
                _num(row["cpu_ms"], 2),
                _num(row["bytes"], 0),
                "yes" if row["service_default"] else "",
            ]
            for row in report["overhead"]["png_levels"]
        ],
    )
    return "\n\n".join([levels, "Per request (ms):", split, png])


def int8_table(report: dict[str, Any]) -> str:
    """The INT8 accuracy table."""
    header = [
        "kept in FP32",
        "int8 convs",
        "label agreement",
        "FP32 mean IU",
        "INT8 mean IU",
        "ORT FP32 ms",
        "ORT INT8 ms",
        "OpenVINO FP32 ms",
        "OpenVINO INT8 ms",
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
            _num(r.get("openvino_fp32_ms")),
            _num(r.get("openvino_int8_ms")),
        ]
        for r in report["results"]
    ]
    return _table(header, rows)


def upsampling_table(report: dict[str, Any]) -> str:
    """Grouped vs dense upsampling of the same weights."""
    header = ["model", "image", "grouped ms", "dense ms", "time saved", "labels differing"]
    rows = [
        [
            f"`{r['model']}`",
            f"{r['image'][0]}×{r['image'][1]}",
            _num(r["grouped_ms"]),
            _num(r["dense_ms"]),
            f"{100 * r['saving']:.1f}%",
            f"{r['label_differences']:,} of {r['pixels_compared']:,}",
        ]
        for r in report["results"]
    ]
    return _table(header, rows)


def soak_table(report: dict[str, Any]) -> str:
    """The soak run's figures, one per row."""
    lat, rss, server = report["latency_ok"], report["rss"], report.get("server") or {}
    statuses = ", ".join(f"{code}: {count}" for code, count in sorted(report["statuses"].items())) or "none"
    transport = ", ".join(f"{k}: {v}" for k, v in sorted(report["transport_errors"].items())) or "0"
    latency = ", ".join(f"{p} {_num(lat.get(f'{p}_ms'), 0)} ms" for p in ("p50", "p90", "p95", "p99", "max"))
    rows: list[Sequence[object]] = [
        [
            "requests sent / answered",
            f"{report['sent']} / {report['answered']} in {report['duration_s']:.1f} s",
        ],
        ["throughput", f"{_num(report['throughput_rps'], 2)} req/s"],
        ["answers by status", statuses],
        ["5xx answers", report["errors_5xx"]],
        ["transport errors", transport],
        ["latency of the 200s", latency],
        [
            "server RSS (MiB)",
            f"start {_num(rss['start_mib'])}, after {report.get('warmup_s', 0):g} s warm-up "
            f"{_num(rss['after_warmup_mib'])}, end {_num(rss['end_mib'])}, max {_num(rss['max_mib'])}",
        ],
        ["RSS growth after warm-up", f"{rss['growth_after_warmup_pct']:+.1f}%"],
    ]
    if "exit_code_after_sigterm" in server:
        rows.append(["exit code after SIGTERM", server["exit_code_after_sigterm"]])
    return _table(["figure", "value"], rows)


def targets_list(report: dict[str, Any]) -> str:
    """Each target as a bullet: value, goal, met / missed / not measured."""
    items = report.get("targets") or ([report["target"]] if "target" in report else [])
    lines = []
    for t in items:
        name = t.get("target", "INT8 label agreement vs FP32 (best variant)")
        best = t.get("best_keep_fp32")
        kept = f", keeping {' '.join(best)} in FP32" if best else ""
        server = f" (`{t['server']}`)" if t.get("server") else ""
        lines.append(
            f"- {name}{server}: {_value(t.get('value'))}{kept} (goal {t['goal']}) — **{t['status']}**"
        )
    return "\n".join(lines)


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {
    "forward": forward_table,
    "http": http_table,
    "http-naive": http_naive_table,
    "int8-accuracy": int8_table,
    "soak": soak_table,
    "upsampling": upsampling_table,
}


def render(folder: Path) -> str:
    """Markdown for every report in ``folder`` (what ``python -m bench.report FOLDER`` prints)."""
    parts = []
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        table = TABLES.get(_kind(report) or "")
        if table is None:
            continue
        parts += [f"#### `{path.name}`", "", machine_line(report, folder.name), "", table(report), ""]
        targets = targets_list(report)
        if targets:
            parts += [targets, ""]
    return "\n".join(parts)


# ---- the generated section of docs/benchmarks.md --------------------------------------------------------


def _link(path: Path, doc_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), doc_dir.resolve())).as_posix()


def _machine_summary(report: dict[str, Any]) -> str:
    m = report["machine"]
    simd = ", ".join(m["simd"])
    cpu = f"{m['cpu_model']}, {m['cores']} usable cores ({m['logical_cpus']} logical), SIMD {simd}"
    gpu = f"GPU {m['gpu']}" if m.get("gpu") else "no GPU"
    libraries = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    return f"{cpu}; {m['memory_gib']} GiB; {gpu}; {m['os']}; Python {m['python']}; {libraries}."


def _forward_context(report: dict[str, Any]) -> list[str]:
    model, peak, settings = report["model"], report["peak"], report["settings"]
    lines = [
        f"Model: {model['architecture']} width {model['width']:g}, {model['num_classes']} classes, "
        f"seed {model['seed']}, {model['height']}×{model['image_width']}: "
        f"{model['gflop_per_image']:.1f} GFLOP per image."
        f' Peak used for "% of peak": {_num(peak["gflops"])} GFLOP/s ({peak["method"]}; '
        f"{peak['description']}). Warm-up {settings['warmup']}, {settings['runs']} timed runs per cell, "
        f'{settings["threads"]} threads. "× paper" = time per image ÷ the {report["paper"]["device"]} time '
        f"(1.0 = as fast as the paper's GPU).",
        "",
    ]
    lines += [f"- `{name}`: {text}" for name, text in report.get("backends", {}).items()]
    lines += [f"- `{name}`: not run — {reason}" for name, reason in report.get("skipped", {}).items()]
    lines += [
        f"- `{name}`: batch sizes stopped — {reason}" for name, reason in report.get("stopped", {}).items()
    ]
    return lines


def _http_context(report: dict[str, Any]) -> list[str]:
    s, raw = report["settings"], report.get("raw_forward") or {}
    env = " ".join(f"`{k}={v}`" for k, v in (s.get("server_env") or {}).items())
    batching = f"`max_batch_size` {s['max_batch_size']}"
    if s.get("compare_no_batching"):
        servers = f"batching ({batching}) and no-batching (`max_batch_size` 1) servers, levels alternating"
    else:
        servers = f"batching server only ({batching})"
    text = (
        f"Model `{report['model']}`; {servers}; other settings at their defaults"
        + (f" except {env}" if env else "")
        + f"; {s['format'].upper()} responses; photographs resized to a {s['long_side']} px long side."
    )
    if raw:
        shapes = ", ".join(sorted({f"{h}×{w}" for h, w in raw["shapes"]}))
        text += (
            f" Raw ONNX Runtime forward at the bucket shapes the server runs them at ({shapes}): "
            f"{_num(raw['batch1_ms'])} ms per image at batch 1, best {_num(raw['best_images_per_s'], 2)} "
            f"images/s (batch {raw['best_batch']})."
        )
    return [
        text,
        "",
        '"queue ms" = mean wait per image and "inference ms" = mean backend time per batch, both from the '
        "server's `/metrics` over the level.",
    ]


def _http_naive_context(report: dict[str, Any]) -> list[str]:
    s, raw, cost = report["settings"], report["raw_forward"], report["overhead"]
    described = report.get("servers", {})
    services = "; ".join(
        f"`{name}`: {d.get('backend')} ({d.get('provider')}, {d.get('precision')}), "
        + (" ".join(f"`{k}={v}`" for k, v in sorted(d["env"].items()) if k != "FCN_MODEL") or "defaults")
        for name, d in described.items()
        if d.get("kind") == "service"
    )
    shapes = ", ".join(sorted({f"{h}×{w}" for h, w in raw["shapes"]}))
    methods = ", ".join(f"{name} {_num(rate, 2)}" for name, rate in raw["methods_images_per_s"].items())
    agreement = "; ".join(
        f"`{name}` {100 * a['agreement']:.3f}% of pixels "
        f"({100 * a['identical_share']:.0f}% of responses identical)"
        for name, a in report["agreement"].items()
        if a.get("agreement") is not None
    )
    return [
        f"Model `{report['model']}` ({report['weights']}); {s['format'].upper()} responses; photographs "
        f"resized to a {s['long_side']} px long side; levels alternate between the servers. "
        f"Services: {services}. "
        f"`naive-plain` = `python -m bench.naive` on `{Path(report['naive_onnx']).name}` (plain "
        "`torch.onnx.export`, dense upsampling, numpy normalisation and argmax, one ONNX Runtime session); "
        "`naive-graph` = the same naive server on the service's graph.",
        "",
        f"Best raw throughput on the served shapes ({shapes}): **{_num(raw['best_raw_images_per_s'], 2)} "
        f"images/s** ({raw['best_method']}); images/s by method: {methods}.",
        "",
        f"Labels vs ONNX Runtime FP32 (the service's pipeline in process): {agreement}.",
        "",
        "Per request: the stages are the service's `fcn_stage_seconds` means (thread CPU for decode, resize, "
        "pad, crop, encode; wall time for receive, queue, infer — infer is the whole batch's time; "
        "infer / image = batch times ÷ images); the CPU columns are the server process's CPU from `/proc` "
        "over the level ÷ responses: event loop = its main "
        "thread (HTTP, upload, routing, log line, metrics), codec stages = the sum of the CPU stages, rest = "
        "total − event loop − codec (inference and thread pools, spin-waits included); load generator = "
        "this benchmark's own CPU on the same cores.",
        "",
        f"PNG encoding of the served label maps: {cost['png_recommendation']}; one JSON log line costs "
        f"{cost['log_line_us']:.1f} µs of CPU.",
    ]


def _int8_context(report: dict[str, Any]) -> list[str]:
    cal, held = report["calibration"], report["held_out"]
    reduce_range = "yes" if report.get("reduce_range") else "no"
    return [
        f"Model `{report['model']}`; calibrated on {cal['count']} synthetic scenes (seed {cal['seed']}, "
        f"{cal['size']} px), evaluated on {held['count']} held-out synthetic scenes (seed {held['seed']}, "
        f"{held['size']} px); 7-bit weights (`--reduce-range`): {reduce_range}. "
        "Label agreement = share of pixels where INT8 and FP32 predict the same class."
    ]


def _upsampling_context(report: dict[str, Any]) -> list[str]:
    runs = report["results"][0]["runs"] if report["results"] else 0
    return [
        "The same weights exported with per-class (grouped) and dense `ConvTranspose` upsampling, ONNX "
        f"Runtime, one session with every core, batch 1, {runs} timed runs of each alternating; labels "
        "compared on 20 held-out scenes and the benchmark photographs (`python -m bench.upsampling`)."
    ]


def _soak_context(report: dict[str, Any]) -> list[str]:
    server = report.get("server") or {}
    batching = ", ".join(f"`{k}` {v:g}" for k, v in (server.get("batching") or {}).items())
    images = ", ".join(Path(name).stem for name in report.get("images", []))
    return [
        f"`{server.get('model')}` on {server.get('backend')} ({server.get('provider')}); {batching}; "
        f"closed loop at concurrency {report['concurrency']}, multipart uploads of {images}."
    ]


CONTEXT: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "forward": _forward_context,
    "http": _http_context,
    "http-naive": _http_naive_context,
    "int8-accuracy": _int8_context,
    "soak": _soak_context,
    "upsampling": _upsampling_context,
}
TITLES = {
    "forward": "Forward pass",
    "http": "The service under load",
    "http-naive": "The service vs the naive baseline",
    "int8-accuracy": "CPU INT8 accuracy",
    "soak": "Soak",
    "upsampling": "Grouped vs dense upsampling",
}


def _reports(folder: Path) -> list[tuple[Path, str, dict[str, Any]]]:
    found = []
    for path in sorted(folder.glob("*.json")):
        report = json.loads(path.read_text())
        kind = _kind(report)
        if kind in TABLES:
            found.append((path, kind, report))
    return sorted(found, key=lambda item: (KIND_ORDER.index(item[1]), item[0].name))


def render_machine(folder: Path, doc_dir: Path) -> str:
    """One machine's section: its description, then every report with context, table, targets and plot."""
    reports = _reports(folder)
    if not reports:
        return ""
    parts = [f"### `{folder.name}`", "", _machine_summary(reports[0][2]), ""]
    for path, kind, report in reports:
        parts += [f"#### {TITLES[kind]}: [`{path.name}`]({_link(path, doc_dir)})", "", run_line(report), ""]
        parts += [*CONTEXT[kind](report), "", TABLES[kind](report), ""]
        targets = targets_list(report)
        if targets:
            parts += ["Targets:", "", targets, ""]
        plot = path.with_suffix(".png")
        if plot.is_file():
            parts += [f"![{path.stem}: {TITLES[kind].lower()}]({_link(plot, doc_dir)})", ""]
    return "\n".join(parts)


def render_docs(results_dir: Path, doc_dir: Path) -> str:
    """The generated section for every ``results_dir/<machine>/`` folder, links relative to ``doc_dir``."""
    machines = [
        render_machine(folder, doc_dir) for folder in sorted(p for p in results_dir.iterdir() if p.is_dir())
    ]
    body = "\n".join(m for m in machines if m) or "No results yet.\n"
    note = "<!-- Written by `python -m bench.report --write`; edit bench/report.py, not this section. -->"
    return f"{note}\n\n{body}"


def replace_section(text: str, generated: str) -> str:
    """``text`` with everything between the two marker lines replaced by ``generated``."""
    lines = text.splitlines(keepends=True)
    stripped = [line.strip() for line in lines]
    if stripped.count(BEGIN_MARK) != 1 or stripped.count(END_MARK) != 1:
        raise ValueError(f"need exactly one {BEGIN_MARK!r} line and one {END_MARK!r} line")
    begin, end = stripped.index(BEGIN_MARK), stripped.index(END_MARK)
    if end < begin:
        raise ValueError(f"{END_MARK!r} comes before {BEGIN_MARK!r}")
    return "".join(lines[: begin + 1]) + "\n" + generated.strip("\n") + "\n\n" + "".join(lines[end:])


def updated_doc(doc: Path, results_dir: Path = RESULTS_ROOT) -> str:
    """The text ``doc`` should have: its generated section rebuilt from ``results_dir``."""
    return replace_section(doc.read_text(), render_docs(results_dir, doc.parent))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, nargs="?", help="bench/results/<machine>: print its tables")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", type=Path, metavar="DOC", help="rewrite DOC's generated section")
    action.add_argument(
        "--check", type=Path, metavar="DOC", help="exit 1 if DOC's generated section is stale"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_ROOT,
        help="folder of <machine>/ result folders (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    doc = args.write or args.check
    if doc is not None:
        try:
            text = updated_doc(doc, args.results)
        except (OSError, ValueError) as exc:
            print(f"bench.report: {doc}: {exc}", file=sys.stderr)
            return 1
        if args.check:
            if text != doc.read_text():
                print(f"{doc} is out of date: run python -m bench.report --write {doc}", file=sys.stderr)
                return 1
            return 0
        doc.write_text(text)
        return 0
    if args.folder is None:
        parser.error("give a results folder, --write DOC or --check DOC")
    if not args.folder.is_dir():
        print(f"no such folder: {args.folder}", file=sys.stderr)
        return 1
    print(render(args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
