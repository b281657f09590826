"""Pseudo-labels (`train --pseudo PREDS.csv`): the test images a prediction CSV is confident about
become training rows of every fold, with the predicted labels (docs/formats.md, "Pseudo-labels").

An image is taken when, in every task, its likeliest value (the marginal of the 18 class
probabilities: contract.labels.task_probs) has at least `min_prob`. Its rows are manifest rows in
PSEUDO_FOLD (never a validation fold); they exist only in memory, the run's manifest.csv stays the
split's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import examples
from maskkit.contract.labels import GENDERS, MASKS, OLD_FROM, encode, task_probs
from maskkit.contract.layout import load_eval
from maskkit.contract.manifest import MANIFEST_COLUMNS
from maskkit.contract.paths import shown
from maskkit.contract.predictions import read_predictions

PSEUDO_FOLD = -2  # in-memory only: trains in every fold, validates in none
GROUP_AGES = (20, 45, OLD_FROM)  # the years a pseudo image of each age group carries (for the age branch)
PERSON_PREFIX = "pseudo:"  # each pseudo image is its own person


def images_root(source: str | Path, manifest: pd.DataFrame) -> Path | None:
    """Where the test images lie by default: DATA/eval beside the training data's `train` folder (the
    source folder's, or that of the manifest's first image `.../train/images/<person>/<file>`)."""
    source = Path(source)
    if source.is_dir():
        train = source if (source / "train.csv").is_file() else source / "train"
        return train.parent / "eval"
    first = Path(str(manifest["path"].iloc[0]))
    if len(first.parents) >= 3 and first.parents[1].name == "images" and first.parents[2].name == "train":
        return first.parents[3] / "eval" if len(first.parents) >= 4 else Path("eval")
    return None


def pseudo_rows(preds: str | Path, images: str | Path, min_prob: float, old_age: int = OLD_FROM) -> tuple[pd.DataFrame, int]:
    """(manifest rows of the confident images, in PSEUDO_FOLD; how many images PREDS predicts).

    `images`: the folder PREDS predicted (DATA/eval or a folder of images: contract.layout.load_eval);
    an ImageID it does not hold is refused. `old_age`: the oldest group's rows carry at least this
    many years, so that training's moved groups (`--old-age`) keep them in that group."""
    table, probs = read_predictions(preds)
    found = load_eval(images)
    where = dict(zip(found["ImageID"], found["path"]))
    unknown = [image_id for image_id in table["ImageID"] if image_id not in where]
    if unknown:
        raise MaskkitError(f"{preds}: {len(unknown)} ImageIDs are not images of {images} "
                           f"({examples([shown(u) for u in unknown])}); pass the folder they were predicted on "
                           "with --pseudo-data")
    tasks = task_probs(probs)
    confident = np.all([tasks[name].max(axis=1) >= min_prob for name in ("mask", "gender", "age")], axis=0)
    mask, gender, group = (tasks[name][confident].argmax(axis=1) for name in ("mask", "gender", "age"))
    ages = np.array([*GROUP_AGES[:2], max(GROUP_AGES[2], old_age)])[group]
    image_ids = table["ImageID"][confident].tolist()
    rows = pd.DataFrame({
        "path": [where[i] for i in image_ids], "person": [PERSON_PREFIX + i for i in image_ids],
        "gender": np.asarray(GENDERS, dtype=object)[gender], "age": ages.astype(float),
        "mask": np.asarray(MASKS, dtype=object)[mask], "label": encode(mask, gender, group).astype(int),
        "fold": PSEUDO_FOLD})
    return rows.loc[:, list(MANIFEST_COLUMNS)], len(table)


def weigh_pseudo(weights: np.ndarray | None, is_pseudo: np.ndarray, factor: float) -> np.ndarray | None:
    """Sampling probabilities with each pseudo image's weight (1, or its class-balanced weight) times
    `factor`; None (plain shuffling) when nothing changes."""
    if factor == 1 or not is_pseudo.any():
        return weights
    base = np.ones(len(is_pseudo)) if weights is None else np.asarray(weights, dtype=np.float64)
    scaled = np.where(is_pseudo, base * factor, base)
    return scaled / scaled.sum()
