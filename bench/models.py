"""The benchmarked model: a seeded random-weight FCN and its ONNX files (FP32, INT8, plain), cached on disk.

Timing does not depend on the weights' values, so the full-size net needs no checkpoint. Its ONNX files are
large (~540 MB FP32 at width 1.0), so they live in a cache folder outside the repository (default
``/tmp/fcn-bench-cache``) and are reused across runs; ``--rebuild`` makes them again.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from common.classes import VOC_CLASSES, voc_palette
from common.metadata import ModelMetadata
from training.model import FCNBase, build_model

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "fcn-bench-cache"
CALIBRATION_IMAGES = 4
CALIBRATION_SIZE = 320


@dataclass(frozen=True)
class ModelSpec:
    """Which network is benchmarked."""

    architecture: str = "fcn8s"
    num_classes: int = 21
    width: float = 1.0
    seed: int = 0

    @property
    def key(self) -> str:
        """A file-name stem that identifies the spec."""
        return f"{self.architecture}-w{self.width:g}-c{self.num_classes}-s{self.seed}"

    def metadata(self) -> ModelMetadata:
        """Metadata for the random model (VOC class names where there are 21 classes)."""
        classes = (
            VOC_CLASSES
            if self.num_classes == len(VOC_CLASSES)
            else tuple(f"class{i}" for i in range(self.num_classes))
        )
        return ModelMetadata(
            architecture=self.architecture,  # type: ignore[arg-type]
            width=self.width,
            classes=classes,
            palette=tuple(voc_palette(self.num_classes)),
            name=f"random-{self.key}",
        )


def random_model(spec: ModelSpec) -> FCNBase:
    """The FCN with seeded random weights; the score layers get small random weights (not the usual zeros)
    so the argmax and the INT8 calibration see varied scores."""
    generator = torch.manual_seed(spec.seed)
    model = build_model(spec.architecture, num_classes=spec.num_classes, width=spec.width).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith("score") and isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0.0, 0.01, generator=generator)
    return model


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def fp32_onnx(spec: ModelSpec, cache: Path = DEFAULT_CACHE, rebuild: bool = False) -> Path:
    """The deployable FP32 ONNX (uint8 image → labels) of the random model, exported by ``export.onnx``."""
    from export.onnx import export_onnx

    path = Path(cache) / f"{spec.key}-fp32.onnx"
    if path.exists() and not rebuild:
        return path
    _log(f"exporting {path} (cached for later runs)")
    start = time.perf_counter()
    export_onnx(
        random_model(spec), spec.metadata(), path, source_sha256="random-weights", shapes=[(1, 48, 64)]
    )
    _log(f"exported in {time.perf_counter() - start:.0f} s")
    return path


def int8_onnx(spec: ModelSpec, cache: Path = DEFAULT_CACHE, rebuild: bool = False) -> Path:
    """The static INT8 quantisation (``export.quantize``) of :func:`fp32_onnx`, calibrated on synthetic
    scenes."""
    from export.quantize import quantize_onnx, synthetic_images

    path = Path(cache) / f"{spec.key}-int8.onnx"
    if path.exists() and not rebuild:
        return path
    source = fp32_onnx(spec, cache)
    _log(
        f"quantising {path} on {CALIBRATION_IMAGES} synthetic {CALIBRATION_SIZE}px scenes "
        "(cached for later runs)"
    )
    quantize_onnx(source, path, synthetic_images(CALIBRATION_IMAGES, CALIBRATION_SIZE))
    return path


def plain_onnx(spec: ModelSpec, cache: Path = DEFAULT_CACHE, rebuild: bool = False) -> Path:
    """The network alone (float NCHW normalised input → float scores; no pre/post-processing), exported as
    ``export.onnx`` does otherwise (same export-friendly layers, i.e. grouped upsamplers, pool padding
    folded, dynamic N/H/W): the baseline that shows what the in-graph normalisation and argmax cost. Not the
    naive baseline of ``bench.http`` (that is :func:`export_naive`, dense upsampling)."""
    import onnx

    from export.graph import export_friendly
    from export.passes import fold_pool_padding

    path = Path(cache) / f"{spec.key}-plain.onnx"
    if path.exists() and not rebuild:
        return path
    _log(f"exporting {path} (cached for later runs)")
    path.parent.mkdir(parents=True, exist_ok=True)
    network, _ = export_friendly(random_model(spec))
    dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=1)}
    dims[3] = torch.export.Dim("width", min=1)
    program = torch.onnx.export(
        network,
        (torch.zeros(2, 3, 64, 96),),
        dynamo=True,
        input_names=["input"],
        output_names=["scores"],
        dynamic_shapes={"x": dims},
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))
    model = onnx.load(str(path))
    fold_pool_padding(model)
    onnx.save(model, str(path))
    return path


def export_naive(model: FCNBase, metadata: ModelMetadata, path: Path) -> Path:
    """The network exported as a user would by hand: ``torch.onnx.export`` of the module itself (float NCHW
    ``input`` → float ``scores``, dynamic N/H/W), so the upsamplers stay dense ``ConvTranspose`` (no
    :func:`export.graph.export_friendly`, no graph passes). The metadata JSON is stored in the file's
    ``metadata_props`` so the naive server reads its normalisation and palette from it.

    Checked against PyTorch at one small shape: a broken export fails here, not in the benchmark."""
    import numpy as np
    import onnx

    from common.contract import PROP_METADATA
    from common.onnxrt import create_session

    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    axes = {0: "batch", 2: "height", 3: "width"}
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(
        logging.ERROR
    )  # "no torchvision"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*dynamic_axes.*", category=UserWarning)  # it works here
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch-internal
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 64, 96),),
            str(path),
            input_names=["input"],
            output_names=["scores"],
            dynamic_axes={"input": axes, "scores": axes},
            verbose=False,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = PROP_METADATA, metadata.to_json()
    onnx.save(proto, str(path))
    probe = torch.rand(1, 3, 45, 77, generator=torch.manual_seed(0))
    with torch.no_grad():
        expected = model(probe).numpy()
    got = create_session(path).run(None, {"input": probe.numpy()})[0]
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-3):
        raise RuntimeError(f"the naive export {path} does not reproduce the PyTorch scores")
    return path


def naive_onnx(spec: ModelSpec, cache: Path = DEFAULT_CACHE, rebuild: bool = False) -> Path:
    """:func:`export_naive` of the seeded random model (cached)."""
    path = Path(cache) / f"{spec.key}-naive.onnx"
    if path.exists() and not rebuild:
        return path
    _log(f"exporting {path} (plain torch.onnx.export, dense upsampling; cached for later runs)")
    return export_naive(random_model(spec), spec.metadata(), path)


def naive_onnx_of_checkpoint(checkpoint: Path, cache: Path = DEFAULT_CACHE, rebuild: bool = False) -> Path:
    """:func:`export_naive` of a trained checkpoint (cached under the checkpoint's SHA-256)."""
    from common.digest import file_sha256
    from training.weights import load_checkpoint

    path = Path(cache) / f"{Path(checkpoint).stem}-{file_sha256(checkpoint)[:12]}-naive.onnx"
    if path.exists() and not rebuild:
        return path
    _log(f"exporting {path} (plain torch.onnx.export, dense upsampling; cached for later runs)")
    model, metadata = load_checkpoint(checkpoint)
    return export_naive(model, metadata, path)
