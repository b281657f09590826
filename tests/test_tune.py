"""`maskkit tune`: two workers on one study (SQLite, and a real PostgreSQL server) finish exactly the
asked trials with the train flags fixed, `--best` gives a recipe `train --config` reproduces bit for
bit, Ctrl-C and kill -9 lose only the running trial, and bad search spaces or studies are one-line
errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from helpers import tiny, train_flags

optuna = pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parent.parent
STORAGES = ["sqlite", "postgresql"]
# Tiny trials: the tests' tiny ResNet from scratch on the drawn 48x64 images, one epoch.
SEARCHED = ("lr", "label_smoothing", "age_loss")  # SPACE's keys: left free
TRAIN_FLAGS = train_flags({k: v for k, v in tiny(heads="multi", age_weight=0.5).items() if k not in SEARCHED})
# What TRAIN_FLAGS and --epochs 1 fix, as config.json's options record it.
FIXED = dict(backbone="test_resnet", pretrained=False, img_size=[48, 40], batch_size=16, aug="none", warmup=0.5,
             heads="multi", age_weight=0.5, opt="adamw", weight_decay=0.01, dropout=0.0, balanced=False, cutmix=0.0,
             ema=False, epochs=1)
SPACE = """\
lr: {low: 1.0e-3, high: 1.0e-2, log: true}
label_smoothing: [0.0, 0.1]
age_loss: [mse, dldl]
"""


def storage_url(kind: str, request) -> str | None:
    """None (the study folder's SQLite file) or a fresh database on the session's PostgreSQL server."""
    return request.getfixturevalue("postgres_url") if kind == "postgresql" else None


def tune_args(manifest: Path, runs: Path, trials: int, epochs: int = 1, space: Path | None = None,
              storage: str | None = None, study: str = "two") -> list[str]:
    return ["tune", str(manifest), "--study", study, "--trials", str(trials), "--runs-dir", str(runs),
            *(["--space", str(space)] if space else []), *(["--storage", storage] if storage else []),
            *TRAIN_FLAGS, "--epochs", str(epochs)]


def tune_process(*args, **kwargs) -> subprocess.Popen:
    """`maskkit tune` (tune_args) in a process of its own, stdout and stderr together."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "maskkit", *tune_args(*args, **kwargs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def load_study(runs: Path, storage: str | None, name: str = "two") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{runs / f'tune-{name}' / 'study.db'}")


def storage_flags(storage: str | None) -> list[str]:
    return ["--storage", storage] if storage else []


@pytest.mark.parametrize("kind", STORAGES)
def test_two_workers_finish_the_asked_trials_with_the_fixed_flags_and_best_reproduces(kind, request, manifest_path,
                                                                                       tmp_path, cli):
    """Two workers on the shipped search space, which frees backbone, input size and epochs among others:
    the flags fix them in every trial (config.json's options and command agree), each worker prints a
    "trial k of N" line per trial and no train "next:" hint, and --best writes a recipe without machine
    settings that `train --config` retrains bit for bit."""
    storage, runs = storage_url(kind, request), tmp_path / "runs"
    workers = [tune_process(manifest_path, runs, trials=4, storage=storage) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    for log in logs:
        fixed_lines = [line for line in log.splitlines() if line.startswith("fixed by the command line:")]
        assert len(fixed_lines) == 1 and all(f" {k}" in fixed_lines[0] for k in ("backbone", "input_size", "epochs"))
        assert "trial #" in log and "next: maskkit predict" not in log, logs  # both workers trained trials
    progress = [line for log in logs for line in log.splitlines() if re.match(r"trial [1-4] of 4 \(#\d+\): ", line)]
    assert len(progress) == 4 and all(re.search(r"fold macro F1 0\.\d{4}; \S+ elapsed", line) for line in progress), logs
    assert any(re.search(r"about \S+ left$", line) for line in progress), progress
    if storage:  # its password is never printed
        password = storage.split(":")[2].split("@")[0]
        assert all(password not in log for log in logs) and any("maskkit:***@" in log for log in logs)

    # None lost, none twice: 4 complete trials. A trial the drawn recipe broke (the shipped space is
    # unseeded) is failed, said so in its worker's log, and replaced, never counted.
    study = load_study(runs, storage)
    states = [(t.number, t.state.name, t.datetime_start, t.datetime_complete) for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(complete) == 4 and len(complete) + len(failed) == len(study.trials), (states, logs)
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials))), states
    assert all(f"trial #{t.number} failed" in "\n".join(logs) for t in failed), (states, logs)
    folders = sorted((runs / "tune-two").glob("trial-*"))
    assert {f"trial-{t.number:04d}" for t in complete} <= {f.name for f in folders} <= {
        f"trial-{t.number:04d}" for t in study.trials}
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        assert {k: config["options"][k] for k in FIXED} == FIXED, folder
        command = config["command"]
        assert command[command.index("--epochs") + 1] == "1" and command[command.index("--backbone") + 1] == "test_resnet"
    searched = set(study.trials[0].params)
    assert searched and not searched & {*FIXED, "input_size"}, searched

    recipe = tmp_path / "best.yaml"
    result = cli("tune", "--study", "two", "--runs-dir", runs, *storage_flags(storage), "--best", "-o", recipe)
    assert result.exit_code == 0, result.output
    for name in ("trials.csv", "history.png", "importance.png"):
        assert (runs / "tune-two" / name).stat().st_size > 0
    trials = pd.read_csv(runs / "tune-two" / "trials.csv")
    assert len(trials) == len(study.trials) and (trials["state"] == "COMPLETE").sum() == 4
    written = yaml.safe_load(recipe.read_text())
    assert not {"device", "threads", "workers", "cache", "logger", "wandb", "fold"} & set(written), written
    assert all(float(f"{v:.4g}") == v for k, v in written.items() if isinstance(v, float) and k in searched), written
    best_run = Path(study.best_trial.user_attrs["runs"][0])

    again = cli("train", manifest_path, "--config", recipe, "--device", "cpu", "--threads", "1", "--workers", "0",
                "--runs-dir", tmp_path / "again", "--name", "again")
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


