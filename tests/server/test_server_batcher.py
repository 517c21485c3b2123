"""The batcher alone: batching by shape, deadlines, discards, failure isolation, queue bound."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from server.batcher import Batcher, DeadlineError, InferenceError, QueueFullError
from server.metrics import Metrics


class Recorder:
    """Backend double: labels = red channel; records batch shapes; can block or raise."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def run(self, images: np.ndarray) -> np.ndarray:
        self.gate.wait(5)
        self.shapes.append(images.shape)
        if self.fail:
            raise MemoryError("boom")
        return images[..., 0].copy()


def _image(value: int, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.full((*shape, 3), value, np.uint8)


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def _batcher(backend: Recorder, **kwargs: object) -> Batcher:
    options = {"max_batch_size": 4, "max_delay_s": 0.05, "queue_size": 8, **kwargs}
    return Batcher(backend.run, metrics=Metrics().for_model("test", 1), **options)  # type: ignore[arg-type]


def test_batches_group_by_shape_and_return_each_image_its_own_labels() -> None:
    backend = Recorder()

    async def scenario() -> list[object]:
        batcher = _batcher(backend)
        batcher.start()
        far = asyncio.get_running_loop().time() + 10
        jobs = [batcher.submit(_image(v), far) for v in (1, 2, 3)]
        jobs.append(batcher.submit(_image(9, (64, 32)), far))
        results = [await job.future for job in jobs]
        await batcher.stop()
        return results

    results = _run(scenario())
    assert sorted(backend.shapes) == [(1, 64, 32, 3), (3, 32, 32, 3)]
    assert [r.batch_size for r in results] == [3, 3, 3, 1]  # type: ignore[attr-defined]
    assert results[1].labels.shape == (32, 32) and (results[1].labels == 2).all()  # type: ignore[attr-defined]
    assert results[3].labels.shape == (64, 32) and (results[3].labels == 9).all()  # type: ignore[attr-defined]


def test_expired_and_discarded_jobs_never_reach_the_backend() -> None:
    backend = Recorder()
    backend.gate.clear()  # the first batch blocks until released

    async def scenario() -> None:
        batcher = _batcher(backend, max_batch_size=1)
        batcher.start()
        loop = asyncio.get_running_loop()
        first = batcher.submit(_image(1), loop.time() + 10)
        await asyncio.sleep(0.1)  # first is running (blocked)
        expiring = batcher.submit(_image(2), loop.time() + 0.05)
        leaving = batcher.submit(_image(3), loop.time() + 10)
        kept = batcher.submit(_image(4), loop.time() + 10)
        assert batcher.discard(leaving) and not batcher.discard(first)
        await asyncio.sleep(0.1)
        backend.gate.set()
        await first.future
        with pytest.raises(DeadlineError):
            await expiring.future
        assert (await kept.future).labels[0, 0] == 4
        await batcher.stop()

    _run(scenario())
    assert [s[0] for s in backend.shapes] == [1, 1]  # only `first` and `kept` ran


def test_backend_failure_fails_only_that_batch_and_queue_is_bounded() -> None:
    backend = Recorder()

    async def scenario() -> None:
        batcher = _batcher(backend, queue_size=2, max_delay_s=0.2)
        batcher.start()
        far = asyncio.get_running_loop().time() + 10
        backend.fail = True
        doomed = [batcher.submit(_image(1), far), batcher.submit(_image(2), far)]
        with pytest.raises(QueueFullError):
            batcher.submit(_image(3), far)
        for job in doomed:
            with pytest.raises(InferenceError) as failed:
                await job.future
            assert failed.value.cause == "MemoryError"
        backend.fail = False
        assert (await batcher.submit(_image(5), far).future).labels[0, 0] == 5
        await batcher.stop()

    _run(scenario())
