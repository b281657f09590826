"""`maskkit score`: the competition's metrics of a submission against a truth file (drawn eval set)."""

from __future__ import annotations

from io import StringIO

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from helpers import assert_one_line_error
from hostile import bad, empty_prob_cell, run_bad
from maskkit.commands.score import COLUMNS
from maskkit.contract.labels import decode, encode


def score_row(result) -> pd.Series:
    assert result.exit_code == 0, result.output
    table = pd.read_csv(StringIO(result.stdout))
    assert list(table.columns) == list(COLUMNS) and len(table) == 1
    return table.iloc[0]




@pytest.fixture
def truth(drawn):
    return drawn / "eval" / "truth.csv"


def test_truth_scores_perfectly_against_itself(cli, truth):
    row = score_row(cli("score", truth, truth))
    assert row["images"] == len(pd.read_csv(truth))
    assert (row[["macro_f1", "accuracy", "f1_mask", "f1_gender", "f1_age"]] == 1.0).all()


def test_scores_match_sklearn_in_any_row_order_and_split_by_task(cli, truth, tmp_path):
    table = pd.read_csv(truth, dtype={"ImageID": str})
    mask, gender, age = decode(table["ans"].to_numpy())
    wrong = np.random.default_rng(0).random(len(table)) < 0.3
    predicted = encode(mask, np.where(wrong, 1 - gender, gender), age)  # only genders go wrong
    submission = tmp_path / "submission.csv"
    pd.DataFrame({"ImageID": table["ImageID"], "ans": predicted}).sample(frac=1, random_state=1).to_csv(
        submission, index=False)

    result = cli("score", submission, truth)
    row = score_row(result)
    assert row["macro_f1"] == pytest.approx(f1_score(table["ans"], predicted, average="macro"), abs=1e-6)
    assert row["accuracy"] == pytest.approx(1 - wrong.mean(), abs=1e-6)
    assert row["f1_gender"] == pytest.approx(f1_score(gender, np.where(wrong, 1 - gender, gender),
                                                      average="macro"), abs=1e-6)
    assert row["f1_gender"] < 1 and row["f1_mask"] == 1 and row["f1_age"] == 1
    assert "F1 per class" in result.stderr and "macro_f1" in result.stderr


def test_out_file_and_confusion_picture(cli, truth, tmp_path):
    out, picture = tmp_path / "score.csv", tmp_path / "confusion.png"
    result = cli("score", truth, truth, "-o", out, "--confusion", picture)
    assert result.exit_code == 0 and result.stdout == ""
    assert pd.read_csv(out)["macro_f1"].iloc[0] == 1.0
    assert cv2.imread(str(picture)) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_bad_inputs_are_one_line_errors(cli, truth, tmp_path):
    table = pd.read_csv(truth, dtype={"ImageID": str})
    cases = {
        "missing": (table.iloc[1:], "no answer for 1 of"),
        "unknown_class": (table.assign(ans=table["ans"].where(table.index != 0, 18)), "ans outside 0..17"),
        "duplicate": (pd.concat([table, table.iloc[:1]]), "repeat an ImageID"),
        "stranger": (pd.concat([table, pd.DataFrame({"ImageID": ["zzz.jpg"], "ans": [0]})]), "not in"),
    }
    for name, (frame, needle) in cases.items():
        path = tmp_path / f"{name}.csv"
        frame[["ImageID", "ans"]].to_csv(path, index=False)
        assert_one_line_error(cli("score", path, truth), str(path), needle)
    assert_one_line_error(cli("score", tmp_path / "nowhere.csv", truth), "file not found")
    (tmp_path / "cols.csv").write_text("id,label\na,1\n")
    assert_one_line_error(cli("score", tmp_path / "cols.csv", truth), "missing column")
    assert_one_line_error(cli("score", truth, truth, "--confusion", tmp_path / "c.jpg"), "PNG")


