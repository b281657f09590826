"""`maskkit train`: learning on held-out persons, the run folder, resume, the leakage guard, bad inputs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.labels import NUM_CLASSES
from maskkit.commands import train
from maskkit.contract.manifest import file_sha256
from maskkit.contract.runfolder import METRIC_COLUMNS, read_config
from maskkit.data.sampling import targets_of
from maskkit.engine.loss import task_loss
from maskkit.engine.trainer import Interrupted
from maskkit.options import TrainOptions
from helpers import FAST, assert_one_line_error, one_thread
from hostile import (ABSOLUTE_NAME, MARKER, RUN, TINY_FLAGS, assert_full_disk_names_the_output,
                     assert_refused_while_parsing, bad, config_field, duplicated_rows, empty_path_row, first_image,
                     foreign_last, junk_images, manifest_climbing, mixed_gender, planted_last, recipe, run_bad,
                     source_changed, strange_images, train_csv_age)

CHANCE = 1 / NUM_CLASSES
F1_FLOOR = 0.25  # measured 0.30-0.42 for these tiny from-scratch runs; chance is 0.056


@pytest.fixture
def single(single_run):
    return single_run


@pytest.fixture
def multi(multi_run):
    return multi_run


def best_of(run) -> pd.Series:
    metrics = pd.read_csv(run / "metrics.csv")
    return metrics.loc[metrics["val_f1"].idxmax()]


@pytest.mark.parametrize("which", ["single", "multi"])
def test_tiny_model_learns_far_above_chance_on_held_out_persons(which, request):
    run = request.getfixturevalue(which)
    best = best_of(run)
    assert best["val_f1"] > F1_FLOOR > 4 * CHANCE
    assert best["f1_mask"] > 0.4 and best["f1_gender"] > 0.6


def test_run_folder_holds_what_formats_md_lists(single, manifest_path):
    names = {p.name for p in single.iterdir()}
    assert {"config.json", "manifest.csv", "metrics.csv", "best.pt", "last.pt", "val_preds.csv",
            "confusion.png", "curves.png"} <= names
    assert not [n for n in names if ".tmp" in n]  # atomic writes leave no temporary files

    metrics = pd.read_csv(single / "metrics.csv")
    assert tuple(metrics.columns) == METRIC_COLUMNS
    assert metrics["epoch"].tolist() == list(range(1, 11))

    best = torch.load(single / "best.pt", weights_only=True)
    assert best["epoch"] == int(best_of(single)["epoch"])
    assert best["val_f1"] == pytest.approx(best_of(single)["val_f1"])

    stored = json.loads((single / "config.json").read_text())
    assert stored["format"] == 2 and "backbone" not in stored  # the options are stored once
    config = read_config(single)
    assert config["backbone"] == "test_resnet" and config["heads"] == "single" and config["fold"] == 0
    assert config["img_size"] == [48, 40] and len(config["mean"]) == 3 and len(config["std"]) == 3
    assert config["manifest_sha256"] == file_sha256(single / "manifest.csv") == file_sha256(manifest_path)
    assert {"torch", "timm", "albumentations"} <= set(config["versions"])
    assert config["options"]["balanced"] is True and config["options"]["lr"] == FAST["lr"]


def test_val_preds_are_the_best_epochs_out_of_fold_predictions(multi, manifest_path):
    from maskkit.engine.models import class_probs, load_run

    manifest = pd.read_csv(manifest_path, dtype={"person": str})
    preds = pd.read_csv(multi / "val_preds.csv", dtype={"person": str})
    val = manifest[manifest["fold"] == 0]
    assert list(preds.columns) == ["ImageID", "ans", *[f"p{i}" for i in range(18)], "person", "label"]
    assert sorted(preds["ImageID"]) == sorted(val["path"])
    assert not set(preds["person"]) & set(manifest.loc[manifest["fold"] != 0, "person"])
    assert (preds.set_index("ImageID")["label"] == val.set_index("path")["label"]).all()
    probs = preds[[f"p{i}" for i in range(18)]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    assert (probs.argmax(1) == preds["ans"]).all()

    # The saved probabilities are best.pt's: recompute a few with the rebuilt model.
    from maskkit.data.loader import ImageDataset
    from maskkit.data.presets import eval_transform

    model, config = load_run(multi)
    assert "age_years" in model.heads  # the age-regression branch is there
    rows = preds.head(8)
    dataset = ImageDataset(rows["ImageID"], None, config["img_size"],
                           eval_transform(config["img_size"], config["mean"], config["std"], config["crop"]))
    with torch.no_grad():
        again = class_probs(model(torch.stack([dataset[i][0] for i in range(len(rows))]))).numpy()
    np.testing.assert_allclose(again, rows[[f"p{i}" for i in range(18)]].to_numpy(), atol=2e-5)


def test_age_regression_branch_learns_years(multi, manifest_path):
    from maskkit.data.loader import ImageDataset
    from maskkit.data.presets import eval_transform
    from maskkit.contract.labels import target_to_age
    from maskkit.engine.models import load_run

    model, config = load_run(multi)
    manifest = pd.read_csv(manifest_path)
    val = manifest[manifest["fold"] == 0].reset_index(drop=True)
    dataset = ImageDataset(val["path"], None, config["img_size"],
                           eval_transform(config["img_size"], config["mean"], config["std"], config["crop"]))
    with torch.no_grad():
        years = target_to_age(model(torch.stack([dataset[i][0] for i in range(len(val))]))["age_years"]).numpy()
    assert np.corrcoef(years, val["age"])[0, 1] > 0.5


def test_old_age_moves_training_targets_only():
    rows = pd.DataFrame({"mask": ["wear", "not_wear"], "gender": ["male", "female"], "age": [58, 59]})
    targets = targets_of(rows, old_age=58)
    assert targets["age"].tolist() == [2, 2]  # trained as the oldest group
    assert targets["label"].tolist() == [2, 6 * 2 + 3 + 2]
    assert targets["true_label"].tolist() == [1, 6 * 2 + 3 + 1]  # validation scores the true groups


def test_focal_loss_down_weights_easy_examples():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert task_loss(logits, target) == pytest.approx(float(ce.mean()))
    focal = task_loss(logits[:1], target[:1], gamma=2.0) / float(ce[0])
    hard = task_loss(logits[1:], target[1:], gamma=2.0) / float(ce[1])
    assert focal < 0.01 < hard  # (1 - p)^2: about 0.0013 for p = 0.96, 0.44 for p = 1/3
    assert task_loss(logits, target, smoothing=0.1) > task_loss(logits, target)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_interrupted_then_resumed_run_ends_with_the_same_weights(tmp_path, manifest_path):
    # Everything random at once: augmentation, cutmix, dropout, balanced sampling, EMA.
    options = dict(FAST, aug="basic", cutmix=0.5, dropout=0.2, balanced=True, ema=True, ema_decay=0.9, epochs=2)
    with one_thread():
        straight = train.run(manifest_path, TrainOptions(**options), runs_dir=tmp_path, name="straight", show_progress=False)
        with pytest.raises(Interrupted):
            train.run(manifest_path, TrainOptions(**options), runs_dir=tmp_path, name="resumed", show_progress=False,
                  stop=lambda epoch, step: (epoch, step) == (0, 3))
        stopped = _weights(tmp_path / "resumed" / "last.pt")
        assert stopped["progress"]["epoch"] == 0 and stopped["progress"]["current"]["step"] == 3
        resumed = train.run(None, TrainOptions(**options), resume=tmp_path / "resumed", show_progress=False)

    a, b = _weights(straight / "last.pt"), _weights(resumed / "last.pt")
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    best_a, best_b = _weights(straight / "best.pt"), _weights(resumed / "best.pt")
    assert best_a["epoch"] == best_b["epoch"]
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])
    metrics_a, metrics_b = (pd.read_csv(r / "metrics.csv").drop(columns="seconds") for r in (straight, resumed))
    pd.testing.assert_frame_equal(metrics_a, metrics_b)  # appended on resume, one row per epoch


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, manifest_path, monkeypatch):
    from maskkit.engine.loss import MaskLoss

    calls = {"n": 0}
    real = MaskLoss.__call__

    def poisoned(self, outputs, targets):
        calls["n"] += 1
        loss = real(self, outputs, targets)
        return loss * float("nan") if calls["n"] > 30 else loss  # epoch 1 has 19 steps (+ validation)

    monkeypatch.setattr(MaskLoss, "__call__", poisoned)
    with one_thread(), pytest.raises(RunFailure, match="NaN"):
        train.run(manifest_path, TrainOptions(**dict(FAST, epochs=3)), runs_dir=tmp_path, name="nan", show_progress=False)
    last = _weights(tmp_path / "nan" / "last.pt")
    assert last["progress"]["epoch"] == 1 and last["progress"]["current"]["step"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert len(pd.read_csv(tmp_path / "nan" / "metrics.csv")) == 1


def test_a_run_failing_in_its_first_epoch_leaves_no_folder(tmp_path, manifest_path, monkeypatch):
    """steps.csv (and tb/) are written from the first step: a run that never saved an epoch removes them too."""
    from maskkit.engine.loss import MaskLoss

    real = MaskLoss.__call__
    calls = {"n": 0}

    def poisoned(self, outputs, targets):
        calls["n"] += 1
        loss = real(self, outputs, targets)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(MaskLoss, "__call__", poisoned)
    with one_thread(), pytest.raises(RunFailure, match="NaN"):
        train.run(manifest_path, TrainOptions(**dict(FAST, epochs=2)), runs_dir=tmp_path, name="early", show_progress=False)
    assert not (tmp_path / "early").exists()


@pytest.mark.slow
def test_cli_trains_a_dataset_folder_with_an_on_the_fly_split(cli, drawn, tmp_path, monkeypatch):
    import maskkit.commands.train as train_module
    from maskkit.contract.layout import load_train
    from maskkit.commands.split import make_manifest

    monkeypatch.setattr(train_module, "AUTO_FOLDS", 4)  # the shared drawn dataset is too small for 5
    with one_thread():
        result = cli("train", drawn / "train", "--backbone", "test_resnet", "--no-pretrained", "--input-size", "40x48",
                     "--epochs", "1", "--batch-size", "16", "--workers", "0", "--device", "cpu",
                     "--runs-dir", tmp_path, "--name", "folder")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # stdout stays for data
    assert "epoch 1/1" in result.stderr and "img/s" in result.stderr and "data wait" in result.stderr
    assert "training test_resnet (multi + dldl age distribution) on" in result.stderr  # the default age branch
    saved = pd.read_csv(tmp_path / "folder" / "manifest.csv", dtype={"person": str})
    expected = make_manifest(load_train(drawn / "train", report=False), 4, 42)
    assert saved["fold"].tolist() == expected["fold"].tolist()
    assert (saved.groupby("person")["fold"].nunique() == 1).all()


def test_leaking_manifest_is_refused_naming_the_persons(cli, manifest_path, tmp_path):
    leaky = pd.read_csv(manifest_path, dtype={"person": str})
    person = leaky.loc[leaky["fold"] == 0, "person"].iloc[0]
    leaky.loc[(leaky["person"] == person) & (leaky["mask"] == "not_wear"), "fold"] = 1
    leaky.to_csv(tmp_path / "leaky.csv", index=False)
    result = cli("train", tmp_path / "leaky.csv", "--backbone", "test_resnet", "--no-pretrained", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert person in result.stderr and "two folds" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def existing_run(tmp_path, manifest_path):
    run = tmp_path / "runs" / "taken"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    return run


BAD_INPUTS = {
    "missing columns": (["{manifest_no_fold}"], "missing column"),
    "missing source": (["{tmp}/nowhere.csv"], "not found"),
    "unknown backbone": (["{manifest}", "--backbone", "no_such_net"], "unknown backbone"),
    "fold not in manifest": (["{manifest}", "--fold", "7"], "--fold 7"),
    "existing run": (["{manifest}", "--name", "taken"], "--overwrite"),
    "wandb missing": (["{manifest}", "--wandb", "proj"], "wandb is not installed"),
    "bad input size": (["{manifest}", "--input-size", "big"], "--input-size"),
    "changed option on resume": (["--resume", "{run}", "--lr", "0.5"], "--lr 0.5"),
    "shorter plan on resume": (["--resume", "{run}", "--epochs", "1"], "can only extend"),
    "recipe with an unknown option": (["{manifest}", "--config", "{tmp}/bad.yaml"], "unknown option(s) colour"),
    "no cuda": (["{manifest}", "--device", "cuda"], "CUDA is not available"),
    "resume without last.pt": (["--resume", "{tmp}/runs/taken"], "no last.pt"),
    "batch larger than data": (["{manifest}", "--batch-size", "4000", "--input-size", "40x48"], "--batch-size"),
}


# Run in a fresh interpreter: the exit code, and whether torch and timm were imported on the way.
REFUSED_EARLY = """import sys
from maskkit.cli import main
try:
    main()
