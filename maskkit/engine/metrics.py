"""The competition's scores of hard predictions: macro F1 over the 18 classes, accuracy, per-task F1.

The one definition of macro F1 in maskkit: training's best-epoch choice and printed val F1, `score`,
`runs`' OOF columns and `demo` all call `scores`.
"""

from __future__ import annotations

import numpy as np

from sklearn.metrics import f1_score

from maskkit.contract.labels import NUM_CLASSES, TASKS, task_labels

SCORE_NAMES = ("macro_f1", "accuracy", "f1_mask", "f1_gender", "f1_age")


def scores(true_label, pred_label) -> dict[str, float]:
    """macro_f1 and accuracy over the classes; f1_<task>: macro F1 of the task decoded from both labels.

    As the competition scores (sklearn's f1_score, average="macro"): the mean over the classes that
    occur in the truth or the predictions, so a small set without some class is not punished for it.
    """
    true_label, pred_label = np.asarray(true_label, np.int64), np.asarray(pred_label, np.int64)
    result = {
        "macro_f1": float(f1_score(true_label, pred_label, average="macro", zero_division=0)),
        "accuracy": float((true_label == pred_label).mean()) if len(true_label) else 0.0,
    }
    truth, pred = task_labels(true_label), task_labels(pred_label)
    for task in TASKS:
        result[f"f1_{task}"] = float(f1_score(truth[task], pred[task], average="macro", zero_division=0))
    return result


def per_class_f1(true_label, pred_label) -> tuple[np.ndarray, np.ndarray]:
    """(F1 of each of the 18 classes, true count of each class)."""
    true_label = np.asarray(true_label, np.int64)
    f1 = f1_score(true_label, np.asarray(pred_label, np.int64), average=None, labels=range(NUM_CLASSES), zero_division=0)
    return np.asarray(f1, float), np.bincount(true_label, minlength=NUM_CLASSES)
