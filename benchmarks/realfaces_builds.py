"""Two disjoint realfaces builds for an honest audit check: every choice on build A, reported on build B.

../shared/realfaces/build.py draws one build from the faces it does not reserve. This wrapper runs it
twice: build A as the builder makes it (--seed 11), then build B (--seed 12) from the faces neither
reserved nor used by A, so the two share no person, no photo and no injected error. The reserved
faces stay unused. Images are written only under OUT (never commit them).

  python benchmarks/realfaces_builds.py GITDIR /work/rf/audit --noise 0.05   # -> OUT/A, OUT/B
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import random
import sys
from pathlib import Path

BUILDER = Path(__file__).resolve().parents[2] / "shared" / "realfaces" / "build.py"


def load_builder(path: Path):
    spec = importlib.util.spec_from_file_location("realfaces_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chosen(rows: list[dict], reserved: int, seed: int, count: int) -> list[dict]:
    """The faces the builder takes for one build: its own shuffles and slices, repeated here."""
    rows = list(rows)
    random.Random(7).shuffle(rows)
    rows = rows[reserved:]
    random.Random(seed).shuffle(rows)
    return rows[:count]


def build(builder, gitdir: str, out: Path, seed: int, args, rows: list[dict] | None) -> None:
    """Run the builder's main; with `rows`, it draws from those faces only (nothing reserved twice)."""
    argv = [gitdir, str(out), "--seed", str(seed), "--noise", str(args.noise),
            "--train", str(args.train), "--eval", str(args.eval), "--cache", args.cache]
    original_faces, original_reserved = builder.faces, builder.RESERVED
    if rows is not None:
        builder.faces, builder.RESERVED = (lambda folder: list(rows)), 0
    sys.argv = ["build.py", *argv]
    try:
        builder.main()
    finally:
        builder.faces, builder.RESERVED = original_faces, original_reserved


def wrong_age(age: int, rng: random.Random) -> int:
    """An age 10-25 years past the nearest age-group boundary (30 or 60), on its other side."""
    step = rng.randint(10, 25)
    if age < 30:
        return 29 + step
    if age >= 60:
        return 60 - step
    return 30 - step if age - 30 < 60 - age else 59 + step


def add_age_errors(build_dir: Path, share: float, seed: int) -> int:
    """Give `share` of the persons with no injected error a recorded age in another group."""
    rng = random.Random(seed)
    errors_path, table_path = build_dir / "injected_errors.csv", build_dir / "train" / "train.csv"
    errors = list(csv.DictReader(errors_path.open()))
    taken = {row["person"] for row in errors}
    rows = list(csv.DictReader(table_path.open()))
    count = 0
    for row in rows:
        if row["id"] in taken or rng.random() >= share:
            continue
        true_age = int(row["age"])
        recorded = max(1, min(90, wrong_age(true_age, rng)))
        folder = f"{row['id']}_{row['gender']}_{row['race']}_{recorded}"
        (build_dir / "train" / "images" / row["path"]).rename(build_dir / "train" / "images" / folder)
        row["age"], row["path"] = str(recorded), folder
        errors.append({"person": row["id"], "column": "age", "true": str(true_age), "recorded": str(recorded)})
        count += 1
    for path, fields, table in ((table_path, ["id", "gender", "race", "age", "path"], rows),
                                (errors_path, ["person", "column", "true", "recorded"], errors)):
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(table)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gitdir")
    parser.add_argument("out", type=Path)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--eval", type=int, default=400)
    parser.add_argument("--cache", default="/tmp/realfaces-src")
    parser.add_argument("--builder", type=Path, default=BUILDER)
    parser.add_argument("--age-noise", type=float, default=0.0, help="share of the other train persons given an age error")
    args = parser.parse_args()
    builder = load_builder(args.builder)
    builder.extract(args.gitdir, args.cache)
    every = builder.faces(args.cache)
    used_by_a = {row["path"] for row in chosen(every, builder.RESERVED, 11, args.train + args.eval)}
    shuffled = list(every)
    random.Random(7).shuffle(shuffled)
    reserved = {row["path"] for row in shuffled[: builder.RESERVED]}
    rest = [row for row in every if row["path"] not in used_by_a | reserved]
    build(builder, args.gitdir, args.out / "A", 11, args, None)
    build(builder, args.gitdir, args.out / "B", 12, args, rest)
    for name, seed in (("A", 11), ("B", 12)):
        if args.age_noise > 0:
            print(f"{name}: {add_age_errors(args.out / name, args.age_noise, seed)} age errors added")
    print(f"A and B share no face: {len(used_by_a)} faces in A, {len(rest)} left for B, "
          f"{len(reserved)} reserved and unused")


if __name__ == "__main__":
    main()
