"""Caffe-free .caffemodel reading and the FCN layer mapping, on synthetic files with the real layer names."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tests.training.caffe_files import blob, fcn_caffemodel, field, layer, net, random_state
from training.caffemodel import (
    AT_ONCE_SCALES,
    CaffeModelError,
    load_caffemodel,
    parse_net,
    read_caffemodel,
    state_dict_from_layers,
)

WIDTH = 1 / 32


def _assert_same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize(
    ("architecture", "options"),
    [
        ("fcn8s", {}),
        ("fcn16s", {}),
        ("fcn32s", {"v1": True, "legacy_shapes": True}),
        ("fcn8s", {"v1": True, "legacy_shapes": True}),
        ("fcn8s", {"legacy_shapes": True}),
    ],
    ids=["fcn8s", "fcn16s", "fcn32s-v1-legacy", "fcn8s-v1-legacy", "fcn8s-legacy-shapes"],
)
def test_layers_map_to_module_weights(architecture: str, options: dict[str, bool]) -> None:
    state = random_state(architecture, WIDTH)
    name, layers = parse_net(fcn_caffemodel(state, **options))
    assert name == "voc-fcn"
    assert {"relu1_1", "pool5", "drop7"} <= {entry.name for entry in layers}  # blob-free layers are kept
    inferred, converted = state_dict_from_layers(layers)
    assert inferred == architecture
    _assert_same(converted, state)


def test_v1_layer_types_are_named() -> None:
    _, layers = parse_net(fcn_caffemodel(random_state("fcn32s", WIDTH), v1=True))
    types = {entry.name: entry.type for entry in layers}
    assert types["conv1_1"] == "Convolution"
    assert types["upscore"] == "Deconvolution"


@pytest.mark.parametrize("encoding", ["packed", "unpacked", "double"])
def test_blob_value_encodings(encoding: str) -> None:
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7
    data = blob(values, packed=encoding != "unpacked", double=encoding == "double")
    _, layers = parse_net(net("n", [layer("conv", "Convolution", [data])]))
    (parsed,) = layers[0].blobs
    assert parsed.shape == (2, 3, 2, 2) and not parsed.legacy_shape
    np.testing.assert_array_equal(parsed.data, values.ravel())


def test_google_protobuf_serialisation_is_read() -> None:
    """The reader agrees with the protobuf library on messages declared with caffe.proto's field numbers."""
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe", syntax="proto2")
    f = descriptor_pb2.FieldDescriptorProto
    repeated, optional = f.LABEL_REPEATED, f.LABEL_OPTIONAL

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number_, label, kind, type_name in fields:
            entry = msg.field.add(name=field_name, number=number_, label=label, type=kind)
            if type_name:
                entry.type_name = type_name
            if label == repeated and kind != f.TYPE_MESSAGE and kind != f.TYPE_STRING:
                entry.options.packed = True

    message("BlobShape", ("dim", 1, repeated, f.TYPE_INT64, ""))
    message(
        "BlobProto",
        ("shape", 7, optional, f.TYPE_MESSAGE, ".caffe.BlobShape"),
        ("data", 5, repeated, f.TYPE_FLOAT, ""),
        ("double_data", 8, repeated, f.TYPE_DOUBLE, ""),
        ("num", 1, optional, f.TYPE_INT64, ""),
        ("channels", 2, optional, f.TYPE_INT64, ""),
        ("height", 3, optional, f.TYPE_INT64, ""),
        ("width", 4, optional, f.TYPE_INT64, ""),
    )
    message(
        "LayerParameter",
        ("name", 1, optional, f.TYPE_STRING, ""),
        ("type", 2, optional, f.TYPE_STRING, ""),
        ("bottom", 3, repeated, f.TYPE_STRING, ""),
        ("blobs", 7, repeated, f.TYPE_MESSAGE, ".caffe.BlobProto"),
    )
    message(
        "V1LayerParameter",
        ("bottom", 2, repeated, f.TYPE_STRING, ""),
        ("name", 4, optional, f.TYPE_STRING, ""),
        ("type", 5, optional, f.TYPE_INT32, ""),
        ("blobs", 6, repeated, f.TYPE_MESSAGE, ".caffe.BlobProto"),
    )
    message(
        "NetParameter",
        ("name", 1, optional, f.TYPE_STRING, ""),
        ("layers", 2, repeated, f.TYPE_MESSAGE, ".caffe.V1LayerParameter"),
        ("layer", 100, repeated, f.TYPE_MESSAGE, ".caffe.LayerParameter"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    net_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))

    weight = np.linspace(-1, 1, 2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)
    message_ = net_class(name="voc-fcn8s")
    current = message_.layer.add(name="conv1_1", type="Convolution", bottom=["data"])
    current.blobs.add(data=weight.ravel().tolist()).shape.dim.extend(weight.shape)
    current.blobs.add(double_data=[0.5, -0.25]).shape.dim.extend([2])
    message_.layer.add(name="relu1_1", type="ReLU")
    legacy = message_.layers.add(name="score_fr", type=4, bottom=["fc7"])
    legacy.blobs.add(num=1, channels=1, height=1, width=2, data=[3.0, 4.0])

    name, layers = parse_net(message_.SerializeToString())
    assert name == "voc-fcn8s"
    by_name = {entry.name: entry for entry in layers}
    assert [entry.name for entry in layers] == ["score_fr", "conv1_1", "relu1_1"]  # wire order: field 2 first
    conv = by_name["conv1_1"]
    assert conv.type == "Convolution" and conv.blobs[0].shape == weight.shape
    np.testing.assert_array_equal(conv.blobs[0].data, weight.ravel())
    np.testing.assert_array_equal(conv.blobs[1].data, [0.5, -0.25])
    assert by_name["relu1_1"].blobs == ()
    score = by_name["score_fr"]
    assert score.type == "Convolution" and score.blobs[0].legacy_shape
    assert score.blobs[0].shape == (1, 1, 1, 2) and score.blobs[0].fits((2,))


