"""The backend protocol every inference engine implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from common.metadata import ModelMetadata


class BackendError(RuntimeError):
    """A model cannot be loaded or run; the message is one clear line for operators."""


@runtime_checkable
class Backend(Protocol):
    """Runs the deployable graph: uint8 RGB images in, uint8 class indices out."""

    name: str
    """Backend name: ``onnxruntime``, ``tensorrt`` or a test double's name."""
    provider: str
    """Execution provider really in use, e.g. ``CPUExecutionProvider``."""
    precision: str
    """``fp32`` | ``fp16`` | ``int8``."""
    metadata: ModelMetadata

    def run(self, images: np.ndarray) -> np.ndarray:
        """``uint8 [N, H, W, 3]`` RGB -> ``uint8 [N, H, W]`` labels. Called from one worker thread."""
        ...

    def close(self) -> None:
        """Release the model's resources."""
        ...
