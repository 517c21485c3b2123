"""Build a TensorRT engine (plan + JSON sidecar) from the exported ONNX graph.

    python export/build_engine.py --onnx model-fp16.onnx --out model.plan --reference model.onnx --verify

Strongly typed build (TensorRT 10.12+ and 11.x): the precision is the ONNX graph's, so build from the
FP16 ONNX (``python -m export.fp16``) for an FP16 engine; the engine inspector then confirms that the
convolutions really run in FP16. One optimisation profile for ``image`` [N, H, W, 3] from the flags; a
timing cache file (keyed by TensorRT version, GPU name and compute capability) is reused between builds.
Plan, sidecar and timing cache are written atomically (``engine.cache``). ``--verify`` compares
the engine's labels with ONNX Runtime running the FP32 graph, tie-aware (``export/agreement.py``).
``--triton-repo`` also writes a Triton model repository. Without TensorRT or a CUDA GPU it exits with
status 2 and one line saying what is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from export/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import os
import re
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime

import numpy as np

from common.contract import INPUT_NAME
from common.digest import file_sha256
from common.geometry import (
    DEFAULT_GRANULARITY,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_SIDE,
    NetworkGeometry,
    Profile,
    ServingGeometry,
)
from engine.cache import write_atomic
from engine.spec import Sidecar, write_sidecar
from export.agreement import FP16_GATE, Agreement, Gate

EXIT_UNAVAILABLE = 2
MIN_AGREEMENT = 1 - FP16_GATE.max_real
PROFILE_FIELDS = tuple(f.name for f in fields(Profile))
SERVING_DEFAULTS = {
    "max_side": DEFAULT_MAX_SIDE,
    "bucket": DEFAULT_GRANULARITY,
    "max_batch_size": DEFAULT_MAX_BATCH,
}


def log(message: str) -> None:
    """One progress line."""
    print(f"[build_engine] {message}", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", type=Path, required=True, help="ONNX graph (FP16 for an FP16 engine)")
    parser.add_argument("--out", type=Path, required=True, help="plan file to write (sidecar: OUT.json)")
    serving = parser.add_argument_group(
        "serving geometry: the profile covers every bucket the server makes with these settings "
        "(defaults: the server's FCN_* variables where set, else the server's defaults)"
    )
    for name, default in SERVING_DEFAULTS.items():
        value = int(os.environ.get(f"FCN_{name.upper()}", default))
        serving.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=value, help=f"as FCN_{name.upper()} ({value})"
        )
    profile = parser.add_argument_group("explicit profile of the image input [N, H, W, 3] (overrides)")
    for field in PROFILE_FIELDS:
        profile.add_argument(f"--profile-{field.replace('_', '-')}", type=int, dest=field, metavar="N")
    parser.add_argument("--workspace-gb", type=float, default=4.0, help="workspace memory limit (default 4)")
    parser.add_argument(
        "--opt-level", type=int, default=3, choices=range(6), help="builder optimisation level"
    )
    parser.add_argument(
        "--timing-cache",
        type=Path,
        help="timing cache file (default: OUT's folder, per TensorRT version, GPU and compute capability)",
    )
    parser.add_argument("--verify", action="store_true", help="compare labels with ONNX Runtime FP32")
    parser.add_argument(
        "--reference", type=Path, help="FP32 ONNX for --verify (default: --onnx if it is FP32)"
    )
    parser.add_argument("--images", type=Path, help="VOC-layout folder whose val split --verify uses")
    parser.add_argument("--count", type=int, default=16, help="validation images for --verify (default 16)")
    parser.add_argument(
        "--min-agreement", type=float, default=MIN_AGREEMENT,
        help="--verify gate: share of pixels equal or near ties (%(default)s)",
    )  # fmt: skip
    parser.add_argument("--tie-atol", type=float, default=FP16_GATE.atol, help="near-tie tolerance")
    parser.add_argument(
        "--tie-rtol", type=float, default=FP16_GATE.rtol, help="near-tie tolerance per unit of top score"
    )
    parser.add_argument("--triton-repo", type=Path, help="also write a Triton model repository here")
    args = parser.parse_args(argv)
    if args.workspace_gb <= 0:
        parser.error("--workspace-gb must be positive")
    return args


def choose_profile(args: argparse.Namespace, network: NetworkGeometry) -> Profile:
    """The profile covering the serving geometry of ``args``, with any explicit ``--profile-*`` flag
    applied on top; ValueError when the result is not a valid profile."""
    geometry = ServingGeometry(network, args.max_side, args.bucket)
    derived = geometry.engine_profile(args.max_batch_size)
    given = {f: getattr(args, f) for f in PROFILE_FIELDS if getattr(args, f) is not None}
    return replace(derived, **given)


def timing_cache_path(folder: Path, tensorrt_version: str, gpu_name: str, compute_capability: str) -> Path:
    """The default timing cache of a build: one per TensorRT version, GPU name and compute capability
    (two GPUs of one capability, e.g. A100 40 GB and 80 GB, H100 and H200, have different timings)."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return folder / f"timing-trt{tensorrt_version}-{gpu}-sm{compute_capability.replace('.', '')}.cache"