def test_truncated_file_is_refused_with_a_clear_error(tmp_path) -> None:
    data = fcn_caffemodel(random_state("fcn8s", WIDTH))
    for cut in (len(data) - 1, len(data) // 2, 3):
        path = tmp_path / f"cut{cut}.caffemodel"
        path.write_bytes(data[:cut])
        with pytest.raises(CaffeModelError, match=rf"{path}: truncated protobuf"):
            read_caffemodel(path)


def test_file_cut_at_a_layer_boundary_names_the_missing_layers(tmp_path) -> None:
    state = random_state("fcn8s", WIDTH)
    whole = fcn_caffemodel(state)
    without_tail = fcn_caffemodel(state, drop=("upscore8",))
    assert whole.startswith(without_tail)  # upscore8 is the last layer
    path = tmp_path / "short.caffemodel"
    path.write_bytes(without_tail)
    with pytest.raises(CaffeModelError, match=r"not a fcn8s net — missing layers: upscore8$"):
        load_caffemodel(path, "fcn8s")


def test_not_a_caffemodel_is_refused(tmp_path) -> None:
    path = tmp_path / "page.caffemodel"
    path.write_bytes(b"<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    with pytest.raises(CaffeModelError, match="not a Caffe protobuf: wire type"):
        read_caffemodel(path)
    path.write_bytes(net("empty", [layer("data", "Python", [])]))
    with pytest.raises(CaffeModelError, match="no layer with parameters"):
        read_caffemodel(path)


def test_wrong_architecture_is_refused_naming_the_layers(tmp_path) -> None:
    path = tmp_path / "fcn32s.caffemodel"
    path.write_bytes(fcn_caffemodel(random_state("fcn32s", WIDTH)))
    with pytest.raises(CaffeModelError) as info:
        load_caffemodel(path, "fcn8s")
    message = str(info.value)
    assert "missing layers: score_pool3, score_pool4, upscore2, upscore8, upscore_pool4" in message
    assert "unexpected layers: upscore" in message


def test_mismatched_shapes_and_blob_counts_are_named() -> None:
    state = random_state("fcn8s", WIDTH)
    state["score_pool3.weight"] = torch.zeros(21, 7, 1, 1)
    del state["fc7.bias"]
    with pytest.raises(CaffeModelError) as info:
        state_dict_from_layers(parse_net(fcn_caffemodel(state))[1], "fcn8s")
    message = str(info.value)
    assert "score_pool3.weight: file (21, 7, 1, 1) vs model (21, 8, 1, 1)" in message
    assert "fc7 has 1 blobs, expected 2 (weight, bias)" in message


def test_at_once_scales_are_checked_against_the_model() -> None:
    state = random_state("fcn8s-atonce", WIDTH)
    layers = parse_net(fcn_caffemodel(state, at_once_scales=AT_ONCE_SCALES))[1]
    architecture, converted = state_dict_from_layers(layers)
    assert architecture == "fcn8s-atonce"
    _assert_same(converted, state)
    with pytest.raises(CaffeModelError, match="unexpected layers: scale_pool3, scale_pool4"):
        state_dict_from_layers(layers, "fcn8s")
    staged = parse_net(fcn_caffemodel(state))[1]
    with pytest.raises(CaffeModelError, match="missing layers: scale_pool3, scale_pool4"):
        state_dict_from_layers(staged, "fcn8s-atonce")
    wrong = parse_net(fcn_caffemodel(state, at_once_scales={"scale_pool4": 0.01, "scale_pool3": 0.5}))[1]
    expected = re.escape("scale_pool3 holds 0.5..0.5, FCN8sAtOnce hard-codes 0.0001")
    with pytest.raises(CaffeModelError, match=expected):
        state_dict_from_layers(wrong)


def test_load_caffemodel_builds_the_model_in_eval_mode(tmp_path) -> None:
    state = random_state("fcn16s", WIDTH)
    path = tmp_path / "fcn16s-heavy-pascal.caffemodel"
    path.write_bytes(fcn_caffemodel(state))
    model = load_caffemodel(path)
    assert type(model).__name__ == "FCN16s" and not model.training
    assert model.width == WIDTH and model.num_classes == 21
    _assert_same(dict(model.state_dict()), state)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 20, 30)).shape == (1, 21, 20, 30)


def test_length_past_the_end_inside_a_nested_message_is_truncation() -> None:
    shape = field(7, field(1, bytes([1, 3, 3, 3])))
    bad_blob = shape + b"\x2a\xff\x01" + bytes(4)  # data (field 5) claims 255 bytes, 4 follow
    corrupt = field(100, field(1, b"conv1_1") + field(7, bad_blob))
    with pytest.raises(CaffeModelError, match=r"truncated protobuf: field 5 at byte \d+ needs 255 bytes, 4 "):
        parse_net(net("n", []) + corrupt)
