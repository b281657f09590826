"""Reading the competition layout (docs/formats.md) into tables, with every quirk of the real data reported.

`load_train` gives one row per training image: path, person, gender, age, mask, label (+ folder, stem).
`load_eval` gives ImageID, path in info.csv's order. `load_folder` reads a plain folder of images.
Quirks are collected in a `Quirks` report (counts plus the first examples), never silently dropped.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, examples, is_hidden, is_image, read_csv
from maskkit.contract.labels import GENDERS, IMAGE_STEMS, label_of

TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
EVAL_COLUMNS = ("ImageID", "ans")
FOLDER_NAME = re.compile(r"^(?P<id>[^_]+)_(?P<gender>male|female)_(?P<race>[^_]+)_(?P<age>\d+)$")
# Preferred extension when a person folder holds the same stem twice.
EXTENSION_ORDER = {".jpg": 0, ".jpeg": 1, ".png": 2}


@dataclass
class Quirks:
    """Data quirks found while reading: kind -> examples, reported on stderr as counts plus examples."""

    source: str
    found: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, example: str) -> None:
        self.found[kind].append(example)

    def count(self, kind: str) -> int:
        return len(self.found.get(kind, []))

    def report(self, limit: int = 3) -> None:
        if not self.found:
            return
        console.print(f"[bold]{self.source}[/]: data quirks (handled, see below)")
        for kind, items in self.found.items():
            console.print(f"  {len(items):>5}  {kind}: {examples(items, limit)}")


def train_root(path: str | Path) -> Path:
    """DATA/train for DATA/train or DATA; a one-line error when neither holds train.csv."""
    path = Path(path)
    if not path.exists():
        raise MaskkitError(f"{path}: dataset folder not found (pass DATA/train of the competition layout)")
    if (path / "train.csv").is_file():
        return path
    if (path / "train" / "train.csv").is_file():
        return path / "train"
    raise MaskkitError(f"{path}: no train.csv here or in {path / 'train'} (pass DATA/train of the competition layout)")


def eval_root(path: str | Path) -> Path | None:
    """DATA/eval for DATA/eval or DATA; None when the folder has no info.csv (a plain image folder)."""
    path = Path(path)
    if not path.exists():
        raise MaskkitError(f"{path}: folder not found (pass DATA/eval or a folder of images)")
    if (path / "info.csv").is_file():
        return path
    if (path / "eval" / "info.csv").is_file():
        return path / "eval"
    return None


def parse_folder_name(name: str) -> dict | None:
    match = FOLDER_NAME.match(name)
    if not match:
        return None
    return {"id": match["id"], "gender": match["gender"], "age": int(match["age"])}


def _person_images(folder: Path, quirks: Quirks) -> dict[str, Path]:
    """The person's images by stem, preferring .jpg over .jpeg over .png when a stem repeats."""
    chosen: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if is_hidden(file.name):
            quirks.add("hidden files skipped", str(file))
            continue
        stem, ext = file.stem, file.suffix.lower()
        if stem not in IMAGE_STEMS or ext not in EXTENSION_ORDER or not file.is_file():
            quirks.add("unknown extra files ignored", str(file))
            continue
        if stem in chosen:
            keep, drop = sorted([chosen[stem], file], key=lambda p: EXTENSION_ORDER[p.suffix.lower()])
            quirks.add("same image in two formats (kept the first)", f"{keep} over {drop.name}")
            chosen[stem] = keep
        else:
            chosen[stem] = file
    return chosen


