"""crop's boxes CSV and its journal (docs/formats.md, "Crop output").

`OUT/crop_boxes.csv`, one row per image, written atomically at the end of a run:
path,how,score,width,height,face_x,face_y,face_w,face_h,x,y,w,h,source. `how` says where the box
came from (HOWS); face_* is the face box in IN's pixels (empty for centre and failed), x,y,w,h the
cut written to OUT. `OUT/.crop_journal.csv` (the same columns, no header) exists from a run's start
until the boxes CSV is written: a row is appended and flushed once an image's crop is renamed into
place, so a killed run's work is known on re-run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import pandas as pd

from maskkit.contract.files import write_csv
from maskkit.contract import journal as journaled
from maskkit.contract.journal import read_journaled
from maskkit.contract.paths import as_text

BOXES = "crop_boxes.csv"
JOURNAL = ".crop_journal.csv"
# detector: found in the image; person: the box found on the same person's other photo `source`
# (scaled to this image's size); centre: the competition's centre crop; failed: unreadable, nothing written.
HOWS = ("detector", "person", "centre", "failed")


@dataclass(frozen=True)
class BoxRow:
    """One image's row of the boxes CSV."""

    path: str
    how: str
    score: float = math.nan
    width: int = 0
    height: int = 0
    face_x: float = math.nan
    face_y: float = math.nan
    face_w: float = math.nan
    face_h: float = math.nan
    x: int = 0
    y: int = 0
    w: int = 0
    h: int = 0
    source: str = ""

    @property
    def face(self) -> tuple[float, float, float, float] | None:
        box = (self.face_x, self.face_y, self.face_w, self.face_h)
        return None if any(math.isnan(v) for v in box) else box


COLUMNS = [f.name for f in fields(BoxRow)]
Records = dict[str, BoxRow]  # relative image path -> its row


def _cells(row: BoxRow) -> list[str]:
    return ["" if isinstance(v, float) and math.isnan(v) else f"{v:.2f}" if isinstance(v, float) else str(v)
            for v in astuple(row)]


def _parse(cells: list[str]) -> BoxRow | None:
    """A row from its cells; None for a cut or foreign line (a killed run's last journal line)."""
    if len(cells) != len(COLUMNS) or cells[1] not in HOWS:
        return None
    try:
        values = [kind(cell) if cell != "" else default
                  for cell, kind, default in zip(cells, (str, str, float, int, int, float, float, float, float,
                                                         int, int, int, int, str),
                                                 (None, None, math.nan, 0, 0, *[math.nan] * 4, 0, 0, 0, 0, ""))]
    except ValueError:
        return None
    return BoxRow(*values)


def is_crop_output(out: Path) -> bool:
    """OUT holds a boxes CSV or a journal, so an earlier crop run wrote it."""
    return (out / BOXES).is_file() or (out / JOURNAL).is_file()


def read_records(out: Path) -> Records:
    """path -> row from the previous boxes CSV and then the journal of a killed run."""
    def parse(cells: list[str]) -> tuple[str, BoxRow] | None:
        row = _parse(cells)
        return None if row is None else (row.path, row)
    return read_journaled(out, (BOXES, JOURNAL), parse)


def write_boxes(out: Path, images: Sequence[Path], records: Records) -> None:
    """The boxes CSV (rows in the order of `images`), written atomically; the journal is then no longer needed."""
    keys = [as_text(rel.as_posix()) for rel in images]
    table = pd.DataFrame([_cells(records[k]) for k in keys if k in records], columns=COLUMNS)
    write_csv(table, out / BOXES)
    (out / JOURNAL).unlink(missing_ok=True)


def forget_records(out: Path) -> None:
    """--overwrite: the boxes CSV and journal of earlier runs no longer count."""
    (out / BOXES).unlink(missing_ok=True)
    (out / JOURNAL).unlink(missing_ok=True)


def read_boxes(path: str | Path) -> pd.DataFrame:
    """A boxes CSV as a table (for tests and benchmarks)."""
    return pd.read_csv(path, dtype={"path": str, "how": str, "source": str}, keep_default_na=False,
                       na_values={c: [""] for c in COLUMNS if c not in ("path", "how", "source")})


class Journal(journaled.Journal):
    """Box rows appended (and flushed) as crops finish; a context manager that closes the file."""

    def __init__(self, out: Path) -> None:
        super().__init__(out, JOURNAL)

    def add(self, row: BoxRow) -> None:
        self.append(_cells(row))
