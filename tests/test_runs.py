"""`maskkit runs`: one table of runs, CSV when piped."""

from __future__ import annotations

import shutil
from io import StringIO

import pandas as pd
import pytest

from hostile import RUN, bad, config_a_list, metrics_epoch_x, run_bad
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
    assert "skipped 1 without config.json" in result.stderr and "notes" in result.stderr  # one line, not an error
    header, *lines = result.stdout.splitlines()
    best_epoch = header.split(",").index("best_epoch")
    assert all("." not in line.split(",")[best_epoch] for line in lines)  # 2, not 2.0, beside the fresh run's empty cell
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
    for bad, expected in ((runs_dir / "notes", "holds no run folders"), (tmp_path / "nowhere", "not found")):
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
    assert table.loc["m-f0", "recipe"].startswith("test_resnet#")  # the backbone, not a run name
    pooled = pd.concat([preds, other])
    assert table.loc["m-f1", "oof_images"] == len(pooled)
    assert table.loc["m-f1", "oof_folds"] == 2
    assert table.loc["m-f1", "oof_f1"] == pytest.approx(
        f1_score(pooled["label"], pooled["ans"], average="macro"), abs=1e-4)
    assert table.loc["m-f1", "oof_f1_gender"] == pytest.approx(
        f1_score(pooled["label"] // 3 % 2, pooled["ans"] // 3 % 2, average="macro"), abs=1e-4)
    seed7 = table.loc["m-seed7-f1"]
    assert seed7["oof_images"] == len(other) and seed7["oof_folds"] == 1
    assert seed7["oof_f1"] == pytest.approx(f1_score(other["label"], other["ans"], average="macro"), abs=1e-4)


def recipe_runs(runs_dir, root):
    """root/ holding two fold runs of one recipe (m-f0, m-f1), a --fold all run of it, a tune trial of
    another recipe one level deeper, and a stray folder; returns (fold 0's, fold 1's) val_preds."""
    import json

    multi = runs_dir / "multi"
    preds = pd.read_csv(multi / "val_preds.csv", dtype={"ImageID": str})
    other = preds.assign(ImageID="other/" + preds["ImageID"])
    shutil.copytree(multi, root / "m-f0")
    fold_copy(multi, root / "m-f1", 1, other, threads=3, cache="none")
    shutil.copytree(multi, root / "m-all")
    config = json.loads((root / "m-all" / "config.json").read_text())
    config["fold"] = config["options"]["fold"] = "all"
    (root / "m-all" / "config.json").write_text(json.dumps(config))
    (root / "m-all" / "val_preds.csv").unlink()
    fold_copy(multi, root / "tune-lr" / "trial-0", 0, preds, lr=0.5)
    (root / "scratch").mkdir()
    return preds, other


def test_parent_folder_fold_all_runs_and_oof_out(cli, runs_dir, tmp_path):
    root = tmp_path / "runs"
    preds, other = recipe_runs(runs_dir, root)
    result = cli("runs", root)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(StringIO(result.stdout)).set_index("name")
    assert sorted(table.index) == ["m-all", "m-f0", "m-f1", "trial-0"]
    assert "scratch" in result.stderr
    recipe = table.loc["m-f0", "recipe"]
    assert table.loc["m-f1", "recipe"] == table.loc["m-all", "recipe"] == recipe  # fold, threads, cache: same recipe
    assert table.loc["trial-0", "recipe"] != recipe
    assert table.loc["m-all", "oof_folds"] == 2 and table.loc["trial-0", "oof_folds"] == 1
    alone = pd.read_csv(StringIO(cli("runs", root / "m-f0", root / "m-f1").stdout))
    assert set(alone["recipe"]) == {recipe}  # a --fold all run joining changes no id

    out = tmp_path / "oof.csv"
    refused = cli("runs", root, "--oof-out", out)
    assert refused.exit_code == 2 and "--recipe" in refused.stderr and not out.exists()
    assert [line for line in refused.stderr.splitlines() if "error" in line] == refused.stderr.splitlines()[-1:]
    result = cli("runs", root, "--recipe", recipe.split("#")[1], "--oof-out", out)
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(StringIO(result.stdout))["name"]) == {"m-f0", "m-f1", "m-all"}
    oof = pd.read_csv(out, dtype={"ImageID": str})
    assert list(oof.columns[:2]) == ["ImageID", "ans"] and list(oof.columns[-3:]) == ["person", "label", "fold"]
    expected = pd.concat([preds, other], ignore_index=True)
    assert oof["ImageID"].tolist() == expected["ImageID"].tolist()
    assert oof["fold"].tolist() == [0] * len(preds) + [1] * len(other)
    p = [f"p{i}" for i in range(18)]
    assert (oof[p].to_numpy() == pytest.approx(expected[p].to_numpy(), abs=1e-9))
    assert oof["label"].tolist() == expected["label"].tolist()
    score = cli("score", out, out)  # a prediction CSV like any other
    assert score.exit_code == 0, score.output


def test_terminal_table_keeps_names_whole_and_columns_choose(runs_dir, tmp_path, monkeypatch):
    from rich.console import Console

    from maskkit.commands import runs

    root = tmp_path / "runs"
    long_name = "effb2-multi-age0.1-ls0.1-lr3e-4-fold-0"
    shutil.copytree(runs_dir / "multi", root / long_name)
    shutil.copytree(runs_dir / "single", root / "single")
    screen = StringIO()
    monkeypatch.setattr(runs, "console", Console(file=screen, width=80, force_terminal=False))
    monkeypatch.setattr(runs.sys.stdout, "isatty", lambda: True)
    table = runs.run([root])
    name_cells = "".join(line.split("│")[1].strip() for line in screen.getvalue().splitlines() if line.startswith("│"))
    assert long_name in name_cells  # whole: folded onto a second line at 80 columns, never cut
    assert "…" not in screen.getvalue()
    header = next(line for line in screen.getvalue().splitlines() if "name" in line and "val_f1" in line)
    assert "backbone" not in header and "oof_f1" in header  # the compact default
    screen.truncate(0)
    runs.run([root], columns="name,backbone,loss")
    assert "ce+balanced" in screen.getvalue() and "val_f1" not in screen.getvalue().split("recipes")[0]
    assert len(table) == 2
    with pytest.raises(runs.MaskkitError, match="--columns 'name,bogus'"):
        runs.run([root], columns="name,bogus")


def with_metrics(run, val_f1: list[float], epochs: int, **option_changes) -> None:
    """Rewrite a copied run's metrics.csv to `val_f1` per epoch and its config to ask `epochs` epochs."""
    import json

    metrics = pd.read_csv(run / "metrics.csv").iloc[[0] * len(val_f1)].reset_index(drop=True)
    metrics = metrics.assign(epoch=range(1, len(val_f1) + 1), val_f1=val_f1)
    metrics.to_csv(run / "metrics.csv", index=False)
    config = json.loads((run / "config.json").read_text())
    config["options"].update(epochs=epochs, **option_changes)
    (run / "config.json").write_text(json.dumps(config))


def test_unfinished_runs_are_marked_and_rank_after_finished_ones(cli, runs_dir, tmp_path):
    from maskkit.contract.files import folder_lock

    root = tmp_path / "runs"
    preds = pd.read_csv(runs_dir / "multi" / "val_preds.csv", dtype={"ImageID": str})
    shutil.copytree(runs_dir / "multi", root / "done")
    with_metrics(root / "done", [0.2, 0.3, 0.4], 3)
    fold_copy(runs_dir / "multi", root / "killed", 0, preds.assign(ans=preds["label"]), lr=0.09)  # perfect OOF
    with_metrics(root / "killed", [0.8, 0.9, 0.95], 6)  # a tune trial killed after 3 of 6 epochs
    fold_copy(runs_dir / "multi", root / "patient", 0, preds, lr=0.08)
    with_metrics(root / "patient", [0.1, 0.35, 0.3, 0.2], 6, patience=2)  # stopped by --patience: done
    fold_copy(runs_dir / "multi", root / "busy", 0, preds, lr=0.07)
    with_metrics(root / "busy", [0.99], 6)

    from maskkit.commands import runs

    with folder_lock(root / "busy", "train"):  # a run training now
        result = cli("runs", root)
        _, recipes, _ = runs.runs_table([root], with_recipes=True)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(StringIO(result.stdout))
    assert table[["name", "status"]].values.tolist() == [
        ["done", "done"], ["patient", "done"], ["busy", "running"], ["killed", "unfinished"]]
    assert table.set_index("name").loc["killed", "epochs"] == "3/6"
    assert "busy,unfinished," in cli("runs", root).stdout  # its lock released: no longer running
    killed = table.set_index("name").loc["killed", "recipe"]
    assert recipes["status"].tolist() == ["done", "done", "running", "unfinished"]
    assert recipes["recipe"].iloc[-1] == killed
    assert recipes.set_index("recipe").loc[killed, "oof_f1"] == 1.0  # the best score, ranked last


def test_a_recipe_pooling_more_folds_outranks_a_one_fold_oof(cli, runs_dir, tmp_path):
    multi = runs_dir / "multi"
    preds = pd.read_csv(multi / "val_preds.csv", dtype={"ImageID": str})
    other = preds.assign(ImageID="other/" + preds["ImageID"])
    root = tmp_path / "runs"
    shutil.copytree(multi, root / "m-f0")
    fold_copy(multi, root / "m-f1", 1, other)
    fold_copy(multi, root / "lucky-f0", 0, preds.assign(ans=preds["label"]), seed=7)  # one fold, perfect

    from maskkit.commands import runs

    table, recipes, _ = runs.runs_table([root], with_recipes=True)
    assert recipes["oof_folds"].tolist() == [2, 1]
    assert recipes["oof_f1"].iloc[1] == 1.0 > recipes["oof_f1"].iloc[0]
    assert table.set_index("name")["oof_folds"].to_dict() == {"m-f0": 2, "m-f1": 2, "lucky-f0": 1}
    result = cli("runs", root, "--columns", "name,oof_folds,oof_f1")
    assert result.stdout.splitlines()[0] == "name,oof_folds,oof_f1"


def test_runs_of_the_same_name_are_told_apart_by_their_folder(cli, runs_dir, tmp_path):
    root = tmp_path / "runs"
    for study in ("tune-s1", "tune-s2"):
        shutil.copytree(runs_dir / "multi", root / study / "trial-0000")
    shutil.copytree(runs_dir / "single", root / "single")
    result = cli("runs", root)
    assert result.exit_code == 0, result.output
    names = pd.read_csv(StringIO(result.stdout))["name"]
    assert sorted(names) == ["single", "tune-s1/trial-0000", "tune-s2/trial-0000"]


def test_terminal_table_never_hides_a_requested_column(runs_dir, tmp_path, monkeypatch):
    from rich.console import Console

    from maskkit.commands import runs

    root = tmp_path / "a-rather-long-folder-of-runs"
    long_name = "effb2-multi-dldl0.3-ls0.08-lr3.5e-3-fold-0"
    shutil.copytree(runs_dir / "multi", root / long_name)
    shutil.copytree(runs_dir / "single", root / "single")
    with_metrics(root / "single", [0.0035123, 0.001], 2)
    columns = "name,backbone,recipe,path,val_f1,f1_mask,f1_gender,f1_age,oof_f1,lr,loss,input_size,epochs"
    screen = StringIO()
    monkeypatch.setattr(runs, "console", Console(file=screen, width=80, force_terminal=False))
    monkeypatch.setattr(runs.sys.stdout, "isatty", lambda: True)
    table = runs.run([root], columns=columns)
    lines = [line for line in screen.getvalue().split("recipes:")[0].splitlines() if line.startswith("│")]
    names = columns.split(",")
    cells = {c: "".join(line.split("│")[1 + i].strip() for line in lines) for i, c in enumerate(names)}
    for _, row in table.iterrows():
        for column in ("name", "recipe", "path"):  # folded onto more lines, never cut
            assert str(row[column]) in cells[column]
    assert "0.003512" in cells["val_f1"]  # 4 significant digits, not 0.003 or 0
    header = next(line for line in screen.getvalue().splitlines() if line.startswith("┃"))
    assert [h.strip() for h in header.split("┃")[1:-1]] == names  # every header whole
    assert "…" not in screen.getvalue()


def test_a_broken_run_is_skipped_with_its_reason_and_hides_no_other(cli, runs_dir, tmp_path):
    import json

    root = tmp_path / "runs"
    shutil.copytree(runs_dir, root)
    config = json.loads((root / "single" / "config.json").read_text())
    config["options"]["age_weight"] = "x"  # a hand-edited (or hostile) config.json
    (root / "single" / "config.json").write_text(json.dumps(config))
    result = cli("runs", root)
    assert result.exit_code == 0, result.stderr
    assert sorted(pd.read_csv(StringIO(result.stdout))["name"]) == ["fresh", "multi"]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("runs: skipped:")]
    assert len(skipped) == 1 and "single" in skipped[0] and "age_weight" in skipped[0]
    for run in ("multi", "fresh"):
        (root / run / "config.json").write_text("{oops")
    result = cli("runs", root)
    assert result.exit_code == 2 and "no run could be read" in result.stderr.strip().splitlines()[-1]


# --- bad input ----------------------------------------------------------------------------------

BAD_CALLS = [
    bad("runs: metrics epoch x", ["runs", RUN], metrics_epoch_x),
    bad("runs: config.json a list", ["runs", RUN], config_a_list),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)
