"""The epoch loop of `maskkit train`: the `Trainer` trains what engine.build makes from the options,
epoch by epoch, and engine.checkpoint's RunKeeper records each epoch in the run folder. Saving and
restoring every state resuming needs (`checkpoint`, `load_last`) sit beside the loop that changes
that state, which is what keeps them in step: on the CPU an interrupted then resumed run ends with
the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import signal
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from maskkit.contract import runfolder
from maskkit.contract.errors import MaskkitError, RunFailure, Terminated
from maskkit.data.loader import collate
from maskkit.engine.build import build_data, build_optimisation, build_training_model, make_scheduler
from maskkit.engine.checkpoint import EpochResult, RunKeeper, Validation, restore_rng, rng_states
from maskkit.engine.devices import autocast_dtype, resolve_device
from maskkit.engine.distributed import Distributed
from maskkit.engine.loop import EpochState, NonFiniteLoss, TrainingState, evaluate, train_one_epoch
from maskkit.engine.loss import MaskLoss
from maskkit.engine.plots import BATCH_TILES, draw_train_batch
from maskkit.contract.progress import RunClock, progress_bar
from maskkit.engine.runtime import seed_everything, stop_signals_set_flag
from maskkit.engine.tracking import Tracker
from maskkit.options import TrainOptions


class Interrupted(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C or a `stop` callback) after writing last.pt."""


class TerminatedRun(Interrupted, Terminated):
    """Training stopped by SIGTERM after writing last.pt (exit 143)."""


