"""`maskkit runs`: one table of training runs (best first), from their config.json and metrics.csv.

Runs whose configuration differs only in the fold (same options, seed and manifest; the device,
workers, cache and logging do not count) form one recipe: their val_preds.csv are pooled into one
out-of-fold prediction of every validated image, and its macro F1 (`oof_f1`, with per-task F1) is
the number to compare recipes by; one fold's validation is too small to rank them.
A rich table on stderr when stdout is a terminal (plus one row per recipe); CSV on stdout when piped.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.table import Table

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, write_csv
from maskkit.contract.labels import NUM_CLASSES
from maskkit.contract.predictions import read_predictions
from maskkit.contract.runfolder import CONFIG, VAL_PREDS, best_row, read_config, read_metrics
from maskkit.engine.metrics import scores
from maskkit.options import ALL_FOLDS

COLUMNS = ("name", "backbone", "heads", "age_weight", "old_age", "input_size", "aug", "loss", "lr", "batch_size",
           "epochs", "fold", "best_epoch", "val_f1", "f1_mask", "f1_gender", "f1_age",
           "recipe", "recipe_folds", "oof_images", "oof_f1", "oof_f1_mask", "oof_f1_gender", "oof_f1_age", "path")
RECIPE_COLUMNS = ("recipe", "runs", "folds", "oof_images", "oof_f1", "oof_accuracy", "oof_f1_mask", "oof_f1_gender",
                  "oof_f1_age", "backbone", "heads", "loss", "lr", "epochs", "input_size", "seed")
RUNTIME_OPTIONS = ("fold", "device", "workers", "cache", "wandb")  # do not change what a recipe learns


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


def recipe_key(run_dir: Path) -> str:
    """What a run learns apart from its fold: options, seed and the manifest's hash, as canonical JSON."""
    config = read_config(run_dir)
    options = {k: v for k, v in config.get("options", {}).items() if k not in RUNTIME_OPTIONS}
    return json.dumps({"options": options, "manifest_sha256": config.get("manifest_sha256")}, sort_keys=True)


def recipe_name(names: Sequence[str], key: str) -> str:
    """The runs' common name without its fold suffix (effb2-f0 -> effb2), and a short hash of the recipe."""
    stems = [re.sub(r"[-_.]?(f|fold)\d+$", "", n) or n for n in names]
    return f"{stems[0]}#{hashlib.sha1(key.encode()).hexdigest()[:6]}"


def pooled_predictions(run_dirs: Sequence[Path]) -> tuple[pd.DataFrame, list]:
    """The runs' val_preds.csv as one table (the first run of a repeated fold wins) and the folds pooled."""
    frames, folds = [], []
    for run_dir in run_dirs:
        path = run_dir / VAL_PREDS
        fold = read_config(run_dir).get("fold")
        if fold == ALL_FOLDS:
            console.print(f"{run_dir}: trained with --fold all (no validation, no out-of-fold predictions); "
                          "its recipe's oof_f1 comes from the recipe's fold runs", markup=False, highlight=False)
            continue
        if not path.is_file() or fold in folds:
            continue
        frame, _ = read_predictions(path, probabilities=False,
                                    fix="val_preds.csv of maskkit train has columns ImageID,ans,p0..p17,person,label")
        if "label" not in frame:
            raise MaskkitError(f"{path}: no label column (val_preds.csv of maskkit train has "
                               "columns ImageID,ans,p0..p17,person,label)")
        frames.append(frame[["ImageID", "ans", "label"]])
        folds.append(fold)
    if not frames:
        return pd.DataFrame(columns=["ImageID", "ans", "label"]), folds
    pooled = pd.concat(frames, ignore_index=True).drop_duplicates("ImageID")
    bad = ~pooled["ans"].between(0, NUM_CLASSES - 1) | ~pooled["label"].between(0, NUM_CLASSES - 1)
    if bad.any():
        raise MaskkitError(f"{examples_of(run_dirs)}: val_preds.csv rows with a class outside 0..17 "
                           "(re-run maskkit train on these folds)")
    return pooled, folds


