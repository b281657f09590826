"""`maskkit import SRC OUT`: external age- and gender-labelled face photos become extra persons in the
competition layout (docs/formats.md, "Imported faces"), each with the seven shots: mask1..mask5 and
incorrect_mask drawn on the photo in synth's mask styles (data/facemasks.py), normal the photo itself.

SRC is a folder of UTKFace-style names (`age_gender_race_date*.jpg`, gender 0 male, 1 female) or a
CSV `path,age,gender`. Person ids are `x` + 11 hex digits of the photo's sha1, so they never collide
with the competition's (digits) and a photo given twice is one person. A person's folder is written
under a temporary name and renamed when its seven images are there: a re-run skips finished persons.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import (Inputs, console, examples, folder_lock, is_hidden, is_image, process_alive,
                                    read_csv, write_csv, write_errors)
from maskkit.contract.labels import AGE_GROUPS, AGE_RANGE, GENDERS, age_group
from maskkit.contract.layout import TRAIN_COLUMNS, parse_folder_name
from maskkit.contract.paths import shown
from maskkit.contract.progress import progress_bar
from maskkit.data.facemasks import seven_shots
from maskkit.data.images import read_image, write_image
from maskkit.data.loader import image_size
from maskkit.options import SEED, SEED_RANGE

PREFIX = "x"  # competition ids are digits: an imported id never equals one
RACES = ("White", "Black", "Asian", "Indian", "Others")  # UTKFace's race codes 0..4
UNKNOWN_RACE = "Unknown"
MARKER = ".maskkit-import"  # OUT holds it: a re-run may add to OUT
MIN_SIDE = 32  # pixels: a smaller photo is no face crop to draw a mask on
MAX_ASPECT = 2.0  # width/height (or height/width) beyond this is no face crop
JPEG_QUALITY = 92
CSV_COLUMNS = ("path", "age", "gender")
CSV_FIX = "a CSV of photos has columns path,age,gender (gender male/female or 0/1; path relative to the CSV)"
NAME_FIX = ("name the photos age_gender_race_date.jpg (UTKFace: gender 0 male, 1 female) or list them in a CSV "
            "path,age,gender")
TEMP_NAME = re.compile(r"^\..+\.import-tmp(?P<pid>\d+)$")


# --- what SRC holds ------------------------------------------------------------------------------

def parse_utk_name(name: str) -> tuple[int, str, str] | None:
    """(age, gender, race) of a UTKFace-style name `age_gender[_race]_date...`, or None."""
    parts = name.split(".")[0].split("_")
    if len(parts) < 3 or not parts[0].isdigit() or parts[1] not in ("0", "1"):
        return None
    race = RACES[int(parts[2])] if parts[2].isdigit() and int(parts[2]) < len(RACES) else UNKNOWN_RACE
    return int(parts[0]), GENDERS[int(parts[1])], race


def _check_ages(table: pd.DataFrame, where: list[str]) -> None:
    outside = ~table["age"].between(*AGE_RANGE)
    if outside.any():
        first = int(np.flatnonzero(outside.to_numpy())[0])
        raise MaskkitError(f"{where[first]}: age {table['age'].iloc[first]:g} is outside {AGE_RANGE[0]}..{AGE_RANGE[1]} "
                           f"years ({int(outside.sum())} such photo(s)); correct or remove them")


def photos_of_folder(src: Path) -> pd.DataFrame:
    """path, age, gender, race of every image under a folder of UTKFace-style names."""
    files = sorted(p for p in src.rglob("*") if is_image(p) and p.is_file()
                   and not any(is_hidden(part) for part in p.relative_to(src).parts))
    if not files:
        raise MaskkitError(f"{src}: no photos found (.jpg, .jpeg, .png...); {NAME_FIX}")
    parsed = [parse_utk_name(p.name) for p in files]
    unreadable = [shown(str(p)) for p, v in zip(files, parsed) if v is None]
    if unreadable:
        raise MaskkitError(f"{unreadable[0]}: not an age_gender_race_date name ({len(unreadable)} such photo(s): "
                           f"{examples(unreadable)}); {NAME_FIX}")
    table = pd.DataFrame(parsed, columns=["age", "gender", "race"]).assign(path=[str(p) for p in files])
    _check_ages(table, [shown(str(p)) for p in files])
    return table


def photos_of_csv(src: Path) -> pd.DataFrame:
    """path, age, gender, race of every row of a CSV path,age,gender (paths relative to the CSV's folder)."""
    table = read_csv(src, CSV_COLUMNS, fix=CSV_FIX, dtype=str, keep_default_na=False)
    if table.empty:
        raise MaskkitError(f"{src}: no rows, so there is nothing to import ({CSV_FIX})")
    lines = [f"{src} line {i + 2}" for i in range(len(table))]
    ages = pd.to_numeric(table["age"].str.strip(), errors="coerce")
    bad = ages.isna() | ~np.isfinite(ages.fillna(0)) | (ages % 1 != 0)
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise MaskkitError(f"{lines[first]}: age {shown(table['age'].iloc[first])} is not a whole number of years "
                           f"({int(bad.sum())} such row(s)); {CSV_FIX}")
    words = {"0": "male", "1": "female", "male": "male", "female": "female", "m": "male", "f": "female"}
    gender = table["gender"].str.strip().str.lower().map(words)
    if gender.isna().any():
        first = int(np.flatnonzero(gender.isna().to_numpy())[0])
        raise MaskkitError(f"{lines[first]}: gender {shown(table['gender'].iloc[first])} is not male/female or 0/1 "
                           f"({int(gender.isna().sum())} such row(s)); {CSV_FIX}")
    paths = [Path(p) if Path(p).is_absolute() else src.parent / p for p in table["path"].str.strip()]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        raise MaskkitError(f"{lines[missing[0]]}: {shown(str(paths[missing[0]]))} not found ({len(missing)} missing "
                           "photo(s)); paths are relative to the CSV's folder")
    photos = pd.DataFrame({"age": ages.astype(int), "gender": gender, "race": UNKNOWN_RACE,
                           "path": [str(p) for p in paths]})
    _check_ages(photos, lines)
    return photos


def parse_ages(text: str | None) -> tuple[int, int]:
    """`--ages 60-120` (or `60-`, or `45`) -> (low, high) years within AGE_RANGE."""
    if text is None:
        return AGE_RANGE
    low, _, high = str(text).strip().partition("-")
    try:
        low_age = int(low)
        high_age = int(high) if high.strip() else (AGE_RANGE[1] if "-" in str(text) else low_age)
    except ValueError:
        raise MaskkitError(f"--ages {text!r}: expected LOW-HIGH years, like 60-120 (or 60-)") from None
    if not AGE_RANGE[0] <= low_age <= high_age <= AGE_RANGE[1]:
        raise MaskkitError(f"--ages {text!r}: use LOW-HIGH with {AGE_RANGE[0]} <= LOW <= HIGH <= {AGE_RANGE[1]}")
    return low_age, high_age


def photo_id(path: str) -> str:
    """The person id of a photo: PREFIX + 11 hex digits of its bytes' sha1."""
    with open(path, "rb") as handle:
        return PREFIX + hashlib.sha1(handle.read()).hexdigest()[:11]


def choose(photos: pd.DataFrame, ages: tuple[int, int], limit: int | None, seed: int) -> pd.DataFrame:
    """The photos in the age range, in an order drawn from `seed`, one per distinct photo (by content),
    at most `limit`; with an `id` column."""
    chosen = photos[photos["age"].between(*ages)]
    if chosen.empty:
        raise MaskkitError(f"--ages {ages[0]}-{ages[1]}: none of the {len(photos)} photos is in that range")
    chosen = chosen.iloc[np.random.default_rng(seed).permutation(len(chosen))]
    ids, kept = set(), []
    for row in chosen.itertuples():
        pid = photo_id(row.path)
        if pid not in ids:
            ids.add(pid)
            kept.append({**row._asdict(), "id": pid})
            if limit is not None and len(kept) >= limit:
                break
    return pd.DataFrame(kept).drop(columns="Index")


def check_sizes(photos: pd.DataFrame) -> None:
    """Refuse a photo that cannot be read or whose size is no face crop's (tiny, or a strip)."""
    for path in photos["path"]:
        try:
            width, height = image_size(path)
        except Exception:  # noqa: BLE001 - PIL raises several types for a file that is no image
            raise MaskkitError(f"{shown(path)}: cannot read this photo; remove it or replace the file") from None
        if min(width, height) < MIN_SIDE or max(width / height, height / width) > MAX_ASPECT:
            raise MaskkitError(f"{shown(path)}: {width}x{height} is not the size of a face crop (at least "
                               f"{MIN_SIDE}x{MIN_SIDE}, no side over {MAX_ASPECT:g} times the other); remove it "
                               "or crop the face first")


# --- OUT -----------------------------------------------------------------------------------------

def check_out(out: Path, inputs: Inputs) -> None:
    """OUT is new, empty or an earlier import (it holds MARKER), and never inside SRC nor holding it."""
    inputs.check_folder(out, "output folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise MaskkitError(f"{out}: folder is not empty and holds no earlier maskkit import ({MARKER}); "
                           "choose a new or empty OUT")


def remove_dead_work_folders(images: Path) -> None:
    """The `.FOLDER.import-tmpPID` folders of import runs whose process is gone."""
    if not images.is_dir():
        return
    for entry in images.iterdir():
        match = TEMP_NAME.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not process_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def folder_name(row) -> str:
    return f"{row.id}_{row.gender}_{row.race}_{int(row.age)}"


def write_person(images: Path, row, seed: int) -> None:
    """The seven shots of one photo into images/<folder>/, written beside it and renamed in."""
    bgr = read_image(row.path)
    if bgr is None:
        raise MaskkitError(f"{shown(row.path)}: cannot decode this photo (corrupt or not an image); remove it")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng([seed, int(row.id[len(PREFIX):], 16)])
    folder = images / folder_name(row)
    work = images / f".{folder.name}.import-tmp{os.getpid()}"
    try:
        work.mkdir()
        for stem, shot in seven_shots(rgb, GENDERS.index(row.gender), rng).items():
            write_image(work / f"{stem}.jpg", shot, rgb=True, quality=JPEG_QUALITY)
        os.replace(work, folder)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def write_train_csv(root: Path) -> pd.DataFrame:
    """train.csv listing every imported person folder under root/images (earlier runs' too)."""
    rows = []
    for entry in sorted((root / "images").iterdir()):
        parsed = parse_folder_name(entry.name)
        if entry.is_dir() and parsed and parsed["id"].startswith(PREFIX):
            race = entry.name.split("_")[2]
            rows.append({"id": parsed["id"], "gender": parsed["gender"], "race": race, "age": parsed["age"],
                         "path": entry.name})
    table = pd.DataFrame(rows, columns=list(TRAIN_COLUMNS))
    write_csv(table, root / "train.csv")
    return table


def run(src: str | Path, out: str | Path, ages: str | None = None, limit: int | None = None, seed: int = SEED,
        show_progress: bool | None = None) -> pd.DataFrame:
    """Import the photos of SRC (a folder or a CSV) into OUT/train; returns OUT/train/train.csv's table."""
    src, out = Path(src), Path(out)
    if limit is not None and limit < 1:
        raise MaskkitError(f"--limit {limit}: need at least 1 person")
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise MaskkitError(f"--seed {seed}: use {SEED_RANGE[0]}..{SEED_RANGE[1]}")
    age_range = parse_ages(ages)
    if not src.exists():
        raise MaskkitError(f"{src}: not found (give a folder of age_gender_race_date.jpg photos or a CSV path,age,gender)")
    inputs = Inputs.of(src)
    check_out(out, inputs)
    photos = photos_of_folder(src) if src.is_dir() else photos_of_csv(src)
    chosen = choose(photos, age_range, limit, seed)
    check_sizes(chosen)
    root = out / "train"
    images = root / "images"
    with folder_lock(out, "import"):
        with write_errors(out):
            (out / MARKER).write_text("maskkit import: extra persons in the competition layout (train/)\n")
            images.mkdir(parents=True, exist_ok=True)
        remove_dead_work_folders(images)
        todo = [row for row in chosen.itertuples() if not (images / folder_name(row)).is_dir()]
        try:
            with progress_bar("import", len(todo), show=show_progress) as bar:
                for row in todo:
                    with write_errors(images):
                        write_person(images, row, seed)
                    bar.advance()
        finally:  # a failed or interrupted run still lists the persons it finished
            table = write_train_csv(root)
    groups = pd.Series(age_group(chosen["age"].to_numpy())).value_counts().reindex(range(3), fill_value=0)
    console.print(f"maskkit import: {len(todo)} persons written, {len(chosen) - len(todo)} already there "
                  f"({', '.join(f'{AGE_GROUPS[g]}: {n}' for g, n in groups.items())}); {root} holds {len(table)} "
                  f"persons; next: maskkit split DATA/train --extra {root} -o folds.csv", markup=False, highlight=False)
    return table
