"""The calibration file (docs/formats.md, "Calibration file"): the decision `maskkit calibrate` fitted on
pooled out-of-fold predictions, which `predict --calibration` and `vote --calibration` apply.

A decision multiplies each class probability by exp(bias of the class) and renormalises; `ans` is the
argmax. The bias of class c is `age_bias[age group of c]` plus, when fitted, `class_bias[c]`. With
several recipes, `recipes[k].weight` are the weights of their soft vote, taken before the biases.
`Decision.read` is the one typed reader: a missing or wrong field is one line naming the file and key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import examples, write_text
from maskkit.contract.labels import AGE_GROUPS, NUM_CLASSES, decode

FORMAT = 1
TASK = "mask-gender-age-18"  # the competition's 18 classes scored by macro F1 (contract/labels.py)
SCORE_KEYS = ("macro_f1", "f1_mask", "f1_gender", "f1_age")
BIAS_LIMIT = 20.0  # |log-bias| a file may hold: exp(20) already overrules any probability
FIX = "write it with maskkit calibrate OOF.csv... -o calib.json"


def class_bias(age_bias, by_class=None) -> np.ndarray:
    """The (18,) log-bias of each class: its age group's bias, plus its own when `by_class` is given."""
    bias = np.asarray(age_bias, np.float64)[decode(np.arange(NUM_CLASSES))[2]]
    return bias + (np.asarray(by_class, np.float64) if by_class is not None else 0.0)


@dataclass(frozen=True)
class Recipe:
    """One recipe's pooled OOF file that the decision was fitted on, and its soft-vote weight."""

    file: str
    sha256: str
    weight: float


@dataclass(frozen=True)
class Decision:
    """What calib.json holds (see the module docstring)."""

    recipes: tuple[Recipe, ...]
    age_bias: tuple[float, float, float]
    class_bias: tuple[float, ...] | None
    images: int
    before: dict
    after: dict
    maskkit: str = ""
    held_out: dict | None = None  # the F1 of decisions fitted on the other folds (None: one fold)

    def bias(self) -> np.ndarray:
        """The (18,) additive log-bias of each class."""
        return class_bias(self.age_bias, self.class_bias)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """(n, 18) probabilities -> the calibrated ones, p * exp(bias) renormalised (ans: their argmax)."""
        scaled = np.asarray(probs, np.float64) * np.exp(self.bias())
        return scaled / scaled.sum(axis=1, keepdims=True)

    def weights(self) -> np.ndarray:
        return np.array([r.weight for r in self.recipes], np.float64)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "maskkit": self.maskkit, "task": TASK, "objective": "macro_f1",
                "recipes": [{"file": r.file, "sha256": r.sha256, "weight": r.weight} for r in self.recipes],
                "age_bias": list(self.age_bias),
                "class_bias": list(self.class_bias) if self.class_bias is not None else None,
                "oof": {"images": self.images, "before": self.before, "after": self.after, "held_out": self.held_out}}

    def write(self, out: str | Path | None) -> None:
        """calib.json (stdout when `out` is None or '-'), atomically; the caller checks `out` first."""
        write_text(json.dumps(self.to_dict(), indent=2) + "\n", out)

    @classmethod
    def read(cls, path: str | Path) -> Decision:
        """A calib.json, every field checked (one line naming the file and the key, exit 2)."""
        path = Path(path)
        if not path.is_file():
            raise MaskkitError(f"{path}: calibration file not found ({FIX})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MaskkitError(f"{path}: not a readable calibration file ({reason}); {FIX}") from None

        def bad(key: str, want: str) -> MaskkitError:
            return MaskkitError(f"{path}: key {key}: expected {want}; {FIX}")

        if not isinstance(data, dict):
            raise bad("(top)", "a JSON object")
        if data.get("format") != FORMAT:
            raise bad("format", f"{FORMAT}")
        if data.get("task") != TASK:
            raise MaskkitError(f"{path}: fitted for the task {data.get('task')!r}, not {TASK} (maskkit's 18 "
                               f"mask/gender/age classes); {FIX}")
        recipes = data.get("recipes")
        if not isinstance(recipes, list) or not recipes:
            raise bad("recipes", "a list of one or more {file, sha256, weight}")
        parsed = []
        for k, item in enumerate(recipes):
            if not isinstance(item, dict) or not isinstance(item.get("file"), str) \
                    or not isinstance(item.get("sha256"), str) or not _number(item.get("weight"), low=0.0):
                raise bad(f"recipes[{k}]", "{file: text, sha256: text, weight: a number >= 0}")
            parsed.append(Recipe(item["file"], item["sha256"], float(item["weight"])))
        if not any(r.weight > 0 for r in parsed):
            raise bad("recipes", "at least one weight above 0")
        age_bias = data.get("age_bias")
        if not _numbers(age_bias, len(AGE_GROUPS)):
            raise bad("age_bias", f"{len(AGE_GROUPS)} numbers in -{BIAS_LIMIT:g}..{BIAS_LIMIT:g} (one per age group "
                      f"{', '.join(AGE_GROUPS)})")
        class_bias = data.get("class_bias")
        if class_bias is not None and not _numbers(class_bias, NUM_CLASSES):
            raise bad("class_bias", f"null or {NUM_CLASSES} numbers in -{BIAS_LIMIT:g}..{BIAS_LIMIT:g}")
        oof = data.get("oof")
        if not isinstance(oof, dict) or not isinstance(oof.get("images"), int) or any(
                not isinstance(oof.get(when), dict) for when in ("before", "after")):
            raise bad("oof", "{images, before, after}")
        return cls(tuple(parsed), tuple(float(v) for v in age_bias),
                   tuple(float(v) for v in class_bias) if class_bias is not None else None,
                   oof["images"], oof["before"], oof["after"], str(data.get("maskkit", "")),
                   oof.get("held_out") if isinstance(oof.get("held_out"), dict) else None)

    def vote_weights(self, path: str | Path, files: list) -> np.ndarray | None:
        """The soft-vote weights for `files` (None when fitted on one recipe); one line when their count
        differs from the fitted recipes'."""
        if len(self.recipes) == 1:
            return None
        if len(files) != len(self.recipes):
            raise MaskkitError(f"{path}: vote weights fitted for {len(self.recipes)} recipes "
                               f"({examples([r.file for r in self.recipes], 4)}), but vote got {len(files)} file(s); "
                               "give one prediction CSV of each recipe, in the order calibrate was given them")
        fitted = {r.sha256: k for k, r in enumerate(self.recipes)}
        for k, file in enumerate(files):
            found = fitted.get(_sha256(file))
            if found is not None and found != k:
                raise MaskkitError(f"{file}: is the out-of-fold file {self.recipes[found].file}, recipe {found + 1} of "
                                   f"{path}, given as file {k + 1}; give the files in the order calibrate was given them")
        return self.weights()


def _sha256(path: str | Path) -> str | None:
    """The sha256 of a regular file's bytes (None for a stream or a missing file: nothing to compare)."""
    path = Path(path)
    if str(path) == "-" or not path.is_file():
        return None
    with contextlib.suppress(OSError):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return None


def _number(value: object, low: float = -math.inf) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low


def _numbers(values: object, count: int) -> bool:
    """A list of `count` biases, each finite and within BIAS_LIMIT."""
    return isinstance(values, list) and len(values) == count and all(
        _number(v, low=-BIAS_LIMIT) and v <= BIAS_LIMIT for v in values)
