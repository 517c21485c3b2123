"""Forward time of the full-size FCN-8s per backend and batch size, beside the paper's K40c numbers.

    python -m bench.forward                       # width 1.0, 500x500, batches 1..16, every backend here
    python -m bench.forward --quick --out-dir /tmp/q
    python -m bench.forward --gpu                 # the GPU rows only (PyTorch CUDA FP16, ORT CUDA, TensorRT)

All backends run in one process, interleaved round by round (round r starts at backend r mod k), so their
ratios hold on a noisy machine. Each (backend, batch) gets ``--warmup`` untimed runs and ``--runs`` timed
ones. A backend stops growing its batch when the next size would take longer than ``--max-seconds`` a run;
the whole sweep stops before a batch size that would overrun ``--budget-s``. Results (JSON, CSV, PNG) go to
``bench/results/<machine>/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.backends import BACKENDS, GPU_BACKENDS, BuildContext, Runner, Unavailable
from bench.flops import fcn_gflop
from bench.images import photograph_batch
from bench.machine import RESULTS_ROOT, describe_machine, machine_slug, usable_cores
from bench.models import DEFAULT_CACHE, ModelSpec
from bench.peak import measure_peak
from bench.stats import percentiles

PAPER_FCN8S_MS = 175.0
PAPER_FCN_VGG16_MS = 210.0
PAPER_GPU = "NVIDIA Tesla K40c (Caffe), FCN paper"
QUICK_BACKENDS = ("torch-eager", "ort-cpu-fp32", "ort-cpu-int8")
QUICK_WIDTH = 1 / 32
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
"""glibc malloc settings the CLI restarts itself with: PyTorch eager allocates every activation afresh on
each call and otherwise takes hundreds of thousands of page faults per full-size forward pass (ONNX Runtime
reuses its arena and is unaffected)."""
CSV_FIELDS = (
    "backend", "device", "precision", "batch", "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms",
    "ms_per_image", "images_per_s", "gflops", "peak_share", "time_vs_paper_fcn8s", "time_vs_paper_fcn_vgg16",
)  # fmt: skip


def log(message: str) -> None:
    """One progress line on stderr (the table goes to stdout)."""
    print(f"[forward] {message}", file=sys.stderr, flush=True)


def build_runners(names: Sequence[str], context: BuildContext) -> tuple[list[Runner], dict[str, str]]:
    """Create the named backends; those that cannot run here come back as ``{name: reason}``."""
    runners: list[Runner] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            runners.append(BACKENDS[name](context))
            log(f"ready: {name}")
        except Unavailable as reason:
            skipped[name] = str(reason)
            log(f"skipped: {name}: {reason}")
    return runners, skipped


def time_batch(
    runners: Sequence[Runner], images: np.ndarray, warmup: int, runs: int
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Interleaved timing of one batch: per backend the timed seconds, and the backends that failed."""
    inputs: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for runner in runners:
        try:
            inputs[runner.name] = runner.prepare(images)
        except (MemoryError, RuntimeError) as error:
            failed[runner.name] = f"prepare failed at batch {len(images)}: {error}"
    samples: dict[str, list[float]] = {name: [] for name in inputs}
    active = [r for r in runners if r.name in inputs]
    for round_index in range(warmup + runs):
        shift = round_index % max(1, len(active))
        for runner in active[shift:] + active[:shift]:
            if runner.name in failed:
                continue
            try:
                start = time.perf_counter()
                runner.run(inputs[runner.name])
                elapsed = time.perf_counter() - start
            except (MemoryError, RuntimeError) as error:
                failed[runner.name] = f"run failed at batch {len(images)}: {error}"
                continue
            if round_index >= warmup:
                samples[runner.name].append(elapsed)
    return {name: s for name, s in samples.items() if name not in failed and s}, failed


