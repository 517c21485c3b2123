"""ONNX Runtime static INT8 quantisation of an exported FCN (QDQ, per-channel weights) for the CPU.

    python -m export.quantize --onnx model.onnx --out model-int8.onnx [--calib-dir DIR | --calib-count N]

Activations are calibrated on training-distribution images: a VOC-layout folder's ``train`` split (or any
folder of .jpg/.png files) with ``--calib-dir``, else ``--calib-count`` synthetic scenes from
``training.synth`` (the demo model's training distribution). Activations become uint8, weights int8 with
one scale per output channel. The uint8 ``image`` → uint8 ``labels`` interface is unchanged: the
normalisation, the upsampling and the argmax stay in FP32 by default (``--keep-op-types``), named layers
can be kept in FP32 too (``--keep-fp32 fc6 upscore8``). ``metadata_props`` are copied with
``precision=int8``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from PIL import Image

from common.contract import INPUT_NAME, LABELS_NAME, PROP_PRECISION
from export.images import synthetic_batch, voc_images

QUANTIZED_OP_TYPES: tuple[str, ...] = ("Conv", "Relu", "MaxPool")
"""Op types quantised by default: convolutions, the ReLUs after them (folded into the conv output range) and
the pools between them (int8 in, int8 out)."""
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class QuantizationError(RuntimeError):
    """The input model, the calibration data or the quantised result is not what was asked for."""


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_onnx` did."""

    out: Path
    calibration_images: int
    int8_convolutions: int
    """Convolutions whose weights are int8 (dequantised from a quantised initializer)."""
    kept_fp32: tuple[str, ...]
    """Node names excluded by ``keep_fp32``."""
    seconds: float


class ImageReader(CalibrationDataReader):
    """Feeds calibration images one at a time as ``{"image": uint8 [1, H, W, 3]}``."""

    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self.images = images
        self._iterator: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iterator, None)
        return None if image is None else {INPUT_NAME: np.ascontiguousarray(image[None])}

    def rewind(self) -> None:
        self._iterator = iter(self.images)


def folder_images(folder: Path, limit: int | None = None) -> list[np.ndarray]:
    """Calibration images from a VOC-layout folder (its ``train`` split) or a flat folder of .jpg/.png."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder {folder} does not exist")
    if (folder / "ImageSets" / "Segmentation" / "train.txt").is_file():
        return voc_images(folder, "train", limit)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise QuantizationError(f"no .jpg/.png images (and no ImageSets/Segmentation/train.txt) in {folder}")
    return [np.asarray(Image.open(path).convert("RGB")) for path in files]


def synthetic_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` synthetic training-distribution scenes of ``size x size`` (``training.synth``)."""
    if count < 1:
        raise ValueError(f"calibration needs at least one image, got {count}")
    return list(synthetic_batch(count, size, size, seed))


def check_interface(model: onnx.ModelProto) -> None:
    """Raise unless the model has the deployable graph's uint8 ``image`` input and ``labels`` output."""
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    if inputs.get(INPUT_NAME) != onnx.TensorProto.UINT8 or outputs.get(LABELS_NAME) != onnx.TensorProto.UINT8:
        raise QuantizationError(
            f"expected the deployable graph (uint8 {INPUT_NAME!r} in, uint8 {LABELS_NAME!r} out); "
            f"got inputs {sorted(inputs)} and outputs {sorted(outputs)}"
        )


def _layer_of(node: onnx.NodeProto, initializers: set[str]) -> set[str]:
    """Names a user may call a node by: its own name, its path components and its weights' module path."""
    names = {node.name, *node.name.strip("/").split("/")}
    for tensor in node.input:
        if tensor in initializers:
            module = tensor.rsplit(".", 1)[0]
            names.update({module, module.rsplit(".", 1)[-1]})
    return names


def resolve_nodes(model: onnx.ModelProto, layers: Sequence[str]) -> list[str]:
    """The node names that implement the named layers (``fc6``, ``model.fc6``, or an exact node name)."""
    initializers = {t.name for t in model.graph.initializer}
    resolved: list[str] = []
    for layer in layers:
        matches = [
            n.name
            for n in model.graph.node
            if n.op_type != "Constant" and layer in _layer_of(n, initializers)
        ]
        if not matches:
            raise QuantizationError(f"no node implements layer {layer!r}")
        resolved.extend(m for m in matches if m not in resolved)
    return resolved