def fixed_options():
    """TRAIN_FLAGS (less --epochs) as TrainOptions: the same study as tune_process's, in process."""
    from maskkit.options import TrainOptions

    return TrainOptions(backbone="test_resnet", pretrained=False, img_size=(48, 40), batch_size=16, aug="none",
                        workers=0, device="cpu", cache="ram", threads=1, warmup=0.5, heads="multi", age_weight=0.5,
                        opt="adamw", weight_decay=0.01, dropout=0.0, balanced=False, cutmix=0.0, ema=False)


def wait_for(path: Path, worker: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path.exists() and worker.poll() is None, "the trial did not start, or the worker ended first"


@pytest.mark.parametrize("kind", STORAGES)
def test_a_killed_worker_loses_nothing_and_its_run_folder_is_not_reused(kind, request, manifest_path, tmp_path,
                                                                         monkeypatch, cli):
    """kill -9 during a trial: the heartbeat marks it failed, its parameters run again as a new trial
    with a new run folder, re-running the command ends with the asked number of trials, and --best
    reads the study."""
    import dataclasses

    from maskkit.commands import train, tune

    storage, space, out = storage_url(kind, request), tmp_path / "space.yaml", tmp_path / "runs"
    space.write_text(SPACE)
    worker = tune_process(manifest_path, out, trials=2, epochs=3, space=space, storage=storage)  # long enough
    wait_for(out / "tune-two" / "trial-0000" / "last.pt", worker)
    worker.kill()  # kill -9 in the first trial's training
    worker.wait()
    metrics = out / "tune-two" / "trial-0000" / "metrics.csv"
    assert not metrics.exists() or len(pd.read_csv(metrics)) < 3  # killed mid-trial

    monkeypatch.setattr(tune, "GRACE_S", 1)  # the killed worker's last heartbeat is older than this
    time.sleep(3)  # > GRACE_S + 1: SQLite's clock for the stale check has whole seconds only
    fixed = dataclasses.replace(fixed_options(), epochs=3)
    study = tune.run(manifest_path, tune.Study("two", out, storage=storage, trials=2), fixed, space, train=train.run)
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}, states
    assert study.trials[1].params == study.trials[0].params  # the killed trial ran again
    assert sorted(p.name for p in (out / "tune-two").glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]
    best = cli("tune", "--study", "two", "--runs-dir", out, *storage_flags(storage), "--best")
    assert best.exit_code == 0 and f"best trial {study.best_trial.number}:" in best.output, best.output


