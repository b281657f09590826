"""Experiment tracking of `maskkit train` (--logger, steps.csv, RUN/tb/, the heartbeat, curves.png)
and recipes that carry the recipe only (no machine settings from a run's config.json)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pandas as pd
import pytest
import yaml

from helpers import FAST, one_thread, train_flags
from maskkit.contract.recipe import run_place, train_options
from maskkit.contract.progress import ProgressBar, RunClock

TINY = train_flags(FAST)


@pytest.fixture(scope="module")
def tracked(manifest_path, tmp_path_factory, runner):
    """Two runs trained through the command line, stderr not a terminal: one validated fold logged to
    tensorboard, one --fold all (the csv logger)."""
    from maskkit.cli import app

    root = tmp_path_factory.mktemp("tracked")
    results = {}
    with one_thread():
        for name, extra in (("tb", ("--logger", "tensorboard", "--epochs", "3")), ("all", ("--fold", "all", "--epochs", "2"))):
            args = ["train", str(manifest_path), *TINY, *extra, "--runs-dir", str(root), "--name", name]
            results[name] = runner.invoke(app, args)
            assert results[name].exit_code == 0, results[name].stderr
    return root, results


@pytest.mark.slow
def test_tensorboard_and_steps_csv_hold_each_step_and_epoch(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = tracked
    run = root / "tb"
    steps = pd.read_csv(run / "steps.csv")
    assert list(steps.columns) == ["step", "epoch", "loss", "lr", "img_s"]
    assert steps["step"].is_monotonic_increasing and steps["epoch"].tolist()[-1] == 3
    assert steps["loss"].iloc[-5:].mean() < steps["loss"].iloc[:5].mean()  # the logged loss fell: it learned
    events = EventAccumulator(str(run / "tb")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/img_s", "epoch/val_f1", "epoch/train_loss", "epoch/lr"} <= scalars
    assert len(events.Scalars("train/loss")) == len(steps)
    val_f1 = [e.value for e in events.Scalars("epoch/val_f1")]
    assert val_f1 == pytest.approx(pd.read_csv(run / "metrics.csv")["val_f1"].tolist(), abs=1e-6)


@pytest.mark.slow
def test_heartbeat_lines_give_the_whole_runs_eta_when_stderr_is_a_log(tracked):
    _, results = tracked
    beats = [line for line in results["tb"].stderr.splitlines() if "ETA" in line]
    assert beats and all(line.startswith("  epoch ") and " steps (" in line for line in beats)  # under the epoch lines
    last = beats[-1]
    done, total = last.split("run ")[1].split(" steps")[0].split("/")
    assert done == total  # the last step of the last epoch


@pytest.mark.slow
def test_fold_all_marks_no_best_and_draws_no_validation_panel(tracked):
    root, results = tracked
    epoch_lines = [line for line in results["all"].stderr.splitlines() if line.startswith("epoch ") and "img/s" in line
                   and "ETA" not in line]
    assert len(epoch_lines) == 2 and not any("*best" in line for line in epoch_lines)
    assert any("*best" in line for line in results["tb"].stderr.splitlines())
    validated, full = (cv2.imread(str(root / name / "curves.png")) for name in ("tb", "all"))
    assert full.shape[1] < 0.7 * validated.shape[1]  # one panel (loss and lr), not two
    assert not (root / "all" / "tb").exists() and (root / "all" / "steps.csv").is_file()


def test_progress_heartbeat_every_n_steps(capsys):
    clock = RunClock(first_step=0, total_steps=40)
    with ProgressBar("epoch 1/2", 20, show=None, every_steps=5, clock=clock) as bar:
        assert bar.mode == "plain"  # pytest's stderr is no terminal
        for _ in range(20):
            bar.advance(1)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  epoch 1/2")]
    assert len(lines) == 4 and lines[-1].startswith("  epoch 1/2: 20/20 (100%") and "run 20/40 steps (50%), ETA" in lines[-1]


def test_a_runs_config_json_passes_on_no_machine_settings(multi_run):
    saved = json.loads((multi_run / "config.json").read_text())["options"]
    assert (saved["device"], saved["workers"], saved["threads"], saved["cache"]) == ("cpu", 0, 1, "ram")
    options, _ = train_options({"fold": "1"}, ["fold"], multi_run / "config.json")
    assert (options.device, options.workers, options.threads, options.cache, options.logger) == \
        ("auto", None, None, "auto", "csv")
    assert options.fold == 1 and options.heads == "multi" and options.lr == saved["lr"]  # the recipe itself


def test_a_hand_written_recipe_may_set_machine_settings_and_the_runs_place(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"backbone": "test_resnet", "device": "cpu", "workers": 2,
                                      "name": "mine", "runs_dir": str(tmp_path / "elsewhere")}))
    options, _ = train_options({}, [], recipe)
    assert (options.device, options.workers) == ("cpu", 2)
    notes = [line for line in capsys.readouterr().err.splitlines() if str(recipe) in line]
    assert len(notes) == 1 and "device, workers, name, runs_dir" in notes[0]
    flags = {"runs_dir": "runs", "name": None}
    assert run_place(flags, [], recipe) == (tmp_path / "elsewhere", "mine")
    assert run_place({"runs_dir": "here", "name": "typed"}, ["runs_dir", "name"], recipe) == (Path("here"), "typed")


def test_wandb_project_alone_means_the_wandb_logger_and_names_no_other(manifest_path, cli):
    options, _ = train_options({"wandb": "proj"}, ["wandb"])
    assert options.logger == "wandb" and options.wandb == "proj"
    result = cli("train", manifest_path, "--logger", "tensorboard", "--wandb", "proj", "--print-config")
    assert result.exit_code == 2 and "--wandb proj: names the project of --logger wandb" in result.stderr
