"""`maskkit score SUBMISSION TRUTH`: the competition's score of a submission against a truth file.

Both files have columns ImageID,ans (others are ignored): a submission from `predict` or `vote`, a
truth such as synth's or realfaces' eval/truth.csv, or a manifest (its path,label read as
ImageID,ans: `predict RUN folds.csv` keys its rows by the same paths). Every truth image must be
answered exactly once. stdout (or -o) gets one CSV row: submission,images,macro_f1,accuracy,f1_mask,
f1_gender,f1_age; stderr a table of those plus each class's F1 (left out with `quiet`);
--confusion draws the 18x18 confusion matrix (PNG). `--no-header` leaves the header out, to append
rows to one file (`>> scores.csv`). A truth whose every `ans` is 0 is most likely an unlabelled
info.csv: the score is printed with a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console, examples
from maskkit.contract.predictions import read_answers
from maskkit.engine.metrics import SCORE_COLUMNS, print_scores, score_row, write_score_row
from maskkit.engine.plots import draw_confusion

COLUMNS = SCORE_COLUMNS


def matched(submission: pd.DataFrame, truth: pd.DataFrame, submission_path: Path,
            truth_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) classes in the truth's order; every truth image answered, no stranger ids."""
    positions = pd.Index(submission["ImageID"]).get_indexer(truth["ImageID"])
    unanswered = positions < 0
    if unanswered.any():
        raise MaskkitError(f"{submission_path}: no answer for {int(unanswered.sum())} of {len(truth)} images of "
                           f"{truth_path} ({examples(truth.loc[unanswered, 'ImageID'].tolist())}); "
                           "predict every image of the eval set")
    unknown = ~submission["ImageID"].isin(truth["ImageID"])
    if unknown.any():
        raise MaskkitError(f"{submission_path}: {int(unknown.sum())} ImageIDs not in {truth_path} "
                           f"({examples(submission.loc[unknown, 'ImageID'].tolist())}); score against the truth "
                           "of the same eval set")
    return truth["ans"].to_numpy(), submission["ans"].to_numpy()[positions]


def run(submission: Path, truth: Path, out: Path | None = None, confusion: Path | None = None,
        quiet: bool = False, header: bool = True) -> dict:
    """Score SUBMISSION against TRUTH; write the one-row CSV to stdout or `out` (stdout only
    without its `header`); return the row. `quiet`: no tables on stderr (warnings still print)."""
    submission, truth = Path(submission), Path(truth)
    inputs = Inputs.of(submission, truth)
    inputs.check(out, header=list(COLUMNS))
    if confusion is not None and Path(confusion).suffix.lower() != ".png":
        raise MaskkitError(f"--confusion {confusion}: the picture is a PNG; name a file ending in .png")
    if not header and out is not None and str(out) != "-":
        raise MaskkitError(f"--no-header -o {out}: --no-header appends rows on stdout (>> scores.csv); "
                           "drop one of them")
    answers = read_answers(submission, "submission")
    truth_table = read_answers(truth, "truth", manifest=True)
    if truth_table.empty:
        raise MaskkitError(f"{truth}: no rows; a truth CSV lists ImageID,ans for every eval image")
    if len(truth_table) > 1 and (truth_table["ans"] == 0).all():
        console.print(f"warning: {truth}: every ans is 0, so it is most likely an unlabelled info.csv and this "
                      "score means nothing; score against a truth CSV (e.g. DATA/eval/truth.csv of maskkit synth)",
                      markup=False, highlight=False)
    true, pred = matched(answers, truth_table, submission, truth)
    row = score_row(submission, true, pred)
    if confusion is not None:
        draw_confusion(true, pred, Path(confusion), f"{submission.name} against {truth.name}")
    if not quiet:
        print_scores(row, true, pred)
    write_score_row(row, out, header=header, inputs=inputs)
    return row
