"""`maskkit train`: one fold of a person-grouped manifest -> a run folder (DESIGN.md, "Run folder").

The run folder holds config.json (every option, enough to rebuild the model and re-run), manifest.csv
(the manifest trained on), metrics.csv (a row per epoch, appended), best.pt (weights of the best
epoch by validation macro F1), last.pt (everything resuming needs), val_preds.csv (the best epoch's
out-of-fold probabilities), confusion.png and curves.png.

Reproducibility: everything random is seeded from `--seed`: the model's initialisation, the order
and augmentation of every epoch (drawn from (seed, epoch) by the sampler, per item by the dataset),
cutmix (a generator saved in last.pt). last.pt is written at every epoch end and, on Ctrl-C, at the
step reached, so `--resume` continues exactly where training stopped: on the CPU, an interrupted
then resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from maskkit.engine.devices import autocast_dtype, default_workers, resolve_device
from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.files import (Inputs, WriteError, atomic_path, console, examples, folder_lock, read_csv,
                                    remove_stale_temps, write_csv)
from maskkit.contract.labels import GENDERS, MASKS, NUM_CLASSES, TASKS, age_group, encode

MANIFEST_COLUMNS = ("path", "person", "gender", "age", "mask", "label", "fold")
METRIC_COLUMNS = ("epoch", "seconds", "lr", "train_loss", "val_loss", "val_f1", "val_acc",
                  "f1_mask", "f1_gender", "f1_age")
RUN_FILES = ("config.json", "manifest.csv", "metrics.csv", "best.pt", "last.pt", "val_preds.csv",
             "confusion.png", "curves.png")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CACHE_MODES = ("auto", "ram", "none")
AUTO_FOLDS, AUTO_SPLIT_SEED = 5, 42  # the split made on the fly from a dataset folder
# Options that may differ when resuming (they change where and how fast, not what is learned).
RUNTIME_OPTIONS = ("device", "workers", "cache", "wandb")


class Interrupted(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C or a `stop` callback) after writing last.pt."""


