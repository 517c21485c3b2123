"""Write a Triton Inference Server model repository for the exported model.

    python -m export.triton --onnx model.onnx [--plan model.plan] --out triton-repo

gives ``fcn8s_onnx/`` (platform ``onnxruntime_onnx``, runs on CPU or GPU) and, with ``--plan``,
``fcn8s/`` (platform ``tensorrt_plan``), each ``config.pbtxt`` + ``1/model.*``, with dynamic batching
and the graph's own I/O (``image`` uint8 ``[-1, -1, 3]`` per request, ``labels`` uint8 ``[-1, -1]``).
Triton only batches requests of identical shape. torch-free (reads the ONNX graph with ``onnx``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from common.geometry import DEFAULT_MAX_BATCH
from engine.spec import SidecarError, read_sidecar, sidecar_path

TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
}
DEFAULT_NAME = "fcn8s"
DEFAULT_QUEUE_DELAY_US = 2000


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton sees it (without the batch dimension)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def tensor_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a batched ONNX graph: symbolic dims become -1, the batch dim is dropped."""

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        elem_type = int(tensor.elem_type)
        if elem_type not in TRITON_TYPES:
            raise ValueError(f"{value.name}: ONNX type {tensor.elem_type} has no Triton equivalent here")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        if not dims or dims[0] != -1:
            raise ValueError(f"{value.name}: expected a dynamic batch dimension first, got {list(dims)}")
        return TensorSpec(value.name, TRITON_TYPES[elem_type], dims[1:])

    initializers = {i.name for i in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def _tensors(kind: str, specs: Sequence[TensorSpec]) -> str:
    entries = []
    for spec in specs:
        dims = ", ".join(map(str, spec.dims))
        entries.append(
            f'  {{\n    name: "{spec.name}"\n    data_type: {spec.data_type}\n    dims: [ {dims} ]\n  }}'
        )
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def config_pbtxt(
    name: str,
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int,
    queue_delay_us: int,
    gpu: bool,
) -> str:
    """The text of one ``config.pbtxt``."""
    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
        + _tensors("input", inputs)
        + _tensors("output", outputs)
        + f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
        + f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]\n"
    )


def write_repository(
    out: Path,
    onnx_path: Path,
    plan_path: Path | None = None,
    *,
    name: str = DEFAULT_NAME,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> list[Path]:
    """Write ``<name>_onnx/`` (and ``<name>/`` for a plan) under ``out``; returns the files written.

    The TensorRT model's ``max_batch_size`` is the engine profile's max batch (from its sidecar).
    """
    model = onnx.load(str(onnx_path), load_external_data=False)
    inputs, outputs = tensor_specs(model)
    written = []
    onnx_dir = out / f"{name}_onnx"
    (onnx_dir / "1").mkdir(parents=True, exist_ok=True)
    config = config_pbtxt(
        f"{name}_onnx", "onnxruntime_onnx", inputs, outputs,
        max_batch_size=max_batch_size, queue_delay_us=queue_delay_us, gpu=False,
    )  # fmt: skip
    (onnx_dir / "config.pbtxt").write_text(config)
    shutil.copyfile(onnx_path, onnx_dir / "1" / "model.onnx")
    written += [onnx_dir / "config.pbtxt", onnx_dir / "1" / "model.onnx"]
    if plan_path is not None:
        try:
            engine_batch = read_sidecar(plan_path).profile.max_batch
        except SidecarError:
            engine_batch = max_batch_size
        plan_dir = out / name
        (plan_dir / "1").mkdir(parents=True, exist_ok=True)
        config = config_pbtxt(
            name, "tensorrt_plan", inputs, outputs,
            max_batch_size=engine_batch, queue_delay_us=queue_delay_us, gpu=True,
        )  # fmt: skip
        (plan_dir / "config.pbtxt").write_text(config)
        shutil.copyfile(plan_path, plan_dir / "1" / "model.plan")
        written += [plan_dir / "config.pbtxt", plan_dir / "1" / "model.plan"]
        if sidecar_path(plan_path).is_file():
            shutil.copyfile(sidecar_path(plan_path), plan_dir / "engine.json")
            written.append(plan_dir / "engine.json")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", type=Path, required=True, help="the exported FP32 ONNX graph")
    parser.add_argument("--plan", type=Path, help="a TensorRT engine built by export/build_engine.py")
    parser.add_argument("--out", type=Path, required=True, help="model repository folder")
    parser.add_argument("--name", default=DEFAULT_NAME, help="model name (default %(default)s)")
    parser.add_argument(
        "--max-batch-size", type=int, default=DEFAULT_MAX_BATCH, help="ONNX model's batch cap"
    )
    parser.add_argument("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US, help="batcher delay")
    args = parser.parse_args(argv)
    try:
        written = write_repository(
            args.out, args.onnx, args.plan, name=args.name, max_batch_size=args.max_batch_size,
            queue_delay_us=args.queue_delay_us,
        )  # fmt: skip
    except (OSError, ValueError) as error:
        print(f"triton repository failed: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"[triton] wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"[triton] serve with: docker run --gpus all --rm --network host -v {args.out.resolve()}:/models "
          "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