class Trainer:
    """One training run: the data and optimisation engine.build makes from the options, trained
    epoch by epoch, each epoch recorded by a RunKeeper (rank 0 alone writes)."""

    def __init__(self, run_dir: Path, manifest: pd.DataFrame, options: TrainOptions, config: dict,
                 show_progress: bool | None = None, resumed: bool = False, dist: Distributed | None = None) -> None:
        self.run_dir, self.options, self.config = run_dir, options, config
        self.dist = dist or Distributed()
        self.device = self.dist.device(resolve_device(options.device))
        self.amp_dtype = autocast_dtype(self.device, options.precision)
        self.show_bar = show_progress if self.dist.main else False
        self.stop_requested = False
        self.stop_signal: int | None = None  # the signal that asked to stop (runtime.stop_signals_set_flag)
        seed_everything(options.seed)
        if self.device.type == "cuda":
            # Autotuning pays off because every batch has one shape: training drops the short last
            # batch, and validation runs at the training batch size with its last batch padded.
            torch.backends.cudnn.benchmark = True
        self.data = build_data(manifest, options, config, self.device, self.amp_dtype, self.dist,
                               aug=runfolder.aug_pipeline(run_dir, config))
        self.model = build_training_model(options, config["img_size"], self.device, resumed)
        self.train_model = self.dist.wrap(self.model, self.device)  # under DDP, the wrapped model
        self.loss = MaskLoss.from_options(options)
        self.opt = build_optimisation(self.model, options, self.data.steps_per_epoch, self.device, self.amp_dtype)
        self.state = TrainingState()
        self.keeper = RunKeeper(run_dir, self.dist.main, options.epochs, options.patience,
                                self.data.val_rows, self.data.val_set)
        self.clock: RunClock | None = None  # the whole run's ETA, set by fit

    def eval_model(self) -> torch.nn.Module:
        return self.opt.ema.module if self.opt.ema is not None else self.model

    # -- last.pt --

    def checkpoint(self) -> dict:
        """last.pt: every state resuming needs."""
        return {
            "epoch": self.state.epoch,
            "progress": dataclasses.asdict(self.state),
            "model": self.model.state_dict(),
            "ema": self.opt.ema.state_dict() if self.opt.ema is not None else None,
            "optimizer": self.opt.optimizer.state_dict(),
            "scheduler": self.opt.scheduler.state_dict(),
            "scaler": self.opt.scaler.state_dict(),
            "rng": rng_states(loader=self.data.train_loader.generator, cutmix=self.opt.cutmix_generator),
        }

    def load_last(self, replan: bool = False) -> None:
        """Restore last.pt; `replan`: the schedule is re-planned for options.epochs (an extended run).
        A last.pt whose states do not fit this run (edited, or of another model) is one line, exit 2."""
        saved = runfolder.read_last(self.run_dir)
        try:
            self._restore(saved, replan)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise MaskkitError(f"{self.run_dir / runfolder.LAST}: its states do not fit this run "
                               f"({type(exc).__name__}); start a new run") from None

    def _restore(self, saved: dict, replan: bool) -> None:
        self.model.load_state_dict(saved["model"])
        if self.opt.ema is not None:
            self.opt.ema.load_state_dict(saved["ema"])
        self.opt.optimizer.load_state_dict(saved["optimizer"])
        if replan:
            self.opt.scheduler = make_scheduler(self.opt.optimizer, self.options, self.data.steps_per_epoch)
        else:
            self.opt.scheduler.load_state_dict(saved["scheduler"])
        self.opt.scaler.load_state_dict(saved["scaler"])
        state = dict(saved["progress"])
        self.state = TrainingState(**{**state, "current": EpochState(**state["current"])})
        restore_rng(saved["rng"], loader=self.data.train_loader.generator, cutmix=self.opt.cutmix_generator)
        self.opt.scheduler.step_update(self.state.global_step)

    # -- train_batch.jpg --

    def first_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of epoch 1's first training batch (its first BATCH_TILES images: each is
        augmented from its own seed) as the model gets it, before CutMix: drawn from a copy of the
        sampler, so training's own loader and generators are untouched."""
        sampler = copy.copy(self.data.sampler)
        sampler.set_epoch(0)
        sampler.skip = 0
        keys = list(itertools.islice(iter(sampler), min(self.options.batch_size, BATCH_TILES)))
        images, targets, _ = collate(self.data.train_set.__getitems__(keys))
        with torch.no_grad():
            images = self.data.train_on_device.train_images(images, targets["draw"], 0)
        return images, targets["label"]

    def write_train_batch(self) -> None:
        """RUN/train_batch.jpg, once: a resumed run writes it only when it is missing."""
        path = self.run_dir / runfolder.TRAIN_BATCH
        if not self.dist.main or path.exists():
            return
        images, labels = self.first_batch()
        mean = torch.tensor(self.config["mean"], device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.config["std"], device=images.device).view(1, -1, 1, 1)
        pixels = (images.float() * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        draw_train_batch(pixels.permute(0, 2, 3, 1).cpu().numpy(), labels.tolist(), path)

    # -- one epoch --

    def train_epoch(self, epoch: int, stop: Callable[[int, int], bool] | None) -> bool:
        """Train one epoch (from the saved step when resuming); False when stopped on request."""
        current, steps = self.state.current, self.data.steps_per_epoch
        self.data.sampler.set_epoch(epoch)
        self.data.sampler.skip = current.step * self.options.batch_size
        bar = progress_bar(f"epoch {epoch + 1}/{self.options.epochs}", steps,
                           fields="loss {loss:.3f}  {rate:.0f} img/s  data wait {wait:.0%}", completed=current.step,
                           show=self.show_bar, every_steps=max(1, steps // 10), clock=self.clock,
                           clock_offset=epoch * steps, on_advance=self.log_step(epoch),
                           loss=float("nan"), rate=0.0, wait=0.0)
        sync_every = 1 if self.device.type == "cpu" else 25

        def stopping(step: int) -> bool:
            asked = stop is not None and stop(epoch, step)
            if not self.dist.enabled:
                return asked or self.stop_requested
            if step % sync_every == 0 or step == steps:  # all ranks stop at the same step
                self.stop_requested = self.dist.any(self.stop_requested, self.device)
                return asked or self.stop_requested
            return asked

        try:
            with bar:
                return train_one_epoch(self.train_model, self.data.train_loader, self.loss, self.opt,
                                       self.data.train_on_device, self.state, stopping, bar=bar, steps=steps,
                                       check_every=sync_every)
        except NonFiniteLoss as exc:
            raise RunFailure(
                f"{self.run_dir}: the loss became NaN/inf in epoch {epoch + 1} (step {exc.step}); "
                f"last.pt keeps the last good state ({self.state.epoch} epoch(s) done): lower --lr"
                + (" or use --precision fp32" if self.amp_dtype is not None else "")
            ) from None

    def log_step(self, epoch: int) -> Callable[[int, dict], None] | None:
        """The progress bar's per-step hook: the step's loss, learning rate and speed to the tracker
        (on the steps the loop measured them)."""
        tracker = self.keeper.tracker
        if tracker is None:
            return None

        def log(done: int, fields: dict) -> None:
            if "loss" in fields:
                tracker.step(self.state.global_step, epoch + 1, {
                    "loss": fields["loss"], "lr": self.opt.optimizer.param_groups[0]["lr"], "img_s": fields["rate"]})
        return log

    def validate(self) -> Validation | None:
        """The validation fold's metrics, class probabilities and rows; None with `--fold all`."""
        if self.data.val_loader is None:
            return None
        self.dist.copy_from_main(self.eval_model())
        return Validation(*evaluate(self.eval_model(), self.data.val_loader, self.data.on_device, self.loss,
                                    self.data.val_set.targets["true_label"], dist=self.dist))

    def epoch_result(self) -> EpochResult:
        """The epoch just trained: its metrics row (counters summed over processes) and validation."""
        current = self.state.current
        loss_sum, seen = self.dist.sum([current.loss_sum, current.seen], self.device)
        row = {"epoch": self.state.epoch + 1, "seconds": round(current.seconds, 2),
               "lr": self.opt.optimizer.param_groups[0]["lr"], "train_loss": loss_sum / max(seen, 1)}
        return EpochResult(row, current, seen, self.validate())

    # -- the loop --

    def fit(self, stop: Callable[[int, int], bool] | None = None,
            on_epoch: Callable[[int, dict], bool] | None = None) -> TrainingState:
        """Train up to options.epochs (or an early stop); `Interrupted` once last.pt is written when
        stopped. The tracker (rank 0) logs every step and epoch, and is closed however fit ends.

        `on_epoch(epochs_done, validation metrics)` is called once each validated epoch is recorded
        (tune reports it to its pruner); True stops the run there like `stop`."""
        steps = self.data.steps_per_epoch
        self.clock = RunClock(self.state.epoch * steps + self.state.current.step, self.options.epochs * steps)
        if self.dist.main:
            self.write_train_batch()
            self.keeper.tracker = Tracker(self.run_dir, self.options, self.config, self.state.global_step)
        try:
            return self._fit(stop, on_epoch)
        finally:
            if self.keeper.tracker is not None:
                self.keeper.tracker.close()
                self.keeper.tracker = None

    def _fit(self, stop: Callable[[int, int], bool] | None,
             on_epoch: Callable[[int, dict], bool] | None) -> TrainingState:
        with stop_signals_set_flag(self):
            while self.state.epoch < self.options.epochs and not self.state.finished:
                if not self.train_epoch(self.state.epoch, stop):  # stopped mid-epoch: last.pt holds the step reached
                    self.keeper.save_last(self.checkpoint())
                    raise self.interruption()
                result = self.epoch_result()
                self.keeper.record(self.state, result, self.eval_model(), self.checkpoint)
                if (on_epoch is not None and result.validation is not None and not self.state.finished
                        and on_epoch(self.state.epoch, result.validation.metrics)):
                    raise Interrupted()  # last.pt of this epoch is written
                self.stop_requested = self.dist.any(self.stop_requested, self.device)
                if self.stop_requested and not self.state.finished:  # Ctrl-C during validation
                    raise self.interruption()
        return self.state

    def interruption(self) -> Interrupted:
        return TerminatedRun() if self.stop_signal == signal.SIGTERM else Interrupted()
