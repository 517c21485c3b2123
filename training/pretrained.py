"""The paper's trained PASCAL VOC nets: download (pinned checksums), Caffe-free conversion, ONNX export.

    python -m training.pretrained list
    python -m training.pretrained fetch fcn8s [--source caffe|pytorch-fcn|pytorch-fcn-old] [--from FILE]
    python -m training.pretrained export fcn8s      # model.onnx, model-fp16.onnx, model-int8.onnx

``fetch`` downloads into a cache (``--cache-dir``, ``$FCN_CACHE_DIR``, default ``~/.cache/fcn8s-serving``),
resumes partial downloads, checks the source's published checksum before the file is used, and converts it
into ``models/pretrained/<name>/model.safetensors`` with full metadata (VOC classes and palette, Caffe
preprocessing, source URL and checksums, the paper's reported numbers). A source without a published
checksum is trusted on first use: its SHA-256 is printed, kept next to the cached file (later downloads
must match it) and recorded in the metadata. ``--mirror URL`` (or ``$FCN_PRETRAINED_MIRROR``) fetches
``URL/<source>/<file>`` instead of the original URLs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from export import fp16 as export_fp16
from export import onnx as export_onnx
from export import quantize as export_int8
from training.caffemodel import load_caffemodel
from training.download import ChecksumError, Digest, DownloadError, download, file_digests
from training.model import FCNBase
from training.weights import CheckpointError, caffe_metadata, load_checkpoint, save_checkpoint

Format = Literal["caffemodel", "pth"]

CAFFE_URL = "http://dl.caffe.berkeleyvision.org/"
DRIVE_URL = "https://drive.google.com/uc?id="
OPENCV = "OpenCV opencv_extra testdata/dnn/download_models.py (model 'Fcn')"
PYTORCH_FCN = "wkentaro/pytorch-fcn torchfcn/models/{}.py ({}.download)"
NO_CHECKSUM = "none published (fcn.berkeleyvision.org lists no checksums)"
REPORTED_BY = "reported, not measured here: fcn.berkeleyvision.org README (Caffe, heavy PASCAL models)"
CHECKPOINT = "model.safetensors"
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model-fp16.onnx", "int8": "model-int8.onnx"}


@dataclass(frozen=True)
class Source:
    """Where one file with a net's weights is published, and its checksum if a reference states one."""

    name: str
    url: str
    filename: str
    format: Format
    checksum: Digest | None
    provenance: str
    """Where the checksum is published (or why there is none)."""


@dataclass(frozen=True)
class PretrainedNet:
    """One of the paper's PASCAL VOC nets and the files that hold it (the first source is the default)."""

    key: str
    architecture: str
    name: str
    reported: dict[str, Any]
    sources: tuple[Source, ...]

    def source(self, name: str | None) -> Source:
        """The source called ``name`` (the default one for None)."""
        for source in self.sources:
            if name in (None, source.name):
                return source
        raise ValueError(f"{self.key} has no source {name!r}; choose from {[s.name for s in self.sources]}")


def _caffe(filename: str, checksum: Digest | None = None, provenance: str = NO_CHECKSUM) -> Source:
    return Source("caffe", CAFFE_URL + filename, filename, "caffemodel", checksum, provenance)


def _drive(name: str, drive_id: str, filename: str, md5: str, model_class: str) -> Source:
    module = model_class.lower().removesuffix("atonce")
    provenance = PYTORCH_FCN.format(module, model_class) + (" at 1f1a7f3" if name.endswith("-old") else "")
    return Source(name, DRIVE_URL + drive_id, filename, "pth", Digest("md5", md5), provenance)


def _reported(mean_iu: float, pytorch_fcn: float, **extra: float) -> dict[str, Any]:
    """The reference's seg11valid mean IU (and pytorch-fcn's evaluation of the same weights) as fractions."""
    return {
        "source": REPORTED_BY + "; pytorch_fcn_mean_iu: wkentaro/pytorch-fcn README ('Original' row)",
        "data": "PASCAL VOC2011 segmentation val without SBD train images",
        "split": "seg11valid",
        "images": 736,
        "mean_iu": mean_iu,
        "pytorch_fcn_mean_iu": pytorch_fcn,
        **extra,
    }


