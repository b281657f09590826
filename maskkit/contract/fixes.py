"""The fixes CSV (docs/formats.md, "Fixes CSV"): label corrections that `audit` suggests and `split --fixes` applies.

`target` is a person id or a whole person folder name (for gender and age), or an image (for
mask): an image is named by its path or by `<person or folder>/<file name or stem>`, matched on
its last two path parts. The shipped known fixes (`known`) name whole folders of the real data
(`000020_female_Asian_50`: id, gender, race, age), so a dataset that only shares an id (a drawn
one) is left alone. Applying fixes changes the table only, never the image files.

The shipped lists (`known`: what two published sources agree on; `community`: what one source
lists) apply only to a dataset holding at least half of the persons they name: the real data holds
all, a drawn one at most the few whose folder name it drew by chance (its names have the same form).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path, PurePath

import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, examples, read_csv
from maskkit.contract.labels import AGE_RANGE, GENDERS, MASKS, label_of
from maskkit.contract.paths import check_no_parent

FIXES_COLUMNS = ("target", "column", "old", "new", "reason")
FIXABLE = ("gender", "age", "mask")
KNOWN = "known"
COMMUNITY = "community"
SHIPPED = {KNOWN: "known_fixes.csv", COMMUNITY: "community_fixes.csv"}  # --fixes NAME -> maskkit/data/FILE
SHIPPED_QUORUM = 0.5  # share of a shipped list's persons a dataset must hold for the list to apply


def known_fixes_path() -> Path:
    """The corrections of the real competition data that two published lists agree on, shipped in the package."""
    return shipped_fixes_path(KNOWN)


def shipped_fixes_path(name: str) -> Path:
    """The file of a shipped fix list (`known`, `community`) in the package."""
    return Path(str(resources.files("maskkit") / "data" / SHIPPED[name]))


def read_fixes(path: str | Path) -> pd.DataFrame:
    """Read and validate a fixes CSV (`known` and `community` read the shipped ones)."""
    path = shipped_fixes_path(str(path)) if str(path) in SHIPPED else Path(path)
    fix = f"a fixes CSV has columns target,column,old,new,reason, or name a shipped list: {', '.join(SHIPPED)}"
    fixes = read_csv(path, FIXES_COLUMNS, fix=fix, dtype=str, keep_default_na=False)
    unknown = sorted(set(fixes["column"]) - set(FIXABLE))
    if unknown:
        raise MaskkitError(
            f"{path}: unknown column value(s) {', '.join(map(repr, unknown))} in 'column' "
            f"(a fix changes one of {', '.join(FIXABLE)})"
        )
    check_no_parent(fixes["target"], path, "target")
    checks = {"gender": GENDERS, "mask": MASKS}
    for column, allowed in checks.items():
        rows = fixes[fixes["column"] == column]
        bad = rows.loc[~rows["new"].isin(allowed), "new"].tolist()
        if bad:
            raise MaskkitError(f"{path}: new {column} {examples(bad)} not one of {', '.join(allowed)}")
    ages = fixes.loc[fixes["column"] == "age", "new"]
    years = pd.to_numeric(ages, errors="coerce")
    bad_ages = ages[years.isna() | ~years.between(*AGE_RANGE)].tolist()  # NaN, inf, 1e300, -40
    if bad_ages:
        raise MaskkitError(f"{path}: new age {examples(bad_ages)} is not a plausible age "
                           f"(a number of years, {AGE_RANGE[0]}..{AGE_RANGE[1]})")
    return fixes


def _image_index(images: pd.DataFrame) -> dict[tuple[str, str], list[int]]:
    """(folder or person, file name or stem) -> row positions, for matching mask targets."""
    index: dict[tuple[str, str], list[int]] = {}
    for pos, (path, person) in enumerate(zip(images["path"], images["person"])):
        p = PurePath(path)
        for owner in {p.parent.name, str(person)}:
            for name in {p.name, p.stem}:
                index.setdefault((owner, name), []).append(pos)
    return index


def _person_of(target: str, column: str) -> str:
    """The person (id or folder name) a fix's target names."""
    parts = PurePath(target.replace("\\", "/")).parts
    return parts[-2] if column == "mask" and len(parts) >= 2 else target


def _too_few_persons(images: pd.DataFrame, fixes: pd.DataFrame, source: str) -> bool:
    """True (and said on stderr) when a shipped list names persons this dataset mostly lacks."""
    named = {_person_of(t, c) for t, c in zip(fixes["target"], fixes["column"])}
    held = named & (set(images["person"].astype(str)) | set(images["folder"].astype(str)))
    if len(held) >= SHIPPED_QUORUM * len(named):
        return False
    console.print(f"{source}: 0 of {len(fixes)} fixes applied")
    console.print(f"  only {len(held)} of the {len(named)} persons it names are in this dataset: not the real "
                  f"competition data, so none applied (pass the file {shipped_fixes_path(source)} to apply its "
                  f"rows one by one)")
    return True


def apply_fixes(images: pd.DataFrame, fixes: pd.DataFrame, source: str = "fixes") -> pd.DataFrame:
    """A copy of the image table with the fixes applied and labels recomputed; unmatched fixes reported.
    A shipped list (`source` is its name) applies only where the dataset holds most of its persons."""
    images = images.copy().reset_index(drop=True)
    if str(source) in SHIPPED and _too_few_persons(images, fixes, str(source)):
        return images
    index = _image_index(images)
    applied, not_found, stale = 0, [], []
    for fix in fixes.itertuples(index=False):
        if fix.column == "mask":
            parts = PurePath(fix.target.replace("\\", "/")).parts
            rows = sorted(set(index.get(tuple(parts[-2:]), []))) if len(parts) >= 2 else []
        else:
            rows = images.index[(images["person"] == fix.target) | (images["folder"] == fix.target)].tolist()
        if not rows:
            not_found.append(fix.target)
            continue
        new = int(float(fix.new)) if fix.column == "age" else fix.new
        current = images.loc[rows, fix.column].astype(str)
        if fix.old and not (current == str(fix.old)).all() and not (current == str(new)).all():
            stale.append(f"{fix.target} ({fix.column} is {current.iloc[0]}, fix expects {fix.old})")
            continue
        images.loc[rows, fix.column] = new
        applied += 1
    images["label"] = [label_of(m, g, a) for m, g, a in zip(images["mask"], images["gender"], images["age"])]
    console.print(f"{source}: {applied} of {len(fixes)} fixes applied")
    if not_found:
        console.print(f"  {len(not_found)} fixes name targets not in this dataset (skipped): {examples(not_found)}")
    if stale:
        console.print(f"  {len(stale)} fixes expect another current value (skipped): {examples(stale)}")
    return images
