"""The opinions CSV (docs/formats.md, "Opinions CSV"): what an outside face model thinks of each
person's gender and age. `maskkit expert` writes it, `audit --expert` reads it.

One row per person: `person` and `folder` as the layout names them (the id, and the whole folder
name, which ties the file to one dataset), `photo` used (normal, else incorrect_mask), `status`
(`found`, or `no face`: then no guess, the opinion columns are empty), `gender`, `p_female`,
`gender_confidence` and `age_confidence` (the model's percentages, 0..100) and `age` in years.

While `maskkit expert` runs, rows are appended to a partial file beside the output,
`.<name>.partial` (header first, each row flushed as its person finishes); a re-run reads it back
and continues; the final CSV appears by atomic rename and the partial file is then removed.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import examples, read_csv, write_errors
from maskkit.contract.labels import AGE_RANGE, GENDERS

OPINIONS_COLUMNS = ("person", "folder", "photo", "status", "gender", "p_female", "gender_confidence", "age",
                    "age_confidence")
OPINION_COLUMNS = ("gender", "p_female", "gender_confidence", "age", "age_confidence")  # empty without a face
FOUND, NO_FACE = "found", "no face"
PHOTOS = ("normal", "incorrect_mask")
FIX = "an opinions CSV of maskkit expert has columns " + ",".join(OPINIONS_COLUMNS)


def partial_path(out: str | Path) -> Path:
    """Where `maskkit expert -o OUT` keeps the rows of an unfinished run."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def _bad(path: Path, rows: pd.DataFrame, what: str, fix: str) -> MaskkitError:
    return MaskkitError(f"{path}: {what} for person(s) {examples(rows['person'].tolist())}; {fix}")


