"""The loops every command shares, as plain functions (in the manner of timm's train.py):
`train_one_epoch`, `evaluate` (validation metrics) and `predict_probs`, over one inference loop,
`infer`, whose parts `next_batch` and `tta_outputs` `predict`'s ensemble of models shares. `OnDevice` moves a loader batch to the device (normalising uint8 batches
there) and gives the autocast context.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from maskkit.contract.errors import MaskkitError
from maskkit.contract.labels import NUM_CLASSES, TASKS
from maskkit.data.gpu_augment import augment_batch, image_seeds
from maskkit.data.loader import DataWait, UnreadableImage
from maskkit.data.presets import normalize_batch
from maskkit.engine.distributed import Distributed, unwrap
from maskkit.engine.loss import cutmix, mixup, vertical_cutmix
from maskkit.engine.metrics import scores
from maskkit.engine.models import class_probs, head_task_probs
from maskkit.contract.progress import ProgressBar, progress_bar


@dataclass(frozen=True)
class OnDevice:
    """Batch -> device: uint8 batches normalised there when `normalize` = (mean, std), channels_last
    on CUDA; `autocast()` with `amp_dtype` (None: fp32).

    `augment` (a data.gpu_augment.BatchAugment): training batches arrive as uint8 crops and are
    augmented and normalised on the device, each image from its own seed (run `seed`, epoch, row).
    `pad_to`: inference pads a short last batch to this many images (the padding's outputs are
    dropped), so with cudnn.benchmark no new shape is autotuned at the end of every pass."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    normalize: tuple[Sequence[float], Sequence[float]] | None = None
    augment: object | None = None
    seed: int = 0
    pad_to: int | None = None

    def images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.normalize is not None:
            images = normalize_batch(images, *self.normalize)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def train_images(self, images: torch.Tensor, rows: torch.Tensor, epoch: int) -> torch.Tensor:
        """A training batch on the device: `images` with the batch augmentation when there is one,
        seeded per image by `rows` (the loader's per-draw seeds, targets["draw"], or dataset rows)."""
        if self.augment is None:
            return self.images(images)
        images = augment_batch(images.to(self.device, non_blocking=True), image_seeds(self.seed, epoch, rows),
                               self.augment)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def padded(self, images: torch.Tensor) -> torch.Tensor:
        """`images` (on the device) with its last image repeated up to `pad_to` rows."""
        short = (self.pad_to or 0) - len(images)
        if short <= 0:
            return images
        padded = torch.cat([images, images[-1:].expand(short, *images.shape[1:])])
        return padded.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else padded

    def targets(self, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)


# --- training --------------------------------------------------------------------------------

@dataclass
class EpochState:
    """Progress inside the current epoch (saved in last.pt when stopped mid-epoch)."""

    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0
    wait: float = 0.0


@dataclass
class TrainingState:
    """Where training stands across epochs: epochs done, step, best epoch (saved in last.pt)."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    best_f1: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # epochs since the best
    finished: bool = False
    current: EpochState = field(default_factory=EpochState)


@dataclass
class Optimisation:
    """What one training step updates besides the model."""

    optimizer: torch.optim.Optimizer
    scheduler: object  # a timm scheduler: step_update(global_step)
    scaler: torch.amp.GradScaler
    ema: object | None = None  # timm.utils.ModelEmaV3
    cutmix: float = 0.0  # probability of CutMix per batch
    cutmix_generator: torch.Generator | None = None  # draws every batch mix (CutMix and MixUp)
    cutmix_mode: str = "box"  # or vertical: options.CUTMIX_MODES
    mixup: float = 0.0  # probability of MixUp per batch (cutmix + mixup <= 1: one mix at most)
    mixup_alpha: float = 0.4


class NonFiniteLoss(RuntimeError):
    """The running loss became NaN/inf at (epoch step)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


