"""Prediction CSVs (docs/formats.md, "Prediction CSV"): `ImageID,ans,p0..p17`.

`predict`, `val` and `train` (val_preds.csv) write them through `prediction_frame`; `vote`, `score`
and `audit` read them through `read_predictions`, which applies every check of the contract.
`read_answers` gives a file's ImageID,ans: a submission, or a truth (also a manifest: path,label).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, examples, read_csv, write_csv
from maskkit.contract.labels import AGE_GROUPS, GENDERS, MASKS, NUM_CLASSES, decode
from maskkit.contract.manifest import read_manifest
from maskkit.contract.paths import shown
from maskkit.contract.streams import is_stream, read_input

PROB_COLUMNS = [f"p{i}" for i in range(NUM_CLASSES)]
DECIMALS = 6  # probabilities as written; `ans` is the argmax of the written values
PREDICTION_FIX = "a prediction CSV has columns ImageID,ans,p0..p17 as `maskkit predict` writes"
PREDICTION_HEADER = ["ImageID", "ans", *PROB_COLUMNS]
# p0..p17 are written rounded to DECIMALS places; a row that sums elsewhere is not a probability vector.
PROB_SUM_TOLERANCE = 1e-3
NAME_COLUMNS = ["mask", "gender", "age"]  # `predict --names`: the words of `ans`, for people who look


def prediction_header(names: bool = False) -> list[str]:
    """The header `prediction_frame` writes (with `names`: mask,gender,age after ans)."""
    return ["ImageID", "ans", *(NAME_COLUMNS if names else []), *PROB_COLUMNS]


def bad_probability_rows(probs: np.ndarray) -> np.ndarray:
    """Rows of (n, 18) probabilities that are missing, negative, or do not sum to 1 (within the tolerance)."""
    probs = np.asarray(probs, dtype=np.float64)
    finite = np.isfinite(probs).all(axis=1)
    sums = np.where(finite, np.nan_to_num(probs).sum(axis=1), np.nan)
    return ~finite | (np.nan_to_num(probs) < 0).any(axis=1) | ~(np.abs(sums - 1) <= PROB_SUM_TOLERANCE)


def check_predicted(source: str | Path, probs: np.ndarray, names: Sequence[object], fix: str) -> None:
    """Refuse the rows a model gave (`names`: their images) that are not probability vectors, by the
    rule `read_predictions` applies to a CSV: finite, non-negative, summing to 1 (within the tolerance).
    `fix`: what is broken and what to do, for the one-line error naming `source`."""
    bad = bad_probability_rows(probs)
    if bad.any():
        shown_names = examples([shown(name) for name, wrong in zip(names, bad) if wrong])
        raise MaskkitError(f"{source}: for {int(bad.sum())} of {len(bad)} images the model gives values that are not "
                           f"class probabilities (NaN, inf, negative, or not summing to 1 within "
                           f"{PROB_SUM_TOLERANCE:g}: {shown_names}); {fix}")


def prediction_frame(image_ids: Sequence[str], probs: np.ndarray, names: bool = False) -> pd.DataFrame:
    """ImageID, ans, p0..p17 from (N, 18) probabilities (rounded to DECIMALS places); with `names`
    also mask, gender, age: the words of `ans` (wear/male/<30...) after it."""
    probs = np.round(np.asarray(probs, dtype=np.float64), DECIMALS)
    frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
    ans = probs.argmax(1).astype(int)
    if names:
        for column, words, index in zip(reversed(NAME_COLUMNS), (AGE_GROUPS, GENDERS, MASKS), reversed(decode(ans))):
            frame.insert(0, column, np.asarray(words, dtype=object)[index])
    frame.insert(0, "ans", ans)
    frame.insert(0, "ImageID", list(image_ids))
    return frame


def write_predictions(frame: pd.DataFrame, out: str | Path | None = None, inputs: Inputs | None = None) -> None:
    """Write a prediction table (stdout when `out` is None or '-'), atomically to a file; with
    `inputs`, `out` is checked against them first (files.Inputs.check)."""
    write_csv(frame, out, inputs=inputs)


def read_predictions(path: str | Path, probabilities: bool = True, fix: str | None = None,
                     data: bytes | None = None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """One prediction CSV, checked: at least one row, an ImageID on every row and no ImageID twice,
    integer `ans` in 0..17, and with `probabilities` (or whenever the file has p0..p17: a hard vote
    or a score of predict's output refuses its empty or NaN cells too) finite, non-negative p0..p17
    summing to 1 (within PROB_SUM_TOLERANCE).

    Returns the table (ImageID, ans, and any extra columns) and the (rows, 18) probabilities
    (None unless `probabilities`). `data`: the file's bytes, already read from a stream.
    """
    required = ["ImageID", "ans"] + (PROB_COLUMNS if probabilities else [])
    fix = fix or (PREDICTION_FIX if probabilities else "a prediction CSV has columns ImageID,ans")
    df = read_csv(path, required, fix=fix, dtype={"ImageID": str}, data=data)
    if df.empty:
        raise MaskkitError(f"{path}: no rows, so there is nothing to read ({fix}, one row per image)")
    if df["ImageID"].isna().any():
        raise MaskkitError(f"{path}: {int(df['ImageID'].isna().sum())} rows without an ImageID; every row needs one")
    dup = df["ImageID"].duplicated(keep="first")
    if dup.any():
        raise MaskkitError(f"{path}: {int(dup.sum())} rows repeat an ImageID "
                           f"({examples(df.loc[dup, 'ImageID'].unique().tolist())}); keep one row per image")
    ans = df["ans"] if pd.api.types.is_integer_dtype(df["ans"]) else pd.to_numeric(df["ans"], errors="coerce")
    values = ans.to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values % 1 != 0) | (values < 0) | (values >= NUM_CLASSES)
    if bad.any():
        raise MaskkitError(f"{path}: {int(bad.sum())} rows with ans outside 0..{NUM_CLASSES - 1} "
                           f"({examples(df.loc[bad, 'ImageID'].tolist())}); ans must be a class 0..17")
    table = df.drop(columns=PROB_COLUMNS, errors="ignore").assign(ans=values.astype(np.int64))
    probs = None
    if probabilities or all(c in df.columns for c in PROB_COLUMNS):
        columns = df[PROB_COLUMNS]
        if not all(pd.api.types.is_numeric_dtype(t) for t in columns.dtypes):  # text in a p column
            columns = columns.apply(pd.to_numeric, errors="coerce")
        probs = columns.to_numpy(np.float64)
        bad = bad_probability_rows(probs)
        if bad.any():
            raise MaskkitError(f"{path}: {int(bad.sum())} rows whose p0..p17 are missing, negative or do not sum to 1 "
                               f"within {PROB_SUM_TOLERANCE:g} ({examples(df.loc[bad, 'ImageID'].tolist())}); "
                               "they must be the 18 class probabilities, as maskkit predict writes them")
    return table, probs if probabilities else None


def read_answers(path: str | Path, role: str = "submission", manifest: bool = False) -> pd.DataFrame:
    """ImageID,ans of one CSV, checked by `read_predictions` (one row per ImageID, ans 0..17). With
    `manifest`, a file without ImageID whose columns hold path and label is read as a manifest
    (`read_manifest`'s checks): ImageID = its path, ans = its label (a truth for `score`)."""
    data = read_input(path) if is_stream(path) else None
    fix = f"a {role} CSV has columns ImageID,ans" + (" (or a manifest: path,label)" if manifest else "")
    columns = read_csv(path, fix=fix, data=data, nrows=0).columns
    if manifest and "ImageID" not in columns and {"path", "label"} <= set(columns):
        table = read_manifest(path, data=data)
        return pd.DataFrame({"ImageID": table["path"].astype(str), "ans": table["label"].astype(np.int64)})
    table, _ = read_predictions(path, probabilities=False, fix=fix, data=data)
    return table[["ImageID", "ans"]]
