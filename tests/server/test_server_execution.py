"""Execution: model instances, backend and instance choice and batch cap by measurement, OpenVINO parity."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from bench.images import load_photographs
from common.geometry import NetworkGeometry, ServingGeometry
from common.metadata import ModelMetadata
from server import tuning
from server.backends.openvino import OpenVinoBackend
from server.backends.ort import OnnxRuntimeBackend
from server.backends.select import Choice, Environment, load_backend
from server.batcher import Batcher
from server.metrics import Metrics
from server.settings import DEFAULT_MODEL, Settings
from training.synth import make_scene, scene_rng

GEOMETRY = ServingGeometry(NetworkGeometry(), 256, 32)


# ---- the decisions, on measured numbers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_image", "cap"),
    [
        ({1: 100.0, 2: 80.0, 4: 79.0, 8: 60.0}, 2),  # 4 saves < 5 % over 2: stop there
        ({1: 100.0, 2: 101.0, 4: 70.0}, 1),  # batching costs more per image at once: off
        ({1: 100.0, 2: 90.0, 4: 80.0, 8: 70.0}, 8),  # every step pays
        ({1: 50.0}, 1),
    ],
)
def test_batch_cap_is_the_largest_batch_that_still_pays(per_image: dict[int, float], cap: int) -> None:
    assert tuning.batch_cap(per_image) == cap


def test_batch_sizes_and_instance_options() -> None:
    assert tuning.batch_sizes(8) == [1, 2, 4, 8] and tuning.batch_sizes(6) == [1, 2, 4, 6]
    assert tuning.batch_sizes(1) == [1]
    assert tuning.instance_options(1) == [1] and tuning.instance_options(2) == [1, 2]
    assert tuning.instance_options(8) == [1, 4, 8]
    assert tuning.threads_per_instance(8, 4, 0) == 2 and tuning.threads_per_instance(2, 2, 3) == 3


class FakeClock:
    """A clock that only moves when the fake model 'computes'."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_measured_batch_cap_with_a_fake_clock() -> None:
    clock = FakeClock()
    cost = {1: 0.100, 2: 0.170, 4: 0.330, 8: 0.640}  # per batch: 100, 85, 82.5, 80 ms per image

    def run(images: np.ndarray) -> np.ndarray:
        clock.now += cost[len(images)]
        return images[..., 0]

    image = np.zeros((32, 32, 3), np.uint8)
    per_image = {b: tuning.per_image_seconds(run, image, b, rounds=3, clock=clock) for b in (1, 2, 4, 8)}
    assert per_image == pytest.approx({1: 0.1, 2: 0.085, 4: 0.0825, 8: 0.08})
    assert tuning.batch_cap(per_image) == 2


