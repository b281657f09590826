"""`maskkit split`: person-grouped, stratified folds written as the manifest CSV (docs/formats.md).

`--fixes` may be repeated: the fixes CSVs apply in the order given (a later file sees, and may
correct, what an earlier one changed; its `old` values are checked against that)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console
from maskkit.contract.fixes import SHIPPED, apply_fixes, read_fixes
from maskkit.contract.labels import NUM_CLASSES, class_name
from maskkit.contract.layout import load_train
from maskkit.contract.manifest import EXTRA_FOLD, MANIFEST_COLUMNS, write_manifest
from maskkit.data.folds import add_extra, make_manifest
from maskkit.options import SEED, SEED_RANGE


def fold_table(manifest: pd.DataFrame) -> Table:
    """Images per class (rows) and fold (columns), with person counts in the last row."""
    folds = sorted(manifest["fold"].unique())
    counts = pd.crosstab(manifest["label"], manifest["fold"]).reindex(
        index=range(NUM_CLASSES), columns=folds, fill_value=0)
    table = Table(title="images per class and fold", title_justify="left")
    table.add_column("class")
    for fold in folds:
        table.add_column("extra" if fold == EXTRA_FOLD else f"fold {fold}", justify="right")
    table.add_column("all", justify="right")
    for label, row in counts.iterrows():
        table.add_row(f"{label:>2} {class_name(label)}", *map(str, row.tolist()), str(int(row.sum())))
    persons = manifest.groupby("fold")["person"].nunique().reindex(folds)
    table.add_row("persons", *map(str, persons.tolist()), str(manifest["person"].nunique()), style="bold")
    return table


def run(data: Path, folds: int = 5, seed: int = SEED, fixes: str | Sequence[str] | None = None,
        out: Path | None = None, extra: Path | None = None) -> pd.DataFrame:
    """Read DATA/train, apply each fixes CSV in order, split into folds, write the manifest (stdout or `out`).

    `extra`: another dataset in the competition layout (maskkit import's OUT/train) whose persons get
    fold -1 (EXTRA_FOLD): they train in every fold, never validate, and take no part in the stratification."""
    if folds < 2:
        raise MaskkitError(f"--folds {folds}: need at least 2 folds")
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise MaskkitError(f"--seed {seed}: use {SEED_RANGE[0]}..{SEED_RANGE[1]}")
    fixes = [fixes] if isinstance(fixes, (str, Path)) else list(fixes or [])
    inputs = Inputs.of(data, extra, [f for f in fixes if str(f) not in SHIPPED])
    inputs.check(out, header=MANIFEST_COLUMNS)
    fix_tables = [(str(f), read_fixes(f)) for f in fixes]  # every file checked before any is applied
    images = load_train(data)
    for source, fix_table in fix_tables:
        images = apply_fixes(images, fix_table, source=source)
    manifest = make_manifest(images, folds, seed, source=str(data))
    if extra is not None:
        manifest = add_extra(manifest, load_train(extra), str(extra))
    console.print(fold_table(manifest))
    held_out = manifest[manifest["fold"] != EXTRA_FOLD]
    sizes = held_out.groupby("fold")["person"].nunique().to_numpy()
    extras = manifest.loc[manifest["fold"] == EXTRA_FOLD, "person"].nunique()
    added = f" + {extras} extra persons (fold -1: they train in every fold, never validate)" if extra is not None else ""
    console.print(f"{len(manifest)} images of {held_out['person'].nunique()} persons in {folds} folds "
                  f"({np.min(sizes)}-{np.max(sizes)} persons each){added}; no person in two folds")
    write_manifest(manifest, out, inputs=inputs)
    return manifest
