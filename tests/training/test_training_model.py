"""The FCN nets: output size equals input size, the paper's parameter count, the bilinear kernels."""

from __future__ import annotations

import pytest
import torch

from training.model import FCN8s, FCN8sAtOnce, bilinear_kernel, build_model

SIZES = [(1, 1, 1), (1, 31, 33), (1, 375, 500), (1, 500, 375), (3, 47, 29)]


@pytest.fixture(scope="module", params=["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"])
def small_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(request.param, 3, 1 / 32).eval()


@pytest.mark.parametrize(("batch", "height", "width"), SIZES)
@torch.no_grad()
def test_output_size_equals_input_size(
    small_model: torch.nn.Module, batch: int, height: int, width: int
) -> None:
    output = small_model(torch.randn(batch, 3, height, width))
    assert tuple(output.shape) == (batch, 3, height, width)


def test_fcn8s_has_the_papers_parameter_count() -> None:
    with torch.device("meta"):
        model = build_model("fcn8s", 21, 1.0)
    assert sum(p.numel() for p in model.parameters()) == 134_489_759
    fixed = sum(getattr(model, name).weight.numel() for name in model.upsampling_layers)
    assert fixed == 7_056 + 7_056 + 112_896


def test_bilinear_kernel_profiles_and_diagonal() -> None:
    k4 = bilinear_kernel(3, 4)
    assert k4.shape == (3, 3, 4, 4)
    profile = torch.tensor([0.25, 0.75, 0.75, 0.25])
    for c in range(3):
        assert torch.allclose(k4[c, c], torch.outer(profile, profile))
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    assert torch.count_nonzero(k4[off_diagonal]) == 0
    k16 = bilinear_kernel(2, 16)[0, 0]
    row = torch.tensor([0.0625 + 0.125 * i for i in range(8)] + [0.9375 - 0.125 * i for i in range(8)])
    assert torch.allclose(k16, torch.outer(row, row))
    assert k16[0, 0].item() == pytest.approx(0.0625**2)
    assert k16[7, 7].item() == pytest.approx(0.9375**2)
    assert row.sum().item() == pytest.approx(8)  # each 1-D profile sums to the stride


def test_fresh_model_scores_zero_and_upsampling_is_bilinear() -> None:
    model = build_model("fcn8s", 21, 1 / 32)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert torch.count_nonzero(getattr(model, name).weight) == 0
    assert torch.equal(model.upscore8.weight, bilinear_kernel(21, 16))
    assert model.upscore8.bias is None


def test_at_once_scales_the_skips() -> None:
    assert (FCN8sAtOnce.pool4_scale, FCN8sAtOnce.pool3_scale) == (0.01, 0.0001)
    assert (FCN8s.pool4_scale, FCN8s.pool3_scale) == (1.0, 1.0)


def test_bad_architecture_and_width_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("fcn4s")
    with pytest.raises(ValueError, match="width"):
        build_model("fcn8s", 21, 0.0)
