"""One training recipe on a realfaces folder, through the real CLI: split, train every fold, predict the
eval set, soft vote, score against DATA/eval/truth.csv, and append one row to a results CSV; with
--full also the full-data model of the recipe (`train --fold all`: every person, no validation).

DATA is a realfaces folder (../shared/realfaces/build.py: DATA/train, DATA/eval with truth.csv). The
recipe is the base options (lite0 offline weights, --multi --age-weight 0.1), or a --recipe YAML, plus
whatever follows `--`, passed to `maskkit train` unchanged (later options win). Everything goes under WORK/NAME/
(manifest.csv, runs/fK and runs/all, preds/*.csv, submission.csv, scores.csv); a re-run resumes: finished runs
and predictions are kept, an interrupted run continues from its last.pt. Several recipes may run at
once (on one GPU or several): each writes only its own WORK/NAME, and the results CSV is appended
under a file lock. Never commit DATA or anything under WORK: they hold or derive from UTKFace images.

  python benchmarks/realfaces_recipe.py /work/realfaces/clean --name lr1e-3 --folds 5 --epochs 4 \\
      --input-size 128x128 --device cuda --full -- --lr 2e-3

Results row (one per call): name, data, folds, epochs, img_size, device, options (the train
options after the base ones, or --config RECIPE and those after it), oof_f1 / oof_f1_mask /
oof_f1_gender / oof_f1_age (pooled out-of-fold predictions of the fold runs, from `maskkit runs`), fold_f1_mean / fold_f1_min / fold_f1_max (eval
macro F1 of each fold model), vote_f1 / vote_f1_mask / vote_f1_gender / vote_f1_age (eval score of
the soft vote), full_f1 / full_f1_gender / full_f1_age (eval score of the full-data model, with
--full), train_s (seconds training, all runs), finished (UTC time).
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

BASE_OPTIONS = ["--backbone", "lite0", "--multi", "--age-weight", "0.1"]
RESULT_COLUMNS = ["name", "data", "folds", "epochs", "img_size", "device", "options", "oof_f1", "oof_f1_mask",
                  "oof_f1_gender", "oof_f1_age", "fold_f1_mean", "fold_f1_min", "fold_f1_max", "vote_f1",
                  "vote_f1_mask", "vote_f1_gender", "vote_f1_age", "full_f1", "full_f1_gender", "full_f1_age",
                  "train_s", "finished"]


def maskkit(*args: object, env: dict, capture: bool = False, log: Path | None = None) -> str:
    """Run `python -m maskkit ARGS`; stop with the command's own error when it fails."""
    command = [sys.executable, "-m", "maskkit", *map(str, args)]
    print("$ maskkit " + " ".join(map(str, args)), flush=True)
    with open(log, "a") if log else open(os.devnull, "w") as stderr:
        result = subprocess.run(command, env=env, stdout=subprocess.PIPE if capture else None,
                                stderr=stderr if log else None, text=True)
    if result.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] if log and log.is_file() else []
        sys.exit(f"realfaces_recipe: maskkit {args[0]} failed (exit {result.returncode}): {' '.join(tail)}")
    return result.stdout if capture else ""


