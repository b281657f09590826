"""Training recipes as files (docs/formats.md, "Recipe"): `maskkit train --config FILE`.

A recipe is a YAML mapping of `maskkit train` options by their field names (`backbone`, `heads`,
`lr`, `input_size: 256x320` as WIDTHxHEIGHT...), as `--print-config` writes it. A run's
config.json is a recipe too: its "options" are read (so `--config runs/X/config.json --fold 1`
trains the same recipe on another fold). Options given on the command line win over the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import atomic_path

FIX = "a recipe is a YAML mapping of train options, as `maskkit train --print-config` writes it"


def parse_wxh(text: object, source: str) -> tuple[int, int]:
    """'256x320' (WIDTHxHEIGHT) -> (height, width), the order models take."""
    try:
        width, height = (int(v) for v in str(text).lower().split("x"))
        if width <= 0 or height <= 0:
            raise ValueError
    except ValueError:
        raise MaskkitError(f"{source}: input_size {text!r}: expected WIDTHxHEIGHT like 256x320") from None
    return height, width


def read_recipe(path: str | Path) -> dict:
    """The option values of a recipe file (YAML) or a run's config.json, as TrainOptions fields."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MaskkitError(f"{path}: recipe not found ({FIX})")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaskkitError(f"{path}: not a readable recipe ({reason[:120]}); {FIX}") from None
    if isinstance(data, Mapping) and isinstance(data.get("options"), Mapping):  # a run's config.json
        data = data["options"]
    if not isinstance(data, Mapping):
        raise MaskkitError(f"{path}: not a mapping of options; {FIX}")
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    if "input_size" in values:
        values["img_size"] = parse_wxh(values.pop("input_size"), str(path))
    return values


def recipe_text(options: Mapping) -> str:
    """YAML of TrainOptions fields, with the input size written WIDTHxHEIGHT."""
    import yaml

    values = dict(options)
    height, width = values.pop("img_size")
    values = {"input_size": f"{width}x{height}", **values}
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False)


def write_recipe(options: Mapping, out: str | Path | None = None) -> None:
    """The recipe to stdout (None or '-') or atomically to a file."""
    import sys

    text = recipe_text(options)
    if out is None or str(out) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_path(out) as tmp:
        tmp.write_text(text)
