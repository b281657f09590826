"""The real-faces recipe ablation as a table: pooled out-of-fold macro F1 and eval macro F1 per recipe.

RESULTS is a folder of finished runs as the GPU ablation left them (never committed: built from
real faces): RESULTS/oof/<recipe>-f<k>/{config.json,metrics.csv,val_preds.csv} and, optionally,
RESULTS/eval/<recipe>-f<k>/eval_preds.csv (predictions for the eval images). TRUTH is the eval
set's truth.csv. Per recipe: the pooled OOF F1 over its folds (and per task), the same on the folds
every recipe has (so a recipe with a missing fold is compared fairly), each fold's eval F1, their
mean, and the eval F1 of the soft vote of its folds (maskkit vote's soft_vote).

  python benchmarks/realfaces_ablation.py /work/realfaces/gpu1 /work/realfaces/clean/eval/truth.csv
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.commands.vote import soft_vote
from maskkit.contract.predictions import read_predictions
from maskkit.engine.metrics import scores


def fold_runs(results: Path) -> dict[str, dict[int, Path]]:
    """{recipe: {fold: run folder}} of RESULTS/oof/<recipe>-f<k>."""
    recipes: dict[str, dict[int, Path]] = {}
    for run in sorted((results / "oof").iterdir()):
        match = re.fullmatch(r"(.+)-f(\d+)", run.name)
        if match and (run / "val_preds.csv").is_file():
            recipes.setdefault(match[1], {})[int(match[2])] = run
    return recipes


def pooled(runs: dict[int, Path], folds) -> dict[str, float]:
    frames = [read_predictions(runs[k] / "val_preds.csv", probabilities=False)[0] for k in sorted(folds)]
    table = pd.concat(frames, ignore_index=True)
    return scores(table["label"], table["ans"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("truth", type=Path)
    args = parser.parse_args()
    truth = read_predictions(args.truth, probabilities=False)[0].set_index("ImageID")["ans"]
    recipes = fold_runs(args.results)
    common = set.intersection(*(set(r) for r in recipes.values()))
    rows = []
    for name, runs in recipes.items():
        oof, oof_common = pooled(runs, runs), pooled(runs, common)
        row = {"recipe": name, "folds": len(runs), "oof_f1": oof["macro_f1"],
               f"oof_f1_folds{''.join(map(str, sorted(common)))}": oof_common["macro_f1"],
               "oof_gender": oof["f1_gender"], "oof_age": oof["f1_age"]}
        evals = {k: args.results / "eval" / f"{name}-f{k}" / "eval_preds.csv" for k in sorted(runs)}
        evals = {k: p for k, p in evals.items() if p.is_file()}
        if evals:
            fold_f1, probs = [], []
            for path in evals.values():
                table, p = read_predictions(path)
                order = table["ImageID"]
                fold_f1.append(scores(truth.loc[order], table["ans"])["macro_f1"])
                probs.append(pd.DataFrame(p, index=order).loc[truth.index].to_numpy())
            voted = soft_vote(np.stack(probs), np.ones(len(probs))).argmax(1)
            vote = scores(truth.to_numpy(), voted)
            row.update({"eval_f1_folds": " ".join(f"{v:.3f}" for v in fold_f1), "eval_f1_mean": np.mean(fold_f1),
                        "vote_f1": vote["macro_f1"], "vote_gender": vote["f1_gender"], "vote_age": vote["f1_age"]})
        rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
