"""Checkpoint round trips and the two import mappings, built from the real key names and shapes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from common.digest import file_sha256
from common.metadata import ModelMetadata, Normalization
from training.model import build_model
from training.weights import (
    CheckpointError,
    import_previous_stage,
    import_vgg16,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    vgg16_to_fcn,
)

WIDTH = 1 / 16

# torchvision vgg16 (config "D"): features index -> (out, in) channels; classifier 0/3/6 matrices.
VGG16_CONVS = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip
CONV_LAYERS = (
    "conv1_1 conv1_2 conv2_1 conv2_2 conv3_1 conv3_2 conv3_3 conv4_1 conv4_2 conv4_3 conv5_1 conv5_2 conv5_3"
)
CONV_LAYERS = CONV_LAYERS.split()
VGG16_CLASSIFIER = {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}


def vgg16_state(meta_keys: set[str] = frozenset()) -> dict[str, torch.Tensor]:
    """A torchvision-vgg16-shaped state dict: random values, except ``meta_keys`` on the meta device."""
    generator = torch.Generator().manual_seed(0)
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (out_ch, in_ch) in VGG16_CONVS.items():
        shapes[f"features.{index}.weight"] = (out_ch, in_ch, 3, 3)
        shapes[f"features.{index}.bias"] = (out_ch,)
    for index, (out_f, in_f) in VGG16_CLASSIFIER.items():
        shapes[f"classifier.{index}.weight"] = (out_f, in_f)
        shapes[f"classifier.{index}.bias"] = (out_f,)
    return {
        key: torch.empty(shape, device="meta")
        if key in meta_keys
        else torch.randn(shape, generator=generator)
        for key, shape in shapes.items()
    }


def pytorch_fcn_state(architecture: str, width: float) -> dict[str, torch.Tensor]:
    """A pytorch-fcn-style state dict (its key names) with random values."""
    reference = build_model(architecture, 21, width)
    generator = torch.Generator().manual_seed(1)
    return {
        key: torch.randn(value.shape, generator=generator) for key, value in reference.state_dict().items()
    }


PYTORCH_FCN_KEYS = {
    "fcn8s": [f"conv{s}_{i}.{k}" for s, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)
              for k in ("weight", "bias")]
    + ["fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias", "score_fr.weight", "score_fr.bias",
       "score_pool3.weight", "score_pool3.bias", "score_pool4.weight", "score_pool4.bias",
       "upscore2.weight", "upscore8.weight", "upscore_pool4.weight"],
}  # fmt: skip


def test_fcn8s_keys_and_shapes_equal_pytorch_fcn_at_full_width() -> None:
    with torch.device("meta"):
        model = build_model("fcn8s", 21, 1.0)
    state = model.state_dict()
    assert sorted(state) == sorted(PYTORCH_FCN_KEYS["fcn8s"])
    assert len(state) == 39
    assert tuple(state["fc6.weight"].shape) == (4096, 512, 7, 7)
    assert tuple(state["fc7.weight"].shape) == (4096, 4096, 1, 1)
    assert tuple(state["score_fr.weight"].shape) == (21, 4096, 1, 1)
    assert tuple(state["score_pool3.weight"].shape) == (21, 256, 1, 1)
    assert tuple(state["score_pool4.weight"].shape) == (21, 512, 1, 1)
    assert tuple(state["upscore8.weight"].shape) == (21, 21, 16, 16)
    assert (
        tuple(state["upscore2.weight"].shape) == tuple(state["upscore_pool4.weight"].shape) == (21, 21, 4, 4)
    )


def test_vgg16_mapping_at_full_width_copies_values_and_reshapes_fc() -> None:
    vgg = vgg16_state(meta_keys={"classifier.0.weight"})  # fc6 is 400 MB: shape only
    with torch.device("meta"):
        model = build_model("fcn8s", 21, 1.0)
    mapped = vgg16_to_fcn(vgg, model)
    assert torch.equal(mapped["conv1_1.weight"], vgg["features.0.weight"])
    assert torch.equal(mapped["conv3_3.bias"], vgg["features.14.bias"])
    assert torch.equal(mapped["conv4_1.weight"], vgg["features.17.weight"])
    assert torch.equal(mapped["conv5_3.weight"], vgg["features.28.weight"])
    assert tuple(mapped["fc6.weight"].shape) == (4096, 512, 7, 7)
    assert torch.equal(mapped["fc6.bias"], vgg["classifier.0.bias"])
    assert torch.equal(mapped["fc7.weight"][:, :, 0, 0], vgg["classifier.3.weight"])
    assert not any(key.startswith(("score", "upscore")) for key in mapped)
    assert len(mapped) == 30
    copied = import_vgg16(
        model, {key: value.to("meta") for key, value in vgg.items()}
    )  # keys/shapes end to end
    assert copied == sorted([*CONV_LAYERS, "fc6", "fc7"])


def test_vgg16_fc6_flattening_order_is_channel_row_column() -> None:
    vgg = vgg16_state(meta_keys={"classifier.0.weight"})
    vgg["classifier.0.weight"] = torch.arange(4096 * 25088, dtype=torch.float32).reshape(4096, 25088)
    with torch.device("meta"):
        model = build_model("fcn32s", 21, 1.0)
    fc6 = vgg16_to_fcn(vgg, model)["fc6.weight"]
    # element (o, c, y, x) comes from column c*49 + y*7 + x
    assert fc6[3, 2, 4, 5].item() == 3 * 25088 + 2 * 49 + 4 * 7 + 5


def test_vgg16_import_errors_name_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = build_model("fcn8s", 21, 1.0)
    vgg = {
        key: torch.empty(value.shape, device="meta")
        for key, value in vgg16_state({"classifier.0.weight"}).items()
    }
    del vgg["features.19.bias"]
    vgg["extra.weight"] = torch.empty(3, device="meta")
    vgg["features.7.weight"] = torch.empty(128, 64, 3, 3, device="meta")
    with pytest.raises(CheckpointError) as info:
        import_vgg16(model, vgg)
    message = str(info.value)
    assert "missing keys: features.19.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "features.7.weight: checkpoint (128, 64, 3, 3) vs model (128, 128, 3, 3)" in message


def test_vgg16_import_refuses_narrow_models() -> None:
    model = build_model("fcn8s", 21, WIDTH)
    with pytest.raises(CheckpointError, match=r"width 1\.0.*width 0\.0625"):
        import_vgg16(model, {})


@pytest.mark.parametrize(
    ("architecture", "filename"),
    [
        ("fcn32s", "fcn32s_from_caffe.pth"),
        ("fcn16s", "fcn16s_from_caffe.pth"),
        ("fcn8s", "fcn8s_from_caffe.pth"),
        ("fcn8s-atonce", "fcn8s-atonce_from_caffe.pth"),
    ],
)
def test_pytorch_fcn_checkpoint_loads_with_caffe_metadata(
    tmp_path: Path, architecture: str, filename: str
) -> None:
    state = pytorch_fcn_state(architecture, WIDTH)
    path = tmp_path / filename
    torch.save(state, path)
    model, metadata = load_checkpoint(path)
    assert type(model).__name__ == {"fcn32s": "FCN32s", "fcn16s": "FCN16s", "fcn8s": "FCN8s"}.get(
        architecture, "FCN8sAtOnce"
    )
    assert not model.training
    assert metadata.architecture == architecture
    assert metadata.width == WIDTH
    assert metadata.normalization == Normalization.caffe()
    assert metadata.classes[0] == "background" and metadata.num_classes == 21
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_pytorch_fcn_checkpoint_with_wrong_keys_is_refused(tmp_path: Path) -> None:
    state = pytorch_fcn_state("fcn8s", WIDTH)
    del state["score_pool3.bias"]
    state["score_pool3.weight"] = torch.zeros(21, 7, 1, 1)
    state["upscore.weight"] = torch.zeros(1)
    path = tmp_path / "fcn8s_from_caffe.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "missing keys: score_pool3.bias" in message
    assert "unexpected keys: upscore.weight" in message
    assert re.search(r"score_pool3\.weight: checkpoint \(21, 7, 1, 1\) vs model \(21, 16, 1, 1\)", message)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv1_1.weight": torch.zeros(1), "payload": Path("/etc")}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path)


def test_own_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("fcn16s", 3, WIDTH)
    for parameter in model.parameters():
        parameter.data.normal_()
    metadata = ModelMetadata(
        architecture="fcn16s",
        width=WIDTH,
        classes=("background", "a", "b"),
        palette=((0, 0, 0), (1, 2, 3), (4, 5, 6)),
        training={"iterations": 7},
        metrics={"mean_iu": 0.5},
    )
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, metadata)
    loaded, loaded_metadata = load_checkpoint(path)
    assert loaded_metadata == metadata == read_metadata(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert len(file_sha256(path)) == 64
    with pytest.raises(CheckpointError, match="holds a fcn16s model, not fcn8s"):
        load_checkpoint(path, "fcn8s")


def test_save_refuses_metadata_that_does_not_describe_the_model(tmp_path: Path) -> None:
    model = build_model("fcn8s", 21, WIDTH)
    with pytest.raises(ValueError, match="does not describe the model"):
        save_checkpoint(
            tmp_path / "x.safetensors", model, ModelMetadata(architecture="fcn8s", width=WIDTH / 2)
        )


def test_staged_initialisation_copies_by_name_and_keeps_new_layers_zero() -> None:
    torch.manual_seed(0)
    fcn32 = build_model("fcn32s", 21, WIDTH)
    for parameter in fcn32.parameters():
        parameter.data.normal_()
    fcn16 = build_model("fcn16s", 21, WIDTH)
    copied = import_previous_stage(fcn16, fcn32.state_dict(), what="fcn32s")
    assert "upscore" not in copied and "score_fr" in copied and "fc7" in copied
    assert torch.equal(fcn16.fc6.weight, fcn32.fc6.weight)
    assert torch.count_nonzero(fcn16.score_pool4.weight) == 0
    fresh16 = build_model("fcn16s", 21, WIDTH)
    assert torch.equal(fcn16.upscore2.weight, fresh16.upscore2.weight)

    fcn16.score_pool4.weight.data.normal_()
    fcn8 = build_model("fcn8s", 21, WIDTH)
    copied = import_previous_stage(fcn8, fcn16.state_dict(), what="fcn16s")
    assert "score_pool4" in copied and "score_pool3" not in copied
    assert torch.equal(fcn8.score_pool4.weight, fcn16.score_pool4.weight)
    assert torch.count_nonzero(fcn8.score_pool3.weight) == 0

    narrower = build_model("fcn32s", 21, WIDTH / 2)
    with pytest.raises(CheckpointError, match=r"mismatched shapes: conv1_1\.weight"):
        import_previous_stage(build_model("fcn16s", 21, WIDTH), narrower.state_dict(), what="fcn32s")
