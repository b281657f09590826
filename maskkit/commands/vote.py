"""`maskkit vote`: hard or soft ensembles of prediction CSVs (docs/formats.md), vectorised over rows.

Hard vote: each input adds its weight to the class it predicts; the class with the most weight wins,
and a tie goes to the class predicted by the earliest input among the tied classes (list the best
model first). Soft vote: the weighted mean of p0..p17, renormalised; `ans` is its argmax. With
`--calibration calib.json` (`maskkit calibrate`), the soft vote takes the fitted weights (when fitted on
several recipes) and the fitted biases decide (contract/decision.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.decision import Decision
from maskkit.contract.files import Inputs, console, examples, read_csv, write_csv
from maskkit.contract.labels import NUM_CLASSES
from maskkit.contract.predictions import PROB_COLUMNS, read_predictions
from maskkit.engine.decision import soft_vote


def parse_weights(text: str | None, count: int) -> np.ndarray:
    """'2,1,1' -> array([2., 1., 1.]); one positive number per input file."""
    if text is None:
        return np.ones(count)
    try:
        weights = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise MaskkitError(f"--file-weights {text!r}: expected comma-separated numbers like 2,1,1") from None
    if len(weights) != count:
        raise MaskkitError(f"--file-weights {text!r}: {len(weights)} weights for {count} input files (give one per file)")
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise MaskkitError(f"--file-weights {text!r}: weights must be positive numbers")
    return weights


def align(df: pd.DataFrame, order: pd.Index, path: Path, reference: str) -> np.ndarray:
    """Row positions of `order`'s ImageIDs in `df`; one-line error when the ImageID sets differ."""
    positions = pd.Index(df["ImageID"]).get_indexer(order)
    found = int((positions >= 0).sum())
    if found == len(order) == len(df):  # both sides are free of duplicates, so the sets are equal
        return positions
    missing = order[positions < 0]
    extra = df["ImageID"][~df["ImageID"].isin(order)]
    raise MaskkitError(
        f"{path}: {len(missing) + len(extra)} rows differ from {reference} "
        f"({len(missing)} ImageIDs missing, {len(extra)} not in {reference}, e.g. "
        f"{examples((list(missing) + extra.tolist())[:3], 3)}); vote needs predictions on the same images"
    )


def hard_vote(answers: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(rows, inputs) classes -> winning class per row; ties go to the earliest input's class."""
    rows, inputs = answers.shape
    counts = np.zeros((rows, NUM_CLASSES))
    first = np.full((rows, NUM_CLASSES), inputs)  # index of the first input predicting each class
    index = np.arange(rows)
    for j in range(inputs):  # a loop over inputs, not rows
        counts[index, answers[:, j]] += weights[j]
    for j in reversed(range(inputs)):
        first[index, answers[:, j]] = j
    best = counts.max(axis=1, keepdims=True)
    tied = np.isclose(counts, best, rtol=1e-9, atol=1e-12)
    return np.where(tied, first, inputs + 1).argmin(axis=1)


def calibrated_weights(calibration: Path, decision: Decision, files: list[Path],
                       weights: str | None) -> np.ndarray | None:
    """The vote weights calib.json fitted for `files` (None when it was fitted on one recipe), named on stderr."""
    fitted = decision.vote_weights(calibration, files)
    if fitted is None:
        return None
    if weights is not None:
        raise MaskkitError(f"--file-weights {weights}: {calibration} holds fitted vote weights; leave --file-weights "
                           "out, or calibrate on one recipe")
    pairs = ", ".join(f"{f}={w:g} (fitted on {r.file})" for f, w, r in zip(files, fitted, decision.recipes))
    console.print(f"vote weights from {calibration}: {pairs}", markup=False, highlight=False)
    return fitted


def vote(files: Sequence[Path], soft: bool = False, weights: str | None = None,
         info: Path | None = None, probs: bool = False, calibration: Path | None = None) -> pd.DataFrame:
    """The vote of `files` as a DataFrame: ImageID, ans (+ p0..p17 with `probs`); with `calibration`
    (a soft vote only), calib.json's weights and biases."""
    if not files:
        raise MaskkitError("vote: no input files (pass one or more prediction CSVs)")
    if probs and not soft:
        raise MaskkitError("--probs writes the averaged probabilities of a soft vote; add --soft")
    if calibration is not None and not soft:
        raise MaskkitError(f"--calibration {calibration}: a calibration decides on probabilities; add --soft")
    files = [Path(f) for f in files]
    w = parse_weights(weights, len(files))
    decision = Decision.read(calibration) if calibration is not None else None
    if decision is not None:
        fitted = calibrated_weights(calibration, decision, files, weights)
        w = w if fitted is None else fitted
    frames, probabilities = zip(*(read_predictions(f, probabilities=soft) for f in files))
    if info is not None:
        info_df = read_csv(info, ["ImageID"], fix="the competition's info.csv has columns ImageID,ans",
                           dtype={"ImageID": str}, usecols=lambda c: c == "ImageID")
        dup = info_df["ImageID"].duplicated()
        if dup.any():
            raise MaskkitError(f"{info}: {int(dup.sum())} rows repeat an ImageID "
                               f"({examples(info_df.loc[dup, 'ImageID'].tolist())}); keep one row per image")
        order, reference = pd.Index(info_df["ImageID"]), str(info)
    else:
        order, reference = pd.Index(frames[0]["ImageID"]), str(files[0])
    positions = [align(df, order, f, reference) for df, f in zip(frames, files)]
    out = pd.DataFrame({"ImageID": order.to_numpy()})
    if soft:
        stacked = np.stack([p[pos] for p, pos in zip(probabilities, positions)])
        mean = soft_vote(stacked, w)
        if decision is not None:
            mean = decision.apply(mean)
        out["ans"] = mean.argmax(axis=1)
        if probs:
            out = pd.concat([out, pd.DataFrame(mean, columns=PROB_COLUMNS)], axis=1)
    else:
        answers = np.stack([df["ans"].to_numpy()[pos] for df, pos in zip(frames, positions)], axis=1)
        out["ans"] = hard_vote(answers, w)
    return out


def run(files: Sequence[Path], soft: bool = False, weights: str | None = None, info: Path | None = None,
        probs: bool = False, out: Path | None = None, calibration: Path | None = None) -> None:
    """`maskkit vote`: write the vote to stdout or atomically to `out`."""
    inputs = Inputs.of(files, info, calibration)
    inputs.check(out, header=["ImageID", "ans", *(PROB_COLUMNS if probs else [])])
    result = vote(files, soft=soft, weights=weights, info=info, probs=probs, calibration=calibration)
    write_csv(result, out, float_format="%.6g", inputs=inputs)
