"""Train an FCN on a VOC/SBD-layout data set, then evaluate it and write a self-describing checkpoint.

Reference recipe (FCN-32s from VGG16): summed loss, fixed lr 1e-10, momentum 0.99, weight decay 5e-4,
biases at 2x lr without decay, bilinear upsampling frozen, batch 1. Staged training:

    python -m training.train --arch fcn32s --init vgg16 --init-from vgg16-397923af.pth \\
        --data VOC --out runs/32s
    python -m training.train --arch fcn16s --init checkpoint --init-from runs/32s/model.safetensors \\
        --lr 1e-12 --data VOC --out runs/16s
    python -m training.train --arch fcn8s --init checkpoint --init-from runs/16s/model.safetensors \\
        --lr 1e-14 --data VOC --out runs/8s
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from common.classes import IGNORE_INDEX
from common.metadata import ModelMetadata, Normalization
from training.data import Augment, collate, normalize_batch, open_dataset
from training.evaluate import evaluate_model, format_table, scores_to_json
from training.model import FCNBase, build_model
from training.weights import (
    import_previous_stage,
    import_vgg16,
    read_any_state_dict,
    read_torch_state_dict,
    save_checkpoint,
)

LOSS_DEFAULTS = {"sum": {"lr": 1e-10, "momentum": 0.99}, "mean": {"lr": 1e-4, "momentum": 0.9}}
"""Per-loss defaults: the reference's unnormalised (summed) loss and a per-pixel mean loss."""
NORMALIZATIONS = {"imagenet": Normalization(), "caffe": Normalization.caffe()}
RESUME_FILE = "resume.pt"
MODEL_FILE = "model.safetensors"
LOG_FILE = "log.csv"
LOG_FIELDS = ("step", "epoch", "loss", "pixel_loss", "images_per_s", "elapsed_s")


def initial_model(args: argparse.Namespace) -> tuple[FCNBase, ModelMetadata, str]:
    """Build the model and its metadata (without training info) as ``--init`` says; returns a description."""
    state, source_metadata = read_any_state_dict(args.init_from) if args.init == "checkpoint" else ({}, None)
    metadata = ModelMetadata(architecture=args.arch, width=args.width, name=args.name or args.arch)
    if source_metadata is not None:  # a previous stage: keep its classes, palette and normalisation
        metadata = replace(metadata, classes=source_metadata.classes, palette=source_metadata.palette)
    model = build_model(args.arch, metadata.num_classes, args.width)
    if args.init == "none":
        described = "kaiming-normal trunk, zero score layers, bilinear upsampling"
        normalization = Normalization()
    elif args.init == "vgg16":
        import_vgg16(model, read_torch_state_dict(args.init_from))
        described = f"torchvision VGG16 from {args.init_from}"
        normalization = Normalization()
    else:
        copied = import_previous_stage(model, state, what=str(args.init_from))
        described = f"{len(copied)} layers copied by name from {args.init_from}"
        # a pytorch-fcn .pth carries no metadata: it is a Caffe-preprocessing net
        normalization = Normalization.caffe() if source_metadata is None else source_metadata.normalization
    if args.normalization != "auto":
        normalization = NORMALIZATIONS[args.normalization]
    return model, replace(metadata, normalization=normalization), described


