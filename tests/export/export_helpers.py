"""Helpers shared by the export tests (imported by name: tests/export is on sys.path under pytest)."""

from __future__ import annotations

import torch

from training.model import FCNBase, build_model

WIDTH = 1 / 16
"""Backbone width of the test models: small enough for 2 CPU cores."""


def random_model(architecture: str = "fcn8s", width: float = WIDTH, seed: int = 0) -> FCNBase:
    """A freshly built FCN whose (zero-initialised) score layers get random weights, so labels vary."""
    torch.manual_seed(seed)
    model = build_model(architecture, 21, width)
    with torch.no_grad():
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(model, name):
                layer = getattr(model, name)
                layer.weight.normal_(std=0.5)
                layer.bias.normal_(std=0.5)
    return model.eval()
