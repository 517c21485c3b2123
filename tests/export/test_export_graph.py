"""The deployable graph: normalisation, the export-friendly layer swaps and the uint8 label output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.metadata import ModelMetadata, Normalization
from export.graph import (
    CeilMaxPool2x2,
    DeployableFCN,
    Normalize,
    deployable_graph,
    depthwise_upsampler,
    export_friendly,
    is_diagonal,
)
from training.model import bilinear_kernel

from .export_helpers import random_model


def images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 8), (33, 50)])
def test_padded_floor_pool_equals_ceil_mode_pool(size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    expected = nn.MaxPool2d(2, stride=2, ceil_mode=True)(x)
    assert torch.equal(CeilMaxPool2x2()(x), expected)


def test_depthwise_upsampler_equals_dense_diagonal_one() -> None:
    dense = nn.ConvTranspose2d(21, 21, 16, stride=8, bias=False)
    with torch.no_grad():
        dense.weight.copy_(bilinear_kernel(21, 16) * torch.rand(21, 1, 1, 1))
    grouped = depthwise_upsampler(dense)
    assert grouped.groups == 21 and grouped.weight.shape == (21, 1, 16, 16)
    x = torch.randn(2, 21, 9, 11)
    torch.testing.assert_close(grouped(x), dense(x), rtol=0, atol=1e-5)


def test_off_diagonal_upsampler_stays_dense() -> None:
    model = random_model()
    with torch.no_grad():
        model.upscore2.weight[0, 1, 0, 0] = 0.5  # a "learned" cross-class term
    assert not is_diagonal(model.upscore2.weight)
    with pytest.raises(ValueError, match="diagonal"):
        depthwise_upsampler(model.upscore2)
    friendly, grouped = export_friendly(model)
    assert grouped == ["upscore_pool4", "upscore8"]
    assert friendly.upscore2.groups == 1 and friendly.upscore8.groups == 21


@pytest.mark.parametrize("architecture", ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"])
def test_export_friendly_copy_is_equivalent(architecture: str) -> None:
    model = random_model(architecture)
    friendly, grouped = export_friendly(model)
    assert sorted(grouped) == sorted(model.upsampling_layers)
    assert isinstance(model.pool, nn.MaxPool2d), "the original model must be left untouched"
    for h, w in [(1, 1), (31, 45), (64, 48)]:
        x = torch.randn(2, 3, h, w) * 50
        with torch.no_grad():
            expected, got = model(x), friendly(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
        assert torch.equal(got.argmax(1), expected.argmax(1))


def test_caffe_normalisation_is_bgr_minus_mean() -> None:
    norm = Normalization.caffe()
    image = images(2, 5, 7)
    got = Normalize(norm)(image).numpy()
    expected = image.numpy()[..., ::-1].astype(np.float32) - np.array(norm.mean, dtype=np.float32)
    np.testing.assert_allclose(got, expected.transpose(0, 3, 1, 2), rtol=0, atol=1e-4)


def test_rgb_normalisation_scales_and_divides_by_std() -> None:
    norm = Normalization()
    image = images(1, 4, 6)
    got = Normalize(norm)(image).numpy()
    mean, std = np.array(norm.mean, dtype=np.float32), np.array(norm.std, dtype=np.float32)
    expected = (image.numpy().astype(np.float32) / 255 - mean) / std
    np.testing.assert_allclose(got, expected.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)


def test_deployable_graph_returns_uint8_labels_of_the_input_size() -> None:
    model = random_model()
    metadata = ModelMetadata(width=model.width, normalization=Normalization.caffe())
    image = images(3, 37, 52)
    labels, scores = deployable_graph(model, metadata, scores=True)(image)
    assert labels.dtype == torch.uint8 and labels.shape == (3, 37, 52)
    assert scores.dtype == torch.float32 and scores.shape == (3, 21, 37, 52)
    with torch.no_grad():
        reference = model(Normalize(metadata.normalization)(image))
    assert torch.equal(labels, reference.argmax(1).to(torch.uint8))
    assert len(labels.unique()) > 1, "the test model should predict several classes"
    only_labels = deployable_graph(model, metadata)(image)
    assert torch.equal(only_labels, labels)


def test_deployable_graph_rejects_bad_input_and_too_many_classes() -> None:
    model = random_model()
    graph = deployable_graph(model, ModelMetadata(width=model.width))
    with pytest.raises(ValueError, match="uint8"):
        graph(torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError, match="uint8"):
        graph(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="classes"):
        deployable_graph(
            model, ModelMetadata(width=model.width, classes=("a", "b"), palette=((0, 0, 0),) * 2)
        )
    big = random_model()
    big.num_classes = 300
    with pytest.raises(ValueError, match="uint8"):
        DeployableFCN(big, Normalization())