def examples_of(run_dirs: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in run_dirs[:3]) + (f" (+{len(run_dirs) - 3} more)" if len(run_dirs) > 3 else "")


def recipes_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per recipe of a runs table: the pooled out-of-fold scores, best first."""
    rows = []
    for key, group in table.groupby("recipe_key", sort=False):
        run_dirs = [Path(p) for p in group["path"]]
        pooled, folds = pooled_predictions(run_dirs)
        first = group.iloc[0]
        row = {"recipe": first["recipe"], "runs": len(group), "folds": ",".join(str(f) for f in sorted(folds, key=str)),
               "oof_images": len(pooled), **{k: first[k] for k in ("backbone", "heads", "loss", "lr", "input_size")},
               "epochs": json.loads(key)["options"].get("epochs"), "seed": json.loads(key)["options"].get("seed")}
        if len(pooled):
            row.update({f"oof_{k}": round(v, 4) for k, v in scores(pooled["label"], pooled["ans"]).items()})
            row["oof_f1"] = row.pop("oof_macro_f1")
        rows.append(row)
    recipes = pd.DataFrame(rows).reindex(columns=list(RECIPE_COLUMNS))
    return recipes.sort_values("oof_f1", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def runs_table(folders: Sequence[str | Path] | None = None, with_recipes: bool = False):
    """The table of runs, best val macro F1 first (runs without a finished epoch last).

    with_recipes: also return the recipes table (pooled out-of-fold scores per recipe).
    """
    paths = [Path(f) for f in folders] if folders else find_runs()
    for path in paths:
        if not path.is_dir():
            raise MaskkitError(f"{path}: run folder not found")
    table = pd.DataFrame([summarize(p) for p in paths])
    table["recipe_key"] = [recipe_key(p) for p in paths]
    for key, group in table.groupby("recipe_key", sort=False):
        table.loc[group.index, "recipe"] = recipe_name(group["name"].tolist(), key)
    recipes = recipes_table(table)
    by_recipe = recipes.set_index("recipe")
    for column, source in (("recipe_folds", "folds"), ("oof_images", "oof_images"), ("oof_f1", "oof_f1"),
                           ("oof_f1_mask", "oof_f1_mask"), ("oof_f1_gender", "oof_f1_gender"),
                           ("oof_f1_age", "oof_f1_age")):
        table[column] = table["recipe"].map(by_recipe[source])
    table = table.reindex(columns=list(COLUMNS))
    table = table.sort_values("val_f1", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    return (table, recipes) if with_recipes else table


def run(folders: Sequence[str | Path] | None = None) -> pd.DataFrame:
    """Print the table: rich on a terminal (stderr), CSV on stdout when piped."""
    table, recipes = runs_table(folders, with_recipes=True)
    if sys.stdout.isatty():
        shown = Table(title=f"{len(table)} runs, best val macro F1 first", title_justify="left")
        columns = [c for c in COLUMNS if c != "path" and not c.startswith(("oof_", "recipe_"))]
        for column in columns:
            shown.add_column(column, justify="right" if column not in ("name", "backbone", "heads", "aug", "loss") else "left")
        for _, row in table.iterrows():
            shown.add_row(*("" if pd.isna(row[c]) else str(row[c]) for c in columns))
        console.print(shown)
        pooled = Table(title=f"{len(recipes)} recipes, best pooled out-of-fold macro F1 first", title_justify="left")
        shown_columns = RECIPE_COLUMNS[:9]
        for column in shown_columns:
            pooled.add_column(column, justify="left" if column in ("recipe", "folds") else "right")
        for _, row in recipes.iterrows():
            pooled.add_row(*("" if pd.isna(row[c]) else str(row[c]) for c in shown_columns))
        console.print(pooled)
    else:
        write_csv(table)
    return table