def test_ctrl_c_is_one_line_saying_how_to_continue_and_the_same_command_does(manifest_path, tmp_path):
    """SIGINT mid-trial: exit 130 and one line (no Optuna warning, no traceback, no train --resume hint,
    which would not feed the study); the same command again finishes the study."""
    space, out = tmp_path / "space.yaml", tmp_path / "runs"
    space.write_text(SPACE)
    worker = tune_process(manifest_path, out, trials=1, epochs=2, space=space)
    wait_for(out / "tune-two" / "trial-0000" / "last.pt", worker)
    worker.send_signal(signal.SIGINT)
    log = worker.communicate(timeout=120)[0]
    assert worker.returncode == 130, log
    assert "Traceback" not in log and "--resume" not in log and "failed with" not in log, log
    lines = log.strip().splitlines()
    assert [line for line in lines if "interrupted" in line] == lines[-1:], log
    assert "study 'two'" in lines[-1] and "run the same command again" in lines[-1], lines[-1]

    again = tune_process(manifest_path, out, trials=1, epochs=2, space=space)
    log = again.communicate(timeout=300)[0]
    assert again.returncode == 0, log
    assert {t.number: t.state.name for t in load_study(out, None).trials} == {0: "FAIL", 1: "COMPLETE"}


@pytest.mark.parametrize("kind", STORAGES)
def test_a_study_another_program_or_objective_made_is_refused_in_one_line(kind, request, manifest_path, tmp_path, cli):
    """A study of the same name that minimizes (not maskkit's), or that maskkit started with another
    objective, is refused before any trial: one line, exit 2, no password printed."""
    from maskkit.commands import tune
    from maskkit.contract.searchspace import read_search_space

    storage, runs, space = storage_url(kind, request), tmp_path / "runs", tmp_path / "space.yaml"
    space.write_text(SPACE)

    def url(name: str) -> str:
        (runs / f"tune-{name}").mkdir(parents=True, exist_ok=True)
        return storage or f"sqlite:///{runs / f'tune-{name}' / 'study.db'}"

    optuna.create_study(study_name="foreign", storage=url("foreign"), direction="minimize")
    other = optuna.create_study(study_name="oof", storage=url("oof"), direction="maximize")
    fixed = fixed_options()
    started = tune.Study("oof", runs, storage, objective="oof", folds=2)
    other.set_user_attr("identity", tune.identity(fixed, read_search_space(space, fixed), started))
    for name, words in (("foreign", "not made by maskkit tune"), ("oof", "objective")):
        result = cli(*tune_args(manifest_path, runs, trials=1, space=space, storage=storage, study=name))
        assert result.exit_code == 2, result.output
        message = result.output.strip()
        assert "\n" not in message and words in message, message
        assert storage is None or storage.split(":")[2].split("@")[0] not in message
        assert not list((runs / f"tune-{name}").glob("trial-*"))


def test_an_unreachable_or_refusing_server_is_one_line_without_the_password(request, manifest_path, tmp_path, cli):
    url = request.getfixturevalue("postgres_url")
    wrong = url.replace(":pg-s3cret@", ":not-the-pw-42@")
    result = cli(*tune_args(manifest_path, tmp_path, trials=1, storage=wrong))
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and "not-the-pw-42" not in message and "maskkit:***@" in message, message


@pytest.mark.parametrize("ci, outcome", [("true", "fail"), ("", "skip")])
def test_postgres_tests_skip_without_a_server_only_outside_ci(monkeypatch, ci, outcome):
    from conftest import postgres_missing

    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match="no PostgreSQL"):
        postgres_missing("no PostgreSQL server binaries")


def test_an_option_fixed_everywhere_leaves_nothing_to_search_and_is_refused(manifest_path, tmp_path, cli):
    space = tmp_path / "space.yaml"
    space.write_text("lr: [0.005, 0.001]\n")
    result = cli("tune", manifest_path, "--study", "x", "--space", space, "--runs-dir", tmp_path, "--lr", "0.003")
    assert result.exit_code == 2 and "nothing left to search" in result.output and "lr" in result.output, result.output
    assert not (tmp_path / "tune-x").exists()


