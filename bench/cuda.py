"""PyTorch forward passes of the deployable graph for the GPU benchmark rows and the GPU check.

:class:`HalfFCN` is the FP16 graph ``export.fp16`` makes, in PyTorch: the normalisation in FP32, the
network in FP16 (channels-last, the layout cuDNN's tensor-core kernels use), the argmax of the FP16 scores
(the ONNX graph casts them to FP32 first, which changes no maximum). :class:`Replay` runs a module from a
CUDA graph captured once per input shape: host uint8 in, host labels out, through pinned buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from common.metadata import Normalization

WARMUP_BEFORE_CAPTURE = 3
"""Eager runs on a side stream before a capture (lazy cuDNN/cuBLAS initialisation must not be captured)."""


class HalfFCN(nn.Module):
    """uint8 NHWC → uint8 labels with an FP16 network, as in the FP16 ONNX graph.

    The normalisation is ``training.data.normalize_batch``'s formula with its constants made once, as
    buffers: ``normalize_batch`` makes them on each call (a host-to-device copy, which a CUDA graph capture
    refuses). ``tests/bench/test_gpu_check.py`` checks the two agree.
    """

    def __init__(self, model: nn.Module, normalization: Normalization, channels_last: bool = True) -> None:
        super().__init__()
        self.normalization = normalization
        self.register_buffer("mean", torch.tensor(normalization.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(normalization.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().half().to(memory_format=self.layout)  # type: ignore[call-overload]

    def normalize(self, image: Tensor) -> Tensor:
        """uint8 NHWC → float32 NCHW network input (``normalize_batch``)."""
        x = image.to(torch.float32).permute(0, 3, 1, 2)
        if self.normalization.channel_order == "BGR":
            x = x.flip(1)
        return (x * self.normalization.scale - self.mean) / self.std

    def forward(self, image: Tensor) -> Tensor:
        x = self.normalize(image).half().contiguous(memory_format=self.layout)
        return self.model(x).argmax(dim=1).to(torch.uint8)


def labels_of(module: nn.Module, images: np.ndarray, device: str) -> np.ndarray:
    """Labels of a host uint8 batch, computed eagerly on ``device``."""
    with torch.inference_mode():
        return module(torch.from_numpy(images).to(device)).cpu().numpy()


class Replay:
    """A module replayed from one CUDA graph per input shape (captured on first use)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = {}

    def prepare(self, images: np.ndarray) -> tuple[Tensor, tuple[Any, ...]]:
        """Pin the batch and capture the graph of its shape (untimed)."""
        shape = tuple(images.shape)
        if shape not in self.graphs:
            self.graphs[shape] = self._capture(shape)
        return torch.from_numpy(images).pin_memory(), self.graphs[shape]

    def _capture(self, shape: tuple[int, ...]) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]:
        static_in = torch.zeros(shape, dtype=torch.uint8, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(WARMUP_BEFORE_CAPTURE):
                self.module(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool):
            static_out = self.module(static_in)
        host_out = torch.empty(static_out.shape, dtype=static_out.dtype).pin_memory()
        return graph, static_in, static_out, host_out

    @staticmethod
    def run(prepared: tuple[Tensor, tuple[Any, ...]]) -> np.ndarray:
        """Copy in, replay, copy the labels out (the timed part)."""
        pinned, (graph, static_in, static_out, host_out) = prepared
        static_in.copy_(pinned, non_blocking=True)
        graph.replay()
        host_out.copy_(static_out, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return host_out.numpy()
