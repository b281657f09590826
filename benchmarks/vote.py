"""Vote cost against reading: 10 prediction CSVs x 12,600 rows, hard and soft, vs plain pandas reads.

Run from the repository root: python benchmarks/vote.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.commands.vote import PROB_COLUMNS, vote

FILES, ROWS, REPEATS = 10, 12_600, 7


def make_files(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    ids = [f"{rng.integers(16**12):012x}.jpg" for _ in range(ROWS)]
    paths = []
    for j in range(FILES):
        probs = rng.dirichlet(np.full(18, 0.2), size=ROWS)
        df = pd.DataFrame(probs, columns=PROB_COLUMNS)
        df.insert(0, "ans", probs.argmax(axis=1))
        df.insert(0, "ImageID", ids)
        df = df.sample(frac=1.0, random_state=j)  # each model lists the rows in its own order
        paths.append(folder / f"model{j}.csv")
        df.to_csv(paths[-1], index=False, float_format="%.6g")
    return paths


def best_of(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp))
        read = best_of(lambda: [pd.read_csv(f) for f in files])
        hard = best_of(lambda: vote(files))
        soft = best_of(lambda: vote(files, soft=True, probs=True))
    print(f"{FILES} files x {ROWS} rows (ImageID,ans,p0..p17), best of {REPEATS}:")
    print(f"  plain pandas read_csv of all files: {read:.3f} s")
    print(f"  hard vote (read + check + vote):    {hard:.3f} s   ratio {hard / read:.2f}")
    print(f"  soft vote --probs:                  {soft:.3f} s   ratio {soft / read:.2f}")


if __name__ == "__main__":
    sys.exit(main())
