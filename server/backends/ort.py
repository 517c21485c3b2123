"""ONNX Runtime backend: CUDA with onnxruntime-gpu and a GPU, else CPU; one session per model instance.

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

from common.contract import (
    INPUT_NAME,
    LABELS_NAME,
    ORT_INPUT_TYPE,
    ORT_LABELS_TYPE,
    PROP_METADATA,
    PROP_PRECISION,
)
from common.metadata import ModelMetadata
from common.onnxrt import CPU, create_session
from server.backends.base import BackendError, Fallback
from server.backends.slots import Slots

log = logging.getLogger(__name__)

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
    """``instances`` ``onnxruntime.InferenceSession``s over the exported deployable graph.

    Each session has its own intra-op pool of ``threads`` threads (0 = ONNX Runtime's default, all cores).
    On CPU the pools never spin-wait: they share the cores with the decode/encode threads and with each
    other, and a spinning pool starves both.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        *,
        use_cuda: bool,
        instances: int = 1,
        threads: int = 0,
        fallback: tuple[Fallback, ...] = (),
    ) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise BackendError(f"model file not found: {path}")
        providers = [CUDA, *CPU] if use_cuda else list(CPU)
        preload_problem = preload_cuda_libraries(ort) if use_cuda else ""
        spinning = None if use_cuda else False
        try:
            sessions = [
                create_session(path, providers=providers, intra_op_threads=threads, spinning=spinning)
                for _ in range(instances)
            ]
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"cannot load ONNX model {path}: {first[:200]}") from None
        self._sessions = Slots(sessions)
        self.instances = instances
        self.selection: dict[str, Any] = {}
        session = sessions[0]
        self.provider = session.get_providers()[0]
        self.fallback = fallback
        if use_cuda and self.provider != CUDA:
            detail = f"CUDA was expected but ONNX Runtime runs {path.name} on {self.provider}" + (
                f" (preloading the CUDA libraries failed: {preload_problem})" if preload_problem else ""
            )
            log.error("%s: check the driver, the GPU request and the nvidia-* wheels", detail)
            self.fallback = (*fallback, Fallback("cuda_unavailable", detail))
        check_signature(
            path,
            {i.name: (i.type, len(i.shape)) for i in session.get_inputs()},
            {o.name: (o.type, len(o.shape)) for o in session.get_outputs()},
        )
        props = session.get_modelmeta().custom_metadata_map
        self.metadata = metadata_from_props(path, props)
        self.precision = props.get(PROP_PRECISION, "fp32")

    def run(self, images: np.ndarray) -> np.ndarray:
        """Labels for a uint8 NHWC batch, on the next free session."""
        with self._sessions.take() as session:
            (labels,) = session.run([LABELS_NAME], {INPUT_NAME: images})
        return labels

    def close(self) -> None:
        """Drop the sessions (ONNX Runtime frees their memory with them)."""
        self._sessions.items.clear()


def check_signature(
    path: Path, inputs: dict[str, tuple[str, int]], outputs: dict[str, tuple[str, int]]
) -> None:
    """BackendError unless the graph has the deployable contract: uint8 ``image`` [N,H,W,3] in, uint8
    ``labels`` [N,H,W] out (``{name: (ONNX Runtime type, rank)}``)."""
    if inputs.get(INPUT_NAME) != (ORT_INPUT_TYPE, 4):
        raise BackendError(
            f"{path} is not a deployable FCN graph: expected input '{INPUT_NAME}' uint8 [N,H,W,3], "
            f"found {inputs}"
        )
    if outputs.get(LABELS_NAME) != (ORT_LABELS_TYPE, 3):
        raise BackendError(
            f"{path} is not a deployable FCN graph: expected output '{LABELS_NAME}' uint8 [N,H,W], "
            f"found {outputs}"
        )


def metadata_from_props(path: Path, props: dict[str, str]) -> ModelMetadata:
    """The model metadata an exported graph carries; BackendError if it has none or it is invalid."""
    if PROP_METADATA not in props:
        raise BackendError(
            f"{path} has no '{PROP_METADATA}' property: export it with `python -m export.onnx`"
        )
    try:
        return ModelMetadata.from_json(props[PROP_METADATA])
    except Exception as exc:
        raise BackendError(f"{path}: invalid {PROP_METADATA} ({type(exc).__name__}: {exc})") from None
