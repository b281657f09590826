"""Search spaces as files (docs/formats.md, "Search space"): what `maskkit tune --space FILE` lets free.

A search space is a YAML mapping of `maskkit train` options (recipe names: `lr`, `input_size`...),
each with its range: a list is a choice among its values, a mapping `{low, high}` a range (floats
when a bound is a float, else integers; `log: true` samples on a log scale, `step` on a grid). The
options the space does not name, and those the study fixes (tune's train flags or `--config`), are
fixed by the study's recipe. The shipped default is maskkit/data/search_space.yaml.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from maskkit.contract.errors import MaskkitError
from maskkit.contract.recipe import as_fields
from maskkit.options import TrainOptions

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "data" / "search_space.yaml"
# Where and how a trial runs, or what the objective decides: never searched.
NOT_SEARCHED = ("fold", "device", "workers", "cache", "threads", "wandb", "weights", "precision")
FIX = ("a search space maps train options to a list of choices or {low: A, high: B} "
       "(optional log: true, step: S); see maskkit/data/search_space.yaml")
RANGE_KEYS = {"low", "high", "log", "step"}
DIGITS = 4  # a drawn float is rounded to this many significant digits (what a trial trains and --best writes)


@dataclass(frozen=True)
class Dimension:
    """One free option: `choices` (a categorical), or `low`..`high` (`kind` int or float)."""

    name: str  # the recipe name (input_size, lr, ...)
    kind: str  # categorical, int or float
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    def values(self) -> tuple:
        """The values whose validity is checked: every choice, or both bounds."""
        return self.choices if self.kind == "categorical" else (self.low, self.high)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"choices": list(self.choices)}

    def holds(self, value: object) -> bool:
        """Whether a trial's value lies in this dimension: one of the choices (of the same type: 1 is not
        true), or a number of the kind between the bounds."""
        if self.kind == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices)
        kinds = (int,) if self.kind == "int" else (int, float)
        return isinstance(value, kinds) and not isinstance(value, bool) and self.low <= value <= self.high

    def shown(self) -> str:
        """The dimension as a message names it: its choices, or low..high."""
        return ", ".join(map(str, self.choices)) if self.kind == "categorical" else f"{self.low}..{self.high}"


def stored_dimension(spec: object) -> Dimension:
    """A Dimension from its `to_dict` (a study's identity records them); ValueError when it is not one."""
    if (not isinstance(spec, Mapping) or set(spec) != {f.name for f in dataclasses.fields(Dimension)}
            or not isinstance(spec["choices"], list)):
        raise ValueError("not a search-space dimension")
    d = Dimension(**{**spec, "choices": tuple(spec["choices"])})
    numbers = (d.low, d.high, *(() if d.step is None else (d.step,)))
    if (d.kind not in ("categorical", "int", "float") or not isinstance(d.name, str) or not isinstance(d.log, bool)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)
            or (d.kind == "categorical") != bool(d.choices)):
        raise ValueError("not a search-space dimension")
    return d


class OutsideSpace(MaskkitError):
    """A trial's value that the search space cannot give (a trial enqueued by hand or by another program)."""


