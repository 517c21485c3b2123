"""ONNX Runtime backend: CUDA when onnxruntime-gpu and a GPU are present, else CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from common.metadata import ModelMetadata
from server.backends.base import BackendError

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "labels"


class OnnxRuntimeBackend:
    """An ``onnxruntime.InferenceSession`` over the exported deployable graph."""

    name = "onnxruntime"

    def __init__(
        self, path: Path, *, use_cuda: bool, intra_op_threads: int = 0, inter_op_threads: int = 1
    ) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise BackendError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if use_cuda:
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"cannot load ONNX model {path}: {first[:200]}") from None
        self.provider = self.session.get_providers()[0]
        if use_cuda and self.provider != "CUDAExecutionProvider":
            log.warning("CUDA was requested but ONNX Runtime runs on %s", self.provider)
        self._check_signature(path)
        props = self.session.get_modelmeta().custom_metadata_map
        if "fcn_metadata" not in props:
            raise BackendError(
                f"{path} has no 'fcn_metadata' property: export it with `python -m export.onnx`"
            )
        try:
            self.metadata = ModelMetadata.from_json(props["fcn_metadata"])
        except Exception as exc:
            raise BackendError(f"{path}: invalid fcn_metadata ({type(exc).__name__}: {exc})") from None
        self.precision = props.get("precision", "fp32")
        self.source_sha256 = props.get("source_sha256", "")

    def _check_signature(self, path: Path) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        image = inputs.get(INPUT_NAME)
        if image is None or image.type != "tensor(uint8)" or len(image.shape) != 4:
            raise BackendError(
                f"{path} is not a deployable FCN graph: expected input '{INPUT_NAME}' uint8 [N,H,W,3], "
                f"found {[(i.name, i.type, i.shape) for i in inputs.values()]}"
            )
        labels = outputs.get(OUTPUT_NAME)
        if labels is None or labels.type != "tensor(uint8)" or len(labels.shape) != 3:
            raise BackendError(
                f"{path} is not a deployable FCN graph: expected output '{OUTPUT_NAME}' uint8 [N,H,W], "
                f"found {[(o.name, o.type, o.shape) for o in outputs.values()]}"
            )

    def run(self, images: np.ndarray) -> np.ndarray:
        """Labels for a uint8 NHWC batch."""
        (labels,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})
        return labels

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees its memory with it)."""
        del self.session