def test_tune_help_example_fixes_options_the_shipped_space_frees(cli, monkeypatch, manifest_path):
    """The example in `tune --help`, run as written (its manifest ours), fixes backbone, size and epochs."""
    from maskkit.commands import tune
    from maskkit.contract.searchspace import DEFAULT_SPACE, field_of

    from maskkit.cli import tune as tune_command  # its docstring is what --help prints (rich wraps it)

    example = re.search(r"Example: maskkit (tune [^\n]+)", tune_command.__doc__).group(1).split()
    seen = {}
    monkeypatch.setattr(tune, "run", lambda *args, **kwargs: seen.update(kwargs))
    result = cli(*[str(manifest_path) if word == "folds.csv" else word for word in example])
    assert result.exit_code == 0, result.output
    shipped = {field_of(k) for k in yaml.safe_load(DEFAULT_SPACE.read_text())}
    assert {"backbone", "img_size", "epochs"} <= seen["fixed_fields"] & shipped, seen


def test_a_drawn_float_is_rounded_to_four_significant_digits_within_its_range():
    from maskkit.contract.searchspace import Dimension, suggest

    space = {"lr": Dimension("lr", "float", low=1e-4, high=1e-2, log=True),
             "dropout": Dimension("dropout", "float", low=0.123456, high=0.5)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(50):
        values = suggest(study.ask(), space)
        assert all(float(f"{v:.4g}") == v for v in values.values()), values
        assert 1e-4 <= values["lr"] <= 1e-2 and 0.123456 <= values["dropout"] <= 0.5


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


# --- a hostile shared server (issue 31): every row is exit 2, one line, no traceback, no file changed ----

PNG = b"\x89PNG\r\n\x1a\n"
SPACE_VALUES = {"lr": 0.005, "label_smoothing": 0.0, "age_loss": "mse"}  # a trial of SPACE


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused(result, *words: str) -> str:
    """Exit 2, one line on stderr holding `words`, nothing on stdout, no traceback."""
    message = (result.stderr or "").strip()
    assert result.exit_code == 2, (result.exception, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "\n" not in message and "Traceback" not in result.output and result.stdout == "", result.output
    assert all(word in message for word in words), (words, message)
    return message


def add_trial(folder: Path, value: float, user_attrs: dict, name: str = "s") -> None:
    """A complete trial of SPACE, put into the study by Optuna directly (what a stranger can do)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")
    study.add_trial(optuna.trial.create_trial(
        params=SPACE_VALUES, value=value, user_attrs=user_attrs,
        distributions={"lr": FloatDistribution(1e-3, 1e-2, log=True), "label_smoothing": CategoricalDistribution([0.0, 0.1]),
                       "age_loss": CategoricalDistribution(["mse", "dldl"])}))


@pytest.fixture
def world(tmp_path, manifest_path, monkeypatch) -> Path:
    """The working folder: study 's' in runs/tune-s/ with one complete trial (no training: its recipe is
    the one tune records), and what a stranger aims at: the manifest, a prediction CSV, the trial's
    config.json, the study's trials.csv, history.png and .tune.lock, a stranger's SQLite file, a file."""
    import dataclasses
    import shutil
    import sqlite3

    from maskkit.commands import tune
    from maskkit.contract.searchspace import read_search_space

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE)
    shutil.copyfile(manifest_path, tmp_path / "manifest.csv")
    (tmp_path / "preds.csv").write_text("ImageID,ans\na.jpg,0\n")
    (tmp_path / "victim.txt").write_text("a stranger's file\n")
    with contextlib.closing(sqlite3.connect(tmp_path / "stranger.db")) as db:
        db.execute("CREATE TABLE secrets (x TEXT)")
        db.execute("INSERT INTO secrets VALUES ('s3cret')")
        db.commit()
    folder = tmp_path / "runs" / "tune-s"
    (folder / "trial-0000").mkdir(parents=True)
    fixed = dataclasses.replace(fixed_options(), epochs=1)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    study.set_user_attr("identity", json.loads(json.dumps(
        tune.identity(fixed, read_search_space(tmp_path / "space.yaml", fixed), tune.Study("s", tmp_path / "runs")))))
    recipe = json.loads(json.dumps(tune.trial_options(fixed, SPACE_VALUES).to_dict()))
    add_trial(folder, 0.5, {"recipe": recipe, "runs": [str(folder / "trial-0000")]})
    (folder / "trial-0000" / "config.json").write_text(json.dumps({"format": 2, "options": recipe}))
    (folder / "trials.csv").write_text("number,state\n0,COMPLETE\n")
    (folder / "history.png").write_bytes(PNG + b"history")
    (folder / ".tune.lock").write_bytes(b"")
    return tmp_path


def tune_here(study: str = "x", *extra: str) -> list[str]:
    """A one-trial study of SPACE on the world's manifest (refused before any training in every row)."""
    return ["tune", "manifest.csv", "--study", study, "--trials", "1", "--runs-dir", "runs", "--space", "space.yaml",
            *TRAIN_FLAGS, "--epochs", "1", *extra]


BEST = ["tune", "--study", "s", "--runs-dir", "runs", "--best"]
# tune --best -o aimed at the study's own files and at inputs of other kinds (issue 31 item 1).
BEST_OUT = [
    ("runs/tune-s/study.db", "study.db"),
    ("runs/tune-s/.tune.lock", ".tune.lock"),
    ("runs/tune-s/trials.csv", "trials.csv"),
    ("runs/tune-s/history.png", "history.png"),
    ("runs/tune-s/importance.png", "importance.png"),  # not there yet: --best writes it
    ("runs/tune-s/trial-0000/config.json", "input folder"),
    ("manifest.csv", "not a recipe"),
    ("preds.csv", "not a recipe"),
    ("victim.txt", "not a recipe"),
    ("space.yaml", "not a recipe"),  # a YAML mapping of train options, but a search space
    ("link.yaml", "study.db"),  # a link to the database
]


@pytest.mark.parametrize("target, words", BEST_OUT, ids=[row[0] for row in BEST_OUT])
def test_best_out_never_replaces_a_study_file_or_another_kind(world, cli, target, words):
    (world / "link.yaml").symlink_to(world / "runs" / "tune-s" / "study.db")
    before = tree_hashes(world)
    refused(cli(*BEST, "-o", target), target, words)
    assert tree_hashes(world) == before


def test_best_out_replaces_its_own_recipe_and_train_reads_it(world, cli):
    """The kind --best -o replaces: a recipe (a YAML mapping of train options), e.g. its own last output."""
    (world / "best.yaml").write_text("lr: 0.1\nbackbone: resnet18\n")  # a recipe written by hand
    for _ in range(2):
        result = cli(*BEST, "-o", "best.yaml")
        assert result.exit_code == 0, result.output
        assert yaml.safe_load((world / "best.yaml").read_text())["lr"] == SPACE_VALUES["lr"]
    assert (world / "runs" / "tune-s" / "trials.csv").read_text().startswith("number,state,value")


# A stranger's trial, better than the study's own, in its study.db (items 8 and 14): --best checks it first.
CRAFTED = [
    ("weights", lambda r: {"recipe": {**r, "weights": "/etc/shadow"}}, "weights"),
    ("runs_dir", lambda r: {"recipe": {**r, "runs_dir": "/tmp/elsewhere"}}, "runs_dir"),
    ("name", lambda r: {"recipe": {**r, "name": "../../evil"}}, "name"),
    ("epochs", lambda r: {"recipe": {**r, "epochs": 99999}}, "epochs"),
    ("lr-outside-space", lambda r: {"recipe": {**r, "lr": 5.0}}, "lr"),
    ("no-recipe", lambda r: {"runs": ["x"]}, "no recipe"),
    ("recipe-not-a-mapping", lambda r: {"recipe": ["lr", 5.0]}, "no recipe"),
    ("wrong-type", lambda r: {"recipe": {**r, "dropout": "x"}}, "dropout"),
    ("unknown-option", lambda r: {"recipe": {**r, "evil": 1}}, "evil"),
    ("img_size", lambda r: {"recipe": {**r, "img_size": "abc"}}, "img_size"),
    ("runs-not-paths", lambda r: {"recipe": {**r, "lr": 5.0}, "runs": 7}, "lr"),
]


@pytest.mark.parametrize("attrs, words", [row[1:] for row in CRAFTED], ids=[row[0] for row in CRAFTED])
def test_best_checks_the_best_trials_recipe_before_printing_or_writing(world, cli, attrs, words):
    folder = world / "runs" / "tune-s"
    recipe = optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}").trials[0].user_attrs["recipe"]
    add_trial(folder, 0.9, attrs(recipe))
    before = tree_hashes(world)
    refused(cli(*BEST), "study 's'", "trial 1", words)
    assert tree_hashes(world) == before  # trials.csv and history.png not rewritten


@pytest.mark.parametrize("identity, words", [
    ({"recipe": [1], "space": {}}, "identity"),
    ({"recipe": {}, "space": {"lr": {"kind": "weird"}}}, "identity"),
], ids=["recipe-not-a-mapping", "space-not-dimensions"])
def test_a_study_whose_identity_was_rewritten_is_refused_by_best(world, cli, identity, words):
    folder = world / "runs" / "tune-s"
    optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}").set_user_attr("identity", identity)
    before = tree_hashes(world)
    refused(cli(*BEST), "study 's'", words)
    assert tree_hashes(world) == before


