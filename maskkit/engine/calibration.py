"""Calibrated out-of-fold evidence about labels: temperature scaling, cleanlab's noise matrix, persons
and prediction sets pooled (what `maskkit audit` judges labels with; benchmarks/README.md measures it).

Each prediction set's probabilities are temperature-scaled per task, fitted on the set itself
(short runs are overconfident). A person's photos share one face, so they are one piece of
evidence, not seven votes: gender and age group are judged on the mean of the person's calibrated
log-probabilities, scaled by a second, person-level temperature, then weighed against the label with
cleanlab's noise matrix. Sets are combined by the mean of their log-probabilities (a person) or of
their log-odds (a swapped pair of images). With an outside expert that never saw the labels (audit
--expert, `add_expert`), a person's gender is judged by `flip_fit` instead: the expert's and each
set's log-odds weighted by how well each knows gender, fitted on the labels together with their
flip rate.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_softmax, softmax

from maskkit.contract.labels import AGE_GROUPS, TASKS, decode, logit, task_probs

SWAP_PRIOR = (0.5, 0.25, 0.25)  # as labelled, swapped, any other pair of true masks (shared by those 7)
FLIP_RATE_BOUNDS = (1e-3, 0.3)  # flip_fit's label flip rate is searched here
MAX_WEIGHT = 5.0  # flip_fit's weight of one source's log-odds: finite where a tiny set separates perfectly
FALLBACK_FLIP_RATE = 0.05  # flip_fit with too few labels (under 10, or one class) to fit on
# flip_fit's prior on the flip rate, Beta(a, b): mode 0.02, worth about 50 persons, so that a small
# set's one confident disagreement is not read as the source's own error rate (the 58 published gender
# fixes of the competition's 2,700 persons are 2 %).
FLIP_RATE_PRIOR = (2.0, 50.0)


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-7, 1.0))


def pooled(probs: np.ndarray) -> np.ndarray:
    """Normalised geometric mean over axis 0 (the mean of log-probabilities), ignoring NaN entries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an image no set predicts stays NaN
        mean = np.exp(np.nanmean(log_probs(probs), axis=0))
    return mean / mean.sum(axis=-1, keepdims=True)


def mean_of_logits(values: Sequence[float]) -> float:
    """Combine several models' probabilities of one event: the mean of their log-odds."""
    return float(1 / (1 + np.exp(-np.mean(logit(values)))))


def fit_temperature(logp: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the mean NLL of softmax(logp / T) against `labels` (temperature scaling).

    Fitted on the out-of-fold set itself: the labels are mostly right, and T only rescales confidence.
    """
    if len(labels) < 10 or len(np.unique(labels)) < 2:
        return 1.0
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=1)[rows, labels].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(50.0)), method="bounded").x))


def calibrated(logp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """softmax(logp / T) with T fitted on all rows, wrong labels included.

    Refitting without the rows that look mislabelled would leave separable data, whose best T is
    near zero: every judgement would read as certain. The labels' own noise keeps T honest.
    """
    return softmax(logp / fit_temperature(logp, labels), axis=1)


def label_noise_posterior(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """P(true class | evidence, given label) ~ N[given, class] x probs[class].

    `probs` are calibrated against the given labels; N[i, j] = P(label i | true j) is the noise matrix
    that cleanlab's confident learning estimates (per-class thresholds: each class's mean
    self-confidence). Without it a doubted label would read as wrong as often as the model errs;
    with it, about as often as labels are wrong. (Also undoing the noise in `probs`, N^-1 probs,
    made p_wrong overconfident on real faces, where N counts the model's own errors as noise:
    precision 0.74 among suspects with p_wrong >= 0.9, benchmarks/realfaces_audit.py.)
    Falls back to `probs` where too few examples (under 30, or a class under 5) make N unreliable.
    """
    counts = np.bincount(given, minlength=probs.shape[1])
    if len(given) < 30 or counts.min() < 5:
        return probs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, noise, _, _ = estimate_py_and_noise_matrices_from_probabilities(given, probs)
    posterior = probs * np.clip(noise, 1e-4, 1.0)[given]  # never rule a flip out entirely
    return posterior / posterior.sum(axis=1, keepdims=True)


def flip_fit(log_odds: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(weights >= 0, bias, flip rate) maximising the posterior (FLIP_RATE_PRIOR) of binary labels each
    flipped with one small probability: P(given = 1 | x) = (1 - rate) s + rate (1 - s), s = sigmoid(x . weights + bias).

    Each column of `log_odds` is one source's log-odds of class 1 (0 where it has no opinion). Fitted on
    the labels themselves: the rate takes the confident disagreements that a plain temperature would
    spread over every row by flattening the source (realfaces: an outside expert's temperature 1.5-1.9
    with a rate of 0.026-0.033 against 2.8-3.0 without, benchmarks/README.md), and the weights say how
    well each source knows the labels.
    """
    x = np.asarray(log_odds, float).reshape(len(given), -1)
    y = np.asarray(given, float)
    if len(y) < 10 or len(np.unique(y)) < 2:
        return np.ones(x.shape[1]), 0.0, FALLBACK_FLIP_RATE
    k, (a, b) = x.shape[1], FLIP_RATE_PRIOR

    def nll(theta: np.ndarray) -> float:
        s = expit(x @ theta[:k] + theta[k])
        rate = theta[k + 1]
        p = np.clip((1 - rate) * s + rate * (1 - s), 1e-12, 1 - 1e-12)
        prior = (a - 1) * np.log(rate) + (b - 1) * np.log1p(-rate)
        return float(-(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)) + prior) / len(y))

    bounds = [(0.0, MAX_WEIGHT)] * k + [(None, None), FLIP_RATE_BOUNDS]
    fits = [minimize(nll, np.r_[np.full(k, 0.5), 0.0, rate], method="L-BFGS-B", bounds=bounds)
            for rate in (0.01, 0.05)]
    theta = min(fits, key=lambda fit: fit.fun).x
    return theta[:k], float(theta[k]), float(theta[k + 1])


