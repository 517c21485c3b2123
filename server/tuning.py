"""Execution choices made by measurement: backend and model instances at load, the batch cap at warm-up.

Each decision is a pure function of measured times (tested with fake clocks and backends); the
measuring functions take the clock as a parameter. Settings given explicitly always win.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.geometry import ServingGeometry
from server.backends.base import Backend, Fallback
from server.backends.select import Choice
from server.settings import Settings

log = logging.getLogger("server")

Clock = Callable[[], float]
Runner = Callable[[np.ndarray], np.ndarray]

MIN_BATCH_GAIN = 0.05
"""A larger batch is worth it only when it lowers the per-image time by at least this share."""
MIN_LABEL_AGREEMENT = 0.9999
"""A faster backend replaces ONNX Runtime only when its labels agree on at least this share of pixels."""


@dataclass(frozen=True)
class Candidate:
    """One execution configuration that was measured."""

    backend: str
    instances: int
    threads: int
    images_per_s: float

    def describe(self) -> str:
        return f"{self.backend} x{self.instances} ({self.threads or 'all'} threads each)"


def instance_options(cores: int) -> list[int]:
    """Instance counts worth measuring on ``cores`` CPU cores: one instance with every core, one per core,
    and (from 4 cores) pairs of cores."""
    return sorted({1, cores, *([cores // 2] if cores >= 4 else [])})


def threads_per_instance(cores: int, instances: int, explicit: int) -> int:
    """Threads each instance's pool gets: the explicit setting, else an even share of the cores."""
    return explicit or max(1, cores // instances)


def throughput(
    run: Runner, images: np.ndarray, callers: int, rounds: int, clock: Clock = time.perf_counter
) -> float:
    """Images per second with ``callers`` threads each running ``rounds`` batches at once (after one
    untimed batch each)."""

    def work(count: int) -> None:
        for _ in range(count):
            run(images)

    def in_parallel(count: int) -> None:
        threads = [threading.Thread(target=work, args=(count,)) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    in_parallel(1)
    start = clock()
    in_parallel(rounds)
    return callers * rounds * len(images) / max(clock() - start, 1e-9)


def fastest(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate with the highest throughput (the first one on a tie)."""
    return max(candidates, key=lambda c: c.images_per_s)


def per_image_seconds(
    run: Runner, image: np.ndarray, batch: int, rounds: int, clock: Clock = time.perf_counter
) -> float:
    """Median seconds per image over ``rounds`` forwards of ``batch`` copies of ``image`` (after one)."""
    images = np.repeat(image[None], batch, axis=0)
    run(images)
    times = []
    for _ in range(rounds):
        start = clock()
        run(images)
        times.append(clock() - start)
    return float(np.median(times)) / batch


def batch_cap(per_image: dict[int, float], min_gain: float = MIN_BATCH_GAIN) -> int:
    """The largest measured batch size up to which every step lowered the per-image time by ``min_gain``."""
    sizes = sorted(per_image)
    cap, best = sizes[0], per_image[sizes[0]]
    for size in sizes[1:]:
        if per_image[size] > best * (1 - min_gain):
            break
        cap, best = size, per_image[size]
    return cap


def batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to ``max_batch_size`` (and ``max_batch_size`` itself)."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    return sorted({*sizes, max_batch_size})


def label_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels with equal labels."""
    return float(np.mean(a == b)) if a.shape == b.shape else 0.0


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def representative_image(geometry: ServingGeometry, seed: int = 0) -> np.ndarray:
    """A photo-sized, padded test image: a VOC-size (375x500) upload's bucket, blocks of colour."""
    height, width = geometry.bucket_shape(*geometry.inference_size(375, 500))
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    tiled = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)
    out = np.empty((height, width, 3), np.uint8)
    out[...] = 128
    out[: tiled.shape[0], : tiled.shape[1]] = tiled[:height, :width]
    return out


def _build(
    backend: str,
    path: Path,
    use_cuda: bool,
    instances: int,
    threads: int,
    fallback: tuple[Fallback, ...] = (),
) -> Backend:
    if backend == "openvino":
        from server.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(path, instances=instances, threads=threads, fallback=fallback)
    from server.backends.ort import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        path, use_cuda=use_cuda, instances=instances, threads=threads, fallback=fallback
    )


def load_measured(choice: Choice, settings: Settings, *, openvino: bool, rounds: int = 3) -> Backend:
    """The ONNX backend for ``choice``: on CPU with ``backend=auto`` the faster of ONNX Runtime and OpenVINO,
    and with ``instances=auto`` the instance count with the highest throughput, both measured on a
    representative image; OpenVINO only when its labels agree with ONNX Runtime's. The decision and the
    measurements are in the backend's ``selection``."""
    explicit_instances = settings.instances if isinstance(settings.instances, int) else None
    if choice.use_cuda:  # a GPU: one instance unless configured (the GPU runs batches, not instances)
        count = explicit_instances or 1
        backend = _build(
            choice.backend, choice.path, True, count, settings.threads_per_instance, choice.fallback
        )
        backend.selection = {"chosen_by": "device", "device": "cuda"}
        return backend
    cores = usable_cores()
    backends = [choice.backend]
    if settings.backend == "auto" and openvino:
        backends.append("openvino")
    counts = [explicit_instances] if explicit_instances else instance_options(cores)
    configs = [
        (b, n, threads_per_instance(cores, n, settings.threads_per_instance))
        for b in backends
        for n in counts
    ]
    if len(configs) == 1:
        name, count, threads = configs[0]
        backend = _build(name, choice.path, False, count, threads, choice.fallback)
        backend.selection = {"chosen_by": "settings", "threads_per_instance": threads}
        return backend
    log.info("measuring %d execution configurations on the CPU (%d cores)", len(configs), cores)
    reference: np.ndarray | None = None
    image: np.ndarray | None = None
    measured: list[tuple[Candidate, Backend]] = []
    rejected: list[str] = []
    for name, count, threads in configs:
        backend = _build(name, choice.path, False, count, threads, choice.fallback)
        if image is None:
            geometry = ServingGeometry(backend.metadata.geometry, settings.max_side, settings.bucket)
            image = representative_image(geometry)
            reference = backend.run(image[None])
        agreement = label_agreement(backend.run(image[None]), reference)  # type: ignore[arg-type]
        if agreement < MIN_LABEL_AGREEMENT:
            rejected.append(f"{name}: labels agree with {choice.backend} on {100 * agreement:.3f}% of pixels")
            backend.close()
            continue
        candidate = Candidate(name, count, threads, throughput(backend.run, image[None], count, rounds))
        log.info("  %s: %.1f images/s", candidate.describe(), candidate.images_per_s)
        measured.append((candidate, backend))
    best = fastest([candidate for candidate, _ in measured])
    for candidate, backend in measured:
        if candidate is not best:
            backend.close()
    chosen = next(backend for candidate, backend in measured if candidate is best)
    assert image is not None
    chosen.selection = {
        "chosen_by": "measurement",
        "threads_per_instance": best.threads,
        "image": list(image.shape[:2]),
        "candidates": [
            {
                "backend": c.backend,
                "instances": c.instances,
                "threads": c.threads,
                "images_per_s": round(c.images_per_s, 2),
            }
            for c, _ in measured
        ],
        "rejected": rejected,
    }
    log.info("chose %s", best.describe(), extra={"selection": chosen.selection})
    return chosen


def measure_batch_cap(
    backend: Backend, image: np.ndarray, max_batch_size: int, rounds: int = 3
) -> tuple[int, dict[int, float]]:
    """Per-image seconds at batch 1, 2, 4, ... ``max_batch_size`` on one instance, and the resulting cap."""
    per_image = {
        size: per_image_seconds(backend.run, image, size, rounds) for size in batch_sizes(max_batch_size)
    }
    return batch_cap(per_image), per_image
