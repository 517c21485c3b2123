"""Reproduce the shipped demo model: synthetic data, a small FCN-8s trained from scratch, held-out metrics.

    python -m training.demo                      # writes models/demo/fcn8s-demo.safetensors
    python -m training.demo --resume             # continue an interrupted run from <work>/run/resume.pt

Steps: ``training.synth`` writes a training set (seed 0) and a held-out set (seed 1); ``training.train``
trains FCN-8s at width 1/16 and evaluates on the held-out set; the checkpoint is copied to
``models/demo`` with the data seeds added to its metadata, next to a metrics JSON and a loss-curve PNG.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

from common.digest import file_sha256
from training import synth, train
from training.weights import load_checkpoint, save_checkpoint

DEMO_DIR = Path("models/demo")
CHECKPOINT = DEMO_DIR / "fcn8s-demo.safetensors"
TRAIN_DATA = {"seed": 0, "count": 600, "size": 160, "val_fraction": 0.1}
HELDOUT_DATA = {"seed": 1, "count": 100, "size": 160, "val_fraction": 1.0}
TRAIN_ARGS = [
    "--arch", "fcn8s", "--width", "0.0625",
    "--loss", "mean", "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0",
    "--batch-size", "8", "--iterations", "800", "--flip", "--seed", "1337",
    "--val-split", "val", "--eval-every", "100", "--checkpoint-every", "50",
]  # fmt: skip


def _dataset(root: Path, spec: dict[str, float]) -> Path:
    """Write a synthetic set unless a complete one is already there."""
    if not (root / "ImageSets" / "Segmentation" / "trainval.txt").is_file():
        size = int(spec["size"])
        synth.write_dataset(root, int(spec["count"]), int(spec["seed"]), size, size, spec["val_fraction"])
    return root


def plot_loss(log_csv: Path, out_png: Path) -> None:
    """Per-pixel training loss against step (moving average over 20 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with log_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["pixel_loss"]) for r in rows]
    smooth = [
        sum(losses[max(0, i - 19) : i + 1]) / len(losses[max(0, i - 19) : i + 1]) for i in range(len(losses))
    ]
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(steps, losses, color="0.75", linewidth=0.8, label="per step")
    axis.plot(steps, smooth, color="C0", label="moving average (20)")
    axis.set(
        xlabel="step (batch of 8)",
        ylabel="cross-entropy per pixel",
        yscale="log",
        title="fcn8s-demo training",
    )
    axis.legend()
    figure.tight_layout()
    figure.savefig(out_png)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("runs/demo"), help="data and run folder")
    parser.add_argument("--out", type=Path, default=CHECKPOINT, help="where the demo checkpoint goes")
    parser.add_argument("--resume", action="store_true", help="continue <work>/run from its resume.pt")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    train_root = _dataset(args.work / "synth-train", TRAIN_DATA)
    heldout_root = _dataset(args.work / "synth-heldout", HELDOUT_DATA)
    run_dir = args.work / "run"
    extra = ["--resume"] if args.resume else []
    extra += ["--threads", str(args.threads)] if args.threads else []
    train.main(
        [
            "--data",
            str(train_root),
            "--val-data",
            str(heldout_root),
            "--out",
            str(run_dir),
            *TRAIN_ARGS,
            *extra,
        ]
    )

    package(run_dir, args.out, time.perf_counter() - start)


def package(run_dir: Path, out: Path, wall_seconds: float | None) -> None:
    """Copy a finished run's checkpoint to ``out`` with the demo's metadata, metrics JSON and loss plot."""
    model, metadata = load_checkpoint(run_dir / train.MODEL_FILE)
    training = {**metadata.training, "reproduce": "python -m training.demo"}
    training.update(train_data=TRAIN_DATA, heldout_data=HELDOUT_DATA)
    if wall_seconds is not None:
        training["wall_seconds"] = round(wall_seconds, 1)
    metadata = replace(metadata, name="fcn8s-demo", training=training)
    save_checkpoint(out, model, metadata)
    stem = out.with_suffix("")
    Path(f"{stem}-metrics.json").write_text(
        json.dumps({"metrics": metadata.metrics, "training": metadata.training}, indent=2) + "\n"
    )
    plot_loss(run_dir / train.LOG_FILE, Path(f"{stem}-loss.png"))
    metrics = metadata.metrics
    print(
        f"demo model: {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(out)[:12]}), held-out "
        f"mean IU {100 * metrics['mean_iu']:.1f}, pixel acc. {100 * metrics['pixel_accuracy']:.1f}"
    )


if __name__ == "__main__":
    main()
