"""Reading the competition layout (docs/formats.md) into tables, with every quirk of the real data reported.

`load_train` gives one row per training image: path, person, gender, age, mask, label (+ folder, stem).
`read_train` gives the same table and the `Quirks` found on the way: one `Quirk` record per oddity
(its kind, where, the values in question), which `audit` turns into suspects and `load_train`
reports on stderr as counts plus the first examples; nothing is silently dropped.
`load_eval` gives ImageID, path in info.csv's order. `load_folder` reads a plain folder of images.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, examples, is_hidden, is_image, read_csv
from maskkit.contract.labels import AGE_RANGE, GENDERS, IMAGE_STEMS, label_of
from maskkit.contract.paths import as_text, inside

TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
EVAL_COLUMNS = ("ImageID", "ans")
FOLDER_NAME = re.compile(r"^(?P<id>[^_]+)_(?P<gender>male|female)_(?P<race>[^_]+)_(?P<age>\d+)$")
# Preferred extension when a person folder holds the same stem twice.
EXTENSION_ORDER = {".jpg": 0, ".jpeg": 1, ".png": 2}
PLAUSIBLE_AGES = (10, 100)  # years; a train.csv age outside is kept but reported

# Kinds of quirk: each is one line of the report.
HIDDEN = "hidden files skipped"
EXTRA_FILE = "unknown extra files ignored"
TWO_FORMATS = "same image in two formats (kept the first)"
UNREADABLE_ROW = "train.csv rows with an unreadable gender or age (skipped)"
REPEATED_ROW = "train.csv rows listed twice (kept one)"
MISSING_FOLDER = "train.csv rows whose folder is missing (skipped)"
UNREADABLE_NAME = "listed folders whose name is not <id>_<gender>_<race>_<age> (train.csv used)"
DISAGREEING = "folder names disagreeing with train.csv (train.csv used)"
FRACTIONAL_AGE = "ages not a whole number of years (rounded down)"
IMPOSSIBLE_AGE = f"ages outside {AGE_RANGE[0]}..{AGE_RANGE[1]} years (split and train refuse them)"
IMPLAUSIBLE_AGE = f"ages outside {PLAUSIBLE_AGES[0]}..{PLAUSIBLE_AGES[1]} years (kept)"
UNLISTED_UNREADABLE = "folders not in train.csv with an unreadable name (skipped)"
UNLISTED = "folders not in train.csv (labels read from the folder name)"
SHARED_ID = "ids used by several folders (person = folder name)"
SUFFIXED_ID = "ids with a suffix"
MISSING_IMAGES = "person folders missing images"
MIXED_EXTENSIONS = "person folders mixing extensions"


@dataclass(frozen=True)
class Quirk:
    """One oddity of the data: its kind, the file or folder it concerns, and the values in question."""

    kind: str
    path: str  # a file or folder path; for a train.csv row, its folder name
    example: str = ""  # how the report names it (default: path)
    person: str = ""  # the train.csv id concerned
    column: str = ""  # the train.csv column in question
    given: str = ""  # train.csv's value
    other: str = ""  # the other source's value (the folder name's), or the file dropped for `path`
    related: tuple[str, ...] = ()  # the rest involved: an id's folders, a folder's CSV lines, missing stems


@dataclass
class Quirks:
    """The quirks found while reading, reported on stderr as counts per kind plus the first examples."""

    source: str
    found: list[Quirk] = field(default_factory=list)

    def add(self, kind: str, path: object, **values) -> None:
        self.found.append(Quirk(kind, str(path), **values))

    def report(self, limit: int = 3) -> None:
        if not self.found:
            return
        by_kind = defaultdict(list)
        for quirk in self.found:
            by_kind[quirk.kind].append(quirk.example or quirk.path)
        console.print(f"[bold]{self.source}[/]: data quirks (handled, see below)")
        for kind, items in by_kind.items():
            console.print(f"  {len(items):>5}  {kind}: {examples(items, limit)}")


def _split_folder(path: str | Path, split: str, index: str, not_found: str) -> Path | None:
    """PATH or PATH/<split>, whichever holds the split's `index` file (None when neither does)."""
    path = Path(path)
    if not path.exists():
        raise MaskkitError(f"{path}: {not_found}")
    return next((folder for folder in (path, path / split) if (folder / index).is_file()), None)


