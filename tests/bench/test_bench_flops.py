"""The analytical FLOP counter against the spec's figure and hand-computed layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.flops import conv_macs, count_macs, fcn_gflop, total_macs
from training.model import build_model


def test_full_size_fcn8s_at_500_is_181_5_g_macs() -> None:
    with torch.device("meta"):
        model = build_model("fcn8s")
    assert total_macs(model, 500, 500) / 1e9 == pytest.approx(181.5, abs=0.05)
    assert fcn_gflop("fcn8s", 21, 1.0, 500, 500) == pytest.approx(363.1, abs=0.1)


def test_per_layer_shapes_follow_the_padding_and_ceil_pooling() -> None:
    with torch.device("meta"):
        model = build_model("fcn8s")
    costs = {c.name: c for c in count_macs(model, 500, 500)}
    assert costs["conv1_1"].output_shape == (64, 698, 698)
    assert costs["fc6"].output_shape == (4096, 16, 16)
    assert costs["upscore8"].output_shape == (21, 568, 568)
    # fc6: 4096 outputs x 16 x 16 positions x 512 x 7 x 7 inputs each.
    assert costs["fc6"].macs == 4096 * 16 * 16 * 512 * 49


def test_conv_and_transposed_conv_formulas() -> None:
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=2)
    assert conv_macs(conv, torch.Size([1, 8, 10, 10]), torch.Size([1, 16, 10, 10])) == 16 * 100 * 4 * 9
    up = nn.ConvTranspose2d(4, 4, 4, stride=2, bias=False)
    # every input pixel is scattered through a 4x4 kernel into all 4 output channels
    assert conv_macs(up, torch.Size([1, 4, 5, 5]), torch.Size([1, 4, 12, 12])) == 4 * 25 * 4 * 16
    grouped = nn.ConvTranspose2d(4, 4, 4, stride=2, groups=4, bias=False)
    assert conv_macs(grouped, torch.Size([1, 4, 5, 5]), torch.Size([1, 4, 12, 12])) == 4 * 25 * 16


def test_counting_a_real_model_leaves_it_usable() -> None:
    model = build_model("fcn32s", width=1 / 16)
    with torch.device("meta"):
        meta_model = build_model("fcn32s", width=1 / 16)
    assert total_macs(model, 64, 64) == total_macs(meta_model, 64, 64)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 21, 64, 64)
    assert total_macs(model, 128, 128) > total_macs(model, 64, 64)


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        count_macs(build_model("fcn8s", width=1 / 32), 0, 10)
