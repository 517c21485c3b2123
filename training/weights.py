"""Checkpoints: this project's safetensors files, torchvision VGG16 and pytorch-fcn's converted Caffe nets.

Every import checks key names and shapes first and fails with a message that lists the missing keys,
the unexpected keys and the mismatched shapes. Pickled files are only read with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from common.classes import VOC_CLASSES, voc_palette
from common.contract import PROP_METADATA
from common.metadata import ModelMetadata, Normalization
from training.model import MODELS, VGG_STAGES, FCNBase, build_model

StateDict = Mapping[str, Tensor]


class CheckpointError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model it is loaded into."""


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def check_state_dict(
    target: StateDict,
    source: StateDict,
    *,
    what: str,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
) -> None:
    """Raise CheckpointError naming the missing/unexpected keys and mismatched shapes of ``source``."""
    allowed_missing, allowed_unexpected = set(allow_missing), set(allow_unexpected)
    missing = sorted(set(target) - set(source) - allowed_missing)
    unexpected = sorted(set(source) - set(target) - allowed_unexpected)
    mismatched = [
        f"{key}: checkpoint {_shape(source[key])} vs model {_shape(target[key])}"
        for key in target
        if key in source and _shape(source[key]) != _shape(target[key])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"mismatched shapes: {'; '.join(mismatched)}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model — " + " | ".join(problems))


def _model_state(model: FCNBase) -> dict[str, Tensor]:
    return dict(model.state_dict())


# --------------------------------------------------------------------------------------------------
# This project's checkpoints


def save_checkpoint(path: Path, model: FCNBase, metadata: ModelMetadata) -> None:
    """Write the weights and the metadata JSON (header key ``fcn_metadata``) to one ``.safetensors`` file."""
    if (
        type(model) is not MODELS[metadata.architecture]
        or model.num_classes != metadata.num_classes
        or model.width != metadata.width
    ):
        raise ValueError(
            f"metadata ({metadata.architecture}, {metadata.num_classes} classes, width {metadata.width}) "
            f"does not describe the model ({type(model).__name__}, {model.num_classes} classes, "
            f"width {model.width})"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        key: value.detach().to("cpu", torch.float32).contiguous()
        for key, value in _model_state(model).items()
    }
    save_file(tensors, str(path), metadata={PROP_METADATA: metadata.to_json()})


def read_metadata(path: Path) -> ModelMetadata:
    """The ModelMetadata stored in one of this project's ``.safetensors`` checkpoints (weights not read)."""
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if PROP_METADATA not in header:
        raise CheckpointError(
            f"{path}: no {PROP_METADATA!r} entry in the safetensors header; not an FCN checkpoint"
        )
    return ModelMetadata.from_json(header[PROP_METADATA])


