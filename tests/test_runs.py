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
