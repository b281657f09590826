"""`maskkit import` and `split --extra`: age-labelled photos become extra persons in the competition
layout, with drawn masks, that train in every fold and never validate."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from hostile import bad, run_bad
from maskkit.contract.labels import IMAGE_STEMS
from maskkit.contract.layout import read_train
from maskkit.contract.manifest import EXTRA_FOLD

RACE = 2  # UTKFace's Asian


def utk_name(age: object, gender: str, index: int) -> str:
    return f"{age}_{0 if gender == 'male' else 1}_{RACE}_2017{index:013d}.jpg.chip.jpg"


def utk_folder(data: Path, dest: Path, persons: int | None = None) -> pd.DataFrame:
    """The `normal` photos of a drawn dataset's persons under UTKFace-style names; their labels."""
    table = pd.read_csv(data / "train" / "train.csv", dtype={"id": str}).head(persons)
    dest.mkdir(parents=True)
    for i, row in enumerate(table.itertuples()):
        shutil.copyfile(data / "train" / "images" / row.path / "normal.jpg", dest / utk_name(row.age, row.gender, i))
    return table


def manifest_of(result) -> pd.DataFrame:
    assert result.exit_code == 0, result.stderr
    return pd.read_csv(io.StringIO(result.stdout), dtype={"person": str})


def test_import_makes_a_valid_layout_that_split_extra_accepts(drawn, cli, tmp_path):
    src = tmp_path / "utk"
    labels = utk_folder(drawn, src)
    result = cli("import", src, tmp_path / "extra", "--ages", "30-", "--limit", 6, "--seed", 1)
    assert result.exit_code == 0, result.stderr
    images, quirks = read_train(tmp_path / "extra" / "train")
    assert not quirks.found  # nothing hidden, unlisted or missing: the layout a competition gives
    persons = images.groupby("person")
    assert persons.ngroups == 6 and (persons.size() == len(IMAGE_STEMS)).all()
    assert all(p.startswith("x") and not p[1:].isdigit() for p in persons.groups)  # never a competition id
    assert (images["age"] >= 30).all()
    drawn_ages = set(zip(labels["age"], labels["gender"]))
    assert set(zip(images["age"], images["gender"])) <= drawn_ages  # the labels come from the names

    plain = manifest_of(cli("split", drawn / "train", "--folds", 3))
    both = manifest_of(cli("split", drawn / "train", "--folds", 3, "--extra", tmp_path / "extra" / "train"))
    extra = both[both["fold"] == EXTRA_FOLD]
    assert set(extra["person"]) == set(persons.groups) and len(extra) == 6 * len(IMAGE_STEMS)
    # the competition's persons keep the folds they had: the extra persons take no part in the stratification
    pd.testing.assert_frame_equal(both[both["fold"] != EXTRA_FOLD].reset_index(drop=True), plain)


def test_split_table_counts_the_extra_persons(drawn, cli, tmp_path):
    utk_folder(drawn, tmp_path / "utk", persons=4)
    assert cli("import", tmp_path / "utk", tmp_path / "extra").exit_code == 0
    result = cli("split", drawn / "train", "--folds", 3, "--extra", tmp_path / "extra" / "train")
    assert result.exit_code == 0, result.stderr
    assert "extra" in result.stderr and "+ 4 extra persons" in result.stderr


def test_masks_are_drawn_over_the_lower_face_and_normal_is_the_photo(drawn, cli, tmp_path):
    utk_folder(drawn, tmp_path / "utk", persons=1)
    photo = cv2.imread(str(next((tmp_path / "utk").iterdir()))).astype(np.float32)
    assert cli("import", tmp_path / "utk", tmp_path / "extra").exit_code == 0
    folder = next((tmp_path / "extra" / "train" / "images").iterdir())
    height = photo.shape[0]
    assert np.abs(cv2.imread(str(folder / "normal.jpg")) - photo).mean() < 3  # the photo (JPEG again)
    for stem in ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask"):
        change = np.abs(cv2.imread(str(folder / f"{stem}.jpg")) - photo).mean(axis=(1, 2))
        assert change[int(0.8 * height):].mean() > 4 * change[: int(0.3 * height)].mean() + 5, stem


def test_a_rerun_skips_finished_persons_and_the_same_photo_twice_is_one_person(drawn, cli, tmp_path):
    src, out = tmp_path / "utk", tmp_path / "extra"
    utk_folder(drawn, src, persons=5)
    first = next(src.iterdir())
    shutil.copyfile(first, src / first.name.replace("_2017", "_2018"))  # one photo under two names
    assert cli("import", src, out, "--limit", 2).exit_code == 0
    images = out / "train" / "images"
    done = {p: p.stat().st_mtime_ns for p in images.rglob("*.jpg")}
    (images / ".xdead_male_Asian_40.import-tmp999999999").mkdir()  # a killed run's work folder
    result = cli("import", src, out)
    assert result.exit_code == 0, result.stderr
    assert "2 already there" in result.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished persons are left as they are
    table = pd.read_csv(out / "train" / "train.csv")
    assert len(table) == 5 and table["id"].is_unique  # 6 files, 5 distinct photos
    assert not [p for p in images.iterdir() if p.name.startswith(".")]


