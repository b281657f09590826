"""Audit hit rate: recall and precision of injected gender flips and mask swaps at the default cut-off.

Draws a dataset with `synth --noise`, makes honest out-of-fold probabilities (5 folds grouped by
person: frozen ImageNet EfficientNet-Lite0 features + logistic regression per task, fitted on four
folds and predicting the fifth), writes them as one val_preds.csv per fold, runs `maskkit audit
--oof ... --fixes-out` and scores the fixes against train/injected_errors.csv. With `--train`, it
also trains real runs with `maskkit train` (when that command exists) and audits their val_preds.

Run from the repository root: python benchmarks/audit.py [--persons 300] [--size 96x128] [--noise 0.05]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.commands.audit import MIN_SCORE, image_key
from maskkit.contract.layout import load_train
from maskkit.contract.labels import NUM_CLASSES, decode, task_labels

PROB_COLUMNS = [f"p{i}" for i in range(NUM_CLASSES)]


def lite0_features(paths: list[str], size: tuple[int, int], mirror: bool = True, batch: int = 64) -> np.ndarray:
    """Frozen ImageNet EfficientNet-Lite0 features of each image (and of its mirror image, side by side).

    Global pooled features plus mid-level maps pooled to a 3x2 grid (where hair or a mask is matters).
    """
    import cv2
    import torch
    import torch.nn.functional as F

    from maskkit.engine.models import build_model, model_defaults

    net = build_model("lite0", heads="multi", pretrained=True).backbone.eval()
    stats = model_defaults("lite0")
    mean = torch.tensor(stats["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(stats["std"]).view(1, 3, 1, 1)

    def features(x: torch.Tensor) -> torch.Tensor:
        h = net.bn1(net.conv_stem(x))
        pooled = []
        for k, stage in enumerate(net.blocks):
            h = stage(h)
            if k in (3, 4):
                pooled.append(F.adaptive_avg_pool2d(h, (3, 2)).flatten(1))
        pooled.append(net.bn2(net.conv_head(h)).mean((2, 3)))
        return torch.cat(pooled, 1)

    out = []
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            imgs = [cv2.cvtColor(cv2.resize(cv2.imread(p), size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
                    for p in paths[start:start + batch]]
            x = (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255 - mean) / std
            out.append(torch.cat([features(x), features(x.flip(3))] if mirror else [features(x)], 1).numpy())
    return np.concatenate(out)


def make_oof(train_dir: Path, out_dir: Path, size: tuple[int, int] = (64, 80), folds: int = 5, seed: int = 0,
             c: float = 0.01, mirror: bool = True) -> list[Path]:
    """One val_preds.csv per fold (docs/formats.md, "Run folder"), each predicted by a model that never saw that fold.

    mirror: also train on mirrored images (twice the feature time, a better model).
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler

    images = load_train(train_dir, report=False)
    both = lite0_features(images["path"].tolist(), size, mirror=mirror)
    half = both.shape[1] // 2 if mirror else both.shape[1]
    plain, mirrored = both[:, :half], both[:, half:]
    tasks = task_labels(images["label"].to_numpy())
    strata = 3 * tasks["gender"] + tasks["age"]
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    files = []
    for fold, (train, held) in enumerate(splitter.split(plain, strata, images["person"])):
        x_train = np.vstack([plain[train], mirrored[train]]) if mirror else plain[train]
        scaler = StandardScaler().fit(x_train)
        pca = PCA(min(256, len(x_train) - 1), svd_solver="randomized", random_state=seed).fit(scaler.transform(x_train))
        a, b = pca.transform(scaler.transform(x_train)), pca.transform(scaler.transform(plain[held]))
        probs = {}
        for task, n in (("mask", 3), ("gender", 2), ("age", 3)):
            y = np.concatenate([tasks[task][train]] * (2 if mirror else 1))
            model = LogisticRegression(C=c, max_iter=2000).fit(a, y)
            probs[task] = np.zeros((len(held), n))
            probs[task][:, model.classes_] = model.predict_proba(b)
        m, g, ag = decode(np.arange(NUM_CLASSES))
        p18 = probs["mask"][:, m] * probs["gender"][:, g] * probs["age"][:, ag]
        p18 /= p18.sum(axis=1, keepdims=True)
        preds = pd.DataFrame(p18, columns=PROB_COLUMNS)
        preds.insert(0, "ans", p18.argmax(axis=1))
        preds.insert(0, "ImageID", images["path"].to_numpy()[held])
        preds["person"] = images["person"].to_numpy()[held]
        preds["label"] = images["label"].to_numpy()[held]
        path = out_dir / f"fold{fold}" / "val_preds.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        preds.to_csv(path, index=False, float_format="%.6g")
        files.append(path)
    return files


