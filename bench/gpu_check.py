"""The prepared GPU check: one unattended run on a GPU machine (PyTorch CUDA; TensorRT and onnxruntime-gpu
optional), under 8 minutes, for what the CPU-only tests cannot show (issue #17, issue #12 item 8).

    scripts/gpu-check.sh                       # timeout-wrapped; results in $OUT/gpu-check where $OUT is set
    python -m bench.gpu_check --out-dir DIR [--budget-s 420]
    python -m bench.gpu_check --cpu-only       # the CPU-portable parts (what tests/bench runs)

Checks, each ``passed`` / ``failed`` / ``skipped`` (with the reason), timed, written to ``gpu-check.json``
after each one (a run cut short keeps what it measured):

1. ``environment``: torch/CUDA/cuDNN, the GPU, onnxruntime's providers, TensorRT and cuda-python present?
2. ``fp16-numerics``: the shipped FP16 ONNX's own weights run in PyTorch CUDA in FP16 (``bench.cuda.HalfFCN``:
   FP32 normalisation, FP16 channels-last network) against the FP32 graph on ONNX Runtime CPU (else PyTorch
   CPU FP32): label agreement, gated like ``export.fp16`` (>= 99.5%); also how well ``export.fp16``'s CPU
   emulation (ORT CPU, FP16 tensors between ops) predicts the GPU, and the FP32 weights on the GPU (TF32 off)
   against ONNX Runtime (>= 99.99%: proves the weights were loaded right).
3. ``cuda-buffers``: ``engine.runtime``'s CUDA code paths that need no TensorRT, on the real GPU with
   cuda-python: device properties, ``DeviceBuffer`` growth, a stream and its native handle, host↔device
   copies, and ``TensorRTRunner.run`` end to end with TensorRT replaced by a copy "engine" (labels = the
   image's first channel, copied on the GPU by ``cudaMemcpy2DAsync`` on the runner's stream handle).
4. ``forward``: ``python -m bench.forward --gpu`` (full-size FCN-8s at 500x500): PyTorch CUDA FP16 eager and
   from CUDA graphs, ORT CUDA and TensorRT where installed; forward.json/.csv under ``forward/``.

Exit status 1 when a check failed (skips are not failures), 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEMO_FP32 = REPO / "models" / "demo" / "fcn8s-demo.onnx"
DEMO_FP16 = REPO / "models" / "demo" / "fcn8s-demo-fp16.onnx"
FP16_GATE = 0.995
FP32_GATE = 0.9999
ODD_SHAPES = ((1, 333, 517), (3, 75, 61))
FORWARD_MARGIN_S = 45.0
"""Seconds of the budget kept back from the forward sweep for model building and the summary."""


class Skip(Exception):
    """The check cannot run here; the message says why."""


@dataclass
class Outcome:
    """One check's result."""

    name: str
    status: str = "skipped"
    seconds: float = 0.0
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def log(message: str) -> None:
    """One progress line."""
    print(f"[gpu-check] {message}", flush=True)


