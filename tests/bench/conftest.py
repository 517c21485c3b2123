"""Shared, session-scoped artefacts of the benchmark tests: the quick-mode model's ONNX files in one cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.forward import QUICK_WIDTH
from bench.models import ModelSpec, fp32_onnx, int8_onnx, naive_onnx

QUICK_SPEC = ModelSpec(width=QUICK_WIDTH)
"""The network ``--quick`` benchmarks (bench.forward's quick width)."""


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the quick model's FP32 and INT8 ONNX (exported and quantised once)."""
    cache = tmp_path_factory.mktemp("bench-cache")
    int8_onnx(QUICK_SPEC, cache)
    return cache


@pytest.fixture(scope="session")
def tiny_fp32(model_cache: Path) -> Path:
    return fp32_onnx(QUICK_SPEC, model_cache)


@pytest.fixture(scope="session")
def tiny_int8(model_cache: Path) -> Path:
    return int8_onnx(QUICK_SPEC, model_cache)


@pytest.fixture(scope="session")
def tiny_naive(model_cache: Path) -> Path:
    """The quick model exported plainly (dense upsampling, float in, scores out), in the same cache."""
    return naive_onnx(QUICK_SPEC, model_cache)
