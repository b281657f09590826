"""The run folder while training (docs/formats.md, "Run folder"): `RunKeeper` records each finished
epoch in one call, the job timm's CheckpointSaver does: the best-epoch decision, the metrics row (also to the tracker),
best.pt and val_preds.csv when the epoch improved, last.pt, the plots and the progress line. Every
file goes to a temporary name and is renamed (contract.files.atomic_path).

A run without validation (`train --fold all`) is the case where every epoch is the best one: best.pt
follows the latest weights (`"val_f1": null`), and there is no val_preds.csv.

Also here: the RNG states last.pt keeps, so that a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maskkit.contract import runfolder
from maskkit.contract.files import console, write_csv
from maskkit.contract.predictions import prediction_frame
from maskkit.data.loader import ImageDataset
from maskkit.engine.loop import EpochState, TrainingState
from maskkit.engine.plots import plot_run


@dataclass
class Validation:
    """What validating one epoch gave: metrics (val_f1, val_loss, f1_*), class probabilities (N, 18)
    and the dataset rows they belong to."""

    metrics: dict[str, float]
    probs: np.ndarray
    rows: np.ndarray


@dataclass
class EpochResult:
    """One finished epoch: its metrics row (without the validation columns), counters and validation."""

    row: dict
    counters: EpochState  # seconds and data wait of the epoch
    seen: float  # images trained, all processes together
    validation: Validation | None  # None without a validation fold (--fold all)


def advance(state: TrainingState, val_f1: float | None, patience: int, epochs: int) -> bool:
    """Move `state` past the epoch just trained; True when that epoch is the best so far (by val
    macro F1, the first of equal ones; without validation every epoch is). `finished` is set at the
    last epoch, or when `patience` epochs in a row brought no better F1 (early stop)."""
    state.epoch += 1
    improved = val_f1 is None or val_f1 > state.best_f1
    if improved:
        state.best_epoch, state.stale = state.epoch, 0
        state.best_f1 = state.best_f1 if val_f1 is None else val_f1
    else:
        state.stale += 1
    state.current = EpochState()
    state.finished = state.epoch >= epochs or bool(patience and state.stale >= patience)
    return improved


def rng_states(**generators: torch.Generator) -> dict:
    """Every random state a training step draws from: torch (CPU, CUDA), numpy, Python, and the
    named `generators` (each saved under its name). Only tensors, lists and numbers, so that last.pt
    loads with `torch.load(weights_only=True)` (no pickled objects, no code run on resume)."""
    numpy = np.random.get_state(legacy=False)
    version, words, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)), "pos": int(numpy["state"]["pos"]),
                      "has_gauss": int(numpy["has_gauss"]), "gauss": float(numpy["gauss"])},
            "python": [version, list(words), gauss_next],
            **{name: generator.get_state() for name, generator in generators.items()}}


def restore_rng(states: dict, **generators: torch.Generator) -> None:
    """Put back what `rng_states` saved (the same named `generators`)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy = states["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    version, words, gauss_next = states["python"]
    random.setstate((version, tuple(words), gauss_next))
    for name, generator in generators.items():
        generator.set_state(states[name])


class RunKeeper:
    """Writes the run folder of a training run; on other processes than rank 0 (`writes` False) it
    only keeps the best-epoch bookkeeping, which every process needs for early stopping."""

    def __init__(self, run_dir: Path, writes: bool, epochs: int, patience: int,
                 val_rows: pd.DataFrame, val_set: ImageDataset | None) -> None:
        self.run_dir, self.writes, self.epochs, self.patience = run_dir, writes, epochs, patience
        self.val_rows, self.val_set = val_rows, val_set
        self.tracker = None  # an engine.tracking.Tracker (rank 0, while fitting): every row is logged to it too

    def save_last(self, checkpoint: dict) -> None:
        if self.writes:
            runfolder.save_checkpoint(checkpoint, self.run_dir / runfolder.LAST)

    def record(self, state: TrainingState, result: EpochResult, best_model: torch.nn.Module,
               checkpoint: Callable[[], dict]) -> bool:
        """Record a finished epoch: advance `state`, then write the metrics row, best.pt and
        val_preds.csv when it improved, the progress line, the plots and last.pt (`checkpoint()`:
        taken after `state` advanced). Returns whether the epoch is the best so far."""
        validation = result.validation
        improved = advance(state, validation.metrics["val_f1"] if validation else None, self.patience, self.epochs)
        if not self.writes:
            return improved
        row = {**result.row, **(validation.metrics if validation else {})}
        if improved:
            self._save_best(state.epoch, best_model, validation)
        runfolder.append_metrics(self.run_dir, row)
        if self.tracker is not None:
            self.tracker.epoch(state.global_step, row)
        # without validation every epoch is "the best" for best.pt, but none is marked as one
        console.print(epoch_line(row, result, self.epochs, improved and validation is not None),
                      markup=False, highlight=False)
        if state.finished and state.epoch < self.epochs:
            console.print(f"early stop: no better val macro F1 for {self.patience} epochs")
        plot_run(self.run_dir)  # before last.pt: a run killed in between redoes the epoch, plots included
        self.save_last(checkpoint())
        return improved

    def _save_best(self, epoch: int, model: torch.nn.Module, validation: Validation | None) -> None:
        val_f1 = validation.metrics["val_f1"] if validation else None
        runfolder.save_checkpoint({"model": model.state_dict(), "epoch": epoch, "val_f1": val_f1},
                                  self.run_dir / runfolder.BEST)
        if validation is None:
            return
        rows = validation.rows
        frame = prediction_frame(self.val_rows["path"].iloc[rows].tolist(), validation.probs)
        frame["person"] = self.val_rows["person"].iloc[rows].to_numpy()
        frame["label"] = self.val_set.targets["true_label"][rows]
        write_csv(frame, self.run_dir / runfolder.VAL_PREDS)


def epoch_line(row: dict, result: EpochResult, epochs: int, improved: bool) -> str:
    """The line printed at each epoch's end: losses, F1s, learning rate, speed, data wait."""
    seconds, wait = max(result.counters.seconds, 1e-9), result.counters.wait
    validation = ("" if result.validation is None else
                  f"val_loss {row['val_loss']:.4f}  val_f1 {row['val_f1']:.4f} "
                  f"(mask {row['f1_mask']:.3f} gender {row['f1_gender']:.3f} age {row['f1_age']:.3f})  ")
    return (f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  {validation}"
            f"lr {row['lr']:.2e}  {result.seen / seconds:.0f} img/s  data wait {wait / seconds:.0%} ({wait:.1f}s)  "
            f"{result.counters.seconds:.0f}s" + ("  *best" if improved else ""))
