"""The competition's scores of hard predictions: macro F1 over the 18 classes, accuracy, per-task F1.

The one definition of macro F1 in maskkit: training's best-epoch choice and printed val F1, `score`,
`val`, `runs`' OOF columns, `audit`'s evidence check and `demo` all call `scores` (`calibrate`'s fit its
`macro_f1`); `score` and `val` print the same row (`score_row`, docs/formats.md "Score output") and
table (`print_scores`).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from rich.table import Table
from sklearn.metrics import f1_score

from maskkit.contract.files import Inputs, console, write_csv
from maskkit.contract.labels import NUM_CLASSES, TASKS, class_name, task_labels

SCORE_NAMES = ("macro_f1", "accuracy", "f1_mask", "f1_gender", "f1_age")
SCORE_COLUMNS = ("submission", "images", *SCORE_NAMES)  # the Score output's CSV row


def scores(true_label, pred_label) -> dict[str, float]:
    """macro_f1 and accuracy over the classes; f1_<task>: macro F1 of the task decoded from both labels.

    As the competition scores (sklearn's f1_score, average="macro"): the mean over the classes that
    occur in the truth or the predictions, so a small set without some class is not punished for it.
    """
    true_label, pred_label = np.asarray(true_label, np.int64), np.asarray(pred_label, np.int64)
    result = {
        "macro_f1": macro_f1(true_label, pred_label),
        "accuracy": float((true_label == pred_label).mean()) if len(true_label) else 0.0,
    }
    truth, pred = task_labels(true_label), task_labels(pred_label)
    for task in TASKS:
        result[f"f1_{task}"] = macro_f1(truth[task], pred[task])
    return result


def macro_f1(true_label, pred_label) -> float:
    """sklearn's f1_score(average="macro", zero_division=0) of integer labels, from one bincount: the mean
    of 2TP / (2TP + FP + FN) over the labels in the truth or the predictions (0 for no rows). Fast
    enough for calibrate's fit, which scores thousands of decisions."""
    true_label, pred_label = np.asarray(true_label, np.int64), np.asarray(pred_label, np.int64)
    if not len(true_label):
        return 0.0
    size = int(max(true_label.max(), pred_label.max())) + 1
    counts = np.bincount(true_label * size + pred_label, minlength=size * size).reshape(size, size)
    tp, truth, pred = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    present = (truth + pred) > 0
    return float((2 * tp[present] / (truth + pred)[present]).mean())


def per_class_f1(true_label, pred_label) -> tuple[np.ndarray, np.ndarray]:
    """(F1 of each of the 18 classes, true count of each class)."""
    true_label = np.asarray(true_label, np.int64)
    f1 = f1_score(true_label, np.asarray(pred_label, np.int64), average=None, labels=range(NUM_CLASSES), zero_division=0)
    return np.asarray(f1, float), np.bincount(true_label, minlength=NUM_CLASSES)


def score_row(submission: str, true_label, pred_label) -> dict:
    """The Score output's row: submission (what was scored), images, and `scores` to 6 decimals."""
    return {"submission": str(submission), "images": len(true_label),
            **{k: round(v, 6) for k, v in scores(true_label, pred_label).items()}}


def write_score_row(row: dict, out=None, header: bool = True, inputs: Inputs | None = None) -> None:
    """The row as CSV to stdout or `out` (checked against `inputs`); without `header`, the row alone
    on stdout (to append to one table: >> scores.csv)."""
    frame = pd.DataFrame([row], columns=list(SCORE_COLUMNS))
    if header:
        write_csv(frame, out, inputs=inputs)
    else:
        frame.to_csv(sys.stdout, index=False, header=False, lineterminator="\n")
        sys.stdout.flush()


def print_scores(row: dict, true_label, pred_label) -> None:
    """The row's scores and each class's F1 as tables on stderr."""
    table = Table(title=f"score of {row['submission']} ({row['images']} images)", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in SCORE_NAMES:
        table.add_row(name, f"{row[name]:.4f}")
    console.print(table)
    f1, support = per_class_f1(true_label, pred_label)
    classes = Table(title="F1 per class", title_justify="left")
    for column in ("class", "name", "images", "F1"):
        classes.add_column(column, justify="left" if column == "name" else "right")
    for k in range(NUM_CLASSES):
        classes.add_row(str(k), class_name(k), str(int(support[k])), f"{f1[k]:.3f}")
    console.print(classes)
