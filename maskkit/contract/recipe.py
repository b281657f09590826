"""Training recipes as files (docs/formats.md, "Recipe"): `maskkit train --config FILE`.

A recipe is a YAML mapping of `maskkit train` options by their field names (`backbone`, `heads`,
`lr`, `input_size: 256x320` as WIDTHxHEIGHT...), as `--print-config` writes it. A run's
config.json is a recipe too: its "options" are read (so `--config runs/X/config.json --fold 1`
trains the same recipe on another fold), without the machine settings (options.MACHINE_OPTIONS:
device, workers, threads, cache, wandb, logger), which describe the machine the run trained on, not
what it learns. A YAML written by hand may set them, and `name` and `runs_dir` too (a note says so).
Options given on the command line win over the file:
`train_options` merges TrainOptions' defaults < the recipe file < the command-line flags.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, examples, write_text
from maskkit.contract.manifest import read_manifest, validation_folds
from maskkit.contract.streams import is_stream
from maskkit.options import MACHINE_OPTIONS, TrainOptions, is_aug_file

PLACES = ("name", "runs_dir")  # where a run goes: train's --name and --runs-dir, not options
FIX = "a recipe is a YAML mapping of train options, as `maskkit train --print-config` writes it"


def as_fields(values: Mapping[str, object], where: str | None = None) -> dict:
    """Recipe keys (a file's, or train's command-line parameters) as TrainOptions fields: dashes become
    underscores, a Flag's own key (`input_size` WIDTHxHEIGHT, `multi` of --multi/--single) becomes its
    field through the Flag's parser, a path a string. `where` names a file's key in an error (None: the
    command line's flag)."""
    by_key = {flag.key or name: (name, flag) for name, flag in TrainOptions.flags().items()}
    fields = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        name, flag = by_key.get(key, (key, None))
        if isinstance(value, Path):
            value = str(value)
        if flag is not None and flag.parse is not None and value is not None:
            value = flag.parse(value, f"{where}: {key}" if where else flag.name)
        fields[name] = value
    return fields


def read_recipe(path: str | Path, places: bool = False) -> dict:
    """The option values of a recipe file (YAML) or a run's config.json, as TrainOptions fields: a
    config.json without its machine settings; a YAML's machine settings kept (with a note).
    `places`: return the YAML's `name` and `runs_dir` instead (never a config.json's)."""
    path = Path(path)
    if not path.is_file():
        raise MaskkitError(f"{path}: recipe not found ({FIX})")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaskkitError(f"{path}: not a readable recipe ({reason[:120]}); {FIX}") from None
    run_config = isinstance(data, Mapping) and isinstance(data.get("options"), Mapping)
    if run_config:
        copy = data.get("aug_file")  # the run's copy of its --aug FILE.yaml: the recipe trains with that
        data = {k: v for k, v in data["options"].items() if k not in MACHINE_OPTIONS}
        if isinstance(copy, str) and is_aug_file(str(data.get("aug", ""))):
            data["aug"] = str(path.parent / copy)
    if not isinstance(data, Mapping):
        raise MaskkitError(f"{path}: not a mapping of options; {FIX}")
    fields = as_fields(data, str(path))
    if places:
        return {} if run_config else {k: fields[k] for k in PLACES if k in fields}
    machine = [k for k in (*MACHINE_OPTIONS, *PLACES) if k in fields]
    if machine:
        console.print(f"{path}: sets {', '.join(machine)} (machine settings and the run's place, which a run's "
                      "config.json does not pass on); flags given here win", markup=False, highlight=False)
    return {k: v for k, v in fields.items() if k not in PLACES}


def train_options(flags: Mapping[str, object], given: Iterable[str],
                  recipe: str | Path | None = None) -> tuple[TrainOptions, set[str]]:
    """The options of a training: TrainOptions' defaults < the `recipe` file < the `given` flags.

    `flags`: train's command-line parameters by name (those that are no option, like the source or
    --name, are ignored); `given`: the names the user typed. Returns the options and the fields the
    recipe or the command line set (what --resume may change)."""
    from_file = read_recipe(recipe) if recipe is not None else {}
    typed = as_fields({name: flags[name] for name in given})
    typed = {name: value for name, value in typed.items() if name in TrainOptions.field_names()}
    if typed.get("wandb") and "logger" not in typed:  # --wandb PROJECT alone: log to that project
        typed["logger"] = "wandb"
    if recipe is not None:  # the file's values alone first, so that an error names the file
        TrainOptions.from_dict(from_file, str(recipe))
    options = TrainOptions.from_dict({**from_file, **typed}, "options", ranges=False)  # train checks them
    return options, set(from_file) | set(typed)


def check_new_run(source: str | Path, options: TrainOptions) -> None:
    """What a new run is refused for before torch and timm are imported (seconds): the options' ranges,
    an alias's near miss (efb2), a source that is not there, a --fold the manifest lacks (pandas only).
    commands/train checks them again for callers of its `run`, with timm and the whole data."""
    options.check(backbone=False)
    if is_stream(source):
        return
    if not Path(source).exists():
        raise MaskkitError(f"{source}: not found (give a manifest CSV from maskkit split, or DATA/train)")
    if Path(source).is_file() and not options.all_folds:
        folds = validation_folds(read_manifest(source))
        if options.fold not in folds:
            raise MaskkitError(f"--fold {options.fold}: {source} has folds {examples(folds, 10)}; pick one of them, "
                               "or all (a full-data model)")


def run_place(flags: Mapping[str, object], given: Iterable[str], recipe: str | Path | None) -> tuple[Path, str | None]:
    """(runs_dir, name) of a new run: the command line's, else a hand-written recipe's, else the defaults."""
    from_file = read_recipe(recipe, places=True) if recipe is not None else {}
    given = set(given)
    runs_dir = flags["runs_dir"] if "runs_dir" in given or "runs_dir" not in from_file else from_file["runs_dir"]
    name = flags["name"] if "name" in given or "name" not in from_file else from_file["name"]
    return Path(str(runs_dir)), None if name is None else str(name)


def recipe_text(options: Mapping) -> str:
    """YAML of TrainOptions fields, with the input size written WIDTHxHEIGHT."""
    values = dict(options)
    height, width = values.pop("img_size")
    values = {"input_size": f"{width}x{height}", **values}
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False)


def write_recipe(options: Mapping, out: str | Path | None = None) -> None:
    """The recipe to stdout (None or '-') or atomically to a file."""
    write_text(recipe_text(options), out)


def is_recipe_file(path: str | Path, limit: int = 1 << 20) -> bool:
    """Whether an existing file is a recipe, the kind `tune --best -o` may replace: YAML (at most `limit`
    bytes) holding a non-empty mapping that `read_recipe` reads: train options of their types (so not a
    search space, whose values are lists and ranges), input_size, name and runs_dir."""
    try:
        path = Path(path)
        if path.stat().st_size > limit:
            return False
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, Mapping) or not data:
            return False
        fields = as_fields(data, str(path))
        TrainOptions.from_dict({k: v for k, v in fields.items() if k not in PLACES}, str(path), ranges=False)
    except (OSError, ValueError, TypeError, yaml.YAMLError, RecursionError, MaskkitError):
        return False  # UnicodeDecodeError is a ValueError
    return True
