"""`maskkit calibrate` (the decision fitted on OOF predictions) and `predict`/`vote --calibration`."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import assert_one_line_error
from hostile import PREDICT, bad, run_bad
from maskkit.contract.decision import Decision, Recipe
from maskkit.contract.labels import NUM_CLASSES, decode
from maskkit.engine.decision import fit, soft_vote
from maskkit.engine.metrics import scores

P = [f"p{i}" for i in range(NUM_CLASSES)]
AGE = decode(np.arange(NUM_CLASSES))[2]


def crafted_oof(path: Path, rows: int = 420, shift: float = 1.2, seed: int = 0, label=None) -> Path:
    """OOF predictions that favour the true class but push every row towards the age group <30 by
    `shift` (a log-bias), so raising the two older groups' biases clearly helps."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, NUM_CLASSES, rows) if label is None else label
    logits = rng.normal(0, 1, (rows, NUM_CLASSES))
    logits[np.arange(rows), label] += 2.0
    logits[:, AGE == 0] += shift
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame(np.round(probs, 6), columns=P)
    frame = frame.div(frame.sum(axis=1), axis=0)
    frame.insert(0, "ans", frame.to_numpy().argmax(axis=1))
    frame.insert(0, "ImageID", [f"img{k:04d}.jpg" for k in range(rows)])
    frame.assign(person=np.arange(rows) // 7, label=label, fold=np.arange(rows) % 4).to_csv(path, index=False)
    return path


def calibrated(cli, *args):
    """Run calibrate; (the calib.json as a dict, stderr)."""
    result = cli("calibrate", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def oof_of(path: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(path)
    return frame[P].to_numpy(), frame["label"].to_numpy()


def test_crafted_oof_where_an_age_bias_helps_is_improved_and_the_file_says_so(cli, tmp_path):
    oof = crafted_oof(tmp_path / "oof.csv")
    calib, stderr = calibrated(cli, oof)
    before, after = calib["oof"]["before"], calib["oof"]["after"]
    assert after["macro_f1"] > before["macro_f1"] + 0.03 and after["f1_age"] > before["f1_age"] + 0.03
    assert calib["age_bias"][0] == 0 and min(calib["age_bias"][1:]) > 0.5  # the older groups raised
    assert calib["class_bias"] is None and calib["task"] == "mask-gender-age-18"
    assert calib["recipes"][0]["weight"] == 1.0 and calib["oof"]["images"] == 420
    assert calib["oof"]["held_out"]["macro_f1"] > before["macro_f1"] + 0.03  # a real bias: it holds on unseen folds
    import hashlib
    assert calib["recipes"][0]["sha256"] == hashlib.sha256(oof.read_bytes()).hexdigest()
    probs, label = oof_of(oof)
    decision = Decision.read(_write(tmp_path / "c.json", calib))
    assert scores(label, probs.argmax(1))["macro_f1"] == pytest.approx(before["macro_f1"], abs=1e-6)
    assert scores(label, decision.apply(probs).argmax(1))["macro_f1"] == pytest.approx(after["macro_f1"], abs=1e-6)
    for key in ("macro_f1", "f1_mask", "f1_gender", "f1_age"):  # before/after of every task on stderr
        assert f"{key}" in stderr and f"{before[key]:.4f}" in stderr and f"{after[key]:.4f}" in stderr


def test_macro_f1_is_sklearns_macro_f1():
    from sklearn.metrics import f1_score

    from maskkit.engine.metrics import macro_f1

    rng = np.random.default_rng(5)
    for rows, classes in ((1, 18), (7, 3), (60, 18), (500, 2)):
        truth, pred = rng.integers(0, classes, rows), rng.integers(0, classes, rows)
        assert macro_f1(truth, pred) == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0), abs=1e-12)
    assert macro_f1([], []) == 0.0


def test_the_fit_keeps_the_identity_when_nothing_beats_it():
    label = np.arange(NUM_CLASSES).repeat(5)
    probs = np.full((len(label), NUM_CLASSES), 0.01)
    probs[np.arange(len(label)), label] = 1 - 0.01 * (NUM_CLASSES - 1)  # already perfect
    found = fit(probs[None], label, biases=True)
    assert found.age_bias.tolist() == [0, 0, 0] and not found.class_bias.any() and found.weights.tolist() == [1]


def test_held_out_decisions_never_see_their_own_fold_and_one_fold_has_none(cli, tmp_path):
    from maskkit.engine.decision import held_out

    probs, label = oof_of(crafted_oof(tmp_path / "oof.csv", rows=280, seed=6))
    folds = np.arange(len(label)) % 4
    shuffled = label.copy()
    shuffled[folds == 0] = np.random.default_rng(0).permutation(label[folds == 0])
    first, second = held_out(probs[None], label, folds), held_out(probs[None], shuffled, folds)
    assert (first[folds == 0] == second[folds == 0]).all()  # fold 0's labels never reach fold 0's decisions
    assert held_out(probs[None], label, np.zeros(len(label))) is None
    one_fold = pd.read_csv(tmp_path / "oof.csv").assign(fold=0)
    one_fold.to_csv(tmp_path / "one.csv", index=False)
    calib, stderr = calibrated(cli, tmp_path / "one.csv")
    assert calib["oof"]["held_out"] is None and "held out" not in stderr


def test_class_biases_only_with_the_option_and_never_lower(cli, tmp_path):
    oof = crafted_oof(tmp_path / "oof.csv", rows=280, shift=0.6, seed=1)
    plain, _ = calibrated(cli, oof)
    biased, _ = calibrated(cli, oof, "--biases")
    assert plain["class_bias"] is None and len(biased["class_bias"]) == NUM_CLASSES
    assert biased["oof"]["after"]["macro_f1"] >= plain["oof"]["after"]["macro_f1"] >= plain["oof"]["before"]["macro_f1"]


def test_two_recipes_fit_vote_weights_that_drop_a_useless_one(cli, tmp_path):
    good = crafted_oof(tmp_path / "good.csv", shift=0.0, seed=2)
    label = pd.read_csv(good)["label"].to_numpy()
    noise = crafted_oof(tmp_path / "noise.csv", shift=0.0, seed=3, label=np.random.default_rng(9).integers(0, 18, 420))
    frame = pd.read_csv(noise).assign(label=label)  # its probabilities follow other labels: noise
    frame.sample(frac=1, random_state=0).to_csv(noise, index=False)  # another row order: aligned by ImageID
    calib, stderr = calibrated(cli, good, noise)
    weights = [r["weight"] for r in calib["recipes"]]
    assert weights[0] > weights[1] and "vote weight" in stderr
    probs = np.stack([oof_of(good)[0], pd.read_csv(noise).set_index("ImageID").loc[pd.read_csv(good)["ImageID"], P]])
    equal = scores(label, soft_vote(probs, np.ones(2)).argmax(1))["macro_f1"]
    assert calib["oof"]["before"]["macro_f1"] == pytest.approx(equal, abs=1e-6)
    assert calib["oof"]["after"]["macro_f1"] > equal
    result = cli("calibrate", good, noise, "-o", tmp_path / "calib.json")
    assert result.exit_code == 0 and result.stdout == "", result.stderr
    assert json.loads((tmp_path / "calib.json").read_text()) == calib  # -o writes what stdout would


def test_the_fit_never_lowers_the_oof_f1_of_trained_runs(cli, single_run, multi_run, tmp_path):
    """On drawn data trained for real (the session's two runs, validated on the same fold)."""
    files = []
    for run in (single_run, multi_run):
        files.append(tmp_path / f"{run.name}.csv")
        result = cli("runs", run, "--oof-out", files[-1])
        assert result.exit_code == 0, result.stderr
    for args in ([files[0]], [files[1], "--biases"], files):
        calib, _ = calibrated(cli, *args)
        assert calib["oof"]["after"]["macro_f1"] >= calib["oof"]["before"]["macro_f1"]
        assert calib["oof"]["images"] == len(pd.read_csv(files[0]))
    swapped = cli("vote", *reversed(files), "--soft", "--calibration", _write(tmp_path / "calib.json", calib))
    assert_one_line_error(swapped, "in the order calibrate was given them")  # weights never go to the wrong file
    voted = cli("vote", *files, "--soft", "--calibration", tmp_path / "calib.json")
    assert voted.exit_code == 0, voted.stderr  # vote applies the two recipes' fit as calibrate scored it
    truth = pd.read_csv(files[0]).set_index("ImageID")["label"]
    answers = pd.read_csv(StringIO(voted.stdout)).set_index("ImageID")["ans"]
    assert scores(truth, answers.loc[truth.index])["macro_f1"] == pytest.approx(calib["oof"]["after"]["macro_f1"],
                                                                                abs=1e-6)


def _write(path: Path, calib: dict) -> Path:
    path.write_text(json.dumps(calib))
    return path


def decision_file(path: Path, age_bias=(0.0, 0.0, 0.0), weights=(1.0,), class_bias=None) -> Path:
    recipes = tuple(Recipe(f"oof{k}.csv", "0" * 64, w) for k, w in enumerate(weights))
    Decision(recipes, tuple(age_bias), class_bias, 10, {}, {}, "test").write(path)
    return path


def test_predict_with_calibration_writes_the_calibrated_probabilities(cli, world):
    plain = pd.read_csv(world / "p.csv")  # runs/base's predictions of X/eval, uncalibrated
    mild = decision_file(world / "mild.json", age_bias=(0.0, 0.7, -0.4))
    result = cli(*PREDICT[:-1], "cal.csv", "--calibration", mild.name)
    assert result.exit_code == 0, result.stderr
    out = pd.read_csv(world / "cal.csv")
    expected = Decision.read(mild).apply(plain[P].to_numpy())
    assert out["ImageID"].tolist() == plain["ImageID"].tolist()
    np.testing.assert_allclose(out[P].to_numpy(), expected, atol=1e-5)
    assert (out["ans"] == out[P].to_numpy().argmax(1)).all()

    strong = decision_file(world / "old.json", age_bias=(0.0, 0.0, 20.0))
    result = cli(*PREDICT[:-1], "old.csv", "--calibration", strong.name)
    assert result.exit_code == 0, result.stderr
    old = pd.read_csv(world / "old.csv")["ans"].to_numpy()
    assert (decode(old)[2] == 2).all() and (decode(plain["ans"].to_numpy())[2] != 2).any()  # every image now >=60


def test_vote_with_calibration_takes_the_fitted_weights_and_biases(cli, tmp_path):
    rng = np.random.default_rng(4)
    ids = [f"e{k}.jpg" for k in range(50)]
    probs = rng.dirichlet(np.full(NUM_CLASSES, 0.5), size=(2, 50))
    files = []
    for j in range(2):
        frame = pd.DataFrame(probs[j], columns=P)
        frame.insert(0, "ans", probs[j].argmax(1))
        frame.insert(0, "ImageID", ids)
        files.append(tmp_path / f"m{j}.csv")
        frame.to_csv(files[-1], index=False)
    calib = decision_file(tmp_path / "c.json", age_bias=(0.0, -0.5, 1.0), weights=(1.0, 0.0))
    result = cli("vote", *files, "--soft", "--probs", "--calibration", calib)
    assert result.exit_code == 0, result.stderr
    out = pd.read_csv(StringIO(result.stdout))
    expected = Decision.read(calib).apply(probs[0])  # weight 0: the second file counts for nothing
    assert out["ans"].tolist() == expected.argmax(1).tolist()
    np.testing.assert_allclose(out[P].to_numpy(), expected, atol=1e-5)
    assert out["ans"].tolist() != probs[0].argmax(1).tolist()  # the biases changed decisions
    assert "m1.csv=0 (fitted on oof1.csv)" in result.stderr

    one = decision_file(tmp_path / "one.json", age_bias=(0.0, 2.0, 0.0))  # one recipe: --file-weights still count
    result = cli("vote", *files, "--soft", "--file-weights", "1,3", "--calibration", one)
    assert result.exit_code == 0, result.stderr
    mean = soft_vote(probs, np.array([1.0, 3.0]))
    assert pd.read_csv(StringIO(result.stdout))["ans"].tolist() == Decision.read(one).apply(mean).argmax(1).tolist()


# --- bad input ----------------------------------------------------------------------------------

def oof_from_p(root: Path, name: str = "oof.csv", label=None, rows: slice = slice(None)) -> None:
    """An OOF file made of p.csv: its ans as label, two folds."""
    frame = pd.read_csv(root / "p.csv", dtype={"ImageID": str}).iloc[rows]
    frame.assign(person="x", label=frame["ans"] if label is None else label, fold=0).to_csv(root / name, index=False)


def oof_pair_on_other_images(root: Path) -> None:
    oof_from_p(root, "a.csv", rows=slice(0, 30))
    oof_from_p(root, "b.csv", rows=slice(10, 40))


def calib_files(root: Path) -> None:
    decision_file(root / "two.json", weights=(1.0, 2.0))
    decision_file(root / "one.json", age_bias=(0.0, 0.5, 0.5))
    good = json.loads((root / "one.json").read_text())
    _write(root / "task.json", {**good, "task": "dogs-vs-cats"})
    _write(root / "short.json", {**good, "age_bias": [0.0, 1.0]})
    _write(root / "huge.json", {**good, "age_bias": [0.0, 1e6, 0.0]})
    _write(root / "noweight.json", {**good, "recipes": [{**good["recipes"][0], "weight": 0}]})
    (root / "text.json").write_text("not json\n")


def other_json(root: Path) -> None:
    oof_from_p(root)
    (root / "other.json").write_text('{"model": "not a calibration"}\n')


PREDICT_OUT = {"absent": ["out.csv"]}
BAD_CALLS = [
    bad("calibrate a prediction CSV (no label)", ["calibrate", "p.csv", "-o", "c.json"], absent=["c.json"]),
    bad("calibrate a manifest", ["calibrate", "folds.csv", "-o", "c.json"], absent=["c.json"]),
    bad("calibrate label 18", ["calibrate", "oof.csv", "-o", "c.json"], lambda r: oof_from_p(r, label=18),
        absent=["c.json"]),
    bad("calibrate OOF files of other images", ["calibrate", "a.csv", "b.csv", "-o", "c.json"],
        oof_pair_on_other_images, absent=["c.json"]),
    bad("calibrate one file twice", ["calibrate", "oof.csv", "oof.csv", "-o", "c.json"], oof_from_p,
        absent=["c.json"]),
    bad("calibrate -o over a CSV", ["calibrate", "oof.csv", "-o", "q.csv"], oof_from_p),
    bad("calibrate -o over its input", ["calibrate", "oof.csv", "-o", "oof.csv"], oof_from_p),
    bad("calibrate -o over another JSON", ["calibrate", "oof.csv", "-o", "other.json"], other_json),
    bad("calibrate no file", ["calibrate", "missing.csv"]),
    bad("predict --calibration missing", [*PREDICT, "--calibration", "none.json"], **PREDICT_OUT),
    bad("predict --calibration not JSON", [*PREDICT, "--calibration", "text.json"], calib_files, **PREDICT_OUT),
    bad("predict --calibration another task", [*PREDICT, "--calibration", "task.json"], calib_files, **PREDICT_OUT),
    bad("predict --calibration two age biases", [*PREDICT, "--calibration", "short.json"], calib_files,
        **PREDICT_OUT),
    bad("predict --calibration bias 1e6", [*PREDICT, "--calibration", "huge.json"], calib_files, **PREDICT_OUT),
    bad("predict --calibration no weight", [*PREDICT, "--calibration", "noweight.json"], calib_files, **PREDICT_OUT),
    bad("predict --calibration of a vote", [*PREDICT, "--calibration", "two.json"], calib_files, **PREDICT_OUT),
    bad("predict -o the calibration", [*PREDICT[:-1], "one.json", "--calibration", "one.json"], calib_files),
    bad("vote --calibration without --soft", ["vote", "p.csv", "q.csv", "--calibration", "one.json"], calib_files),
    bad("vote --calibration of 2 recipes, 1 file", ["vote", "p.csv", "--soft", "--calibration", "two.json"],
        calib_files),
    bad("vote --calibration weights and --file-weights",
        ["vote", "p.csv", "q.csv", "--soft", "--file-weights", "1,2", "--calibration", "two.json"], calib_files),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


def test_an_oof_file_of_another_task_names_the_file_and_the_fix(cli, world):
    oof_from_p(world)
    pd.read_csv(world / "oof.csv").drop(columns=["fold"]).to_csv(world / "val.csv", index=False)
    assert_one_line_error(cli("calibrate", "val.csv"), "val.csv", "no fold column", "--oof-out")
    calib_files(world)
    assert_one_line_error(cli("vote", "p.csv", "--soft", "--calibration", "task.json"), "task.json", "dogs-vs-cats")
