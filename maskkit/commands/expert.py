"""`maskkit expert DATA/train -o opinions.csv`: an outside face model's opinion of every person's
gender and age (engine/expert.py), for `audit --expert` (docs/formats.md, "Opinions CSV").

Resumable: with `-o FILE`, rows are appended to FILE's partial file (contract/opinions.py) as
persons finish, and a re-run computes only the persons it lacks; FILE appears by atomic rename
at the end. To stdout (no -o) nothing is kept between runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from maskkit.contract import layout
from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console, remove_dead_temps, write_csv
from maskkit.contract.opinions import (FOUND, OPINIONS_COLUMNS, PartialOpinions, opinions_table, partial_path,
                                       read_partial)
from maskkit.contract.streams import STDIN, is_stream
from maskkit.engine.expert import compute, persons_of


def check_workers(workers: int | None) -> int:
    limit = 4 * (os.cpu_count() or 1)
    if workers is None:
        return 1
    if not 0 <= workers <= limit:
        raise MaskkitError(f"--workers {workers}: use 0..{limit} (0 or 1: this process)")
    return workers


def run(data: str | Path, out: str | Path | None = None, workers: int | None = None,
        show_progress: bool | None = None) -> pd.DataFrame:
    """The opinions table of DATA/train's persons, written to `out` (or stdout); resumes a killed run."""
    workers = check_workers(workers)
    root = layout.train_root(data)
    images = layout.load_train(root)
    people = persons_of(images)
    inputs = Inputs.of(data)
    inputs.check(out, header=OPINIONS_COLUMNS)
    order = [person for person, _, _ in people]
    started = time.perf_counter()
    if out is None or str(out) == STDIN or is_stream(out):
        rows = compute(people, workers, show_progress=show_progress)
        table, computed = opinions_table(rows, order), len(rows)
    else:
        out = Path(out)
        partial = partial_path(out)
        inputs.check(partial, header=OPINIONS_COLUMNS, what="partial file")
        remove_dead_temps(out)
        with PartialOpinions(partial) as keep:
            earlier = read_partial(partial, {person: folder for person, folder, _ in people})
            if len(earlier):
                console.print(f"expert: continuing {partial}: {len(earlier)} of {len(people)} persons done earlier")
            have = set(earlier["person"])
            left = [p for p in people if p[0] not in have]
            rows = compute(left, workers, done=len(people) - len(left), total=len(people),
                           show_progress=show_progress, keep=keep.add)
            table = opinions_table(pd.concat([earlier, pd.DataFrame(rows, columns=list(OPINIONS_COLUMNS))],
                                             ignore_index=True), order)
            computed = len(rows)
            write_csv(table, out, inputs=inputs)
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    found = int((table["status"] == FOUND).sum())
    rate = f", {computed / seconds:.1f} persons/s" if computed and seconds > 0 else ""
    console.print(f"expert: {len(table)} persons, a face found for {found} ({len(table) - found} no face); "
                  f"{computed} computed in {seconds:.1f}s{rate}" + (f" -> {out}" if out is not None else ""))
    if out is None or str(out) == STDIN or is_stream(out):
        write_csv(table, out)
    return table
