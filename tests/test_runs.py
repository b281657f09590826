"""`maskkit runs`: one table of runs, CSV when piped."""

from __future__ import annotations

import shutil
from io import StringIO

import pandas as pd
import pytest

from maskkit.commands.runs import COLUMNS


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, single_run, multi_run):
    """A runs/ folder holding the two shared trained runs and one that has not finished an epoch."""
    root = tmp_path_factory.mktemp("table") / "runs"
    for run in (single_run, multi_run):
        shutil.copytree(run, root / run.name)
    (root / "fresh").mkdir()
    shutil.copy(root / "multi" / "config.json", root / "fresh" / "config.json")
    (root / "notes").mkdir()  # not a run: ignored
    return root


def test_runs_table_is_csv_when_piped_best_first(cli, runs_dir, monkeypatch):
    monkeypatch.chdir(runs_dir.parent)
    result = cli("runs")  # default: every run under runs/
    assert result.exit_code == 0, result.stderr
    table = pd.read_csv(StringIO(result.stdout))
    assert list(table.columns) == list(COLUMNS)
    assert sorted(table["name"]) == ["fresh", "multi", "single"]
    assert table["name"].iloc[-1] == "fresh" and pd.isna(table["val_f1"].iloc[-1])
    assert table["val_f1"].iloc[0] >= table["val_f1"].iloc[1]
    for _, row in table.dropna(subset=["val_f1"]).iterrows():
        metrics = pd.read_csv(runs_dir / row["name"] / "metrics.csv")
        best = metrics.loc[metrics["val_f1"].idxmax()]
        assert row["best_epoch"] == best["epoch"]
        assert row["val_f1"] == pytest.approx(best["val_f1"], abs=1e-4)
        assert row["f1_age"] == pytest.approx(best["f1_age"], abs=1e-4)
    multi = table.set_index("name").loc["multi"]
    assert (multi["backbone"], multi["heads"], multi["age_weight"], multi["input_size"]) == ("test_resnet", "multi", 0.1, "40x48")
    assert table.set_index("name").loc["single", "loss"] == "ce+balanced"


def test_named_runs_and_bad_folders(cli, runs_dir, tmp_path, monkeypatch):
    result = cli("runs", runs_dir / "single")
    assert result.exit_code == 0
    assert pd.read_csv(StringIO(result.stdout))["name"].tolist() == ["single"]
    for bad, expected in ((runs_dir / "notes", "no config.json"), (tmp_path / "nowhere", "not found")):
        result = cli("runs", bad)
        assert result.exit_code == 2 and expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    result = cli("runs")
    assert result.exit_code == 2 and "holds no run folders" in result.stderr


def fold_copy(source, target, fold: int, rows, **option_changes) -> None:
    """A run folder like `source` for another fold: its config says `fold`, its val_preds.csv holds `rows`."""
    import json

    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["fold"] = config["options"]["fold"] = fold
    config["options"].update(option_changes)
    (target / "config.json").write_text(json.dumps(config))
    rows.to_csv(target / "val_preds.csv", index=False)


def test_fold_runs_of_one_recipe_pool_their_out_of_fold_predictions(cli, runs_dir, tmp_path):
    from sklearn.metrics import f1_score

    multi = runs_dir / "multi"
    preds = pd.read_csv(multi / "val_preds.csv", dtype={"ImageID": str})
    other = preds.assign(ImageID="other/" + preds["ImageID"],  # another fold's images, predicted otherwise
                         ans=pd.read_csv(runs_dir / "single" / "val_preds.csv")["ans"])
    root = tmp_path / "runs"
    shutil.copytree(multi, root / "m-f0")
    fold_copy(multi, root / "m-f1", 1, other, device="cuda", workers=8)  # runtime options: same recipe
    fold_copy(multi, root / "m-seed7-f1", 1, other, seed=7)  # another seed: another recipe

    result = cli("runs", root / "m-f0", root / "m-f1", root / "m-seed7-f1")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(StringIO(result.stdout)).set_index("name")
    assert table.loc["m-f0", "recipe"] == table.loc["m-f1", "recipe"] != table.loc["m-seed7-f1", "recipe"]
    assert table.loc["m-f0", "recipe"].startswith("m#")
    pooled = pd.concat([preds, other])
    assert table.loc["m-f1", "oof_images"] == len(pooled)
    assert table.loc["m-f1", "recipe_folds"] == "0,1"
    assert table.loc["m-f1", "oof_f1"] == pytest.approx(
        f1_score(pooled["label"], pooled["ans"], average="macro"), abs=1e-4)
    assert table.loc["m-f1", "oof_f1_gender"] == pytest.approx(
        f1_score(pooled["label"] // 3 % 2, pooled["ans"] // 3 % 2, average="macro"), abs=1e-4)
    seed7 = table.loc["m-seed7-f1"]
    assert seed7["oof_images"] == len(other) and seed7["recipe_folds"] == "1"
    assert seed7["oof_f1"] == pytest.approx(f1_score(other["label"], other["ans"], average="macro"), abs=1e-4)
