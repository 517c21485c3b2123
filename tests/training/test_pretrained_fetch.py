"""``python -m training.pretrained list|fetch`` against a local mirror serving synthetic nets (width 1/32)."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.classes import VOC_CLASSES
from common.metadata import Normalization
from tests.training.caffe_files import fcn_caffemodel, random_state
from tests.training.file_server import FileServer, Routes
from training import pretrained
from training.download import Digest
from training.weights import read_metadata

WIDTH = 1 / 32
FCN8S_SHA1 = "c449ea74dd7d83751d1357d6a8c323fcf4038962"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def _pin(monkeypatch: pytest.MonkeyPatch, key: str, source: str, digest: Digest) -> None:
    """Replace a source's published checksum (the synthetic files cannot match the real ones)."""
    net = pretrained.NETS[key]
    sources = tuple(dataclasses.replace(s, checksum=digest) if s.name == source else s for s in net.sources)
    monkeypatch.setitem(pretrained.NETS, key, dataclasses.replace(net, sources=sources))


def _fetch(*args: str | Path) -> int:
    return pretrained.main(["fetch", *(str(a) for a in args)])


def _assert_weights(checkpoint: Path, state: dict[str, torch.Tensor]) -> None:
    loaded = load_file(str(checkpoint))
    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_list_prints_the_sources_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert pretrained.main(["list"]) == 0
    out = capsys.readouterr().out
    for key in ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"):
        assert f"http://dl.caffe.berkeleyvision.org/{pretrained.NETS[key].name}.caffemodel" in out
    assert f"sha1 {FCN8S_SHA1} — OpenCV opencv_extra testdata/dnn/download_models.py" in out
    assert "md5 de93e540ec79512f8770033849c8ae89" in out and "md5 dbd9bbb3829a3184913bccc74373afbb" in out
    assert "https://drive.google.com/uc?id=1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI" in out
    assert out.count("no checksum: trust on first use") == 3
    assert "65.5 mean IU on seg11valid (reported)" in out


def test_fetch_without_published_checksum_trusts_on_first_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = random_state("fcn16s", WIDTH)
    data = fcn_caffemodel(state)
    sha256 = hashlib.sha256(data).hexdigest()
    path = "/caffe/fcn16s-heavy-pascal.caffemodel"
    routes = Routes(files={path: data})
    cache, out = tmp_path / "cache", tmp_path / "out"
    with FileServer(routes) as server:
        assert _fetch("fcn16s", "--mirror", server.url(), "--cache-dir", cache, "--out-dir", out) == 0
        printed = capsys.readouterr().out
        assert f"no published checksum exists for {server.url(path)}" in printed
        assert f"SHA-256 {sha256}" in printed and "trust on first use" in printed
        pin = cache / "caffe" / "fcn16s-heavy-pascal.caffemodel.sha256"
        assert pin.read_text().strip() == sha256

        metadata = read_metadata(out / "model.safetensors")
        assert metadata.name == "fcn16s-heavy-pascal" and metadata.architecture == "fcn16s"
        assert metadata.width == WIDTH and metadata.classes == VOC_CLASSES
        assert metadata.normalization == Normalization.caffe()
        assert metadata.training["source"] == server.url(path)
        assert metadata.training["sha256"] == sha256
        assert metadata.training["checksum"]["verified"] is False
        assert metadata.training["checksum"]["value"] == sha256
        assert "trust on first use" in metadata.training["checksum"]["note"]
        assert metadata.training["converter"].startswith("training.caffemodel")
        assert metadata.metrics["mean_iu"] == 0.650 and metadata.metrics["split"] == "seg11valid"
        _assert_weights(out / "model.safetensors", state)

        # Cached: no second request.
        assert _fetch("fcn16s", "--mirror", server.url(), "--cache-dir", cache, "--out-dir", out) == 0
        assert "using the cached" in capsys.readouterr().out
        assert len(routes.requests) == 1

        # A later download must match the SHA-256 recorded on first use.
        (cache / "caffe" / "fcn16s-heavy-pascal.caffemodel").unlink()
        routes.files[path] = fcn_caffemodel(random_state("fcn16s", WIDTH, seed=1))
        assert _fetch("fcn16s", "--mirror", server.url(), "--cache-dir", cache, "--out-dir", out) == 1
    assert f"expected sha256 {sha256}" in capsys.readouterr().err
    assert not (cache / "caffe" / "fcn16s-heavy-pascal.caffemodel.partial").exists()


