"""PASCAL VOC class names and the VOC devkit colour palette."""

from __future__ import annotations

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

IGNORE_INDEX = 255
"""Label value for void pixels (object boundaries): excluded from the loss and from the metrics."""

Color = tuple[int, int, int]


def voc_color(index: int) -> Color:
    """Colour of one class index in the VOC devkit scheme (bit-interleaved r/g/b)."""
    r = g = b = 0
    k = index
    shift = 7
    while k > 0:
        r |= (k & 1) << shift
        g |= ((k >> 1) & 1) << shift
        b |= ((k >> 2) & 1) << shift
        k >>= 3
        shift -= 1
    return (r, g, b)


def voc_palette(count: int = 256) -> list[Color]:
    """The first ``count`` VOC palette colours (index 255 is the void colour (224, 224, 192))."""
    return [voc_color(i) for i in range(count)]


def flat_palette(colors: list[Color]) -> list[int]:
    """A 768-entry flat RGB list for ``PIL.Image.putpalette``: the given colours, then VOC colours.

    Index 255 always keeps the VOC void colour so ignore pixels look as they do in VOC.
    """
    full = voc_palette(256)
    full[: len(colors)] = [tuple(c) for c in colors]  # type: ignore[misc]
    return [channel for color in full for channel in color]
