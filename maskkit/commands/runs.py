"""`maskkit runs`: one table of training runs (best first), from their config.json and metrics.csv.

A rich table on stderr when stdout is a terminal; CSV on stdout when it is piped.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, write_csv
from maskkit.contract.runfolder import CONFIG, best_row, read_config, read_metrics

COLUMNS = ("name", "backbone", "heads", "age_weight", "old_age", "input_size", "aug", "loss", "lr", "batch_size",
           "epochs", "fold", "best_epoch", "val_f1", "f1_mask", "f1_gender", "f1_age", "path")


def find_runs(root: str | Path = "runs") -> list[Path]:
    """Run folders (holding config.json) directly under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise MaskkitError(f"{root}: no runs folder here (train one with maskkit train, or name run folders)")
    found = sorted(p for p in root.iterdir() if (p / CONFIG).is_file())
    if not found:
        raise MaskkitError(f"{root}: holds no run folders (no */config.json); train one with maskkit train")
    return found


def loss_name(options: dict) -> str:
    """A short name of the objective: ce, focal2, +ls0.1, +balanced, +cutmix0.5, +ema."""
    parts = [f"focal{options['focal']:g}" if options.get("focal") else "ce"]
    if options.get("label_smoothing"):
        parts.append(f"ls{options['label_smoothing']:g}")
    if options.get("balanced"):
        parts.append("balanced")
    if options.get("cutmix"):
        parts.append(f"cutmix{options['cutmix']:g}")
    if options.get("ema"):
        parts.append("ema")
    return "+".join(parts)


def summarize(run_dir: Path) -> dict:
    """One row: the run's options and its best epoch's metrics (empty when no epoch finished)."""
    config = read_config(run_dir)
    options = config.get("options", {})
    row = {
        "name": run_dir.name, "backbone": config["backbone"], "heads": config.get("heads"),
        "age_weight": config.get("age_weight", 0.0), "old_age": config.get("old_age", 60),
        "input_size": "x".join(str(v) for v in config["img_size"][::-1]), "aug": options.get("aug"),  # WIDTHxHEIGHT
        "loss": loss_name(options), "lr": options.get("lr"), "batch_size": options.get("batch_size"),
        "epochs": options.get("epochs"), "fold": config.get("fold"), "path": str(run_dir),
    }
    metrics = read_metrics(run_dir)
    best = best_row(metrics)
    if best is not None:
        row["epochs"] = f"{len(metrics)}/{options.get('epochs', '?')}"
        row.update({"best_epoch": int(best["epoch"]),
                    **{k: round(float(best[k]), 4) for k in ("val_f1", "f1_mask", "f1_gender", "f1_age")}})
    return row


def runs_table(folders: Sequence[str | Path] | None = None) -> pd.DataFrame:
    """The table of runs, best val macro F1 first (runs without a finished epoch last)."""
    paths = [Path(f) for f in folders] if folders else find_runs()
    for path in paths:
        if not path.is_dir():
            raise MaskkitError(f"{path}: run folder not found")
    table = pd.DataFrame([summarize(p) for p in paths]).reindex(columns=list(COLUMNS))
    return table.sort_values("val_f1", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def run(folders: Sequence[str | Path] | None = None) -> pd.DataFrame:
    """Print the table: rich on a terminal (stderr), CSV on stdout when piped."""
    table = runs_table(folders)
    if sys.stdout.isatty():
        from rich.table import Table

        shown = Table(title=f"{len(table)} runs, best val macro F1 first", title_justify="left")
        columns = [c for c in COLUMNS if c != "path"]
        for column in columns:
            shown.add_column(column, justify="right" if column not in ("name", "backbone", "heads", "aug", "loss") else "left")
        for _, row in table.iterrows():
            shown.add_row(*("" if pd.isna(row[c]) else str(row[c]) for c in columns))
        console.print(shown)
    else:
        write_csv(table)
    return table
