"""`maskkit train`: one fold of a person-grouped manifest -> a run folder (docs/formats.md, "Run folder").

This module keeps what timm's train.py `main()` keeps: the run folder's setup, resume, and the epoch
loop (the `Trainer`: building the loaders, model, optimizer and schedule, saving and restoring every
state resuming needs). The options live in maskkit.options, the step loops in maskkit.engine.loop,
the loss in maskkit.engine.loss, run control in maskkit.engine.runtime, the run folder's files in
maskkit.contract.runfolder. Why over 400 lines: exact resume touches every piece of state, and
keeping its save and restore beside the code that creates that state is what keeps them in step.

Reproducibility: everything random is seeded from `--seed`: the model's initialisation, the order
and augmentation of every epoch (drawn from (seed, epoch) by the sampler, per item by the dataset),
cutmix (a generator saved in last.pt). last.pt is written at every epoch end and, on Ctrl-C, at the
step reached, so `--resume` continues exactly where training stopped: on the CPU, an interrupted
then resumed run ends with the same weights as an uninterrupted one.

Resume never ignores an option: one that differs from config.json (other than RUNTIME_OPTIONS) is
refused, naming each difference. A larger `--epochs` extends the run: the schedule is re-planned
for the new total and continues from the step reached, so every step after the resume has the
learning rate of a run planned for the new total from the start (the steps before it had the old
plan's, so the weights differ from such a run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import random
import shutil
import sys
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maskkit.contract import runfolder
from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.files import (Inputs, WriteError, atomic_path, console, examples, folder_lock,
                                    remove_stale_temps, write_csv)
from maskkit.contract.manifest import check_images_exist, file_sha256, read_manifest
from maskkit.contract.predictions import prediction_frame
from maskkit.engine.devices import autocast_dtype, default_workers, resolve_device, use_threads
from maskkit.engine.distributed import Distributed, env_rank
from maskkit.options import TrainOptions
from maskkit.engine.loop import EpochState, NonFiniteLoss, OnDevice, Optimisation, Progress, evaluate, train_one_epoch
from maskkit.engine.runtime import deterministic, seed_everything, sigint_sets_flag

AUTO_FOLDS, AUTO_SPLIT_SEED = 5, 42  # the split made on the fly from a dataset folder
# Options that may differ when resuming (they change where and how fast, not what is learned).
RUNTIME_OPTIONS = ("device", "workers", "cache", "threads", "wandb")


class Interrupted(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C or a `stop` callback) after writing last.pt."""


# --- the data ----------------------------------------------------------------------------------

def manifest_from_folder(data: str | Path) -> pd.DataFrame:
    """The 5-fold person split (seed 42) of a dataset folder, made on the fly."""
    from maskkit.contract.layout import load_train
    from maskkit.data.folds import make_manifest

    return make_manifest(load_train(data), AUTO_FOLDS, AUTO_SPLIT_SEED, source=str(data))


def load_source(source: str | Path) -> tuple[pd.DataFrame, bool]:
    """(manifest, made_here): a manifest CSV as given, or the on-the-fly split of a dataset folder."""
    source = Path(source)
    if source.is_dir():
        return manifest_from_folder(source), True
    if not source.exists():
        raise MaskkitError(f"{source}: not found (give a manifest CSV from maskkit split, or DATA/train)")
    return read_manifest(source), False


# --- the run folder's config ---------------------------------------------------------------------

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


def training_rows(manifest: pd.DataFrame, options: TrainOptions) -> pd.Series:
    """Which manifest rows train: all of them with `--fold all`, else those outside the fold."""
    if options.all_folds:
        return pd.Series(True, index=manifest.index)
    return manifest["fold"] != options.fold


def image_shape(manifest: pd.DataFrame, sample: int = 25) -> tuple[int, int]:
    """(width, height) of the dataset's images: the median over the first readable headers of
    `sample` images (unreadable ones are left to the loader, which names them)."""
    from maskkit.data.loader import image_size

    sizes = []
    for path in manifest["path"].head(sample):
        try:
            sizes.append(image_size(path))
        except Exception:  # noqa: BLE001 - PIL raises several types for a broken header
            continue
    if not sizes:
        raise MaskkitError(f"{manifest['path'].iloc[0]}: the first {sample} training images are unreadable "
                           "(check the files, or pass --crop full/competition)")
    sizes = np.array(sizes)
    return int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1]))