@pytest.mark.parametrize("run_fixture", ["single_run", "multi_run"])
def test_best_val_f1_is_what_score_prints_for_the_runs_val_preds(request, cli, tmp_path, run_fixture):
    """Training's best-epoch F1 and `maskkit score` are one definition (classes present, tasks decoded)."""
    from maskkit.contract.runfolder import best_row, read_metrics

    run = request.getfixturevalue(run_fixture)
    preds = pd.read_csv(run / "val_preds.csv", dtype={"ImageID": str})
    truth = tmp_path / "truth.csv"
    preds[["ImageID", "label"]].rename(columns={"label": "ans"}).to_csv(truth, index=False)
    row = score_row(cli("score", run / "val_preds.csv", truth))
    best = best_row(read_metrics(run))
    assert row["images"] == len(preds)
    assert row["macro_f1"] == pytest.approx(float(best["val_f1"]), abs=1e-5)
    assert row["accuracy"] == pytest.approx(float(best["val_acc"]), abs=1e-5)
    for task in ("mask", "gender", "age"):
        assert row[f"f1_{task}"] == pytest.approx(float(best[f"f1_{task}"]), abs=1e-5), task


def test_an_unlabelled_truth_is_scored_with_a_warning(cli, drawn, tmp_path):
    info = pd.read_csv(drawn / "eval" / "info.csv")
    unlabelled = tmp_path / "info.csv"
    info.assign(ans=0).to_csv(unlabelled, index=False)  # the competition's info.csv: every ans 0
    result = cli("score", drawn / "eval" / "truth.csv", unlabelled)
    score_row(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "unlabelled info.csv" in warnings[0] and str(unlabelled) in warnings[0]
    assert "warning" not in cli("score", drawn / "eval" / "truth.csv", drawn / "eval" / "truth.csv").stderr


def test_no_header_appends_rows_to_one_table(cli, truth, tmp_path):
    first, second = cli("score", truth, truth), cli("score", truth, truth, "--no-header")
    assert second.exit_code == 0, second.output
    table = pd.read_csv(StringIO(first.stdout + second.stdout))  # as `>> scores.csv` after a first `>`
    assert list(table.columns) == list(COLUMNS) and len(table) == 2
    assert_one_line_error(cli("score", truth, truth, "--no-header", "-o", tmp_path / "s.csv"), "--no-header")


def test_quiet_prints_the_row_alone_and_keeps_warnings(cli, truth, drawn, tmp_path):
    """--quiet, for loops: the same CSV row, no tables on stderr; a warning still says what is wrong."""
    loud, quiet = cli("score", truth, truth), cli("score", truth, truth, "--quiet")
    assert score_row(quiet).equals(score_row(loud))
    assert "F1 per class" in loud.stderr and quiet.stderr == ""
    rows = [cli("score", truth, truth, "-q", "--no-header").stdout for _ in range(2)]
    assert rows[0] == rows[1] and len(rows[0].splitlines()) == 1  # appended rows, nothing else
    unlabelled = tmp_path / "info.csv"
    pd.read_csv(drawn / "eval" / "info.csv").assign(ans=0).to_csv(unlabelled, index=False)
    warned = cli("score", truth, unlabelled, "--quiet")
    assert warned.exit_code == 0 and warned.stderr.startswith("warning:") and len(warned.stderr.splitlines()) == 1


def test_a_manifest_is_a_truth(cli, manifest_path, tmp_path):
    """A manifest's path,label are read as ImageID,ans; its checks still apply."""
    manifest = pd.read_csv(manifest_path, dtype={"person": str})
    answers = tmp_path / "answers.csv"
    labels = manifest["label"].to_numpy()
    wrong = np.arange(len(manifest)) % 4 == 0
    pd.DataFrame({"ImageID": manifest["path"], "ans": np.where(wrong, (labels + 1) % 18, labels)}).to_csv(
        answers, index=False)
    row = score_row(cli("score", answers, manifest_path))
    assert row["images"] == len(manifest)
    assert row["accuracy"] == pytest.approx(1 - wrong.mean(), abs=1e-6)
    assert row["macro_f1"] == pytest.approx(f1_score(labels, np.where(wrong, (labels + 1) % 18, labels),
                                                     average="macro"), abs=1e-6)
    broken = tmp_path / "broken.csv"
    manifest.assign(label=manifest["label"].where(manifest.index != 3, 40)).to_csv(broken, index=False)
    assert_one_line_error(cli("score", answers, broken), str(broken), "label outside 0..17")


# --- bad input ----------------------------------------------------------------------------------

BAD_CALLS = [
    bad("score an empty probability cell", ["score", "q.csv", "X/eval/truth.csv", "-o", "s.csv"], empty_prob_cell,
        absent=["s.csv"]),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)