def param_groups(model: FCNBase, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Reference groups: weights (lr, decay), biases (2x lr, no decay); upsampling frozen, left out."""
    frozen = {f"{name}.weight" for name in model.upsampling_layers}
    weights, biases = [], []
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
        elif name.endswith(".bias"):
            biases.append(parameter)
        else:
            weights.append(parameter)
    return [
        {"params": weights, "lr": lr, "weight_decay": weight_decay},
        {"params": biases, "lr": 2 * lr, "weight_decay": 0.0},
    ]


def segmentation_loss(logits: Tensor, labels: Tensor, mode: str) -> tuple[Tensor, int]:
    """Cross-entropy ignoring 255: ``sum`` over pixels / batch size (the reference), or ``mean`` per pixel.

    Returns the loss and the number of labelled pixels.
    """
    pixels = int((labels != IGNORE_INDEX).sum())
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if mode == "sum":
        return total / labels.shape[0], pixels
    return total / max(pixels, 1), pixels


class Sampler:
    """Shuffled batches of indices, one epoch at a time, and the augmentation randomness; resumable."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size = size, batch_size
        self.rng = np.random.default_rng([seed, 0])
        self.augment_rng = np.random.default_rng([seed, 1])
        self.order: list[int] = []
        self.epoch = 0

    def next_batch(self) -> list[int]:
        batch: list[int] = []
        while len(batch) < self.batch_size:
            if not self.order:
                self.order = self.rng.permutation(self.size).tolist()
                self.epoch += 1
            batch.append(self.order.pop())
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "augment_rng": self.augment_rng.bit_generator.state,
            "order": list(self.order),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.augment_rng.bit_generator.state = state["augment_rng"]
        self.order, self.epoch = list(state["order"]), int(state["epoch"])


def check_labels(labels: Tensor, num_classes: int) -> None:
    valid = labels[labels != IGNORE_INDEX]
    if valid.numel() and int(valid.max()) >= num_classes:
        raise ValueError(
            f"label {int(valid.max())} found; the model has {num_classes} classes (and 255 = void)"
        )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Run:
    """Everything one training run mutates: saved to ``resume.pt`` and restored by ``--resume``."""

    model: FCNBase
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: Sampler
    step: int = 0
    elapsed: float = 0.0

    def save(self, path: Path, config: dict[str, Any]) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "step": self.step,
            "elapsed": self.elapsed,
            "config": json.dumps(config, sort_keys=True),
        }
        temporary = path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(path)

    def load(self, path: Path, config: dict[str, Any]) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = json.loads(state["config"])
        changed = sorted(
            k for k in set(saved) | set(config) if k not in RESUMABLE and saved.get(k) != config.get(k)
        )
        if changed:
            raise ValueError(f"{path} was written with other settings: {', '.join(changed)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])


RESUMABLE = {
    "iterations",
    "epochs",
    "checkpoint_every",
    "eval_every",
    "resume",
    "device",
    "progress",
    "threads",
}
"""Settings that may change between a run and its resumption."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True, help="VOC or SBD folder to train on")
    data.add_argument("--split", default="train", help="training split (default: train)")
    data.add_argument(
        "--val-data", type=Path, default=None, help="folder for the final evaluation (default: --data)"
    )
    data.add_argument("--val-split", default="val", help="evaluation split (default: val)")
    data.add_argument(
        "--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="random crop (void-padded)"
    )
    data.add_argument(
        "--scale", type=float, nargs=2, default=(1.0, 1.0), metavar=("MIN", "MAX"), help="random scale"
    )
    data.add_argument("--flip", action="store_true", help="random horizontal flips")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", default="fcn8s", choices=["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"])
    model.add_argument(
        "--width", type=float, default=1.0, help="channel width multiplier (1.0 = the paper's net)"
    )
    model.add_argument(
        "--init",
        default="none",
        choices=["none", "vgg16", "checkpoint"],
        help="none (kaiming), vgg16 (torchvision VGG16 .pth), checkpoint (previous stage .safetensors or "
        "pytorch-fcn Caffe-converted .pth; layers copied by name)",
    )
    model.add_argument("--init-from", type=Path, default=None, help="the file --init vgg16/checkpoint reads")
    model.add_argument(
        "--normalization",
        default="auto",
        choices=["auto", *NORMALIZATIONS],
        help="input normalisation (auto: from the init checkpoint; Caffe for .pth; else ImageNet)",
    )
    model.add_argument("--name", default=None, help="model name in the metadata (default: the architecture)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--loss", default="sum", choices=list(LOSS_DEFAULTS), help="sum (reference) or mean per pixel"
    )
    optim.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: 1e-10 for sum, 1e-4 for mean)"
    )
    optim.add_argument(
        "--momentum", type=float, default=None, help="SGD momentum (default 0.99 sum, 0.9 mean)"
    )
    optim.add_argument(
        "--optimizer",
        default="sgd",
        choices=["sgd", "adam"],
        help="sgd (reference) or adam (--momentum = beta1)",
    )
    optim.add_argument("--weight-decay", type=float, default=5e-4)
    optim.add_argument("--batch-size", type=int, default=1)
    length = optim.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=int, default=None, help="optimizer steps (default 100000)")
    length.add_argument("--epochs", type=float, default=None, help="passes over the training split")
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out", type=Path, required=True, help="run folder: log.csv, resume.pt, model.safetensors"
    )
    run.add_argument("--seed", type=int, default=1337)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    run.add_argument("--no-amp", dest="amp", action="store_false", help="disable mixed precision on CUDA")
    run.add_argument(
        "--checkpoint-every", type=int, default=1000, help="write resume.pt every N steps (0: never)"
    )
    run.add_argument(
        "--eval-every", type=int, default=0, help="evaluate on the val split every N steps (0: never)"
    )
    run.add_argument("--resume", action="store_true", help="continue from <out>/resume.pt")
    run.add_argument(
        "--no-progress", dest="progress", action="store_false", help="log lines instead of a bar"
    )
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.init != "none" and args.init_from is None:
        parser.error(f"--init {args.init} needs --init-from FILE")
    if args.init_from is not None and not args.init_from.is_file():
        parser.error(f"--init-from {args.init_from}: no such file")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.scale[0] <= 0 or args.scale[0] > args.scale[1]:
        parser.error("--scale needs 0 < MIN <= MAX")


def main(argv: list[str] | None = None) -> tuple[FCNBase, ModelMetadata]:
    """Run the CLI; returns the trained model and the metadata written into ``<out>/model.safetensors``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    args.lr = LOSS_DEFAULTS[args.loss]["lr"] if args.lr is None else args.lr
    args.momentum = LOSS_DEFAULTS[args.loss]["momentum"] if args.momentum is None else args.momentum
    config = json.loads(json.dumps(vars(args), default=str))  # plain JSON values, as resume.pt stores them
    command = "python -m training.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    return train(args, config, command)


def train(args: argparse.Namespace, config: dict[str, Any], command: str) -> tuple[FCNBase, ModelMetadata]:
    """Train, evaluate and save as ``args`` says (see ``build_parser``)."""
    device = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = args.amp and device.type == "cuda"
    torch.manual_seed(args.seed)
    dataset = open_dataset(args.data, args.split)
    val_dataset = open_dataset(args.val_data or args.data, args.val_split)
    steps_per_epoch = math.ceil(len(dataset) / args.batch_size)
    iterations = (
        round(args.epochs * steps_per_epoch) if args.epochs is not None else (args.iterations or 100_000)
    )
    augment = Augment(scale=tuple(args.scale), crop=tuple(args.crop) if args.crop else None, flip=args.flip)

    model, metadata, init_description = initial_model(args)
    model.to(device).train()
    groups = param_groups(model, args.lr, args.weight_decay)
    if args.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)
    else:
        optimizer = torch.optim.Adam(groups, lr=args.lr, betas=(args.momentum, 0.999))
    run = Run(
        model,
        optimizer,
        torch.amp.GradScaler("cuda", enabled=amp),
        Sampler(len(dataset), args.batch_size, args.seed),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    resume_path, log_path = args.out / RESUME_FILE, args.out / LOG_FILE
    if args.resume:
        if not resume_path.is_file():
            raise FileNotFoundError(f"--resume: {resume_path} does not exist")
        run.load(resume_path, config)
        print(f"resumed {resume_path} at step {run.step}")
    elif log_path.exists():
        log_path.unlink()

    print(
        f"{args.arch} width {model.width}: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"init: {init_description}\n{len(dataset)} training images ({args.data}, {args.split}), "
        f"{iterations} steps of {args.batch_size} on {device}{' with AMP' if amp else ''}; "
        f"{args.optimizer}, loss {args.loss}, lr {args.lr:g}, momentum {args.momentum}"
    )
    new_log = not log_path.exists()
    with log_path.open("a", newline="") as log_file:
        log = csv.writer(log_file)
        if new_log:
            log.writerow(LOG_FIELDS)
        bar = tqdm(total=iterations, initial=run.step, desc="train", unit="step", disable=not args.progress)
        window_start, window_images = time.perf_counter(), 0
        pixel_loss = float("nan")
        while run.step < iterations:
            step_start = time.perf_counter()
            samples = [augment(dataset[i], run.sampler.augment_rng) for i in run.sampler.next_batch()]
            images, labels = collate(samples)
            check_labels(labels, model.num_classes)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(normalize_batch(images, metadata.normalization))
            loss, pixels = segmentation_loss(logits, labels, args.loss)
            optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(optimizer)
            run.scaler.update()
            run.step += 1
            run.elapsed += time.perf_counter() - step_start
            step_loss = float(loss.detach())
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss became {step_loss} at step {run.step}: lower --lr")
            window_images += len(samples)
            rate = window_images / max(time.perf_counter() - window_start, 1e-9)
            pixel_loss = step_loss * len(samples) / max(pixels, 1) if args.loss == "sum" else step_loss
            log.writerow([run.step, run.sampler.epoch, f"{step_loss:.6g}", f"{pixel_loss:.6g}", f"{rate:.2f}",
                          f"{run.elapsed:.1f}"])  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{pixel_loss:.4f}/px", img_s=f"{rate:.1f}")
            if not args.progress and (run.step % 50 == 0 or run.step == iterations):
                print(f"step {run.step}/{iterations} loss/px {pixel_loss:.4f} {rate:.1f} img/s", flush=True)
            if run.step % 100 == 0:
                window_start, window_images = time.perf_counter(), 0
                log_file.flush()
            if args.checkpoint_every and run.step % args.checkpoint_every == 0:
                run.save(resume_path, config)
            if args.eval_every and run.step % args.eval_every == 0 and run.step < iterations:
                interim = evaluate_model(model, val_dataset, metadata, device, args.batch_size, args.progress)
                tqdm.write(f"step {run.step}: mean IU {100 * interim.mean_iu:.1f} on {args.val_split}")
        bar.close()
    if args.checkpoint_every:
        run.save(resume_path, config)

    eval_start = time.perf_counter()
    result = evaluate_model(model, val_dataset, metadata, device, args.batch_size, args.progress)
    metadata = replace(
        metadata,
        training={
            "command": command,
            "init": init_description,
            "data": str(args.data),
            "split": args.split,
            "images": len(dataset),
            "iterations": run.step,
            "epochs": round(run.step / steps_per_epoch, 2),
            "batch_size": args.batch_size,
            "loss": args.loss,
            "lr": args.lr,
            "optimizer": args.optimizer,
            "momentum": args.momentum,
            "weight_decay": args.weight_decay,
            "augment": {"scale": list(args.scale), "crop": args.crop, "flip": args.flip},
            "seed": args.seed,
            "device": str(device),
            "amp": amp,
            "train_seconds": round(run.elapsed, 1),
            "final_loss_per_pixel": None if math.isnan(pixel_loss) else round(pixel_loss, 5),
        },
        metrics={
            "data": str(args.val_data or args.data),
            "split": args.val_split,
            "images": len(val_dataset),
            **scores_to_json(result, metadata.classes),
        },
    )
    save_checkpoint(args.out / MODEL_FILE, model, metadata)
    (args.out / "metrics.json").write_text(json.dumps(metadata.metrics, indent=2) + "\n")
    print(format_table(metadata.name, result, metadata.classes))
    print(
        f"\ntrained {run.step} steps ({metadata.training['epochs']} epochs) in {run.elapsed / 60:.1f} min, "
        f"evaluated {len(val_dataset)} images in {time.perf_counter() - eval_start:.1f} s: "
        f"mean IU {100 * result.mean_iu:.1f}, pixel acc. {100 * result.pixel_accuracy:.1f}\n"
        f"wrote {args.out / MODEL_FILE}, {args.out / 'metrics.json'}, {log_path}"
    )
    return model, metadata


if __name__ == "__main__":
    main()