def build_config(options: TrainOptions, manifest_path: Path, source: str, manifest: pd.DataFrame) -> dict:
    """config.json, format 2: the options once, plus what is derived from them and the data
    (the centre crop `--crop auto` chose from the images' shape, which predict and cam reuse).
    Returned as the view `runfolder.read_config` gives (what is written is `stored_config` of it)."""
    from maskkit.data.presets import parse_crop, resolve_crop
    from maskkit.engine.models import model_defaults, resolve_backbone

    defaults = model_defaults(options.backbone)
    train_rows = training_rows(manifest, options)
    stored = {
        "format": runfolder.CONFIG_FORMAT,
        "options": options.to_dict(),
        "timm_name": resolve_backbone(options.backbone),
        "mean": list(defaults["mean"]),
        "std": list(defaults["std"]),
        "crop": list(parse_crop(options.crop) or resolve_crop("auto", image_shape(manifest))),
        "source": source,
        "manifest": runfolder.MANIFEST,
        "manifest_sha256": file_sha256(manifest_path),
        "train_images": int(train_rows.sum()),
        "val_images": int((~train_rows).sum()),
        "train_persons": int(manifest.loc[train_rows, "person"].nunique()),
        "val_persons": int(manifest.loc[~train_rows, "person"].nunique()),
        "versions": package_versions(),
        "command": sys.argv,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return runfolder.config_view(stored)


# --- training ------------------------------------------------------------------------------------

def device_side(device: torch.device, aug: str) -> tuple[bool, bool]:
    """(normalise on the device, augment on the device). On CUDA the loader ships uint8 crops and
    the GPU normalises (4x fewer bytes, less CPU per image), and the basic recipe's flips, noise and
    brightness/contrast run on the GPU batch too (data/gpu_augment.py); on the CPU the loader does all."""
    on_cuda = device.type == "cuda"
    return on_cuda, on_cuda and aug == "basic"


class Trainer:
    """One training run: model, optimiser, schedule, loaders and the run folder."""

    def __init__(self, run_dir: Path, manifest: pd.DataFrame, options: TrainOptions, config: dict,
                 progress: bool | None = None, resumed: bool = False, dist: Distributed | None = None) -> None:
        from maskkit.data.loader import ImageDataset, make_loader
        from maskkit.data.presets import build_transform, eval_transform
        from maskkit.data.gpu_augment import BatchAugment
        from maskkit.data.sampling import ResumableSampler, ShardSampler, balanced_weights, targets_of
        from maskkit.engine.loss import MaskLoss
        from maskkit.engine.models import build_model, to_channels_last

        self.run_dir, self.options, self.config = run_dir, options, config
        self.dist = dist or Distributed()
        self.device = self.dist.device(resolve_device(options.device))
        self.amp_dtype = autocast_dtype(self.device, options.precision)
        self.show_bar = progress if self.dist.main else False
        self.stop_requested = False
        seed_everything(options.seed)
        if self.device.type == "cuda":
            # Autotuning pays off because every batch has one shape: training drops the short last
            # batch, and validation runs at the training batch size with its last batch padded.
            torch.backends.cudnn.benchmark = True

        trains = training_rows(manifest, options)
        self.train_rows = manifest[trains].reset_index(drop=True)
        self.val_rows = manifest[~trains].reset_index(drop=True)  # empty with --fold all
        img_size, mean, std = tuple(config["img_size"]), config["mean"], config["std"]
        crop = tuple(config["crop"])
        normalize_on_device, self.augment_on_device = device_side(self.device, options.aug)
        loader_normalizes = not normalize_on_device
        self.on_device = OnDevice(self.device, self.amp_dtype, (mean, std) if normalize_on_device else None,
                                  pad_to=options.batch_size if self.device.type == "cuda" else None)
        self.train_on_device = dataclasses.replace(
            self.on_device, augment=BatchAugment(tuple(mean), tuple(std)) if self.augment_on_device else None,
            seed=options.seed)
        train_targets = targets_of(self.train_rows, options.old_age)
        val_targets = targets_of(self.val_rows, options.old_age)
        caches = self._caches(crop)
        self.train_set = ImageDataset(self.train_rows["path"], train_targets, img_size,
                                      build_transform("none" if self.augment_on_device else options.aug, img_size,
                                                      mean, std, crop, normalize=loader_normalizes),
                                      cache=caches[0][0], valid=caches[0][1], crop=crop, seed=options.seed)
        self.val_set = None if options.all_folds else ImageDataset(
            self.val_rows["path"], val_targets, img_size,
            eval_transform(img_size, mean, std, crop, normalize=loader_normalizes),
            cache=caches[1][0], valid=caches[1][1], crop=crop, seed=options.seed)
        world = self.dist.world_size
        if len(self.train_set) < options.batch_size * world:
            raise MaskkitError(
                f"--batch-size {options.batch_size}: x {world} processes is more than the {len(self.train_set)} "
                "training images; use a smaller one"
            )
        weights = balanced_weights(train_targets["label"][self.train_set.rows]) if options.balanced else None
        # By default the machine's cores are shared among the processes torchrun started on it.
        workers = (max(1, default_workers(self.device) // self.dist.local_world_size) if options.workers is None
                   else options.workers)
        self.sampler = ResumableSampler(len(self.train_set), options.seed, weights, self.dist.rank, world)
        self.train_loader = make_loader(self.train_set, options.batch_size, shuffle=True, workers=workers,
                                        seed=options.seed, device=self.device, drop_last=True, sampler=self.sampler)
        # On CUDA validation runs at the training batch size: the shapes cudnn already tuned.
        val_batch = options.batch_size * (1 if self.device.type == "cuda" else 2)
        self.val_loader = None
        if self.val_set is not None:
            val_sampler = ShardSampler(len(self.val_set), self.dist.rank, world) if self.dist.enabled else None
            self.val_loader = make_loader(self.val_set, val_batch, shuffle=False, workers=workers, seed=options.seed,
                                          device=self.device, sampler=val_sampler)
        self.steps_per_epoch = len(self.train_set) // (options.batch_size * world)

        self.model = build_model(options.backbone, heads=options.heads, age_regression=options.age_regression,
                                 pretrained=options.pretrained and not resumed,  # last.pt has the weights
                                 weights=None if resumed else options.weights,
                                 img_size=img_size, dropout=options.dropout).to(self.device)
        if self.device.type == "cuda":
            to_channels_last(self.model)
        self.train_model = self.dist.wrap(self.model, self.device)  # the model itself without DDP
        self.loss = MaskLoss.from_options(options)
        self.opt = Optimisation(
            optimizer=self._optimizer(), scheduler=None,
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16),
            cutmix=options.cutmix, cutmix_generator=torch.Generator().manual_seed(options.seed + 1))
        self.opt.scheduler = self.make_scheduler()
        if options.ema:
            from timm.utils import ModelEmaV3

            self.opt.ema = ModelEmaV3(self.model, decay=options.ema_decay, use_warmup=True)
        self.progress = Progress()
        self.wandb = None

    # kept as attributes for callers of the earlier Trainer (benchmarks/train_wait.py)
    optimizer = property(lambda self: self.opt.optimizer)
    scheduler = property(lambda self: self.opt.scheduler)
    ema = property(lambda self: self.opt.ema)

    def _optimizer(self) -> torch.optim.Optimizer:
        """timm's factory: weight decay on weights only (norms and biases are excluded)."""
        from timm.optim import create_optimizer_v2

        return create_optimizer_v2(self.model, opt=self.options.opt, lr=self.options.lr,
                                   weight_decay=self.options.weight_decay)

    def make_scheduler(self):
        """timm's scheduler factory, stepped per update, planned for options.epochs: linear warmup
        from lr/100 over `warmup` epochs (at most half the run), then `sched` down to lr/100."""
        from timm.scheduler import create_scheduler_v2

        options, steps = self.options, self.steps_per_epoch
        total = options.epochs * steps
        warmup_steps = min(int(round(options.warmup * steps)), total // 2)
        scheduler, _ = create_scheduler_v2(
            self.opt.optimizer, sched=options.sched, num_epochs=options.epochs, min_lr=options.lr * 0.01,
            warmup_lr=options.lr * 0.01, warmup_epochs=warmup_steps / steps,
            decay_epochs=max(options.epochs / 3, 1 / steps),  # step: lr x 0.1 at each third of the run
            decay_rate=0.1 if options.sched == "step" else 1.0,  # poly: power 1, a linear decay
            step_on_epochs=False, updates_per_epoch=steps)
        return scheduler

    def _caches(self, crop) -> tuple:
        """RAM caches (images, valid) of the training and validation images at the working size (or Nones)."""
        from maskkit.data.loader import build_cache, cache_bytes, cache_fits
        from maskkit.data.presets import work_size

        size = work_size(self.config["img_size"], crop)
        mode, n = self.options.cache, len(self.train_rows) + len(self.val_rows)
        if mode == "none" or (mode == "auto" and not cache_fits(n, size)):
            if mode == "auto":
                console.print(f"RAM cache off: {cache_bytes(n, size) / 2**30:.1f} GiB would not fit half the free memory")
            return (None, None), (None, None)
        val_cache = build_cache(self.val_rows["path"].tolist(), size) if len(self.val_rows) else (None, None)
        return build_cache(self.train_rows["path"].tolist(), size), val_cache

    # -- checkpoints --

    def eval_model(self) -> torch.nn.Module:
        return self.opt.ema.module if self.opt.ema is not None else self.model

    def state(self) -> dict:
        return {
            "epoch": self.progress.epoch,
            "progress": dataclasses.asdict(self.progress),
            "model": self.model.state_dict(),
            "ema": self.opt.ema.state_dict() if self.opt.ema is not None else None,
            "optimizer": self.opt.optimizer.state_dict(),
            "scheduler": self.opt.scheduler.state_dict(),
            "scaler": self.opt.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "loader": self.train_loader.generator.get_state(),
                "cutmix": self.opt.cutmix_generator.get_state(),
            },
        }

    def save_last(self) -> None:
        if not self.dist.main:
            return
        runfolder.save_checkpoint(self.state(), self.run_dir / runfolder.LAST)

    def load_last(self, replan: bool = False) -> None:
        """Restore last.pt; `replan`: the schedule is re-planned for options.epochs (an extended run)."""
        state = runfolder.read_last(self.run_dir)
        self.model.load_state_dict(state["model"])
        if self.opt.ema is not None and state.get("ema") is not None:
            self.opt.ema.load_state_dict(state["ema"])
        try:
            self.opt.optimizer.load_state_dict(state["optimizer"])
        except ValueError:  # before timm's factory: one parameter group (norms and biases decayed too)
            raise MaskkitError(
                f"{self.run_dir / runfolder.LAST}: its optimizer state predates this maskkit (weight decay now "
                "spares norms and biases); predict and cam still use the run; to train on, start a new run "
                f"with --config {self.run_dir / runfolder.CONFIG}") from None
        if replan:
            self.opt.scheduler = self.make_scheduler()
        else:
            self.opt.scheduler.load_state_dict(state["scheduler"])
        self.opt.scaler.load_state_dict(state["scaler"])
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
        self.opt.cutmix_generator.set_state(rng["cutmix"])
        self.opt.scheduler.step_update(self.progress.global_step)

    # -- one epoch --

    def train_epoch(self, epoch: int, stop: Callable[[int, int], bool] | None) -> bool:
        """Train one epoch (from the saved step when resuming); False when stopped on request."""
        from maskkit.engine.progress import progress_bar

        current = self.progress.current
        self.sampler.set_epoch(epoch)
        self.sampler.skip = current.step * self.options.batch_size
        bar = progress_bar(f"epoch {epoch + 1}/{self.options.epochs}", self.steps_per_epoch,
                           fields="loss {loss:.3f}  {rate:.0f} img/s  data wait {wait:.0%}", completed=current.step,
                           show=self.show_bar, loss=float("nan"), rate=0.0, wait=0.0)

        sync_every = 1 if self.device.type == "cpu" else 25

        def stopping(step: int) -> bool:
            asked = stop is not None and stop(epoch, step)
            if not self.dist.enabled:
                return asked or self.stop_requested
            if step % sync_every == 0 or step == self.steps_per_epoch:  # all ranks stop at the same step
                self.stop_requested = self.dist.any(self.stop_requested, self.device)
                return asked or self.stop_requested
            return asked

        try:
            with bar:
                return train_one_epoch(self.train_model, self.train_loader, self.loss, self.opt, self.train_on_device,
                                       self.progress, stopping, bar=bar, steps=self.steps_per_epoch,
                                       check_every=sync_every)
        except NonFiniteLoss as exc:
            raise RunFailure(
                f"{self.run_dir}: the loss became NaN/inf in epoch {epoch + 1} (step {exc.step}); "
                f"last.pt keeps the last good state ({self.progress.epoch} epoch(s) done): lower --lr"
                + (" or use --precision fp32" if self.amp_dtype is not None else "")
            ) from None

    def validate(self) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """Metrics, class probabilities (N, 18) and dataset rows of the validation fold."""
        self.dist.copy_from_main(self.eval_model())
        return evaluate(self.eval_model(), self.val_loader, self.on_device, self.loss,
                        self.val_set.targets["true_label"], dist=self.dist)

    # -- the loop --

    def fit(self, stop: Callable[[int, int], bool] | None = None) -> Progress:
        from maskkit.engine.plots import plot_run as plot

        options, main = self.options, self.dist.main

        def plot_run(run_dir: Path) -> None:
            if main:
                plot(run_dir)

        with sigint_sets_flag(self):
            while self.progress.epoch < options.epochs and not self.progress.finished:
                epoch = self.progress.epoch
                if not self.train_epoch(epoch, stop):  # stopped mid-epoch: last.pt holds the step reached
                    self.save_last()
                    plot_run(self.run_dir)
                    raise Interrupted()
                current = self.progress.current
                loss_sum, seen = self.dist.sum([current.loss_sum, current.seen], self.device)
                row = {"epoch": epoch + 1, "seconds": round(current.seconds, 2),
                       "lr": self.opt.optimizer.param_groups[0]["lr"],
                       "train_loss": loss_sum / max(seen, 1)}
                if self.val_set is None:  # --fold all: best.pt is the latest (in the end the final) weights;
                    # the metrics row keeps empty validation columns
                    metrics, improved = {}, True
                    self.progress.best_epoch, self.progress.stale = epoch + 1, 0
                    if main:
                        runfolder.save_checkpoint({"model": self.eval_model().state_dict(), "epoch": epoch + 1,
                                                   "val_f1": None}, self.run_dir / runfolder.BEST)
                else:
                    metrics, probs, rows = self.validate()
                    improved = metrics["val_f1"] > self.progress.best_f1
                row.update(metrics)
                if self.val_set is not None and improved:
                    self.progress.best_f1, self.progress.best_epoch, self.progress.stale = metrics["val_f1"], epoch + 1, 0
                    if main:
                        self._save_best(epoch + 1, metrics["val_f1"], probs, rows)
                elif self.val_set is not None:
                    self.progress.stale += 1
                if main:
                    runfolder.append_metrics(self.run_dir, row)
                    if self.wandb is not None:
                        self.wandb.log(row, step=int(row["epoch"]))
                    self._report(row, current, improved, seen)
                self.progress.epoch = epoch + 1
                self.progress.current = EpochState()
                if options.patience and self.progress.stale >= options.patience:
                    console.print(f"early stop: no better val macro F1 for {options.patience} epochs")
                    self.progress.finished = True
                if self.progress.epoch >= options.epochs:
                    self.progress.finished = True
                self.save_last()
                self.stop_requested = self.dist.any(self.stop_requested, self.device)
                if self.stop_requested and not self.progress.finished:  # Ctrl-C during validation
                    plot_run(self.run_dir)
                    raise Interrupted()
        plot_run(self.run_dir)
        return self.progress

    def _save_best(self, epoch: int, val_f1: float, probs: np.ndarray, rows: np.ndarray) -> None:
        runfolder.save_checkpoint({"model": self.eval_model().state_dict(), "epoch": epoch, "val_f1": val_f1},
                                  self.run_dir / runfolder.BEST)
        frame = prediction_frame(self.val_rows["path"].iloc[rows].tolist(), probs)
        frame["person"] = self.val_rows["person"].iloc[rows].to_numpy()
        frame["label"] = self.val_set.targets["true_label"][rows]
        write_csv(frame, self.run_dir / runfolder.VAL_PREDS)

    def _report(self, row: dict, current: EpochState, improved: bool, seen: float) -> None:
        rate = seen / max(current.seconds, 1e-9)  # all ranks' images
        share = current.wait / max(current.seconds, 1e-9)
        validation = ("" if "val_f1" not in row else
                      f"val_loss {row['val_loss']:.4f}  val_f1 {row['val_f1']:.4f} "
                      f"(mask {row['f1_mask']:.3f} gender {row['f1_gender']:.3f} age {row['f1_age']:.3f})  ")
        console.print(
            f"epoch {row['epoch']}/{self.options.epochs}  loss {row['train_loss']:.4f}  {validation}"
            f"lr {row['lr']:.2e}  {rate:.0f} img/s  data wait {share:.0%} ({current.wait:.1f}s)  "
            f"{current.seconds:.0f}s" + ("  *best" if improved else ""),
            markup=False, highlight=False,
        )


# --- entry point -------------------------------------------------------------------------------

def check_wandb(project: str | None):
    if not project:
        return None
    try:
        import wandb
    except ImportError:
        raise MaskkitError(f"--wandb {project}: wandb is not installed (pip install wandb, or drop --wandb)") from None
    return wandb


def _start_wandb(trainer: Trainer, run_dir: Path, config: dict) -> None:
    wandb = check_wandb(trainer.options.wandb)
    if wandb is None:
        return
    trainer.wandb = wandb.init(project=trainer.options.wandb, name=run_dir.name, config=config,
                               id=hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16], resume="allow")


