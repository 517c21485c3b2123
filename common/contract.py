"""The deployable graph's interface: tensor names and dtypes, and the keys its metadata travels under.

Every stage (export, engine build, server, benchmarks) names tensors and metadata through this module.
"""

from __future__ import annotations

from typing import Final

INPUT_NAME: Final = "image"
"""uint8 ``[N, H, W, 3]`` RGB input of the deployable graph."""
LABELS_NAME: Final = "labels"
"""uint8 ``[N, H, W]`` class-index output."""
SCORES_NAME: Final = "scores"
"""Optional float ``[N, C, H, W]`` class-score output (``--scores`` exports and verification copies)."""

INPUT_DTYPE: Final = "uint8"
LABELS_DTYPE: Final = "uint8"
ORT_INPUT_TYPE: Final = "tensor(uint8)"
ORT_LABELS_TYPE: Final = "tensor(uint8)"

PROP_METADATA: Final = "fcn_metadata"
"""Key of the :class:`~common.metadata.ModelMetadata` JSON (ONNX ``metadata_props``, safetensors header)."""
PROP_SHA256: Final = "source_sha256"
"""SHA-256 of the checkpoint an ONNX graph was exported from."""
PROP_PRECISION: Final = "precision"
"""``fp32`` | ``fp16`` | ``int8``: the arithmetic of the graph."""
