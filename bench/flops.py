"""Analytical multiply-add count of an FCN from its layer shapes (convolutions, transposed convolutions)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerCost:
    """Multiply-adds of one layer for one input image."""

    name: str
    kind: str
    macs: int
    output_shape: tuple[int, ...]


def conv_macs(module: nn.Conv2d | nn.ConvTranspose2d, in_shape: torch.Size, out_shape: torch.Size) -> int:
    """Multiply-adds of one (transposed) convolution for one image.

    A convolution does ``C_in/groups * kh * kw`` per output element; a transposed convolution does
    ``C_out/groups * kh * kw`` per *input* element (every input pixel is scattered through the kernel).
    """
    kh, kw = module.kernel_size
    if isinstance(module, nn.ConvTranspose2d):
        _, c_in, h, w = in_shape
        return int(c_in * h * w * (module.out_channels // module.groups) * kh * kw)
    _, c_out, h, w = out_shape
    return int(c_out * h * w * (module.in_channels // module.groups) * kh * kw)


def count_macs(model: nn.Module, height: int, width: int) -> list[LayerCost]:
    """Per-layer multiply-adds of ``model`` on one ``3 x height x width`` image.

    The shapes come from a forward pass on the ``meta`` device, so nothing is computed; a model that is
    not on the meta device is copied there first (build it under ``with torch.device("meta")`` to avoid that).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    on_meta = all(p.device.type == "meta" for p in model.parameters())
    target = model if on_meta else copy.deepcopy(model).to("meta")
    costs: list[LayerCost] = []
    hooks = []
    for name, module in target.named_modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):

            def hook(
                mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, name: str = name
            ):
                assert isinstance(mod, nn.Conv2d | nn.ConvTranspose2d)
                macs = conv_macs(mod, inputs[0].shape, output.shape)
                costs.append(LayerCost(name, type(mod).__name__, macs, tuple(output.shape[1:])))

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            target(torch.empty(1, 3, height, width, device="meta"))
    finally:
        for handle in hooks:
            handle.remove()
    return costs


def total_macs(model: nn.Module, height: int, width: int) -> int:
    """Total multiply-adds of ``model`` on one ``3 x height x width`` image."""
    return sum(cost.macs for cost in count_macs(model, height, width))


def fcn_gflop(architecture: str, num_classes: int, width: float, height: int, image_width: int) -> float:
    """GFLOP (2 per multiply-add) of one forward pass of a freshly built FCN, counted on the meta device."""
    from training.model import build_model

    with torch.device("meta"):
        model = build_model(architecture, num_classes=num_classes, width=width)
    return 2 * total_macs(model, height, image_width) / 1e9
