"""A flood of near-limit uploads: the bodies held at once stay within ``max_inflight_body_bytes``, so the
server's memory stays bounded, the excess is refused before its body is read, and small requests are
still served meanwhile."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import httpx

from bench.http import load_limits

from . import inputs
from .fakes import FakeSpec
from .helpers import assert_clean_error, metrics, solid_png
from .serverproc import ServerProcess, fake_server

MIB = 1024 * 1024
FLOOD = 128
BUDGET = 4 * MIB
FLOOD_SETTINGS: dict[str, object] = {
    "max_body_bytes": MIB,
    "max_inflight_body_bytes": BUDGET,
    "max_pixels": 1_000_000,
    "codec_threads": 2,
    "deadline_ms": 30_000,
}
READ_AHEAD = 256 * 1024
"""What uvicorn may read of a body before the app decides (one socket read; it pauses beyond 64 KiB)."""
RSS_BOUND = 3 * BUDGET + FLOOD * READ_AHEAD
"""The growth of the server's RSS allowed in the flood (docs/reliability.md): the bodies held (at most
the budget) three times over (the chunks, the joined body, the decoded image), plus uvicorn's read-ahead
on each connection. The flood offers 128 MiB; without the budget the server held 134-156 MiB more."""
PNG_TYPE = {"Content-Type": "image/png"}


class RssSampler:
    """The peak resident memory of a process, sampled every 5 ms in a thread."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak = server.rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.server.rss_kib())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def flood(url: str, large: bytes, small: bytes) -> tuple[Counter[int], list[int], list[httpx.Response]]:
    """FLOOD simultaneous large uploads, and small requests one after another while they run."""
    large_limits = await asyncio.to_thread(load_limits, [url], FLOOD)
    small_limits = await asyncio.to_thread(load_limits, [url], 1)
    refusals: list[httpx.Response] = []
    statuses: Counter[int] = Counter()
    async with (
        httpx.AsyncClient(timeout=60, limits=large_limits) as client,
        httpx.AsyncClient(timeout=60, limits=small_limits) as small_client,
    ):

        async def upload() -> None:
            response = await client.post(f"{url}/segment", content=large, headers=PNG_TYPE)
            statuses[response.status_code] += 1
            if response.status_code != 200:
                refusals.append(response)

        async def small_ones() -> list[int]:
            codes = []
            while len(codes) < 10 or sum(statuses.values()) < FLOOD // 2:
                response = await small_client.post(f"{url}/segment", content=small, headers=PNG_TYPE)
                codes.append(response.status_code)
            return codes

        uploads = asyncio.gather(*(upload() for _ in range(FLOOD)))
        small_codes = await small_ones()
        await uploads
    return statuses, small_codes, refusals


def test_upload_flood_keeps_memory_bounded_and_small_requests_served(tmp_path: Path) -> None:
    large = inputs.noise_png(560, 600, seed=3)
    small = solid_png((20, 30, 40))
    assert 0.9 * MIB < len(large) <= MIB
    with fake_server(tmp_path, FLOOD_SETTINGS, FakeSpec()) as server, httpx.Client(timeout=30) as client:
        for body in (large, small, large):  # warm the decoders and the connection code
            response = client.post(server.url + "/segment", content=body, headers=PNG_TYPE)
            assert response.status_code == 200
        baseline = server.rss_kib()
        with RssSampler(server) as rss:
            statuses, small_codes, refusals = asyncio.run(flood(server.url, large, small))
        growth = (rss.peak - baseline) * 1024
        samples = metrics(server.url)
        cuts = {r: samples[f'fcn_http_errors_total{{reason="{r}"}}'] for r in ("linger_time", "linger_bytes")}
        print(
            f"flood figures: {FLOOD} uploads of {len(large)} B: {dict(statuses)}; small requests "
            f"{Counter(small_codes)}; RSS baseline {baseline / 1024:.0f} MiB, "
            f"peak growth {growth / MIB:.1f} MiB (bound {RSS_BOUND / MIB:.0f} MiB); linger cuts {cuts}"
        )
        assert set(statuses) <= {200, 429} and statuses[200] > 0 and statuses[429] > 0, statuses
        for response in refusals:
            assert "too many uploads" in assert_clean_error(response, {429})
            assert response.headers["retry-after"] == "1"
            assert response.headers["connection"] == "close"
        assert small_codes == [200] * len(small_codes), small_codes
        assert growth < RSS_BOUND, f"RSS grew {growth / MIB:.1f} MiB"
        after = client.post(server.url + "/segment", content=large, headers=PNG_TYPE)
        assert after.status_code == 200
