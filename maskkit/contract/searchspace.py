"""Search spaces as files (docs/formats.md, "Search space"): what `maskkit tune --space FILE` lets free.

A search space is a YAML mapping of `maskkit train` options (recipe names: `lr`, `input_size`...),
each with its range: a list is a choice among its values, a mapping `{low, high}` a range (floats
when a bound is a float, else integers; `log: true` samples on a log scale, `step` on a grid). The
options the space does not name, and those the study fixes (tune's train flags or `--config`), are
fixed by the study's recipe. The shipped default is maskkit/data/search_space.yaml.
"""

from __future__ import annotations

import dataclasses
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


def check_value(fixed: TrainOptions, name: str, value: object, where: str) -> None:
    """Refuse a value the option cannot take (the message of train's own check, naming `where`)."""
    try:
        fields = as_fields({name: value}, "input_size")
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
        for value in dimension.values():
            check_value(fixed, name, int(value) if dimension.kind == "int" else value, where)
    return space


def rounded(value: float, low: float, high: float) -> float:
    """`value` to DIGITS significant digits, kept within [low, high]."""
    return min(max(float(f"{value:.{DIGITS}g}"), low), high)


def suggest(trial, space: Mapping[str, Dimension]) -> dict:
    """One trial's values (recipe names) drawn by an Optuna trial from the space; a float is rounded
    to DIGITS significant digits (the trial trains what its recipe says and --best writes)."""
    values = {}
    for name, d in space.items():
        if d.kind == "categorical":
            values[name] = trial.suggest_categorical(name, list(d.choices))
        elif d.kind == "int":
            values[name] = trial.suggest_int(name, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
        else:
            drawn = trial.suggest_float(name, float(d.low), float(d.high), step=d.step, log=d.log)
            values[name] = rounded(drawn, float(d.low), float(d.high))
    return values
