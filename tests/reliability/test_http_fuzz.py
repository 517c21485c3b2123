"""hypothesis at the HTTP level: corrupted images posted to the real server process.

Unlike the in-process property tests, a decoder crash here (a segfault in a C codec) would kill the
server process, and the test would see it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import assert_clean_error, post_image
from .serverproc import ServerProcess
from .test_decode_properties import SEEDS

CONTENT_TYPES = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/tiff",
    "image/bmp",
    "image/x-foo",
)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=16),
    cut=st.one_of(st.none(), st.integers(1, 1 << 16)),
    content_type=st.sampled_from(CONTENT_TYPES),
)
def test_corrupted_uploads_never_break_the_server(
    client: httpx.Client,
    tiny_server: ServerProcess,
    seed: bytes,
    flips: list[tuple[int, int]],
    cut: int | None,
    content_type: str,
) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data) or 1]
    response = post_image(client, tiny_server.url, bytes(data), content_type)
    if response.status_code != 200:
        assert_clean_error(response, {400, 413, 415})
    assert tiny_server.proc.poll() is None, "the server process died"
