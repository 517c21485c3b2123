"""The served graph's forward pass without a server, on the shapes the server runs: the ceiling it is held to.

Three ways to spend the CPU on the same ONNX file and request mix (each photograph at its bucket shape, the
benchmark photographs' pixels):

* ``one-session``: one ONNX Runtime session with an intra-op thread per usable core, batches 1, 2, 4, 8;
* ``single-thread-sessions``: N sessions of one intra-op thread each, driven by N Python threads at batch 1
  (N = usable cores);
* ``openvino-streams``: OpenVINO's CPU plugin with the ``THROUGHPUT`` hint (its own choice of streams and
  infer requests), one compiled model per bucket shape, an ``AsyncInferQueue`` kept full.

Best raw throughput = the highest images/s of the three (each measured before and after the servers run;
other load only slows a measurement, so the faster of the two is kept).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.images import photograph_batch
from common.contract import INPUT_NAME
from common.onnxrt import create_session

Shape = tuple[int, int]


def log(message: str) -> None:
    print(f"[raw] {message}", file=sys.stderr, flush=True)


def raw_forward(
    model: Path, shapes: Sequence[Shape], batch_sizes: Sequence[int], runs: int, threads: int
) -> dict[int, float]:
    """One session with ``threads`` intra-op threads: seconds per image at each batch size, averaged over the
    request mix (each distinct shape timed once, weighted by how many photographs land in it)."""
    session = create_session(model, intra_op_threads=threads)
    mix = Counter(shapes)
    per_image: dict[int, float] = {}
    for batch in batch_sizes:
        total = 0.0
        for (height, width), count in mix.items():
            images = photograph_batch(batch, height, width)
            session.run(None, {INPUT_NAME: images})
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, {INPUT_NAME: images})
                times.append(time.perf_counter() - start)
            total += count * float(np.median(times)) / batch
        per_image[batch] = total / len(shapes)
        log(f"one session, batch {batch}: {1000 * per_image[batch]:.1f} ms per image over the request mix")
    return per_image


def raw_summary(shapes: Sequence[Shape], measurements: Sequence[dict[int, float]]) -> dict[str, Any]:
    """The best (fastest) of several :func:`raw_forward` measurements per batch size."""
    best = {b: min(m[b] for m in measurements) for b in measurements[0]}
    fastest = min(best, key=lambda b: best[b])
    return {
        "shapes": [list(s) for s in shapes],
        "ms_per_image": {str(b): 1000 * s for b, s in best.items()},
        "measurements_ms_per_image": [{str(b): 1000 * s for b, s in m.items()} for m in measurements],
        "batch1_ms": 1000 * best[min(best)],
        "best_images_per_s": 1 / best[fastest],
        "best_batch": fastest,
    }


def single_thread_sessions(model: Path, shapes: Sequence[Shape], sessions: int, runs: int) -> float:
    """Images/s of ``sessions`` one-thread sessions, each in its own thread running the request mix ``runs``
    times at batch 1 (ONNX Runtime releases the GIL during ``run``)."""
    inputs = [photograph_batch(1, h, w) for h, w in shapes]
    pool = [create_session(model, intra_op_threads=1) for _ in range(sessions)]
    for session in pool:
        for images in {x.shape: x for x in inputs}.values():
            session.run(None, {INPUT_NAME: images})
    barrier = threading.Barrier(sessions + 1)

    def drive(session: Any) -> None:
        barrier.wait()
        for _ in range(runs):
            for images in inputs:
                session.run(None, {INPUT_NAME: images})

    threads = [threading.Thread(target=drive, args=(s,)) for s in pool]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    rate = sessions * runs * len(inputs) / (time.perf_counter() - start)
    log(f"{sessions} single-thread sessions: {rate:.2f} images/s")
    return rate


def openvino_streams(model: Path, shapes: Sequence[Shape], runs: int) -> tuple[float, dict[str, Any]]:
    """Images/s of OpenVINO's CPU plugin with the THROUGHPUT hint over the request mix (each bucket shape
    compiled statically, its share of the mix pushed through a full ``AsyncInferQueue``), and what OpenVINO
    chose (streams, threads, infer requests). Raises RuntimeError when OpenVINO is missing."""
    try:
        import openvino as ov
    except ImportError as error:
        raise RuntimeError("openvino is not installed") from error
    core = ov.Core()
    mix = Counter(shapes)
    total_images, total_s = 0, 0.0
    chosen: dict[str, Any] = {"version": ov.get_version()}
    for (height, width), count in mix.items():
        network = core.read_model(str(model))
        network.reshape({network.inputs[0].any_name: [1, height, width, 3]})
        compiled = core.compile_model(network, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        chosen |= {
            "streams": int(compiled.get_property("NUM_STREAMS")),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "infer_requests": requests,
        }
        queue = ov.AsyncInferQueue(compiled, requests)
        images = photograph_batch(1, height, width)
        for _ in range(requests):
            queue.start_async({0: images})
        queue.wait_all()
        images_here = max(requests, count * runs)
        start = time.perf_counter()
        for _ in range(images_here):
            queue.start_async({0: images})
        queue.wait_all()
        total_s += time.perf_counter() - start
        total_images += images_here
    rate = total_images / total_s
    log(
        f"OpenVINO THROUGHPUT ({chosen['streams']} streams, {chosen['infer_requests']} requests): "
        f"{rate:.2f} images/s"
    )
    return rate, chosen


def measure_all(
    model: Path, shapes: Sequence[Shape], batch_sizes: Sequence[int], runs: int, cores: int
) -> dict[str, Any]:
    """One measurement of each method: ``one_session`` (s per image by batch), ``single_thread_sessions`` and
    ``openvino_streams`` (images/s, None with the reason in ``unavailable`` when it cannot run)."""
    result: dict[str, Any] = {"one_session": raw_forward(model, shapes, batch_sizes, runs, cores)}
    result["single_thread_sessions"] = single_thread_sessions(model, shapes, cores, runs)
    try:
        result["openvino_streams"], result["openvino"] = openvino_streams(model, shapes, runs)
    except RuntimeError as error:
        result["openvino_streams"], result["unavailable"] = None, {"openvino_streams": str(error)}
    return result


def best_raw(shapes: Sequence[Shape], measurements: Sequence[dict[str, Any]], cores: int) -> dict[str, Any]:
    """The raw summary of the one-session measurements plus every method's best images/s and the winner."""
    summary = raw_summary(shapes, [m["one_session"] for m in measurements])
    methods: dict[str, float | None] = {f"one-session ({cores} threads)": summary["best_images_per_s"]}
    for key, name in (
        ("single_thread_sessions", f"{cores} single-thread sessions"),
        ("openvino_streams", "OpenVINO THROUGHPUT streams"),
    ):
        values = [m[key] for m in measurements if m.get(key) is not None]
        methods[name] = max(values) if values else None
    measured = {name: rate for name, rate in methods.items() if rate is not None}
    winner = max(measured, key=lambda name: measured[name])
    extra = {k: v for m in measurements for k in ("openvino", "unavailable") if (v := m.get(k))}
    return (
        summary
        | extra
        | {
            "methods_images_per_s": methods,
            "best_method": winner,
            "best_raw_images_per_s": measured[winner],
        }
    )