@dataclass
class TrainOptions:
    """Every option of a training run; saved in config.json["options"] and restored by --resume."""

    backbone: str = "effb2"
    heads: str = "single"  # single (18-way) or multi (mask, gender, age)
    age_weight: float = 0.0  # > 0: age-regression branch, MSE on normalised years, this weight
    old_age: int = 60  # training targets: age >= old_age is the oldest group (validation: 60)
    pretrained: bool = True
    weights: str | None = None
    dropout: float = 0.0
    label_smoothing: float = 0.0
    focal: float = 0.0  # focal-loss gamma; 0 = plain cross-entropy
    balanced: bool = False  # class-balanced sampling (with replacement)
    aug: str = "basic"
    cutmix: float = 0.0  # probability of cutmix per batch
    img_size: tuple[int, int] = (320, 256)  # (H, W)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: float = 1.0  # epochs of linear warmup
    ema: bool = False
    ema_decay: float = 0.999
    patience: int = 0  # stop after this many epochs without a better val F1; 0 = never
    seed: int = 42
    fold: int = 0
    precision: str = "auto"  # CUDA autocast: bf16 where supported, else fp16 (+ GradScaler)
    device: str = "auto"
    workers: int | None = None  # None: chosen from the device and the CPU count
    cache: str = "auto"
    wandb: str | None = None

    def check(self) -> None:
        """Raise MaskkitError on an option out of range (before anything is written)."""
        from maskkit.data.loader import AUGMENTATIONS
        from maskkit.engine.models import HEADS, resolve_backbone

        resolve_backbone(self.backbone)
        problems = [
            (self.heads in HEADS, f"--heads {self.heads!r}: use single or multi"),
            (self.aug in AUGMENTATIONS, f"--aug {self.aug!r}: use none, basic or strong"),
            (self.precision in PRECISIONS, f"--precision {self.precision!r}: use {', '.join(PRECISIONS)}"),
            (self.cache in CACHE_MODES, f"--cache {self.cache!r}: use auto, ram or none"),
            (self.epochs >= 1, f"--epochs {self.epochs}: need at least 1"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: need at least 1"),
            (0 < self.lr < 10 and math.isfinite(self.lr), f"--lr {self.lr}: need a learning rate in (0, 10)"),
            (self.weight_decay >= 0, f"--weight-decay {self.weight_decay}: must be >= 0"),
            (self.warmup >= 0, f"--warmup {self.warmup}: must be >= 0 epochs"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing {self.label_smoothing}: use a value in [0, 1)"),
            (self.focal >= 0, f"--focal {self.focal}: gamma must be >= 0"),
            (0 <= self.cutmix <= 1, f"--cutmix {self.cutmix}: use a probability in [0, 1]"),
            (self.age_weight >= 0, f"--age-weight {self.age_weight}: must be >= 0 (0 turns age regression off)"),
            (30 < self.old_age <= 120, f"--old-age {self.old_age}: use an age in 31..120"),
            (0 <= self.dropout < 1, f"--dropout {self.dropout}: use a value in [0, 1)"),
            (0 < self.ema_decay < 1, f"--ema-decay {self.ema_decay}: use a value in (0, 1)"),
            (self.patience >= 0, f"--patience {self.patience}: must be >= 0 (0 = never stop early)"),
            (self.fold >= 0, f"--fold {self.fold}: must be >= 0"),
            (self.workers is None or self.workers >= 0, f"--workers {self.workers}: must be >= 0"),
            (len(self.img_size) == 2 and min(self.img_size) >= 16, f"--img-size {self.img_size}: need at least 16x16"),
        ]
        for ok, message in problems:
            if not ok:
                raise MaskkitError(message)
        if self.weights is not None and not Path(self.weights).is_file():
            raise MaskkitError(f"{self.weights}: weights file not found (--weights takes a PyTorch state dict)")

    @property
    def age_regression(self) -> bool:
        return self.age_weight > 0


# --- the manifest ----------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check a manifest CSV: columns, values, and no person in two folds (leakage guard)."""
    from maskkit.commands.split import check_persons_disjoint

    fix = "make one with: maskkit split DATA/train -o manifest.csv"
    manifest = read_csv(path, MANIFEST_COLUMNS, fix=fix, dtype={"path": str, "person": str})
    if manifest.empty:
        raise MaskkitError(f"{path}: the manifest has no rows ({fix})")
    for column in ("age", "fold", "label"):
        values = pd.to_numeric(manifest[column], errors="coerce")
        if values.isna().any():
            bad = manifest.loc[values.isna(), "path"].tolist()
            raise MaskkitError(f"{path}: {column} is not a number in {values.isna().sum()} rows ({examples(bad)}); {fix}")
        manifest[column] = values.astype(int if column != "age" else float)
    for column, allowed in (("gender", GENDERS), ("mask", MASKS)):
        bad = ~manifest[column].isin(allowed)
        if bad.any():
            raise MaskkitError(
                f"{path}: {column} must be one of {', '.join(allowed)}; found "
                f"{examples(sorted(set(manifest.loc[bad, column].astype(str))))} ({fix})"
            )
    check_manifest_rows(manifest, str(path), fix)
    check_persons_disjoint(manifest, str(path))
    return manifest.loc[:, list(MANIFEST_COLUMNS)]


def check_manifest_rows(manifest: pd.DataFrame, source: str, fix: str) -> None:
    """Every row names an image once, and a person has one gender and one age in every row."""
    empty = manifest["path"].isna() | (manifest["path"].astype(str).str.strip() == "")
    if empty.any():
        rows = [str(i + 2) for i in manifest.index[empty]]
        raise MaskkitError(f"{source}: empty path in {int(empty.sum())} rows (lines {examples(rows)}); {fix}")
    if manifest["person"].isna().any():
        raise MaskkitError(f"{source}: empty person in {int(manifest['person'].isna().sum())} rows; {fix}")
    repeated = manifest["path"][manifest["path"].duplicated()]
    if len(repeated):
        raise MaskkitError(f"{source}: {len(repeated)} rows repeat an image ({examples(repeated.unique().tolist())}), "
                           f"which would train on it twice; keep one row per image ({fix})")
    for column in ("gender", "age"):
        counts = manifest.groupby("person")[column].nunique()
        mixed = counts[counts > 1].index.tolist()
        if mixed:
            raise MaskkitError(f"{source}: {len(mixed)} persons have different {column}s in different rows "
                               f"({examples(mixed)}); a person has one {column}: correct the rows ({fix})")


def manifest_from_folder(data: str | Path) -> pd.DataFrame:
    """The 5-fold person split (seed 42) of a dataset folder, made on the fly."""
    from maskkit.contract.layout import load_train
    from maskkit.commands.split import make_manifest

    images = load_train(data)
    try:
        return make_manifest(images, AUTO_FOLDS, AUTO_SPLIT_SEED, source=str(data))
    except MaskkitError as exc:  # too few persons: point to split, where the fold count is an option
        raise MaskkitError(f"{exc}; for train, make the manifest first: maskkit split {data} --folds K "
                           "-o folds.csv, then maskkit train folds.csv") from None


def check_images_exist(manifest: pd.DataFrame, source: str) -> None:
    missing = [p for p in manifest["path"] if not os.path.isfile(p)]
    if missing:
        raise MaskkitError(
            f"{source}: {len(missing)} of {len(manifest)} images not found ({examples(missing)}); "
            "run from the folder the manifest's paths are relative to, or re-make it with maskkit split"
        )


def targets_of(rows: pd.DataFrame, old_age: int) -> dict[str, np.ndarray]:
    """Per-image targets: training groups use `old_age`; `true_label` always uses the true groups (60)."""
    from maskkit.engine.models import age_to_target

    mask = rows["mask"].map(MASKS.index).to_numpy(np.int64)
    gender = rows["gender"].map(GENDERS.index).to_numpy(np.int64)
    age = rows["age"].to_numpy(np.float64)
    train_group = age_group(age, old_from=old_age).astype(np.int64)
    return {
        "label": encode(mask, gender, train_group).astype(np.int64),
        "mask": mask,
        "gender": gender,
        "age": train_group,
        "age_years": age_to_target(age).astype(np.float32),
        "true_label": encode(mask, gender, age_group(age)).astype(np.int64),
    }


# --- losses and metrics ------------------------------------------------------------------------

def task_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0, gamma: float = 0.0) -> torch.Tensor:
    """Cross-entropy (with label smoothing), focal-weighted by (1 - p_true) ** gamma when gamma > 0."""
    logits = logits.float()
    loss = F.cross_entropy(logits, target, reduction="none", label_smoothing=smoothing)
    if gamma > 0:
        p_true = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        loss = (1 - p_true) ** gamma * loss
    return loss.mean()


def compute_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], options: TrainOptions) -> torch.Tensor:
    """The training objective: CE/focal on the class (single) or on each task (multi), plus
    `age_weight` x MSE on normalised years when the model has the age-regression branch."""
    smoothing, gamma = options.label_smoothing, options.focal
    if "class" in outputs:
        loss = task_loss(outputs["class"], targets["label"], smoothing, gamma)
    else:
        loss = sum(task_loss(outputs[task], targets[task], smoothing, gamma) for task in TASKS)
    if "age_years" in outputs:
        loss = loss + options.age_weight * F.mse_loss(outputs["age_years"].float(), targets["age_years"].float())
    return loss


