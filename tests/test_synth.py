"""maskkit synth: the competition layout, determinism, injected noise, the background shortcut, masks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import assert_one_line_error
from hostile import SYNTH_TINY, a_file, bad, run_bad, synth_lookalike
from maskkit.commands import synth as synth_module
from maskkit.options import Size
from maskkit.cli import app
from maskkit.contract.layout import load_eval, load_train, parse_folder_name
from maskkit.contract.errors import MaskkitError
from maskkit.contract.labels import IMAGE_STEMS, label_of

SIZE = Size(width=64, height=80)
runner = CliRunner()


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synth_module.run(out, persons=10, eval_persons=4, size=SIZE, seed=7, masks=True)
    return out


def test_layout_loads_back_with_consistent_labels(dataset):
    table = pd.read_csv(dataset / "train" / "train.csv", dtype={"id": str})
    assert list(table.columns) == ["id", "gender", "race", "age", "path"]
    assert all(re.fullmatch(r"\d{6}", pid) for pid in table["id"])
    for row in table.itertuples():
        assert parse_folder_name(row.path) == {"id": row.id, "gender": row.gender, "age": row.age}
        assert row.race == "Asian"

    images = load_train(dataset / "train")
    assert images.groupby("person").size().eq(7).all() and images["person"].nunique() == 10
    assert set(images["stem"]) == set(IMAGE_STEMS)
    merged = images.merge(table, left_on="person", right_on="id", suffixes=("", "_csv"))
    assert (merged["gender"] == merged["gender_csv"]).all() and (merged["age"] == merged["age_csv"]).all()
    first = cv2.imread(images["path"].iloc[0])
    assert first.shape == (SIZE.height, SIZE.width, 3)

    info = pd.read_csv(dataset / "eval" / "info.csv", dtype={"ImageID": str})
    assert list(info.columns) == ["ImageID", "ans"] and (info["ans"] == 0).all()
    assert all(re.fullmatch(r"[0-9a-f]{40}\.jpg", i) for i in info["ImageID"])
    evals = load_eval(dataset / "eval")  # raises if an info.csv image is missing
    assert len(evals) == 4 * 7
    truth = pd.read_csv(dataset / "eval" / "truth.csv", dtype={"ImageID": str, "person": str})
    assert list(truth.columns) == ["ImageID", "ans", "mask", "gender", "age", "person"]
    assert truth["ImageID"].tolist() == info["ImageID"].tolist()
    assert [label_of(m, g, a) for m, g, a in zip(truth["mask"], truth["gender"], truth["age"])] == truth["ans"].tolist()
    assert truth.groupby("person").size().eq(7).all()
    assert not set(truth["person"]) & set(table["id"])


def test_eval_order_reveals_nothing(dataset):
    truth = pd.read_csv(dataset / "eval" / "truth.csv", dtype={"ImageID": str, "person": str})
    # the seven images of a person are not listed together, and names are not in person order
    runs = (truth["person"] != truth["person"].shift()).sum()
    assert runs > len(truth) / 2


def test_balance_and_ages_like_the_real_data():
    people = [synth_module.make_person(0, 0, i, f"{i + 1:06d}", g, a, 0.0)
              for i, (g, a) in enumerate(synth_module.group_plan(40, 0, 0))]
    ages = np.array([p.age for p in people])
    assert ages.min() >= 18 and ages.max() == 60
    assert set(ages[ages >= 58]) <= {58, 59, 60}
    assert 0.1 <= (ages == 60).mean() <= 0.2
    assert 0.5 <= np.mean([p.gender == 1 for p in people]) <= 0.7
    assert [(p.gender, min(p.age // 30, 2)) for p in people] == synth_module.group_plan(40, 0, 0)
    # every gender x age group is present even in a small set
    assert len(set(synth_module.group_plan(12, 0, 0))) == 6


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    kwargs = dict(persons=4, eval_persons=2, size=SIZE)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synth_module.run(tmp_path / name, seed=seed, **kwargs)
    a, b, c = (files_of(tmp_path / n) for n in "abc")
    assert a == b
    images_a = [v for k, v in sorted(a.items()) if k.endswith(".jpg")]
    images_c = [v for k, v in sorted(c.items()) if k.endswith(".jpg")]
    assert len(images_a) == len(images_c) == 42
    assert not set(images_a) & set(images_c)


def test_noise_lists_exactly_the_injected_label_errors(tmp_path):
    synth_module.run(tmp_path / "clean", persons=12, eval_persons=1, size=SIZE, seed=5)
    synth_module.run(tmp_path / "noisy", persons=12, eval_persons=1, size=SIZE, seed=5, noise=0.25)
    read = dict(dtype={"id": str})
    clean = pd.read_csv(tmp_path / "clean" / "train" / "train.csv", **read).set_index("id")
    noisy = pd.read_csv(tmp_path / "noisy" / "train" / "train.csv", **read).set_index("id")
    errors = pd.read_csv(tmp_path / "noisy" / "train" / "injected_errors.csv", dtype=str)
    assert list(errors.columns) == ["target", "column", "old", "new", "reason"]
    assert pd.read_csv(tmp_path / "clean" / "train" / "injected_errors.csv").empty

    flipped = noisy.index[noisy["gender"] != clean["gender"]]
    gender_rows = errors[errors["column"] == "gender"].set_index("target")
    assert sorted(gender_rows.index) == sorted(flipped) and len(flipped) == 3
    for pid in flipped:
        assert gender_rows.loc[pid, "old"] == noisy.loc[pid, "gender"]
        assert gender_rows.loc[pid, "new"] == clean.loc[pid, "gender"]
        assert parse_folder_name(noisy.loc[pid, "path"])["gender"] == noisy.loc[pid, "gender"]

    # each mask row names a file whose content is the image of the `new` state in the clean data
    mask_rows = errors[errors["column"] == "mask"]
    assert len(mask_rows) == 6
    swapped = set()
    for row in mask_rows.itertuples():
        folder, file = Path(row.target).parts[-2:]
        assert row.target == f"images/{folder}/{file}"
        stem = Path(file).stem
        true_stem = {"incorrect": "incorrect_mask", "not_wear": "normal"}[row.new]
        assert IMAGE_STEMS[stem] == row.old != row.new
        noisy_bytes = (tmp_path / "noisy" / "train" / row.target).read_bytes()
        assert noisy_bytes == (tmp_path / "clean" / "train" / "images" / folder / f"{true_stem}.jpg").read_bytes()
        swapped.add(folder)
    assert not swapped & set(noisy.loc[flipped, "path"])

    # nothing else differs: same images for every untouched file
    noisy_files = files_of(tmp_path / "noisy" / "train" / "images")
    clean_files = files_of(tmp_path / "clean" / "train" / "images")
    renamed = {clean.loc[pid, "path"]: noisy.loc[pid, "path"] for pid in flipped}
    touched = {f"{Path(t).parts[-2]}/{Path(t).parts[-1]}" for t in mask_rows["target"]}
    for key, data in clean_files.items():
        folder, file = key.split("/")
        key_noisy = f"{renamed.get(folder, folder)}/{file}"
        if key_noisy not in touched:
            assert noisy_files[key_noisy] == data


def background_colours(images: list[str], masks: list[Path]) -> np.ndarray:
    """Mean RGB of the background (mask == 0) of each image."""
    colours = []
    for image, mask in zip(images, masks):
        pixels = cv2.imread(image)[cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) == 0]
        colours.append(pixels.mean(axis=0))
    return np.array(colours)


def group_share_of_variance(colours: np.ndarray, groups: np.ndarray) -> float:
    """R^2 of the background colour explained by the gender x age group (0 = unrelated, 1 = decided by it)."""
    total = ((colours - colours.mean(0)) ** 2).sum()
    within = sum(((colours[groups == g] - colours[groups == g].mean(0)) ** 2).sum() for g in np.unique(groups))
    return 1 - within / total


@pytest.mark.slow
def test_shortcut_ties_backgrounds_to_groups_in_train_only(tmp_path):
    out = tmp_path / "data"
    synth_module.run(out, persons=30, eval_persons=30, size=Size(width=32, height=40), seed=11, shortcut=1.0, masks=True)
    train = load_train(out / "train", report=False)
    train = train[train["stem"] == "normal"]
    train_masks = [out / "masks" / "train" / "images" / f / "normal.png" for f in train["folder"]]
    train_groups = (train["gender"] == "female").to_numpy() * 3 + (train["age"] // 30).clip(upper=2).to_numpy()
    r2_train = group_share_of_variance(background_colours(train["path"].tolist(), train_masks), train_groups)

    truth = pd.read_csv(out / "eval" / "truth.csv", dtype={"ImageID": str})
    truth = truth[truth["mask"] == "not_wear"]
    eval_paths = [str(out / "eval" / "images" / i) for i in truth["ImageID"]]
    eval_masks = [out / "masks" / "eval" / "images" / f"{Path(i).stem}.png" for i in truth["ImageID"]]
    eval_groups = (truth["gender"] == "female").to_numpy() * 3 + (truth["age"] // 30).clip(upper=2).to_numpy()
    r2_eval = group_share_of_variance(background_colours(eval_paths, eval_masks), eval_groups)
    assert r2_train > 0.7  # about 0.2 without --shortcut (chance level for 30 persons in 6 groups)
    assert r2_eval < 0.45


def test_masks_cover_the_person_of_every_image(dataset):
    images = load_train(dataset / "train", report=False)
    evals = load_eval(dataset / "eval")
    mask_files = [dataset / "masks" / "train" / "images" / f / f"{s}.png" for f, s in zip(images["folder"], images["stem"])]
    mask_files += [dataset / "masks" / "eval" / "images" / f"{Path(i).stem}.png" for i in evals["ImageID"]]
    assert len(list((dataset / "masks").rglob("*.png"))) == len(mask_files) == 14 * 7
    for path in mask_files:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (SIZE.height, SIZE.width) and set(np.unique(mask)) <= {0, 255}
        person = mask == 255
        assert 0.15 < person.mean() < 0.85
        assert person[SIZE.height // 2, SIZE.width // 2]  # the face centre
        assert not person[:3, :3].any() and not person[:3, -3:].any()  # top corners are background


def test_cli_writes_dataset_and_keeps_stdout_clean(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "d"), "--persons", "2", "--eval-persons", "1",
                                 "--size", "64x80", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert len(load_train(tmp_path / "d" / "train", report=False)) == 14
    assert "2 train persons" in result.stderr


def test_cli_refuses_non_empty_out_and_bad_options(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["synth", str(out), "--persons", "2", "--size", "64x80"])
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    result = runner.invoke(app, ["synth", str(out), "--persons", "2", "--size", "64x80", "--overwrite"])
    assert result.exit_code == 2 and "not written by maskkit synth" in result.stderr
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    for bad in (["--size", "64"], ["--noise", "0.7"], ["--shortcut", "2"], ["--persons", "0"]):
        result = runner.invoke(app, ["synth", str(tmp_path / "e"), *bad])
        assert result.exit_code == 2, bad
        assert not (tmp_path / "e").exists()


def test_overwrite_replaces_a_synth_dataset(tmp_path):
    out = tmp_path / "d"
    synth_module.run(out, persons=2, eval_persons=1, size=SIZE, seed=1, masks=True)
    with pytest.raises(MaskkitError, match="--overwrite"):
        synth_module.run(out, persons=3, eval_persons=1, size=SIZE, seed=1)
    synth_module.run(out, persons=3, eval_persons=1, size=SIZE, seed=1, overwrite=True)
    assert len(pd.read_csv(out / "train" / "train.csv")) == 3
    assert not (out / "masks").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real_render = synth_module.render

    def render_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synth_module, "render", render_then_stop)
    with pytest.raises(KeyboardInterrupt):
        synth_module.run(tmp_path / "d", persons=3, eval_persons=1, size=SIZE)
    assert list(tmp_path.iterdir()) == []


# --- bad input ----------------------------------------------------------------------------------

BAD_CALLS = [
    bad("synth into a drawn dataset", ["synth", "X", *SYNTH_TINY]),
    bad("synth below a file", ["synth", "afile/d", *SYNTH_TINY], a_file),
    bad("synth read-only", ["synth", "{ro}/d", *SYNTH_TINY]),
    bad("synth --overwrite user data", ["synth", "real", *SYNTH_TINY, "--overwrite"], synth_lookalike),
    bad("synth --size 100000x100000", ["synth", "big", "--persons", "1", "--size", "100000x100000"], absent=["big"]),
    bad("synth --persons 1000000000", ["synth", "big", "--persons", "1000000000"], absent=["big"]),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


def test_synth_overwrite_replaces_its_own_dataset_only(cli, tmp_path):
    assert cli("synth", tmp_path / "d", *SYNTH_TINY).exit_code == 0
    assert cli("synth", tmp_path / "d", *SYNTH_TINY, "--seed", "3", "--overwrite").exit_code == 0
    (tmp_path / "d" / "train" / "notes.txt").write_text("mine\n")
    result = cli("synth", tmp_path / "d", *SYNTH_TINY, "--overwrite")
    assert_one_line_error(result, "maskkit synth: error: ", "notes.txt")
    assert (tmp_path / "d" / "train" / "notes.txt").read_text() == "mine\n"


@pytest.mark.slow
def test_synth_cleans_up_after_sigterm_and_after_kill_9(tmp_path):
    """A killed synth's work folder is removed by the next synth beside it (a live process's is
    kept); SIGTERM stops a synth like Ctrl-C: exit 143 (a terminated process) and no work folder."""
    dead, live = tmp_path / ".old.synth-tmp999999999", tmp_path / f".mine.synth-tmp{os.getpid()}"
    for folder in (dead, live):
        (folder / "train").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "-m", "maskkit", "synth", "d", "--persons", "3000", "--size", "32x32"],
                           cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    work = tmp_path / f".d.synth-tmp{job.pid}"
    for _ in range(600):
        if (work / "train").exists() or job.poll() is not None:
            break
        subprocess.run(["sleep", "0.05"])
    assert not dead.exists() and live.exists()
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert not work.exists() and not (tmp_path / "d").exists()