def plant(kind: str):
    """A setup of the study folder runs/tune-x/ (items 3, 4): links and foreign databases."""
    def setup(world: Path) -> None:
        import shutil

        folder = world / "runs" / "tune-x"
        folder.mkdir(parents=True)
        if kind == "db-symlink":
            (folder / "study.db").symlink_to(world / "stranger.db")
        elif kind == "db-hardlink":
            os.link(world / "stranger.db", folder / "study.db")
        elif kind == "db-foreign":
            shutil.copyfile(world / "stranger.db", folder / "study.db")
        elif kind == "db-other-study":
            optuna.create_study(study_name="other", storage=f"sqlite:///{folder / 'study.db'}")
        elif kind == "db-junk":
            (folder / "study.db").write_bytes(b"not a database at all\n" * 10)
        elif kind == "lock-symlink":
            (folder / ".tune.lock").symlink_to(world / "made-by-the-lock")
        elif kind == "lock-hardlink":
            os.link(world / "victim.txt", folder / ".tune.lock")
    return setup


def write_manifest_text(name: str, data: bytes):
    def setup(world: Path) -> None:
        (world / name).write_bytes(data)
    return setup


# tune (a worker, or --best) refused before the study is opened or any trial trains (items 3, 4, 14).
PLANTED = [
    ("db-symlink", plant("db-symlink"), tune_here(), ["study.db", "symbolic link"]),
    ("db-symlink-best", plant("db-symlink"), ["tune", "--study", "x", "--runs-dir", "runs", "--best"],
     ["study.db", "symbolic link"]),
    ("db-hardlink", plant("db-hardlink"), tune_here(), ["study.db", "hard link"]),
    ("db-foreign-sqlite", plant("db-foreign"), tune_here(), ["study.db", "another program"]),
    ("db-foreign-sqlite-best", plant("db-foreign"), ["tune", "--study", "x", "--runs-dir", "runs", "--best"],
     ["study.db", "another program"]),
    ("db-other-optuna-study", plant("db-other-study"), tune_here(), ["study.db", "other studies", "other"]),
    ("db-not-sqlite", plant("db-junk"), tune_here(), ["study.db", "not an SQLite"]),
    ("lock-symlink", plant("lock-symlink"), tune_here(), [".tune.lock", "symbolic link"]),
    ("lock-hardlink", plant("lock-hardlink"), tune_here(), [".tune.lock", "hard link"]),
    ("study-climbs", None, tune_here("x/../../out/esc"), ["--study", "one folder name"]),
    ("study-absolute", None, tune_here("/tmp/maskkit-esc"), ["--study", "one folder name"]),
    ("storage-in-memory", None, tune_here("m", "--storage", "sqlite:///:memory:"), ["--storage", "in-memory"]),
    ("storage-sqlite-empty", None, tune_here("m", "--storage", "sqlite://"), ["--storage", "in-memory"]),
    ("manifest-empty", write_manifest_text("manifest.csv", b""), tune_here("m"), ["manifest.csv"]),
    ("manifest-header-only", write_manifest_text("manifest.csv", b"path,person,gender,age,mask,label,fold\n"),
     tune_here("m"), ["manifest.csv", "no rows"]),
    ("manifest-binary", write_manifest_text("manifest.csv", bytes(range(256)) * 8), tune_here("m"), ["manifest.csv"]),
    ("manifest-junk", write_manifest_text("manifest.csv", b"hello world\nfoo\n"), tune_here("m"),
     ["manifest.csv", "missing column"]),
]


