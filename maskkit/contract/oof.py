"""Pooled out-of-fold predictions (docs/formats.md, "Runs table" and `runs --oof-out`): the
val_preds.csv of a recipe's fold runs as one table, the first run of a repeated fold winning.
`runs` scores and writes it; `tune --objective oof` scores it; `calibrate` reads it (`read_oof`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, examples
from maskkit.contract.labels import NUM_CLASSES
from maskkit.contract.predictions import PROB_COLUMNS, read_predictions
from maskkit.contract.runfolder import VAL_PREDS, read_config
from maskkit.options import ALL_FOLDS

OOF_COLUMNS = ("ImageID", "ans", *PROB_COLUMNS, "person", "label", "fold")
OOF_FIX = "out-of-fold predictions are what maskkit runs --recipe ID --oof-out FILE writes: " \
          "ImageID,ans,p0..p17,person,label,fold"


def fold_runs(run_dirs: Sequence[Path]) -> list[tuple[Path, object]]:
    """(run, fold) of the runs with out-of-fold predictions: the first run of each fold with a
    val_preds.csv (`--fold all` runs have none: noted once)."""
    chosen, folds, full_data = [], set(), []
    for run_dir in run_dirs:
        fold = read_config(run_dir).get("fold")
        if fold == ALL_FOLDS:
            full_data.append(str(run_dir))
        elif (run_dir / VAL_PREDS).is_file() and fold not in folds:
            chosen.append((run_dir, fold))
            folds.add(fold)
    if full_data:
        console.print(f"{examples(full_data)}: trained with --fold all (no validation, no out-of-fold predictions); "
                      "the recipe's oof_f1 comes from its fold runs", markup=False, highlight=False)
    return chosen


def pooled_predictions(run_dirs: Sequence[Path]) -> tuple[pd.DataFrame, list]:
    """The runs' val_preds.csv as one table (OOF_COLUMNS; the first run of a repeated fold wins)
    and the folds pooled."""
    fix = "val_preds.csv of maskkit train has columns ImageID,ans,p0..p17,person,label"
    frames, folds = [], []
    for run_dir, fold in fold_runs(run_dirs):
        path = run_dir / VAL_PREDS
        frame, probs = read_predictions(path, fix=fix)
        if "label" not in frame:
            raise MaskkitError(f"{path}: no label column ({fix})")
        frame = pd.concat([frame[["ImageID", "ans"]], pd.DataFrame(probs, columns=PROB_COLUMNS, index=frame.index),
                           frame.reindex(columns=["person", "label"])], axis=1).assign(fold=fold)
        frames.append(frame)
        folds.append(fold)
    if not frames:
        return pd.DataFrame(columns=list(OOF_COLUMNS)), folds
    pooled = pd.concat(frames, ignore_index=True).drop_duplicates("ImageID")
    label = pd.to_numeric(pooled["label"], errors="coerce")
    if not label.between(0, NUM_CLASSES - 1).all():
        raise MaskkitError(f"{examples([str(p) for p in run_dirs])}: val_preds.csv rows with a label outside 0..17 "
                           "(re-run maskkit train on these folds)")
    return pooled.assign(label=label.astype(int)), folds


def read_oof(path: str | Path, data: bytes | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """One file `runs --oof-out` wrote, checked as a prediction CSV with p0..p17 and a true class 0..17
    in `label` on every row and a `fold` column. Returns (table with integer label, (rows, 18) probabilities).
    `data`: the file's bytes, already read."""
    frame, probs = read_predictions(path, fix=OOF_FIX, data=data)
    missing = [c for c in ("label", "fold") if c not in frame]
    if missing:
        raise MaskkitError(f"{path}: no {' or '.join(missing)} column, so not out-of-fold predictions ({OOF_FIX})")
    label = pd.to_numeric(frame["label"], errors="coerce")
    bad = ~label.between(0, NUM_CLASSES - 1) | (label % 1 != 0)
    if bad.any():
        raise MaskkitError(f"{path}: {int(bad.sum())} rows whose label is not a class 0..{NUM_CLASSES - 1} "
                           f"({examples(frame.loc[bad, 'ImageID'].tolist())}); {OOF_FIX}")
    return frame.assign(label=label.astype(np.int64)), probs