def check_opinions(df: pd.DataFrame, path: Path, persons: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The rows validated (typed: numbers as floats, NaN where no face was found), or one MaskkitError.

    `persons` (person -> folder of the dataset judged): every row must name one of them, with its folder.
    """
    if tuple(df.columns) != OPINIONS_COLUMNS:
        raise MaskkitError(f"{path}: header {','.join(map(str, df.columns))[:80]} is not an opinions CSV's ({FIX}); "
                           "re-run maskkit expert")
    df = df.astype({c: str for c in ("person", "folder", "photo", "status", "gender")}).copy()
    twice = df[df["person"].duplicated(keep=False)]
    if len(twice):
        raise _bad(path, twice.drop_duplicates("person"), "more than one row", "keep one row per person")
    bad_status = df[~df["status"].isin((FOUND, NO_FACE))]
    if len(bad_status):
        raise _bad(path, bad_status, f"status not '{FOUND}' or '{NO_FACE}'", "re-run maskkit expert")
    numbers = {c: pd.to_numeric(df[c].replace("", np.nan), errors="coerce") for c in OPINION_COLUMNS if c != "gender"}
    found = df["status"] == FOUND
    empty = pd.concat([df["gender"].isin(("", "nan")), *(v.isna() for v in numbers.values())], axis=1)
    if (empty[found].any(axis=1)).any():
        raise _bad(path, df[found & empty.any(axis=1)], "an empty, NaN or non-numeric opinion",
                   "every 'found' row has gender, p_female, confidences and age (re-run maskkit expert)")
    if (~empty[~found].all(axis=1)).any():
        raise _bad(path, df[~found & ~empty.all(axis=1)], f"an opinion on a '{NO_FACE}' row",
                   "a person without a face has no guess")
    checks = [(~df["gender"].isin(GENDERS), f"gender not {' or '.join(GENDERS)}"),
              (~df["photo"].isin(PHOTOS), f"photo not {' or '.join(PHOTOS)}"),
              (~numbers["p_female"].between(0, 1), "p_female outside 0..1"),
              (~numbers["gender_confidence"].between(0, 100) | ~numbers["age_confidence"].between(0, 100),
               "a confidence outside 0..100"),
              (~numbers["age"].between(*AGE_RANGE), f"age outside {AGE_RANGE[0]}..{AGE_RANGE[1]} years")]
    for wrong, what in checks:
        if (wrong & found).any():
            raise _bad(path, df[wrong & found], what, "re-run maskkit expert")
    df = df.assign(**numbers, gender=df["gender"].where(found, ""), photo=df["photo"].where(found, ""))
    if persons is not None:
        check_dataset(df, path, persons)
    return df


def check_dataset(df: pd.DataFrame, path: Path, persons: Mapping[str, str]) -> None:
    """Every row names a person of this dataset with this dataset's folder name."""
    known = df["person"].isin(persons.keys())
    same = known & (df["folder"] == df["person"].map(persons))
    if len(df) and not same.any():
        raise MaskkitError(f"{path}: opinions of another dataset (none of its {len(df)} persons' folders, e.g. "
                           f"{df['folder'].iloc[0]}, is in this one); run maskkit expert on this dataset")
    if not known.all():
        raise _bad(path, df[~known], "not in this dataset", "run maskkit expert on this dataset (or drop those rows)")
    if not same.all():
        moved = df[~same]
        raise MaskkitError(f"{path}: opinions of another dataset: person {moved['person'].iloc[0]} is folder "
                           f"{moved['folder'].iloc[0]} there, {persons[moved['person'].iloc[0]]} here "
                           f"({len(moved)} such row(s)); run maskkit expert on this dataset")


def read_opinions(path: str | Path, persons: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read and validate an opinions CSV (check_opinions)."""
    path = Path(path)
    df = read_csv(path, fix=FIX, dtype=str, keep_default_na=False)
    return check_opinions(df, path, persons)


def read_partial(path: Path, persons: Mapping[str, str]) -> pd.DataFrame:
    """The rows an interrupted `maskkit expert` appended (a cut last line is dropped); none if no file."""
    if not path.is_file():
        return pd.DataFrame(columns=list(OPINIONS_COLUMNS))
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the row being written when the run was killed
    if not text.strip():
        return pd.DataFrame(columns=list(OPINIONS_COLUMNS))
    df = read_csv(path, fix=f"{FIX}; delete this partial file to start again", data=text.encode(), dtype=str,
                  keep_default_na=False)
    try:
        return check_opinions(df.drop_duplicates("person", keep="last"), path, persons)
    except MaskkitError as exc:
        raise MaskkitError(f"{exc} (a partial run's rows: delete {path} to start again)") from None


class PartialOpinions:
    """The partial file, locked against a second run and appended to (rows flushed as they come)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with write_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.created = not path.exists()
            self.handle = open(path, "a", newline="", encoding="utf-8")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise MaskkitError(f"{path}: another maskkit expert is writing these opinions; wait for it to "
                               "finish, or choose another -o") from None
        self.writer = csv.writer(self.handle, lineterminator="\n")
        self.rows = 0
        if self.handle.tell() == 0:
            self.writer.writerow(OPINIONS_COLUMNS)
            self.handle.flush()

    def add(self, rows: Sequence[dict]) -> None:
        for row in rows:
            self.writer.writerow(["" if row[c] is None else row[c] for c in OPINIONS_COLUMNS])
        self.rows += len(rows)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        """Close; a partial file this run created and never wrote a row to is removed (nothing half-written)."""
        with contextlib.suppress(OSError):
            self.handle.close()
            if self.created and not self.rows:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> PartialOpinions:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def opinions_table(rows: Sequence[dict] | pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """The rows as the final CSV: one per person, in `order`; whole numbers written without '.0'."""
    df = pd.DataFrame(rows, columns=list(OPINIONS_COLUMNS)) if not isinstance(rows, pd.DataFrame) else rows.copy()
    rank = {person: k for k, person in enumerate(order)}
    df = df.assign(rank=df["person"].map(rank)).sort_values("rank", kind="stable").drop(columns="rank")
    for column in ("gender_confidence", "age", "age_confidence"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    return df.reset_index(drop=True)

