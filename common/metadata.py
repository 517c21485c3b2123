"""The model metadata record that travels from training to the checkpoint, ONNX graph, engine and server."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from common.classes import VOC_CLASSES, Color, voc_palette
from common.geometry import NetworkGeometry

Architecture = Literal["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"]
ARCHITECTURES: tuple[str, ...] = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")

CAFFE_BGR_MEAN: tuple[float, float, float] = (104.00699, 116.66877, 122.67892)
"""Mean pixel (B, G, R, 0..255 scale) of the Caffe reference nets."""


@dataclass(frozen=True)
class Normalization:
    """How uint8 RGB pixels become network input: reorder channels, scale, subtract mean, divide std.

    ``mean`` and ``std`` are in the order of ``channel_order`` and in the scaled units.
    """

    channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def caffe(cls) -> Normalization:
        """The Caffe reference preprocessing: BGR, 0..255, mean-subtracted, no std division."""
        return cls(channel_order="BGR", scale=1.0, mean=CAFFE_BGR_MEAN, std=(1.0, 1.0, 1.0))

    def neutral_rgb(self) -> Color:
        """The uint8 RGB colour that normalises to (about) zero: the padding colour of every bucket."""
        rgb_mean = self.mean if self.channel_order == "RGB" else self.mean[::-1]
        r, g, b = (min(255, max(0, round(m / self.scale))) for m in rgb_mean)
        return r, g, b

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        return cls(
            channel_order=data["channel_order"],
            scale=float(data["scale"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class ModelMetadata:
    """Everything downstream needs to know about a trained model (nothing is hard-coded elsewhere)."""

    architecture: Architecture = "fcn8s"
    width: float = 1.0
    classes: tuple[str, ...] = VOC_CLASSES
    palette: tuple[Color, ...] = field(default_factory=lambda: tuple(voc_palette(len(VOC_CLASSES))))
    normalization: Normalization = field(default_factory=Normalization)
    name: str = "fcn8s"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    geometry: NetworkGeometry = field(default_factory=NetworkGeometry)
    """Input growth, output stride and smallest input of the network (written by the export)."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; expected one of {ARCHITECTURES}")
        if len(self.palette) != len(self.classes):
            raise ValueError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")
        if not 0 < self.width <= 1.0:
            raise ValueError(f"width must be in (0, 1], got {self.width}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["palette"] = [list(c) for c in self.palette]
        data["normalization"]["mean"] = list(self.normalization.mean)
        data["normalization"]["std"] = list(self.normalization.std)
        data["geometry"] = self.geometry.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        return cls(
            architecture=data["architecture"],
            width=float(data["width"]),
            classes=tuple(data["classes"]),
            palette=tuple(tuple(int(v) for v in c) for c in data["palette"]),  # type: ignore[misc]
            normalization=Normalization.from_dict(data["normalization"]),
            name=data.get("name", data["architecture"]),
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            geometry=NetworkGeometry.from_dict(data.get("geometry")),
        )

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        return cls.from_dict(json.loads(text))
