"""segment's record of finished images in OUT: the report and the journal (docs/formats.md, "Segment output").

`OUT/segment_report.csv` (path, person_area, status), written atomically at the end of a run.
`OUT/.segment_journal.csv` (the same three columns, no header) exists from a run's start until its
report is written: a row is appended and flushed once an image's outputs are renamed into place,
so a killed run's work is known on re-run and the journal's presence marks an interrupted run.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from maskkit.contract.files import write_csv
from maskkit.contract.paths import as_text

REPORT = "segment_report.csv"
JOURNAL = ".segment_journal.csv"
REPORT_COLUMNS = ["path", "person_area", "status"]
STATUSES = ("done", "no_person", "failed")
FINISHED = ("done", "no_person")

Records = dict[str, tuple[float, str]]  # relative image path -> (person_area, status)


def is_segment_output(out: Path) -> bool:
    """OUT holds a report or a journal, so an earlier segment run wrote it."""
    return (out / REPORT).is_file() or (out / JOURNAL).is_file()


def read_journaled(out: Path, names: Sequence[str], parse: Callable[[list[str]], tuple[str, Any] | None]) -> dict:
    """key -> value of every row `parse` accepts, from each file of `names` in OUT in turn (a report,
    then the journal of a killed run, whose later rows win). A killed run may leave a cut last line:
    `parse` returns None for a row that is not complete and valid."""
    records: dict = {}
    for name in names:
        path = out / name
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            for cells in csv.reader(handle):
                parsed = parse(cells)
                if parsed is not None:
                    records[parsed[0]] = parsed[1]
    return records


def _parse(cells: list[str]) -> tuple[str, tuple[float, str]] | None:
    if len(cells) != 3 or cells[2] not in STATUSES:
        return None
    try:
        return cells[0], (float(cells[1]), cells[2])
    except ValueError:
        return None


def read_records(out: Path) -> Records:
    """path -> (person_area, status) from the previous report and then the journal of a killed run."""
    return read_journaled(out, (REPORT, JOURNAL), _parse)


def report_table(images: Sequence[Path], records: Records) -> pd.DataFrame:
    """The report's rows, in the order of `images`, for the images that have a record."""
    rows = []
    for rel in images:
        key = as_text(rel.as_posix())  # the journal's key (segment's Job.rel)
        if key in records:
            area, status = records[key]
            rows.append({"path": key, "person_area": area, "status": status})
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def write_report(out: Path, images: Sequence[Path], records: Records) -> None:
    """The report, written atomically; the journal is then no longer needed."""
    write_csv(report_table(images, records), out / REPORT, float_format="%.6f")
    (out / JOURNAL).unlink(missing_ok=True)


def forget_records(out: Path) -> None:
    """--overwrite: the report and journal of earlier runs no longer count."""
    (out / REPORT).unlink(missing_ok=True)
    (out / JOURNAL).unlink(missing_ok=True)


class Journal:
    """Rows appended (and flushed) as outputs finish; a context manager that closes the file.
    `name`: the journal's file in OUT (crop's boxes journal is one too)."""

    def __init__(self, out: Path, name: str = JOURNAL) -> None:
        self.handle = open(out / name, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle, lineterminator="\n")

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.close()

    def append(self, cells: Sequence[object]) -> None:
        self.writer.writerow(cells)
        self.handle.flush()

    def add(self, rel: str, area: float, status: str) -> None:
        self.append([rel, f"{area:.6f}", status])
