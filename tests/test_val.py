"""`maskkit val`: a run's best.pt re-scored on its own validation fold or on any labelled images."""

from __future__ import annotations

import json
import shutil
from io import StringIO

import pandas as pd
import pytest

from helpers import one_thread
from maskkit.contract.predictions import PROB_COLUMNS
from maskkit.contract.runfolder import best_row, read_metrics
from maskkit.engine.metrics import SCORE_COLUMNS


def score_row(result) -> pd.Series:
    assert result.exit_code == 0, result.stderr
    table = pd.read_csv(StringIO(result.stdout))
    assert list(table.columns) == list(SCORE_COLUMNS) and len(table) == 1
    return table.iloc[0]


@pytest.mark.parametrize("which", ["single_run", "multi_run"])
def test_val_of_a_fresh_run_reproduces_its_best_val_f1(which, request, cli, tmp_path):
    """Same weights, same images, same preprocessing: the best epoch's scores of metrics.csv again,
    and predictions keyed (and scored) like val_preds.csv."""
    run = request.getfixturevalue(which)
    out = tmp_path / "val.csv"
    with one_thread():
        result = cli("val", run, "--device", "cpu", "--workers", "0", "-o", out)
    row = score_row(result)
    best = best_row(read_metrics(run))
    assert row["macro_f1"] == pytest.approx(float(best["val_f1"]), abs=1e-6)
    assert row["accuracy"] == pytest.approx(float(best["val_acc"]), abs=1e-6)
    for task in ("mask", "gender", "age"):
        assert row[f"f1_{task}"] == pytest.approx(float(best[f"f1_{task}"]), abs=1e-6)
    assert "F1 per class" in result.stderr  # the tables `score` prints
    written = pd.read_csv(out, dtype={"ImageID": str, "person": str})
    original = pd.read_csv(run / "val_preds.csv", dtype={"ImageID": str, "person": str})
    assert list(written.columns) == list(original.columns) == ["ImageID", "ans", *PROB_COLUMNS, "person", "label"]
    assert sorted(written["ImageID"]) == sorted(original["ImageID"])
    merged = written.merge(original, on="ImageID", suffixes=("", "_train"))
    assert (merged["label"] == merged["label_train"]).all() and (merged["person"] == merged["person_train"]).all()
    assert (merged[PROB_COLUMNS].to_numpy() - merged[[f"{c}_train" for c in PROB_COLUMNS]].to_numpy()).max() < 1e-4
    manifest = pd.read_csv(run / "manifest.csv", dtype={"person": str})
    fold = json.loads((run / "config.json").read_text())["options"]["fold"]
    manifest[manifest["fold"] == fold].to_csv(tmp_path / "fold.csv", index=False)
    again = score_row(cli("score", out, tmp_path / "fold.csv"))  # the fold's manifest as truth
    assert again[list(SCORE_COLUMNS[1:])].tolist() == row[list(SCORE_COLUMNS[1:])].tolist()


@pytest.mark.slow
def test_val_on_a_manifest_and_on_the_train_folder_and_flip_tta(multi_run, manifest_path, drawn, cli, tmp_path):
    """MANIFEST: every labelled image in it, the run's training images counted in a warning; DATA/train
    scores the same images as the manifest split wrote from it; --tta flip changes the probabilities."""
    fold = json.loads((multi_run / "config.json").read_text())["options"]["fold"]
    manifest = pd.read_csv(manifest_path, dtype={"person": str})
    held_out = tmp_path / "held_out.csv"
    manifest[manifest["fold"] == fold].to_csv(held_out, index=False)
    with one_thread():
        own = score_row(cli("val", multi_run, "--device", "cpu", "--workers", "0", "-q"))
        given = cli("val", multi_run, held_out, "--device", "cpu", "--workers", "0", "-q")
        whole = cli("val", multi_run, manifest_path, "--device", "cpu", "--workers", "0", "-q",
                    "-o", tmp_path / "whole.csv")
        folder = cli("val", multi_run, drawn / "train", "--device", "cpu", "--workers", "0", "-q", "--no-header")
        flip = cli("val", multi_run, "--device", "cpu", "--workers", "0", "-q", "--tta", "flip",
                   "-o", tmp_path / "flip.csv")
        plain = cli("val", multi_run, "--device", "cpu", "--workers", "0", "-q", "-o", tmp_path / "plain.csv")
    assert given.stderr.count("warning") == 0 and "F1 per class" not in given.stderr
    assert score_row(given)[list(SCORE_COLUMNS[2:])].tolist() == own[list(SCORE_COLUMNS[2:])].tolist()
    trained = int((manifest["fold"] != fold).sum())
    assert f"warning: {trained} of {len(manifest)} images" in whole.stderr, whole.stderr
    assert score_row(whole)["images"] == len(manifest)
    assert folder.exit_code == 0, folder.stderr
    assert folder.stdout.strip().split(",")[2:] == whole.stdout.splitlines()[1].split(",")[2:]  # same images, same scores
    assert flip.exit_code == 0 and plain.exit_code == 0, flip.stderr + plain.stderr
    with_flip, without = (pd.read_csv(tmp_path / f"{name}.csv") for name in ("flip", "plain"))
    assert flip.exit_code == 0 and (with_flip["ImageID"] == without["ImageID"]).all()
    assert (with_flip[PROB_COLUMNS] - without[PROB_COLUMNS]).abs().to_numpy().max() > 1e-3


def test_val_refuses_what_it_cannot_score_in_one_line(multi_run, tmp_path, cli):
    full = tmp_path / "full"
    shutil.copytree(multi_run, full)
    config = json.loads((full / "config.json").read_text())
    config["options"]["fold"] = "all"
    (full / "config.json").write_text(json.dumps(config))
    changed = tmp_path / "changed"
    shutil.copytree(multi_run, changed)
    with open(changed / "manifest.csv", "a") as f:
        f.write("\n")
    cases = [((full,), "--fold all"), ((tmp_path / "nowhere",), "not found"),
             ((changed,), "changed since the run trained"), ((multi_run, tmp_path / "none.csv"), "file not found"),
             ((multi_run, "-o", "-"), "name a file for the predictions")]
    for args, needle in cases:
        result = cli("val", *args, "--device", "cpu")
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], (args, result.stderr)
        assert lines[0].startswith("maskkit val: error: ")