@pytest.mark.parametrize("setup, argv, words", [row[1:] for row in PLANTED], ids=[row[0] for row in PLANTED])
def test_a_planted_study_folder_or_bad_manifest_is_refused_before_any_trial(world, cli, setup, argv, words):
    if setup is not None:
        setup(world)
    before = tree_hashes(world)
    refused(cli(*argv), *words)
    after = tree_hashes(world)
    assert {p: after.get(p) for p in before} == before  # the stranger's files (and the manifest) untouched
    assert set(after) - set(before) <= {"runs/tune-x/.tune.lock"}, set(after) - set(before)  # no study.db made
    assert not (world / "out").exists() and not Path("/tmp/maskkit-esc").exists()
    assert not (world / "made-by-the-lock").exists()
    assert not [p for p in world.glob("runs/tune-[xm]*/trial-*")]  # nothing trained


def test_an_enqueued_trial_outside_the_space_is_refused_before_training(world, cli, monkeypatch):
    """A stranger enqueues lr 9.5 into a study whose space is lr 0.001..0.01: the worker takes it, marks it
    failed without training, and stops with one line naming the trial (exit 2, no Optuna traceback)."""
    from maskkit.commands import tune
    from maskkit.contract.searchspace import field_of, read_search_space

    seen = {}
    with monkeypatch.context() as patch:  # the study's settings as the command line gives them
        patch.setattr(tune, "run", lambda *args, **kwargs: seen.update(args=args, **kwargs))
        assert cli(*tune_here("q")).exit_code == 0
    _, settings, fixed, space_path = seen["args"]
    space = {k: d for k, d in read_search_space(space_path, fixed).items() if field_of(k) not in seen["fixed_fields"]}
    folder = world / "runs" / "tune-q"
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="q", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    study.set_user_attr("identity", json.loads(json.dumps(tune.identity(fixed, space, settings))))
    study.enqueue_trial({"lr": 9.5, "label_smoothing": 0.0, "age_loss": "mse"})
    worker = tune_process(world / "manifest.csv", world / "runs", trials=1, space=world / "space.yaml", study="q")
    log = worker.communicate(timeout=300)[0]  # a process of its own: Optuna's logger would print there
    lines = log.strip().splitlines()
    assert worker.returncode == 2 and len(lines) == 1 and "Traceback" not in log, log
    assert all(word in lines[0] for word in ("study 'q'", "trial #0", "lr=9.5", "0.001..0.01")), lines
    assert [t.state.name for t in load_study(world / "runs", None, "q").trials] == ["FAIL"]
    assert not list(folder.glob("trial-*"))


