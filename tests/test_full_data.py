"""`maskkit train --fold all` (the full-data model) and `--crop` (the centre crop a run keeps)."""

from __future__ import annotations

import json
import shutil
from io import StringIO

import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from helpers import FAST, one_thread
from maskkit.commands.predict import run as predict
from maskkit.commands import train
from maskkit.contract.errors import MaskkitError
from maskkit.contract.runfolder import read_config
from maskkit.options import TrainOptions
from maskkit.data.presets import DEFAULT_CROP, FULL_CROP, parse_crop, resolve_crop


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, manifest_path):
    with one_thread():
        return train.run(manifest_path, TrainOptions(**{**FAST, "fold": "all", "heads": "multi", "age_weight": 0.1,
                                                    "epochs": 8}),
                     runs_dir=tmp_path_factory.mktemp("runs"), show_progress=False)


@pytest.mark.slow
def test_fold_all_trains_every_person_for_the_fixed_epochs_without_validation(full_run, manifest_path):
    assert full_run.name == "test_resnet-all"
    names = {p.name for p in full_run.iterdir()}
    assert {"config.json", "manifest.csv", "metrics.csv", "best.pt", "last.pt"} <= names
    assert "val_preds.csv" not in names
    config = read_config(full_run)
    manifest = pd.read_csv(manifest_path)
    assert config["fold"] == "all" and config["train_images"] == len(manifest) and config["val_images"] == 0
    metrics = pd.read_csv(full_run / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(1, 9))
    assert metrics[["val_loss", "val_f1", "f1_mask", "f1_gender", "f1_age"]].isna().all().all()
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    best = torch.load(full_run / "best.pt", weights_only=True)
    last = torch.load(full_run / "last.pt", weights_only=False)
    assert best["epoch"] == 8  # best.pt = the final weights
    for key, value in last["model"].items():
        assert torch.equal(best["model"][key], value), key


@pytest.mark.slow
def test_a_full_data_model_predicts_votes_and_learned_on_held_out_persons(full_run, drawn, cli, tmp_path):
    with one_thread():
        result = cli("predict", full_run, drawn / "eval", "--device", "cpu", "--workers", "0", "-o", tmp_path / "p.csv")
        assert result.exit_code == 0, result.stderr
        voted = cli("vote", tmp_path / "p.csv", tmp_path / "p.csv", "--soft")
    assert voted.exit_code == 0, voted.stderr
    answers = pd.read_csv(StringIO(voted.stdout), dtype={"ImageID": str})
    truth = pd.read_csv(drawn / "eval" / "truth.csv", dtype={"ImageID": str}).set_index("ImageID")
    f1 = f1_score(truth.loc[answers["ImageID"], "ans"], answers["ans"], average="macro", labels=range(18),
                  zero_division=0)
    assert f1 > 0.15  # 8 persons never seen in training; chance is 0.056


@pytest.mark.slow
def test_runs_cam_and_audit_accept_a_full_data_run_or_say_why_not(full_run, multi_run, drawn, cli, tmp_path):
    with one_thread():
        runs = cli("runs", full_run, multi_run)
        cam = cli("cam", full_run, drawn / "eval", "--limit", "2", "--device", "cpu", "--out-dir", tmp_path / "cam")
    assert runs.exit_code == 0, runs.stderr
    table = pd.read_csv(StringIO(runs.stdout))
    row = table.set_index("name").loc["test_resnet-all"]
    assert str(row["fold"]) == "all" and pd.isna(row["val_f1"]) and row["best_epoch"] == 8
    assert "--fold all" in runs.stderr
    assert cam.exit_code == 0, cam.stderr
    assert len(pd.read_csv(tmp_path / "cam" / "cam.csv")) == 2
    audit = cli("audit", drawn / "train", "--oof", full_run)
    assert audit.exit_code == 2
    assert "--fold all" in audit.stderr and "fold" in audit.stderr.strip().splitlines()[-1]


def test_fold_all_and_crop_are_checked_before_anything_is_written(cli, manifest_path, tmp_path):
    for args, needle in ((("--fold", "every"), "--fold"), (("--crop", "1.5,1"), "--crop"),
                         (("--crop", "wide"), "--crop")):
        result = cli("train", manifest_path, *args, "--runs-dir", tmp_path / "runs")
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr
    assert not (tmp_path / "runs").exists()


def test_crop_auto_keeps_square_face_crops_whole_and_crops_portraits():
    assert resolve_crop("auto", (200, 200)) == FULL_CROP
    assert resolve_crop("auto", (384, 512)) == DEFAULT_CROP  # the competition's 3:4 portraits
    assert resolve_crop("full", (384, 512)) == FULL_CROP
    assert resolve_crop("competition", (200, 200)) == DEFAULT_CROP
    assert parse_crop("0.9,0.7") == (0.9, 0.7)
    with pytest.raises(MaskkitError):
        parse_crop("0,1")


def test_the_crop_a_run_chose_is_stored_and_used_by_predict(multi_run, drawn, tmp_path):
    assert read_config(multi_run)["crop"] == list(DEFAULT_CROP)  # drawn images are 3:4 portraits
    full = tmp_path / "full"
    shutil.copytree(multi_run, full)
    config = json.loads((full / "config.json").read_text())
    config["crop"] = list(FULL_CROP)
    (full / "config.json").write_text(json.dumps(config))
    with one_thread():
        cropped = predict(multi_run, drawn / "eval", device="cpu", workers=0, out=tmp_path / "a.csv")
        whole = predict(full, drawn / "eval", device="cpu", workers=0, out=tmp_path / "b.csv")
    assert (cropped["p0"] - whole["p0"]).abs().max() > 1e-3


@pytest.mark.slow
def test_crop_auto_keeps_the_whole_frame_of_square_images(tmp_path, cli):
    from maskkit.commands import synth
    from maskkit.options import Size

    synth.run(tmp_path / "square", persons=30, eval_persons=2, size=Size(width=48, height=48), seed=5)
    with one_thread():
        result = cli("train", tmp_path / "square" / "train", "--backbone", "test_resnet", "--no-pretrained",
                     "--input-size", "40x40", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                     "--workers", "0", "--runs-dir", tmp_path / "runs", "--name", "sq")
    assert result.exit_code == 0, result.stderr
    config = read_config(tmp_path / "runs" / "sq")
    assert config["options"]["crop"] == "auto" and config["crop"] == list(FULL_CROP)
