"""ONNX Runtime backend: CUDA when onnxruntime-gpu and a GPU are present, else CPU.

onnxruntime-gpu's CUDA provider links against the CUDA and cuDNN libraries of the ``nvidia-*`` pip wheels
(``onnxruntime-gpu[cuda,cudnn]``), which the loader finds only once they are loaded: importing torch does
that, and the GPU image has no torch, so ``onnxruntime.preload_dlls()`` (ORT >= 1.21) loads them before
a CUDA session is made. Without it, ``get_available_providers()`` still lists CUDA, the session quietly
comes up on the CPU, and only ``session.get_providers()`` tells: :attr:`OnnxRuntimeBackend.provider` is
read from the session, and a CUDA request that ends on the CPU is logged as an error and reported as a
``cuda_unavailable`` fallback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from common.metadata import ModelMetadata
from server.backends.base import BackendError, Fallback

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "labels"
CUDA = "CUDAExecutionProvider"


def preload_cuda_libraries(ort: Any) -> str:
    """Load the CUDA/cuDNN libraries of the nvidia-* wheels for the CUDA provider (``preload_dlls``);
    returns what went wrong ("" when nothing did)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return f"onnxruntime {ort.__version__} has no preload_dlls (needs >= 1.21)"
    try:
        preload()
    except Exception as exc:  # it raises what the dynamic loader raised (OSError, ...)
        return f"{type(exc).__name__}: {exc}"
    return ""


class OnnxRuntimeBackend:
    """An ``onnxruntime.InferenceSession`` over the exported deployable graph."""

    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        *,
        use_cuda: bool,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        fallback: tuple[Fallback, ...] = (),
    ) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise BackendError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        preload_problem = ""
        if use_cuda:
            providers.insert(0, CUDA)
            preload_problem = preload_cuda_libraries(ort)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"cannot load ONNX model {path}: {first[:200]}") from None
        self.provider = self.session.get_providers()[0]
        self.fallback = fallback
        if use_cuda and self.provider != CUDA:
            detail = f"CUDA was expected but ONNX Runtime runs {path.name} on {self.provider}" + (
                f" (preloading the CUDA libraries failed: {preload_problem})" if preload_problem else ""
            )
            log.error("%s: check the driver, the GPU request and the nvidia-* wheels", detail)
            self.fallback = (*fallback, Fallback("cuda_unavailable", detail))
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
