"""`maskkit tune`: two workers on one SQLite study finish exactly the asked trials, `--best` gives a
recipe `train --config` reproduces bit for bit, and bad search spaces or studies are one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import FAST_RECIPE_FLAGS

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parent.parent
# Tiny trials: the tests' tiny ResNet from scratch on the drawn 48x64 images, one epoch.
TRAIN_FLAGS = ["--backbone", "test_resnet", "--no-pretrained", "--input-size", "40x48", "--batch-size", "16",
               "--aug", "none", "--workers", "0", "--device", "cpu", "--cache", "ram", "--threads", "1",
               "--warmup", "0.5", "--multi", "--age-weight", "0.5", *FAST_RECIPE_FLAGS]
SPACE = """\
lr: {low: 1.0e-3, high: 1.0e-2, log: true}
label_smoothing: [0.0, 0.1]
age_loss: [mse, dldl]
"""


def tune_process(manifest: Path, runs: Path, space: Path, trials: int, epochs: int = 1) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "maskkit", "tune", str(manifest), "--study", "two", "--trials", str(trials),
               "--space", str(space), "--runs-dir", str(runs), *TRAIN_FLAGS, "--epochs", str(epochs)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_workers_finish_the_asked_trials_and_best_reproduces(manifest_path, tmp_path, cli):
    space, runs = tmp_path / "space.yaml", tmp_path / "runs"
    space.write_text(SPACE)
    workers = [tune_process(manifest_path, runs, space, trials=4) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    assert all("trial " in log for log in logs), logs  # both workers trained trials

    study = optuna.load_study(study_name="two", storage=f"sqlite:///{runs / 'tune-two' / 'study.db'}")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # none lost, none twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    folders = sorted(p.name for p in (runs / "tune-two").glob("trial-*"))
    assert folders == ["trial-0000", "trial-0001", "trial-0002", "trial-0003"]

    recipe = tmp_path / "best.yaml"
    result = cli("tune", "--study", "two", "--runs-dir", runs, "--best", "-o", recipe)
    assert result.exit_code == 0, result.output
    for name in ("trials.csv", "history.png", "importance.png"):
        assert (runs / "tune-two" / name).stat().st_size > 0
    trials = pd.read_csv(runs / "tune-two" / "trials.csv")
    assert len(trials) == 4 and set(trials["state"]) == {"COMPLETE"}
    best_run = Path(study.best_trial.user_attrs["runs"][0])

    again = cli("train", manifest_path, "--config", recipe, "--runs-dir", tmp_path / "again", "--name", "again")
    assert again.exit_code == 0, again.output
    best_metrics = pd.read_csv(best_run / "metrics.csv")
    assert best_metrics["val_f1"].max() == pytest.approx(study.best_value, abs=0)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "again" / "metrics.csv").drop(columns="seconds"),
                                  best_metrics.drop(columns="seconds"))
    first = torch.load(best_run / "best.pt", weights_only=True)["model"]
    second = torch.load(tmp_path / "again" / "again" / "best.pt", weights_only=True)["model"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("text, words", [
    ("lr: {low: 0.1}\n", ["lr", "low, high"]),
    ("learning_rate: [0.1]\n", ["learning_rate", "not a train option"]),
    ("opt: [adamw, sgdx]\n", ["opt", "sgdx"]),
    ("lr: {low: 0.0, high: 0.1, log: true}\n", ["lr", "low > 0"]),
    ("device: [cpu]\n", ["device", "fixed"]),
    ("input_size: {low: 1, high: 2}\n", ["input_size", "list the choices"]),
    ("lr: [0.1\n", ["not readable YAML"]),
])
def test_bad_search_space_is_one_line_naming_file_and_key(manifest_path, tmp_path, cli, text, words):
    space = tmp_path / "bad.yaml"
    space.write_text(text)
    result = cli("tune", manifest_path, "--study", "bad", "--space", space, "--runs-dir", tmp_path / "runs",
                 "--backbone", "test_resnet", "--no-pretrained")
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and str(space) in message and all(w in message for w in words), message
    assert not (tmp_path / "runs" / "tune-bad").exists()  # refused before the study is opened


def test_best_without_a_study_and_tune_flags_train_cannot_take_are_refused(manifest_path, tmp_path, cli):
    result = cli("tune", "--study", "none", "--runs-dir", tmp_path, "--best")
    assert result.exit_code == 2 and "no study 'none'" in result.output
    result = cli("tune", manifest_path, "--study", "x", "--runs-dir", tmp_path, "--name", "mine")
    assert result.exit_code == 2 and "--name" in result.output
    result = cli("tune", manifest_path, "--study", "x", "--runs-dir", tmp_path, "--epochz", "3")
    assert result.exit_code != 0 and "--epochz" in result.output


def test_oof_objective_pools_the_folds_and_a_changed_study_is_refused(manifest_path, tmp_path, cli):
    space = tmp_path / "space.yaml"
    space.write_text("lr: [0.005]\n")
    flags = ["--study", "oof", "--objective", "oof", "--folds", "2", "--trials", "1", "--space", space,
             "--runs-dir", tmp_path / "runs", *TRAIN_FLAGS, "--epochs", "1"]
    result = cli("tune", manifest_path, *flags)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "tune-oof"
    assert sorted(p.name for p in folder.glob("trial-*")) == ["trial-0000-f0", "trial-0000-f1"]
    from maskkit.contract.oof import pooled_predictions
    from maskkit.engine.metrics import scores

    pooled, folds = pooled_predictions(sorted(folder.glob("trial-*")))
    study = optuna.load_study(study_name="oof", storage=f"sqlite:///{folder / 'study.db'}")
    assert folds == [0, 1] and study.best_value == pytest.approx(scores(pooled["label"], pooled["ans"])["macro_f1"])
    changed = cli("tune", manifest_path, *flags, "--dropout", "0.3")
    assert changed.exit_code == 2 and "recipe.dropout" in changed.output, changed.output


def test_a_killed_worker_loses_nothing_and_its_run_folder_is_not_reused(manifest_path, tmp_path, monkeypatch):
    """kill -9 during a trial: the heartbeat marks it failed, its parameters run again as a new trial
    with a new run folder, and re-running the command ends with the asked number of trials."""
    import time

    from maskkit.commands import train, tune
    from maskkit.options import TrainOptions

    space, out = tmp_path / "space.yaml", tmp_path / "runs"
    space.write_text(SPACE)
    worker = tune_process(manifest_path, out, space, trials=2, epochs=3)  # long enough to be killed in
    started = out / "tune-two" / "trial-0000" / "last.pt"
    deadline = time.monotonic() + 300
    while not started.exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.kill()  # kill -9 in the first trial's training
    worker.wait()
    metrics = out / "tune-two" / "trial-0000" / "metrics.csv"
    assert started.exists() and (not metrics.exists() or len(pd.read_csv(metrics)) < 3)  # killed mid-trial

    monkeypatch.setattr(tune, "GRACE_S", 1)  # the killed worker's last heartbeat is older than this
    time.sleep(3)  # > GRACE_S + 1: SQLite's clock for the stale check has whole seconds only
    fixed = TrainOptions(backbone="test_resnet", pretrained=False, img_size=(48, 40), batch_size=16, aug="none",
                         workers=0, device="cpu", cache="ram", threads=1, warmup=0.5, heads="multi", age_weight=0.5,
                         epochs=3, opt="adamw", weight_decay=0.01, dropout=0.0, balanced=False, cutmix=0.0,
                         ema=False)  # TRAIN_FLAGS: the same study
    study = tune.run(manifest_path, tune.Study("two", out, trials=2), fixed, space, train=train.run)
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}, states
    assert study.trials[1].params == study.trials[0].params  # the killed trial ran again
    assert sorted(p.name for p in (out / "tune-two").glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]


def test_a_pruned_trial_stops_after_the_epoch_and_keeps_its_run_folder(manifest_path, tmp_path):
    from maskkit.commands import train, tune
    from maskkit.options import TrainOptions

    class PruneAtOnce:  # an Optuna trial whose pruner always says stop
        number, reported = 7, []

        def set_user_attr(self, key, value):
            pass

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return True

    options = TrainOptions(backbone="test_resnet", pretrained=False, img_size=(48, 40), batch_size=16, aug="none",
                           workers=0, device="cpu", cache="ram", threads=1, epochs=3)
    runner = tune.TrialRunner(manifest_path, tune.Study("p", tmp_path), train.run, None)
    trial = PruneAtOnce()
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        runner.fold(trial, options)
    metrics = pd.read_csv(tmp_path / "tune-p" / "trial-0007" / "metrics.csv")
    assert len(metrics) == 1 and trial.reported == [(1, metrics["val_f1"].iloc[0])]
    assert (tmp_path / "tune-p" / "trial-0007" / "best.pt").is_file()


def test_the_shipped_space_covers_the_issue_and_every_draw_is_a_valid_recipe():
    from maskkit.commands.tune import trial_options
    from maskkit.contract.searchspace import DEFAULT_SPACE, read_search_space, suggest
    from maskkit.options import TrainOptions

    space = read_search_space(DEFAULT_SPACE, TrainOptions())
    assert {"opt", "sched", "lr", "label_smoothing", "age_weight", "age_loss", "old_age", "aug", "cutmix", "crop",
            "input_size", "epochs", "dropout", "weight_decay", "ema", "balanced", "focal", "backbone"} <= set(space)
    assert space["lr"].log and space["backbone"].choices == ("lite0", "lite1", "lite2")
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    for _ in range(20):
        options = trial_options(TrainOptions(), suggest(study.ask(), space))
        options.check()
        assert options.img_size in {(128, 128), (160, 160), (192, 192)} and 3 <= options.epochs <= 8


@pytest.mark.parametrize("warmup, first", [(1.0, 2), (0.0, 1), (2.5, 4)])
def test_a_fold_trial_is_first_judged_after_its_lr_warmup(warmup, first):
    """--pruner median: an epoch inside the LR warmup (where every recipe scores low) never prunes a
    trial; the first epoch past it does. With --objective oof the first fold may prune."""
    from maskkit.commands.tune import make_pruner
    from maskkit.options import TrainOptions

    def study_with_four_good_trials(pruner):
        study = optuna.create_study(direction="maximize", pruner=pruner)
        for _ in range(4):
            trial = study.ask()
            for step in range(1, 6):
                trial.report(0.6, step)
            study.tell(trial, 0.6)
        return study

    fixed = TrainOptions(warmup=warmup, epochs=5)
    trial = study_with_four_good_trials(make_pruner("median", fixed, {})).ask()
    for step in range(1, first):
        trial.report(0.1, step)
        assert not trial.should_prune(), step
    trial.report(0.1, first)
    assert trial.should_prune()
    oof = study_with_four_good_trials(make_pruner("median", fixed, {}, folds=(0, 1, 2))).ask()
    oof.report(0.1, 1)
    assert oof.should_prune()
