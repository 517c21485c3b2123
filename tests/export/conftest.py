"""Shared fixtures of the export tests: a small random FCN-8s checkpoint and its verified ONNX export."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.metadata import ModelMetadata, Normalization
from training.weights import save_checkpoint

from .export_helpers import WIDTH, random_model


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    onnx: Path
    log: str
    returncode: int


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    metadata = ModelMetadata(
        architecture="fcn8s", width=WIDTH, normalization=Normalization.caffe(), name="tiny"
    )
    save_checkpoint(path, random_model(), metadata)
    return path


@pytest.fixture(scope="session")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """``python -m export.onnx --checkpoint ... --out ...`` run in-process with its default check shapes."""
    from export.onnx import main

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main(["--checkpoint", str(checkpoint), "--out", str(out)])
    return Exported(checkpoint, out, buffer.getvalue(), code)


@pytest.fixture(scope="session")
def exported_fp16(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FP16 conversion (``export.fp16``) of :func:`exported`."""
    import onnx

    from export.fp16 import convert_to_fp16

    out = tmp_path_factory.mktemp("fp16") / "tiny-fp16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(exported.onnx))).model, str(out))
    return out


@pytest.fixture(scope="session")
def raw_trace(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the exporter writes before this project's passes: the uint8 input read by ``Shape`` nodes and
    ``labels`` cast from ArgMax's INT64 (what the demo graphs looked like before issue #17)."""
    from export.graph import deployable_graph
    from export.onnx import trace_to_onnx
    from training.weights import load_checkpoint

    model, metadata = load_checkpoint(checkpoint)
    out = tmp_path_factory.mktemp("raw") / "raw.onnx"
    trace_to_onnx(deployable_graph(model, metadata), out)
    return out
