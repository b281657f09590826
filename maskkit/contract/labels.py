"""The competition's labels: mask x gender x age group = 18 classes (docs/formats.md, "Labels")."""

from __future__ import annotations

import numpy as np

MASKS = ("wear", "incorrect", "not_wear")
GENDERS = ("male", "female")
AGE_GROUPS = ("<30", "30-59", ">=60")
NUM_CLASSES = 18
TASKS = {"mask": len(MASKS), "gender": len(GENDERS), "age": len(AGE_GROUPS)}

# The seven images of a person, by file stem.
IMAGE_STEMS = {
    "mask1": "wear",
    "mask2": "wear",
    "mask3": "wear",
    "mask4": "wear",
    "mask5": "wear",
    "incorrect_mask": "incorrect",
    "normal": "not_wear",
}

YOUNG_BELOW = 30
OLD_FROM = 60
AGE_RANGE = (0, 120)  # possible ages in years: train.csv and fixes refuse others
# The age-regression target: (years - AGE_CENTER) / AGE_SCALE, so typical ages land in about [-1, 1].
AGE_CENTER = 40.0
AGE_SCALE = 20.0


def age_to_target(years):
    """Years -> the normalised value an `age_years` head predicts (works on tensors and arrays)."""
    return (years - AGE_CENTER) / AGE_SCALE


def target_to_age(target):
    """An `age_years` head's output -> years."""
    return target * AGE_SCALE + AGE_CENTER


def age_group(age, old_from: int = OLD_FROM):
    """Age group 0 (< 30), 1 (30..old_from-1) or 2 (>= old_from); works on scalars and arrays."""
    age = np.asarray(age)
    group = (age >= YOUNG_BELOW).astype(np.int64) + (age >= old_from).astype(np.int64)
    return int(group) if group.ndim == 0 else group


def encode(mask, gender, age_grp):
    """Class 0..17 from mask, gender and age-group indices (scalars or arrays)."""
    return 6 * np.asarray(mask) + 3 * np.asarray(gender) + np.asarray(age_grp)


def decode(label):
    """(mask, gender, age_group) indices from class 0..17 (scalars or arrays)."""
    label = np.asarray(label)
    return label // 6, (label // 3) % 2, label % 3


def class_name(label: int) -> str:
    mask, gender, age_grp = (int(v) for v in decode(label))
    return f"{MASKS[mask]}/{GENDERS[gender]}/{AGE_GROUPS[age_grp]}"


def label_of(mask: str, gender: str, age: float) -> int:
    """Class of one image from its names and age in years."""
    return int(encode(MASKS.index(mask), GENDERS.index(gender), age_group(age)))


def task_labels(label) -> dict[str, np.ndarray]:
    """Per-task indices for an array of classes: {'mask': ..., 'gender': ..., 'age': ...}."""
    mask, gender, age_grp = decode(label)
    return {"mask": mask, "gender": gender, "age": age_grp}



def task_probs(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Marginal probabilities of mask (n, 3), gender (n, 2) and age group (n, 3) from (n, 18) class probabilities."""
    mask, gender, age = decode(np.arange(NUM_CLASSES))
    return {name: probs @ np.eye(size)[index]  # (n, 18) @ (18, size)
            for name, index, size in (("mask", mask, 3), ("gender", gender, 2), ("age", age, 3))}


def logit(p):
    """log(p / (1 - p)), clipped away from 0 and 1; scalars give a float, arrays an array."""
    p = np.clip(np.asarray(p, float), 1e-7, 1 - 1e-7)
    value = np.log(p) - np.log1p(-p)
    return float(value) if value.ndim == 0 else value