def train_step(model: torch.nn.Module, images: torch.Tensor, targets: dict[str, torch.Tensor], loss_fn,
               opt: Optimisation, on_device: OnDevice) -> torch.Tensor:
    """One optimiser update on a batch (CutMix with probability `opt.cutmix`, else MixUp with probability
    `opt.mixup`); returns the loss."""
    generator = opt.cutmix_generator
    draw = float(torch.rand((), generator=generator)) if opt.cutmix > 0 or opt.mixup > 0 else 1.0
    with on_device.autocast():
        if draw < opt.cutmix:
            images, perm, lam = (vertical_cutmix(images, targets["label"], generator) if opt.cutmix_mode == "vertical"
                                 else cutmix(images, generator))
            loss = loss_fn.mixed(model(images), targets, perm, lam)
        elif draw < opt.cutmix + opt.mixup:
            images, perm, lam = mixup(images, generator, opt.mixup_alpha)
            loss = loss_fn.mixed(model(images), targets, perm, lam)
        else:
            loss = loss_fn(model(images), targets)
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    return loss


def train_one_epoch(model: torch.nn.Module, loader, loss_fn, opt: Optimisation, on_device: OnDevice,
                    state: TrainingState, stop: Callable[[int], bool], bar: ProgressBar | None = None,
                    check_every: int = 1, steps: int | None = None) -> bool:
    """Train over `loader` from `state.current`'s step; False when `stop(step)` asked to stop.

    Updates `state` (global step, the epoch's counters) as it goes, so a stop at any step can be
    saved and resumed exactly. Raises NonFiniteLoss when the running loss stops being finite.
    """
    current = state.current
    model.train()
    wait = DataWait()
    loss_sum = torch.zeros((), dtype=torch.float64, device=on_device.device)
    seen_before, started = current.seen, time.perf_counter()

    def close() -> None:
        current.loss_sum += float(loss_sum)
        current.seconds += time.perf_counter() - started
        current.wait += wait.seconds

    def check() -> None:
        if not torch.isfinite(loss_sum):
            close()
            raise NonFiniteLoss(current.step)

    try:
        for images, targets, rows in wait.iterate(loader):
            draws = targets.pop("draw", rows)  # per draw, not per image: --balanced duplicates differ
            images, targets = on_device.train_images(images, draws, state.epoch), on_device.targets(targets)
            loss = train_step(model, images, targets, loss_fn, opt, on_device)
            state.global_step += 1
            opt.scheduler.step_update(state.global_step)
            if opt.ema is not None:
                opt.ema.update(unwrap(model), step=state.global_step)
            loss_sum += loss.detach().double() * len(images)
            current.step += 1
            current.seen += len(images)
            if current.step % check_every == 0 or current.step == steps:
                check()
            if bar is not None:
                fields = {}
                if current.step % check_every == 0:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    fields = {"loss": float(loss.detach()), "rate": (current.seen - seen_before) / elapsed,
                              "wait": wait.seconds / elapsed}
                bar.advance(1, **fields)
            if stop(current.step):
                check()
                close()
                return False
    except NonFiniteLoss:
        raise
    except Exception:
        if stop(current.step):  # Ctrl-C also stopped the loader's workers
            close()
            return False
        raise
    check()
    close()
    return True


# --- inference ---------------------------------------------------------------------------------

@dataclass
class Inference:
    """What `infer` collected: dataset rows, class probabilities (N, 18), per-task probabilities,
    and the summed loss when a loss function was given."""

    rows: np.ndarray
    probs: np.ndarray
    task_probs: dict[str, np.ndarray]
    loss_sum: float = 0.0


def next_batch(iterator):
    """The loader's next batch, or None at its end. An image a loader worker could not read is a
    one-line error naming the file (not the worker's traceback)."""
    try:
        return next(iterator)
    except StopIteration:
        return None
    except UnreadableImage as exc:  # raised in a loader worker: keep the one line that names the file
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise MaskkitError(lines[-1].split(": ", 1)[-1] if len(lines) > 1 else str(exc)) from None


