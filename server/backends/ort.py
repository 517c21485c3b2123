"""ONNX Runtime backend: CUDA with onnxruntime-gpu and a GPU, else CPU; one session per model instance."""

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
from common.onnxrt import create_session
from server.backends.base import BackendError
from server.backends.slots import Slots

log = logging.getLogger(__name__)


class OnnxRuntimeBackend:
    """``instances`` ``onnxruntime.InferenceSession``s over the exported deployable graph.

    Each session has its own intra-op pool of ``threads`` threads (0 = ONNX Runtime's default, all cores).
    On CPU the pools never spin-wait: they share the cores with the decode/encode threads and with each
    other, and a spinning pool starves both.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, *, use_cuda: bool, instances: int = 1, threads: int = 0) -> None:
        if not path.is_file():
            raise BackendError(f"model file not found: {path}")
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        )
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
        if use_cuda and self.provider != "CUDAExecutionProvider":
            log.warning("CUDA was requested but ONNX Runtime runs on %s", self.provider)
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