def _new_run(source: str | Path, options: TrainOptions, out: Path, name: str | None, overwrite: bool):
    """Check everything, then write the run folder's manifest.csv and config.json."""
    options.check()
    check_wandb(options.wandb)
    resolve_device(options.device)
    manifest, made_here = load_source(source)
    folds = sorted(manifest["fold"].unique())
    if not options.all_folds and options.fold not in folds:
        raise MaskkitError(f"--fold {options.fold}: {source} has folds {examples(folds, 10)}; pick one of them, "
                           "or all (a full-data model)")
    n_train = int(training_rows(manifest, options).sum())
    if n_train == 0:
        raise MaskkitError(f"{source}: nothing left to train on outside fold {options.fold}")
    if n_train < options.batch_size:
        raise MaskkitError(f"--batch-size {options.batch_size}: larger than the {n_train} training images; use a smaller one")
    check_images_exist(manifest, str(source))
    run_dir = runfolder.prepare_run_dir(Path(out), name or options.run_name, overwrite)
    if made_here:
        write_csv(manifest, run_dir / runfolder.MANIFEST)
    else:  # byte for byte, so its sha256 names the user's file
        with atomic_path(run_dir / runfolder.MANIFEST) as tmp:
            shutil.copyfile(source, tmp)
    config = build_config(options, run_dir / runfolder.MANIFEST, str(source), manifest)
    runfolder.write_json(runfolder.stored_config(config), run_dir / runfolder.CONFIG)
    if made_here:
        console.print(f"split {source} into {AUTO_FOLDS} person folds (seed {AUTO_SPLIT_SEED}): "
                      f"{run_dir / runfolder.MANIFEST}")
    return run_dir, config, manifest


