"""Serving geometry: buckets, pad/crop, the engine profile that covers them, metadata round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.geometry import NetworkGeometry, Profile, ServingGeometry
from common.metadata import ModelMetadata

REFERENCE = NetworkGeometry()


def test_bucket_sides_end_every_pooling_window() -> None:
    geometry = ServingGeometry(REFERENCE, 512, 32)
    assert geometry.bucket_shape(100, 33) == (122, 58)  # (122 + 198) = 10 * 32, (58 + 198) = 8 * 32
    assert geometry.bucket_shape(26, 1) == (26, 26)
    assert geometry.bucket_shape(507, 512) == (512, 512)  # capped at max_side, never below the image
    for height in range(1, 513):
        side = geometry.bucket_side(height)
        assert height <= side <= 512 and (side == 512 or (side + 198) % 32 == 0) and side - height < 32
    buckets = geometry.buckets()
    assert len(buckets) == 17 * 17 and (512, 512) in buckets and (26, 26) in buckets


def test_bucket_rule_follows_the_networks_own_growth_and_smallest_input() -> None:
    other = ServingGeometry(NetworkGeometry(input_growth=0, output_stride=16, min_input_side=40), 256, 16)
    assert other.bucket_side(1) == 48 and other.bucket_side(49) == 64 and other.sides[0] == 48
    assert all(side % 16 == 0 or side == 256 for side in other.sides)


def test_pad_places_the_image_top_left_and_crop_undoes_it() -> None:
    geometry = ServingGeometry(REFERENCE, 128, 32)
    image = np.full((30, 40, 3), 7, np.uint8)
    padded = geometry.pad(image, (1, 2, 3))
    assert padded.shape == (58, 58, 3)
    np.testing.assert_array_equal(padded[:30, :40], image)
    assert (padded[30:] == (1, 2, 3)).all() and (padded[:, 40:] == (1, 2, 3)).all()
    assert ServingGeometry.crop(padded[..., 0], (30, 40)).shape == (30, 40)
    exact = np.zeros((58, 90, 3), np.uint8)
    assert geometry.pad(exact, (0, 0, 0)) is exact


def test_default_engine_profile_covers_every_warm_up_shape() -> None:
    """The GPU start-up bug: the smallest bucket (26) was below the engine profile's minimum side (32)."""
    geometry = ServingGeometry(REFERENCE)
    profile = geometry.engine_profile(8)
    assert profile == Profile(1, 4, 8, 26, 506, 512)
    assert all(profile.covers(1, h, w) for h, w in geometry.buckets())
    assert profile.covers(8, 512, 512) and not profile.covers(1, 25, 26) and not profile.covers(9, 26, 26)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 256), st.integers(32, 2048), st.integers(1, 64))
def test_the_engine_profile_covers_every_bucket_of_any_settings(
    bucket: int, max_side: int, batch: int
) -> None:
    geometry = ServingGeometry(REFERENCE, max_side, min(bucket, max_side))
    profile = geometry.engine_profile(batch)
    sides = geometry.sides
    assert profile.min_side == sides[0] and profile.max_side == sides[-1] == max_side
    assert profile.covers(1, sides[0], sides[-1]) and profile.covers(batch, sides[-1], sides[0])
    for size in (1, max_side // 3 + 1, max_side):
        side = geometry.bucket_side(size)
        assert size <= side <= max_side and profile.covers(batch, side, side)


def test_old_metadata_gets_the_reference_geometry() -> None:
    data = ModelMetadata().to_dict()
    assert data["geometry"] == {"input_growth": 198, "output_stride": 32, "min_input_side": 1}
    del data["geometry"]  # written before the export recorded geometry
    assert ModelMetadata.from_dict(data).geometry == REFERENCE
    changed = dataclasses.replace(ModelMetadata(), geometry=NetworkGeometry(input_growth=6))
    assert ModelMetadata.from_json(changed.to_json()).geometry.input_growth == 6


def test_invalid_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="granularity"):
        ServingGeometry(REFERENCE, 512, 0)
    with pytest.raises(ValueError, match="smallest input"):
        ServingGeometry(NetworkGeometry(min_input_side=64), 32, 32)