def flip_probability(log_odds: np.ndarray, given: np.ndarray) -> np.ndarray:
    """P(label wrong) of each binary label under `flip_fit` of the same rows: the flip's share of the
    label's likelihood, rate (1 - s_given) / (rate (1 - s_given) + (1 - rate) s_given)."""
    x = np.asarray(log_odds, float).reshape(len(given), -1)
    weights, bias, rate = flip_fit(x, given)
    s_given = expit(np.where(np.asarray(given) == 1, 1, -1) * (x @ weights + bias))
    return rate * (1 - s_given) / (rate * (1 - s_given) + (1 - rate) * s_given)


def cleanlab_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's (issue flags, label quality scores); quiet about classes with few examples.

    find_label_issues is confident learning: per-class thresholds (each class's mean self-confidence).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quality = get_label_quality_scores(labels, probs)
        if len(np.unique(labels)) < 2:
            return np.zeros(len(labels), bool), quality
        return find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1), quality


def swap_probabilities(idx: np.ndarray, mask: np.ndarray, pm: np.ndarray) -> dict[tuple[int, int], float]:
    """P(images i and j carry each other's mask label) for each pair of the person's images with different labels.

    The pair's true masks have 9 combinations, each as likely as the product of the two images'
    calibrated probabilities: as labelled (c = P_i(own), d = P_j(own)), swapped (a = P_i(mask of j),
    b = P_j(mask of i)), or one of 7 others (the rest, r = 1 - ab - cd). With SWAP_PRIOR's weights
    P(swapped) = 0.25ab / (0.5cd + 0.25ab + 0.25r/7): a pair is swapped only when each image looks
    like the other's label, not merely when one image looks wrong.
    """
    kept_prior, swap_prior, other_prior = SWAP_PRIOR
    result = {}
    for pos, i in enumerate(idx):
        for j in idx[pos + 1:]:
            mi, mj = mask[i], mask[j]
            if mi == mj:
                continue
            swapped, kept = pm[i, mj] * pm[j, mi], pm[i, mi] * pm[j, mj]
            rest = max(0.0, 1.0 - swapped - kept)
            weight = swap_prior * swapped
            result[(int(i), int(j))] = float(weight / (weight + kept_prior * kept + other_prior * rest / 7))
    return result