def test_fetch_refuses_a_file_that_does_not_match_the_pinned_checksum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = random_state("fcn8s", WIDTH)
    data = fcn_caffemodel(state)
    routes = Routes(files={"/caffe/fcn8s-heavy-pascal.caffemodel": data})
    cache, out = tmp_path / "cache", tmp_path / "out"
    with FileServer(routes) as server:
        assert _fetch("fcn8s", "--mirror", server.url(), "--cache-dir", cache, "--out-dir", out) == 1
        err = capsys.readouterr().err
        assert f"checksum mismatch: expected sha1 {FCN8S_SHA1}" in err
        assert list((cache / "caffe").iterdir()) == [] and not out.exists()

        _pin(monkeypatch, "fcn8s", "caffe", Digest("sha1", hashlib.sha1(data).hexdigest()))
        assert _fetch("fcn8s", "--mirror", server.url(), "--cache-dir", cache, "--out-dir", out) == 0
    metadata = read_metadata(out / "model.safetensors")
    assert metadata.training["checksum"] == {
        "algorithm": "sha1",
        "value": hashlib.sha1(data).hexdigest(),
        "verified": True,
        "published_by": pretrained.OPENCV,
    }
    assert metadata.metrics["mean_iu"] == 0.655 and metadata.metrics["seg12test_mean_iu"] == 0.672
    _assert_weights(out / "model.safetensors", state)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_or_blocked_prints_one_line_naming_the_url_and_the_from_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror = f"http://127.0.0.1:{_closed_port()}"
    assert _fetch("fcn8s", "--mirror", mirror, "--cache-dir", tmp_path, "--out-dir", tmp_path / "out") == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"cannot download {mirror}/caffe/fcn8s-heavy-pascal.caffemodel" in line
    assert line.endswith("python -m training.pretrained fetch fcn8s --from FILE")

    routes = Routes(status={"/pytorch-fcn/fcn8s_from_caffe.pth": 403})
    with FileServer(routes) as server:
        args = ("--mirror", server.url(), "--cache-dir", tmp_path, "--source", "pytorch-fcn")
        assert _fetch("fcn8s", *args) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"cannot download {server.url('/pytorch-fcn/fcn8s_from_caffe.pth')} (HTTP 403 " in line
    assert "--from FILE" in line


def test_caffemodel_and_pth_of_the_same_weights_convert_to_identical_tensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = random_state("fcn8s", WIDTH)
    caffemodel, pth = tmp_path / "fcn8s-heavy-pascal.caffemodel", tmp_path / "fcn8s_from_caffe.pth"
    caffemodel.write_bytes(fcn_caffemodel(state, v1=True, legacy_shapes=True))
    torch.save(state, pth)

    assert _fetch("fcn8s", "--from", caffemodel, "--out-dir", tmp_path / "a") == 1
    err = capsys.readouterr().err
    assert f"matches no published checksum of fcn8s (expected sha1 {FCN8S_SHA1}" in err
    assert "--accept-unverified" in err

    assert _fetch("fcn8s", "--from", caffemodel, "--accept-unverified", "--out-dir", tmp_path / "a") == 0
    assert _fetch("fcn8s", "--from", pth, "--accept-unverified", "--out-dir", tmp_path / "b") == 0
    assert "trust on first use" in capsys.readouterr().out
    from_caffe = load_file(str(tmp_path / "a" / "model.safetensors"))
    from_pth = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sorted(from_caffe) == sorted(from_pth) == sorted(state)
    for key in state:
        assert torch.equal(from_caffe[key], from_pth[key]) and torch.equal(from_pth[key], state[key]), key
    pth_metadata = read_metadata(tmp_path / "b" / "model.safetensors")
    assert "weights_only=True" in pth_metadata.training["converter"]
    assert pth_metadata.training["checksum"]["verified"] is False


def test_file_fetched_by_hand_matching_a_published_checksum_is_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = random_state("fcn8s-atonce", WIDTH)
    pth = tmp_path / "fcn8s-atonce_from_caffe.pth"
    torch.save(state, pth)
    _pin(monkeypatch, "fcn8s-atonce", "pytorch-fcn", Digest("md5", hashlib.md5(pth.read_bytes()).hexdigest()))
    assert _fetch("fcn8s-atonce", "--from", pth, "--out-dir", tmp_path / "out") == 0
    metadata = read_metadata(tmp_path / "out" / "model.safetensors")
    assert metadata.architecture == "fcn8s-atonce" and metadata.name == "fcn8s-atonce-pascal"
    assert metadata.training["source"] == "https://drive.google.com/uc?id=0B9P1L--7Wd2vblE1VUIxV1o2d2M"
    assert metadata.training["checksum"]["verified"] is True
    _assert_weights(tmp_path / "out" / "model.safetensors", state)


def test_wrong_architecture_is_refused_naming_the_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fcn32s-heavy-pascal.caffemodel"
    path.write_bytes(fcn_caffemodel(random_state("fcn32s", WIDTH)))
    assert _fetch("fcn8s", "--from", path, "--accept-unverified", "--out-dir", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "missing layers: score_pool3, score_pool4, upscore2, upscore8, upscore_pool4" in err
    assert "unexpected layers: upscore" in err
    assert not (tmp_path / "out").exists()


def test_truncated_download_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = fcn_caffemodel(random_state("fcn32s", WIDTH))
    routes = Routes(files={"/caffe/fcn32s-heavy-pascal.caffemodel": data[: len(data) // 3]})
    with FileServer(routes) as server:
        args = ("--mirror", server.url(), "--cache-dir", tmp_path / "cache", "--out-dir", tmp_path / "out")
        assert _fetch("fcn32s", *args) == 1
    assert "truncated protobuf" in capsys.readouterr().err
