"""`maskkit predict`: the prediction CSV of docs/formats.md from one or more models, on any images."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from maskkit.cli import app
from maskkit.commands.predict import run as predict
from maskkit.contract.labels import class_name
from maskkit.contract.predictions import PROB_COLUMNS
from helpers import assert_one_line_error, one_thread


def check_prediction_csv(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == ["ImageID", "ans", *PROB_COLUMNS]
    probs = frame[PROB_COLUMNS].to_numpy()
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    assert (probs.argmax(1) == frame["ans"].to_numpy()).all()


@pytest.mark.parametrize("which", ["single_run", "multi_run"])
def test_prediction_csv_invariants_and_f1_on_held_out_persons(which, request, cli, drawn):
    run = request.getfixturevalue(which)
    with one_thread():
        result = cli("predict", run, drawn / "eval", "--device", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(StringIO(result.stdout), dtype={"ImageID": str})
    check_prediction_csv(frame)
    info = pd.read_csv(drawn / "eval" / "info.csv", dtype={"ImageID": str})
    assert frame["ImageID"].tolist() == info["ImageID"].tolist()
    truth = pd.read_csv(drawn / "eval" / "truth.csv", dtype={"ImageID": str}).set_index("ImageID")
    f1 = f1_score(truth.loc[frame["ImageID"], "ans"], frame["ans"], average="macro", labels=range(18), zero_division=0)
    assert f1 > 0.15  # 8 eval persons never seen in training (measured 0.25 single, 0.30 multi); chance 0.056


def test_rows_follow_info_csv_order(multi_run, drawn, tmp_path):
    data = tmp_path / "eval"
    shutil.copytree(drawn / "eval", data)
    info = pd.read_csv(data / "info.csv", dtype={"ImageID": str})
    shuffled = info.sample(frac=1, random_state=1)
    shuffled.to_csv(data / "info.csv", index=False)
    with one_thread():
        original = predict(multi_run, drawn / "eval", device="cpu", workers=0, out=tmp_path / "a.csv")
        reordered = predict(multi_run, data, device="cpu", workers=0, out=tmp_path / "b.csv")
    assert reordered["ImageID"].tolist() == shuffled["ImageID"].tolist()
    pd.testing.assert_frame_equal(original.set_index("ImageID").loc[shuffled["ImageID"]],
                                  reordered.set_index("ImageID"))
    on_disk = pd.read_csv(tmp_path / "b.csv", dtype={"ImageID": str})
    assert on_disk["ImageID"].tolist() == shuffled["ImageID"].tolist()
    check_prediction_csv(on_disk)


def test_a_plain_image_folder_works_with_relative_paths_as_image_ids(multi_run, drawn, tmp_path):
    images = sorted((drawn / "eval" / "images").glob("*"))[:12]
    for i, path in enumerate(images):
        target = tmp_path / "plain" / ("sub" if i % 2 else "") / f"{path.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), cv2.imread(str(path)))
    (tmp_path / "plain" / "._hidden.png").write_bytes(b"macOS resource fork")
    with one_thread():
        plain = predict(multi_run, tmp_path / "plain", device="cpu", workers=0, out=tmp_path / "plain.csv")
    expected = sorted(("sub/" if i % 2 else "") + f"{p.stem}.png" for i, p in enumerate(images))
    assert plain["ImageID"].tolist() == expected
    check_prediction_csv(plain)


def test_flip_tta_averages_an_image_and_its_mirror(multi_run):
    """With --tta flip, an image and its mirror get the same probabilities; without, they do not."""
    from maskkit.engine.models import load_run
    from maskkit.engine.loop import OnDevice, predict_probs

    model, config = load_run(multi_run)
    images = torch.randn(3, 3, *config["img_size"], generator=torch.Generator().manual_seed(0))
    batch = torch.cat([images, images.flip(3)])
    loader = [(batch, {}, torch.arange(6))]
    with one_thread():
        flip = predict_probs(model, loader, 6, OnDevice(torch.device("cpu")), tta="flip", show_progress=False)
        none = predict_probs(model, loader, 6, OnDevice(torch.device("cpu")), tta="none", show_progress=False)
    np.testing.assert_allclose(flip.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(flip[:3], flip[3:], atol=1e-6)
    np.testing.assert_allclose(flip, (none + none[[3, 4, 5, 0, 1, 2]]) / 2, atol=1e-6)
    assert not np.allclose(none[:3], none[3:], atol=1e-3)


def test_missing_image_is_one_line_and_exit_2(multi_run, drawn, tmp_path, cli):
    data = tmp_path / "eval"
    shutil.copytree(drawn / "eval", data)
    victim = sorted((data / "images").iterdir())[3]
    victim.unlink()
    result = cli("predict", multi_run, data, "-o", tmp_path / "out.csv", "--device", "cpu")
    assert result.exit_code == 2
    assert victim.name in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_one_line_naming_it(multi_run, drawn, tmp_path, cli, workers):
    data = tmp_path / "eval"
    shutil.copytree(drawn / "eval", data)
    victim = sorted((data / "images").iterdir())[5]
    victim.write_bytes(b"not a jpeg at all")
    result = cli("predict", multi_run, data, "-o", tmp_path / "out.csv", "--device", "cpu", "--workers", workers)
    assert result.exit_code == 2, result.stderr
    assert victim.name in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_run_without_best_pt_or_missing_run_is_one_line_and_exit_2(multi_run, drawn, tmp_path, cli):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(multi_run / "config.json", unfinished / "config.json")
    for run, expected in ((unfinished, "no best.pt"), (tmp_path / "nowhere", "not found")):
        result = cli("predict", run, drawn / "eval", "--device", "cpu")
        assert result.exit_code == 2
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = cli("predict", multi_run, drawn / "eval", "--tta", "rotate")
    assert result.exit_code == 2 and "--tta" in result.stderr


def test_a_format_2_run_from_before_the_newer_options_predicts_the_same(multi_run, drawn, tmp_path):
    """config.json format 2 as maskkit wrote it before the options added since (opt, sched, threads)."""
    import json

    old = tmp_path / "old"
    shutil.copytree(multi_run, old)
    config = json.loads((old / "config.json").read_text())
    config["options"] = {k: v for k, v in config["options"].items() if k not in ("opt", "sched", "threads")}
    (old / "config.json").write_text(json.dumps(config))
    with one_thread():
        before = predict(multi_run, drawn / "eval", device="cpu", workers=0, out=tmp_path / "new.csv")
        after = predict(old, drawn / "eval", device="cpu", workers=0, out=tmp_path / "old.csv")
    pd.testing.assert_frame_equal(before, after)


# --- any images, several models (issue 16 item 2) ------------------------------------------------

def wide_copy(run, tmp_path):
    """`run` with another geometry: the whole frame (crop 1.0) at 56x48 (test_resnet takes any size)."""
    import json

    wide = tmp_path / "wide"
    shutil.copytree(run, wide)
    config = json.loads((wide / "config.json").read_text())
    config["crop"] = [1.0, 1.0]
    config["options"]["img_size"] = [56, 48]
    (wide / "config.json").write_text(json.dumps(config))
    return wide


def loose_images(drawn, root):
    """a.jpg, dir/ (with a sub-folder) and more/*.png under `root`, from the drawn eval images."""
    sources = sorted((drawn / "eval" / "images").glob("*"))
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "more").mkdir()
    shutil.copy(sources[0], root / "a.jpg")
    for i, path in enumerate(sources[1:5]):
        shutil.copy(path, root / "dir" / ("sub" if i % 2 else "") / path.name)
    for path in sources[5:8]:
        cv2.imwrite(str(root / "more" / f"{path.stem}.png"), cv2.imread(str(path)))


def test_two_runs_on_files_folders_and_a_glob_average_the_single_runs(multi_run, drawn, tmp_path, cli, monkeypatch):
    """`predict runs/f0 runs/f1 a.jpg dir/ 'more/*.png'`: one CSV keyed by path, probabilities = the mean
    of the two single-run CSVs (the second run with its own input size and crop)."""
    monkeypatch.chdir(tmp_path)
    loose_images(drawn, tmp_path)
    wide = wide_copy(multi_run, tmp_path)
    images = ["a.jpg", "dir/", "more/*.png"]
    with one_thread():
        both = cli("predict", multi_run, wide, *images, "--device", "cpu", "-o", "both.csv")
        first = cli("predict", multi_run, *images, "--device", "cpu", "-o", "first.csv")
        second = cli("predict", wide, *images, "--device", "cpu", "-o", "second.csv")
    assert both.exit_code == first.exit_code == second.exit_code == 0, both.stderr + first.stderr + second.stderr
    frames = [pd.read_csv(tmp_path / f"{name}.csv", dtype={"ImageID": str}) for name in ("both", "first", "second")]
    for frame in frames:
        check_prediction_csv(frame)
    expected_ids = (["a.jpg"] + sorted(f"dir/{p.relative_to(tmp_path / 'dir').as_posix()}"
                                       for p in (tmp_path / "dir").rglob("*.*"))
                    + sorted(f"more/{p.name}" for p in (tmp_path / "more").glob("*.png")))
    assert frames[0]["ImageID"].tolist() == expected_ids
    mean = (frames[1][PROB_COLUMNS].to_numpy() + frames[2][PROB_COLUMNS].to_numpy()) / 2
    np.testing.assert_allclose(frames[0][PROB_COLUMNS].to_numpy(), mean, atol=1.5e-6)
    assert not np.allclose(frames[1][PROB_COLUMNS].to_numpy(), frames[2][PROB_COLUMNS].to_numpy(), atol=1e-3)


def test_one_photo_and_stdin_paths_and_names_columns_that_vote_and_score_ignore(multi_run, drawn, tmp_path,
                                                                             runner, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loose_images(drawn, tmp_path)
    with one_thread():
        photo = cli("predict", multi_run, "a.jpg", "--device", "cpu")
        listed = runner.invoke(app, ["predict", str(multi_run), "-", "--names", "--device", "cpu", "-o", "named.csv"],
                               input="a.jpg\n\nmore/" + "\nmore/".join(sorted(p.name for p in (tmp_path / "more").iterdir())) + "\n")
    assert photo.exit_code == 0, photo.stderr
    assert pd.read_csv(StringIO(photo.stdout))["ImageID"].tolist() == ["a.jpg"]
    assert listed.exit_code == 0, listed.stderr
    named = pd.read_csv(tmp_path / "named.csv", dtype={"ImageID": str})
    assert list(named.columns[:5]) == ["ImageID", "ans", "mask", "gender", "age"] and len(named) == 4
    assert ["/".join(row) for row in named[["mask", "gender", "age"]].to_numpy()] == [class_name(a) for a in named["ans"]]
    check_prediction_csv(named.drop(columns=["mask", "gender", "age"]))
    voted = cli("vote", "named.csv", "named.csv", "--soft", "-o", "voted.csv")
    assert voted.exit_code == 0, voted.stderr
    scored = cli("score", "voted.csv", "named.csv")
    assert scored.exit_code == 0, scored.stderr
    assert "1.0" in scored.stdout.splitlines()[1]


def test_bad_image_arguments_are_one_line_and_exit_2(multi_run, drawn, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loose_images(drawn, tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    cases = [((multi_run, "photo.jpg"), "photo.jpg: not found"), ((multi_run, "none/*.png"), "no image matches"),
             ((multi_run, "notes.txt"), "not an image"), ((multi_run, "a.jpg", multi_run), "put every run"),
             (("a.jpg",), "a.jpg: not a model"), ((multi_run, "-", "-"), "standard input given twice"),
             ((multi_run, "x" * 300 + ".jpg"), "file name too long"), (("m" * 300,), "file name too long")]
    for args, expected in cases:
        result = cli("predict", *args, "--device", "cpu", "-o", "out.csv")
        assert result.exit_code == 2, (args, result.stderr)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_paths_piped_into_a_real_process(multi_run, drawn, tmp_path):
    """`find ... | maskkit predict RUN -` through an OS pipe (not CliRunner): one row per listed path."""
    listed = sorted(str(p) for p in (drawn / "eval" / "images").iterdir())[:3]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "maskkit", "predict", str(multi_run), "-", "--device", "cpu",
                             "--threads", "1"], input="\n".join(listed) + "\n", capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(StringIO(result.stdout), dtype={"ImageID": str})
    assert frame["ImageID"].tolist() == listed
    check_prediction_csv(frame)


def test_the_train_folder_and_a_manifest_are_keyed_like_the_manifest_so_score_matches(multi_run, drawn, tmp_path,
                                                                                    cli, monkeypatch):
    """`predict RUN data/train` keys rows data/train/images/... as `split data/train` writes them (not
    images/...), `predict RUN folds.csv` predicts the manifest's images keyed by its path, and `score`
    takes the manifest as truth for both."""
    monkeypatch.chdir(drawn.parent)  # the shared dataset is `data` here; everything written goes to tmp_path
    folds = tmp_path / "folds.csv"
    assert cli("split", "data/train", "--folds", "4", "-o", folds).exit_code == 0
    manifest = pd.read_csv(folds, dtype={"person": str})
    with one_thread():
        folder = cli("predict", multi_run, "data/train/", "--device", "cpu", "-o", tmp_path / "folder.csv")
        listed = cli("predict", multi_run, folds, "--device", "cpu", "-o", tmp_path / "listed.csv")
    assert folder.exit_code == 0, folder.stderr
    assert listed.exit_code == 0, listed.stderr
    by_folder, by_manifest = (pd.read_csv(tmp_path / f"{n}.csv", dtype={"ImageID": str}) for n in ("folder", "listed"))
    assert by_manifest["ImageID"].tolist() == manifest["path"].tolist()
    assert by_folder["ImageID"].str.startswith("data/train/images/").all()
    assert sorted(by_folder["ImageID"]) == sorted(manifest["path"])
    check_prediction_csv(by_manifest)
    pd.testing.assert_frame_equal(by_folder.set_index("ImageID").loc[manifest["path"]],
                                  by_manifest.set_index("ImageID"))
    for name in ("folder", "listed"):
        scored = cli("score", tmp_path / f"{name}.csv", folds, "--quiet")
        assert scored.exit_code == 0, scored.stderr
        assert pd.read_csv(StringIO(scored.stdout))["images"].iloc[0] == len(manifest)


# --- issue 31 items 10, 11, 13 and the lower ones: nothing trusted that someone else wrote ------------

def digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, multi_run) -> Path:
    """multi_run exported to m.onnx (and m.onnx.json), read-only for the tests: they copy it."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from maskkit.commands import export

    model = tmp_path_factory.mktemp("exported") / "m.onnx"
    with one_thread():
        export.run(multi_run, model)
    return model


class Constant(torch.nn.Module):
    """A graph that outputs `value` for each of `width` columns, whatever the image."""

    def __init__(self, value: float, width: int = 18) -> None:
        super().__init__()
        self.value, self.width = value, width

    def forward(self, images):
        return images.float().mean((1, 2, 3))[:, None] * 0 + torch.full((self.width,), self.value)


def lying_graph(value: float, width: int = 18):
    """A graph with the good model's metadata but outputs that are no probabilities."""

    def make(good: Path, out: Path) -> None:
        import json

        import onnx
        from maskkit.engine.export import METADATA_KEY, write_onnx

        meta = json.loads({p.key: p.value for p in onnx.load(str(good)).metadata_props}[METADATA_KEY])
        write_onnx(Constant(value, width), meta, out)

    return make


def lying_metadata(edit):
    """The good graph with its metadata record edited by `edit(record)`."""

    def make(good: Path, out: Path) -> None:
        import json

        import onnx

        proto = onnx.load(str(good))
        entry = next(p for p in proto.metadata_props if p.key == "maskkit")
        record = json.loads(entry.value)
        edit(record)
        entry.value = json.dumps(record)
        onnx.save(proto, str(out))

    return make


def lying_sidecar(edit):
    """The good graph and a sidecar beside it edited by `edit(record)`."""

    def make(good: Path, out: Path) -> None:
        import json

        shutil.copy(good, out)
        record = json.loads(Path(f"{good}.json").read_text())
        edit(record)
        Path(f"{out}.json").write_text(json.dumps(record))

    return make


def taller(record: dict) -> None:  # a size the graph does not take, the record otherwise consistent
    record["input"]["height"] = 64
    record["resize"]["height"] = round(64 / record["crop"][0])


LIES = [
    ("outputs-5.0", lying_graph(5.0), "not class probabilities"),
    ("outputs-nan", lying_graph(float("nan")), "not class probabilities"),
    ("outputs-summing-to-2", lying_graph(2 / 18), "not class probabilities"),
    ("ten-outputs", lying_graph(0.1, 10), "(batch, 18)"),
    ("height-abc", lying_metadata(lambda r: r["input"].update(height="abc")), "input.height 'abc'"),
    ("size-not-the-graphs", lying_metadata(taller), "(input.height, input.width)"),
    ("size-0x0", lying_metadata(lambda r: r["input"].update(height=0, width=0)), "input.height 0"),
    ("crop-5-5", lying_metadata(lambda r: r.update(crop=[5, 5])), "crop [5, 5]"),
    ("no-input-key", lying_metadata(lambda r: r.pop("input")), "input is missing"),
    ("classes-10", lying_metadata(lambda r: r["output"].update(classes=r["output"]["classes"][:10])),
     "output.classes"),
    ("sidecar-height-abc", lying_sidecar(lambda r: r["input"].update(height="abc")), "m.onnx.json: input.height"),
    ("sidecar-other-crop", lying_sidecar(lambda r: r.update(crop=[1.0, 1.0], resize={
        "height": r["input"]["height"], "width": r["input"]["width"], "interpolation": "area"})),
     "m.onnx.json: resize.height"),
    ("sidecar-other-run", lying_sidecar(lambda r: r.update(run="another")), "m.onnx.json: run 'another' differs"),
]


@pytest.mark.parametrize("make, expected", [row[1:] for row in LIES], ids=[row[0] for row in LIES])
def test_a_lying_onnx_model_is_one_line_exit_2_and_writes_nothing(exported, drawn, tmp_path, cli, make, expected):
    """Item 10 and 13: a graph whose rows are not probabilities, metadata or a sidecar that lies about the
    input, crop or classes: refused in one line naming the file and the key; the CSV -o names is untouched."""
    from maskkit.contract.predictions import prediction_frame, write_predictions

    model = tmp_path / "m.onnx"
    make(exported, model)
    victim = tmp_path / "preds.csv"
    write_predictions(prediction_frame(["x.jpg"], np.full((1, 18), 1 / 18)), victim)
    before = digest(victim)
    with one_thread():
        result = cli("predict", model, drawn / "eval", "--device", "cpu", "--workers", "0", "-o", victim)
    assert_one_line_error(result, expected, str(model))
    assert digest(victim) == before


def test_the_untouched_export_still_predicts(exported, drawn, cli):
    with one_thread():
        result = cli("predict", exported, drawn / "eval", "--device", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.stderr
    check_prediction_csv(pd.read_csv(StringIO(result.stdout), dtype={"ImageID": str}))


def odd_names(drawn, root: Path) -> list[bytes]:
    """Images whose names a careless reader merges: spaces at either end, a latin-1 byte, and a name
    that literally reads `caf\\xe9.jpg` (what the latin-1 one was escaped to). Returns their names."""
    names = [b" lead.jpg", b"trail.jpg ", b"caf\xe9.jpg", b"caf\\xe9.jpg"]
    source = sorted((drawn / "eval" / "images").iterdir())
    root.mkdir()
    for name, image in zip(names, source):
        shutil.copy(image, os.path.join(os.fsencode(root), name))
    return names


def test_stdin_paths_are_read_verbatim_and_no_two_names_share_an_image_id(multi_run, drawn, tmp_path, runner,
                                                                         monkeypatch):
    """Item 11: ' lead.jpg' was read as lead.jpg; `caf<e9>.jpg` and a file named `caf\\xe9.jpg` got one ImageID."""
    monkeypatch.chdir(tmp_path)
    names = odd_names(drawn, tmp_path / "odd")
    listed = b"".join(b"odd/" + name + (b"\r\n" if i == 1 else b"\n") for i, name in enumerate(names))
    with one_thread():
        piped = runner.invoke(app, ["predict", str(multi_run), "-", "--device", "cpu", "--workers", "0"], input=listed)
        folder = runner.invoke(app, ["predict", str(multi_run), "odd", "--device", "cpu", "--workers", "0"])
    assert piped.exit_code == 0 and folder.exit_code == 0, piped.stderr + folder.stderr
    from_stdin = pd.read_csv(StringIO(piped.stdout), dtype={"ImageID": str}, keep_default_na=False)
    from_folder = pd.read_csv(StringIO(folder.stdout), dtype={"ImageID": str}, keep_default_na=False)
    expected = [" lead.jpg", "trail.jpg ", "caf\\xe9.jpg", "caf\\\\xe9.jpg"]
    assert from_stdin["ImageID"].tolist() == ["odd/" + name for name in expected]
    assert sorted(from_folder["ImageID"]) == sorted(set(expected) - {"trail.jpg "})  # a folder lists *.jpg only


def test_a_glob_through_a_link_to_its_own_folder_predicts_each_image_once(multi_run, drawn, tmp_path, cli,
                                                                        monkeypatch):
    """Lower item: `dir/**/*.jpg` with dir/self -> . listed every image 41 times."""
    monkeypatch.chdir(tmp_path)
    loose_images(drawn, tmp_path)
    (tmp_path / "dir" / "self").symlink_to(".")
    with one_thread():
        result = cli("predict", multi_run, "dir/**/*.jpg", "--device", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(StringIO(result.stdout), dtype={"ImageID": str})
    real = sorted(f"dir/{p.relative_to(tmp_path / 'dir').as_posix()}" for p in (tmp_path / "dir").rglob("*.jpg"))
    assert frame["ImageID"].tolist() == real and len(real) == 4


JUNK = bytes(range(0x80, 0x100)) * 4096 + b"A" * 100_000  # 600 kB, no line ending, not UTF-8


@pytest.mark.parametrize("listed, expected", [(JUNK, "1 of 1 listed images not found"),
                                              (b"a.jpg\nb\x00.jpg\n" + JUNK[:5000] + b"\n", "2 of 3 listed"),
                                              (b"\x1b[31mred.jpg\n", "\\x1b[31mred.jpg")],
                         ids=["binary-junk", "nul-and-junk-lines", "terminal-escape"])
def test_junk_on_stdin_is_one_short_escaped_line(multi_run, tmp_path, runner, monkeypatch, listed, expected):
    """Lower item: binary junk on `predict -` was echoed raw, a 21 MB "one line"."""
    monkeypatch.chdir(tmp_path)
    Path("a.jpg").write_bytes(b"listed, found, never decoded: the refusal comes first")
    result = runner.invoke(app, ["predict", str(multi_run), "-", "--device", "cpu", "-o", "out.csv"], input=listed)
    assert_one_line_error(result, expected)
    assert len(result.stderr) < 600 and "\x1b" not in result.stderr, result.stderr
    assert not (tmp_path / "out.csv").exists()


# --- bad input (moved from test_hostile.py) ---

from hostile import (PREDICT, RUN, absolute_id, assert_full_disk_leaves_no_file,  # noqa: E402
                     assert_refused_while_parsing, bad, climbing_id, config_field, header_only_info, info_image_id,
                     latin1_folder, link_out_of_eval, nan_weight, notes_file, run_bad)

PREDICT_X = ["predict", RUN, "X/eval", "--device", "cpu"]
BAD_CALLS = [
    bad("predict -o info.csv", [*PREDICT_X, "-o", "X/eval/info.csv"]),
    bad("predict -o truth.csv", [*PREDICT_X, "-o", "X/eval/truth.csv"]),
    bad("predict -o inside the images folder", [*PREDICT_X, "-o", "X/eval/images/new.csv"]),
    bad("predict -o a foreign file", [*PREDICT_X, "-o", "notes.txt"], notes_file),
    bad("predict -o a file of the run", [*PREDICT_X, "-o", f"{RUN}/metrics.csv"]),
    bad("predict -o the run's val_preds.csv", [*PREDICT_X, "-o", f"{RUN}/val_preds.csv"]),
    bad("predict -o inside the run folder", [*PREDICT[:-1], f"{RUN}/new.csv"], absent=[f"{RUN}/new.csv"]),
    bad("predict -o a folder", [*PREDICT_X, "-o", "runs"]),
    bad("predict -o read-only", [*PREDICT_X, "-o", "{ro}/p.csv"]),
    bad("predict header-only info.csv", ["predict", RUN, "E", "--device", "cpu"], header_only_info),
    bad("predict ImageID ../../../victim", PREDICT, info_image_id(climbing_id), absent=["out.csv"]),
    bad("predict ImageID absolute", PREDICT, info_image_id(absolute_id), absent=["out.csv"]),
    bad("predict ImageID a symlink out", PREDICT, info_image_id(link_out_of_eval), absent=["out.csv"]),
    bad("predict NaN in a best.pt weight", PREDICT, nan_weight, absent=["out.csv"]),
    bad("predict config.json std [0,0,0]", PREDICT, config_field("std", [0, 0, 0]), absent=["out.csv"]),
    bad("predict config.json NaN mean", PREDICT, config_field("mean", [float("nan"), 0.4, 0.4]), absent=["out.csv"]),
    bad("predict config.json img_size [0,0]", PREDICT_X, config_field("img_size", [0, 0])),
    bad("predict config.json img_size [-5,48]", PREDICT_X, config_field("img_size", [-5, 48])),
    bad("predict config.json img_size [100000,100000]", PREDICT_X, config_field("img_size", [100000, 100000])),
    bad("predict config.json crop [5,5]", PREDICT_X, config_field("crop", [5, 5])),
    bad("predict config.json crop [0,0]", PREDICT_X, config_field("crop", [0, 0])),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


@pytest.mark.parametrize("argv, option", [
    (["predict", RUN, "X/eval", "--workers", "-2"], "--workers"),
    (["predict", RUN, "X/eval", "--threads", "100000"], "--threads"),
], ids=["--workers -2", "--threads 100000"])
def test_an_option_out_of_its_range_is_one_line_before_anything_is_written(world, argv, option, monkeypatch, capsys):
    assert_refused_while_parsing(world, argv, option, monkeypatch, capsys)


@pytest.mark.slow
def test_a_full_disk_is_one_line_exit_1_and_leaves_no_file(world):
    assert_full_disk_leaves_no_file(world, [*PREDICT_X, "--workers", "0", "-o", "out/p.csv"])  # no shared-memory files


def test_a_latin1_file_name_is_predicted(cli, world):
    latin1_folder(world)
    result = cli("predict", RUN, "odd", "--device", "cpu", "--workers", "0", "-o", "odd.csv")
    assert result.exit_code == 0, result.stderr
    assert len(pd.read_csv(world / "odd.csv")) == 1


for _slow in (test_paths_piped_into_a_real_process, test_run_without_best_pt_or_missing_run_is_one_line_and_exit_2,
              test_a_format_2_run_from_before_the_newer_options_predicts_the_same,
              test_two_runs_on_files_folders_and_a_glob_average_the_single_runs,
              test_one_photo_and_stdin_paths_and_names_columns_that_vote_and_score_ignore,
              test_the_train_folder_and_a_manifest_are_keyed_like_the_manifest_so_score_matches):
    pytest.mark.slow(_slow)  # over ~2 s: marked here so the lines above stay as they are
