"""PNG plots of the benchmark reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter


def _integer_x(axis: Any, ticks: list[int]) -> None:
    """A log2 x axis labelled with the plain values that were measured."""
    axis.set_xscale("log", base=2)
    axis.set_xticks(ticks)
    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.xaxis.set_minor_formatter(NullFormatter())


def _title(report: dict[str, Any]) -> str:
    machine = report["machine"]
    device = machine.get("gpu") or f"{machine['cpu_model']}, {machine['cores']} cores"
    return f"{device} — {report['started'][:16].replace('T', ' ')} UTC"


def plot_forward(report: dict[str, Any], path: Path) -> Path:
    """Latency per batch and per image vs batch size, one line per backend, with the paper's K40c lines."""
    rows = report["results"]
    paper = report["paper"]
    model = report["model"]
    fig, (per_batch, per_image) = plt.subplots(1, 2, figsize=(12, 4.8))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["batch"])
        batches = [r["batch"] for r in mine]
        per_batch.plot(batches, [r["p50_ms"] for r in mine], marker="o", label=backend)
        per_image.plot(batches, [r["ms_per_image"] for r in mine], marker="o", label=backend)
    batches = sorted({r["batch"] for r in rows})
    for axis in (per_batch, per_image):
        _integer_x(axis, batches)
        axis.set_yscale("log")
        axis.set_xlabel("batch size")
        axis.grid(True, which="both", alpha=0.3)
    per_image.axhline(
        paper["fcn8s_ms"], color="k", linestyle="--", label=f"paper FCN-8s, K40c ({paper['fcn8s_ms']:g} ms)"
    )
    per_image.axhline(
        paper["fcn_vgg16_ms"],
        color="gray",
        linestyle=":",
        label=f"paper FCN-VGG16, K40c ({paper['fcn_vgg16_ms']:g} ms)",
    )
    per_batch.set_ylabel("p50 latency per batch (ms)")
    per_image.set_ylabel("p50 latency per image (ms)")
    per_image.legend(fontsize=8)
    size = f"{model['height']}x{model['image_width']}"
    fig.suptitle(
        f"{model['architecture']} width {model['width']:g} at {size} — {_title(report)}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_http(report: dict[str, Any], path: Path) -> Path:
    """Throughput and p99 latency vs concurrency (closed loop), one line per server (batching on / off)."""
    rows = [r for r in report["results"] if r["mode"] == "closed"]
    fig, (throughput, p99) = plt.subplots(1, 2, figsize=(12, 4.8))
    for server in dict.fromkeys(r["server"] for r in rows):
        mine = sorted((r for r in rows if r["server"] == server), key=lambda r: r["concurrency"])
        levels = [r["concurrency"] for r in mine]
        throughput.plot(levels, [r["throughput_rps"] for r in mine], marker="o", label=server)
        p99.plot(levels, [r["p99_ms"] for r in mine], marker="o", label=server)
    raw = report.get("raw_forward")
    if raw:
        throughput.axhline(
            raw["best_images_per_s"], color="k", linestyle="--", label="raw forward, best img/s"
        )
        p99.axhline(raw["batch1_ms"], color="k", linestyle="--", label="raw forward, batch 1")
    for axis in (throughput, p99):
        _integer_x(axis, sorted({r["concurrency"] for r in rows}))
        axis.set_xlabel("concurrent clients (closed loop)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    throughput.set_ylabel("throughput (responses/s)")
    p99.set_ylabel("p99 latency (ms)")
    p99.set_yscale("log")
    fig.suptitle(f"POST /segment, {Path(report['model']).name} — {_title(report)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_http_naive(report: dict[str, Any], path: Path) -> Path:
    """The service against the naive baseline: throughput and p50 vs concurrency per server (with the best
    raw throughput), and the CPU per request at the highest level split into event loop, codec stages and
    the rest."""
    rows = [r for r in report["results"] if r["mode"] == "closed"]
    servers = list(dict.fromkeys(r["server"] for r in rows))
    levels = sorted({r["concurrency"] for r in rows})
    fig, (throughput, p50, cpu) = plt.subplots(1, 3, figsize=(16, 4.8))
    for server in servers:
        mine = sorted((r for r in rows if r["server"] == server), key=lambda r: r["concurrency"])
        style = "--" if mine[0].get("kind") == "naive" else "-"
        x = [r["concurrency"] for r in mine]
        throughput.plot(x, [r["throughput_rps"] for r in mine], style, marker="o", label=server)
        p50.plot(x, [r["p50_ms"] for r in mine], style, marker="o", label=server)
    raw = report["raw_forward"]
    throughput.axhline(
        raw["best_raw_images_per_s"], color="k", linestyle=":", label=f"best raw ({raw['best_method']})"
    )
    for axis in (throughput, p50):
        _integer_x(axis, levels)
        axis.set_xlabel("concurrent clients (closed loop)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    throughput.set_ylabel("throughput (responses/s)")
    p50.set_ylabel("p50 latency (ms)")
    top = [next(r for r in rows if r["server"] == s and r["concurrency"] == levels[-1]) for s in servers]
    parts = (
        ("loop_cpu_ms_per_request", "event loop (HTTP, upload, log, metrics)"),
        ("codec_cpu_ms_per_request", "codec stages (decode..encode)"),
        ("other_cpu_ms_per_request", "rest (inference, pools)"),
    )
    bottom = [0.0] * len(top)
    for key, label in parts:
        heights = [r.get(key) or 0.0 for r in top]
        cpu.bar(servers, heights, bottom=bottom, label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    cpu.set_ylabel(f"server CPU ms per request at c={levels[-1]}")
    cpu.tick_params(axis="x", labelrotation=20, labelsize=8)
    cpu.legend(fontsize=8)
    fig.suptitle(
        f"POST /segment vs the naive baseline, {Path(report['model']).name} — {_title(report)}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