def _module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _cuda() -> bool:
    if not _module("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


# ---- 1. environment --------------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict[str, Any]:
    details: dict[str, Any] = {"python": sys.version.split()[0], "cuda_available": _cuda()}
    if _module("torch"):
        import torch

        details |= {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
        if details["cuda_available"]:
            major, minor = torch.cuda.get_device_capability(0)
            details |= {
                "gpu": torch.cuda.get_device_name(0),
                "compute_capability": f"{major}.{minor}",
                "cudnn": torch.backends.cudnn.version(),
                "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            }
    if _module("onnxruntime"):
        import onnxruntime

        details |= {
            "onnxruntime": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(),
        }
    from engine import runtime

    details |= {"tensorrt": runtime.tensorrt_available(), "cuda_python": runtime.cudart is not None}
    details["onnx"] = _module("onnx")
    details["headline"] = (
        f"{details.get('gpu', 'no GPU')}; torch {details.get('torch', '-')}; TensorRT "
        f"{'yes' if details['tensorrt'] else 'no'}; cuda-python {'yes' if details['cuda_python'] else 'no'}; "
        f"onnxruntime {'CUDA' if 'CUDAExecutionProvider' in details.get('providers', []) else 'CPU'}"
    )
    return details


# ---- 2. FP16 numerics ------------------------------------------------------------------------------


def onnx_weights(model: Any) -> dict[str, np.ndarray]:
    """The network parameters of an exported graph by PyTorch name (``conv1_1.weight``, ...), in FP32.

    Each ``Conv``/``ConvTranspose`` node's module comes from the exporter's ``name_scopes`` node metadata:
    the exporter stores identical tensors once (two equal bilinear upsamplers share one initializer), so
    initializer names alone miss parameters.
    """
    from onnx import numpy_helper

    arrays = {init.name: numpy_helper.to_array(init).astype(np.float32) for init in model.graph.initializer}
    weights = {
        name.removeprefix("model."): array for name, array in arrays.items() if name.startswith("model.")
    }
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        if node.op_type not in ("Conv", "ConvTranspose") or not scopes:
            continue
        module = ast.literal_eval(scopes)[-2].removeprefix("model.")
        for slot, parameter in ((1, "weight"), (2, "bias")):
            if len(node.input) > slot and node.input[slot] in arrays:
                weights[f"{module}.{parameter}"] = arrays[node.input[slot]]
    return weights


def network_from_onnx(model: Any) -> tuple[Any, Any]:
    """The export-friendly FCN carrying an exported ONNX graph's own weights (FP16 ones converted to
    FP32), and the graph's ModelMetadata."""
    import torch

    from common.contract import PROP_METADATA
    from common.metadata import ModelMetadata
    from export.graph import export_friendly
    from training.model import build_model

    props = {p.key: p.value for p in model.metadata_props}
    metadata = ModelMetadata.from_json(props[PROP_METADATA])
    network, _ = export_friendly(build_model(metadata.architecture, metadata.num_classes, metadata.width))
    weights = {name: torch.from_numpy(array) for name, array in onnx_weights(model).items()}
    state = network.state_dict()
    if set(weights) != set(state) or any(weights[k].shape != state[k].shape for k in state):
        missing = sorted(set(state) ^ set(weights))
        raise ValueError(
            f"the ONNX weights do not fit {metadata.architecture} width {metadata.width}: {missing}"
        )
    network.load_state_dict(weights)
    return network.eval(), metadata


def _batches(count: int, size: int) -> list[np.ndarray]:
    from export.images import synthetic_batch

    square = synthetic_batch(count, size, size, seed=1)
    return [square[i : i + 8] for i in range(0, count, 8)] + [
        synthetic_batch(n, h, w, seed=7) for n, h, w in ODD_SHAPES
    ]


def _agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    equal = sum(int(np.sum(x == y)) for x, y in zip(a, b, strict=True))
    return equal / sum(x.size for x in a)


def fp16_numerics(args: argparse.Namespace) -> dict[str, Any]:
    if not (_module("onnx") and _module("torch")):
        raise Skip("needs onnx and torch")
    import onnx
    import torch

    from bench.cuda import HalfFCN, labels_of
    from export.graph import DeployableFCN

    cuda = _cuda() and not args.cpu_only
    device = "cuda" if cuda else "cpu"
    torch.backends.cudnn.allow_tf32 = False  # FP32 means FP32 (PyTorch lets cuDNN convolutions use TF32)
    torch.backends.cuda.matmul.allow_tf32 = False
    batches = _batches(args.images, args.size)
    fp32_network, metadata = network_from_onnx(onnx.load(str(args.onnx)))
    fp16_network, _ = network_from_onnx(onnx.load(str(args.fp16_onnx)))
    fp32 = DeployableFCN(fp32_network, metadata.normalization).to(device)
    details: dict[str, Any] = {"images": int(sum(len(b) for b in batches)), "device": device}
    if _module("onnxruntime"):
        from export.fp16 import Runner

        reference = [Runner(onnx.load(str(args.onnx))).labels(b) for b in batches]
        details["reference"] = "onnxruntime CPU, FP32 graph"
        emulated = [Runner(onnx.load(str(args.fp16_onnx)), fp16_tensors=True).labels(b) for b in batches]
        details["fp16_cpu_emulation_vs_fp32"] = _agreement(emulated, reference)
    else:
        reference = [labels_of(fp32.cpu(), b, "cpu") for b in batches]
        fp32.to(device)
        details["reference"] = "PyTorch CPU, FP32 weights of the ONNX (no onnxruntime here)"
        emulated = None
    details[f"torch_{device}_fp32_vs_reference"] = _agreement(
        [labels_of(fp32, b, device) for b in batches], reference
    )
    problems = []
    if details[f"torch_{device}_fp32_vs_reference"] < FP32_GATE:
        problems.append(f"FP32 weights on {device} disagree with the reference (weights loaded wrong?)")
    if cuda:
        half = HalfFCN(fp16_network, metadata.normalization).cuda()
        labels = [labels_of(half, b, "cuda") for b in batches]
        details["torch_cuda_fp16_vs_fp32"] = _agreement(labels, reference)
        if emulated is not None:
            details["torch_cuda_fp16_vs_fp16_cpu_emulation"] = _agreement(labels, emulated)
        if details["torch_cuda_fp16_vs_fp32"] < FP16_GATE:
            problems.append(
                f"FP16 on the GPU agrees with FP32 on fewer than {100 * FP16_GATE:.1f}% of pixels"
            )
    if problems:
        raise AssertionError("; ".join(problems))
    return details


# ---- 3. CUDA buffers without TensorRT ---------------------------------------------------------------


class CopyEngineTensorRT:
    """Stands in for TensorRT only: its one 'engine' copies the image's first channel into ``labels`` on the
    GPU (``cudaMemcpy2DAsync``, device to device, on the stream handle the runner passes)."""

    Builder = object  # engine.runtime.tensorrt_available() looks for it
    __version__ = "copy-engine"
    TensorIOMode = SimpleNamespace(INPUT="in")
    Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})

    def __init__(self, cudart: Any) -> None:
        self.cudart = cudart
        self.handles: list[Any] = []

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype

    def Runtime(self, logger: Any) -> SimpleNamespace:
        return SimpleNamespace(deserialize_cuda_engine=lambda plan: _CopyEngine(self, json.loads(plan)))


class _CopyEngine:
    names = ("image", "labels")
    num_io_tensors = 2

    def __init__(self, fake: CopyEngineTensorRT, profile: list[list[int]]) -> None:
        self.fake, self.profile = fake, [tuple(s) for s in profile]
        self.shape: tuple[int, ...] = ()
        self.addresses: dict[str, int] = {}

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name == "image" else "out"

    def get_tensor_dtype(self, name: str) -> Any:
        return np.dtype(np.uint8)

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        return self.profile

    def create_execution_context(self) -> _CopyEngine:
        return self

    def set_input_shape(self, name: str, shape: Any) -> bool:
        self.shape = tuple(shape)
        return name == "image"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shape if name == "image" else self.shape[:3]

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = pointer
        return name in self.names

    def execute_async_v3(self, stream_handle: int) -> bool:
        cudart = self.fake.cudart
        self.fake.handles.append(stream_handle)
        if type(stream_handle) is not int:
            return False
        pixels = int(np.prod(self.shape[:3]))
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        (error,) = cudart.cudaMemcpy2DAsync(
            self.addresses["labels"], 1, self.addresses["image"], 3, 1, pixels, kind, stream_handle
        )
        return bool(error == cudart.cudaError_t.cudaSuccess)


def cuda_buffers(args: argparse.Namespace) -> dict[str, Any]:
    if args.cpu_only:
        raise Skip("--cpu-only")
    from engine import runtime as rt

    if rt.cudart is None:
        raise Skip(
            "cuda-python is not installed (pip install cuda-python==13.4.4, docker/requirements-gpu.txt)"
        )
    if not _cuda():
        raise Skip("no CUDA GPU")
    cudart = rt.cudart
    name, capability = rt.gpu()
    buffer = rt.DeviceBuffer()
    first = buffer.ensure(1 << 20)
    reused = buffer.ensure(1 << 10) == first
    grown = buffer.ensure(1 << 22)
    assert reused and grown and buffer.size == 1 << 22, "DeviceBuffer must reuse, then grow"
    buffer.free()
    assert buffer.pointer == 0
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    fake = CopyEngineTensorRT(cudart)
    real_trt = rt.trt
    with tempfile.TemporaryDirectory() as folder:
        plan = Path(folder) / "copy.plan"
        plan.write_text(json.dumps([[1, 32, 32, 3], [2, 64, 64, 3], [4, 128, 128, 3]]))
        rt.trt = fake
        try:
            runner = rt.TensorRTRunner(plan)
            outputs = [runner.run(images), runner.run(images[:1, :40, :50].copy()), runner.run(images)]
            runner.close()
        finally:
            rt.trt = real_trt
    assert all(type(h) is int and h != 0 for h in fake.handles), f"stream handles {fake.handles}"
    np.testing.assert_array_equal(outputs[0], images[..., 0])
    np.testing.assert_array_equal(outputs[1], images[:1, :40, :50, 0])
    np.testing.assert_array_equal(outputs[2], outputs[0])
    return {
        "gpu": name, "compute_capability": capability, "runs": len(outputs), "stream_handle": fake.handles[0],
        "headline": f"{name} (sm {capability}): buffers, native stream handle, copies and the runner path OK",
    }  # fmt: skip


# ---- 4. GPU forward benchmark -----------------------------------------------------------------------


def forward(args: argparse.Namespace, budget_s: float) -> dict[str, Any]:
    if args.skip_forward:
        raise Skip("--skip-forward")
    if args.cpu_only or not _cuda():
        raise Skip("--cpu-only" if args.cpu_only else "no CUDA GPU")
    if budget_s < 60:
        raise Skip(f"only {budget_s:.0f} s of the budget left")
    from bench import forward as bench_forward

    out = args.out_dir / "forward"
    argv = ["--gpu", "--size", *map(str, args.forward_size), "--batch-sizes", *map(str, args.forward_batches),
            "--runs", str(args.forward_runs), "--budget-s", f"{budget_s:.0f}", "--out-dir", str(out),
            "--note", "bench.gpu_check"]  # fmt: skip
    if not _module("matplotlib"):
        argv.append("--no-plot")
    if not _module("skimage"):
        argv.append("--random-pixels")
    code = bench_forward.main(argv)
    report = json.loads((out / "forward.json").read_text())
    rows = {f"{r['backend']} x{r['batch']}": round(r["ms_per_image"], 3) for r in report["results"]}
    best = min((v, k) for k, v in rows.items()) if rows else (0.0, "-")
    details = {"ms_per_image": rows, "skipped": report["skipped"], "stopped": report["stopped"],
               "headline": f"fastest: {best[1]} at {best[0]:.3f} ms per image"}  # fmt: skip
    if code != 0 or not any(k.startswith("torch-cuda") for k in rows):
        raise AssertionError(f"no PyTorch CUDA row was measured: {report['skipped']}")
    return details


# ---- driver -----------------------------------------------------------------------------------------


def default_out_dir() -> Path:
    """``$OUT/gpu-check`` where the machine sets ``$OUT``, else a temporary folder."""
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu-check"
    return Path(tempfile.gettempdir()) / "fcn-gpu-check"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", type=Path, default=default_out_dir(), help="default: $OUT/gpu-check")
    parser.add_argument("--budget-s", type=float, default=420.0, help="whole run (default 420 s)")
    parser.add_argument("--cpu-only", action="store_true", help="only the parts that run without a GPU")
    parser.add_argument("--skip-forward", action="store_true", help="no forward benchmark")
    parser.add_argument("--onnx", type=Path, default=DEMO_FP32, help="FP32 graph (default: the demo)")
    parser.add_argument("--fp16-onnx", type=Path, default=DEMO_FP16, help="its FP16 conversion")
    parser.add_argument("--images", type=int, default=64, help="synthetic scenes for the numerics (64)")
    parser.add_argument("--size", type=int, default=160, help="their side (160, as export.fp16's gate)")
    parser.add_argument("--forward-size", type=int, nargs=2, default=[500, 500], metavar=("H", "W"))
    parser.add_argument("--forward-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--forward-runs", type=int, default=20)
    args = parser.parse_args(argv)
    if args.budget_s <= 0 or args.images < 1 or args.size < 8 or args.forward_runs < 1:
        parser.error("--budget-s, --images, --forward-runs must be positive and --size at least 8")
    for path in (args.onnx, args.fp16_onnx):
        if not path.is_file():
            parser.error(f"no ONNX file at {path}")
    return args


def run_check(name: str, body: Callable[[], dict[str, Any]]) -> Outcome:
    """Run one check, turning Skip / AssertionError / any crash into its outcome."""
    log(f"{name}: running")
    outcome, start = Outcome(name), time.perf_counter()
    try:
        outcome.details = body()
        outcome.status = "passed"
    except Skip as reason:
        outcome.reason = str(reason)
    except ModuleNotFoundError as error:  # this machine lacks a package the check needs
        outcome.reason = f"needs the Python package {error.name!r}, not installed here"
    except AssertionError as error:
        outcome.status, outcome.reason = "failed", str(error) or "assertion failed"
    except Exception as error:  # a crash is a failed check with its traceback, not a lost run
        outcome.status, outcome.reason = "failed", f"{type(error).__name__}: {error}"
        outcome.details = {"traceback": traceback.format_exc().splitlines()[-12:]}
    outcome.seconds = round(time.perf_counter() - start, 1)
    log(f"{name}: {outcome.status.upper()} in {outcome.seconds:.1f} s {outcome.reason}".rstrip())
    return outcome


def summary(outcomes: list[Outcome]) -> str:
    """A readable table of the outcomes, with each check's main numbers."""
    lines = [f"{'check':15s} {'status':8s} {'seconds':>8s}  notes", "-" * 78]
    for outcome in outcomes:
        shares = {k: v for k, v in outcome.details.items() if "_vs_" in k}
        notes = outcome.reason or outcome.details.get("headline", "")
        notes = notes or ", ".join(f"{k} {100 * v:.3f}%" for k, v in shares.items())
        lines.append(f"{outcome.name:15s} {outcome.status:8s} {outcome.seconds:8.1f}  {notes}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report_path = args.out_dir / "gpu-check.json"
    log(f"writing {report_path}; budget {args.budget_s:.0f} s" + (" (--cpu-only)" if args.cpu_only else ""))
    outcomes: list[Outcome] = []

    def save() -> None:
        report = {"argv": sys.argv[1:], "outcomes": [asdict(o) for o in outcomes]}
        report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("environment", lambda: environment(args)),
        ("fp16-numerics", lambda: fp16_numerics(args)),
        ("cuda-buffers", lambda: cuda_buffers(args)),
        ("forward", lambda: forward(args, args.budget_s - (time.perf_counter() - start) - FORWARD_MARGIN_S)),
    ]
    for name, body in steps:
        outcomes.append(run_check(name, body))
        save()
    print("\n" + summary(outcomes))
    log(f"done in {time.perf_counter() - start:.0f} s; wrote {report_path}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
