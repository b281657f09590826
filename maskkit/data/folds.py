"""Person-grouped, stratified folds: the manifest that `split` writes and `train` makes on the fly."""

from __future__ import annotations

import warnings

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console
from maskkit.contract.labels import AGE_GROUPS, GENDERS, age_group
from maskkit.contract.manifest import EXTRA_FOLD, MANIFEST_COLUMNS, check_persons_disjoint


def person_strata(images: pd.DataFrame) -> pd.Series:
    """Each person's stratum, gender x age group (0..5), indexed by person."""
    persons = images.groupby("person", sort=True)[["gender", "age"]].first()
    gender = persons["gender"].map(GENDERS.index).to_numpy()
    return pd.Series(3 * gender + age_group(persons["age"].to_numpy()), index=persons.index)


def stratum_name(stratum: int) -> str:
    return f"{GENDERS[stratum // 3]}/{AGE_GROUPS[stratum % 3]}"


def check_folds_fillable(strata: pd.Series, folds: int, source: str) -> None:
    """Refuse fewer than 2 folds or more folds than the largest stratum has persons; warn (naming each stratum) when a
    gender x age stratum has fewer persons than folds: some folds then lack it, persons stay disjoint."""
    if folds < 2:
        raise MaskkitError(f"--folds {folds}: need at least 2 folds")
    counts = strata.value_counts()
    if folds > counts.max():  # StratifiedGroupKFold needs one stratum that fills every fold
        raise MaskkitError(f"{source}: --folds {folds} is more than its largest gender x age stratum has persons "
                           f"({stratum_name(counts.idxmax())} has {counts.max()}); use --folds {max(2, counts.max())} or fewer")
    short = counts[counts < folds]
    if len(short):
        detail = ", ".join(f"{stratum_name(s)} has {n}" for s, n in short.sort_index().items())
        console.print(f"[yellow]warning:[/] {source}: some strata have fewer persons than --folds {folds} "
                      f"({detail}); those folds will lack them (persons stay in one fold each)")


def make_manifest(images: pd.DataFrame, folds: int = 5, seed: int = 42, source: str = "dataset") -> pd.DataFrame:
    """Assign every person to one fold with StratifiedGroupKFold (stratified by gender x age group)."""
    strata = person_strata(images)
    check_folds_fillable(strata, folds, source)
    # One row per person: groups of size one make StratifiedGroupKFold balance persons, not images.
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = {}
    with warnings.catch_warnings():  # "least populated class" is reported above, naming the stratum
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, held_out) in enumerate(splitter.split(strata.index, strata.to_numpy(), groups=strata.index)):
            fold_of.update({person: fold for person in strata.index[held_out]})
    manifest = images.assign(fold=images["person"].map(fold_of).astype(int))
    check_persons_disjoint(manifest, source)
    return manifest.loc[:, list(MANIFEST_COLUMNS)].reset_index(drop=True)


def add_extra(manifest: pd.DataFrame, extra: pd.DataFrame, source: str) -> pd.DataFrame:
    """The manifest with the extra persons' images (`load_train` rows) in EXTRA_FOLD: they train in
    every fold and validate in none; a person id the manifest already has is refused."""
    shared = sorted(set(extra["person"]) & set(manifest["person"]))
    if shared:
        raise MaskkitError(f"{source}: {len(shared)} extra person id(s) are also persons of the dataset "
                           f"({', '.join(shared[:3])}); extra persons need their own ids (maskkit import writes x...)")
    rows = extra.assign(fold=EXTRA_FOLD).loc[:, list(MANIFEST_COLUMNS)]
    both = pd.concat([manifest, rows], ignore_index=True)
    check_persons_disjoint(both, source)
    return both