def resume_options(run_dir: Path, options: TrainOptions | None, given: Iterable[str] | None = None):
    """(options, config, manifest, extended) of a run to resume.

    `options`: what the caller asks for; `given`: the option names the user set (None: all of
    `options`). Runtime options are taken from them; any other difference is refused, except a
    larger `epochs`, which extends the run (`extended` is then True).
    """
    runfolder.require(run_dir, runfolder.LAST)
    config = runfolder.read_config(run_dir)
    saved = TrainOptions.from_dict(runfolder.saved_options(config), str(run_dir / runfolder.CONFIG))
    extended = False
    if options is not None:
        names = [f.name for f in dataclasses.fields(TrainOptions)] if given is None else list(given)
        changed = [n for n in names if n not in RUNTIME_OPTIONS and n != "epochs"
                   and getattr(options, n) != getattr(saved, n)]
        if changed:
            detail = ", ".join(f"--{n.replace('_', '-')} {_shown(getattr(options, n))} (run: {_shown(getattr(saved, n))})"
                               for n in changed)
            raise MaskkitError(f"{run_dir}: --resume continues the run as configured, but {detail} differ; "
                               "drop them, or start a new run (--config "
                               f"{run_dir / runfolder.CONFIG} --name NEW, with the changes)")
        if "epochs" in names and options.epochs != saved.epochs:
            if options.epochs < saved.epochs:
                raise MaskkitError(f"--epochs {options.epochs}: {run_dir} is planned for {saved.epochs} epochs; "
                                   "resume can only extend a run (a larger --epochs)")
            saved.epochs, extended = options.epochs, True
        for key in RUNTIME_OPTIONS:
            if given is None or key in names:
                setattr(saved, key, getattr(options, key))
    saved.check()
    check_wandb(saved.wandb)
    manifest_path = run_dir / runfolder.MANIFEST
    manifest = read_manifest(manifest_path)
    if config.get("manifest_sha256") and file_sha256(manifest_path) != config["manifest_sha256"]:
        raise MaskkitError(f"{manifest_path}: changed since the run started (its sha256 differs from config.json); start a new run")
    check_images_exist(manifest, str(manifest_path))
    if extended:
        config["options"] = saved.to_dict()  # written once last.pt has loaded (see train)
    return saved, config, manifest, extended