def tta_outputs(model: torch.nn.Module, images: torch.Tensor, on_device: OnDevice,
                tta: str = "none") -> list[dict[str, torch.Tensor]]:
    """The forward outputs (float, padding rows dropped) of each view of a device batch:
    the batch itself, and with tta="flip" its mirror image."""
    n = len(images)
    images = on_device.padded(images)
    views = [images, images.flip(3)] if tta == "flip" else [images]
    outputs = []
    for view in views:
        with on_device.autocast():
            out = model(view)
        outputs.append({k: v[:n].float() for k, v in out.items()})
    return outputs


@torch.no_grad()
def infer(model: torch.nn.Module, loader, on_device: OnDevice, tta: str = "none", loss_fn=None,
          bar: ProgressBar | None = None) -> Inference:
    """The one inference loop: every batch of `loader` through `model` (eval mode), tta="flip"
    averaging with the mirror image. An image a loader worker could not read is a one-line error."""
    model.eval()
    rows, probs, tasks, loss_sum = [], [], {task: [] for task in TASKS}, 0.0
    iterator = iter(loader)
    while (batch := next_batch(iterator)) is not None:
        images, targets, index = batch
        images = on_device.images(images)
        n = len(images)
        views = tta_outputs(model, images, on_device, tta)
        if loss_fn is not None:
            loss_sum += float(loss_fn(views[0], on_device.targets(targets))) * n
        probs.append((sum(class_probs(out) for out in views) / len(views)).cpu().numpy())
        per_view = [head_task_probs(out) for out in views]
        for task in TASKS:
            tasks[task].append((sum(p[task] for p in per_view) / len(views)).cpu().numpy())
        rows.append(index.numpy())
        if bar is not None:
            bar.advance(n)
    if not rows:
        empty = np.zeros((0, NUM_CLASSES))
        return Inference(np.zeros(0, dtype=np.int64), empty, {t: np.zeros((0, n)) for t, n in TASKS.items()})
    return Inference(np.concatenate(rows), np.concatenate(probs),
                     {task: np.concatenate(p) for task, p in tasks.items()}, loss_sum)


def predict_probs(model: torch.nn.Module, loader, n: int, on_device: OnDevice, tta: str = "none",
                  show_progress: bool | None = None) -> np.ndarray:
    """(n, 18) class probabilities for the loader's images, each row placed by the dataset's index."""
    with progress_bar("predicting", n, show=show_progress) as bar:
        result = infer(model, loader, on_device, tta=tta, bar=bar)
    probs = np.zeros((n, NUM_CLASSES), dtype=np.float64)
    probs[result.rows] = result.probs
    return probs


def score(true_label: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Validation scores of class probabilities: `val_f1`, `val_acc` and `f1_<task>`, as `maskkit score`
    computes them from the argmax (engine.metrics.scores)."""
    result = scores(true_label, probs.argmax(1))
    return {"val_f1": result["macro_f1"], "val_acc": result["accuracy"],
            **{f"f1_{task}": result[f"f1_{task}"] for task in TASKS}}


def gather_inference(result: Inference, dist: Distributed) -> Inference:
    """One `Inference` of the whole set from every rank's part (rows, probabilities, loss)."""
    if not dist.enabled:
        return result
    parts = dist.gather((result.rows, result.probs, result.task_probs, result.loss_sum))
    return Inference(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                     {task: np.concatenate([p[2][task] for p in parts]) for task in result.task_probs},
                     float(sum(p[3] for p in parts)))


def evaluate(model: torch.nn.Module, loader, on_device: OnDevice, loss_fn,
             true_label: np.ndarray, dist: Distributed | None = None) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Validation: (metrics incl. val_loss, class probabilities (N, 18), dataset rows), one row per
    image (an unreadable image the loader replaced by its neighbour counts once).

    `dist` (engine.distributed.Distributed): each rank's loader holds its share of the images; the
    results of all ranks are gathered first, so every rank gets the metrics of the whole set."""
    result = infer(model, loader, on_device, loss_fn=loss_fn)
    if dist is not None:
        result = gather_inference(result, dist)
    rows, first = np.unique(result.rows, return_index=True)
    probs = result.probs[first]
    metrics = score(true_label[rows], probs)
    metrics["val_loss"] = result.loss_sum / max(len(first), 1)
    return metrics, probs, rows
