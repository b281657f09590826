"""The shipped fix lists of the real competition data (`--fixes known`, `--fixes community`):
they load and validate, name whole real folder names and their sources, fix ages by age group,
and leave drawn data alone."""

from __future__ import annotations

import io
import re
from pathlib import Path, PurePath

import pandas as pd
import pytest

from helpers import assert_one_line_error
from maskkit.contract.fixes import COMMUNITY, KNOWN, SHIPPED, apply_fixes, read_fixes
from maskkit.contract.labels import age_group, task_labels
from maskkit.contract.layout import load_train, parse_folder_name

# A source as every reason names it: repository (or `maskkit`), path and commit.
SOURCE = re.compile(r"(?:[\w.-]+/[\w.-]+|maskkit):[\w./-]+@[0-9a-f]{7,40}")


def person_of(target: str) -> str:
    """The folder a shipped row names (a mask row names `<folder>/<stem>`)."""
    return PurePath(target).parts[0]


def folders_of(name: str) -> list[str]:
    fixes = read_fixes(name)
    return sorted({person_of(t) for t in fixes["target"]})


def give_real_names(train: Path, names: list[str]) -> dict[str, str]:
    """Rename the first len(names) drawn persons to these real folder names (train.csv to match):
    a stand-in for the real data. Returns new folder -> the drawn folder it was."""
    table = pd.read_csv(train / "train.csv", dtype={"id": str})
    assert len(names) <= len(table)
    renamed = {}
    for row, name in zip(table.index, names):
        old = table.at[row, "path"]
        (train / "images" / old).rename(train / "images" / name)
        new_id, gender, race, age = name.rsplit("_", 3)
        table.loc[row, ["id", "gender", "race", "age", "path"]] = [new_id, gender, race, int(age), name]
        renamed[name] = old
    table.to_csv(train / "train.csv", index=False)
    return renamed


def split_manifest(cli, train: Path, *fixes: str):
    result = cli("split", train, "--folds", 2, *[a for f in fixes for a in ("--fixes", f)])
    assert result.exit_code == 0, result.stderr
    return pd.read_csv(io.StringIO(result.stdout), dtype={"person": str}), result.stderr


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_list_loads_validates_and_names_whole_real_folders(name):
    fixes = read_fixes(name)
    assert len(fixes) > 0 and set(fixes["column"]) <= {"gender", "age", "mask"}
    for row in fixes.itertuples(index=False):
        parsed = parse_folder_name(person_of(row.target))
        assert parsed is not None, f"{row.target}: not <id>_<gender>_<race>_<age>"
        if row.column in ("gender", "age"):
            assert row.target == person_of(row.target)  # the whole folder, not an id
            assert row.old == str(parsed[row.column]) != row.new  # old is what the folder name records
    assert not fixes.duplicated(["target", "column"]).any()


def test_known_and_community_name_different_fixes():
    known, community = read_fixes(KNOWN), read_fixes(COMMUNITY)
    both = set(zip(known["target"], known["column"])) & set(zip(community["target"], community["column"]))
    assert not both


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_row_names_its_sources_and_known_rows_two(name):
    for reason in read_fixes(name)["reason"]:
        sources = set(SOURCE.findall(reason))
        assert len(sources) >= (2 if name == KNOWN else 1), reason
        assert len(sources) == 1 or name == KNOWN, f"two sources agree: the row belongs in known ({reason})"


def test_no_shipped_row_matches_a_drawn_folder(drawn, cli):
    """A drawn dataset (`maskkit synth` layout) shares ids with the real data, not its folder names."""
    drawn_folders = {p.name for p in (drawn / "train" / "images").iterdir()}
    for name in SHIPPED:
        assert not set(folders_of(name)) & drawn_folders
    plain, _ = split_manifest(cli, drawn / "train")
    fixed, stderr = split_manifest(cli, drawn / "train", KNOWN, COMMUNITY)
    pd.testing.assert_frame_equal(fixed, plain)
    for name in SHIPPED:
        assert f"{name}: 0 of {len(read_fixes(name))} fixes applied" in stderr


def test_a_drawn_folder_named_like_a_real_one_is_left_alone(drawn_copy, cli):
    """synth can draw a real folder name by chance (000010_female_Asian_58: person 10, a woman of 58):
    a shipped list applies only where most of its persons are."""
    train = drawn_copy / "train"
    target = read_fixes(COMMUNITY).query("column == 'gender'").iloc[0]
    give_real_names(train, [target["target"]])
    plain, _ = split_manifest(cli, train)
    fixed, stderr = split_manifest(cli, train, COMMUNITY)
    pd.testing.assert_frame_equal(fixed, plain)
    assert "not the real competition data" in stderr and "community_fixes.csv" in stderr


def test_community_applies_to_the_real_folders_and_an_age_fix_moves_the_age_group(drawn_copy, cli):
    train = drawn_copy / "train"
    fixes = read_fixes(COMMUNITY)
    give_real_names(train, folders_of(COMMUNITY))
    before = load_train(train, report=False)
    manifest, stderr = split_manifest(cli, train, COMMUNITY)
    assert f"community: {len(fixes)} of {len(fixes)} fixes applied" in stderr
    persons = manifest.assign(folder=manifest["path"].map(lambda p: PurePath(p).parent.name))
    for fix in fixes.itertuples(index=False):
        rows = persons[persons["folder"] == fix.target]
        assert len(rows) == len(before[before["folder"] == fix.target]) == 7
        assert set(rows[fix.column].astype(str)) == {fix.new}
        if fix.column == "age":
            groups = task_labels(rows["label"].to_numpy())["age"]
            assert set(groups) == {age_group(int(fix.new))} != {age_group(int(fix.old))}


def test_an_age_fix_changes_the_age_group_of_every_image_of_the_person(drawn):
    images = load_train(drawn / "train", report=False)
    person = images.loc[images["age"].between(30, 59), "person"].iloc[0]
    fixes = pd.DataFrame([{"target": person, "column": "age", "old": "", "new": "61", "reason": "test"}])
    fixed = apply_fixes(images, fixes)
    mine = fixed["person"] == person
    assert set(fixed.loc[mine, "age"]) == {61} and mine.sum() == 7
    assert set(task_labels(fixed.loc[mine, "label"].to_numpy())["age"]) == {2}  # >= 60
    assert set(task_labels(images.loc[mine, "label"].to_numpy())["age"]) == {1}
    pd.testing.assert_frame_equal(fixed[~mine], images[~mine])


def test_a_misspelt_list_name_is_one_line_naming_the_shipped_lists(drawn, cli, tmp_path):
    out = tmp_path / "folds.csv"
    result = cli("split", drawn / "train", "--fixes", "comunity", "-o", out)
    assert_one_line_error(result, "comunity: file not found", "known, community")
    assert not out.exists()