def load_train(path: str | Path, report: bool = True) -> pd.DataFrame:
    """One row per training image of the competition layout under DATA/train."""
    root = train_root(path)
    csv_path = root / "train.csv"
    table = read_csv(
        csv_path, TRAIN_COLUMNS, fix="the competition's train.csv has columns id,gender,race,age,path",
        dtype={"id": str, "path": str},
    )
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise MaskkitError(f"{images_dir}: images folder not found (expected DATA/train/images/<person folder>/)")
    quirks = Quirks(str(root))

    folders = {}
    for entry in sorted(images_dir.iterdir()):
        if is_hidden(entry.name):
            quirks.add("hidden files skipped", str(entry))
        elif entry.is_dir():
            folders[entry.name] = entry
        else:
            quirks.add("unknown extra files ignored", str(entry))
    if not folders:
        raise MaskkitError(f"{images_dir}: no person folders (expected images/<id>_<gender>_<race>_<age>/)")

    bad_gender = ~table["gender"].isin(GENDERS)
    bad_age = pd.to_numeric(table["age"], errors="coerce").isna()
    for _, row in table[bad_gender | bad_age].iterrows():
        quirks.add("train.csv rows with an unreadable gender or age (skipped)", f"{row['path']}")
    table = table[~(bad_gender | bad_age)].copy()
    table["age"] = pd.to_numeric(table["age"]).astype(int)

    persons = []  # (folder name, id, gender, age)
    listed = set()
    for _, row in table.iterrows():
        folder = row["path"]
        if folder in listed:
            quirks.add("train.csv rows listed twice (kept one)", folder)
            continue
        listed.add(folder)
        if folder not in folders:
            quirks.add("train.csv rows whose folder is missing (skipped)", folder)
            continue
        parsed = parse_folder_name(folder)
        if parsed and (parsed["gender"], parsed["age"]) != (row["gender"], row["age"]):
            quirks.add(
                "folder names disagreeing with train.csv (train.csv used)",
                f"{folder} vs {row['gender']},{row['age']}",
            )
        persons.append((folder, str(row["id"]), row["gender"], int(row["age"])))
    for folder in folders:
        if folder in listed:
            continue
        parsed = parse_folder_name(folder)
        if parsed is None:
            quirks.add("folders not in train.csv with an unreadable name (skipped)", folder)
            continue
        quirks.add("folders not in train.csv (labels read from the folder name)", folder)
        persons.append((folder, parsed["id"], parsed["gender"], parsed["age"]))

    # An id may be used by two different persons (003397 in the real data): name those by folder.
    folders_of_id = defaultdict(list)
    for folder, pid, _, _ in persons:
        folders_of_id[pid].append(folder)
    for pid, names in folders_of_id.items():
        if len(names) > 1:
            quirks.add("ids used by several folders (person = folder name)", f"{pid}: {', '.join(names)}")

    rows = []
    for folder, pid, gender, age in persons:
        person = folder if len(folders_of_id[pid]) > 1 else pid
        if "-" in pid:
            quirks.add("ids with a suffix", folder)
        images = _person_images(folders[folder], quirks)
        missing = [stem for stem in IMAGE_STEMS if stem not in images]
        if missing:
            quirks.add("person folders missing images", f"{folder} ({', '.join(missing)})")
        extensions = {p.suffix.lower() for p in images.values()}
        if len(extensions) > 1:
            quirks.add("person folders mixing extensions", f"{folder} ({'/'.join(sorted(extensions))})")
        for stem, file in images.items():
            mask = IMAGE_STEMS[stem]
            rows.append({
                "path": str(file), "person": person, "gender": gender, "age": age, "mask": mask,
                "label": label_of(mask, gender, age), "folder": folder, "stem": stem,
            })
    if not rows:
        raise MaskkitError(f"{images_dir}: no images found in the person folders (expected mask1..5, incorrect_mask, normal)")
    if report:
        quirks.report()
    return pd.DataFrame(rows)


def load_folder(path: str | Path) -> pd.DataFrame:
    """A plain folder of images, searched recursively: ImageID (relative path) and path."""
    root = Path(path)
    if not root.is_dir():
        raise MaskkitError(f"{root}: folder not found (pass DATA/eval or a folder of images)")
    files = sorted(p for p in root.rglob("*") if is_image(p) and p.is_file()
                   and not any(is_hidden(part) for part in p.relative_to(root).parts))
    if not files:
        raise MaskkitError(f"{root}: no images found (expected .jpg, .jpeg or .png files)")
    return pd.DataFrame({"ImageID": [p.relative_to(root).as_posix() for p in files], "path": [str(p) for p in files]})


def load_eval(path: str | Path) -> pd.DataFrame:
    """ImageID, path for DATA/eval in info.csv's order, or for a plain image folder.

    A submission must cover every row, so an info.csv row whose image is missing is an error.
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
    paths = [images_dir / image_id for image_id in info["ImageID"]]
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
