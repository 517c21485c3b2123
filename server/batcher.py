"""An asyncio dynamic batcher over shape buckets and model instances. It knows nothing of HTTP or geometry.

Callers submit images already padded to their bucket (``common.geometry``), so an image's labels never
depend on its batch-mates; only images of one shape share a batch, and each result is the label map of
the whole padded image. Each model instance (Triton's ``instance_group``) has its own worker thread; a
batch goes to an idle instance, so up to ``instances`` batches run at once while the event loop (and
health checks) stays free. The backend gives every concurrent caller its own session, so results do not
depend on the instance either.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.metrics import Metrics

Shape = tuple[int, int]


class InferenceThread:
    """One daemon thread that runs backend calls in order; a hung call cannot keep the process alive."""

    def __init__(self, name: str = "inference") -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._calls = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, func: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._calls.put((future, func, args))
        return future

    def shutdown(self) -> None:
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, func, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(func(*args))
            except BaseException as exc:
                future.set_exception(exc)


class QueueFullError(Exception):
    """The queue holds ``queue_size`` images already."""


class DeadlineError(Exception):
    """The request's deadline passed before it reached the model."""


class InferenceError(Exception):
    """The backend failed on the batch this request was in; ``cause`` names the exception class."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = type(cause).__name__


class ShuttingDownError(Exception):
    """The batcher stopped before the request ran."""


@dataclass(frozen=True)
class BatchResult:
    """One image's labels (its whole padded bucket) and how they were computed."""

    labels: np.ndarray
    batch_size: int
    queue_s: float
    inference_s: float


@dataclass(eq=False)
class Job:
    """One queued image: padded pixels, deadline and the future its handler awaits."""

    image: np.ndarray
    deadline: float
    enqueued: float
    future: asyncio.Future[BatchResult]
    started: bool = field(default=False)

    @property
    def bucket(self) -> Shape:
        return self.image.shape[0], self.image.shape[1]


class Batcher:
    """Collects jobs into batches of one bucket: up to ``max_batch_size``, waiting at most ``max_delay_s``."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_delay_s: float,
        queue_size: int,
        metrics: Metrics,
        instances: int = 1,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.queue_size = queue_size
        self._metrics = metrics
        self._pending: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._threads = [InferenceThread(f"inference-{index}") for index in range(instances)]
        self._idle: list[int] = list(range(instances))[::-1]
        self._busy: dict[int, float] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def instances(self) -> int:
        """Model instances (worker threads) batches are spread over."""
        return len(self._threads)

    @property
    def busy_since(self) -> float | None:
        """``time.monotonic()`` when the oldest running batch started; None while every instance is idle."""
        return min(self._busy.values(), default=None)

    @property
    def depth(self) -> int:
        """Images waiting (not yet running)."""
        return len(self._pending)

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        """Stop the loop and fail the jobs still queued or running with ShuttingDownError."""
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(ShuttingDownError())
        self._pending.clear()
        self._metrics.queue_depth.set(0)
        for thread in self._threads:
            thread.shutdown()

    async def run_on_every_instance(self, images: np.ndarray) -> list[np.ndarray]:
        """Run the backend once on each instance thread at the same time, outside the queue (warm-up)."""
        futures = [asyncio.wrap_future(thread.submit(self._run, images)) for thread in self._threads]
        return list(await asyncio.gather(*futures))

    def submit(self, image: np.ndarray, deadline: float) -> Job:
        """Queue a padded image; raises QueueFullError when ``queue_size`` images wait already."""
        if len(self._pending) >= self.queue_size:
            raise QueueFullError()
        loop = asyncio.get_running_loop()
        job = Job(image, deadline, loop.time(), loop.create_future())
        self._pending.append(job)
        self._metrics.queue_depth.set(len(self._pending))
        self._wakeup.set()
        return job

    def discard(self, job: Job) -> bool:
        """Remove a job that has not started (its client left or its deadline passed); True if removed."""
        if job.started:
            return False
        with contextlib.suppress(ValueError):
            self._pending.remove(job)
        self._metrics.queue_depth.set(len(self._pending))
        if not job.future.done():
            job.future.cancel()
        return True

    def _expire(self, now: float) -> None:
        """Fail queued jobs whose deadline passed, before they can reach the model."""
        live: deque[Job] = deque()
        for job in self._pending:
            if job.future.done():
                continue
            if job.deadline <= now:
                job.future.set_exception(DeadlineError())
            else:
                live.append(job)
        self._pending = live
        self._metrics.queue_depth.set(len(live))

    def _take(self, bucket: Shape) -> list[Job]:
        """Pop up to ``max_batch_size`` jobs of ``bucket`` in arrival order."""
        batch: list[Job] = []
        rest: deque[Job] = deque()
        for job in self._pending:
            if job.bucket == bucket and len(batch) < self.max_batch_size:
                batch.append(job)
            else:
                rest.append(job)
        self._pending = rest
        self._metrics.queue_depth.set(len(rest))
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._expire(loop.time())
            if not self._pending:
                continue
            head = self._pending[0]
            waiting = sum(1 for job in self._pending if job.bucket == head.bucket)
            remaining = head.enqueued + self.max_delay_s - loop.time()
            if waiting < self.max_batch_size and remaining > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                continue
            if not self._idle:  # every instance is busy: wait for one (more batch-mates may arrive)
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            instance = self._idle.pop()
            task = loop.create_task(self._execute(self._take(head.bucket), instance))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _forward(self, images: list[np.ndarray]) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        labels = self._run(np.stack(images))
        return labels, time.perf_counter() - start

    async def _execute(self, batch: list[Job], instance: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for job in batch:
            job.started = True
            self._metrics.queue_seconds.observe(now - job.enqueued)
        self._metrics.batch_size.observe(len(batch))
        self._metrics.images.inc(len(batch))
        self._busy[instance] = time.monotonic()
        try:
            labels, seconds = await asyncio.wrap_future(
                self._threads[instance].submit(self._forward, [j.image for j in batch])
            )
            expected = (len(batch), *batch[0].bucket)
            if labels.shape != expected:
                raise ValueError(f"backend returned labels of shape {labels.shape}, expected {expected}")
        except asyncio.CancelledError:  # stop() while the model runs: answer now, do not wait for it
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(ShuttingDownError())
            raise
        except Exception as exc:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(InferenceError(exc))
            return
        finally:
            del self._busy[instance]
            self._idle.append(instance)
            self._wakeup.set()
        self._metrics.inference_seconds.observe(seconds)
        for index, job in enumerate(batch):
            if job.future.done():
                continue
            result = BatchResult(labels[index], len(batch), now - job.enqueued, seconds)
            job.future.set_result(result)
