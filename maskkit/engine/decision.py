"""The decision `maskkit calibrate` fits on pooled out-of-fold probabilities to maximise macro F1, with
few parameters: soft-vote weights of several recipes, two log-biases on the age groups, and only on
request 18 class biases (an earlier 18-bias fit lost 0.03 on eval). The file it becomes is
contract/decision.py's; engine/calibration.py (audit's temperature scaling) is another thing.

Each stage starts from the identity (equal weights, zero biases) and takes a change only when it
raises the OOF macro F1 (engine/metrics.macro_f1), so the fit never lowers the F1 it was fitted on;
among changes that score the same, the smallest wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from maskkit.contract.decision import class_bias as bias_of
from maskkit.contract.labels import AGE_GROUPS, NUM_CLASSES
from maskkit.engine.metrics import macro_f1

WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
AGE_COARSE = np.round(np.arange(-3.0, 3.0 + 1e-9, 0.25), 6)  # both age biases over this grid first
AGE_STEP = 0.05  # then each alone, in these steps around the coarse optimum
CLASS_GRID = np.round(np.arange(-2.0, 2.0 + 1e-9, 0.1), 6)
ROUNDS = 5  # coordinate sweeps at most (each stops early when a sweep changes nothing)
GAIN = 1e-9  # a change must raise the F1 by more than this (float noise is no gain)


@dataclass
class Fit:
    """Soft-vote weights (one per recipe), log-biases per age group ([0, b1, b2]) and per class (or None)."""

    weights: np.ndarray
    age_bias: np.ndarray
    class_bias: np.ndarray | None


def soft_vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(inputs, rows, 18) probabilities -> (rows, 18) weighted mean, rows renormalised to sum to 1."""
    mean = np.tensordot(weights / weights.sum(), probs, axes=1)
    return mean / mean.sum(axis=1, keepdims=True)


def decide(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The class of each row: argmax of p * exp(bias)."""
    return (probs * np.exp(bias)).argmax(axis=1)


def best_of(candidates: list, score: Callable[[object], float], current: float,
            size: Callable[[object], float]) -> tuple[object | None, float]:
    """(the candidate with the highest score, that score) when it beats `current` by more than GAIN,
    else (None, current); ties go to the smallest `size`."""
    scored = [(score(c), c) for c in candidates]
    top = max(s for s, _ in scored)
    if top <= current + GAIN:
        return None, current
    return min((c for s, c in scored if s >= top - GAIN), key=size), top


def fit(probs: np.ndarray, labels: np.ndarray, biases: bool = False) -> Fit:
    """Fit on (recipes, rows, 18) OOF probabilities and the rows' true classes: vote weights (more than
    one recipe), then the two age-group biases, then (with `biases`) the 18 class biases."""
    labels = np.asarray(labels, np.int64)
    weights = np.ones(len(probs))
    if len(probs) > 1:
        weights = fit_weights(probs, labels)
    mean = soft_vote(probs, weights)
    age_bias = fit_age_bias(mean, labels)
    class_bias = fit_class_bias(mean, labels, bias_of(age_bias)) if biases else None
    return Fit(weights, age_bias, class_bias)


def held_out(probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, biases: bool = False) -> np.ndarray | None:
    """Each row's class under the decision fitted on the other folds' rows: an honest estimate of what the
    fit gains on unseen images (None with fewer than two folds)."""
    names = np.unique(folds)
    if len(names) < 2:
        return None
    decided = np.zeros(len(labels), np.int64)
    for fold in names:
        rows = folds == fold
        found = fit(probs[:, ~rows], labels[~rows], biases=biases)
        mean = soft_vote(probs[:, rows], found.weights)
        decided[rows] = decide(mean, bias_of(found.age_bias, found.class_bias))
    return decided


def fit_weights(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Soft-vote weights by coordinate ascent over WEIGHT_GRID from equal weights."""
    weights = np.ones(len(probs))

    def score(w: np.ndarray) -> float:
        return macro_f1(labels, soft_vote(probs, w).argmax(axis=1))

    current = score(weights)
    for _ in range(ROUNDS):
        changed = False
        for k in range(len(probs)):
            options = [np.where(np.arange(len(probs)) == k, value, weights) for value in WEIGHT_GRID]
            options = [w for w in options if w.sum() > 0 and w[k] != weights[k]]
            chosen, current = best_of(options, score, current, lambda w: float(np.abs(w - 1).sum()))
            if chosen is not None:
                weights, changed = chosen, True
        if not changed:
            break
    return weights


def fit_age_bias(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[0, b1, b2]: log-biases of the age groups 30-59 and >=60 against <30, over the AGE_COARSE grid,
    then each refined in AGE_STEP steps."""
    def score(pair: tuple[float, float]) -> float:
        return macro_f1(labels, decide(probs, bias_of(np.array([0.0, *pair]))))

    def size(pair: tuple[float, float]) -> float:
        return abs(pair[0]) + abs(pair[1])

    pair = (0.0, 0.0)
    current = score(pair)
    chosen, current = best_of([(a, b) for a in AGE_COARSE for b in AGE_COARSE if (a, b) != pair], score, current, size)
    pair = chosen or pair
    for _ in range(ROUNDS):
        changed = False
        for axis in range(len(AGE_GROUPS) - 1):
            steps = [round(pair[axis] + AGE_STEP * k, 6) for k in range(-5, 6) if k]
            options = [(v, pair[1]) if axis == 0 else (pair[0], v) for v in steps]
            chosen, current = best_of(options, score, current, size)
            if chosen is not None:
                pair, changed = chosen, True
        if not changed:
            break
    return np.array([0.0, *pair])


def fit_class_bias(probs: np.ndarray, labels: np.ndarray, base: np.ndarray) -> np.ndarray:
    """18 log-biases added to `base`, by coordinate ascent over CLASS_GRID from zero."""
    bias = np.zeros(NUM_CLASSES)

    def score(candidate: np.ndarray) -> float:
        return macro_f1(labels, decide(probs, base + candidate))

    current = score(bias)
    for _ in range(ROUNDS):
        changed = False
        for c in range(NUM_CLASSES):
            options = [np.where(np.arange(NUM_CLASSES) == c, v, bias) for v in CLASS_GRID if v != bias[c]]
            chosen, current = best_of(options, score, current, lambda b: float(np.abs(b).sum()))
            if chosen is not None:
                bias, changed = chosen, True
        if not changed:
            break
    return bias