# Checksums are pinned only where a published reference states one:
# - fcn8s-heavy-pascal.caffemodel: the SHA-1 of OpenCV's opencv_extra testdata/dnn/download_models.py.
# - "pytorch-fcn": Drive id and md5 of FCN*.download in wkentaro/pytorch-fcn torchfcn/models/fcn*.py (the md5s
#   are also in fcn-spec.md [WK] @4b98850, the fcn8s pair in issue #15; the newer fcn32s/fcn16s ids were read
#   from verbatim copies of those files, the stored upstream revision being 1f1a7f3).
# - "pytorch-fcn-old": the same methods at pytorch-fcn commit 1f1a7f3 (older Drive ids, possibly no longer
#   public). Old and new files are different pickles of the same weights, hence different md5s.
# fcn.berkeleyvision.org publishes no checksums: the other caffemodels are trusted on first use.
NETS: dict[str, PretrainedNet] = {
    net.key: net
    for net in (
        PretrainedNet(
            "fcn32s", "fcn32s", "fcn32s-heavy-pascal", _reported(0.636, 0.6363),
            (
                _caffe("fcn32s-heavy-pascal.caffemodel"),
                _drive("pytorch-fcn", "11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f", "fcn32s_from_caffe.pth",
                       "d3eb467a80e7da0468a20dfcbc13e6c8", "FCN32s"),
                _drive("pytorch-fcn-old", "0B9P1L--7Wd2vM2oya3k0Zlgtekk", "fcn32s_from_caffe.pth",
                       "8acf386d722dc3484625964cbe2aba49", "FCN32s"),
            ),
        ),
        PretrainedNet(
            "fcn16s", "fcn16s", "fcn16s-heavy-pascal", _reported(0.650, 0.6501),
            (
                _caffe("fcn16s-heavy-pascal.caffemodel"),
                _drive("pytorch-fcn", "1bctu58B6YH9bu6lBBSBB2rUeGlGhYLoP", "fcn16s_from_caffe.pth",
                       "a2d4035f669f09483b39c9a14a0d6670", "FCN16s"),
                _drive("pytorch-fcn-old", "0B9P1L--7Wd2vVGE3TkRMbWlNRms", "fcn16s_from_caffe.pth",
                       "991ea45d30d632a01e5ec48002cac617", "FCN16s"),
            ),
        ),
        PretrainedNet(
            "fcn8s", "fcn8s", "fcn8s-heavy-pascal", _reported(0.655, 0.6551, seg12test_mean_iu=0.672),
            (
                _caffe("fcn8s-heavy-pascal.caffemodel",
                       Digest("sha1", "c449ea74dd7d83751d1357d6a8c323fcf4038962"), OPENCV),
                _drive("pytorch-fcn", "1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI", "fcn8s_from_caffe.pth",
                       "de93e540ec79512f8770033849c8ae89", "FCN8s"),
                _drive("pytorch-fcn-old", "0B9P1L--7Wd2vT0FtdThWREhjNkU", "fcn8s_from_caffe.pth",
                       "dbd9bbb3829a3184913bccc74373afbb", "FCN8s"),
            ),
        ),
        PretrainedNet(
            "fcn8s-atonce", "fcn8s-atonce", "fcn8s-atonce-pascal", _reported(0.654, 0.6540),
            (
                _caffe("fcn8s-atonce-pascal.caffemodel"),
                _drive("pytorch-fcn", "0B9P1L--7Wd2vblE1VUIxV1o2d2M", "fcn8s-atonce_from_caffe.pth",
                       "bfed4437e941fef58932891217fe6464", "FCN8sAtOnce"),
            ),
        ),
    )
}  # fmt: skip


def default_cache_dir() -> Path:
    return Path(os.environ.get("FCN_CACHE_DIR") or Path.home() / ".cache" / "fcn8s-serving")


def default_out_dir(net: PretrainedNet) -> Path:
    return Path("models") / "pretrained" / net.name


def source_url(source: Source, mirror: str | None) -> str:
    """The source's URL, or ``<mirror>/<source name>/<file name>``."""
    return f"{mirror.rstrip('/')}/{source.name}/{source.filename}" if mirror else source.url