def test_a_photo_that_cannot_be_decoded_is_one_line_and_the_finished_persons_are_listed(drawn, cli, tmp_path):
    src, out = tmp_path / "utk", tmp_path / "extra"
    utk_folder(drawn, src, persons=6)
    ok, png = cv2.imencode(".png", np.zeros((64, 48, 3), np.uint8))
    (src / utk_name(61, "male", 99).replace(".jpg.chip.jpg", ".png")).write_bytes(png.tobytes()[:60])  # header only
    result = cli("import", src, out, "--seed", 3)
    assert result.exit_code == 2 and "cannot decode this photo" in result.stderr.strip().splitlines()[-1]
    listed = pd.read_csv(out / "train" / "train.csv")
    folders = [p for p in (out / "train" / "images").iterdir()]
    assert 0 < len(listed) < 6 and sorted(listed["path"]) == sorted(p.name for p in folders)  # the finished ones
    assert all(len(list(p.iterdir())) == len(IMAGE_STEMS) for p in folders)
    next(src.glob("*.png")).unlink()
    assert cli("import", src, out, "--seed", 3).exit_code == 0
    assert len(pd.read_csv(out / "train" / "train.csv")) == 6


def test_a_csv_source_reads_paths_relative_to_it(drawn, cli, tmp_path):
    table = utk_folder(drawn, tmp_path / "photos", persons=3)
    names = sorted(p.name for p in (tmp_path / "photos").iterdir())
    by_name = {utk_name(r.age, r.gender, i): r for i, r in enumerate(table.itertuples())}
    rows = [{"path": f"photos/{n}", "age": by_name[n].age, "gender": by_name[n].gender} for n in names]
    pd.DataFrame(rows).to_csv(tmp_path / "list.csv", index=False)
    assert cli("import", tmp_path / "list.csv", tmp_path / "extra").exit_code == 0
    imported = pd.read_csv(tmp_path / "extra" / "train" / "train.csv")
    assert sorted(zip(imported["age"], imported["gender"])) == sorted((r["age"], r["gender"]) for r in rows)
    assert set(imported["race"]) == {"Unknown"}


@pytest.mark.slow  # imports optuna
def test_train_and_tune_offer_only_the_validation_folds_of_a_manifest_with_extra_persons(drawn, cli, tmp_path):
    from maskkit.commands.tune import Study, check_manifest
    from maskkit.contract.errors import MaskkitError
    from maskkit.contract.recipe import check_new_run
    from maskkit.options import TrainOptions

    utk_folder(drawn, tmp_path / "utk", persons=2)
    assert cli("import", tmp_path / "utk", tmp_path / "extra").exit_code == 0
    folds = tmp_path / "folds.csv"
    assert cli("split", drawn / "train", "--folds", 2, "--extra", tmp_path / "extra" / "train", "-o", folds).exit_code == 0
    with pytest.raises(MaskkitError, match=r"has folds 0, 1; pick one"):
        check_new_run(folds, TrainOptions(fold=2))
    # the oof objective pools the first K validation folds, never the extra persons' -1
    assert check_manifest(folds, TrainOptions(), Study("s", tmp_path, objective="oof", folds=2)) == (0, 1)


# --- bad input ----------------------------------------------------------------------------------

def photos(*names: str, size: tuple[int, int] = (48, 64)):
    """A setup: folder utk/ of drawn-looking photos with these names (width, height `size`)."""
    def setup(root: Path) -> None:
        (root / "utk").mkdir()
        image = np.full((size[1], size[0], 3), 128, np.uint8)
        for name in names:
            cv2.imwrite(str(root / "utk" / name), image)
    return setup


def photo_csv(text: str):
    def setup(root: Path) -> None:
        photos("a.jpg")(root)
        (root / "utk" / "list.csv").write_text(text)
    return setup


GOOD = "61_0_2_20170101.jpg"
BAD_CALLS = [
    bad("import a name that is not age_gender", ["import", "utk", "out"], photos(GOOD, "holiday.jpg"), absent=["out"]),
    bad("import age 130", ["import", "utk", "out"], photos(GOOD, "130_1_0_2017.jpg"), absent=["out"]),
    bad("import a 16x16 photo", ["import", "utk", "out"], photos(GOOD, size=(16, 16)), absent=["out"]),
    bad("import a 200x40 strip", ["import", "utk", "out"], photos(GOOD, size=(200, 40)), absent=["out"]),
    bad("import csv age -3", ["import", "utk/list.csv", "out"], photo_csv("path,age,gender\na.jpg,-3,male\n"),
        absent=["out"]),
    bad("import csv age inf", ["import", "utk/list.csv", "out"], photo_csv("path,age,gender\na.jpg,inf,male\n"),
        absent=["out"]),
    bad("import csv gender x", ["import", "utk/list.csv", "out"], photo_csv("path,age,gender\na.jpg,60,x\n"),
        absent=["out"]),
    bad("import csv missing photo", ["import", "utk/list.csv", "out"], photo_csv("path,age,gender\nb.jpg,60,0\n"),
        absent=["out"]),
    bad("import OUT inside SRC", ["import", "utk", "utk/out"], photos(GOOD), absent=["utk/out"]),
    bad("import OUT a dataset", ["import", "utk", "X"], photos(GOOD)),
    bad("import --ages 90-20", ["import", "utk", "out", "--ages", "90-20"], photos(GOOD), absent=["out"]),
    bad("import --ages old", ["import", "utk", "out", "--ages", "old"], photos(GOOD), absent=["out"]),
    bad("import --ages with no photo", ["import", "utk", "out", "--ages", "0-20"], photos(GOOD), absent=["out"]),
    bad("split --extra the dataset itself", ["split", "X/train", "--folds", "2", "--extra", "X/train"]),
    bad("split --extra missing", ["split", "X/train", "--folds", "2", "--extra", "nowhere/train"]),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)