except SystemExit as exit:
    print(exit.code, "torch" in sys.modules, "timm" in sys.modules)
"""


@pytest.mark.parametrize("args, expected", [
    (["--backbone", "efb2"], "did you mean effb2?"),
    (["--input-size", "64"], "--input-size '64': expected WIDTHxHEIGHT"),
    (["--epochs", "0"], "--epochs 0: use 1.."),
    (["--fold", "7"], "--fold 7: "),
    (["--source-missing"], "nowhere.csv: not found"),
])
def test_cheap_mistakes_are_refused_before_torch_is_imported(args, expected, manifest_path, tmp_path):
    source = [str(tmp_path / "nowhere.csv")] if args == ["--source-missing"] else [str(manifest_path), *args]
    result = subprocess.run([sys.executable, "-c", REFUSED_EARLY, "train", *source, "--runs-dir", str(tmp_path / "runs")],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False", "False"], result.stdout + result.stderr
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_only_near_misses_of_an_alias_are_refused_without_timm():
    """No timm model name is spelt like an alias (check_backbone_spelling's premise); a typo of a timm
    name is still refused, by timm, with its nearest names."""
    import timm

    from maskkit.contract.errors import MaskkitError
    from maskkit.options import BACKBONES, check_backbone_spelling, resolve_backbone

    for name in [*timm.list_models(), *BACKBONES]:
        check_backbone_spelling(name)  # refuses none
    for typo, alias in (("efb2", "effb2"), ("lite", "lite2"), ("Effb0", "effb0"), ("vit-tinny", "vit-tiny")):
        with pytest.raises(MaskkitError, match=f"did you mean {alias}\\?"):
            check_backbone_spelling(typo)
    with pytest.raises(MaskkitError, match="unknown backbone 'resnet19': did you mean resnet18"):
        resolve_backbone("resnet19")


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_give_one_line_and_exit_2(case, cli, tmp_path, manifest_path, existing_run, multi_run):
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if case == "wandb missing" and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    no_fold = tmp_path / "no_fold.csv"
    pd.read_csv(manifest_path).drop(columns="fold").to_csv(no_fold, index=False)
    args, expected = BAD_INPUTS[case]
    (tmp_path / "bad.yaml").write_text("lr: 0.1\ncolour: red\n")
    args = [a.format(manifest=manifest_path, manifest_no_fold=no_fold, tmp=tmp_path, run=multi_run) for a in args]
    if "--backbone" not in args:
        args += ["--backbone", "test_resnet"]
    if "--resume" not in args:
        args += ["--no-pretrained", "--epochs", "1"]
    result = cli("train", *args, "--runs-dir", tmp_path / "runs", "--workers", "0")
    assert result.exit_code == 2, result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["taken"]  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_writes_last_pt_and_resume_finishes(stop, code, tmp_path, manifest_path, cli):
    """A real SIGINT (Ctrl-C) or SIGTERM (kill, a scheduler) to `maskkit train` in a subprocess, then `--resume`."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "maskkit", "train", str(manifest_path), "--backbone", "test_resnet",
            "--no-pretrained", "--input-size", "40x48", "--epochs", "3", "--batch-size", "16", "--workers", "0",
            "--device", "cpu", "--runs-dir", str(tmp_path), "--name", "ctrlc"]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in process.stderr:  # interrupt right after the first finished epoch
        lines.append(line)
        if line.startswith("epoch 1/3"):
            process.send_signal(stop)
            break
    process.wait(timeout=120)
    rest = process.stderr.read()  # the same buffered reader the loop used
    assert process.returncode == code, "".join(lines) + rest
    assert not (tmp_path / "ctrlc" / ".maskkit.lock").exists()
    assert "resume with: maskkit train --resume" in rest
    last = _weights(tmp_path / "ctrlc" / "last.pt")
    assert last["progress"]["epoch"] == 1 and last["progress"]["current"]["step"] < 19  # mid epoch 2
    assert pd.read_csv(tmp_path / "ctrlc" / "metrics.csv")["epoch"].tolist() == [1]

    with one_thread():
        result = cli("train", "--resume", tmp_path / "ctrlc", "--workers", "0", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert f"resuming {tmp_path / 'ctrlc'} at epoch 2" in result.stderr
    assert pd.read_csv(tmp_path / "ctrlc" / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def test_pretrained_weights_unavailable_is_one_line_and_leaves_no_run(cli, manifest_path, tmp_path, monkeypatch):
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("offline: cannot reach huggingface.co")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    result = cli("train", manifest_path, "--backbone", "test_resnet", "--input-size", "40x48", "--workers", "0",
                 "--cache", "none", "--runs-dir", tmp_path / "runs", "--name", "hub")
    assert result.exit_code == 2
    assert "--weights FILE" in result.stderr and "--no-pretrained" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs" / "hub").exists()  # a re-run needs no --overwrite


# --- recipes, option spellings, extending a run, the optimizer --------------------------------------

def recipe_of(result) -> dict:
    import yaml

    assert result.exit_code == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_print_config_round_trips_and_flags_win_over_the_file(cli, manifest_path, tmp_path):
    first = recipe_of(cli("train", manifest_path, "--backbone", "test_resnet", "--multi", "--lr", "0.002",
                          "--input-size", "40x48", "--opt", "sgd", "--sched", "tanh", "--print-config"))
    assert (first["heads"], first["lr"], first["input_size"], first["opt"], first["sched"]) == \
        ("multi", 0.002, "40x48", "sgd", "tanh")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml_dump(first))
    again = recipe_of(cli("train", manifest_path, "--config", recipe, "--print-config"))
    assert again == first
    changed = recipe_of(cli("train", manifest_path, "--config", recipe, "--lr", "0.01", "--fold", "2",
                            "--print-config"))
    assert changed == {**first, "lr": 0.01, "fold": 2}


def yaml_dump(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def test_a_runs_config_json_seeds_a_new_run_on_another_fold(cli, multi_run, manifest_path):
    seeded = recipe_of(cli("train", manifest_path, "--config", multi_run / "config.json", "--fold", "1",
                           "--print-config"))
    saved = json.loads((multi_run / "config.json").read_text())["options"]
    assert seeded["fold"] == 1 and seeded["heads"] == "multi" and seeded["age_weight"] == 0.1
    assert seeded["lr"] == saved["lr"] and seeded["input_size"] == "40x48"


def test_choice_options_refuse_values_outside_their_list(cli, manifest_path):
    result = cli("train", manifest_path, "--sched", "wild")
    assert result.exit_code == 2 and "'wild' is not one of" in result.stderr
    # --aug also takes a FILE.yaml, so train's own check names its values
    assert_one_line_error(cli("train", manifest_path, "--aug", "wild"), "--aug wild", "none, basic, strong", "FILE.yaml")


@pytest.mark.slow
def test_a_larger_epochs_extends_a_run_onto_the_longer_schedule(tmp_path, manifest_path):
    """Resumed with --epochs 3, a 2-epoch run continues on the 3-epoch schedule: its third epoch ends
    at the learning rate of a run planned for 3 epochs (the first two ran on the 2-epoch plan)."""
    options = dict(FAST, epochs=2, warmup=0.0)
    with one_thread():
        short = train.run(manifest_path, TrainOptions(**options), runs_dir=tmp_path, name="short", show_progress=False)
        planned = train.run(manifest_path, TrainOptions(**{**options, "epochs": 3}), runs_dir=tmp_path, name="planned",
                        show_progress=False)
        extended = train.run(None, TrainOptions(**{**options, "epochs": 3}), resume=short, show_progress=False)
    short_lr = pd.read_csv(extended / "metrics.csv")["lr"].tolist()
    planned_lr = pd.read_csv(planned / "metrics.csv")["lr"].tolist()
    assert len(short_lr) == 3
    assert short_lr[2] == pytest.approx(planned_lr[2], rel=1e-9)  # on the new plan from the resume on
    assert short_lr[1] < planned_lr[1]  # the 2-epoch plan had decayed further by its end
    assert read_config(extended)["options"]["epochs"] == 3  # a later --resume continues the 3-epoch plan


def test_weight_decay_spares_norms_and_biases(single):
    """timm's optimizer factory: tensors of one dimension (norm weights, biases) are not decayed."""
    from maskkit.engine.models import build_model

    groups = _weights(single / "last.pt")["optimizer"]["param_groups"]
    decay = {g["weight_decay"]: len(g["params"]) for g in groups}
    model = build_model("test_resnet", heads="single")
    flat = sum(1 for p in model.parameters() if p.ndim <= 1)
    assert decay == {0.0: flat, FAST.get("weight_decay", 0.01): sum(1 for _ in model.parameters()) - flat}


def test_a_new_run_refused_for_a_taken_name_leaves_the_unfinished_run_there(cli, manifest_path, tmp_path):
    """A run stopped in its first epoch (last.pt, no metrics.csv yet) is resumable: `train` again
    under its name without --overwrite is refused and must not clean it away as a failed start."""
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    planted = {"config.json": b'{"format": 2}', "last.pt": b"resumable", "manifest.csv": b"path\n"}
    for name, data in planted.items():
        (run_dir / name).write_bytes(data)
    with one_thread():
        result = cli("train", manifest_path, "--backbone", "test_resnet", "--no-pretrained", "--input-size", "40x48",
                     "--epochs", "1", "--workers", "0", "--device", "cpu", "--runs-dir", tmp_path, "--name", "early")
    assert result.exit_code == 2 and "already exists" in result.stderr, result.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == planted


def test_the_studys_recipe_is_the_default_and_each_on_switch_has_its_off(cli, manifest_path):
    """train's defaults are the real-faces study's best recipe (EMA, balanced sampling, DLDL age at 0.3,
    benchmarks/README.md); --no-ema, --no-balanced and --age-weight 0 give the plain recipe back."""
    default = recipe_of(cli("train", manifest_path, "--print-config"))
    assert (default["ema"], default["balanced"], default["age_loss"], default["age_weight"], default["opt"]) == \
        (True, True, "dldl", 0.3, "nadamw")
    plain = recipe_of(cli("train", manifest_path, "--no-ema", "--no-balanced", "--age-weight", "0", "--print-config"))
    assert (plain["ema"], plain["balanced"], plain["age_weight"]) == (False, False, 0.0)


def help_text(cli, *command: str) -> str:
    """A command's --help as one line of words (rich's boxes and wrapping taken out)."""
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.replace("│", " ").split())


def test_help_says_what_each_commands_own_options_do(cli):
    train_help, synth_help, tune_help = (help_text(cli, c) for c in ("train", "synth", "tune"))
    assert "--overwrite Replace the run folder" in train_help and "segment" not in train_help
    assert "--overwrite Replace OUT when it holds a dataset that maskkit synth drew" in synth_help
    assert "segment" not in synth_help
    assert "With --best: write the best trial's recipe (YAML for train --config)" in tune_help
    assert "CSV here" not in tune_help
    assert "strong (basic + a random shift, scale and rotation" in train_help  # what each --aug applies


def test_every_train_option_is_declared_once_by_a_trainoptions_field():
    """train's options are TrainOptions' fields (their Flags) plus the run's own parameters, nothing else:
    a field without a flag, or a flag declared only in cli.py, fails here."""
    import typer

    from maskkit import cli_options
    from maskkit.cli import app
    from maskkit.options import TrainOptions

    command = typer.main.get_command(app).commands["train"]
    declared = {decl for param in command.params for decl in (*param.opts, *param.secondary_opts)}
    from_fields = {part for flag in TrainOptions.flags().values() for decl in flag.decls for part in decl.split("/")}
    own = {decl for param in command.params if param.name in {n for n, _, _ in cli_options.TRAIN_RUN_PARAMETERS}
           for decl in (*param.opts, *param.secondary_opts)}
    assert declared - {"--help"} == from_fields | own
    assert from_fields.isdisjoint(own)
    defaults = TrainOptions()
    for param in command.params:  # each default is the field's, as the command line writes it
        name = next((n for n, f in TrainOptions.flags().items() if (f.key or n) == param.name), None)
        if name is not None:
            flag = TrainOptions.flags()[name]
            value = getattr(defaults, name)
            assert param.default == (flag.show(value) if flag.show else value), param.name


def test_a_recipe_key_is_read_by_its_flag():
    from maskkit.contract.recipe import as_fields

    fields = as_fields({"input-size": "64x48", "multi": False, "fold": "all", "lr": 0.1, "heads": "multi"})
    assert fields == {"img_size": (48, 64), "heads": "multi", "fold": "all", "lr": 0.1}
    with pytest.raises(MaskkitError, match="r.yaml: input_size '64': expected WIDTHxHEIGHT"):
        as_fields({"input_size": "64"}, "r.yaml")


@pytest.mark.slow
def test_a_run_killed_before_its_last_plots_draws_them_on_resume(tmp_path, manifest_path, monkeypatch):
    """Issue 31 (lower item): last.pt was written before the plots, so a run killed in between was
    "already finished" on resume and never drew them. Now the plots come first: resume redoes the epoch."""
    from maskkit.engine import checkpoint

    real, calls = checkpoint.plot_run, []

    def killed_at_the_last_plots(run_dir):
        calls.append(run_dir)
        if len(calls) == 2:
            raise Interrupted()  # as kill -9 would, at the second (last) epoch's plots
        real(run_dir)

    monkeypatch.setattr(checkpoint, "plot_run", killed_at_the_last_plots)
    options = TrainOptions(**dict(FAST, epochs=2))
    with one_thread():
        with pytest.raises(Interrupted):
            train.run(manifest_path, options, runs_dir=tmp_path, name="killed", show_progress=False)
        (tmp_path / "killed" / "curves.png").unlink()  # the first epoch's; the last one's never came
        monkeypatch.setattr(checkpoint, "plot_run", real)
        train.run(None, options, resume=tmp_path / "killed", show_progress=False)
    assert len(pd.read_csv(tmp_path / "killed" / "metrics.csv")) == 2
    assert (tmp_path / "killed" / "curves.png").is_file() and (tmp_path / "killed" / "confusion.png").is_file()


# --- bad input ----------------------------------------------------------------------------------

RESUME = ["train", "--resume", RUN, "--device", "cpu"]
RECIPE = ["train", "folds.csv", *TINY_FLAGS, "--config", "r.yaml"]
BAD_CALLS = [
    bad("train: manifest row with empty path", ["train", "bad.csv", *TINY_FLAGS], empty_path_row),
    bad("train: every row twice", ["train", "bad.csv", *TINY_FLAGS], duplicated_rows),
    bad("train: a person with two genders", ["train", "bad.csv", *TINY_FLAGS], mixed_gender),
    bad("train manifest path with ..", ["train", "bad.csv", *TINY_FLAGS], manifest_climbing,
        absent=["runs/test_resnet-f0"]),
    bad("train on unreadable images", ["train", "bad.csv", *TINY_FLAGS, "--name", "junk"], junk_images),
    bad("train train.csv age -3", ["train", "X/train", *TINY_FLAGS], train_csv_age("-3")),
    bad("train --runs-dir inside the dataset", ["train", "X/train", "--runs-dir", "X/train", *TINY_FLAGS]),
    bad("train --overwrite the run whose manifest it reads",
        ["train", f"{RUN}/manifest.csv", "--runs-dir", "runs", "--name", "base", "--overwrite", *TINY_FLAGS]),
    bad("train --name ../../escaped", ["train", "folds.csv", *TINY_FLAGS, "--name", "../../escaped"],
        absent=["../escaped", "../../escaped", "runs/../../escaped"]),
    bad("train --name /abs", ["train", "folds.csv", *TINY_FLAGS, "--name", ABSOLUTE_NAME], absent=[ABSOLUTE_NAME]),
    bad("train --warmup 1e308", ["train", "folds.csv", *TINY_FLAGS, "--warmup", "1e308"]),
    bad("train --input-size 100000x100000", ["train", "folds.csv", *TINY_FLAGS, "--input-size", "100000x100000"]),
    # recipes of the wrong type or out of range
    bad("train --config epochs: ten", RECIPE, recipe("epochs: ten\n")),
    bad("train --config lr: [1, 2]", RECIPE, recipe("lr: [1, 2]\n")),
    bad("train --config batch_size: 1e400", RECIPE, recipe("batch_size: 1e400\n")),
    bad("train --config epochs: 1.5", RECIPE, recipe("epochs: 1.5\n")),
    bad("train --config epochs: true", RECIPE, recipe("epochs: true\n")),
    bad("train --config pretrained: no-string", RECIPE, recipe('pretrained: "no"\n')),
    bad("train --config seed: -1", RECIPE, recipe("seed: -1\n")),
    bad("train --config workers: 1000000", RECIPE, recipe("workers: 1000000\n")),
    bad("train --config r.json lr: fast", [*RECIPE[:-1], "r.json"], recipe('{"lr": "fast"}\n', "r.json")),
    # resume: a checkpoint never runs code, and the run folder is the one it was
    bad("train --resume a planted last.pt", RESUME, planted_last, absent=[MARKER]),
    bad("train --resume a last.pt of other states", RESUME, foreign_last),
    bad("train --resume config.json seed -1", RESUME, config_field("options.seed", -1)),
    bad("train --resume after its source CSV changed", RESUME, source_changed),
    bad("train --resume --name other", [*RESUME, "--name", "other"], absent=["runs/other"]),
    bad("train --resume --runs-dir elsewhere", [*RESUME, "--runs-dir", "elsewhere"], absent=["elsewhere"]),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


@pytest.mark.parametrize("argv, option", [
    (["train", "folds.csv", *TINY_FLAGS, "--seed", "-1", "--name", "s"], "--seed"),
    (["train", "folds.csv", *TINY_FLAGS, "--seed", "99999999999999999999", "--name", "s"], "--seed"),
    (["train", "folds.csv", *TINY_FLAGS, "--workers", "1000000", "--name", "s"], "--workers"),
], ids=["--seed -1", "--seed 99999999999999999999", "--workers 1000000"])
def test_an_option_beyond_its_bound_is_one_line_before_anything_is_written(world, argv, option, monkeypatch, capsys):
    """The bound of --seed and --workers (cores x 4) is one rule for every command, checked while parsing."""
    assert_refused_while_parsing(world, argv, option, monkeypatch, capsys)


@pytest.mark.slow
def test_a_full_disk_names_the_run_folder_not_the_manifest_it_copies(world):
    assert_full_disk_names_the_output(world, ["train", "folds.csv", *TINY_FLAGS, "--runs-dir", "out/runs"])


@pytest.mark.slow
def test_a_full_disk_while_plotting_says_how_far_it_got_and_resume_works(cli, world, monkeypatch):
    """The disk fills while the plots are saved after epoch 1: exit 1, one line, and resume works."""
    import errno

    from maskkit.contract.files import atomic_path
    from maskkit.engine import checkpoint

    def full_disk(run_dir):
        with atomic_path(run_dir / "curves.png"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "plot_run", full_disk)
        result = cli("train", "folds.csv", *TINY_FLAGS, "--name", "full")
    assert_one_line_error(result, "maskkit train: error: ", "no space left", "1 epoch(s) finished",
                          "--resume runs/full", code=1, after_messages=True)
    assert cli("train", "--resume", "runs/full", "--device", "cpu").exit_code == 0


@pytest.mark.slow
def test_a_full_disk_in_torch_save_is_one_line_and_resume_works(cli, world, monkeypatch):
    """torch.save on a full disk may fail in C++ with `basic_ios::clear`: exit 1, one line, then resume."""
    real_save, saves = torch.save, []

    def failing_save(obj, path, *args, **kwargs):
        saves.append(Path(path).name)
        if Path(path).name.startswith(".last.pt") and sum(n.startswith(".last.pt") for n in saves) == 3:  # epoch 2's
            raise RuntimeError("basic_ios::clear: iostream error")
        return real_save(obj, path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", failing_save)
        result = cli("train", "folds.csv", *TINY_FLAGS, "--epochs", "2", "--name", "full")
    assert_one_line_error(result, "maskkit train: error: ", "runs/full/last.pt: cannot write", "--resume runs/full",
                          code=1, after_messages=True)
    assert cli("train", "--resume", "runs/full", "--device", "cpu").exit_code == 0
    assert len(pd.read_csv(world / "runs" / "full" / "metrics.csv")) == 2


def test_a_locked_run_folder_is_refused_naming_the_process_holding_it(cli, world):
    from maskkit.contract.files import folder_lock

    with folder_lock(world / "runs" / "base", "train"):
        result = cli("train", "--resume", RUN, "--device", "cpu")
    assert_one_line_error(result, "maskkit train: error: ", f"process {os.getpid()}")


def test_resume_removes_the_temporary_file_of_a_killed_save(cli, world):
    stale = world / RUN / ".last.pt.tmp4242.pt"
    stale.write_bytes(b"half a checkpoint")
    result = cli("train", "--resume", RUN, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert not stale.exists()


@pytest.mark.slow
def test_resume_with_its_own_name_and_runs_dir_extends_the_same_run(cli, world):
    """--name and --runs-dir that say where the run already is are no change: the run goes on in its folder."""
    before = pd.read_csv(world / RUN / "metrics.csv")
    result = cli("train", "--resume", RUN, "--name", "base", "--runs-dir", "runs", "--device", "cpu",
                 "--epochs", str(len(before) + 1))
    assert result.exit_code == 0, result.stderr
    after = pd.read_csv(world / RUN / "metrics.csv")
    assert after["epoch"].tolist() == [*before["epoch"], len(before) + 1]
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)  # the epochs it had are kept as they were
    assert sorted(p.name for p in (world / "runs").iterdir()) == ["base"]


def test_recipe_values_of_the_right_type_are_taken(cli, world):
    """The type rule refuses only wrong types: an int for a float field is a number, false is a bool."""
    (world / "r.yaml").write_text("epochs: 2\nlr: 1\npretrained: false\nfold: 1\nworkers: 0\ninput_size: 32x48\n")
    result = cli("train", "folds.csv", "--config", "r.yaml", "--print-config")
    assert result.exit_code == 0, result.stderr
    assert "epochs: 2\n" in result.stdout and "pretrained: false" in result.stdout and "lr: 1" in result.stdout


@pytest.mark.slow
def test_strange_training_images_are_named_in_one_warning(cli, world):
    strange_images(world)
    result = cli("train", "folds.csv", *TINY_FLAGS, "--name", "strange")
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "strange training image" in line]
    assert len(warnings) == 1 and "5 strange" in warnings[0] and first_image(world) in warnings[0]