def file_format(path: Path) -> Format:
    """``pth`` for a torch checkpoint (zip or pickle), ``caffemodel`` otherwise (checked while parsing)."""
    with Path(path).open("rb") as handle:
        head = handle.read(4)
    return "pth" if head.startswith((b"PK\x03\x04", b"\x80")) else "caffemodel"


# --------------------------------------------------------------------------------------------------
# Getting the file: download (cached, verified) or a file the user fetched by hand


def _say(message: str) -> None:
    print(f"[pretrained] {message}", flush=True)


def _trust_on_first_use(reason: str, sha256: str, where: str) -> None:
    _say(
        f"note: {reason}; its SHA-256 {sha256} is recorded {where} "
        "(trust on first use: compare it with a copy you trust)"
    )


def _cached(source: Source, cache_dir: Path) -> Path:
    return Path(cache_dir) / source.name / source.filename


def _first_use_record(source: Source, cache_dir: Path) -> Path:
    dest = _cached(source, cache_dir)
    return dest.with_name(dest.name + ".sha256")


def obtain(source: Source, cache_dir: Path, mirror: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The verified cached file of ``source`` (downloaded if needed) and its provenance for the metadata.

    Without a published checksum, the SHA-256 recorded on first use (``remember_first_use``) is expected.
    """
    url = source_url(source, mirror)
    dest = _cached(source, cache_dir)
    pin = _first_use_record(source, cache_dir)
    expected = source.checksum or (Digest("sha256", pin.read_text().strip()) if pin.is_file() else None)
    digests: dict[str, str] | None = None
    if dest.is_file():
        digests = file_digests(dest)
        if expected is None or digests[expected.algorithm] == expected.value.lower():
            _say(f"using the cached {dest}")
        else:
            _say(f"the cached {dest} does not match {expected}; downloading it again")
            dest.unlink()
            digests = None
    if digests is None:
        _say(f"downloading {url} to {dest}" + (f" ({expected} expected)" if expected else ""))
        digests = download(url, dest, expected)
    return dest, _provenance(source, url, digests, verified=source.checksum is not None)


def remember_first_use(source: Source, cache_dir: Path, provenance: dict[str, Any]) -> None:
    """After a successful conversion, record the SHA-256 of a source without a published checksum."""
    pin = _first_use_record(source, cache_dir)
    if source.checksum is None and not pin.is_file():
        pin.write_text(provenance["sha256"] + "\n")
        where = f"in {pin} and in the model's metadata"
        reason = f"no published checksum exists for {provenance['source']}"
        _trust_on_first_use(reason, provenance["sha256"], where)


def _provenance(source: Source, url: str, digests: dict[str, str], verified: bool) -> dict[str, Any]:
    if verified and source.checksum is not None:
        checksum = {**vars(source.checksum), "verified": True, "published_by": source.provenance}
    else:
        checksum = {
            "algorithm": "sha256", "value": digests["sha256"], "verified": False,
            "note": "trust on first use: no published checksum; SHA-256 computed from the downloaded file",
        }  # fmt: skip
    return {"source": url, "source_name": source.name, "file": source.filename, "format": source.format,
            "sha256": digests["sha256"], "checksum": checksum}  # fmt: skip


def verify_local(net: PretrainedNet, path: Path, accept_unverified: bool) -> dict[str, Any]:
    """Provenance of a file fetched by hand: the source whose published checksum it matches, else TOFU.

    Raises CheckpointError if a checksum is published for such files but none matches, unless
    ``accept_unverified``.
    """
    digests = file_digests(path)
    for source in net.sources:
        if source.checksum and digests[source.checksum.algorithm] == source.checksum.value:
            _say(f"{path} matches the published {source.checksum} of {source.url}")
            return {**_provenance(source, source.url, digests, verified=True), "file": str(path)}
    kind = file_format(path)
    pinned = [s for s in net.sources if s.format == kind and s.checksum is not None]
    if pinned and not accept_unverified:
        expected = "; ".join(f"{s.checksum} ({s.filename})" for s in pinned)
        raise CheckpointError(
            f"{path} matches no published checksum of {net.key} (expected {expected}); "
            "pass --accept-unverified to convert it anyway, recording its SHA-256 as trust on first use"
        )
    reason = f"{path} matches no published checksum of {net.key}"
    _trust_on_first_use(reason, digests["sha256"], "in the model's metadata")
    return {
        "source": f"local file {path.name}", "file": str(path), "format": kind, "sha256": digests["sha256"],
        "checksum": {"algorithm": "sha256", "value": digests["sha256"], "verified": False,
                     "note": "trust on first use: matches no published checksum; SHA-256 of the local file"},
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Conversion


def convert(net: PretrainedNet, path: Path, provenance: dict[str, Any], out: Path) -> FCNBase:
    """Convert a ``.caffemodel`` or pytorch-fcn ``.pth`` of ``net`` into this project's checkpoint ``out``."""
    kind = file_format(path)
    if kind == "caffemodel":
        model = load_caffemodel(path, net.architecture)
        converter = "training.caffemodel (protobuf read without Caffe)"
    else:
        model, _ = load_checkpoint(path, net.architecture)
        converter = "training.weights (pytorch-fcn state dict, torch.load weights_only=True)"
    metadata = caffe_metadata(
        net.architecture, model.num_classes, model.width, provenance["source"], name=net.name,
        training={**provenance, "origin": "fcn.berkeleyvision.org Caffe net", "converter": converter},
        metrics=net.reported,
    )  # fmt: skip
    save_checkpoint(out, model, metadata)
    return model


# --------------------------------------------------------------------------------------------------
# Export: the existing entry points, one after the other


def export(
    checkpoint: Path,
    out_dir: Path,
    *,
    check_shapes: Sequence[str] = (),
    images: Path | None = None,
    size: int = 160,
    count: int = 16,
    formats: Sequence[str] = tuple(ONNX_FILES),
) -> int:
    """FP32 ONNX (verified against PyTorch), then FP16 (label-agreement gate) and INT8 (calibrated) copies.

    ``images`` (a VOC folder) gives the FP16 agreement images (val) and INT8 calibration images (train);
    without it both use ``count`` synthetic scenes of ``size`` x ``size``.
    """
    paths = {fmt: Path(out_dir) / name for fmt, name in ONNX_FILES.items()}
    if images is not None:
        measure = ["--images", str(images)]
        calibrate = ["--calib-dir", str(images), "--calib-limit", str(count)]
    else:
        measure, calibrate = ["--size", str(size)], ["--calib-size", str(size), "--calib-count", str(count)]
    shapes = ["--check-shapes", *check_shapes] if check_shapes else []
    steps = {
        "fp32": (export_onnx.main, ["--checkpoint", str(checkpoint), "--out", str(paths["fp32"]), *shapes]),
        "fp16": (export_fp16.main, ["--onnx", str(paths["fp32"]), "--out", str(paths["fp16"]),
                                    "--count", str(count), *measure]),
        "int8": (export_int8.main, ["--onnx", str(paths["fp32"]), "--out", str(paths["int8"]), *calibrate]),
    }  # fmt: skip
    wanted = [fmt for fmt in steps if fmt in formats]
    if wanted and wanted[0] != "fp32" and not paths["fp32"].is_file():
        _say(f"{paths['fp32']} is missing: FP16 and INT8 are made from the FP32 ONNX")
        return 1
    for number, fmt in enumerate(wanted, start=1):
        _say(f"step {number}/{len(wanted)}: {fmt} -> {paths[fmt]}")
        start = time.perf_counter()
        entry, argv = steps[fmt]
        if entry(argv) != 0:
            _say(f"{fmt} export failed")
            return 1
        _say(f"{fmt} done in {time.perf_counter() - start:.0f} s")
    return 0


# --------------------------------------------------------------------------------------------------
# Command line


def list_nets() -> str:
    """The sources table as text."""
    lines = []
    for net in NETS.values():
        mean_iu = f"{100 * net.reported['mean_iu']:.1f} mean IU on {net.reported['split']} (reported)"
        lines.append(f"{net.key}  ({net.name}: {net.architecture}, {mean_iu})")
        for source in net.sources:
            checksum = str(source.checksum) if source.checksum else "no checksum: trust on first use"
            lines.append(f"  {source.name:<16}{source.url}")
            lines.append(f"  {'':<16}{checksum} — {source.provenance}")
    return "\n".join(lines)


def _fetch(args: argparse.Namespace, net: PretrainedNet) -> int:
    out_dir = args.out_dir or default_out_dir(net)
    try:
        source = net.source(args.source)
        if args.from_file is not None:
            path, provenance = args.from_file, verify_local(net, args.from_file, args.accept_unverified)
        else:
            path, provenance = obtain(source, args.cache_dir, args.mirror)
        _say(f"converting {path} ({file_format(path)}) to {out_dir / CHECKPOINT}")
        model = convert(net, path, provenance, out_dir / CHECKPOINT)
        if args.from_file is None:
            remember_first_use(source, args.cache_dir, provenance)
    except ChecksumError as error:
        print(f"fetch failed: {error}", file=sys.stderr)
        return 1
    except DownloadError as error:
        print(
            f"fetch failed: cannot download {error.url} ({error.reason}); fetch it by hand and run "
            f"python -m training.pretrained fetch {net.key} --from FILE",
            file=sys.stderr,
        )
        return 1
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"fetch failed: {error}", file=sys.stderr)
        return 1
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    _say(f"wrote {out_dir / CHECKPOINT} ({net.architecture}, width {model.width}, {parameters:.1f} M params)")
    if not args.export:
        _say(f"next: python -m training.pretrained export {net.key} --out-dir {out_dir}")
        return 0
    return export(out_dir / CHECKPOINT, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the nets, their sources and checksums")
    fetch = commands.add_parser("fetch", help="download (or --from FILE) and convert to model.safetensors")
    export_cmd = commands.add_parser("export", help="model.safetensors -> model.onnx, -fp16.onnx, -int8.onnx")
    for command in (fetch, export_cmd):
        command.add_argument("net", choices=sorted(NETS))
        command.add_argument("--out-dir", type=Path, help="default: models/pretrained/<name>")
    fetch.add_argument("--source", help="caffe (default), pytorch-fcn or pytorch-fcn-old (see list)")
    fetch.add_argument("--from", dest="from_file", type=Path, metavar="FILE",
                       help="convert a .caffemodel or .pth fetched by hand")  # fmt: skip
    fetch.add_argument("--accept-unverified", action="store_true",
                       help="convert a --from FILE matching no published checksum (TOFU)")  # fmt: skip
    fetch.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="default: %(default)s")
    fetch.add_argument("--mirror", default=os.environ.get("FCN_PRETRAINED_MIRROR") or None,
                       help="fetch <MIRROR>/<source>/<file> instead of the original URLs")  # fmt: skip
    fetch.add_argument("--export", action="store_true", help="then export as the export command does")
    export_cmd.add_argument("--checkpoint", type=Path, help="default: <out-dir>/model.safetensors")
    export_cmd.add_argument("--check-shapes", nargs="+", default=[], metavar="NxHxW",
                            help="ONNX verification shapes (default: export.onnx's five)")  # fmt: skip
    export_cmd.add_argument("--images", type=Path,
                            help="VOC folder: FP16 agreement on val, INT8 calibration on train")  # fmt: skip
    export_cmd.add_argument("--size", type=int, default=160, help="side of the synthetic images otherwise")
    export_cmd.add_argument("--count", type=int, default=16, help="FP16 / INT8 image count")
    export_cmd.add_argument("--formats", nargs="+", choices=list(ONNX_FILES), default=list(ONNX_FILES))
    args = parser.parse_args(argv)
    if args.command == "list":
        print(list_nets())
        return 0
    net = NETS[args.net]
    if args.command == "fetch":
        return _fetch(args, net)
    out_dir = args.out_dir or default_out_dir(net)
    checkpoint = args.checkpoint or out_dir / CHECKPOINT
    if not checkpoint.is_file():
        print(f"export failed: {checkpoint} not found; run python -m training.pretrained fetch {net.key}",
              file=sys.stderr)  # fmt: skip
        return 1
    return export(
        checkpoint, out_dir, check_shapes=args.check_shapes, images=args.images, size=args.size,
        count=args.count, formats=args.formats,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
