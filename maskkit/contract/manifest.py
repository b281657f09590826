"""The manifest CSV (docs/formats.md, "Manifest CSV"): one row per training image with its fold.

`split` writes it; `train`, `audit` and `cam` read it, all through `read_manifest`, which applies
the leakage guard (`check_persons_disjoint`: no person may sit in two folds) and the row checks
(`check_manifest_rows`: one row per image, one gender and age per person).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, examples, read_csv, write_csv
from maskkit.contract.labels import GENDERS, MASKS, NUM_CLASSES
from maskkit.contract.paths import check_no_parent

MANIFEST_COLUMNS = ("path", "person", "gender", "age", "mask", "label", "fold")
MAKE_ONE = "make one with: maskkit split DATA/train -o manifest.csv"
EXTRA_FOLD = -1  # `split --extra` persons: they train in every fold and validate in none


def check_persons_disjoint(manifest: pd.DataFrame, source: str) -> None:
    """No person may sit in two folds: that is validation data leaking into training."""
    folds_per_person = manifest.groupby("person")["fold"].nunique()
    leaked = folds_per_person[folds_per_person > 1].index.tolist()
    if leaked:
        raise MaskkitError(
            f"{source}: {len(leaked)} persons sit in two folds, so validation would leak into training "
            f"({examples(leaked)}); re-make the manifest with maskkit split"
        )


def validation_folds(manifest: pd.DataFrame) -> list[int]:
    """The manifest's folds that validate (EXTRA_FOLD's persons train in every fold and validate in none)."""
    return sorted(int(f) for f in manifest["fold"].unique() if f != EXTRA_FOLD)


def check_manifest_rows(manifest: pd.DataFrame, source: str) -> None:
    """Every row names an image once, and a person has one gender and one age in every row."""
    empty = manifest["path"].isna() | (manifest["path"].astype(str).str.strip() == "")
    if empty.any():
        lines = [str(i + 2) for i in manifest.index[empty]]
        raise MaskkitError(f"{source}: empty path in {int(empty.sum())} rows (lines {examples(lines)}); {MAKE_ONE}")
    if manifest["person"].isna().any():
        raise MaskkitError(f"{source}: empty person in {int(manifest['person'].isna().sum())} rows; {MAKE_ONE}")
    repeated = manifest["path"][manifest["path"].duplicated()]
    if len(repeated):
        raise MaskkitError(f"{source}: {len(repeated)} rows repeat an image ({examples(repeated.unique().tolist())}), "
                           f"which would train on it twice; keep one row per image ({MAKE_ONE})")
    for column in ("gender", "age"):
        counts = manifest.groupby("person")[column].nunique()
        mixed = counts[counts > 1].index.tolist()
        if mixed:
            raise MaskkitError(f"{source}: {len(mixed)} persons have different {column}s in different rows "
                               f"({examples(mixed)}); a person has one {column}: correct the rows ({MAKE_ONE})")


def read_manifest(path: str | Path, data: bytes | None = None) -> pd.DataFrame:
    """Read and check a manifest CSV (`data`: its bytes, already read from a stream): columns,
    values, rows (`check_manifest_rows`), no path with `..` (contract.paths) and no person in two
    folds (leakage guard)."""
    manifest = read_csv(path, MANIFEST_COLUMNS, fix=MAKE_ONE, data=data, dtype={"path": str, "person": str})
    if manifest.empty:
        raise MaskkitError(f"{path}: the manifest has no rows ({MAKE_ONE})")
    for column in ("age", "fold", "label"):
        values = pd.to_numeric(manifest[column], errors="coerce")
        if values.isna().any():
            bad = manifest.loc[values.isna(), "path"].tolist()
            raise MaskkitError(f"{path}: {column} is not a number in {values.isna().sum()} rows "
                               f"({examples(bad)}); {MAKE_ONE}")
        manifest[column] = values.astype(int if column != "age" else float)
    outside = ~manifest["label"].between(0, NUM_CLASSES - 1)
    if outside.any():
        raise MaskkitError(f"{path}: label outside 0..{NUM_CLASSES - 1} in {int(outside.sum())} rows "
                           f"({examples(manifest.loc[outside, 'path'].tolist())}); {MAKE_ONE}")
    for column, allowed in (("gender", GENDERS), ("mask", MASKS)):
        bad = ~manifest[column].isin(allowed)
        if bad.any():
            raise MaskkitError(
                f"{path}: {column} must be one of {', '.join(allowed)}; found "
                f"{examples(sorted(set(manifest.loc[bad, column].astype(str))))} ({MAKE_ONE})"
            )
    check_manifest_rows(manifest, str(path))
    check_no_parent(manifest["path"], path, "path")
    check_persons_disjoint(manifest, str(path))
    return manifest.loc[:, list(MANIFEST_COLUMNS)]


def write_manifest(manifest: pd.DataFrame, out: str | Path | None = None, inputs: Inputs | None = None) -> None:
    """Write the manifest's columns, in the contract's order (stdout when `out` is None or '-');
    with `inputs`, `out` is checked against them first (files.Inputs.check)."""
    check_persons_disjoint(manifest, str(out or "manifest"))
    write_csv(manifest.loc[:, list(MANIFEST_COLUMNS)], out, inputs=inputs)


def check_images_exist(manifest: pd.DataFrame, source: str) -> None:
    """Every `path` must be reachable from the current folder."""
    missing = [p for p in manifest["path"] if not os.path.isfile(p)]
    if missing:
        raise MaskkitError(
            f"{source}: {len(missing)} of {len(manifest)} images not found ({examples(missing)}); "
            "run from the folder the manifest's paths are relative to, or re-make it with maskkit split"
        )


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file (config.json names the manifest a run trained on by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
