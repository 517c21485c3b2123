"""The one deployable graph: ``uint8 [N,H,W,3] RGB → normalise → FCN → argmax → uint8 labels [N,H,W]``.

It is what gets exported to ONNX and the PyTorch reference the exported graphs are checked against,
so preprocessing cannot drift between training and serving: the normalisation comes from the
checkpoint's :class:`~common.metadata.ModelMetadata`.

:func:`export_friendly` returns an exactly equivalent copy of an FCN for export:

* ceil-mode max-pooling becomes "pad one row/column of -inf at the bottom/right, then floor-mode
  pooling". Both give ``ceil(H/2)`` outputs and the same maxima, but the floor form has a shape formula
  without a branch, so ``torch.export`` keeps H and W symbolic instead of specialising them to the
  trace size's residue modulo 32.
* a fixed bilinear upsampler whose weight is diagonal (class c only feeds class c) becomes a grouped
  (depthwise) transposed convolution with the diagonal kernels: the same output for 1/C of the work.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from common.metadata import ModelMetadata, Normalization
from training.data import normalize_batch
from training.model import FCNBase

MAX_UINT8_CLASSES = 256
"""uint8 labels hold class indices 0..255."""


class Normalize(nn.Module):
    """uint8 NHWC RGB → float NCHW network input; the same function training uses (``normalize_batch``)."""

    def __init__(self, normalization: Normalization) -> None:
        super().__init__()
        self.normalization = normalization

    def forward(self, image: Tensor) -> Tensor:
        return normalize_batch(image, self.normalization)


class CeilMaxPool2x2(nn.Module):
    """``MaxPool2d(2, 2, ceil_mode=True)`` written as -inf padding plus floor-mode pooling (same output)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, 2)


def is_diagonal(weight: Tensor) -> bool:
    """True when a square ``(C, C, k, k)`` transposed-conv weight only maps channel c to channel c."""
    if weight.dim() != 4 or weight.shape[0] != weight.shape[1]:
        return False
    off_diagonal = weight.clone()
    channels = range(weight.shape[0])
    off_diagonal[channels, channels] = 0
    return not bool(off_diagonal.any())


def depthwise_upsampler(layer: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """The grouped equivalent of a diagonal, bias-free, ungrouped ``ConvTranspose2d``."""
    if layer.groups != 1 or layer.bias is not None or not is_diagonal(layer.weight):
        raise ValueError(
            "only a bias-free, ungrouped ConvTranspose2d with a diagonal weight can be made depthwise"
        )
    channels = layer.in_channels
    grouped = nn.ConvTranspose2d(
        channels,
        channels,
        layer.kernel_size,  # type: ignore[arg-type]
        stride=layer.stride,  # type: ignore[arg-type]
        padding=layer.padding,  # type: ignore[arg-type]
        output_padding=layer.output_padding,  # type: ignore[arg-type]
        dilation=layer.dilation,  # type: ignore[arg-type]
        groups=channels,
        bias=False,
    )
    index = range(channels)
    with torch.no_grad():
        grouped.weight.copy_(layer.weight[index, index].unsqueeze(1))
    return grouped


def export_friendly(model: FCNBase, *, group_upsampling: bool = True) -> tuple[FCNBase, list[str]]:
    """An equivalent copy of ``model`` for export, and the names of the upsamplers made depthwise.

    Upsamplers with off-diagonal weights (e.g. learned ones) are kept dense, and all of them with
    ``group_upsampling=False`` (for measuring what the grouped form saves).
    """
    pool = model.pool
    if not (
        isinstance(pool, nn.MaxPool2d)
        and pool.kernel_size in (2, (2, 2))
        and pool.stride in (2, (2, 2))
        and pool.padding in (0, (0, 0))
        and pool.ceil_mode
    ):
        raise ValueError(f"expected the FCN's 2x2/2 ceil-mode max-pool, got {pool}")
    friendly = copy.deepcopy(model).eval()
    friendly.pool = CeilMaxPool2x2()  # type: ignore[assignment]
    grouped: list[str] = []
    for name in model.upsampling_layers if group_upsampling else ():
        layer = getattr(friendly, name)
        if layer.groups == 1 and layer.bias is None and is_diagonal(layer.weight):
            setattr(friendly, name, depthwise_upsampler(layer))
            grouped.append(name)
    return friendly, grouped


class DeployableFCN(nn.Module):
    """uint8 ``[N,H,W,3]`` RGB → uint8 labels ``[N,H,W]`` (and float scores ``[N,C,H,W]`` if asked)."""

    def __init__(self, model: FCNBase, normalization: Normalization, *, scores: bool = False) -> None:
        super().__init__()
        if model.num_classes > MAX_UINT8_CLASSES:
            raise ValueError(
                f"{model.num_classes} classes do not fit uint8 labels (at most {MAX_UINT8_CLASSES})"
            )
        self.normalize = Normalize(normalization)
        self.model = model.eval()
        self.scores = scores

    def forward(self, image: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if image.dtype != torch.uint8 or image.dim() != 4 or image.shape[-1] != 3:
            raise ValueError(f"expected uint8 [N, H, W, 3], got {image.dtype} {list(image.shape)}")
        scores = self.model(self.normalize(image))
        labels = scores.argmax(dim=1).to(torch.uint8)
        return (labels, scores) if self.scores else labels


def deployable_graph(
    model: FCNBase,
    metadata: ModelMetadata,
    *,
    scores: bool = False,
    friendly: bool = True,
    group_upsampling: bool = True,
) -> DeployableFCN:
    """The deployable graph of a model; ``friendly`` uses :func:`export_friendly`'s equivalent layers."""
    if metadata.num_classes != model.num_classes:
        raise ValueError(f"metadata names {metadata.num_classes} classes, the model has {model.num_classes}")
    network = export_friendly(model, group_upsampling=group_upsampling)[0] if friendly else model
    return DeployableFCN(network, metadata.normalization, scores=scores).eval()
