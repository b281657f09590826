"""`train --pseudo` and `split --extra` in training: confident test images and imported persons train
in every fold, never validate, never reach the pooled out-of-fold predictions; the run records the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import FOLDS, assert_one_line_error, tiny, train_flags
from hostile import TINY_FLAGS, bad, run_bad
from maskkit.contract.errors import MaskkitError
from maskkit.contract.labels import GENDERS, MASKS, NUM_CLASSES, decode
from maskkit.contract.layout import load_eval
from maskkit.contract.manifest import file_sha256
from maskkit.contract.predictions import prediction_frame
from maskkit.data.pseudo import PSEUDO_FOLD, pseudo_rows, weigh_pseudo
from test_import import utk_folder

pytestmark = pytest.mark.usefixtures("torch_one_thread")
F1_FLOOR = 0.25  # as tests/test_train.py: tiny from-scratch runs measure 0.30-0.42; chance is 0.056


def class_probs(label: int, sure: float) -> np.ndarray:
    """18 probabilities: `sure` on `label`, the rest spread evenly."""
    probs = np.full(NUM_CLASSES, (1 - sure) / (NUM_CLASSES - 1))
    probs[label] = sure
    return probs


def write_preds(path: Path, image_ids, probs) -> Path:
    prediction_frame(list(image_ids), np.asarray(probs)).to_csv(path, index=False)
    return path


def confident_count(preds: Path, min_prob: float) -> int:
    """Images whose likeliest mask, gender and age group each reach `min_prob`, summed class by class here."""
    probs = pd.read_csv(preds)[[f"p{i}" for i in range(NUM_CLASSES)]].to_numpy()
    sure = np.ones(len(probs), bool)
    for task in decode(np.arange(NUM_CLASSES)):
        marginal = np.stack([probs[:, task == value].sum(axis=1) for value in np.unique(task)], axis=1)
        sure &= marginal.max(axis=1) >= min_prob
    return int(sure.sum())


def test_pseudo_rows_take_only_images_confident_in_every_task(drawn, tmp_path):
    ids = load_eval(drawn / "eval")["ImageID"].tolist()[:3]
    classes = np.arange(NUM_CLASSES)
    split_gender = np.where(np.isin(classes, [7, 10]), 0.495, 0.01 / 16)  # incorrect/30-59, male or female
    unsure_age = np.select([classes == 4, classes == 5], [0.7, 0.3], 0.0)  # wear/female, 30-59 or >=60
    preds = write_preds(tmp_path / "p.csv", ids, [class_probs(7, 0.95), split_gender, unsure_age])
    rows, total = pseudo_rows(preds, drawn / "eval", 0.9)
    assert total == 3 and len(rows) == 1
    row = rows.iloc[0]
    mask, gender, group = decode(7)
    assert row["path"] == str(drawn / "eval" / "images" / ids[0]) and row["label"] == 7
    assert (row["mask"], row["gender"], row["fold"]) == (MASKS[mask], GENDERS[gender], PSEUDO_FOLD)
    assert row["person"] == "pseudo:" + ids[0]  # each image its own person
    rows, _ = pseudo_rows(preds, drawn / "eval", 0.6)  # the 0.7 age now passes, the 50/50 gender never does
    assert rows["label"].tolist() == [7, 4]


def test_pseudo_weight_draws_a_pseudo_image_w_times_as_often():
    is_pseudo = np.array([False, False, True, True])
    assert weigh_pseudo(None, is_pseudo, 1.0) is None  # plain shuffling, as without --pseudo-weight
    np.testing.assert_allclose(weigh_pseudo(None, is_pseudo, 3.0), np.array([1, 1, 3, 3]) / 8)
    balanced = np.array([0.4, 0.1, 0.4, 0.1])
    np.testing.assert_allclose(weigh_pseudo(balanced, is_pseudo, 2.0), np.array([0.4, 0.1, 0.8, 0.2]) / 1.5)


@pytest.mark.slow
def test_training_with_extra_persons_and_pseudo_labels_learns_records_the_file_and_validates_neither(
        drawn, single_run, cli, tmp_path, monkeypatch):
    from maskkit.commands.predict import run as predict

    monkeypatch.chdir(tmp_path)
    utk_folder(drawn, tmp_path / "utk", persons=8)
    assert cli("import", "utk", "extra").exit_code == 0
    result = cli("split", drawn / "train", "--folds", FOLDS, "--extra", "extra/train", "-o", "folds.csv")
    assert result.exit_code == 0, result.stderr
    predict(single_run, drawn / "eval", out=tmp_path / "p.csv", device="cpu", workers=0)
    epochs = 8
    recipe = train_flags(tiny(epochs=epochs, balanced=True, pseudo="p.csv", pseudo_min=0.5, pseudo_weight=2.0))
    result = cli("train", "folds.csv", *recipe, "--runs-dir", "runs", "--name", "f0")
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "runs" / "f0"

    config = json.loads((run / "config.json").read_text())
    assert config["pseudo_sha256"] == file_sha256(tmp_path / "p.csv") and config["options"]["pseudo"] == "p.csv"
    assert config["pseudo_images"] == confident_count(tmp_path / "p.csv", 0.5) > 0
    assert config["pseudo_predicted"] == 8 * 7 and Path(config["pseudo_data"]) == drawn / "eval"  # beside train/
    steps = pd.read_csv(run / "steps.csv")  # an epoch draws as many images as train, the pseudo ones included
    assert len(steps) == epochs * ((config["train_images"] + config["pseudo_images"]) // 16)

    manifest = pd.read_csv("folds.csv", dtype={"person": str})
    extra = set(manifest.loc[manifest["fold"] == -1, "person"])
    assert len(extra) == 8 and config["train_persons"] == manifest.loc[manifest["fold"] != 0, "person"].nunique()
    val = pd.read_csv(run / "val_preds.csv", dtype={"person": str})
    assert set(val["ImageID"]) == set(manifest.loc[manifest["fold"] == 0, "path"])  # no extra, no eval image
    assert pd.read_csv(run / "metrics.csv")["val_f1"].max() > F1_FLOOR  # learns on held-out competition persons
    result = cli("runs", "runs", "--oof-out", "oof.csv")
    assert result.exit_code == 0, result.stderr
    oof = pd.read_csv("oof.csv", dtype={"person": str})
    assert not set(oof["person"]) & extra and sorted(oof["ImageID"]) == sorted(val["ImageID"])

    (tmp_path / "p.csv").write_text((tmp_path / "p.csv").read_text().replace("\n", "\r\n"))  # other bytes
    result = cli("train", "--resume", run, "--epochs", epochs + 1)
    assert_one_line_error(result, "p.csv", "changed since the run started")


# --- bad input ----------------------------------------------------------------------------------

def uniform_preds(root: Path) -> None:
    """p_uniform.csv: every X/eval image at 1/18 per class (no task reaches 0.9)."""
    ids = load_eval(root / "X" / "eval")["ImageID"]
    write_preds(root / "p_uniform.csv", ids, np.full((len(ids), NUM_CLASSES), 1 / NUM_CLASSES))


def train_images_preds(root: Path) -> None:
    """p_train.csv: sure predictions of X/train's images, keyed as a folder of images."""
    ids = sorted(str(p.relative_to(root / "X" / "train" / "images")) for p in (root / "X" / "train" / "images").rglob("*.jpg"))
    write_preds(root / "p_train.csv", ids, np.tile(class_probs(0, 0.99), (len(ids), 1)))


PSEUDO = ["train", "folds.csv", *TINY_FLAGS, "--name", "ps"]
BAD_CALLS = [
    bad("train --pseudo missing.csv", [*PSEUDO, "--pseudo", "missing.csv"], absent=["runs/ps"]),
    bad("train --pseudo a manifest", [*PSEUDO, "--pseudo", "folds.csv"], absent=["runs/ps"]),
    bad("train --pseudo of other images", [*PSEUDO, "--pseudo", "p.csv", "--pseudo-data", "X/train"],
        absent=["runs/ps"]),
    bad("train --pseudo none confident", [*PSEUDO, "--pseudo", "p_uniform.csv"], uniform_preds, absent=["runs/ps"]),
    bad("train --pseudo of training images", [*PSEUDO, "--pseudo", "p_train.csv", "--pseudo-data", "X/train/images"],
        train_images_preds, absent=["runs/ps"]),
    bad("train --pseudo-min 1.5", [*PSEUDO, "--pseudo", "p.csv", "--pseudo-min", "1.5"], absent=["runs/ps"]),
    bad("train --pseudo-weight 0", [*PSEUDO, "--pseudo", "p.csv", "--pseudo-weight", "0"], absent=["runs/ps"]),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)