def _read_own(path: Path) -> tuple[dict[str, Tensor], ModelMetadata]:
    metadata = read_metadata(path)
    with safe_open(str(path), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (no __iter__)
    return state, metadata


def _load_own(path: Path, architecture: str | None) -> tuple[FCNBase, ModelMetadata]:
    state, metadata = _read_own(path)
    if architecture is not None and architecture != metadata.architecture:
        raise CheckpointError(f"{path} holds a {metadata.architecture} model, not {architecture}")
    model = build_model(metadata.architecture, metadata.num_classes, metadata.width)
    check_state_dict(_model_state(model), state, what=str(path))
    model.load_state_dict(state)
    return model, metadata


# --------------------------------------------------------------------------------------------------
# pytorch-fcn's converted Caffe checkpoints (key names equal this project's module names)

_HEAD_KEYS = {"upscore8.weight": "fcn8s", "upscore16.weight": "fcn16s", "upscore.weight": "fcn32s"}


def read_torch_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a ``.pth`` state dict safely (``weights_only=True``); unwraps a ``model_state_dict`` entry."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors come in many types
        raise CheckpointError(f"{path}: not a weights-only torch checkpoint ({error})") from error
    if isinstance(data, dict) and "model_state_dict" in data:
        data = data["model_state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return data


def infer_architecture(state: StateDict, filename: str = "") -> str:
    """Architecture of a pytorch-fcn state dict from its upsampling layer (at-once from the file name)."""
    for key, architecture in _HEAD_KEYS.items():
        if key in state:
            if architecture == "fcn8s" and "atonce" in filename.lower().replace("-", "").replace("_", ""):
                return "fcn8s-atonce"
            return architecture
    raise CheckpointError(
        f"cannot infer the architecture: none of {', '.join(_HEAD_KEYS)} is in the checkpoint"
    )


def _infer_width(state: StateDict) -> float:
    if "conv1_1.weight" not in state:
        raise CheckpointError("missing keys: conv1_1.weight (cannot infer the network width)")
    return state["conv1_1.weight"].shape[0] / VGG_STAGES[0][0]


def caffe_metadata(
    architecture: str,
    num_classes: int,
    width: float,
    source: str,
    *,
    name: str | None = None,
    training: Mapping[str, object] | None = None,
    metrics: Mapping[str, object] | None = None,
) -> ModelMetadata:
    """Metadata for a Caffe reference net: VOC classes, Caffe BGR mean-subtracted input.

    ``training`` entries are added to (or replace) the default source/origin; ``metrics`` are stored as is.
    """
    if num_classes == len(VOC_CLASSES):
        classes = VOC_CLASSES
    else:
        classes = tuple(f"class_{i}" for i in range(num_classes))
    return ModelMetadata(
        architecture=architecture,  # type: ignore[arg-type]
        width=width,
        classes=classes,
        palette=tuple(voc_palette(num_classes)),
        normalization=Normalization.caffe(),
        name=name or f"{architecture}-caffe",
        training={
            "source": source,
            "origin": "Caffe reference net converted by pytorch-fcn",
            **(training or {}),
        },
        metrics=dict(metrics or {}),
    )


def _load_caffe(path: Path, architecture: str | None) -> tuple[FCNBase, ModelMetadata]:
    state = read_torch_state_dict(path)
    architecture = architecture or infer_architecture(state, path.name)
    if "score_fr.weight" not in state:
        raise CheckpointError(f"{path}: missing keys: score_fr.weight (cannot infer the number of classes)")
    num_classes = state["score_fr.weight"].shape[0]
    width = _infer_width(state)
    model = build_model(architecture, num_classes, width)
    check_state_dict(_model_state(model), state, what=str(path))
    model.load_state_dict(state)
    return model, caffe_metadata(architecture, num_classes, width, path.name)


def load_checkpoint(path: Path, architecture: str | None = None) -> tuple[FCNBase, ModelMetadata]:
    """Load an own ``.safetensors`` checkpoint or a pytorch-fcn ``.pth``; returns the model in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        model, metadata = _load_own(path, architecture)
    else:
        model, metadata = _load_caffe(path, architecture)
    return model.eval(), metadata


# --------------------------------------------------------------------------------------------------
# Initialisation for training: torchvision VGG16 and the previous stage (32s -> 16s -> 8s)

VGG16_CONV_LAYERS: tuple[str, ...] = tuple(
    f"conv{stage}_{index}"
    for stage, (_, repeats) in enumerate(VGG_STAGES, start=1)
    for index in range(1, repeats + 1)
)


def vgg16_key_map() -> dict[str, str]:
    """torchvision ``vgg16`` layer prefix -> FCN layer name (``features.0`` -> ``conv1_1``, ...)."""
    mapping: dict[str, str] = {}
    feature_index = 0
    layers = iter(VGG16_CONV_LAYERS)
    for _, repeats in VGG_STAGES:
        for _ in range(repeats):
            mapping[f"features.{feature_index}"] = next(layers)
            feature_index += 2  # conv, ReLU
        feature_index += 1  # MaxPool
    mapping["classifier.0"] = "fc6"
    mapping["classifier.3"] = "fc7"
    return mapping


VGG16_IGNORED = ("classifier.6.weight", "classifier.6.bias")
"""fc8 (the 1000-class ImageNet classifier) is dropped."""


def vgg16_to_fcn(vgg_state: StateDict, model: FCNBase) -> dict[str, Tensor]:
    """Rename torchvision VGG16 keys to FCN names and reshape fc6/fc7 into convolutions of the model's shapes.

    Raises CheckpointError naming the missing/unexpected keys and mismatched shapes.
    """
    mapping = vgg16_key_map()
    expected = {
        f"{old}.{kind}": f"{new}.{kind}" for old, new in mapping.items() for kind in ("weight", "bias")
    }
    target = _model_state(model)
    fcn_shapes = {old: target[new] for old, new in expected.items()}
    # fc6/fc7 arrive as matrices (O, C*kh*kw): compare against the flattened conv shapes.
    flat = {
        old: value.reshape(value.shape[0], -1) if old.startswith("classifier") and value.dim() == 4 else value
        for old, value in fcn_shapes.items()
    }
    check_state_dict(flat, vgg_state, what="torchvision VGG16 checkpoint", allow_unexpected=VGG16_IGNORED)
    return {new: vgg_state[old].reshape(target[new].shape) for old, new in expected.items()}


def import_vgg16(model: FCNBase, vgg_state: StateDict) -> list[str]:
    """Copy torchvision VGG16 ImageNet weights into the trunk (conv1_1 ... fc7); returns the layers copied."""
    if model.width != 1.0:
        raise CheckpointError(
            f"torchvision VGG16 weights exist only for width 1.0; this model has width {model.width} "
            "(use --width 1.0, or --init none for a narrow net)"
        )
    mapped = vgg16_to_fcn(vgg_state, model)
    model.load_state_dict(mapped, strict=False)
    return sorted({key.rsplit(".", 1)[0] for key in mapped})


def import_previous_stage(model: FCNBase, source: StateDict, what: str) -> list[str]:
    """Staged initialisation: copy every layer of ``source`` (e.g. FCN-32s) present in ``model`` by name.

    The fixed upsampling layers keep their bilinear kernels (as Caffe's ``surgery.interp``); layers the
    source lacks (the new ``score_pool4`` / ``score_pool3``) keep their zero initialisation. Returns the
    layers copied.
    """
    target = _model_state(model)
    fixed = {f"{name}.weight" for name in model.upsampling_layers}
    source_upsampling = {key for key in source if key.startswith("upscore")}
    trunk = {key: value for key, value in target.items() if not key.startswith(("score_pool", "upscore"))}
    check_state_dict(
        trunk,
        source,
        what=what,
        allow_unexpected=source_upsampling | {k for k in source if k.startswith("score_pool")},
    )
    copied = {key: value for key, value in source.items() if key in target and key not in fixed}
    check_state_dict({k: target[k] for k in copied}, copied, what=what)
    model.load_state_dict(copied, strict=False)
    return sorted({key.rsplit(".", 1)[0] for key in copied})


def read_any_state_dict(path: Path) -> tuple[dict[str, Tensor], ModelMetadata | None]:
    """Weights (and metadata, for own checkpoints) of a ``.safetensors`` or ``.pth`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_own(path)
    return read_torch_state_dict(path), None
