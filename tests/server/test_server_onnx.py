"""The real ONNX Runtime path: the shipped demo model behind a real server process."""

from __future__ import annotations

import concurrent.futures
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import ServerProcess, png_bytes, random_image


def _labels(server: ServerProcess, body: bytes) -> tuple[np.ndarray, httpx.Response]:
    response = httpx.post(
        server.url + "/segment", content=body, headers={"content-type": "image/png"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content))), response


def test_model_info_reports_onnxruntime_cpu(onnx_server: ServerProcess) -> None:
    info = httpx.get(onnx_server.url + "/v1/model").json()
    assert (info["backend"], info["provider"], info["precision"]) == (
        "onnxruntime",
        "CPUExecutionProvider",
        "fp32",
    )
    assert info["name"] and len(info["classes"]) == 21 and info["architecture"] == "fcn8s"


def test_same_image_alone_and_in_a_mixed_batch_gives_identical_labels(onnx_server: ServerProcess) -> None:
    target = png_bytes(random_image(90, 110, seed=3))  # bucket 90x122
    alone, _ = _labels(onnx_server, target)
    assert len(np.unique(alone)) > 1, "the random model should predict several classes"
    mates = [png_bytes(random_image(70 + 5 * i, 100 + 3 * i, seed=10 + i)) for i in range(6)]  # same bucket
    mates += [png_bytes(random_image(40, 60, seed=30)), png_bytes(random_image(128, 33, seed=31))]  # others
    seen_batch = 1
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(len(mates) + 1) as pool:
            results = list(
                pool.map(lambda body: _labels(onnx_server, body), [*mates[:3], target, *mates[3:]])
            )
        labels, response = results[3]
        np.testing.assert_array_equal(labels, alone)
        seen_batch = max(seen_batch, int(response.headers["x-batch-size"]))
        if seen_batch > 1:
            break
    assert seen_batch > 1, "the target never shared a batch"


def test_served_labels_equal_a_direct_forward_at_the_bucket_size(
    onnx_server: ServerProcess, onnx_model
) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from common.geometry import NetworkGeometry, ServingGeometry

    image = random_image(58, 90, seed=5)  # already a bucket shape at granularity 32: no padding
    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    direct = session.run(["labels"], {"image": image[None]})[0][0]
    served, _ = _labels(onnx_server, png_bytes(image))
    np.testing.assert_array_equal(served, direct)
    odd = random_image(50, 70, seed=6)  # padded to 58x90 with the neutral colour, then cropped
    padded = ServingGeometry(NetworkGeometry(), 128, 32).pad(odd, (124, 116, 104))
    assert padded.shape[:2] == (58, 90)
    expected = session.run(["labels"], {"image": padded[None]})[0][0, :50, :70]
    np.testing.assert_array_equal(_labels(onnx_server, png_bytes(odd))[0], expected)


@pytest.mark.slow
def test_demo_model_mean_iu_on_synthetic_scenes(demo_server: ServerProcess) -> None:
    from training import synth
    from training.metrics import ConfusionMeter

    meter = ConfusionMeter(21)
    for index in range(8):  # held-out scenes (the demo trains on seed 0) near its 160-px training size
        image, truth = synth.make_scene(synth.scene_rng(1, 1000 + index), 160, 224)
        served, _ = _labels(demo_server, png_bytes(image))
        meter.update(truth, served)
    mean_iu = meter.scores().mean_iu
    assert mean_iu >= 0.8, f"mean IU of the served labels {mean_iu:.3f} < 0.8"


@pytest.mark.slow
def test_demo_model_bucket_padding_agreement_on_photographs() -> None:
    """Bucketed (padded, cropped) labels vs an unpadded forward at the photo's own size: >= 99.5 %."""
    from pathlib import Path

    from skimage import data as skimage_data

    from server.agreement import measure, variants
    from server.backends.ort import OnnxRuntimeBackend
    from server.imaging import decode_image
    from server.settings import Settings

    folder = Path(skimage_data.__file__).parent
    settings = Settings()
    images = [
        image
        for name in ("chelsea.png", "coffee.png", "rocket.jpg")
        for image in variants(decode_image((folder / name).read_bytes(), 10**8), settings.max_side, [333])
    ]
    from tests.server.conftest import DEMO_ONNX

    backend = OnnxRuntimeBackend(DEMO_ONNX, use_cuda=False)
    result = measure(backend, images, [settings.bucket], settings.max_side)[settings.bucket]
    assert result.padded > 0, "the photos should need padding"
    assert result.share >= 0.995, f"agreement {100 * result.share:.3f}%"
