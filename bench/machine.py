"""Describe the machine a benchmark ran on: CPU, cores, memory, accelerator, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from pathlib import Path
from typing import Any

_LIBRARIES = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "numpy",
    "tensorrt",
    "httpx",
    "fastapi",
    "uvicorn",
)
_SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return info
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key and key not in info:
            info[key] = value.strip()
    return info


def _memory_gib() -> float | None:
    path = Path("/proc/meminfo")
    if not path.exists():
        return None
    match = re.search(r"MemTotal:\s+(\d+) kB", path.read_text())
    return round(int(match.group(1)) / 2**20, 1) if match else None


def _versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), the thread count every backend gets."""
    return len(os.sched_getaffinity(0))


def describe_machine() -> dict[str, Any]:
    """A JSON-able description of this machine."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    return {
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "cpu_base_mhz": cpu.get("cpu MHz"),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "simd": [flag for flag in _SIMD_FLAGS if flag in flags],
        "memory_gib": _memory_gib(),
        "gpu": _gpu(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": _versions(),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "load_average_at_start": list(os.getloadavg()),
    }


RESULTS_ROOT = Path(__file__).resolve().parent / "results"
"""Where every benchmark writes its results: ``RESULTS_ROOT/<machine slug>/<benchmark>.json``."""


def machine_slug(description: dict[str, Any]) -> str:
    """A folder name for results, e.g. ``amd-epyc-2c-avx2`` or ``nvidia-h100-80gb-hbm3``."""
    if description.get("gpu"):
        name = description["gpu"]
    else:
        simd = description.get("simd", [])
        isa = "avx512" if "avx512f" in simd else "avx2" if "avx2" in simd else "generic"
        name = f"{description['cpu_model']} {description['cores']}c {isa}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
