"""Version swaps under load: five swaps while 16 clients send requests, nothing failed or lost, every answer
from a version that was loaded then and with that version's labels; memory released after an unload."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.http import load_limits
from tests.server.conftest import png_bytes, random_image, running
from tests.server.test_server_v2 import REPO_SETTINGS, make_repository

CONCURRENCY = 16
SWAPS = 5
IMAGES = [random_image(90 + 7 * i, 120 - 5 * i, seed=40 + i) for i in range(3)]


def _labels(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


@pytest.mark.slow
def test_five_swaps_at_c16_lose_nothing(tmp_path: Path) -> None:
    root = make_repository(tmp_path / "repo")
    settings = {**REPO_SETTINGS, "model_repository": root, "default_model": "demo", "queue_size": 64}
    with running(tmp_path, settings) as server:
        bodies = [png_bytes(image) for image in IMAGES]
        expected: dict[tuple[str, int], np.ndarray] = {}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for version in (1, 2):
                load = client.post(
                    "/v2/repository/models/demo/load", json={"parameters": {"version": version}}
                )
                assert load.is_success, load.text
                for index, body in enumerate(bodies):
                    response = client.post("/segment", content=body, headers={"content-type": "image/png"})
                    assert response.headers["x-model-version"] == str(version)
                    expected[(str(version), index)] = _labels(response.content)
        assert any(not np.array_equal(expected[("1", i)], expected[("2", i)]) for i in range(len(bodies)))
        outcome = asyncio.run(_load_and_swap(server.url, bodies))
        print(
            f"swap figures: {outcome['sent']} sent, {outcome['answered']} answered, statuses "
            f"{dict(outcome['statuses'])}, transport errors {dict(outcome['errors'])}, versions seen "
            f"{dict(outcome['versions'])}, swaps {outcome['swaps']}"
        )
        assert outcome["sent"] == outcome["answered"] and not outcome["errors"]
        assert set(outcome["statuses"]) == {200}, outcome["statuses"]
        assert outcome["swaps"] == SWAPS and set(outcome["versions"]) == {"1", "2"}
        for version, index, labels in outcome["answers"]:
            np.testing.assert_array_equal(labels, expected[(version, index)])

        with httpx.Client(base_url=server.url, timeout=60) as client:
            before = server.rss_kib()
            assert client.post("/v2/repository/models/demo-fp16/unload").is_success  # returns once unloaded
            index = client.post("/v2/repository/index").json()
            assert {e["state"] for e in index if e["name"] == "demo-fp16"} == {"UNAVAILABLE"}
            after = server.rss_kib()
            print(
                f"unload figures: RSS {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after unloading"
            )
            assert after <= before


async def _load_and_swap(url: str, bodies: list[bytes]) -> dict:
    stop = asyncio.Event()
    sent = answered = 0
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    answers: list[tuple[str, int, np.ndarray]] = []
    limits = await asyncio.to_thread(load_limits, [url], CONCURRENCY)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker(offset: int) -> None:
            nonlocal sent, answered
            index = offset
            while not stop.is_set():
                index = (index + 1) % len(bodies)
                sent += 1
                try:
                    response = await client.post(
                        "/segment", content=bodies[index], headers={"content-type": "image/png"}
                    )
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                answered += 1
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    version = response.headers["x-model-version"]
                    versions[version] += 1
                    answers.append((version, index, _labels(response.content)))

        workers = [asyncio.create_task(worker(i)) for i in range(CONCURRENCY)]
        swaps = 0
        await asyncio.sleep(1.0)  # load running before the first swap
        for swap in range(SWAPS):
            version = 1 if swap % 2 == 0 else 2
            response = await client.post(
                "/v2/repository/models/demo/load", json={"parameters": {"version": version}}, timeout=120
            )
            assert response.status_code == 200, response.text
            swaps += 1
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
    return {
        "sent": sent, "answered": answered, "statuses": statuses, "errors": errors, "versions": versions,
        "answers": answers, "swaps": swaps,
    }  # fmt: skip
