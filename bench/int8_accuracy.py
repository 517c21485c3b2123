"""What INT8 costs in accuracy: FP32 vs static INT8 of a trained model on held-out synthetic scenes.

    python -m bench.int8_accuracy --onnx models/demo/fcn8s-demo.onnx
    python -m bench.int8_accuracy --onnx models/demo/fcn8s-demo.onnx --variants "" "fc6" "score_fr upscore8"

Each variant is a set of layers kept in FP32 (``""`` = quantise everything ``export.quantize`` quantises by
default). The held-out scenes come from ``training.synth`` with a seed the training data did not use. Per
variant: mean IU of FP32 and INT8 against the ground truth, the label agreement INT8 vs FP32 (share of
pixels with the same label) and the median forward time of both at the evaluation size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.machine import RESULTS_ROOT, describe_machine, machine_slug, usable_cores
from common.contract import INPUT_NAME
from common.onnxrt import create_session, read_metadata
from export.quantize import quantize_onnx, synthetic_images
from training.metrics import ConfusionMeter
from training.synth import HELD_OUT_SEED, make_scene, scene_rng


def held_out_scenes(count: int, size: int, seed: int = HELD_OUT_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (image, labels) synthetic scenes of ``size x size``."""
    return [make_scene(scene_rng(seed, index), size, size) for index in range(count)]


def _session(path: Path, threads: int) -> ort.InferenceSession:
    return create_session(path, intra_op_threads=threads)