def train_root(path: str | Path) -> Path:
    """DATA/train for DATA/train or DATA; a one-line error when neither holds train.csv."""
    hint = "(pass DATA/train of the competition layout)"
    root = _split_folder(path, "train", "train.csv", f"dataset folder not found {hint}")
    if root is None:
        raise MaskkitError(f"{path}: no train.csv here or in {Path(path) / 'train'} {hint}")
    return root


def eval_root(path: str | Path) -> Path | None:
    """DATA/eval for DATA/eval or DATA; None when the folder has no info.csv (a plain image folder)."""
    return _split_folder(path, "eval", "info.csv", "folder not found (pass DATA/eval or a folder of images)")


def parse_folder_name(name: str) -> dict | None:
    match = FOLDER_NAME.match(name)
    if not match:
        return None
    return {"id": match["id"], "gender": match["gender"], "age": int(match["age"])}


def _folder_age(parsed: dict | None) -> str:
    """The folder name's age when it is plausible, else '' (a suggestion for a broken train.csv age)."""
    if parsed and PLAUSIBLE_AGES[0] <= parsed["age"] <= PLAUSIBLE_AGES[1]:
        return str(parsed["age"])
    return ""


def _read_table(csv_path: Path, quirks: Quirks) -> pd.DataFrame:
    """train.csv as text, its rows with an unreadable gender or age dropped; adds age (int, years),
    age_value (as written), age_text and line (the row's line in the file)."""
    table = read_csv(csv_path, TRAIN_COLUMNS, fix="the competition's train.csv has columns id,gender,race,age,path",
                     dtype=str, keep_default_na=False)
    table["line"] = table.index + 2
    table["age_text"] = table["age"].str.strip()
    table["age_value"] = pd.to_numeric(table["age_text"], errors="coerce")
    for row in table[table["age_value"].notna() & ~table["age_value"].between(*AGE_RANGE)].itertuples():
        quirks.add(IMPOSSIBLE_AGE, csv_path, example=f"line {row.line} ({row.age_text})", person=row.id,
                   column="age", given=row.age_text)
    table.loc[table["age_value"].abs() == float("inf"), "age_value"] = float("nan")  # unreadable: skipped
    bad_gender, bad_age = ~table["gender"].isin(GENDERS), table["age_value"].isna()
    for row in table[bad_gender | bad_age].itertuples():
        parsed = parse_folder_name(row.path)
        if row.gender not in GENDERS:
            quirks.add(UNREADABLE_ROW, row.path, person=row.id, column="gender", given=row.gender,
                       other=parsed["gender"] if parsed else "")
        if pd.isna(row.age_value):
            quirks.add(UNREADABLE_ROW, row.path, person=row.id, column="age", given=row.age_text,
                       other=_folder_age(parsed))
    table = table[~(bad_gender | bad_age)].copy()
    table["age"] = table["age_value"].astype(int)
    return table


def _person_folders(images_dir: Path, quirks: Quirks) -> dict[str, Path]:
    """The person folders under images/ by name; anything else there is a quirk."""
    if not images_dir.is_dir():
        raise MaskkitError(f"{images_dir}: images folder not found (expected DATA/train/images/<person folder>/)")
    folders = {}
    for entry in sorted(images_dir.iterdir()):
        if is_hidden(entry.name):
            quirks.add(HIDDEN, entry)
        elif entry.is_dir():
            folders[entry.name] = entry
        else:
            quirks.add(EXTRA_FILE, entry)
    if not folders:
        raise MaskkitError(f"{images_dir}: no person folders (expected images/<id>_<gender>_<race>_<age>/)")
    return folders


