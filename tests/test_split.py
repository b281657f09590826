"""`maskkit split`: person-disjoint stratified folds, reproducible, with fixes applied first."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pandas as pd
import pytest

from hostile import (assert_full_disk_leaves_no_file, assert_refused_while_parsing, bad, first_person, fixes_age,
                     fixes_climbing, run_bad, train_csv_age)
from maskkit.contract.fixes import read_fixes
from maskkit.contract.labels import age_group
from maskkit.contract.manifest import MANIFEST_COLUMNS


def read_manifest(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype={"person": str})


def split_ok(cli, *args) -> pd.DataFrame:
    result = cli("split", *args)
    assert result.exit_code == 0, result.stderr
    return read_manifest(result.stdout)


def test_folds_are_person_disjoint_and_balanced_per_stratum(drawn, cli):
    result = cli("split", drawn / "train", "--folds", 3, "--seed", 7)
    assert result.exit_code == 0, result.stderr
    manifest = read_manifest(result.stdout)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert (manifest.groupby("person")["fold"].nunique() == 1).all()
    assert set(manifest["fold"]) == {0, 1, 2}
    persons = manifest.groupby("person").first()
    persons["stratum"] = persons["gender"] + "/" + pd.Series(age_group(persons["age"].to_numpy()), index=persons.index).astype(str)
    for stratum, group in persons.groupby("stratum"):
        counts = group["fold"].value_counts().reindex(range(3), fill_value=0)
        ideal = len(group) / 3
        assert (abs(counts - ideal) < 1).all(), (stratum, counts.tolist())
    assert "images per class and fold" in result.stderr and "no person in two folds" in result.stderr


def test_same_seed_is_byte_identical_and_another_seed_differs(drawn, cli, tmp_path):
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.csv"
        result = cli("split", drawn / "train", "--folds", 3, "--seed", seed, "-o", out)
        assert result.exit_code == 0 and result.stdout == ""
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_a_short_stratum_is_named_in_a_warning_and_persons_stay_disjoint(drawn, cli, tmp_path):
    out = tmp_path / "m.csv"
    result = cli("split", drawn / "train", "--folds", 12, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "warning" in result.stderr and "--folds 12" in result.stderr and "male/>=60 has 4" in result.stderr
    assert "or fewer" not in result.stderr  # no advice to use the value it just accepted
    manifest = pd.read_csv(out, dtype={"person": str})
    assert (manifest.groupby("person")["fold"].nunique() == 1).all()
    assert manifest["fold"].nunique() == 12


def test_impossible_fold_counts_are_one_line_and_exit_2(drawn, cli, tmp_path):
    out = tmp_path / "m.csv"
    result = cli("split", drawn / "train", "--folds", 17, "-o", out)  # the largest stratum has 16 persons
    assert result.exit_code == 2 and "female/<30 has 16" in result.stderr and "--folds 16 or fewer" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    result = cli("split", drawn / "train", "--folds", 1)
    assert result.exit_code == 2 and "at least 2 folds" in result.stderr


def rename_person(train: Path, folder: str, new_folder: str) -> None:
    """Give a drawn person a real competition folder name (id, gender, race, age), train.csv to match."""
    (train / "images" / folder).rename(train / "images" / new_folder)
    table = pd.read_csv(train / "train.csv", dtype={"id": str})
    new_id, gender, race, age = new_folder.split("_")
    table.loc[table["path"] == folder, ["id", "gender", "race", "age", "path"]] = [new_id, gender, race, int(age), new_folder]
    table.to_csv(train / "train.csv", index=False)


def test_known_fixes_correct_the_real_competition_ids(drawn_copy, cli):
    train = drawn_copy / "train"
    table = pd.read_csv(train / "train.csv", dtype={"id": str})
    real = ["006359_female_Asian_18", "004418_male_Asian_20",  # whole folder names of the real data
            "000664_female_Asian_55", "000767_female_Asian_56", "001498-1_male_Asian_23", "004432_male_Asian_43",
            "005223_male_Asian_22", "000020_female_Asian_50"]  # 8 of known's 14 persons: a shipped list
    for folder, new_folder in zip(table["path"], real):  # applies where most of its persons are
        rename_person(train, folder, new_folder)

    result = cli("split", train, "--folds", 2, "--fixes", "known")
    assert result.exit_code == 0, result.stderr
    manifest = read_manifest(result.stdout)
    fixed = manifest[manifest["person"] == "006359"]
    assert set(fixed["gender"]) == {"male"}
    swapped = manifest[manifest["person"] == "004418"]
    swapped = swapped.set_index(swapped["path"].map(lambda p: Path(p).stem))
    assert swapped.loc["incorrect_mask", "mask"] == "not_wear"
    assert swapped.loc["normal", "mask"] == "incorrect"
    assert swapped.loc["normal", "label"] == 6 + 0 + age_group(20)  # incorrect, male, under 30
    # targets absent from this dataset are reported, not fatal
    assert "not in this dataset" in result.stderr and "006360" in result.stderr


def test_known_fixes_leave_a_drawn_dataset_alone(drawn, cli):
    """Drawn persons share ids with the real data (000020, 004418...), never their whole folder names."""
    table = pd.read_csv(drawn / "train" / "train.csv", dtype={"id": str})
    assert "000020" in set(table["id"]) and not table["path"].eq("000020_female_Asian_50").any()
    plain = cli("split", drawn / "train", "--folds", 2)
    fixed = cli("split", drawn / "train", "--folds", 2, "--fixes", "known")
    assert fixed.exit_code == 0, fixed.stderr
    assert fixed.stdout == plain.stdout
    assert f"0 of {len(read_fixes('known'))} fixes applied" in fixed.stderr


def test_repeated_fixes_apply_in_the_order_given(drawn, cli, tmp_path):
    person = pd.read_csv(drawn / "train" / "train.csv", dtype={"id": str})["id"].iloc[0]
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text(f"target,column,old,new,reason\n{person},age,,61,looks old\n")
    second.write_text(f"target,column,old,new,reason\n{person},age,61,25,the first fix was wrong\n")

    def age(*fixes):
        manifest = split_ok(cli, drawn / "train", "--folds", 2, *[a for f in fixes for a in ("--fixes", f)])
        return set(manifest.loc[manifest["person"] == person, "age"])

    assert age(first, second) == {25}  # the second sees the first's 61
    assert age(second, first) == {61}  # the second's old value (61) does not hold yet: skipped, then 61


def test_fixes_file_with_an_unknown_column_is_refused(drawn, cli, tmp_path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("target,column,old,new,reason\n000001,race,Asian,Other,typo\n")
    result = cli("split", drawn / "train", "--fixes", fixes)
    assert result.exit_code == 2 and str(fixes) in result.stderr and "'race'" in result.stderr
    fixes.write_text("who,what\n000001,gender\n")
    result = cli("split", drawn / "train", "--fixes", fixes)
    assert result.exit_code == 2 and "missing column(s) target" in result.stderr


def test_fixes_never_touch_the_image_files(drawn_copy, cli, tmp_path):
    train = drawn_copy / "train"
    before = {p: p.stat().st_mtime_ns for p in train.rglob("*")}
    person = pd.read_csv(train / "train.csv", dtype={"id": str})["id"].iloc[0]
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(f"target,column,old,new,reason,score\n{person},age,,61,looks old,0.9\n")
    manifest = split_ok(cli, train, "--folds", 2, "--fixes", fixes)
    rows = manifest[manifest["person"] == person]
    assert set(rows["age"]) == {61} and set(rows["label"] % 3) == {2}
    assert {p: p.stat().st_mtime_ns for p in train.rglob("*")} == before


@pytest.mark.slow
def test_injected_errors_applied_as_fixes_restore_the_truth(tmp_path, cli):
    from maskkit.commands import synth
    from maskkit.options import Size

    noisy, clean = tmp_path / "noisy", tmp_path / "clean"
    synth.run(noisy, persons=30, eval_persons=2, size=Size(width=32, height=40), seed=5, noise=0.15)
    synth.run(clean, persons=30, eval_persons=2, size=Size(width=32, height=40), seed=5)
    fixes = noisy / "train" / "injected_errors.csv"
    assert len(pd.read_csv(fixes)) > 0

    def labels(manifest: pd.DataFrame) -> pd.Series:
        """Labels keyed by what the image shows (its bytes), since swapped files keep their names."""
        key = manifest["path"].map(lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest())
        return manifest.set_index(key.rename(None))["label"].sort_index()

    truth = labels(split_ok(cli, clean / "train", "--folds", 2))
    noisy_labels = labels(split_ok(cli, noisy / "train", "--folds", 2))
    fixed = labels(split_ok(cli, noisy / "train", "--folds", 2, "--fixes", fixes))
    assert (noisy_labels != truth).any()
    pd.testing.assert_series_equal(fixed, truth)


# --- bad input ----------------------------------------------------------------------------------

SPLIT = ["split", "X/train", "--folds", "2"]
BAD_CALLS = [
    bad("split -o train.csv", [*SPLIT, "-o", "X/train/train.csv"]),
    bad("split -o a CSV of another kind", [*SPLIT, "-o", "p.csv"]),
    bad("split -o below a file", [*SPLIT, "-o", "folds.csv/x.csv"]),
    bad("split -o read-only", [*SPLIT, "-o", "{ro}/folds.csv"]),
    bad("split -o inside the dataset", ["split", "X", "--folds", "2", "-o", "X/folds.csv"]),
    bad("split -o the --fixes file", [*SPLIT, "--fixes", "X/train/injected_errors.csv",
                                      "-o", "X/train/injected_errors.csv"]),
    bad("split --fixes age inf", [*SPLIT, "--fixes", "fixes.csv"], fixes_age("inf")),
    bad("split --fixes age 1e300", [*SPLIT, "--fixes", "fixes.csv"], fixes_age("1e300")),
    bad("split --fixes age -40", [*SPLIT, "--fixes", "fixes.csv"], fixes_age("-40")),
    bad("split --fixes target with ..", [*SPLIT, "--fixes", "fixes.csv", "-o", "f2.csv"], fixes_climbing,
        absent=["f2.csv"]),
    bad("split train.csv age inf", SPLIT, train_csv_age("inf")),
    bad("split train.csv age 250", SPLIT, train_csv_age("250")),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


@pytest.mark.parametrize("argv, option", [
    (["split", "X/train", "--folds", "two"], "--folds"),
    (["split", "X/train", "--folds", "2", "--seed", "-1"], "--seed"),
], ids=["--folds two", "--seed -1"])
def test_an_option_out_of_its_range_is_one_line_before_anything_is_written(world, argv, option, monkeypatch, capsys):
    assert_refused_while_parsing(world, argv, option, monkeypatch, capsys)


@pytest.mark.slow
def test_a_full_disk_is_one_line_exit_1_and_leaves_no_file(world):
    assert_full_disk_leaves_no_file(world, ["split", "X/train", "--folds", "2", "-o", "out/folds.csv"])


def test_a_looping_link_in_a_person_folder_is_reported_not_a_traceback(cli, world):
    """Layout reading: a self-looping mask1.jpg is no image; split names it and goes on without it."""
    folder = world / "X" / "train" / "images" / first_person(world)
    (folder / "mask1.jpg").unlink()
    os.symlink("mask1.jpg", folder / "mask1.jpg")
    result = cli("split", "X/train", "--folds", "2", "-o", "f.csv")
    assert result.exit_code == 0, result.stderr
    assert "missing images" in result.stderr and f"{first_person(world)} (mask1)" in result.stderr
    assert str(folder / "mask1.jpg") not in (world / "f.csv").read_text()