def truth_keys(injected: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(column, target key, new value) of each injected error."""
    return {(r.column, image_key(r.target) if r.column == "mask" else str(r.target), r.new)
            for r in injected.itertuples()}


def hit_rate(fixes: pd.DataFrame, injected: pd.DataFrame, columns=("gender", "mask")) -> dict:
    """Recall and precision of the suggested fixes on the injected errors of `columns`."""
    truth = {t for t in truth_keys(injected) if t[0] in columns}
    chosen = fixes[fixes["column"].isin(columns)]
    found = {(r.column, image_key(r.target) if r.column == "mask" else str(r.target), r.new)
             for r in chosen.itertuples()}
    hits = len(found & truth)
    return {"injected": len(truth), "suggested": len(found), "hits": hits,
            "recall": hits / len(truth) if truth else float("nan"),
            "precision": hits / len(found) if found else float("nan")}


def audit(data: Path, oof: list[Path], work: Path,
          min_score: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Run `maskkit audit` as a user would; returns (fixes, suspects, seconds)."""
    fixes, suspects = work / "fixes.csv", work / "suspects.csv"
    command = [sys.executable, "-m", "maskkit", "audit", str(data / "train"), "--fixes-out", str(fixes),
               "-o", str(suspects)]
    command += [] if min_score is None else ["--min-score", str(min_score)]
    for path in oof:
        command += ["--oof", str(path)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return pd.read_csv(fixes, dtype={"target": str}), pd.read_csv(suspects, dtype={"target": str}), seconds


def report(name: str, data: Path, oof: list[Path], work: Path, injected: pd.DataFrame, persons: int) -> dict:
    """Audit at the default cut-off and a few others; print recall and precision; return the default's."""
    print(f"{name}:")
    at_default = {}
    for cut in sorted({0.5, 0.6, MIN_SCORE, 0.7, 0.8}):
        fixes, suspects, seconds = audit(data, oof, work, None if cut == MIN_SCORE else cut)
        both = hit_rate(fixes, injected)
        gender, mask = hit_rate(fixes, injected, ("gender",)), hit_rate(fixes, injected, ("mask",))
        mark = f"  <- default (audit {seconds:.1f}s)" if cut == MIN_SCORE else ""
        print(f"    cut-off {cut:.2f}: recall {both['recall']:.2f} precision {both['precision']:.2f} "
              f"({both['hits']}/{both['injected']} found, {both['suggested']} suggested; gender {gender['hits']}/"
              f"{gender['injected']} of {gender['suggested']}, mask {mask['hits']}/{mask['injected']} of "
              f"{mask['suggested']}){mark}")
        if cut == MIN_SCORE:
            at_default = both
            label_rows = suspects[suspects["column"].isin(["age", "mask"]) & ~suspects["target"].isin(fixes["target"])]
            ages = int((label_rows["column"] == "age").sum())
            print(f"    listed for review only (none injected, so false alarms): {ages} age-group suspects and "
                  f"{len(label_rows) - ages} single-image masks among {persons} persons")
    return at_default


def train_runs(data: Path, work: Path, injected: pd.DataFrame, size: tuple[int, int], persons: int,
               epochs: int) -> None:
    """5-fold `maskkit train` runs (lite0, multi-head), then audit their val_preds."""
    if subprocess.run([sys.executable, "-m", "maskkit", "train", "--help"], capture_output=True).returncode != 0:
        print("  maskkit train: not available (skipped)")
        return
    manifest = work / "manifest.csv"
    subprocess.run([sys.executable, "-m", "maskkit", "split", str(data / "train"), "--folds", "5", "-o", str(manifest)],
                   check=True, stderr=subprocess.DEVNULL)
    runs = []
    start = time.perf_counter()
    for fold in range(5):
        name = f"f{fold}"
        if not (work / "runs" / name / "val_preds.csv").is_file():
            subprocess.run([sys.executable, "-m", "maskkit", "train", str(manifest), "--fold", str(fold),
                            "--backbone", "lite0", "--multi", "--input-size", f"{size[0]}x{size[1]}",
                            "--epochs", str(epochs), "--runs-dir", str(work / "runs"), "--name", name, "--overwrite"],
                           check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        runs.append(work / "runs" / name)
    print(f"  maskkit train: 5 folds in {time.perf_counter() - start:.0f}s")
    report(f"  maskkit train lite0 --multi, {epochs} epochs, 5 folds", data, runs, work, injected, persons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=300)
    parser.add_argument("--size", default="96x128", help="drawn image size WIDTHxHEIGHT")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--train", action="store_true", help="also audit runs of `maskkit train` (slow on a CPU)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of each `maskkit train` run")
    parser.add_argument("--keep", type=Path, help="keep the drawn data and predictions here")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    from maskkit.commands import synth
    from maskkit.options import Size

    base = Path(tempfile.mkdtemp(prefix="audit-bench-")) if args.keep is None else args.keep
    totals = {"injected": 0, "suggested": 0, "hits": 0}
    try:
        for seed in args.seeds:
            work = base / f"seed{seed}"
            data = work / "data"
            if not (data / "train" / "train.csv").is_file():
                synth.run(data, persons=args.persons, eval_persons=0, size=Size.parse(args.size, "--size"), seed=seed,
                          noise=args.noise)
            injected = pd.read_csv(data / "train" / "injected_errors.csv", dtype=str)
            start = time.perf_counter()
            oof = make_oof(data / "train", work / "oof", size=size)
            seconds = time.perf_counter() - start
            print(f"seed {seed}: {args.persons} drawn persons at {args.size}, noise {args.noise}: {len(injected)} "
                  f"injected rows; out-of-fold probabilities in {seconds:.0f}s")
            result = report("  lite0 features + logistic regression, 5 folds", data, oof, work, injected, args.persons)
            for key in totals:
                totals[key] += result[key]
            if args.train:
                train_runs(data, work, injected, size, args.persons, args.epochs)
        print(f"all seeds at the default cut-off {MIN_SCORE}: recall {totals['hits'] / totals['injected']:.2f}, "
              f"precision {totals['hits'] / max(1, totals['suggested']):.2f} "
              f"({totals['hits']}/{totals['injected']} found, {totals['suggested']} suggested)")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