@dataclass
class SleepyBackend:
    """A backend double that takes ``seconds_per_image`` (sleeping, so instances overlap like real ones)."""

    name: str
    seconds_per_image: float
    instances: int = 1
    offset: int = 0
    provider: str = "FakeExecutionProvider"
    precision: str = "fp32"
    metadata: ModelMetadata = field(default_factory=lambda: ModelMetadata(name="fake", width=1 / 32))
    selection: dict[str, object] = field(default_factory=dict)
    fallback: tuple = ()
    closed: bool = False

    def run(self, images: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds_per_image * len(images))
        return ((images[..., 0] // 13) + self.offset).astype(np.uint8)

    def close(self) -> None:
        self.closed = True


def _measured(monkeypatch: pytest.MonkeyPatch, speeds: dict[str, float], offsets: dict[str, int]) -> list:
    built: list[SleepyBackend] = []

    def build(
        backend: str, path: Path, use_cuda: bool, instances: int, threads: int, *_: object
    ) -> SleepyBackend:
        built.append(SleepyBackend(backend, speeds[backend], instances, offsets.get(backend, 0)))
        return built[-1]

    monkeypatch.setattr(tuning, "_build", build)
    monkeypatch.setattr(tuning, "usable_cores", lambda: 2)
    return built


def test_auto_picks_the_fastest_backend_and_instance_count(monkeypatch: pytest.MonkeyPatch) -> None:
    built = _measured(monkeypatch, {"onnxruntime": 0.010, "openvino": 0.004}, {})
    settings = Settings(max_side=64, bucket=32)
    chosen = tuning.load_measured(Choice("onnxruntime", Path("m.onnx")), settings, openvino=True, rounds=2)
    assert (chosen.name, chosen.instances) == ("openvino", 2)
    assert chosen.selection["chosen_by"] == "measurement" and len(chosen.selection["candidates"]) == 4
    assert all(b.closed for b in built if b is not chosen) and not chosen.closed


def test_a_faster_backend_with_other_labels_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _measured(monkeypatch, {"onnxruntime": 0.010, "openvino": 0.002}, {"openvino": 1})
    chosen = tuning.load_measured(
        Choice("onnxruntime", Path("m.onnx")), Settings(max_side=64, bucket=32), openvino=True, rounds=2
    )
    assert chosen.name == "onnxruntime" and len(chosen.selection["rejected"]) == 2
    assert "labels agree" in chosen.selection["rejected"][0]


def test_explicit_settings_win_and_are_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    built = _measured(monkeypatch, {"onnxruntime": 0.010, "openvino": 0.001}, {})
    settings = Settings(backend="onnxruntime", instances=1, max_side=64, bucket=32)
    chosen = tuning.load_measured(Choice("onnxruntime", Path("m.onnx")), settings, openvino=True)
    assert (chosen.name, chosen.instances, len(built)) == ("onnxruntime", 1, 1)
    assert chosen.selection == {"chosen_by": "settings", "threads_per_instance": 2}


# ---- instances -------------------------------------------------------------------------------------------


def test_two_instances_run_two_batches_at_once() -> None:
    started, release = threading.Semaphore(0), threading.Event()

    def run(images: np.ndarray) -> np.ndarray:
        started.release()
        release.wait(10)
        return images[..., 0]

    async def scenario() -> list[int]:
        batcher = Batcher(
            run,
            max_batch_size=4,
            max_delay_s=0,
            queue_size=8,
            metrics=Metrics().for_model("test", 1),
            instances=2,
        )
        batcher.start()
        far = asyncio.get_running_loop().time() + 30
        jobs = [batcher.submit(np.full((32, 32, 3), 1, np.uint8), far)]
        jobs.append(batcher.submit(np.full((64, 32, 3), 2, np.uint8), far))
        both = await asyncio.to_thread(lambda: started.acquire(timeout=10) and started.acquire(timeout=10))
        assert both, "the second batch did not start while the first ran"
        assert batcher.busy_since is not None
        release.set()
        results = [await job.future for job in jobs]
        await batcher.stop()
        return [int(r.labels[0, 0]) for r in results]

    assert asyncio.run(scenario()) == [1, 2]


def _scenes(count: int, size: int) -> list[np.ndarray]:
    return [make_scene(scene_rng(20261125, index), size, size)[0] for index in range(count)]


def _photos() -> list[np.ndarray]:
    return [np.asarray(image) for image in load_photographs(256)]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_labels_do_not_depend_on_instance_or_batch(backend: str) -> None:
    build = {
        "onnxruntime": lambda n: OnnxRuntimeBackend(DEFAULT_MODEL, use_cuda=False, instances=n, threads=1)
    }
    build["openvino"] = lambda n: OpenVinoBackend(DEFAULT_MODEL, instances=n, threads=1)
    images = [GEOMETRY.pad(image, (124, 116, 104)) for image in _scenes(4, 96)]
    single = build[backend](1)
    alone = [single.run(image[None])[0] for image in images]
    pool = build[backend](2)
    results: dict[int, list[np.ndarray]] = {}

    def caller(index: int) -> None:
        batch = np.stack(images[index:] + images[:index])  # other batch-mates, other order
        labels = pool.run(batch)
        results[index] = [labels[(k - index) % len(images)] for k in range(len(images))]

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for labels in results.values():
        for got, expected in zip(labels, alone, strict=True):
            np.testing.assert_array_equal(got, expected)


def test_openvino_agrees_with_onnx_runtime_on_scenes_and_photographs(capsys: pytest.CaptureFixture) -> None:
    ort = OnnxRuntimeBackend(DEFAULT_MODEL, use_cuda=False, instances=1, threads=2)
    ov = OpenVinoBackend(DEFAULT_MODEL, instances=1, threads=2)
    equal = total = 0
    for image in [*_scenes(20, 160), *_photos()]:
        padded = GEOMETRY.pad(image, ort.metadata.normalization.neutral_rgb())
        a, b = ort.run(padded[None]), ov.run(padded[None])
        equal += int((a == b).sum())
        total += a.size
    with capsys.disabled():
        print(
            f"\nOpenVINO vs ONNX Runtime FP32 label agreement: {100 * equal / total:.4f}% of {total} pixels"
        )
    assert equal / total >= tuning.MIN_LABEL_AGREEMENT


def test_auto_on_this_cpu_reports_its_measurements() -> None:
    backend = load_backend(
        Settings(max_side=128, bucket=32),
        Environment(gpu=False, tensorrt=False, ort_cuda=False, openvino=True),
    )
    selection = backend.selection
    assert selection["chosen_by"] == "measurement"
    fastest = max(selection["candidates"], key=lambda c: c["images_per_s"])
    assert (backend.name, backend.instances) == (fastest["backend"], fastest["instances"])
    backend.close()