def score(true_label: np.ndarray, probs: np.ndarray, task_prob: dict[str, np.ndarray]) -> dict[str, float]:
    """Macro F1 over the 18 classes, accuracy, and the macro F1 of each task."""
    from sklearn.metrics import f1_score

    from maskkit.contract.labels import task_labels

    pred = probs.argmax(1)
    result = {
        "val_f1": float(f1_score(true_label, pred, average="macro", labels=range(NUM_CLASSES), zero_division=0)),
        "val_acc": float((pred == true_label).mean()),
    }
    truth = task_labels(true_label)
    for task, n in TASKS.items():
        result[f"f1_{task}"] = float(f1_score(truth[task], task_prob[task].argmax(1), average="macro",
                                              labels=range(n), zero_division=0))
    return result


def cutmix(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a random box of a shuffled batch into the batch: (images, permutation, lambda = kept area)."""
    batch, _, height, width = images.shape
    lam = float(torch.rand((), generator=generator))
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    perm = torch.randperm(batch, generator=generator).to(images.device)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
    return mixed, perm, 1 - (y1 - y0) * (x1 - x0) / (height * width)


# --- sampling --------------------------------------------------------------------------------

def _make_sampler(n: int, seed: int, weights: np.ndarray | None):
    from maskkit.data.loader import SeededSampler

    class ResumableSampler(SeededSampler):
        """SeededSampler that can sample class-balanced and skip the batches already done this epoch."""

        def __init__(self) -> None:
            super().__init__(n, shuffle=True, seed=seed)
            self.weights = weights
            self.skip = 0

        def __len__(self) -> int:
            return self.n - self.skip

        def __iter__(self):
            if self.weights is None:
                items = list(super().__iter__())
            else:
                rng = np.random.default_rng([self.seed, self.epoch])
                order = rng.choice(self.n, size=self.n, replace=True, p=self.weights)
                seeds = rng.integers(0, 2**63 - 1, size=self.n)
                items = [(int(i), int(s)) for i, s in zip(order, seeds)]
            return iter(items[self.skip:])

    return ResumableSampler()


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling probabilities that give every present class the same share."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()


# --- run folder --------------------------------------------------------------------------------

def package_versions() -> dict[str, str]:
    import albumentations
    import cv2
    import sklearn
    import timm
    import torchvision

    from maskkit import __version__

    return {"maskkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "albumentations": albumentations.__version__, "opencv": cv2.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "scikit-learn": sklearn.__version__}


def write_json(data: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def save_torch(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def prepare_run_dir(out: Path, name: str, exist_ok: bool) -> Path:
    """runs/<name>/, refusing to overwrite a run unless exist_ok (then its files are removed first)."""
    run_dir = Path(out) / name
    if run_dir.exists() and not run_dir.is_dir():
        raise MaskkitError(f"{run_dir}: exists and is not a folder (choose another --name or --out)")
    existing = [f for f in RUN_FILES if (run_dir / f).exists()]
    if existing and not exist_ok:
        raise MaskkitError(
            f"{run_dir}: a run already exists here; continue it with --resume {run_dir}, "
            "choose another --name, or replace it with --exist-ok"
        )
    for file in existing:
        (run_dir / file).unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def plot_run(run_dir: Path) -> None:
    """curves.png (losses and F1 per epoch) and confusion.png (best epoch, rows = true class)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    from maskkit.contract.labels import class_name

    metrics_path, preds_path = run_dir / "metrics.csv", run_dir / "val_preds.csv"
    if metrics_path.is_file():
        metrics = pd.read_csv(metrics_path)
        fig = Figure(figsize=(10, 4), layout="constrained")
        FigureCanvasAgg(fig)
        loss_ax, f1_ax = fig.subplots(1, 2)
        for column in ("train_loss", "val_loss"):
            loss_ax.plot(metrics["epoch"], metrics[column], marker="o", label=column)
        loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
        loss_ax.legend()
        for column in ("val_f1", "f1_mask", "f1_gender", "f1_age"):
            f1_ax.plot(metrics["epoch"], metrics[column], marker="o", label=column)
        f1_ax.set(xlabel="epoch", ylabel="macro F1", title="validation", ylim=(0, 1))
        f1_ax.legend()
        with atomic_path(run_dir / "curves.png") as tmp:
            fig.savefig(tmp, dpi=100)
    if preds_path.is_file():
        preds = pd.read_csv(preds_path)
        matrix = confusion_matrix(preds["label"], preds["ans"], labels=range(NUM_CLASSES))
        share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        fig = Figure(figsize=(11, 10), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        names = [f"{i} {class_name(i)}" for i in range(NUM_CLASSES)]
        ax.set_xticks(range(NUM_CLASSES), names, rotation=90, fontsize=7)
        ax.set_yticks(range(NUM_CLASSES), names, fontsize=7)
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set(xlabel="predicted", ylabel="true", title=f"{run_dir.name}: best epoch, validation fold")
        with atomic_path(run_dir / "confusion.png") as tmp:
            fig.savefig(tmp, dpi=100)


# --- training ------------------------------------------------------------------------------------

@dataclass
class EpochState:
    """Progress inside the current epoch (saved in last.pt when stopped mid-epoch)."""

    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0
    wait: float = 0.0


@dataclass
class Progress:
    """Training progress across epochs (saved in last.pt)."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    best_f1: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # epochs since the best
    finished: bool = False
    current: EpochState = field(default_factory=EpochState)


class Trainer:
    """One training run: model, optimiser, schedule, loaders and the run folder."""

    def __init__(self, run_dir: Path, manifest: pd.DataFrame, options: TrainOptions, config: dict,
                 progress: bool | None = None, resumed: bool = False) -> None:
        from timm.scheduler import CosineLRScheduler

        from maskkit.data.loader import ImageDataset, build_transform, eval_transform, make_loader
        from maskkit.engine.models import build_model, to_channels_last

        self.run_dir, self.options, self.config = run_dir, options, config
        self.device = resolve_device(options.device)
        self.amp_dtype = autocast_dtype(self.device, options.precision)
        self.show_bar = console.is_terminal if progress is None else progress
        self.stop_requested = False
        seed_everything(options.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        fold = options.fold
        self.train_rows = manifest[manifest["fold"] != fold].reset_index(drop=True)
        self.val_rows = manifest[manifest["fold"] == fold].reset_index(drop=True)
        img_size, mean, std = tuple(config["img_size"]), config["mean"], config["std"]
        crop = tuple(config["crop"])
        # On CUDA the loader ships uint8 and the GPU normalises (4x fewer bytes, less CPU per image).
        self.normalize_on_device = self.device.type == "cuda"
        on_cpu = not self.normalize_on_device
        train_targets = targets_of(self.train_rows, options.old_age)
        val_targets = targets_of(self.val_rows, options.old_age)
        train_cache, val_cache = self._caches(crop)
        self.train_set = ImageDataset(self.train_rows["path"], train_targets, img_size,
                                      build_transform(options.aug, img_size, mean, std, crop, normalize=on_cpu),
                                      cache=train_cache[0] if train_cache else None,
                                      valid=train_cache[1] if train_cache else None, crop=crop, seed=options.seed)
        self.val_set = ImageDataset(self.val_rows["path"], val_targets, img_size,
                                    eval_transform(img_size, mean, std, crop, normalize=on_cpu),
                                    cache=val_cache[0] if val_cache else None,
                                    valid=val_cache[1] if val_cache else None, crop=crop, seed=options.seed)
        if len(self.train_set) < options.batch_size:
            raise MaskkitError(
                f"--batch-size {options.batch_size}: larger than the {len(self.train_set)} training images; use a smaller one"
            )
        weights = None
        if options.balanced:
            weights = balanced_weights(train_targets["label"][self.train_set.rows])
        workers = default_workers(self.device) if options.workers is None else options.workers
        self.sampler = _make_sampler(len(self.train_set), options.seed, weights)
        self.train_loader = make_loader(self.train_set, options.batch_size, shuffle=True, workers=workers,
                                        seed=options.seed, device=self.device, drop_last=True, sampler=self.sampler)
        self.val_loader = make_loader(self.val_set, options.batch_size * 2, shuffle=False, workers=workers,
                                      seed=options.seed, device=self.device)
        self.steps_per_epoch = len(self.train_set) // options.batch_size

        self.model = build_model(options.backbone, heads=options.heads, age_regression=options.age_regression,
                                 pretrained=options.pretrained and not resumed,  # last.pt has the weights
                                 weights=None if resumed else options.weights,
                                 img_size=img_size, dropout=options.dropout).to(self.device)
        if self.device.type == "cuda":
            to_channels_last(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        total = options.epochs * self.steps_per_epoch
        warmup = min(int(round(options.warmup * self.steps_per_epoch)), total // 2)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=total, lr_min=options.lr * 0.01,
                                           warmup_t=warmup, warmup_lr_init=options.lr * 0.01,
                                           t_in_epochs=False)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = None
        if options.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=options.ema_decay, use_warmup=True)
        self.cutmix_generator = torch.Generator().manual_seed(options.seed + 1)
        self.progress = Progress()
        self.wandb = None

    def _caches(self, crop) -> tuple:
        """RAM caches of the training and validation images at the working size (or None, None)."""
        from maskkit.data.loader import build_cache, cache_bytes, cache_fits, work_size

        size = work_size(self.config["img_size"], crop)
        mode, n = self.options.cache, len(self.train_rows) + len(self.val_rows)
        if mode == "none" or (mode == "auto" and not cache_fits(n, size)):
            if mode == "auto":
                console.print(f"RAM cache off: {cache_bytes(n, size) / 2**30:.1f} GiB would not fit half the free memory")
            return None, None
        return build_cache(self.train_rows["path"].tolist(), size), build_cache(self.val_rows["path"].tolist(), size)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """A loader batch on the training device: normalised there when it came as uint8, channels_last on CUDA."""
        from maskkit.data.loader import normalize_batch

        images = images.to(self.device, non_blocking=True)
        if self.normalize_on_device:
            images = normalize_batch(images, self.config["mean"], self.config["std"])
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    # -- checkpoints --

    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state(self) -> dict:
        progress = dataclasses.asdict(self.progress)
        return {
            "epoch": self.progress.epoch,
            "progress": progress,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "loader": self.train_loader.generator.get_state(),
                "cutmix": self.cutmix_generator.get_state(),
            },
        }

    def save_last(self) -> None:
        save_torch(self.state(), self.run_dir / "last.pt")

    def load_last(self) -> None:
        path = self.run_dir / "last.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise MaskkitError(f"{path}: unreadable checkpoint ({type(exc).__name__}); start a new run") from None
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        progress = dict(state["progress"])
        progress["current"] = EpochState(**progress["current"])
        self.progress = Progress(**progress)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.train_loader.generator.set_state(rng["loader"])
        self.cutmix_generator.set_state(rng["cutmix"])
        self.scheduler.step_update(self.progress.global_step)

    # -- one epoch --

    def train_epoch(self, epoch: int, stop: Callable[[int, int], bool] | None) -> bool:
        """Train one epoch (from the saved step when resuming); False when stopped on request."""
        from maskkit.data.loader import DataWait

        options, current = self.options, self.progress.current
        self.model.train()
        self.sampler.set_epoch(epoch)
        self.sampler.skip = current.step * options.batch_size
        wait = DataWait()
        bar = self._bar(epoch, current.step)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        check_every = 1 if self.device.type == "cpu" else 25
        seen_before = current.seen
        started = time.perf_counter()
        try:
            for images, targets, _ in wait.iterate(self.train_loader):
                images = self.to_device(images)
                targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
                mix = options.cutmix > 0 and float(torch.rand((), generator=self.cutmix_generator)) < options.cutmix
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    if mix:
                        images, perm, lam = cutmix(images, self.cutmix_generator)
                        outputs = self.model(images)
                        shuffled = {k: v[perm] for k, v in targets.items()}
                        loss = lam * compute_loss(outputs, targets, options) + (1 - lam) * compute_loss(outputs, shuffled, options)
                    else:
                        outputs = self.model(images)
                        loss = compute_loss(outputs, targets, options)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.progress.global_step += 1
                self.scheduler.step_update(self.progress.global_step)
                if self.ema is not None:
                    self.ema.update(self.model, step=self.progress.global_step)
                loss_sum += loss.detach().double() * len(images)
                current.step += 1
                current.seen += len(images)
                if current.step % check_every == 0 or current.step == self.steps_per_epoch:
                    self._check_finite(loss_sum, epoch, current.step)
                if bar is not None:
                    fields = {}
                    if current.step % check_every == 0:
                        elapsed = max(time.perf_counter() - started, 1e-9)
                        fields = {"loss": float(loss.detach()), "rate": (current.seen - seen_before) / elapsed,
                                  "wait": wait.seconds / elapsed}
                    bar[0].update(bar[1], advance=1, **fields)
                if self.stop_requested or (stop is not None and stop(epoch, current.step)):
                    self._check_finite(loss_sum, epoch, current.step)
                    self._close_epoch_counters(current, loss_sum, started, wait)
                    return False
        except Exception:
            if self.stop_requested:  # Ctrl-C also stopped the loader's workers
                self._close_epoch_counters(current, loss_sum, started, wait)
                return False
            raise
        finally:
            if bar is not None:
                bar[0].stop()
        self._check_finite(loss_sum, epoch, current.step)
        self._close_epoch_counters(current, loss_sum, started, wait)
        return True

    def _close_epoch_counters(self, current: EpochState, loss_sum: torch.Tensor, started: float, wait) -> None:
        current.loss_sum += float(loss_sum)
        current.seconds += time.perf_counter() - started
        current.wait += wait.seconds

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        if not torch.isfinite(loss_sum):
            good = self.progress.epoch
            raise RunFailure(
                f"{self.run_dir}: the loss became NaN/inf in epoch {epoch + 1} (step {step}); "
                f"last.pt keeps the last good state ({good} epoch(s) done): lower --lr"
                + (" or use --precision fp32" if self.amp_dtype is not None else "")
            )

    def _bar(self, epoch: int, done: int):
        if not self.show_bar:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        bar = Bar(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f}  {task.fields[rate]:.0f} img/s  "
                             "data wait {task.fields[wait]:.0%}"),
                  TimeRemainingColumn(), console=console, transient=True)
        task = bar.add_task("train", total=self.steps_per_epoch, completed=done,
                            epoch=f"{epoch + 1}/{self.options.epochs}", loss=float("nan"), rate=0.0, wait=0.0)
        bar.start()
        return bar, task

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """Metrics, class probabilities (N, 18) and manifest rows of the validation fold."""
        from maskkit.engine.models import class_probs, task_probs

        model = self.eval_model()
        model.eval()
        probs, rows, tasks = [], [], {task: [] for task in TASKS}
        loss_sum = 0.0
        for images, targets, index in self.val_loader:
            images = self.to_device(images)
            targets = {k: v.to(self.device) for k, v in targets.items()}
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                outputs = model(images)
            outputs = {k: v.float() for k, v in outputs.items()}
            loss_sum += float(compute_loss(outputs, targets, self.options)) * len(images)
            probs.append(class_probs(outputs).cpu().numpy())
            for task, p in task_probs(outputs).items():
                tasks[task].append(p.cpu().numpy())
            rows.append(index.numpy())
        rows = np.concatenate(rows)
        rows, first = np.unique(rows, return_index=True)  # an unreadable image is replaced by its neighbour
        probs = np.concatenate(probs)[first]
        task_prob = {task: np.concatenate(p)[first] for task, p in tasks.items()}
        true = self.val_set.targets["true_label"][rows]
        metrics = score(true, probs, task_prob)
        metrics["val_loss"] = loss_sum / max(len(first), 1)
        return metrics, probs, rows

    # -- the loop --

    def fit(self, stop: Callable[[int, int], bool] | None = None) -> Progress:
        options = self.options
        with _sigint_sets_flag(self):
            while self.progress.epoch < options.epochs and not self.progress.finished:
                epoch = self.progress.epoch
                if not self.train_epoch(epoch, stop):  # stopped mid-epoch: last.pt holds the step reached
                    self.save_last()
                    plot_run(self.run_dir)
                    raise Interrupted()
                current = self.progress.current
                metrics, probs, rows = self.validate()
                row = {"epoch": epoch + 1, "seconds": round(current.seconds, 2),
                       "lr": self.optimizer.param_groups[0]["lr"],
                       "train_loss": current.loss_sum / max(current.seen, 1), **metrics}
                improved = metrics["val_f1"] > self.progress.best_f1
                if improved:
                    self.progress.best_f1, self.progress.best_epoch, self.progress.stale = metrics["val_f1"], epoch + 1, 0
                    self._save_best(epoch + 1, metrics["val_f1"], probs, rows)
                else:
                    self.progress.stale += 1
                self._append_metrics(row)
                self._report(row, current, improved)
                self.progress.epoch = epoch + 1
                self.progress.current = EpochState()
                if options.patience and self.progress.stale >= options.patience:
                    console.print(f"early stop: no better val macro F1 for {options.patience} epochs")
                    self.progress.finished = True
                if self.progress.epoch >= options.epochs:
                    self.progress.finished = True
                self.save_last()
                if self.stop_requested and not self.progress.finished:  # Ctrl-C during validation
                    plot_run(self.run_dir)
                    raise Interrupted()
        plot_run(self.run_dir)
        return self.progress

    def _save_best(self, epoch: int, val_f1: float, probs: np.ndarray, rows: np.ndarray) -> None:
        from maskkit.commands.predict import prediction_frame

        save_torch({"model": self.eval_model().state_dict(), "epoch": epoch, "val_f1": val_f1},
                   self.run_dir / "best.pt")
        frame = prediction_frame(self.val_rows["path"].iloc[rows].tolist(), probs)
        frame["person"] = self.val_rows["person"].iloc[rows].to_numpy()
        frame["label"] = self.val_set.targets["true_label"][rows]
        write_csv(frame, self.run_dir / "val_preds.csv")

    def _append_metrics(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        new = pd.DataFrame([row]).reindex(columns=list(METRIC_COLUMNS))
        if path.is_file():
            old = pd.read_csv(path)
            new = pd.concat([old[old["epoch"] < row["epoch"]], new], ignore_index=True)
        write_csv(new, path)
        if self.wandb is not None:
            self.wandb.log(row, step=int(row["epoch"]))

    def _report(self, row: dict, current: EpochState, improved: bool) -> None:
        rate = current.seen / max(current.seconds, 1e-9)
        share = current.wait / max(current.seconds, 1e-9)
        console.print(
            f"epoch {row['epoch']}/{self.options.epochs}  loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_f1 {row['val_f1']:.4f} "
            f"(mask {row['f1_mask']:.3f} gender {row['f1_gender']:.3f} age {row['f1_age']:.3f})  "
            f"lr {row['lr']:.2e}  {rate:.0f} img/s  data wait {share:.0%} ({current.wait:.1f}s)  "
            f"{current.seconds:.0f}s" + ("  *best" if improved else ""),
            markup=False, highlight=False,
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _sigint_sets_flag(trainer: Trainer):
    """First Ctrl-C: finish the current step, write last.pt, exit 130. A second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:  # a forked loader worker: keep serving batches until told to stop
            return
        trainer.stop_requested = True
        console.print("stopping after this step to write last.pt (Ctrl-C again to stop at once)")
        signal.signal(signal.SIGINT, previous)

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _deterministic(device: torch.device):
    """Deterministic algorithms on the CPU (cheap there), restored afterwards."""
    if device.type != "cpu":
        yield
        return
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


# --- entry point -------------------------------------------------------------------------------

def build_config(options: TrainOptions, manifest_path: Path, source: str, manifest: pd.DataFrame) -> dict:
    from maskkit.data.loader import DEFAULT_CROP
    from maskkit.engine.models import model_defaults, resolve_backbone

    defaults = model_defaults(options.backbone)
    fold = options.fold
    return {
        "backbone": options.backbone,
        "timm_name": resolve_backbone(options.backbone),
        "heads": options.heads,
        "age_regression": options.age_regression,
        "age_weight": options.age_weight,
        "old_age": options.old_age,
        "img_size": list(options.img_size),
        "mean": list(defaults["mean"]),
        "std": list(defaults["std"]),
        "crop": list(DEFAULT_CROP),
        "dropout": options.dropout,
        "fold": fold,
        "seed": options.seed,
        "source": source,
        "manifest": "manifest.csv",
        "manifest_sha256": file_sha256(manifest_path),
        "train_images": int((manifest["fold"] != fold).sum()),
        "val_images": int((manifest["fold"] == fold).sum()),
        "train_persons": int(manifest.loc[manifest["fold"] != fold, "person"].nunique()),
        "val_persons": int(manifest.loc[manifest["fold"] == fold, "person"].nunique()),
        "options": {**dataclasses.asdict(options), "img_size": list(options.img_size)},
        "versions": package_versions(),
        "command": sys.argv,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def check_wandb(project: str | None):
    if not project:
        return None
    try:
        import wandb
    except ImportError:
        raise MaskkitError(f"--wandb {project}: wandb is not installed (pip install wandb, or drop --wandb)") from None
    return wandb


def _load_source(source: str | Path) -> tuple[pd.DataFrame, bool]:
    """(manifest, made_here): a manifest CSV as given, or the on-the-fly split of a dataset folder."""
    source = Path(source)
    if source.is_dir():
        return manifest_from_folder(source), True
    if not source.exists():
        raise MaskkitError(f"{source}: not found (give a manifest CSV from maskkit split, or DATA/train)")
    return read_manifest(source), False


def train(
    source: str | Path | None = "data/train",
    options: TrainOptions | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    exist_ok: bool = False,
    resume: str | Path | None = None,
    stop: Callable[[int, int], bool] | None = None,
    progress: bool | None = None,
) -> Path:
    """Train one fold and write the run folder; returns its path (see `_train`).

    The run folder is locked for the run (a second run on it exits 2), temporary files of a killed
    run are removed, and a failed write says how far training got.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise MaskkitError(f"{run_dir}: run folder not found (give a run folder written by maskkit train)")
    else:
        chosen = options or TrainOptions()
        run_dir = Path(out) / (name or f"{chosen.backbone}-f{chosen.fold}")
        Inputs.of(source, chosen.weights).check_folder(run_dir, "run folder")
    with folder_lock(run_dir, "train"):
        remove_stale_temps(run_dir)
        try:
            return _train(source, options, out, name, exist_ok, resume, stop, progress)
        except WriteError as exc:
            if exc.exit_code != RunFailure.exit_code or not (run_dir / "last.pt").is_file():
                raise
            done = len(pd.read_csv(run_dir / "metrics.csv")) if (run_dir / "metrics.csv").is_file() else 0
            raise RunFailure(f"{exc}; {done} epoch(s) finished and saved: resume with "
                             f"maskkit train --resume {run_dir}") from None


def _train(
    source: str | Path | None = "data/train",
    options: TrainOptions | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    exist_ok: bool = False,
    resume: str | Path | None = None,
    stop: Callable[[int, int], bool] | None = None,
    progress: bool | None = None,
) -> Path:
    """Train one fold and write the run folder; returns its path.

    `resume`: a run folder to continue from its last.pt (training options come from its
    config.json; only device, workers, cache and wandb of `options` apply). `stop(epoch, step)`
    is asked after every step and every epoch (0-based epoch); True stops like Ctrl-C:
    last.pt is written and `Interrupted` (a KeyboardInterrupt) is raised.
    """
    if resume is not None:
        run_dir, options, config, manifest = _resume_setup(Path(resume), options)
    else:
        options = options or TrainOptions()
        options.check()
        check_wandb(options.wandb)
        resolve_device(options.device)
        manifest, made_here = _load_source(source if source is not None else "data/train")
        folds = sorted(manifest["fold"].unique())
        if options.fold not in folds:
            raise MaskkitError(f"--fold {options.fold}: {source} has folds {examples(folds, 10)}; pick one of them")
        n_train = int((manifest["fold"] != options.fold).sum())
        if n_train == 0:
            raise MaskkitError(f"{source}: nothing left to train on outside fold {options.fold}")
        if n_train < options.batch_size:
            raise MaskkitError(f"--batch-size {options.batch_size}: larger than the {n_train} training images; use a smaller one")
        check_images_exist(manifest, str(source))
        run_dir = prepare_run_dir(Path(out), name or f"{options.backbone}-f{options.fold}", exist_ok)
        if made_here:
            write_csv(manifest, run_dir / "manifest.csv")
        else:  # byte for byte, so its sha256 names the user's file
            with atomic_path(run_dir / "manifest.csv") as tmp:
                shutil.copyfile(source, tmp)
        config = build_config(options, run_dir / "manifest.csv", str(source), manifest)
        write_json(config, run_dir / "config.json")
        if made_here:
            console.print(f"split {source} into {AUTO_FOLDS} person folds (seed {AUTO_SPLIT_SEED}): {run_dir / 'manifest.csv'}")

    device = resolve_device(options.device)
    with _deterministic(device):
        try:
            trainer = Trainer(run_dir, manifest, options, config, progress=progress, resumed=resume is not None)
        except BaseException:  # pretrained download failed, Ctrl-C while caching...: leave no half run
            if resume is None:
                _remove_run(run_dir)
            raise
        if resume is not None:
            trainer.load_last()
            if trainer.progress.finished:
                console.print(f"{run_dir}: already finished ({trainer.progress.epoch} epochs); nothing to do")
                return run_dir
            console.print(f"resuming {run_dir} at epoch {trainer.progress.epoch + 1}, step {trainer.progress.current.step}")
        else:
            trainer.save_last()  # a Ctrl-C in the first epoch can resume too
        _start_wandb(trainer, run_dir, config)
        console.print(
            f"training {options.backbone} ({options.heads}{' + age regression' if options.age_regression else ''}) "
            f"on {len(trainer.train_set)} images of {config['train_persons']} persons, validating on fold "
            f"{options.fold} ({len(trainer.val_set)} images of {config['val_persons']} persons), "
            f"{options.img_size[0]}x{options.img_size[1]}, {device}: {run_dir}",
            markup=False, highlight=False,
        )
        try:
            result = trainer.fit(stop)
        except Interrupted:
            console.print(f"stopped; last.pt written: resume with: maskkit train --resume {run_dir}",
                          markup=False, highlight=False)
            raise
        finally:
            if trainer.wandb is not None:
                trainer.wandb.finish()
    best = pd.read_csv(run_dir / "metrics.csv").query("epoch == @result.best_epoch").iloc[0]
    console.print(
        f"best epoch {result.best_epoch}: val macro F1 {best['val_f1']:.4f} (mask {best['f1_mask']:.3f}, "
        f"gender {best['f1_gender']:.3f}, age {best['f1_age']:.3f}); next: maskkit predict {run_dir} DATA/eval -o preds.csv",
        markup=False, highlight=False,
    )
    return run_dir


def _remove_run(run_dir: Path) -> None:
    """Remove the files a new run wrote before it could start (and the folder when that empties it)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _start_wandb(trainer: Trainer, run_dir: Path, config: dict) -> None:
    wandb = check_wandb(trainer.options.wandb)
    if wandb is None:
        return
    trainer.wandb = wandb.init(project=trainer.options.wandb, name=run_dir.name, config=config,
                               id=hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16], resume="allow")


def _resume_setup(run_dir: Path, runtime: TrainOptions | None):
    """Options, config and manifest of an existing run; runtime options (device...) may change."""
    config_path, last_path = run_dir / "config.json", run_dir / "last.pt"
    if not config_path.is_file():
        raise MaskkitError(f"{run_dir}: no config.json (give a run folder written by maskkit train)")
    if not last_path.is_file():
        raise MaskkitError(f"{run_dir}: no last.pt to resume from (start the run again with --exist-ok)")
    try:
        config = json.loads(config_path.read_text())
        saved = dict(config["options"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise MaskkitError(f"{config_path}: not a maskkit run config (start the run again with --exist-ok)") from None
    saved["img_size"] = tuple(saved["img_size"])
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    options = TrainOptions(**{k: v for k, v in saved.items() if k in known})
    if runtime is not None:
        for key in RUNTIME_OPTIONS:
            setattr(options, key, getattr(runtime, key))
    options.check()
    check_wandb(options.wandb)
    manifest_path = run_dir / "manifest.csv"
    manifest = read_manifest(manifest_path)
    if config.get("manifest_sha256") and file_sha256(manifest_path) != config["manifest_sha256"]:
        raise MaskkitError(f"{manifest_path}: changed since the run started (its sha256 differs from config.json); start a new run")
    check_images_exist(manifest, str(manifest_path))
    return run_dir, options, config, manifest
