"""Experiment tracking of `maskkit train --logger csv|tensorboard|wandb` (docs/formats.md, "Run folder").

Every run writes metrics.csv (one row per epoch, engine.checkpoint) and RUN/steps.csv (one row per
logged step: global step, epoch, loss, learning rate, img/s). `--logger tensorboard` also writes
both to RUN/tb/ with torch.utils.tensorboard's SummaryWriter (offline: `tensorboard --logdir runs`);
`--logger wandb` logs them to the Weights & Biases project `--wandb` (default "maskkit").
The logger is a machine setting (options.MACHINE_OPTIONS): --resume may change it.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import write_csv
from maskkit.contract.runfolder import STEPS, TENSORBOARD
from maskkit.options import TrainOptions

STEP_COLUMNS = ("step", "epoch", "loss", "lr", "img_s")
WANDB_PROJECT = "maskkit"


def logger_module(options: TrainOptions):
    """The optional library `--logger` needs (None for csv); a one-line error when it is missing.
    Imported here, not at the top: tensorboard and wandb are optional extras."""
    if options.logger == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        except ImportError:
            raise MaskkitError("--logger tensorboard: tensorboard is not installed "
                               "(pip install 'maskkit[tensorboard]', or use --logger csv)") from None
        return SummaryWriter
    if options.logger == "wandb":
        try:
            import wandb  # optional: installed only by those who log with wandb
        except ImportError:
            raise MaskkitError("--logger wandb: wandb is not installed (pip install wandb, or use --logger csv)") from None
        return wandb
    return None


class Tracker:
    """Writes the scalars of one run: `step` every logged step, `epoch` every finished epoch."""

    def __init__(self, run_dir: Path, options: TrainOptions, config: Mapping, first_step: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.steps_path = self.run_dir / STEPS
        self._keep_steps_before(first_step)  # a resumed run logs its steps again from where it stopped
        self.steps_file = self.steps_path.open("a", newline="")
        self.steps = csv.writer(self.steps_file, lineterminator="\n")
        if self.steps_file.tell() == 0:
            self.steps.writerow(STEP_COLUMNS)
        self.tensorboard = self.wandb = None
        if first_step == 0 and (self.run_dir / TENSORBOARD).is_dir():  # left by a run --overwrite replaced
            shutil.rmtree(self.run_dir / TENSORBOARD)
        module = logger_module(options)
        if options.logger == "tensorboard":
            self.tensorboard = module(log_dir=str(self.run_dir / TENSORBOARD), purge_step=first_step or None)
        elif options.logger == "wandb":
            self.wandb = module.init(project=options.wandb or WANDB_PROJECT, name=self.run_dir.name,
                                     config=dict(config), resume="allow",
                                     id=hashlib.sha1(str(self.run_dir.resolve()).encode()).hexdigest()[:16])

    def _keep_steps_before(self, first_step: int) -> None:
        if not self.steps_path.is_file():
            return
        kept = pd.read_csv(self.steps_path)
        kept = kept[pd.to_numeric(kept.get("step"), errors="coerce") <= first_step] if "step" in kept else kept.iloc[:0]
        write_csv(kept.reindex(columns=list(STEP_COLUMNS)), self.steps_path)

    def step(self, step: int, epoch: int, scalars: Mapping[str, float]) -> None:
        """One training step's scalars (loss, lr, img_s), at the run's global step."""
        self.steps.writerow([step, epoch, *(_number(scalars.get(k)) for k in STEP_COLUMNS[2:])])
        self.steps_file.flush()
        values = {f"train/{k}": float(v) for k, v in scalars.items() if v is not None}
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log({**values, "epoch": epoch}, step=step)

    def epoch(self, step: int, row: Mapping[str, object]) -> None:
        """One metrics.csv row (empty validation columns are left out), at the global step reached."""
        values = {f"epoch/{k}": float(v) for k, v in row.items()
                  if k != "epoch" and isinstance(v, (int, float)) and not pd.isna(v)}
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log({**values, "epoch": row["epoch"]}, step=step)

    def close(self) -> None:
        self.steps_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _number(value: object) -> str:
    return "" if value is None else f"{float(value):.6g}"