def verify(plan: Path, reference: Path, images: list[np.ndarray], profile: Profile, gate: Gate) -> Agreement:
    """Tie-aware label agreement of the engine with ONNX Runtime FP32 on the images that fit the profile."""
    from engine.runtime import TensorRTRunner
    from export.agreement import compare, reference_session

    session, outputs = reference_session(reference)
    if len(outputs) == 1:
        log("  no onnx package to read the reference's scores: every differing label counts as real")
    runner = TensorRTRunner(plan)
    total = Agreement()
    try:
        for image in images:
            if not profile.covers(1, image.shape[0], image.shape[1]):
                log(f"  skipped a {image.shape[0]}x{image.shape[1]} image outside the profile")
                continue
            batch = image[None]
            labels, *scores = session.run(outputs, {INPUT_NAME: batch})
            total = total.add(compare(scores[0] if scores else None, labels, runner.run(batch), gate))
    finally:
        runner.close()
    if total.pixels == 0:
        raise ValueError("no validation image fits the engine profile")
    return total


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if not args.onnx.is_file():
        print(f"build_engine: no ONNX file at {args.onnx}", file=sys.stderr)
        return 1
    from engine.runtime import TensorRTUnavailable, environment
    from export import trt

    try:
        local = environment()
    except TensorRTUnavailable as error:
        print(f"build_engine: cannot build a TensorRT engine: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    from common.contract import PROP_PRECISION, PROP_SHA256
    from common.onnxrt import read_metadata
    from export.precision import PrecisionError, check_fp16, graph_convolutions, layer_precisions

    metadata, props = read_metadata(args.onnx)
    try:
        profile = choose_profile(args, metadata.geometry)
    except ValueError as error:
        print(f"build_engine: invalid profile: {error}", file=sys.stderr)
        return 1
    precision = props.get(PROP_PRECISION, "fp32")
    reference = args.reference or (args.onnx if precision == "fp32" else None)
    if args.verify and reference is None:
        print("build_engine: --verify needs --reference FP32.onnx for an FP16 graph", file=sys.stderr)
        return 1
    cache = args.timing_cache or timing_cache_path(
        args.out.parent, local.tensorrt_version, local.gpu_name, local.compute_capability
    )
    options = trt.BuildOptions(profile, int(args.workspace_gb * (1 << 30)), args.opt_level, cache)
    log(f"TensorRT {local.tensorrt_version} on {local.gpu_name} (sm {local.compute_capability})")
    log(f"building from {args.onnx} ({precision}); profile batch {profile.batches}, sides {profile.sides}")
    state = "found" if cache.is_file() else "new"
    log(f"timing cache {cache} ({state}); optimisation level {args.opt_level}")
    try:
        built = trt.build_engine(args.onnx, options)
        for note in built.notes:
            log(f"WARNING: {note}")
        report = layer_precisions(built.engine_information)
        log(f"built in {built.build_time_s:.1f} s: {report.summary()}")
        if precision == "fp16":
            for warning in check_fp16(report, graph=graph_convolutions(args.onnx)):
                log(f"WARNING: {warning}")
    except (trt.EngineBuildError, PrecisionError) as error:
        print(f"build_engine: {error}", file=sys.stderr)
        return 1
    write_atomic(args.out, built.plan)
    sidecar = Sidecar(
        tensorrt_version=local.tensorrt_version, gpu_name=local.gpu_name,
        compute_capability=local.compute_capability, profile=profile, precision=precision,
        onnx_sha256=file_sha256(args.onnx), build_time_s=round(built.build_time_s, 2), metadata=metadata,
        source_sha256=props.get(PROP_SHA256, ""), fp16_layers=report.fp16_layers, layers=report.layers,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )  # fmt: skip
    written = [args.out, write_sidecar(args.out, sidecar), *([cache] if cache.is_file() else [])]
    agreement = None
    if args.verify and reference is not None:
        from export.images import validation_images

        side = min(max(profile.opt_side, profile.min_side), profile.max_side)
        images = validation_images(args.images, args.count, (side, side))
        log(f"verifying against ONNX Runtime FP32 ({reference}) on {len(images)} images")
        gate = Gate(args.tie_atol, args.tie_rtol, 1 - args.min_agreement)
        agreement = verify(args.out, reference, images, profile, gate)
        log(f"label agreement engine vs ONNX Runtime FP32: {agreement.summary()} (gate: {gate.describe()})")
        if not agreement.passes(gate):
            print(
                f"build_engine: real disagreements on {100 * agreement.real_share:.3f}% of pixels "
                f"exceed the gate ({gate.describe()})",
                file=sys.stderr,
            )
            return 1
    if args.triton_repo is not None:
        from export.triton import write_repository

        written += write_repository(args.triton_repo, reference or args.onnx, args.out)
    log(f"done in {time.perf_counter() - start:.1f} s")
    for path in written:
        log(f"  wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if agreement is not None:
        log(f"  label agreement: {agreement.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
