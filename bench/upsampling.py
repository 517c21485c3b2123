"""What grouped upsampling saves: the same weights exported with per-class (grouped) vs dense upsamplers.

    python -m bench.upsampling                      # the demo checkpoint and a width-1/8 FCN-8s
    python -m bench.upsampling --runs 30 --out-dir bench/results/<machine>

The reference nets' upsampling kernels are per-class (class c only feeds class c), so a grouped
ConvTranspose computes the same output with 1/C of the work; ``export.onnx`` writes that form unless
``--dense-upsampling``. Per model: both graphs are timed with ONNX Runtime (one session, every core, batch
1, a VOC-size photo's bucket), alternating A/B so machine load hits both alike, and their labels compared
on held-out synthetic scenes and the benchmark photographs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.images import load_photographs
from bench.machine import RESULTS_ROOT, describe_machine, machine_slug
from bench.models import ModelSpec, random_model
from common.contract import INPUT_NAME
from common.geometry import ServingGeometry
from common.onnxrt import create_session
from export.onnx import export_onnx
from server.tuning import representative_image
from training.synth import make_scene, scene_rng
from training.weights import load_checkpoint

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo" / "fcn8s-demo.safetensors"
CHECK_SHAPES = ((1, 160, 200), (2, 96, 128))


def log(message: str) -> None:
    """One progress line."""
    print(f"[upsampling] {message}", file=sys.stderr, flush=True)


def compare(name: str, model: Any, metadata: Any, runs: int, folder: Path) -> dict[str, Any]:
    """Export both forms, time them alternately and compare their labels."""
    paths = {}
    for form, grouped in (("grouped", True), ("dense", False)):
        paths[form] = folder / f"{name}-{form}.onnx"
        log(f"{name}: exporting the {form} form")
        export_onnx(
            model,
            metadata,
            paths[form],
            source_sha256="0" * 64,
            shapes=CHECK_SHAPES,
            group_upsampling=grouped,
        )
    sessions = {form: create_session(path) for form, path in paths.items()}
    geometry = ServingGeometry(metadata.geometry)
    image = representative_image(geometry)[None]
    times: dict[str, list[float]] = {form: [] for form in sessions}
    for session in sessions.values():
        session.run(None, {INPUT_NAME: image})
    for _ in range(runs):
        for form, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {INPUT_NAME: image})
            times[form].append(time.perf_counter() - start)
    scenes = [make_scene(scene_rng(20261125, i), 160, 160)[0] for i in range(20)]
    photos = [np.asarray(p) for p in load_photographs(256)]
    differing = total = 0
    for picture in [*scenes, *photos]:
        padded = geometry.pad(picture, metadata.normalization.neutral_rgb())[None]
        labels = [s.run(None, {INPUT_NAME: padded})[0] for s in sessions.values()]
        differing += int((labels[0] != labels[1]).sum())
        total += labels[0].size
    grouped_ms, dense_ms = (1000 * float(np.median(times[f])) for f in ("grouped", "dense"))
    result = {
        "model": name,
        "image": list(image.shape[1:3]),
        "runs": runs,
        "grouped_ms": round(grouped_ms, 2),
        "dense_ms": round(dense_ms, 2),
        "saving": round(1 - grouped_ms / dense_ms, 4),
        "label_differences": differing,
        "pixels_compared": total,
    }
    log(
        f"{name}: grouped {grouped_ms:.1f} ms vs dense {dense_ms:.1f} ms per image "
        f"({100 * result['saving']:.1f}% saved); {differing} of {total} labels differ"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=DEMO, help="trained checkpoint (default: the demo)"
    )
    parser.add_argument(
        "--width", type=float, default=0.125, help="width of the random-weight FCN-8s (0 = skip)"
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per form (alternating)")
    parser.add_argument("--out-dir", type=Path, help="results folder (default: bench/results/<machine>)")
    args = parser.parse_args(argv)
    machine = describe_machine()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model, metadata = load_checkpoint(args.checkpoint)
        results.append(compare(metadata.name, model, metadata, args.runs, Path(tmp)))
        if args.width:
            spec = ModelSpec(width=args.width)
            results.append(compare(spec.key, random_model(spec), spec.metadata(), args.runs, Path(tmp)))
    out_dir = args.out_dir or RESULTS_ROOT / machine_slug(machine)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "upsampling", "started": started, "machine": machine, "results": results}
    path = out_dir / "upsampling.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print("model | image | grouped ms | dense ms | saved | label differences")
    for r in results:
        print(
            f"{r['model']} | {r['image'][0]}x{r['image'][1]} | {r['grouped_ms']} | {r['dense_ms']} | "
            f"{100 * r['saving']:.1f}% | {r['label_differences']} of {r['pixels_compared']}"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