# Search-space values of the wrong type for their option (item 9): refused when the space is read.
SPACE_TYPES = [
    ("epochs", "epochs: [1.5]\n"),
    ("ema", "ema: [1, 0]\n"),
    ("ema", "ema: {low: 0, high: 1}\n"),
    ("pretrained", "pretrained: ['no']\n"),
    ("batch_size", "batch_size: {low: 8.0, high: 32}\n"),
    ("batch_size", "batch_size: {low: 8, high: 32, step: 0.5}\n"),
    ("old_age", "old_age: [60.5]\n"),
]
FREE_FLAGS = {"--backbone": "test_resnet", "--input-size": "40x48", "--epochs": "1", "--batch-size": "16",
              "--workers": "0", "--device": "cpu", "--cache": "ram", "--threads": "1", "--aug": "none"}


@pytest.mark.parametrize("key, text", SPACE_TYPES, ids=[row[1].strip() for row in SPACE_TYPES])
def test_a_space_value_of_the_wrong_type_is_one_line_naming_file_and_key(world, cli, key, text):
    (world / "typed.yaml").write_text(text)
    flags = [part for flag, value in FREE_FLAGS.items() if flag != f"--{key.replace('_', '-')}" for part in (flag, value)]
    flags += [] if key == "pretrained" else ["--no-pretrained"]
    before = tree_hashes(world)
    refused(cli("tune", "manifest.csv", "--study", "t", "--trials", "1", "--space", "typed.yaml", "--runs-dir", "runs",
                *flags), "typed.yaml", key)
    assert tree_hashes(world) == before and not (world / "runs" / "tune-t").exists()


# --- slow marks (appended: the tests above stay as they are) ---

for _slow in (test_two_workers_finish_the_asked_trials_with_the_fixed_flags_and_best_reproduces,
              test_a_killed_worker_loses_nothing_and_its_run_folder_is_not_reused,
              test_ctrl_c_is_one_line_saying_how_to_continue_and_the_same_command_does,
              test_oof_objective_pools_the_folds_and_a_changed_study_is_refused,
              test_an_enqueued_trial_outside_the_space_is_refused_before_training,
              test_a_pruned_trial_stops_after_the_epoch_and_keeps_its_run_folder,
              test_a_study_another_program_or_objective_made_is_refused_in_one_line):
    pytest.mark.slow(_slow)  # over ~4 s (-m "not slow" skips them)