def _check_row(row, parsed: dict | None, quirks: Quirks) -> None:
    """One train.csv row's age for plausibility, and its age, gender and id against its folder name."""
    folder, pid = row.path, row.id
    if row.age_value != row.age:
        quirks.add(FRACTIONAL_AGE, folder, example=f"{folder} ({row.age_text})", person=pid, column="age",
                   given=row.age_text, other=_folder_age(parsed))
    elif not PLAUSIBLE_AGES[0] <= row.age <= PLAUSIBLE_AGES[1]:
        quirks.add(IMPLAUSIBLE_AGE, folder, example=f"{folder} ({row.age_text})", person=pid, column="age",
                   given=row.age_text, other=_folder_age(parsed))
    elif parsed and parsed["age"] != row.age:
        quirks.add(DISAGREEING, folder, example=f"{folder} vs age {row.age_text}", person=pid, column="age",
                   given=row.age_text, other=str(parsed["age"]))
    if parsed is None:
        quirks.add(UNREADABLE_NAME, folder, person=pid)
        return
    for column, given in (("gender", row.gender), ("id", pid)):
        if parsed[column] != given:
            quirks.add(DISAGREEING, folder, example=f"{folder} vs {column} {given}", person=pid, column=column,
                       given=given, other=parsed[column])


def _listed_persons(table: pd.DataFrame, folders: dict[str, Path], quirks: Quirks) -> tuple[list[tuple], set[str]]:
    """(folder, id, gender, age) of each train.csv row whose folder exists, and every folder listed."""
    lines = defaultdict(tuple)
    for line, folder in zip(table["line"], table["path"]):
        lines[folder] += (str(line),)
    persons, listed = [], set()
    for row in table.itertuples():
        folder = row.path
        if folder in listed:
            quirks.add(REPEATED_ROW, folder, related=lines[folder])
            continue
        listed.add(folder)
        _check_row(row, parse_folder_name(folder), quirks)
        if folder not in folders:
            quirks.add(MISSING_FOLDER, folder, person=row.id)
            continue
        persons.append((folder, row.id, row.gender, int(row.age)))
    return persons, listed


def _unlisted_persons(folders: dict[str, Path], listed: set[str], quirks: Quirks) -> list[tuple]:
    """(folder, id, gender, age) read from the names of the folders train.csv does not list."""
    persons = []
    for folder in folders:
        if folder in listed:
            continue
        parsed = parse_folder_name(folder)
        if parsed is None:
            quirks.add(UNLISTED_UNREADABLE, folder)
            continue
        quirks.add(UNLISTED, folder)
        persons.append((folder, parsed["id"], parsed["gender"], parsed["age"]))
    return persons


def _person_names(persons: list[tuple], quirks: Quirks) -> dict[str, str]:
    """Folder -> person: the id, or the folder name where one id is used by several folders (003397
    in the real data)."""
    folders_of_id = defaultdict(list)
    for folder, pid, _, _ in persons:
        folders_of_id[pid].append(folder)
    for pid, names in folders_of_id.items():
        if len(names) > 1:
            quirks.add(SHARED_ID, names[0], example=f"{pid}: {', '.join(names)}", person=pid, column="id",
                       given=pid, related=tuple(names))
    return {folder: folder if len(folders_of_id[pid]) > 1 else pid for folder, pid, _, _ in persons}


def _person_images(folder: Path, quirks: Quirks) -> dict[str, Path]:
    """The person's images by stem, preferring .jpg over .jpeg over .png when a stem repeats."""
    chosen: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if is_hidden(file.name):
            quirks.add(HIDDEN, file)
            continue
        stem, ext = file.stem, file.suffix.lower()
        if stem not in IMAGE_STEMS or ext not in EXTENSION_ORDER or not file.is_file():
            quirks.add(EXTRA_FILE, file)
            continue
        if stem in chosen:
            keep, drop = sorted([chosen[stem], file], key=lambda p: EXTENSION_ORDER[p.suffix.lower()])
            quirks.add(TWO_FORMATS, keep, example=f"{keep} over {drop.name}", other=str(drop))
            chosen[stem] = keep
        else:
            chosen[stem] = file
    return chosen


def _image_rows(persons: list[tuple], folders: dict[str, Path], quirks: Quirks) -> list[dict]:
    """One row per image of each person: path, person, gender, age, mask, label, folder, stem."""
    names = _person_names(persons, quirks)
    rows = []
    for folder, pid, gender, age in persons:
        if "-" in pid:
            quirks.add(SUFFIXED_ID, folder)
        images = _person_images(folders[folder], quirks)
        missing = [stem for stem in IMAGE_STEMS if stem not in images]
        if missing:
            quirks.add(MISSING_IMAGES, folders[folder], example=f"{folder} ({', '.join(missing)})",
                       related=tuple(missing))
        extensions = {p.suffix.lower() for p in images.values()}
        if len(extensions) > 1:
            quirks.add(MIXED_EXTENSIONS, folder, example=f"{folder} ({'/'.join(sorted(extensions))})")
        for stem, file in images.items():
            mask = IMAGE_STEMS[stem]
            rows.append({"path": str(file), "person": names[folder], "gender": gender, "age": age, "mask": mask,
                         "label": label_of(mask, gender, age), "folder": folder, "stem": stem})
    return rows


