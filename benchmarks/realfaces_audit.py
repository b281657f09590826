"""Audit hit rate on real faces: recall and precision of `maskkit audit`'s suggestions at several cut-offs.

DATA is a realfaces folder built with `--noise` (../shared/realfaces/build.py): DATA/train is audited,
DATA/injected_errors.csv (person,column,true,recorded; kept outside DATA/train) lists the errors put
in. OOF is any number of out-of-fold prediction files or run folders (RUN/val_preds.csv): several
models' folds may be mixed, the audit groups them into sets. A suggestion is one (person, column):
a gender flip, or a mask swap (its two rows). It is a hit when the person has an injected error in
that column, or when the person is listed in --confirmed (ids a human confirmed, by looking, as real
errors of the source; one id a line, or a CSV with a `person` column). Images are never copied:
the audit reads DATA in place, and nothing here writes outside --work.

  python benchmarks/realfaces_audit.py /work/realfaces/noisy --oof runs/lite0-f{0,1,2,3,4} [--confirmed ids.txt]
  python benchmarks/realfaces_audit.py DATA --oof runs/lite0-f{0,1,2,3,4} --flip --proxy --work W --csv table.csv
  python benchmarks/realfaces_audit.py DATA --proxy --expert opinions.csv   # opinions: `maskkit expert DATA/train`

--flip replaces each run folder's val_preds.csv by the same images predicted with flip TTA
(`maskkit predict RUN - --tta flip`, the paths on stdin). Besides the cut-off rows, the table has a
review-budget row: the top 2x-expected suggestions, where expected is the sum of P(label wrong) that
audit's summary line reports.

Without trained runs, --proxy builds two stand-in prediction sets on the CPU (about 2 minutes each
on one core): benchmarks/audit.py's frozen ImageNet Lite0 features at 128x128 + logistic regression,
5 person folds; set A with fold seed 0 and C 0.01, set B with fold seed 1 and C 0.1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path, PurePath

import pandas as pd

from maskkit.commands.audit import MIN_SCORE

CUTOFFS = (0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9)


def person_of(target: str) -> str:
    """A fixes target: a person id (gender) or an image path whose folder starts with the id (mask)."""
    return PurePath(target).parent.name.split("_")[0] if "/" in str(target) else str(target)


def suggestions(fixes: pd.DataFrame) -> pd.DataFrame:
    """One row per (person, column) with the highest score of its fixes rows."""
    table = fixes.assign(person=fixes["target"].map(person_of))
    return table.groupby(["person", "column"], as_index=False)["score"].max()


def read_confirmed(path: Path | None) -> set[str]:
    if path is None:
        return set()
    text = path.read_text().split()
    if text and text[0] == "person":  # a CSV with a person column
        return set(pd.read_csv(path, dtype={"person": str})["person"])
    return {line.strip() for line in text if line.strip()}


def rates(found: pd.DataFrame, injected: pd.DataFrame, confirmed: set[str], cut: float) -> dict:
    chosen = found[found["score"] >= cut]
    truth = set(zip(injected["person"], injected["column"]))
    pairs = list(zip(chosen["person"], chosen["column"]))
    hit = [(p, c) in truth or p in confirmed for p, c in pairs]
    by_column = {}
    for column in ("gender", "mask", "age"):
        found = sum((p, c) in truth for p, c in pairs if c == column)
        extra = sum((p, c) not in truth and p in confirmed for p, c in pairs if c == column)
        by_column[column] = (f"{found}/{int((injected['column'] == column).sum())}" + (f"+{extra}" if extra else "")
                             + f" of {sum(c == column for _, c in pairs)}")
    found_injected = len(truth & set(zip(chosen["person"], chosen["column"])))
    return {"cut": cut, "suggested": len(chosen), "hits": sum(hit),
            "recall": found_injected / len(truth) if truth else float("nan"),
            "precision": sum(hit) / len(chosen) if len(chosen) else float("nan"),
            "gender": by_column["gender"], "mask": by_column["mask"], "age": by_column["age"]}


def proxy_oof(train: Path, out: Path) -> list[Path]:
    """Two stand-in out-of-fold prediction sets (see the module docstring), made once."""
    import importlib.util

    import torch
    from threadpoolctl import threadpool_limits

    spec = importlib.util.spec_from_file_location("audit_benchmark", Path(__file__).with_name("audit.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    files = []
    for name, seed, c in (("A", 0, 0.01), ("B", 1, 0.1)):
        done = sorted((out / name).glob("fold*/val_preds.csv"))
        if len(done) < 5:
            torch.set_num_threads(1)
            with threadpool_limits(1):
                done = bench.make_oof(train, out / name, size=(128, 128), seed=seed, c=c)
        files += done
    return files


def flipped_oof(run: Path, work: Path, threads: int) -> Path:
    """The run's out-of-fold predictions again with flip TTA: its val_preds.csv images through
    `maskkit predict RUN - --tta flip` (a user's pipeline); cached under WORK/flip."""
    out = work / "flip" / f"{run.resolve().parent.parent.name}-{run.name}.csv"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        paths = pd.read_csv(run / "val_preds.csv", usecols=["ImageID"])["ImageID"]
        subprocess.run([sys.executable, "-m", "maskkit", "predict", str(run), "-", "--tta", "flip", "--device", "cpu",
                        "--threads", str(threads), "-o", str(out)], input="\n".join(paths) + "\n", text=True, check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="realfaces folder built with --noise (holds train/ and injected_errors.csv)")
    parser.add_argument("--oof", type=Path, nargs="+", default=[], help="val_preds.csv files or run folders")
    parser.add_argument("--proxy", action="store_true", help="also build and use two stand-in prediction sets "
                        "(frozen Lite0 features + logistic regression; cached under WORK/proxy-oof)")
    parser.add_argument("--flip", action="store_true", help="run folders in --oof: predict their validation "
                        "images again with flip TTA and use those predictions (cached under WORK/flip)")
    parser.add_argument("--expert", type=Path, help="an opinions CSV of `maskkit expert` (audit --expert)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of --flip's predict")
    parser.add_argument("--confirmed", type=Path, help="person ids confirmed as real source errors (count as hits)")
    parser.add_argument("--cutoffs", type=float, nargs="+", default=list(CUTOFFS))
    parser.add_argument("--csv", type=Path, help="also write the table here")
    parser.add_argument("--work", type=Path, help="keep the audit's outputs here (default: a temporary folder)")
    args = parser.parse_args()

    injected = pd.read_csv(args.data / "injected_errors.csv", dtype=str)
    confirmed = read_confirmed(args.confirmed)
    work = args.work or Path(tempfile.mkdtemp(prefix="realfaces-audit-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.flip:
        args.oof = [flipped_oof(path, work, args.threads) if path.is_dir() else path for path in args.oof]
    if args.proxy:
        args.oof = [*args.oof, *proxy_oof(args.data / "train", work / "proxy-oof")]
    if not args.oof and not args.expert:
        sys.exit("realfaces_audit: give --oof FILES, --proxy or --expert")
    fixes_path = work / "fixes.csv"
    command = [sys.executable, "-m", "maskkit", "audit", str(args.data / "train"), "--min-score", "0",
               "--fixes-out", str(fixes_path), "-o", str(work / "suspects.csv")]
    for path in args.oof:
        command += ["--oof", str(path)]
    if args.expert:
        command += ["--expert", str(args.expert)]
    result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"realfaces_audit: {(result.stderr.strip().splitlines() or ['maskkit audit failed'])[-1]}")
    found = suggestions(pd.read_csv(fixes_path, dtype={"target": str}))

    print(f"{args.data}: {len(injected)} injected errors ({', '.join(f'{c} {n}' for c, n in injected['column'].value_counts().items())}); "
          f"{len(confirmed)} confirmed source errors; {len(args.oof)} --oof inputs")
    table = pd.DataFrame([rates(found, injected, confirmed, cut) for cut in sorted(set(args.cutoffs) | {MIN_SCORE})])
    table["default"] = table["cut"].eq(MIN_SCORE).map({True: "<-", False: ""})
    expected = found["score"].sum()  # what audit's summary line says: the sum of P(label wrong)
    budget = max(1, round(2 * expected))
    review = rates(found.sort_values("score", ascending=False).head(budget), injected, confirmed, 0.0)
    table = pd.concat([table, pd.DataFrame([review | {"cut": f"top {budget}", "default": "2x expected"}])],
                      ignore_index=True)
    print(f"audit expects {expected:.1f} wrong labels (sum of P(label wrong)); the top {budget} = twice that")
    print("gender / mask / age: injected found/injected (+confirmed source errors found) of suggested")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.csv:
        table.to_csv(args.csv, index=False)
    top = found.sort_values("score", ascending=False).head(40)
    truth = set(zip(injected["person"], injected["column"]))
    unconfirmed = [f"{p} {c} {s:.2f}" for p, c, s in zip(top["person"], top["column"], top["score"])
                   if (p, c) not in truth and p not in confirmed]
    print("top suggestions neither injected nor confirmed (look at these):", "; ".join(unconfirmed[:20]))


if __name__ == "__main__":
    main()