def _dimension(name: str, spec: object, where: str) -> Dimension:
    if isinstance(spec, list):
        if not spec or not all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
            raise MaskkitError(f"{where}: a choice list needs one or more plain values (numbers, strings, "
                               f"true/false); {FIX}")
        return Dimension(name, "categorical", choices=tuple(spec))
    if not isinstance(spec, Mapping) or not {"low", "high"} <= set(spec) or set(spec) - RANGE_KEYS:
        raise MaskkitError(f"{where}: {spec!r} is neither a list nor {{low, high[, log, step]}}; {FIX}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers) or not isinstance(log, bool):
        raise MaskkitError(f"{where}: low, high and step must be numbers and log true or false; {FIX}")
    if not low < high or (log and low <= 0) or (step is not None and step <= 0) or (log and step is not None):
        raise MaskkitError(f"{where}: need low < high (low > 0 with log: true; step > 0, not with log)")
    kind = "float" if any(isinstance(v, float) for v in numbers) else "int"
    return Dimension(name, kind, low=low, high=high, log=log, step=step)


def check_value(fixed: TrainOptions, name: str, value: object, path: Path) -> None:
    """Refuse a value the option cannot take: of the wrong type for its field (a recipe's check,
    TrainOptions.from_dict: 1.5 epochs, 1 for true, "no" for false) or out of train's range (the
    message of train's own check); the messages name the space file and the key."""
    where = f"{path}: {name}"
    fields = as_fields({name: value}, str(path))  # a bad size: "PATH: input_size '64': expected WIDTHxHEIGHT..."
    TrainOptions.from_dict(fields, str(path), ranges=False)  # "PATH: KEY: VALUE is not ..."
    try:
        dataclasses.replace(fixed, **fields).check()
    except (MaskkitError, TypeError, ValueError) as exc:
        raise MaskkitError(f"{where}: {value!r}: {exc}") from None


def field_of(name: str) -> str:
    """The TrainOptions field a space key sets (`input_size` sets `img_size`)."""
    return "img_size" if name == "input_size" else name


def read_search_space(path: str | Path, fixed: TrainOptions, unchecked: frozenset = frozenset()) -> dict[str, Dimension]:
    """The dimensions of a search-space file, each value checked against the study's fixed options
    but those of a field in `unchecked` (fixed by the study, which leaves them out)."""
    path = Path(path)
    if not path.is_file():
        raise MaskkitError(f"{path}: search space not found ({FIX})")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaskkitError(f"{path}: not readable YAML ({reason[:120]}); {FIX}") from None
    if not isinstance(data, Mapping) or not data:
        raise MaskkitError(f"{path}: not a mapping of options; {FIX}")
    known = TrainOptions.field_names() - {"img_size"} | {"input_size"}
    space = {}
    for key, spec in data.items():
        name, where = str(key).replace("-", "_"), f"{path}: {key}"
        if name not in known:
            raise MaskkitError(f"{where}: not a train option (see maskkit train --help; input_size is WIDTHxHEIGHT)")
        if name in NOT_SEARCHED:
            raise MaskkitError(f"{where}: decided by the study, not searched (give it as a fixed train option)")
        dimension = _dimension(name, spec, where)
        space[name] = dimension
        if field_of(name) in unchecked:
            continue
        if dimension.kind != "categorical" and not isinstance(getattr(fixed, name, None), (int, float)):
            raise MaskkitError(f"{where}: a range needs a numeric option; list the choices instead")
        for value in dimension.values():  # a bound as the trials draw it: an int range gives ints, a float range floats
            kind = {"int": int, "float": float}.get(dimension.kind)
            check_value(fixed, name, kind(value) if kind else value, path)
    return space


def rounded(value: float, low: float, high: float) -> float:
    """`value` to DIGITS significant digits, kept within [low, high]."""
    return min(max(float(f"{value:.{DIGITS}g}"), low), high)


def suggest(trial, space: Mapping[str, Dimension]) -> dict:
    """One trial's values (recipe names) drawn by an Optuna trial from the space; a float is rounded
    to DIGITS significant digits (the trial trains what its recipe says and --best writes). A value
    outside the space (Optuna takes an enqueued trial's values as given) is OutsideSpace."""
    values = {}
    for name, d in space.items():
        drawn, out_of_range = _draw(trial, d)
        if out_of_range or not d.holds(drawn):
            raise OutsideSpace(f"{name}={_enqueued(trial, name, drawn)!r}, outside the search space ({d.shown()})")
        values[name] = rounded(drawn, float(d.low), float(d.high)) if d.kind == "float" else drawn
    return values


def _draw(trial, d: Dimension) -> tuple[object, bool]:
    """The trial's value of `d`, and whether Optuna found it out of range (it warns of an enqueued
    number outside the bounds, and raises ValueError for a value that is not one of the choices)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if d.kind == "categorical":
                value = trial.suggest_categorical(d.name, list(d.choices))
            elif d.kind == "int":
                value = trial.suggest_int(d.name, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
            else:
                value = trial.suggest_float(d.name, float(d.low), float(d.high), step=d.step, log=d.log)
        except ValueError:
            return None, True
    return value, any("out of range" in str(w.message) for w in caught)


def _enqueued(trial, name: str, drawn: object) -> object:
    """The value an enqueued trial fixed for `name` (Optuna's suggest_int truncates 5.5 to 5), else `drawn`."""
    try:
        return trial.study.get_trials(deepcopy=False)[trial.number].system_attrs["fixed_params"][name]
    except (AttributeError, IndexError, KeyError, TypeError):
        return drawn
