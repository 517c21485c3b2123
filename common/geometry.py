"""Shape geometry, owned once: the network's facts (from its metadata) and the serving shapes they imply.

:class:`NetworkGeometry` is what the model says about itself (written by the export into the metadata):
how much the first convolution grows the input, the output stride, the smallest valid input.
:class:`ServingGeometry` combines it with two settings (``max_side``, bucket ``granularity``) into
everything the server, the engine build, the Triton config and the benchmarks need: the inference size
of an upload, its bucket, every bucket, padding, cropping and the TensorRT profile covering them all.

Bucket sides are the sizes ``s`` with ``(s + input_growth) % granularity == 0``, plus ``max_side``:
FCN's ``conv1_1`` pads by 100, so its output is ``s + 198`` pixels, and at these sizes every pooling
stage of the padded image ends on a whole window. Padding to such sides keeps the labels closer to an
unpadded forward than padding to multiples of the granularity (measured with ``python -m
server.agreement``; see docs/serving.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

Shape = tuple[int, int]
"""(height, width)."""

DEFAULT_MAX_SIDE = 512
"""Default long side of the inference size (the server setting ``max_side``)."""
DEFAULT_GRANULARITY = 32
"""Default bucket granularity (the server setting ``bucket``): the reference nets' output stride."""
DEFAULT_MAX_BATCH = 8
"""Default most images in one forward pass (the server setting ``max_batch_size``)."""
TYPICAL_SIDE = 500
"""Long side of a typical PASCAL VOC image: the engine profile's optimum side."""


@dataclass(frozen=True)
class NetworkGeometry:
    """What an FCN's layers imply about input sizes (the reference VGG16 nets' values by default)."""

    input_growth: int = 198
    """How many pixels ``conv1_1`` adds to each spatial side: ``2 * padding - (kernel - 1)``."""
    output_stride: int = 32
    """Total down-sampling of the trunk (``2 ** pools``)."""
    min_input_side: int = 1
    """The smallest input side the network maps to an output of the same size."""

    def __post_init__(self) -> None:
        if self.output_stride < 1 or self.min_input_side < 1 or self.input_growth < 0:
            raise ValueError(f"invalid network geometry {self}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> NetworkGeometry:
        """Read the metadata's ``geometry``; metadata written before it existed gets the reference values."""
        if not data:
            return cls()
        return cls(**{key: int(value) for key, value in data.items()})


@dataclass(frozen=True)
class Profile:
    """A TensorRT optimisation profile of the ``image`` input ``[N, H, W, 3]``: batch and side ranges."""

    min_batch: int
    opt_batch: int
    max_batch: int
    min_side: int
    opt_side: int
    max_side: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= min <= opt <= max batch, got {self.batches}")
        if not 1 <= self.min_side <= self.opt_side <= self.max_side:
            raise ValueError(f"need 1 <= min <= opt <= max side, got {self.sides}")

    @property
    def batches(self) -> tuple[int, int, int]:
        return self.min_batch, self.opt_batch, self.max_batch

    @property
    def sides(self) -> tuple[int, int, int]:
        return self.min_side, self.opt_side, self.max_side

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) NHWC shapes for ``IOptimizationProfile.set_shape``."""
        return (
            (self.min_batch, self.min_side, self.min_side, 3),
            (self.opt_batch, self.opt_side, self.opt_side, 3),
            (self.max_batch, self.max_side, self.max_side, 3),
        )

    def covers(self, batch: int, height: int, width: int) -> bool:
        """Whether an input of this size can run on the engine."""
        return self.min_batch <= batch <= self.max_batch and all(
            self.min_side <= side <= self.max_side for side in (height, width)
        )

    def includes(self, other: Profile) -> bool:
        """Whether every input ``other`` admits can run on this profile."""
        return self.covers(other.min_batch, other.min_side, other.min_side) and self.covers(
            other.max_batch, other.max_side, other.max_side
        )


@dataclass(frozen=True)
class ServingGeometry:
    """The shapes one server configuration produces for one network."""

    network: NetworkGeometry
    max_side: int = DEFAULT_MAX_SIDE
    granularity: int = DEFAULT_GRANULARITY

    def __post_init__(self) -> None:
        if self.granularity < 1:
            raise ValueError(f"bucket granularity must be at least 1, got {self.granularity}")
        if self.max_side < self.network.min_input_side:
            raise ValueError(
                f"max_side {self.max_side} is below the network's smallest input "
                f"{self.network.min_input_side}"
            )

    def inference_size(self, height: int, width: int) -> Shape:
        """(h, w) with the long side at most ``max_side``, aspect kept, each side at least 1."""
        long_side = max(height, width)
        if long_side <= self.max_side:
            return height, width
        scale = self.max_side / long_side
        return max(1, round(height * scale)), max(1, round(width * scale))

    def bucket_side(self, size: int) -> int:
        """The smallest bucket side >= ``size`` (and >= the network's smallest input), else ``max_side``."""
        size = max(size, self.network.min_input_side)
        side = size + (-(size + self.network.input_growth)) % self.granularity
        return side if side <= self.max_side else max(size, self.max_side)

    def bucket_shape(self, height: int, width: int) -> Shape:
        """The padded (h, w) of an image of inference size (``height``, ``width``)."""
        return self.bucket_side(height), self.bucket_side(width)

    @cached_property
    def sides(self) -> tuple[int, ...]:
        """Every bucket side, ascending."""
        return tuple(sorted({self.bucket_side(n) for n in range(1, self.max_side + 1)}))

    def buckets(self) -> list[Shape]:
        """Every bucket shape an image resized to ``max_side`` can land in."""
        return [(h, w) for h in self.sides for w in self.sides]

    def pad(self, image: np.ndarray, fill: Sequence[int]) -> np.ndarray:
        """``image`` [h, w, 3] placed top-left in an array of its bucket's shape, the rest ``fill``."""
        height, width = image.shape[:2]
        shape = self.bucket_shape(height, width)
        if (height, width) == shape:
            return image
        out = np.empty((*shape, 3), dtype=np.uint8)
        out[...] = np.asarray(fill, dtype=np.uint8)
        out[:height, :width] = image
        return out

    @staticmethod
    def crop(labels: np.ndarray, size: Shape) -> np.ndarray:
        """The top-left ``size`` of a padded label map (undoes :meth:`pad`)."""
        return labels[: size[0], : size[1]]

    def engine_profile(self, max_batch: int = DEFAULT_MAX_BATCH) -> Profile:
        """The smallest TensorRT profile that covers every bucket at batch 1..``max_batch``."""
        opt_side = self.bucket_side(min(TYPICAL_SIDE, self.max_side))
        return Profile(
            min_batch=1,
            opt_batch=max(1, max_batch // 2),
            max_batch=max_batch,
            min_side=self.sides[0],
            opt_side=opt_side,
            max_side=self.sides[-1],
        )