def read_train(path: str | Path) -> tuple[pd.DataFrame, Quirks]:
    """One row per training image of the competition layout under DATA/train, and the quirks found."""
    root = train_root(path)
    quirks = Quirks(str(root))
    table = _read_table(root / "train.csv", quirks)
    folders = _person_folders(root / "images", quirks)
    persons, listed = _listed_persons(table, folders, quirks)
    rows = _image_rows(persons + _unlisted_persons(folders, listed, quirks), folders, quirks)
    if not rows:
        raise MaskkitError(f"{root / 'images'}: no images found in the person folders "
                           "(expected mask1..5, incorrect_mask, normal)")
    return pd.DataFrame(rows), quirks


def load_train(path: str | Path, report: bool = True) -> pd.DataFrame:
    """`read_train`'s table, its quirks reported on stderr unless `report` is False."""
    images, quirks = read_train(path)
    if report:
        quirks.report()
    impossible = [q for q in quirks.found if q.kind == IMPOSSIBLE_AGE]
    if impossible:  # audit lists them (read_train); a model must not learn from them
        raise MaskkitError(f"{impossible[0].path} {impossible[0].example}: not an age in {AGE_RANGE[0]}.."
                           f"{AGE_RANGE[1]} years ({len(impossible)} such row(s)); correct them in a copy of train.csv "
                           "(maskkit audit lists every one)")
    return images


def load_folder(path: str | Path) -> pd.DataFrame:
    """A plain folder of images, searched recursively: ImageID (relative path, as CSV text:
    contract.paths.as_text) and path."""
    root = Path(path)
    if not root.is_dir():
        raise MaskkitError(f"{root}: folder not found (pass DATA/eval or a folder of images)")
    files = sorted(p for p in root.rglob("*") if is_image(p) and p.is_file()
                   and not any(is_hidden(part) for part in p.relative_to(root).parts))
    if not files:
        raise MaskkitError(f"{root}: no images found (expected .jpg, .jpeg or .png files)")
    return pd.DataFrame({"ImageID": [as_text(p.relative_to(root).as_posix()) for p in files],
                         "path": [str(p) for p in files]})


def load_eval(path: str | Path) -> pd.DataFrame:
    """ImageID, path for DATA/eval in info.csv's order, or for a plain image folder.

    A submission must cover every row, so an info.csv row whose image is missing is an error; an
    ImageID that leaves DATA/eval/images (absolute, `..`, a symlink out) is one too (contract.paths).
    """
    root = eval_root(path)
    if root is None:
        return load_folder(path)
    info_path = root / "info.csv"
    info = read_csv(info_path, ("ImageID",), fix="the competition's info.csv has columns ImageID,ans",
                    dtype={"ImageID": str})
    if info.empty:
        raise MaskkitError(f"{info_path}: no rows, so there is nothing to predict (info.csv lists one ImageID per eval image)")
    images_dir = root / "images"
    paths = [inside(images_dir, image_id, info_path, line, "ImageID")
             for line, image_id in enumerate(info["ImageID"], start=2)]
    missing = [image_id for image_id, p in zip(info["ImageID"], paths) if not p.is_file()]
    if missing:
        raise MaskkitError(
            f"{info_path}: {len(missing)} of {len(info)} images missing from {images_dir} "
            f"({examples(missing)}); restore them, since a submission must cover every row"
        )
    duplicated = info["ImageID"][info["ImageID"].duplicated()].tolist()
    if duplicated:
        raise MaskkitError(f"{info_path}: ImageID listed twice ({examples(duplicated)}); remove the repeats")
    return pd.DataFrame({"ImageID": info["ImageID"].tolist(), "path": [str(p) for p in paths]})