class Evidence:
    """Calibrated out-of-fold evidence on a table of images, from one or more prediction sets (models).

    `probs[task]`: per image, the sets' calibrated probabilities pooled; `flags`/`quality` (per task)
    and `flags18`/`quality18` (18 classes): cleanlab's verdicts on them; `persons`: person -> rows.
    """

    def __init__(self, images: pd.DataFrame, probs: np.ndarray) -> None:
        """probs: (sets, n, 18) out-of-fold probabilities, NaN where a set does not predict an image."""
        self.images = images.reset_index(drop=True)
        labels = self.images["label"].to_numpy(np.int64)
        self.given = dict(zip(TASKS, decode(labels)))
        self.persons = self.images.groupby("person", sort=True).indices
        self.sets = [self._calibrated_set(set_probs) for set_probs in probs]
        # person_probs[task][set]: person -> (P(true class | photos, label), calibrated P(class | photos))
        self.person_probs = {task: self._person_level(task) for task in ("gender", "age")}
        self.flags18, self.quality18 = cleanlab_issues(labels, pooled(probs))
        self.probs = {task: pooled(np.stack([tasks[task] for _, tasks in self.sets])) for task in TASKS}
        self.flags, self.quality = {}, {}
        for task in self.probs:
            self.flags[task], self.quality[task] = cleanlab_issues(self.given[task], self.probs[task])
        self.expert: dict[str, float] = {}  # person -> the outside expert's P(female) (add_expert)
        self.gender_wrong: dict[str, float] = {}  # person -> P(gender label wrong), with the expert

    def add_expert(self, p_female: dict[str, float]) -> None:
        """An outside model's P(female) per person (audit --expert). It never saw the labels, so the
        persons' gender is judged by `flip_fit` over its log-odds and each set's person-level
        calibrated log-odds (0 where a source has no opinion): each weighted by how well it knows the
        labels, fitted with their flip rate. `person` then returns that P(label wrong)."""
        self.expert = {p: float(v) for p, v in p_female.items() if p in self.persons and np.isfinite(v)}
        if not self.expert:
            return
        names = list(self.persons)
        columns = [[logit(self.expert[p]) if p in self.expert else 0.0 for p in names]]
        for probs in self.person_probs["gender"]:
            columns.append([logit(probs[p][1][1]) if p in probs else 0.0 for p in names])
        given = np.array([int(self.given["gender"][self.persons[p][0]]) for p in names])
        self.gender_wrong = dict(zip(names, flip_probability(np.stack(columns, axis=1), given)))

    def wrong_by(self, task: str, person: str) -> list[str]:
        """The evidence sets whose own verdict is another class than the label: oof1.. (the --oof sets in
        order) and `expert`."""
        given = int(self.given[task][self.persons[person][0]])
        names = [f"oof{k + 1}" for k, probs in enumerate(self.person_probs[task])
                 if person in probs and probs[person][1].argmax() != given]
        if task == "gender" and person in self.expert and round(self.expert[person]) != given:
            names.append("expert")
        return names

    def verdict(self, task: str, person: str) -> np.ndarray | None:
        """The sets' own calibrated P(class | photos) of a person, pooled (no label-noise prior); None if no set covers it."""
        found = [probs[person][1] for probs in self.person_probs[task] if person in probs]
        return pooled(np.array(found)) if found else None

    def _calibrated_set(self, set_probs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(rows the set covers, {task: calibrated (n, k) probabilities, NaN elsewhere})."""
        rows = np.isfinite(set_probs).all(axis=1)
        tasks = {}
        for task, p in task_probs(set_probs[rows]).items():
            full = np.full((len(set_probs), p.shape[1]), np.nan)
            full[rows] = calibrated(log_probs(p), self.given[task][rows])
            tasks[task] = full
        return rows, tasks

    def _person_level(self, task: str) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Per set: person -> (label-noise posterior, calibrated probabilities) of the person's gender or age group."""
        result = []
        for rows, tasks in self.sets:
            names, means, given = [], [], []
            for person, idx in self.persons.items():
                idx = idx[rows[idx]]
                if len(idx):
                    names.append(person)
                    means.append(log_probs(tasks[task][idx]).mean(axis=0))
                    given.append(int(self.given[task][idx[0]]))
            if not names:
                result.append({})
                continue
            given = np.array(given)
            probs = calibrated(np.array(means), given)
            result.append(dict(zip(names, zip(label_noise_posterior(probs, given), probs))))
        return result

    def person(self, task: str, person: str) -> tuple[np.ndarray, int, int]:
        """(P(true class | photos, label) combined over sets (gender with the expert: `add_expert`'s),
        sources judging the person, sources whose own verdict is another class than the label)."""
        given = int(self.given[task][self.persons[person][0]])
        found = [probs[person] for probs in self.person_probs[task] if person in probs]
        if not found:
            return np.full(len(AGE_GROUPS) if task == "age" else 2, np.nan), 0, 0
        combined = pooled(np.array([posterior for posterior, _ in found]))
        agree = int(sum(verdict.argmax() != given for _, verdict in found))
        if task != "gender" or person not in self.gender_wrong:
            return combined, len(found), agree
        combined = np.full(2, self.gender_wrong[person])
        combined[given] = 1 - combined[given]
        if person not in self.expert:
            return combined, len(found), agree
        return combined, len(found) + 1, agree + int(round(self.expert[person]) != given)

    def likeliest_swap(self, idx: np.ndarray) -> tuple[float, tuple[int, int], list[float]] | None:
        """The person's likeliest swapped pair of images: (P(swapped) over sets, the pair, each set's P)."""
        mask = self.given["mask"]
        per_set = [swap_probabilities(idx[rows[idx]], mask, tasks["mask"]) for rows, tasks in self.sets]
        pairs = set().union(*per_set)
        if not pairs:
            return None
        # a set that does not name a pair gives it (almost) no probability
        scored = [(mean_of_logits([found.get(pair, 0.0) for found in per_set if found]), pair) for pair in pairs]
        score, pair = max(scored)
        return score, pair, [found.get(pair, 0.0) for found in per_set if found]

    def mask_wrong_by(self, images: Sequence[int], swapped: bool) -> list[str]:
        """The sets (oof1..) that on their own call the mask label wrong: the pair `images` swapped
        (P > 0.5), or one image's mask (its calibrated verdict another mask)."""
        mask, names = self.given["mask"], []
        for k, (rows, tasks) in enumerate(self.sets):
            if not rows[list(images)].all():
                continue
            if swapped:
                i, j = images
                calls = swap_probabilities(np.array([i, j]), mask, tasks["mask"]).get((int(i), int(j)), 0.0) > 0.5
            else:
                calls = tasks["mask"][images[0]].argmax() != mask[images[0]]
            if calls:
                names.append(f"oof{k + 1}")
        return names

    def mask_votes(self, image: int) -> list[np.ndarray]:
        """Each covering set's calibrated mask probabilities for one image."""
        return [tasks["mask"][image] for rows, tasks in self.sets if rows[image]]
