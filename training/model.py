"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once on a VGG16 backbone, as the Caffe reference nets.

Layer names equal the reference (and pytorch-fcn's) so converted Caffe state dicts load directly.
The 100-pixel padding of ``conv1_1``, ceil-mode pooling and the fixed crop offsets make the output
exactly the input's size for any input from 1x1 upward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from common.geometry import NetworkGeometry
from common.metadata import ARCHITECTURES, Architecture

VGG_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
"""(channels, convolutions) of the five VGG16 stages at width 1.0."""
FC_CHANNELS = 4096


def scaled(channels: int, width: float) -> int:
    """Channel count of a layer at a width multiplier (1.0 = the paper's net)."""
    return max(1, round(channels * width))


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Diagonal bilinear upsampling weights ``(channels, channels, k, k)``, as Caffe's ``surgery.interp``."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    profile = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    filt = torch.outer(profile, profile).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


def crop_like(tensor: Tensor, offset: int, reference: Tensor) -> Tensor:
    """Caffe ``Crop`` (axis 2): ``tensor[..., offset:offset+H, offset:offset+W]`` of ``reference``'s H, W."""
    height, width = reference.shape[2], reference.shape[3]
    return tensor[:, :, offset : offset + height, offset : offset + width]


class FCNBase(nn.Module):
    """The convolutionalised VGG16 trunk shared by every FCN head, plus ``score_fr``."""

    #: Names of the fixed (never trained) bilinear upsampling layers of each head.
    upsampling_layers: tuple[str, ...] = ()

    def __init__(self, num_classes: int = 21, width: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.width = width
        in_channels = 3
        for stage, (channels, repeats) in enumerate(VGG_STAGES, start=1):
            out_channels = scaled(channels, width)
            for index in range(1, repeats + 1):
                padding = 100 if (stage, index) == (1, 1) else 1
                conv = nn.Conv2d(in_channels, out_channels, 3, padding=padding)
                self.add_module(f"conv{stage}_{index}", conv)
                in_channels = out_channels
        fc_channels = scaled(FC_CHANNELS, width)
        self.fc6 = nn.Conv2d(in_channels, fc_channels, 7)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.drop6 = nn.Dropout(0.5)
        self.drop7 = nn.Dropout(0.5)

    def reset_parameters(self) -> None:
        """Kaiming-initialise the trunk, zero the score layers, set upsampling to the bilinear kernel."""
        for name, module in self.named_modules():
            if isinstance(module, nn.ConvTranspose2d):
                module.weight.data.copy_(bilinear_kernel(self.num_classes, module.kernel_size[0]))
            elif isinstance(module, nn.Conv2d):
                if name.startswith("score"):
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                assert module.bias is not None
                nn.init.zeros_(module.bias)

    def geometry(self) -> NetworkGeometry:
        """The input-size facts of this net, read off its layers (written into the exported metadata)."""
        conv1 = self.conv1_1
        assert isinstance(conv1, nn.Conv2d)
        padding, kernel = int(conv1.padding[0]), int(conv1.kernel_size[0])  # type: ignore[index]
        stride = int(self.pool.stride if isinstance(self.pool.stride, int) else self.pool.stride[0])
        return NetworkGeometry(
            input_growth=2 * padding - (kernel - 1), output_stride=stride ** len(VGG_STAGES), min_input_side=1
        )

    def trunk(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(pool3, pool4, score_fr)`` for a normalised NCHW float input."""
        pools: list[Tensor] = []
        h = x
        for stage, (_, repeats) in enumerate(VGG_STAGES, start=1):
            for index in range(1, repeats + 1):
                h = self.relu(getattr(self, f"conv{stage}_{index}")(h))
            h = self.pool(h)
            pools.append(h)
        h = self.drop6(self.relu(self.fc6(h)))
        h = self.drop7(self.relu(self.fc7(h)))
        return pools[2], pools[3], self.score_fr(h)


def _upsampler(num_classes: int, kernel_size: int, stride: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(num_classes, num_classes, kernel_size, stride=stride, bias=False)


class FCN32s(FCNBase):
    """FCN-32s: ``score_fr`` upsampled 32x (kernel 64), cropped at offset 19."""

    upsampling_layers = ("upscore",)

    def __init__(self, num_classes: int = 21, width: float = 1.0) -> None:
        super().__init__(num_classes, width)
        self.upscore = _upsampler(num_classes, 64, 32)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _, _, score = self.trunk(x)
        return crop_like(self.upscore(score), 19, x)


class FCN16s(FCNBase):
    """FCN-16s: 2x upsampling fused with pool4 scores (offset 5), then 16x (kernel 32), offset 27."""

    upsampling_layers = ("upscore2", "upscore16")

    def __init__(self, num_classes: int = 21, width: float = 1.0) -> None:
        super().__init__(num_classes, width)
        self.score_pool4 = nn.Conv2d(scaled(512, width), num_classes, 1)
        self.upscore2 = _upsampler(num_classes, 4, 2)
        self.upscore16 = _upsampler(num_classes, 32, 16)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _, pool4, score = self.trunk(x)
        upscore2 = self.upscore2(score)
        fuse_pool4 = upscore2 + crop_like(self.score_pool4(pool4), 5, upscore2)
        return crop_like(self.upscore16(fuse_pool4), 27, x)


class FCN8s(FCNBase):
    """FCN-8s (staged): pool4 (offset 5) and pool3 (offset 9) skips, 8x upsampling, offset 31."""

    upsampling_layers = ("upscore2", "upscore_pool4", "upscore8")
    pool4_scale = 1.0
    pool3_scale = 1.0

    def __init__(self, num_classes: int = 21, width: float = 1.0) -> None:
        super().__init__(num_classes, width)
        self.score_pool4 = nn.Conv2d(scaled(512, width), num_classes, 1)
        self.score_pool3 = nn.Conv2d(scaled(256, width), num_classes, 1)
        self.upscore2 = _upsampler(num_classes, 4, 2)
        self.upscore_pool4 = _upsampler(num_classes, 4, 2)
        self.upscore8 = _upsampler(num_classes, 16, 8)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        pool3, pool4, score = self.trunk(x)
        if self.pool4_scale != 1.0:
            pool4 = pool4 * self.pool4_scale
        if self.pool3_scale != 1.0:
            pool3 = pool3 * self.pool3_scale
        upscore2 = self.upscore2(score)
        fuse_pool4 = upscore2 + crop_like(self.score_pool4(pool4), 5, upscore2)
        upscore_pool4 = self.upscore_pool4(fuse_pool4)
        fuse_pool3 = upscore_pool4 + crop_like(self.score_pool3(pool3), 9, upscore_pool4)
        return crop_like(self.upscore8(fuse_pool3), 31, x)


class FCN8sAtOnce(FCN8s):
    """FCN-8s trained at once: the skips are scaled by 0.01 (pool4) and 0.0001 (pool3)."""

    pool4_scale = 0.01
    pool3_scale = 0.0001


MODELS: dict[str, type[FCNBase]] = {
    "fcn32s": FCN32s,
    "fcn16s": FCN16s,
    "fcn8s": FCN8s,
    "fcn8s-atonce": FCN8sAtOnce,
}
assert tuple(MODELS) == ARCHITECTURES


def build_model(architecture: Architecture | str, num_classes: int = 21, width: float = 1.0) -> FCNBase:
    """Build a freshly initialised FCN by name (``fcn32s``, ``fcn16s``, ``fcn8s``, ``fcn8s-atonce``)."""
    try:
        cls = MODELS[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {sorted(MODELS)}") from None
    if not (0 < width <= 1.0) or math.isnan(width):
        raise ValueError(f"width must be in (0, 1], got {width}")
    return cls(num_classes=num_classes, width=width)