def _shown(value) -> str:
    return "x".join(map(str, value[::-1])) if isinstance(value, (tuple, list)) else str(value)


@contextmanager
def holding_run_folder(run_dir: Path):
    """Rank 0 (or the only process) locks the run folder, clears a killed run's temporary files, and
    turns a failed write into one line saying how many epochs are saved and how to resume."""
    if env_rank() != 0:  # under torchrun rank 0 alone holds the run folder (and writes it)
        yield
        return
    with folder_lock(run_dir, "train"):
        remove_stale_temps(run_dir)
        try:
            yield
        except WriteError as exc:
            if exc.exit_code != RunFailure.exit_code or not (run_dir / runfolder.LAST).is_file():
                raise
            done = len(runfolder.read_metrics(run_dir))
            raise RunFailure(f"{exc}; {done} epoch(s) finished and saved: resume with "
                             f"maskkit train --resume {run_dir}") from None


def train(
    source: str | Path | None = "data/train",
    options: TrainOptions | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    stop: Callable[[int, int], bool] | None = None,
    progress: bool | None = None,
    given: Iterable[str] | None = None,
    exist_ok: bool | None = None,
) -> Path:
    """Train one fold and write the run folder OUT/NAME; returns its path.

    `resume`: a run folder to continue from its last.pt (see `resume_options`; `given` names the
    options the user set, None meaning all of `options`). `stop(epoch, step)` is asked after every
    step and every epoch (0-based epoch); True stops like Ctrl-C: last.pt is written and
    `Interrupted` (a KeyboardInterrupt) is raised. `exist_ok` is the old name of `overwrite`.

    Under torchrun (engine.distributed) every process trains its share; rank 0 alone checks the
    inputs, writes the run folder and prints, and the others take its run folder and config.

    Where commands start: the run folder is checked against the inputs (never inside a dataset,
    never holding the manifest trained on), locked for the run (a second run on it exits 2 naming
    this process), cleared of a killed run's temporary files, and a failed write says how many
    epochs finished and how to resume.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise MaskkitError(f"{run_dir}: run folder not found (give a run folder written by maskkit train)")
    else:
        chosen = options or TrainOptions()
        run_dir = Path(out) / (name or chosen.run_name)
        Inputs.of(source if source is not None else "data/train", chosen.weights).check_folder(run_dir, "run folder")
    with holding_run_folder(run_dir):
        overwrite = overwrite or bool(exist_ok)
        extended = False
        if resume is not None:
            run_dir = Path(resume)
            options, config, manifest, extended = resume_options(run_dir, options, given)
            dist = Distributed.from_env(options.device)
        else:
            options = options or TrainOptions()
            dist = Distributed.from_env(options.device)
            run_dir, config, manifest = dist.from_main(
                lambda: _new_run(source if source is not None else "data/train", options, Path(out), name, overwrite))
        try:
            return _fit(run_dir, options, config, manifest, extended, resume is not None, stop, progress, dist)
        finally:
            dist.close()


def _fit(run_dir: Path, options: TrainOptions, config: dict, manifest: pd.DataFrame, extended: bool,
         resumed: bool, stop, progress: bool | None, dist: Distributed) -> Path:
    """Train (or go on training) the prepared run folder; returns it."""
    use_threads(options.threads)
    device = dist.device(resolve_device(options.device))
    main = dist.main

    def say(line: str) -> None:
        if main:
            console.print(line, markup=False, highlight=False)
    with deterministic(device):
        try:
            trainer = Trainer(run_dir, manifest, options, config, progress=progress, resumed=resumed, dist=dist)
        except BaseException:  # pretrained download failed, Ctrl-C while caching...: leave no half run
            if not resumed and main:
                runfolder.remove_run(run_dir)
            raise
        if resumed:
            trainer.load_last(replan=extended)
            if extended and main:
                runfolder.write_json(runfolder.stored_config(config), run_dir / runfolder.CONFIG)
            if extended and trainer.progress.epoch < options.epochs:
                trainer.progress.finished = False
                say(f"extending {run_dir} to {options.epochs} epochs (schedule re-planned)")
            if trainer.progress.finished:
                say(f"{run_dir}: already finished ({trainer.progress.epoch} epochs); nothing to do "
                    "(a larger --epochs extends it)")
                return run_dir
            say(f"resuming {run_dir} at epoch {trainer.progress.epoch + 1}, step {trainer.progress.current.step}")
        else:
            trainer.save_last()  # a Ctrl-C in the first epoch can resume too
        if main:
            _start_wandb(trainer, run_dir, config)
        processes = f", {dist.world_size} processes (DDP)" if dist.enabled else ""
        say(f"training {options.backbone} ({options.heads}{' + age regression' if options.age_regression else ''}) "
            f"on {len(trainer.train_set)} images of {config['train_persons']} persons, "
            + ("every person (--fold all: no validation, best.pt = the final weights), " if options.all_folds else
               f"validating on fold {options.fold} ({len(trainer.val_set)} images of {config['val_persons']} persons), ")
            + f"input {options.img_size[1]}x{options.img_size[0]} (WxH), crop {tuple(config['crop'])} (HxW "
            f"fractions), {device}{processes}: {run_dir}")
        try:
            result = trainer.fit(stop)
        except Interrupted:
            say(f"stopped; last.pt written: resume with: maskkit train --resume {run_dir}")
            raise
        finally:
            if trainer.wandb is not None:
                trainer.wandb.finish()
    if main and options.all_folds:
        say(f"trained {result.epoch} epochs on every person (best.pt = the final weights); "
            f"next: maskkit predict {run_dir} DATA/eval -o preds.csv")
    elif main:
        best = runfolder.read_metrics(run_dir).query("epoch == @result.best_epoch").iloc[0]
        say(f"best epoch {result.best_epoch}: val macro F1 {best['val_f1']:.4f} (mask {best['f1_mask']:.3f}, "
            f"gender {best['f1_gender']:.3f}, age {best['f1_age']:.3f}); next: maskkit predict {run_dir} DATA/eval "
            "-o preds.csv")
    return run_dir