def append_row(path: Path, row: dict) -> None:
    """Append one row under an exclusive lock (several recipes may finish at once); header when new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = io.StringIO()
    pd.DataFrame([row], columns=RESULT_COLUMNS).to_csv(line, index=False, header=False, lineterminator="\n")
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            handle.write(",".join(RESULT_COLUMNS) + "\n")
        handle.write(line.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
        fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Options after -- go to `maskkit train` unchanged.")
    parser.add_argument("data", type=Path, help="realfaces folder (DATA/train, DATA/eval/truth.csv)")
    parser.add_argument("--name", required=True, help="recipe name: WORK/NAME holds its runs")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", help="train only these folds, e.g. 0,1 (vote and pool over them)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--input-size", default="128x128", help="model input WIDTHxHEIGHT")
    parser.add_argument("--recipe", type=Path, help="a recipe YAML (`maskkit tune --best`, `train --print-config`): "
                        "replaces the base options, --epochs and --input-size")
    parser.add_argument("--full", action="store_true", help="also train the full-data model (--fold all) and score it")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (train and predict)")
    parser.add_argument("--split-seed", type=int, default=42, help="seed of `maskkit split` (same folds for every recipe)")
    parser.add_argument("--split-extra", type=Path, nargs="+", default=[],
                        help="`maskkit split --extra`: imported persons that train in every fold (maskkit import)")
    parser.add_argument("--tta", default="none", help="predict --tta: none or flip")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process (sets OMP_NUM_THREADS)")
    parser.add_argument("--work", type=Path, default=Path("realfaces-work"), help="folder of recipe folders")
    parser.add_argument("--results", type=Path, help="results CSV to append to (default WORK/results.csv)")
    args = parser.parse_args(own)

    truth = args.data / "eval" / "truth.csv"
    if not (args.data / "train" / "train.csv").is_file() or not truth.is_file():
        sys.exit(f"realfaces_recipe: {args.data}: expected DATA/train/train.csv and DATA/eval/truth.csv "
                 "(build it with ../shared/realfaces/build.py)")
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    home = args.work / args.name
    (home / "preds").mkdir(parents=True, exist_ok=True)
    log = home / "log.txt"
    manifest = home / "manifest.csv"
    if not manifest.is_file():
        extra_persons = [part for folder in args.split_extra for part in ("--extra", folder)]
        maskkit("split", args.data / "train", "--folds", args.folds, "--seed", args.split_seed, *extra_persons,
                "-o", manifest, env=env, log=log)

    folds = [int(f) for f in args.only.split(",")] if args.only else list(range(args.folds))
    base = [*BASE_OPTIONS, "--epochs", args.epochs, "--input-size", args.input_size]
    recipe = ["--config", args.recipe] if args.recipe else []
    options = [*(recipe or base), "--device", args.device, *extra]
    train_seconds, preds, rows = 0.0, [], []

    def train_and_score(fold: int | str) -> Path:
        """Train (or resume) one run, predict the eval set (again when best.pt is newer), score it."""
        nonlocal train_seconds
        run = home / "runs" / (f"f{fold}" if fold != "all" else "all")
        started = time.perf_counter()
        if (run / "last.pt").is_file():
            maskkit("train", "--resume", run, "--device", args.device, env=env, log=log)  # no-op when finished
        else:
            maskkit("train", manifest, "--fold", fold, *options, "--runs-dir", home / "runs", "--name", run.name,
                    "--overwrite", env=env, log=log)
        train_seconds += time.perf_counter() - started
        pred = home / "preds" / f"{run.name}.csv"
        if not pred.is_file() or pred.stat().st_mtime < (run / "best.pt").stat().st_mtime:
            maskkit("predict", run, args.data / "eval", "--tta", args.tta, "--device", args.device, "-o", pred,
                    env=env, log=log)
        score = pd.read_csv(io.StringIO(maskkit("score", pred, truth, env=env, capture=True, log=log)))
        rows.append(score.assign(model=run.name))
        return pred

    for fold in folds:
        preds.append(train_and_score(fold))
    submission = home / "submission.csv"
    maskkit("vote", *preds, "--soft", "--probs", "-o", submission, env=env, log=log)
    vote = pd.read_csv(io.StringIO(maskkit("score", submission, truth, env=env, capture=True, log=log)))
    rows.append(vote.assign(model=f"soft vote of {len(preds)}"))
    if args.full:
        train_and_score("all")
    scores = pd.concat(rows, ignore_index=True)
    scores.to_csv(home / "scores.csv", index=False)
    runs = pd.read_csv(io.StringIO(maskkit("runs", *[home / "runs" / f"f{f}" for f in folds], env=env, capture=True,
                                           log=log)))
    pooled = runs.iloc[0]
    if runs["recipe"].nunique() != 1:
        print(f"warning: the fold runs of {args.name} differ in more than their fold ({runs['recipe'].nunique()} "
              "recipes); oof_f1 is the first recipe's", file=sys.stderr)
    folds_f1 = scores.loc[scores["model"].isin([f"f{f}" for f in folds]), "macro_f1"]
    full = scores[scores["model"] == "all"]
    trained = json.loads((home / "runs" / f"f{folds[0]}" / "config.json").read_text())["options"]
    row = {"name": args.name, "data": str(args.data), "folds": ",".join(map(str, folds)), "epochs": trained["epochs"],
           "img_size": "x".join(map(str, trained["img_size"])), "device": args.device,
           "options": " ".join(map(str, [*recipe, *extra])),
           **{k: round(float(pooled[k]), 4) for k in ("oof_f1", "oof_f1_mask", "oof_f1_gender", "oof_f1_age")},
           "fold_f1_mean": round(float(folds_f1.mean()), 4), "fold_f1_min": round(float(folds_f1.min()), 4),
           "fold_f1_max": round(float(folds_f1.max()), 4),
           **{f"vote_{k}": round(float(vote[k].iloc[0]), 4) for k in ("f1_mask", "f1_gender", "f1_age")},
           "vote_f1": round(float(vote["macro_f1"].iloc[0]), 4), "train_s": round(train_seconds, 1),
           **({"full_f1": round(float(full["macro_f1"].iloc[0]), 4),
               "full_f1_gender": round(float(full["f1_gender"].iloc[0]), 4),
               "full_f1_age": round(float(full["f1_age"].iloc[0]), 4)} if len(full) else {}),
           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    append_row(args.results or args.work / "results.csv", row)
    print(scores[["model", "macro_f1", "f1_mask", "f1_gender", "f1_age"]].to_string(index=False))
    print(f"{args.name}: pooled OOF macro F1 {row['oof_f1']}, soft vote eval macro F1 {row['vote_f1']} "
          + (f", full-data model {row['full_f1']}" if len(full) else "")
          + f" -> {args.results or args.work / 'results.csv'}")
    return row


if __name__ == "__main__":
    main()
