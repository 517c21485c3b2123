"""The JSON sidecar of a TensorRT engine: what it was built from, for which GPU and TensorRT version.

A plan file only runs on the TensorRT version and GPU it was built for. ``model.plan`` is accompanied
by ``model.plan.json``; the server reads it and refuses (with :func:`compatibility_problems`) an engine
built elsewhere, before TensorRT would fail or misbehave. Imports neither torch nor TensorRT.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.metadata import ModelMetadata

SIDECAR_SUFFIX = ".json"
FORMAT_VERSION = 1


class SidecarError(ValueError):
    """A missing or unreadable sidecar."""


class EngineMismatch(RuntimeError):
    """The engine was built for another GPU or TensorRT version."""


Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class Profile:
    """The optimisation profile of the ``image`` input ``[N, H, W, 3]``: batch and side ranges."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    min_side: int = 32
    opt_side: int = 500
    max_side: int = 512

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= min <= opt <= max batch, got {self.batches}")
        if not 1 <= self.min_side <= self.opt_side <= self.max_side:
            raise ValueError(f"need 1 <= min <= opt <= max side, got {self.sides}")

    @property
    def batches(self) -> tuple[int, int, int]:
        return self.min_batch, self.opt_batch, self.max_batch

    @property
    def sides(self) -> tuple[int, int, int]:
        return self.min_side, self.opt_side, self.max_side

    def shapes(self) -> tuple[Shape, Shape, Shape]:
        """(min, opt, max) NHWC shapes for ``IOptimizationProfile.set_shape``."""
        return (
            (self.min_batch, self.min_side, self.min_side, 3),
            (self.opt_batch, self.opt_side, self.opt_side, 3),
            (self.max_batch, self.max_side, self.max_side, 3),
        )

    def covers(self, batch: int, height: int, width: int) -> bool:
        """Whether an input of this size can run on the engine."""
        return self.min_batch <= batch <= self.max_batch and all(
            self.min_side <= side <= self.max_side for side in (height, width)
        )


@dataclass(frozen=True)
class Sidecar:
    """Everything about an engine that is not in the plan file."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    """e.g. ``"9.0"``."""
    profile: Profile
    precision: str
    """``fp32`` | ``fp16`` | ``int8``: the precision of the ONNX graph the engine was built from."""
    onnx_sha256: str
    build_time_s: float
    metadata: ModelMetadata
    source_sha256: str = ""
    """SHA-256 of the checkpoint the ONNX graph was exported from."""
    fp16_layers: int = 0
    layers: int = 0
    built_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metadata"] = self.metadata.to_dict()
        data["format_version"] = FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sidecar:
        return cls(
            tensorrt_version=str(data["tensorrt_version"]),
            gpu_name=str(data["gpu_name"]),
            compute_capability=str(data["compute_capability"]),
            profile=Profile(**data["profile"]),
            precision=str(data["precision"]),
            onnx_sha256=str(data["onnx_sha256"]),
            build_time_s=float(data["build_time_s"]),
            metadata=ModelMetadata.from_dict(data["metadata"]),
            source_sha256=str(data.get("source_sha256", "")),
            fp16_layers=int(data.get("fp16_layers", 0)),
            layers=int(data.get("layers", 0)),
            built_at=str(data.get("built_at", "")),
            extra=dict(data.get("extra", {})),
        )


def sidecar_path(plan: Path) -> Path:
    """``model.plan`` → ``model.plan.json``."""
    plan = Path(plan)
    return plan.with_name(plan.name + SIDECAR_SUFFIX)


def write_sidecar(plan: Path, sidecar: Sidecar) -> Path:
    """Write the sidecar next to the plan; returns its path."""
    path = sidecar_path(plan)
    path.write_text(json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_sidecar(plan: Path) -> Sidecar:
    """The sidecar of a plan file; :class:`SidecarError` says what is wrong with it."""
    path = sidecar_path(plan)
    if not path.is_file():
        raise SidecarError(
            f"{path} not found: an engine needs the sidecar written by `python export/build_engine.py`"
        )
    try:
        return Sidecar.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise SidecarError(
            f"{path} is not a valid engine sidecar ({type(error).__name__}: {error})"
        ) from None


def mismatches(
    sidecar: Sidecar, *, gpu_name: str, compute_capability: str, tensorrt_version: str
) -> list[str]:
    """Why an engine cannot run on this GPU / TensorRT version (empty when it can)."""
    problems = []
    if sidecar.tensorrt_version != tensorrt_version:
        problems.append(
            f"built with TensorRT {sidecar.tensorrt_version}, this is TensorRT {tensorrt_version}"
        )
    if sidecar.compute_capability != compute_capability:
        problems.append(
            f"built for compute capability {sidecar.compute_capability} ({sidecar.gpu_name}), "
            f"this GPU is {compute_capability} ({gpu_name})"
        )
    elif sidecar.gpu_name != gpu_name:
        problems.append(f"built on {sidecar.gpu_name}, this GPU is {gpu_name}")
    return problems


def check_compatible(
    sidecar: Sidecar, *, gpu_name: str, compute_capability: str, tensorrt_version: str
) -> None:
    """Raise :class:`EngineMismatch` (rebuild with build_engine.py) unless the engine fits this machine."""
    problems = mismatches(
        sidecar, gpu_name=gpu_name, compute_capability=compute_capability, tensorrt_version=tensorrt_version
    )
    if problems:
        raise EngineMismatch(
            "engine does not match this machine: " + "; ".join(problems) + " — rebuild it with "
            "`python export/build_engine.py --onnx MODEL.onnx --out ENGINE.plan` on this machine"
        )


def compatibility_problems(sidecar: Sidecar) -> list[str]:
    """:func:`mismatches` against the local GPU and TensorRT (or why they cannot be queried)."""
    from export import trt  # TensorRT is only imported there, and only used when present

    try:
        local = trt.environment()
    except trt.TensorRTUnavailable as error:
        return [str(error)]
    return mismatches(
        sidecar,
        gpu_name=local.gpu_name,
        compute_capability=local.compute_capability,
        tensorrt_version=local.tensorrt_version,
    )