def predict(session: ort.InferenceSession, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Label maps of each image (batch 1)."""
    return [session.run(None, {INPUT_NAME: image[None]})[0][0] for image in images]


def median_ms(session: ort.InferenceSession, image: np.ndarray, runs: int) -> float:
    """Median forward time of one image (after one warm-up run)."""
    session.run(None, {INPUT_NAME: image[None]})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {INPUT_NAME: image[None]})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def openvino_ms(path: Path, image: np.ndarray, runs: int, threads: int) -> float | None:
    """Median forward time of the same file on OpenVINO (one instance, ``threads`` threads; None without
    the openvino package)."""
    from server.backends.base import BackendError
    from server.backends.openvino import OpenVinoBackend, available

    if not available():
        return None
    try:
        backend = OpenVinoBackend(path, instances=1, threads=threads)
    except BackendError:
        return None
    batch = image[None]
    backend.run(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        backend.run(batch)
        times.append(time.perf_counter() - start)
    backend.close()
    return 1000 * float(np.median(times))


def compare(
    fp32: list[np.ndarray], int8: list[np.ndarray], truth: list[np.ndarray], num_classes: int
) -> dict[str, float]:
    """Mean IU of both against the ground truth, and the INT8-vs-FP32 label agreement."""
    meters = {"fp32": ConfusionMeter(num_classes), "int8": ConfusionMeter(num_classes)}
    for a, b, gt in zip(fp32, int8, truth, strict=True):
        meters["fp32"].update(gt, a)
        meters["int8"].update(gt, b)
    agreement = float(np.mean(np.concatenate([(a == b).ravel() for a, b in zip(fp32, int8, strict=True)])))
    fp32_iu, int8_iu = meters["fp32"].scores().mean_iu, meters["int8"].scores().mean_iu
    return {
        "fp32_mean_iu": fp32_iu,
        "int8_mean_iu": int8_iu,
        "mean_iu_change": int8_iu - fp32_iu,
        "agreement": agreement,
    }


def evaluate(
    onnx_path: Path, variants: Sequence[Sequence[str]], *, count: int, size: int, calib_count: int,
    calib_size: int, runs: int, threads: int, work_dir: Path, reduce_range: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """Quantise once per variant and compare it with FP32 on the held-out scenes."""
    scenes = held_out_scenes(count, size)
    images, truth = [s[0] for s in scenes], [s[1] for s in scenes]
    fp32_session = _session(onnx_path, threads)
    num_classes = _classes(onnx_path)
    fp32_labels = predict(fp32_session, images)
    fp32_ms = median_ms(fp32_session, images[0], runs)
    ov_fp32_ms = openvino_ms(onnx_path, images[0], runs, threads)
    calibration = synthetic_images(calib_count, calib_size)
    rows = []
    for index, keep in enumerate(variants):
        out = work_dir / f"int8-{index}.onnx"
        result = quantize_onnx(onnx_path, out, calibration, keep_fp32=keep, reduce_range=reduce_range)
        session = _session(out, threads)
        row = {
            "keep_fp32": list(keep),
            "int8_convolutions": result.int8_convolutions,
            **compare(fp32_labels, predict(session, images), truth, num_classes),
            "fp32_ms": fp32_ms,
            "int8_ms": median_ms(session, images[0], runs),
            "openvino_fp32_ms": ov_fp32_ms,
            "openvino_int8_ms": openvino_ms(out, images[0], runs, threads),
        }
        rows.append(row)
        print(
            f"[int8] keep {keep or 'nothing'} in FP32: agreement {100 * row['agreement']:.2f}%, mean IU "
            f"{100 * row['fp32_mean_iu']:.2f} -> {100 * row['int8_mean_iu']:.2f}, "
            f"ONNX Runtime {row['fp32_ms']:.0f} -> {row['int8_ms']:.0f} ms, OpenVINO "
            f"{row['openvino_fp32_ms'] or 0:.0f} -> {row['openvino_int8_ms'] or 0:.0f} ms",
            file=sys.stderr,
            flush=True,
        )
    return rows


def _classes(onnx_path: Path) -> int:
    return read_metadata(onnx_path)[0].num_classes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", type=Path, required=True, help="FP32 ONNX of a trained model (export.onnx)")
    parser.add_argument("--variants", nargs="+", default=["", "score_fr score_pool4 score_pool3", "conv1_1"],
                        help='layer sets kept in FP32, one quoted string each ("" = none)')  # fmt: skip
    parser.add_argument("--count", type=int, default=100, help="held-out scenes")
    parser.add_argument(
        "--size", type=int, default=160, help="side of the held-out scenes (demo: trained at 160)"
    )
    parser.add_argument("--calib-count", type=int, default=16, help="synthetic calibration scenes (seed 0)")
    parser.add_argument("--calib-size", type=int, default=160, help="side of the calibration scenes")
    parser.add_argument("--runs", type=int, default=10, help="timed runs for the forward times")
    parser.add_argument("--reduce-range", action="store_true", help="7-bit weights (CPUs without VNNI)")
    parser.add_argument("--machine", help="results folder name (default: from the CPU model)")
    parser.add_argument(
        "--out", type=Path, help="JSON report (default: bench/results/<machine>/int8-accuracy.json)"
    )
    args = parser.parse_args(argv)
    if not args.onnx.is_file():
        print(f"no such model: {args.onnx}", file=sys.stderr)
        return 1
    machine = describe_machine()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    variants = [tuple(v.split()) for v in args.variants]
    with tempfile.TemporaryDirectory(prefix="fcn-int8-") as tmp:
        rows = evaluate(
            args.onnx, variants, count=args.count, size=args.size, calib_count=args.calib_count,
            calib_size=args.calib_size, runs=args.runs, threads=usable_cores(), work_dir=Path(tmp),
            reduce_range=args.reduce_range,
        )  # fmt: skip
    best = max(rows, key=lambda r: r["agreement"])
    report = {
        "benchmark": "int8-accuracy",
        "started": started,
        "model": str(args.onnx),
        "machine": machine
        | {"slug": args.machine or machine_slug(machine), "load_average_at_end": list(os.getloadavg())},
        "held_out": {"count": args.count, "size": args.size, "seed": HELD_OUT_SEED},
        "calibration": {"count": args.calib_count, "size": args.calib_size, "seed": 0},
        "reduce_range": args.reduce_range,
        "results": rows,
        "target": {
            "goal": "label agreement >= 0.99",
            "best_keep_fp32": best["keep_fp32"],
            "value": best["agreement"],
            "status": "met" if best["agreement"] >= 0.99 else "missed",
        },
    }
    out = args.out or RESULTS_ROOT / report["machine"]["slug"] / "int8-accuracy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{'kept in FP32':36s} {'agree %':>8s} {'FP32 mIU':>9s} {'INT8 mIU':>9s} "
        f"{'FP32 ms':>8s} {'INT8 ms':>8s}"
    )
    for r in rows:
        print(
            f"{' '.join(r['keep_fp32']) or '-':36s} {100 * r['agreement']:8.2f} "
            f"{100 * r['fp32_mean_iu']:9.2f} {100 * r['int8_mean_iu']:9.2f} "
            f"{r['fp32_ms']:8.1f} {r['int8_ms']:8.1f}"
        )
    print(
        f"target label agreement >= 99%: {report['target']['status'].upper()} "
        f"({100 * best['agreement']:.2f}%)"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
