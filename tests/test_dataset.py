"""The data layer reads every quirk of the real competition data, reports it, and never crashes."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pandas as pd
import pytest

from maskkit.contract.layout import load_eval, load_folder, load_train
from maskkit.contract.errors import MaskkitError
from maskkit.contract.labels import IMAGE_STEMS, label_of


def person_folders(train: Path) -> list[Path]:
    return sorted(p for p in (train / "images").iterdir() if p.is_dir())


def edit_train_csv(train: Path, edit) -> None:
    table = pd.read_csv(train / "train.csv", dtype={"id": str})
    edit(table).to_csv(train / "train.csv", index=False)


def test_clean_dataset_reads_seven_labelled_images_per_person(drawn):
    images = load_train(drawn / "train")
    table = pd.read_csv(drawn / "train" / "train.csv", dtype={"id": str})
    assert images["person"].nunique() == len(table)
    assert (images.groupby("person").size() == 7).all()
    assert set(images["stem"]) == set(IMAGE_STEMS)
    expected = [label_of(m, g, a) for m, g, a in zip(images["mask"], images["gender"], images["age"])]
    assert images["label"].tolist() == expected
    # DATA works as well as DATA/train
    assert load_train(drawn)["path"].tolist() == images["path"].tolist()


def test_every_quirk_is_handled_and_reported(drawn_copy, capsys):
    train = drawn_copy / "train"
    folders = person_folders(train)

    # mixed extensions inside one person folder
    mixed = folders[0]
    cv2.imwrite(str(mixed / "mask2.png"), cv2.imread(str(mixed / "mask2.jpg")))
    (mixed / "mask2.jpg").unlink()
    (mixed / "normal.jpg").rename(mixed / "normal.jpeg")
    # macOS resource forks at folder and file level
    (train / "images" / f"._{folders[1].name}").write_bytes(b"\x00\x05\x16\x07")
    (folders[1] / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07")
    # a missing image and an unknown extra file
    (folders[2] / "mask3.jpg").unlink()
    (folders[2] / "notes.txt").write_text("hello")
    # an id with a suffix
    old = folders[3].name
    pid, rest = old.split("_", 1)
    suffixed = f"{pid}-1_{rest}"
    folders[3].rename(train / "images" / suffixed)
    # the same id used by a second, different person folder
    twin_src = folders[4]
    twin_pid = twin_src.name.split("_")[0]
    twin = f"{twin_pid}_male_Asian_33" if "_female_" in twin_src.name else f"{twin_pid}_female_Asian_33"
    shutil.copytree(twin_src, train / "images" / twin)
    # a folder not listed in train.csv, a row whose folder is missing, a row disagreeing with its folder
    unlisted = folders[5].name
    disagreeing = folders[6].name

    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[table["path"] == old, ["id", "path"]] = [f"{pid}-1", suffixed]
        table.loc[table["path"] == disagreeing, "age"] += 1
        table = table[table["path"] != unlisted]
        extra = pd.DataFrame([
            {"id": twin_pid, "gender": twin.split("_")[1], "race": "Asian", "age": 33, "path": twin},
            {"id": "999999", "gender": "male", "race": "Asian", "age": 40, "path": "999999_male_Asian_40"},
        ])
        return pd.concat([table, extra], ignore_index=True)

    edit_train_csv(train, edit)
    images = load_train(train)
    report = capsys.readouterr().err

    by_folder = images.groupby("folder")
    assert sorted(Path(p).suffix for p in by_folder.get_group(mixed.name)["path"]) == [".jpeg"] + [".jpg"] * 5 + [".png"]
    assert not images["path"].str.contains("/._").any()
    assert len(by_folder.get_group(folders[2].name)) == 6
    assert not images["path"].str.endswith("notes.txt").any()
    assert set(by_folder.get_group(suffixed)["person"]) == {f"{pid}-1"}
    twins = images[images["folder"].isin([twin_src.name, twin])]
    assert twins["person"].nunique() == 2 and set(twins["person"]) == {twin_src.name, twin}
    assert len(by_folder.get_group(unlisted)) == 7
    assert "999999_male_Asian_40" not in set(images["folder"])
    listed_age = int(disagreeing.rsplit("_", 1)[1]) + 1
    assert set(by_folder.get_group(disagreeing)["age"]) == {listed_age}

    for words in ("mixing extensions", "hidden files skipped", "missing images", "unknown extra files",
                  "ids with a suffix", "ids used by several folders", "folders not in train.csv",
                  "whose folder is missing", "disagreeing with train.csv"):
        assert words in report, words
    assert "999999_male_Asian_40" in report and "notes.txt" in report


def test_split_reports_quirks_on_stderr_and_keeps_stdout_clean(drawn_copy, cli):
    folder = person_folders(drawn_copy / "train")[0]
    (folder / "mask4.jpg").unlink()
    result = cli("split", drawn_copy / "train", "--folds", 2)
    assert result.exit_code == 0, result.stderr
    assert "missing images" in result.stderr and "mask4" in result.stderr
    manifest = pd.read_csv(pd.io.common.StringIO(result.stdout))
    assert len(manifest) == 7 * manifest["person"].nunique() - 1


def test_eval_reads_info_order_and_plain_folders(drawn):
    info = pd.read_csv(drawn / "eval" / "info.csv")
    table = load_eval(drawn / "eval")
    assert table["ImageID"].tolist() == info["ImageID"].tolist()
    assert all(Path(p).is_file() for p in table["path"])
    assert load_eval(drawn)["ImageID"].tolist() == info["ImageID"].tolist()
    plain = load_eval(drawn / "eval" / "images")
    assert sorted(plain["ImageID"]) == sorted(info["ImageID"])


def test_plain_folder_skips_hidden_files(drawn_copy):
    images = drawn_copy / "eval" / "images"
    (images / "._junk.jpg").write_bytes(b"\x00")
    table = load_folder(images)
    assert not table["ImageID"].str.startswith("._").any()


def test_missing_eval_image_is_an_error_naming_info_csv(drawn_copy, cli):
    info = pd.read_csv(drawn_copy / "eval" / "info.csv")
    (drawn_copy / "eval" / "images" / info["ImageID"][0]).unlink()
    with pytest.raises(MaskkitError, match=r"info\.csv: 1 of \d+ images missing"):
        load_eval(drawn_copy / "eval")


@pytest.mark.parametrize("breakage, message", [
    ("no_folder", "dataset folder not found"),
    ("no_csv", "no train.csv"),
    ("bad_columns", "missing column(s) age"),
    ("empty_images", "no person folders"),
])
def test_bad_datasets_are_one_line_exit_2_and_write_nothing(drawn_copy, cli, tmp_path, breakage, message):
    train = drawn_copy / "train"
    if breakage == "no_folder":
        train = tmp_path / "nowhere"
    elif breakage == "no_csv":
        (train / "train.csv").unlink()
    elif breakage == "bad_columns":
        edit_train_csv(train, lambda t: t.drop(columns=["age"]))
    elif breakage == "empty_images":
        shutil.rmtree(train / "images")
        (train / "images").mkdir()
    out = tmp_path / "manifest.csv"
    result = cli("split", train, "-o", out)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(train) in lines[0], result.stderr
    assert not out.exists()


def test_read_train_returns_each_quirk_as_a_record(drawn_copy, capsys):
    """What the report counts is also there as data (audit turns it into suspects): kind, where, values."""
    from maskkit.contract.layout import DISAGREEING, FRACTIONAL_AGE, MISSING_IMAGES, read_train

    train = drawn_copy / "train"
    folders = person_folders(train)
    (folders[0] / "mask4.jpg").unlink()
    fractional, older = folders[1].name, folders[2].name

    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table["age"] = table["age"].astype(str)
        table.loc[table["path"] == fractional, "age"] = "33.5"
        table.loc[table["path"] == older, "age"] = str(int(older.rsplit("_", 1)[1]) + 1)
        return table

    edit_train_csv(train, edit)
    images, quirks = read_train(train)
    assert capsys.readouterr().err == ""  # read_train reports nothing itself
    found = {(q.kind, q.path, q.column, q.given, q.other) for q in quirks.found}
    assert (MISSING_IMAGES, str(folders[0]), "", "", "") in found
    assert next(q for q in quirks.found if q.kind == MISSING_IMAGES).related == ("mask4",)
    assert (FRACTIONAL_AGE, fractional, "age", "33.5", fractional.rsplit("_", 1)[1]) in found
    assert (DISAGREEING, older, "age", str(int(older.rsplit("_", 1)[1]) + 1), older.rsplit("_", 1)[1]) in found
    assert set(images.loc[images["folder"] == fractional, "age"]) == {33}  # rounded down, kept
    load_train(train)
    assert "ages not a whole number" in capsys.readouterr().err