def quantize_onnx(
    source: Path,
    out: Path,
    images: Sequence[np.ndarray],
    *,
    keep_fp32: Sequence[str] = (),
    op_types: Sequence[str] = QUANTIZED_OP_TYPES,
    method: str = "minmax",
    reduce_range: bool = False,
) -> QuantizeResult:
    """Statically quantise the deployable FCN graph ``source`` into ``out`` (QDQ, per-channel int8 weights).

    ``images`` are uint8 ``[H, W, 3]`` calibration images (sizes may differ). ``keep_fp32`` names layers
    to leave in FP32; ``op_types`` are the op types to quantise.
    """
    start = time.perf_counter()
    source, out = Path(source), Path(out)
    if not images:
        raise QuantizationError("no calibration images")
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"unknown calibration method {method!r}; expected one of {sorted(CALIBRATION_METHODS)}"
        )
    original = onnx.load(str(source))
    check_interface(original)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fcn-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        _log("pre-processing (ORT graph optimisation, ONNX shape inference; symbolic shapes skipped)")
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        excluded = resolve_nodes(onnx.load(str(prepared), load_external_data=False), keep_fp32)
        _log(f"calibrating on {len(images)} images ({method}); keeping {len(excluded)} nodes in FP32")
        quantize_static(
            str(prepared),
            str(out),
            ImageReader(images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CALIBRATION_METHODS[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    quantized = onnx.load(str(out))
    check_interface(quantized)
    props = {p.key: p.value for p in original.metadata_props} | {PROP_PRECISION: "int8"}
    del quantized.metadata_props[:]
    for key, value in props.items():
        quantized.metadata_props.add(key=key, value=value)
    onnx.save(quantized, str(out))
    convolutions = int8_convolutions(quantized)
    return QuantizeResult(out, len(images), convolutions, tuple(excluded), time.perf_counter() - start)


def int8_convolutions(model: onnx.ModelProto) -> int:
    """Convolutions whose weight input is a DequantizeLinear of an initializer (int8 weights)."""
    initializers = {t.name for t in model.graph.initializer}
    weights = {
        n.output[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in initializers
    }
    return sum(
        1 for n in model.graph.node if n.op_type in {"Conv", "ConvTranspose"} and n.input[1] in weights
    )


def _log(message: str) -> None:
    print(f"[quantize] {message}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", type=Path, required=True, help="FP32 ONNX of the deployable graph")
    parser.add_argument("--out", type=Path, required=True, help="INT8 ONNX to write")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--calib-dir", type=Path, help="VOC-layout folder (train split) or folder of images")
    source.add_argument(
        "--calib-count", type=int, default=16, help="synthetic scenes to calibrate on (default 16)"
    )
    parser.add_argument(
        "--calib-size", type=int, default=320, help="side of the synthetic scenes (default 320)"
    )
    parser.add_argument("--calib-limit", type=int, help="use at most this many images of --calib-dir")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic scenes")
    parser.add_argument("--keep-fp32", nargs="*", default=[], metavar="LAYER", help="layers to keep in FP32")
    parser.add_argument(
        "--op-types",
        nargs="+",
        default=list(QUANTIZED_OP_TYPES),
        help="op types to quantise (default: %(default)s)",
    )
    parser.add_argument("--method", choices=sorted(CALIBRATION_METHODS), default="minmax", help="calibration")
    parser.add_argument("--reduce-range", action="store_true", help="7-bit weights (CPUs without VNNI)")
    args = parser.parse_args(argv)
    try:
        if args.calib_dir is not None:
            images = folder_images(args.calib_dir, args.calib_limit)
        else:
            images = synthetic_images(args.calib_count, args.calib_size, args.seed)
        result = quantize_onnx(
            args.onnx, args.out, images, keep_fp32=args.keep_fp32, op_types=args.op_types, method=args.method,
            reduce_range=args.reduce_range,
        )  # fmt: skip
    except (QuantizationError, FileNotFoundError, ValueError) as error:
        print(f"quantisation failed: {error}", file=sys.stderr)
        return 1
    _log(
        f"done in {result.seconds:.1f} s: wrote {result.out} ({result.out.stat().st_size / 1e6:.1f} MB), "
        f"{result.int8_convolutions} convolutions with int8 weights, "
        f"{len(result.kept_fp32)} nodes kept in FP32, "
        f"{result.calibration_images} calibration images"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
