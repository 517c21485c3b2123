"""The shipped demo ONNX is what the export CLI makes of the shipped demo checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.graph import deployable_graph
from export.images import synthetic_batch
from export.onnx import ort_session, read_properties, trace_to_onnx
from export.sidecar import file_sha256
from training.weights import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "models" / "demo" / "fcn8s-demo.safetensors"
SHIPPED = REPO / "models" / "demo" / "fcn8s-demo.onnx"


@pytest.mark.skipif(
    not (CHECKPOINT.is_file() and SHIPPED.is_file()), reason="the demo model is not in the repo"
)
def test_shipped_onnx_matches_a_fresh_export(tmp_path: Path) -> None:
    props = read_properties(onnx.load(str(SHIPPED), load_external_data=False))
    assert props["source_sha256"] == file_sha256(CHECKPOINT), "re-export the demo ONNX from the checkpoint"
    assert props["precision"] == "fp32"
    model, metadata = load_checkpoint(CHECKPOINT)
    fresh = tmp_path / "fresh.onnx"
    trace_to_onnx(deployable_graph(model, metadata), fresh)
    shipped_session, fresh_session = ort_session(SHIPPED), ort_session(fresh)
    for n, h, w in [(1, 96, 128), (2, 75, 61)]:
        images = synthetic_batch(n, h, w, seed=11)
        (expected,) = shipped_session.run(None, {"image": images})
        (labels,) = fresh_session.run(None, {"image": images})
        np.testing.assert_array_equal(labels, expected)
        assert len(np.unique(expected)) > 1


def test_server_side_modules_do_not_import_torch() -> None:
    code = (
        "import sys, export, export.sidecar, export.trt, export.onnx_meta, export.triton, export.precision; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
