"""Evaluate a checkpoint on a VOC/SBD split: the paper's four metrics from one confusion matrix, per-class IU.

python -m training.evaluate --checkpoint models/demo/fcn8s-demo.safetensors --data data/heldout --split val
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.metadata import ModelMetadata
from training.data import Sample, SegmentationDataset, collate, normalize_batch, open_dataset
from training.metrics import ConfusionMeter, Scores
from training.model import FCNBase
from training.weights import load_checkpoint


def _batches(dataset: SegmentationDataset, batch_size: int) -> Iterator[list[Sample]]:
    """Consecutive samples grouped up to ``batch_size``, a new group whenever the size changes."""
    group: list[Sample] = []
    for index in range(len(dataset)):
        sample = dataset[index]
        if group and (len(group) == batch_size or group[0][1].shape != sample[1].shape):
            yield group
            group = []
        group.append(sample)
    if group:
        yield group


@torch.no_grad()
def evaluate_model(
    model: FCNBase,
    dataset: SegmentationDataset,
    metadata: ModelMetadata,
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    progress: bool = True,
) -> Scores:
    """Run the model over every image of ``dataset`` and score one confusion matrix over all of them."""
    was_training = model.training
    model.eval()
    meter = ConfusionMeter(metadata.num_classes)
    bar = tqdm(total=len(dataset), desc="evaluate", unit="img", disable=not progress, leave=False)
    for group in _batches(dataset, batch_size):
        images, labels = collate(group)
        logits = model(normalize_batch(images.to(device), metadata.normalization))
        prediction = logits.argmax(dim=1).cpu().numpy()
        meter.update(labels.numpy(), prediction)
        bar.update(len(group))
    bar.close()
    model.train(was_training)
    return meter.scores()


def _percent(value: float) -> str:
    return "  n/a" if math.isnan(value) else f"{100 * value:5.1f}"


def format_table(name: str, result: Scores, classes: tuple[str, ...]) -> str:
    """The paper's Table 2 layout (percent) followed by the per-class IU."""
    lines = [
        "| model | pixel acc. | mean acc. | mean IU | f.w. IU |",
        "|---|---|---|---|---|",
        f"| {name} | {_percent(result.pixel_accuracy)} | {_percent(result.mean_accuracy)} | "
        f"{_percent(result.mean_iu)} | {_percent(result.frequency_weighted_iu)} |",
        "",
        "| class | IU |",
        "|---|---|",
    ]
    lines += [f"| {cls} | {_percent(iu)} |" for cls, iu in zip(classes, result.class_iu, strict=True)]
    return "\n".join(lines)


def scores_to_json(result: Scores, classes: tuple[str, ...]) -> dict[str, Any]:
    """The four metrics plus per-class IU (null where undefined) as plain JSON values."""
    return {
        **result.summary(),
        "class_iu": {c: None if math.isnan(v) else v for c, v in zip(classes, result.class_iu, strict=True)},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="own .safetensors or pytorch-fcn .pth")
    parser.add_argument(
        "--arch", default=None, help="architecture of a .pth (default: inferred from its keys)"
    )
    parser.add_argument("--data", type=Path, required=True, help="VOC or SBD folder")
    parser.add_argument("--split", default="val", help="split file name (default: val)")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images per forward pass (equal sizes only)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)

    model, metadata = load_checkpoint(args.checkpoint, args.arch)
    model.to(args.device)
    dataset = open_dataset(args.data, args.split)
    start = time.perf_counter()
    result = evaluate_model(model, dataset, metadata, args.device, args.batch_size)
    elapsed = time.perf_counter() - start
    print(format_table(metadata.name, result, metadata.classes))
    print(f"\n{len(dataset)} images of {args.data} ({args.split}) in {elapsed:.1f} s on {args.device}")
    report = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "split": args.split,
        "images": len(dataset),
        "seconds": round(elapsed, 2),
        **scores_to_json(result, metadata.classes),
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
