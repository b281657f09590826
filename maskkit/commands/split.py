"""`maskkit split`: person-grouped, stratified folds written as the manifest CSV of DESIGN.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table
from sklearn.model_selection import StratifiedGroupKFold

from maskkit.contract.layout import load_train
from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console, examples, write_csv
from maskkit.contract.fixes import apply_fixes, read_fixes
from maskkit.contract.labels import AGE_GROUPS, GENDERS, NUM_CLASSES, age_group, class_name

MANIFEST_COLUMNS = ("path", "person", "gender", "age", "mask", "label", "fold")


def person_strata(images: pd.DataFrame) -> pd.Series:
    """Each person's stratum, gender x age group (0..5), indexed by person."""
    persons = images.groupby("person", sort=True)[["gender", "age"]].first()
    gender = persons["gender"].map(GENDERS.index).to_numpy()
    return pd.Series(3 * gender + age_group(persons["age"].to_numpy()), index=persons.index)


def stratum_name(stratum: int) -> str:
    return f"{GENDERS[stratum // 3]}/{AGE_GROUPS[stratum % 3]}"


def check_folds_fillable(strata: pd.Series, folds: int, source: str) -> None:
    """Every stratum needs at least one person per fold for stratification to mean anything."""
    if folds < 2:
        raise MaskkitError(f"--folds {folds}: need at least 2 folds")
    counts = strata.value_counts()
    short = counts[counts < folds]
    if len(short):
        detail = ", ".join(f"{stratum_name(s)} has {n}" for s, n in short.sort_index().items())
        raise MaskkitError(
            f"{source}: --folds {folds} is more than some strata have persons ({detail}); "
            f"use --folds {max(2, int(short.min()))} or fewer"
        )


def make_manifest(images: pd.DataFrame, folds: int = 5, seed: int = 42, source: str = "dataset") -> pd.DataFrame:
    """Assign every person to one fold with StratifiedGroupKFold (stratified by gender x age group)."""
    strata = person_strata(images)
    check_folds_fillable(strata, folds, source)
    # One row per person: groups of size one make StratifiedGroupKFold balance persons, not images.
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = {}
    for fold, (_, held_out) in enumerate(splitter.split(strata.index, strata.to_numpy(), groups=strata.index)):
        fold_of.update({person: fold for person in strata.index[held_out]})
    manifest = images.assign(fold=images["person"].map(fold_of).astype(int))
    check_persons_disjoint(manifest, source)
    return manifest.loc[:, list(MANIFEST_COLUMNS)].reset_index(drop=True)


def check_persons_disjoint(manifest: pd.DataFrame, source: str) -> None:
    """No person may sit in two folds: that is validation data leaking into training."""
    folds_per_person = manifest.groupby("person")["fold"].nunique()
    leaked = folds_per_person[folds_per_person > 1].index.tolist()
    if leaked:
        raise MaskkitError(
            f"{source}: {len(leaked)} persons sit in two folds, so validation would leak into training "
            f"({examples(leaked)}); re-make the manifest with maskkit split"
        )


def fold_table(manifest: pd.DataFrame) -> Table:
    """Images per class (rows) and fold (columns), with person counts in the last row."""
    folds = sorted(manifest["fold"].unique())
    counts = pd.crosstab(manifest["label"], manifest["fold"]).reindex(
        index=range(NUM_CLASSES), columns=folds, fill_value=0)
    table = Table(title="images per class and fold", title_justify="left")
    table.add_column("class")
    for fold in folds:
        table.add_column(f"fold {fold}", justify="right")
    table.add_column("all", justify="right")
    for label, row in counts.iterrows():
        table.add_row(f"{label:>2} {class_name(label)}", *map(str, row.tolist()), str(int(row.sum())))
    persons = manifest.groupby("fold")["person"].nunique().reindex(folds)
    table.add_row("persons", *map(str, persons.tolist()), str(manifest["person"].nunique()), style="bold")
    return table


def run(data: Path, folds: int = 5, seed: int = 42, fixes: str | None = None, out: Path | None = None) -> pd.DataFrame:
    """Read DATA/train, apply fixes, split into folds, write the manifest (stdout or `out`)."""
    if folds < 2:
        raise MaskkitError(f"--folds {folds}: need at least 2 folds")
    inputs = Inputs.of(data, None if fixes in (None, "known") else fixes)
    inputs.check(out, header=MANIFEST_COLUMNS)
    fix_table = read_fixes(fixes) if fixes else None
    images = load_train(data)
    if fix_table is not None:
        images = apply_fixes(images, fix_table, source=str(fixes))
    manifest = make_manifest(images, folds, seed, source=str(data))
    console.print(fold_table(manifest))
    sizes = manifest.groupby("fold")["person"].nunique().to_numpy()
    console.print(f"{len(manifest)} images of {manifest['person'].nunique()} persons in {folds} folds "
                  f"({np.min(sizes)}-{np.max(sizes)} persons each); no person in two folds")
    write_csv(manifest, out, inputs=inputs)
    return manifest
