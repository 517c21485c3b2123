"""The JSON sidecar of a TensorRT engine (pure data): what it was built from, for which GPU and TensorRT.

A plan file only runs on the TensorRT version and GPU it was built for. ``model.plan`` is accompanied
by ``model.plan.json``; the server reads it and refuses (with :func:`mismatches` against the local
GPU, see :mod:`engine.runtime`) an engine built elsewhere, before TensorRT would fail or misbehave.
Imports neither torch nor TensorRT.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.geometry import Profile
from common.metadata import ModelMetadata
from engine.cache import write_atomic

SIDECAR_SUFFIX = ".json"
FORMAT_VERSION = 1


class SidecarError(ValueError):
    """A missing or unreadable sidecar."""


class EngineMismatch(RuntimeError):
    """The engine was built for another GPU or TensorRT version."""


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
    """Write the sidecar next to the plan (atomically, :func:`~engine.cache.write_atomic`); its path."""
    path = sidecar_path(plan)
    write_atomic(path, (json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + "\n").encode())
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