def summarize(runner: Runner, batch: int, samples: list[float], gflop_per_image: float) -> dict[str, Any]:
    """One result row: latency percentiles, throughput, achieved GFLOP/s, paper ratios (the share of the
    peak is filled in by :func:`apply_peak`)."""
    stats = percentiles(samples)
    p50_s = stats["p50_ms"] / 1000
    ms_per_image = stats["p50_ms"] / batch
    gflops = gflop_per_image * batch / p50_s
    return {
        "backend": runner.name,
        "device": runner.device,
        "precision": runner.precision,
        "batch": batch,
        "runs": len(samples),
        **{k: stats[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms")},
        "ms_per_image": ms_per_image,
        "images_per_s": batch / p50_s,
        "gflops": gflops,
        "peak_share": None,
        "time_vs_paper_fcn8s": ms_per_image / PAPER_FCN8S_MS,
        "time_vs_paper_fcn_vgg16": ms_per_image / PAPER_FCN_VGG16_MS,
    }


def sweep(
    runners: list[Runner],
    batch_sizes: Sequence[int],
    height: int,
    width: int,
    *,
    warmup: int,
    runs: int,
    max_seconds: float,
    budget_s: float | None,
    max_batch: dict[str, int] | None = None,
    gflop_per_image: float,
    make_images: Callable[[int, int, int], np.ndarray] = photograph_batch,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Time every runner at growing batch sizes; returns the rows and why each backend stopped early.

    ``max_batch`` caps named backends' batch sizes (e.g. the reference-only ones, to save time)."""
    rows: list[dict[str, Any]] = []
    stopped: dict[str, str] = {}
    last_p50: dict[str, tuple[int, float]] = {}
    start = time.perf_counter()
    active = list(runners)
    for batch in sorted(batch_sizes):
        if not active:
            break
        estimate = sum(
            last_p50[r.name][1] * batch / last_p50[r.name][0] for r in active if r.name in last_p50
        )
        if budget_s is not None and time.perf_counter() - start + estimate * (warmup + runs) > budget_s:
            for runner in active:
                stopped[runner.name] = f"batch {batch} would overrun --budget-s {budget_s:g}"
            log(f"stopping before batch {batch}: the budget of {budget_s:g} s would be overrun")
            break
        log(f"batch {batch}: {', '.join(r.name for r in active)} ({warmup} warm-up + {runs} timed rounds)")
        samples, failed = time_batch(active, make_images(batch, height, width), warmup, runs)
        stopped.update(failed)
        for runner in active:
            if runner.name in samples:
                row = summarize(runner, batch, samples[runner.name], gflop_per_image)
                rows.append(row)
                last_p50[runner.name] = (batch, row["p50_ms"] / 1000)
                log(f"  {runner.name:20s} p50 {row['p50_ms']:9.1f} ms  {row['images_per_s']:7.2f} img/s")
        next_active = []
        for runner in active:
            if runner.name not in samples:
                continue
            larger = [b for b in batch_sizes if b > batch]
            cap = (max_batch or {}).get(runner.name)
            if larger and cap is not None and min(larger) > cap:
                stopped[runner.name] = f"--max-batch {runner.name}={cap}"
                continue
            if larger and last_p50[runner.name][1] * min(larger) / batch > max_seconds:
                stopped[runner.name] = (
                    f"batch {min(larger)} would take ~{last_p50[runner.name][1] * min(larger) / batch:.1f} s "
                    f"a run (> --max-seconds {max_seconds:g})"
                )
                continue
            next_active.append(runner)
        active = next_active
    return rows, stopped


def random_pixels(batch: int, height: int, width: int) -> np.ndarray:
    """uint8 noise of the batch's shape (``--random-pixels``: the FCN's time does not depend on content)."""
    return np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def apply_peak(rows: list[dict[str, Any]], peak_gflops: float | None) -> None:
    """Set each FP32 CPU row's share of the measured float32 peak (INT8 rows would compare integer work with
    a float peak, GPU rows have no measured peak: None)."""
    for row in rows:
        fp32_cpu = row["device"] == "cpu" and row["precision"] == "fp32"
        row["peak_share"] = row["gflops"] / peak_gflops if fp32_cpu and peak_gflops else None


def measure_peaks(threads: int, quick: bool, start: dict[str, Any] | None) -> dict[str, Any]:
    """The FMA/matmul peak measured before (``start``) and after the sweep; the higher one is used, since
    other load on the machine can only lower a measurement."""
    end = measure_peak(threads, quick=quick).to_dict()
    best = max([p for p in (start, end) if p is not None], key=lambda p: p["gflops"])
    return best | {"at_start_gflops": start["gflops"] if start else None, "at_end_gflops": end["gflops"]}


def _row(rows: list[dict[str, Any]], backend: str, batch: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["backend"] == backend and r["batch"] == batch), None)


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's forward-pass targets, each met / missed / not measured here."""
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: str, met: bool | None) -> None:
        status = "not measured" if met is None else "met" if met else "missed"
        targets.append({"target": name, "value": value, "goal": goal, "status": status})

    fp32 = _row(rows, "ort-cpu-fp32", 1)
    share = fp32["peak_share"] if fp32 else None
    add(
        "ORT FP32 share of the FMA peak at 500x500, batch 1",
        share,
        ">= 0.80",
        None if share is None else share >= 0.8,
    )
    plain = _row(rows, "ort-cpu-fp32-plain", 1)
    overhead = fp32["p50_ms"] / plain["p50_ms"] - 1 if fp32 and plain else None
    add("in-graph pre/post-processing cost (ORT FP32 vs plain network)", overhead, "<= 0.02",
        None if overhead is None else overhead <= 0.02)  # fmt: skip
    int8 = _row(rows, "ort-cpu-int8", 1)
    int8_ms = int8["p50_ms"] if int8 else None
    add("ORT INT8 at 500x500, batch 1 (ms)", int8_ms, "<= 240", None if int8_ms is None else int8_ms <= 240)
    add("ORT INT8 stretch goal: faster than the paper's K40c (ms)", int8_ms, "<= 175",
        None if int8_ms is None else int8_ms <= 175)  # fmt: skip
    trt = _row(rows, "trt-fp16", 8)
    trt_ms = trt["ms_per_image"] if trt else None
    add(
        "TensorRT FP16 at 500x500, batch 8 (ms per image)",
        trt_ms,
        "<= 1.75",
        None if trt_ms is None else trt_ms <= 1.75,
    )
    return targets


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of the results."""
    header = (
        f"{'backend':20s} {'batch':>5s} {'p50 ms':>9s} {'p90 ms':>9s} {'p99 ms':>9s} {'ms/img':>8s} "
        f"{'img/s':>7s} {'GFLOP/s':>8s} {'%peak':>6s} {'/175ms':>7s} {'/210ms':>7s}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        share = f"{100 * r['peak_share']:5.1f}%" if r["peak_share"] is not None else "     -"
        lines.append(
            f"{r['backend']:20s} {r['batch']:5d} {r['p50_ms']:9.1f} {r['p90_ms']:9.1f} {r['p99_ms']:9.1f} "
            f"{r['ms_per_image']:8.1f} {r['images_per_s']:7.2f} {r['gflops']:8.1f} {share} "
            f"{r['time_vs_paper_fcn8s']:6.2f}x {r['time_vs_paper_fcn_vgg16']:6.2f}x"
        )
    return "\n".join(lines)


def write_outputs(report: dict[str, Any], out_dir: Path, plot: bool) -> list[Path]:
    """forward.json, forward.csv and (with ``plot``) forward.png under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "forward.json", out_dir / "forward.csv"]
    written[0].write_text(json.dumps(report, indent=2) + "\n")
    with written[1].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(report["results"])
    if plot and report["results"]:
        from bench.plots import plot_forward

        written.append(plot_forward(report, out_dir / "forward.png"))
    return written


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backends", nargs="+", choices=list(BACKENDS), help="default: all (quick: a CPU subset)"
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument(
        "--size", nargs=2, type=int, default=[500, 500], metavar=("H", "W"), help="image size"
    )
    parser.add_argument("--arch", default="fcn8s", help="fcn32s | fcn16s | fcn8s | fcn8s-atonce")
    parser.add_argument(
        "--model-width", type=float, default=1.0, help="channel width multiplier (1.0 = paper)"
    )
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per backend and batch")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per backend and batch")
    parser.add_argument(
        "--max-seconds", type=float, default=8.0, help="stop growing a backend's batch past this"
    )
    parser.add_argument(
        "--max-batch",
        nargs="*",
        default=[],
        metavar="BACKEND=N",
        help="cap a backend's batch size (saves time)",
    )
    parser.add_argument(
        "--budget-s", type=float, help="stop the sweep before a batch size that would overrun this"
    )
    parser.add_argument(
        "--threads", type=int, default=usable_cores(), help="intra-op threads (default: all cores)"
    )
    parser.add_argument("--peak-gflops", type=float, help="use this device peak instead of measuring it")
    parser.add_argument("--no-peak", action="store_true", help="do not measure the CPU float32 peak")
    parser.add_argument(
        "--random-pixels", action="store_true", help="time noise images (where scikit-image's photos are not)"
    )
    parser.add_argument(
        "--gpu", action="store_true", help=f"the GPU rows only ({', '.join(GPU_BACKENDS)}), no CPU peak"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the ONNX files are cached")
    parser.add_argument("--rebuild", action="store_true", help="re-export and re-quantise the cached models")
    parser.add_argument("--machine", help="results folder name (default: from the CPU/GPU model)")
    parser.add_argument("--out-dir", type=Path, help="default: bench/results/<machine>")
    parser.add_argument(
        "--note", default="", help="free text stored in the report (e.g. other load on the machine)"
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--no-malloc-tuning", action="store_true", help="keep glibc's default malloc thresholds"
    )
    parser.add_argument("--quick", action="store_true", help="tiny net, 64x64 images, 3 runs: a smoke test")
    args = parser.parse_args(argv)
    if args.gpu:
        args.backends, args.no_peak = args.backends or list(GPU_BACKENDS), True
    if args.quick:
        args.model_width, args.size, args.batch_sizes = QUICK_WIDTH, [64, 64], [1, 2]
        args.warmup, args.runs = 1, 3
        args.backends = args.backends or list(QUICK_BACKENDS)
    if args.runs < 1 or args.warmup < 0 or min(args.batch_sizes) < 1 or min(args.size) < 1:
        parser.error("--runs, --batch-sizes and --size must be positive, --warmup non-negative")
    args.backends = args.backends or list(BACKENDS)
    try:
        args.max_batch = {name: int(n) for name, n in (item.split("=", 1) for item in args.max_batch)}
    except ValueError:
        parser.error("--max-batch takes BACKEND=N items")
    unknown = set(args.max_batch) - set(BACKENDS)
    if unknown:
        parser.error(f"--max-batch names unknown backends {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    machine = describe_machine()
    slug = args.machine or machine_slug(machine)
    out_dir = args.out_dir or RESULTS_ROOT / slug
    height, width = args.size
    spec = ModelSpec(args.arch, args.num_classes, args.model_width)
    gflop = fcn_gflop(spec.architecture, spec.num_classes, spec.width, height, width)
    log(
        f"{slug}: {machine['cpu_model']}, {machine['cores']} cores; "
        f"{spec.key} at {height}x{width}: {gflop:.1f} GFLOP"
    )
    peak_start = None
    if not (args.peak_gflops or args.no_peak):
        log("measuring the CPU float32 peak (again after the sweep)")
        peak_start = measure_peak(args.threads, quick=args.quick).to_dict()
        log(f"peak {peak_start['gflops']:.0f} GFLOP/s: {peak_start['description']}")
    context = BuildContext(spec, args.cache, args.threads, args.rebuild)
    runners, skipped = build_runners(args.backends, context)
    rows, stopped = sweep(
        runners, args.batch_sizes, height, width, warmup=args.warmup, runs=args.runs,
        max_seconds=args.max_seconds, budget_s=args.budget_s, gflop_per_image=gflop, max_batch=args.max_batch,
        make_images=random_pixels if args.random_pixels else photograph_batch,
    )  # fmt: skip
    if args.no_peak:
        peak: dict[str, Any] = {"gflops": None, "method": "not measured", "description": "--no-peak"}
    elif args.peak_gflops:
        peak = {"gflops": args.peak_gflops, "method": "given", "description": "--peak-gflops"}
    else:
        peak = measure_peaks(args.threads, args.quick, peak_start)
    apply_peak(rows, peak["gflops"])
    targets = evaluate_targets(rows) if (spec.width, height, width) == (1.0, 500, 500) else []
    report = {
        "benchmark": "forward",
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine | {"slug": slug, "load_average_at_end": list(os.getloadavg())},
        "note": args.note,
        "peak": peak,
        "model": asdict(spec) | {"height": height, "image_width": width, "gflop_per_image": gflop},
        "settings": {
            k: args.__dict__[k]
            for k in ("warmup", "runs", "max_seconds", "max_batch", "budget_s", "threads", "random_pixels")
        },
        "paper": {"fcn8s_ms": PAPER_FCN8S_MS, "fcn_vgg16_ms": PAPER_FCN_VGG16_MS, "device": PAPER_GPU},
        "backends": {r.name: r.description for r in runners},
        "skipped": skipped,
        "stopped": stopped,
        "results": rows,
        "targets": targets,
    }
    print(f"\nFCN forward pass, {spec.key} at {height}x{width} ({gflop:.1f} GFLOP/image) on {slug}")
    if peak["gflops"]:
        print(f"peak {peak['gflops']:.0f} GFLOP/s ({peak['description']}; higher of the runs before/after)\n")
    print(format_table(rows))
    for name, reason in {**skipped, **stopped}.items():
        print(f"  {name}: {reason}")
    for target in targets:
        value = "-" if target["value"] is None else f"{target['value']:.3g}"
        print(f"  target {target['target']}: {value} (goal {target['goal']}): {target['status'].upper()}")
    for path in write_outputs(report, out_dir, plot=not args.no_plot):
        print(f"wrote {path}")
    return 0 if rows else 1


def reexec_with_malloc_tuning() -> None:
    """Restart the CLI with :data:`MALLOC_TUNING` in the environment (glibc reads it only at start-up)."""
    if "--no-malloc-tuning" in sys.argv or all(os.environ.get(k) == v for k, v in MALLOC_TUNING.items()):
        return
    os.execve(
        sys.executable, [sys.executable, "-m", "bench.forward", *sys.argv[1:]], os.environ | MALLOC_TUNING
    )


if __name__ == "__main__":
    reexec_with_malloc_tuning()
    sys.exit(main())
