"""The file contract (docs/formats.md): each format's reader rejects what the contract forbids,
with one line naming the file, and accepts what earlier versions wrote."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers import assert_one_line_error
from maskkit.contract.errors import MaskkitError
from maskkit.contract.fixes import read_fixes
from maskkit.contract.manifest import MANIFEST_COLUMNS, read_manifest
from maskkit.contract.predictions import PROB_COLUMNS, prediction_frame, read_predictions
from maskkit.contract.recipe import read_recipe, recipe_text
from maskkit.contract.runfolder import config_view, read_config, read_metrics, stored_config


def one_line(excinfo, *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


# --- manifest ----------------------------------------------------------------------------------

def manifest_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "path": ["a/mask1.jpg", "a/normal.jpg", "b/mask1.jpg"], "person": ["a", "a", "b"],
        "gender": ["male", "male", "female"], "age": [25, 25, 61], "mask": ["wear", "not_wear", "wear"],
        "label": [0, 12, 5], "fold": [0, 0, 1]})


MANIFEST_BREAKS = {
    "a person in two folds": (lambda m: m.assign(fold=[0, 1, 1]), "two folds"),
    "label outside 0..17": (lambda m: m.assign(label=[0, 18, 5]), "label outside"),
    "unknown gender": (lambda m: m.assign(gender=["male", "male", "x"]), "gender must be one of"),
    "text in fold": (lambda m: m.assign(fold=["0", "zero", "1"]), "fold is not a number"),
    "missing column": (lambda m: m.drop(columns="fold"), "missing column"),
    "no rows": (lambda m: m.iloc[:0], "no rows"),
    "an empty path": (lambda m: m.assign(path=["", "a/normal.jpg", "b/mask1.jpg"]), "empty path"),
    "a path on two rows": (lambda m: m.assign(path=["a/mask1.jpg", "a/mask1.jpg", "b/mask1.jpg"]), "repeat an image"),
    "a person with two genders": (lambda m: m.assign(gender=["male", "female", "female"]), "different genders"),
    "a person with two ages": (lambda m: m.assign(age=[25, 26, 61]), "different ages"),
}


@pytest.mark.parametrize("case", MANIFEST_BREAKS)
def test_manifest_reader_refuses_what_the_contract_forbids(case, tmp_path):
    path = tmp_path / "m.csv"
    manifest_rows().to_csv(path, index=False)
    assert len(read_manifest(path)) == 3  # the valid one reads
    change, expected = MANIFEST_BREAKS[case]
    change(manifest_rows()).to_csv(path, index=False)
    with pytest.raises(MaskkitError) as excinfo:
        read_manifest(path)
    one_line(excinfo, str(path), expected)


def test_manifest_reader_returns_the_contract_columns_in_order(tmp_path):
    path = tmp_path / "m.csv"
    manifest_rows()[list(MANIFEST_COLUMNS)[::-1]].assign(extra=1).to_csv(path, index=False)
    assert tuple(read_manifest(path).columns) == MANIFEST_COLUMNS


# --- predictions -------------------------------------------------------------------------------

def predictions() -> pd.DataFrame:
    probs = [[1 / 18] * 18, [0.5] + [0.5 / 17] * 17]
    return prediction_frame(["x.jpg", "y.jpg"], probs)


PREDICTION_BREAKS = {
    "an ImageID twice": (lambda f: f.assign(ImageID=["x.jpg", "x.jpg"]), "repeat an ImageID"),
    "ans outside 0..17": (lambda f: f.assign(ans=[0, 18]), "ans outside"),
    "a negative probability": (lambda f: f.assign(p3=[-0.1, 0.0]), "missing, negative or do not sum to 1"),
    "text in a probability": (lambda f: f.assign(p0=["high", 0.5]), "missing, negative or do not sum to 1"),
    "probabilities summing to 3": (lambda f: f.assign(**{c: f[c] * 3 for c in PROB_COLUMNS}), "do not sum to 1"),
    "no rows": (lambda f: f.iloc[:0], "no rows"),
    "a missing p column": (lambda f: f.drop(columns="p17"), "missing column"),
}


@pytest.mark.parametrize("case", PREDICTION_BREAKS)
def test_prediction_reader_refuses_what_the_contract_forbids(case, tmp_path):
    path = tmp_path / "p.csv"
    predictions().to_csv(path, index=False)
    table, probs = read_predictions(path)
    assert table["ans"].tolist() == [0, 0] and probs.shape == (2, 18)
    change, expected = PREDICTION_BREAKS[case]
    change(predictions()).to_csv(path, index=False)
    with pytest.raises(MaskkitError) as excinfo:
        read_predictions(path)
    one_line(excinfo, str(path), expected)


def test_prediction_frame_writes_the_argmax_of_the_written_values():
    frame = predictions()
    assert list(frame.columns) == ["ImageID", "ans", *PROB_COLUMNS]
    assert frame["ans"].tolist() == frame[PROB_COLUMNS].to_numpy().argmax(1).tolist()


# --- run folder ----------------------------------------------------------------------------------

OPTIONS = {"backbone": "resnet18", "heads": "multi", "age_weight": 0.1, "old_age": 60, "img_size": [64, 48],
           "dropout": 0.0, "fold": 2, "seed": 42, "lr": 0.001}


def write_config(run, data) -> None:
    run.mkdir(exist_ok=True)
    (run / "config.json").write_text(json.dumps(data))


def test_a_format_2_config_reads_as_one_flat_view(tmp_path):
    stored = stored_config(config_view({"options": OPTIONS, "mean": [0.5] * 3, "std": [0.5] * 3}))
    assert stored["format"] == 2 and not set(stored) & {"backbone", "heads", "img_size", "fold", "age_regression"}
    write_config(tmp_path / "run", stored)
    view = read_config(tmp_path / "run")
    for key in ("backbone", "heads", "img_size", "fold", "age_weight", "seed"):
        assert view[key] == OPTIONS[key], key
    assert view["age_regression"] is True and view["mean"] == [0.5] * 3


CONFIG_BREAKS = {
    "not JSON": ("{oops", "not valid JSON"),
    "a list": ("[1, 2]", "not a maskkit run config"),
    "options not a mapping": ('{"options": [1]}', "not a maskkit run config"),
    "no backbone": ('{"format": 2, "options": {"heads": "multi"}}', "missing backbone"),
    "format 1": ('{"backbone": "resnet18", "img_size": [64, 48], "options": {"backbone": "resnet18"}}',
                 "config format 1 is not the format 2"),
    # options of the wrong type (a hostile or hand-edited config.json): one line naming the key
    **{f"{key} {value}": (json.dumps({"format": 2, "options": {**OPTIONS, key: value}}), f"{key}: {value!r}")
       for key, value in [("age_weight", "x"), ("age_weight", [1]), ("dropout", "x"), ("old_age", "x"), ("backbone", 5)]},
}


@pytest.mark.parametrize("case", CONFIG_BREAKS)
def test_config_reader_refuses_what_the_contract_forbids(case, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text, expected = CONFIG_BREAKS[case]
    (run / "config.json").write_text(text)
    with pytest.raises(MaskkitError) as excinfo:
        read_config(run)
    one_line(excinfo, str(run), expected)


@pytest.mark.parametrize("row, column", [("x,1,1,1,1,0.5,0.5,0.5,0.5,0.5", "epoch"),
                                         ("1,1,1,1,1,high,0.5,0.5,0.5,0.5", "val_f1"),
                                         ("1,1,1,1,1,0.5,0.5,0.5,,0.5", "f1_gender")])
def test_metrics_reader_refuses_an_epoch_or_score_that_is_not_a_number(row, column, tmp_path):
    columns = "epoch,seconds,lr,train_loss,val_loss,val_f1,val_acc,f1_mask,f1_gender,f1_age\n"
    (tmp_path / "metrics.csv").write_text(columns + "1,1,1,1,1,0.5,0.5,0.5,0.5,0.5\n")
    assert read_metrics(tmp_path)["epoch"].tolist() == [1]
    (tmp_path / "metrics.csv").write_text(columns + row + "\n")
    with pytest.raises(MaskkitError) as excinfo:
        read_metrics(tmp_path)
    one_line(excinfo, "metrics.csv", f"{column} is not a number on line 2")


# --- fixes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("age", ["-40", "inf", "1e300", "old"])
def test_fixes_reader_refuses_an_age_that_is_not_a_plausible_number_of_years(age, tmp_path):
    path = tmp_path / "fixes.csv"
    path.write_text("target,column,old,new,reason\n000001,age,,45,checked\n")
    assert read_fixes(path)["new"].tolist() == ["45"]
    path.write_text(f"target,column,old,new,reason\n000001,age,,{age},checked\n")
    with pytest.raises(MaskkitError) as excinfo:
        read_fixes(path)
    one_line(excinfo, str(path), f"new age {age} is not a plausible age")


# --- recipe --------------------------------------------------------------------------------------

def test_recipe_round_trips_with_the_size_written_width_first(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(recipe_text(OPTIONS))
    assert "input_size: 48x64" in path.read_text()
    assert read_recipe(path) == OPTIONS | {"img_size": (64, 48)}
    write_config(tmp_path / "run", {"options": OPTIONS, "mean": [0.5] * 3})
    assert read_recipe(tmp_path / "run" / "config.json") == OPTIONS


@pytest.mark.parametrize("text, expected", [("- a\n- b\n", "not a mapping"), ("input_size: big\n", "WIDTHxHEIGHT"),
                                            ("a: [1\n", "not a readable recipe")])
def test_recipe_reader_refuses_what_the_contract_forbids(text, expected, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(MaskkitError) as excinfo:
        read_recipe(path)
    one_line(excinfo, str(path), expected)


# --- streams and the write rule (docs/formats.md, "Streams and exit codes", "Writing outputs") ----

def test_a_pipe_is_read_once_as_a_csv_and_a_missing_file_is_still_not_found(tmp_path):
    import os
    import threading

    from maskkit.contract.files import read_csv
    from maskkit.contract.streams import is_stream

    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, b"ImageID,ans\nx.jpg,3\n"), os.close(write_end)))
    writer.start()
    path = f"/dev/fd/{read_end}"
    assert is_stream(path) and not is_stream(tmp_path) and not is_stream(tmp_path / "new.csv")
    table = read_csv(path, ["ImageID", "ans"])
    writer.join()
    os.close(read_end)
    assert table.to_dict("list") == {"ImageID": ["x.jpg"], "ans": [3]}
    with pytest.raises(MaskkitError) as excinfo:
        read_csv(tmp_path / "gone.csv", ["ImageID"])
    one_line(excinfo, "gone.csv: file not found")
    with pytest.raises(MaskkitError) as excinfo:
        read_csv("/dev/null", ["ImageID"])
    one_line(excinfo, "/dev/null: no CSV: the stream was empty")


def test_an_output_folder_with_a_link_out_of_it_is_refused(tmp_path):
    from maskkit.contract.files import Inputs

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "deep").mkdir(parents=True)
    elsewhere.mkdir()
    (out / "deep" / "up").symlink_to("..")  # stays inside: fine
    assert Inputs().check_folder(out) == out
    (out / "deep" / "images").symlink_to(elsewhere)
    with pytest.raises(MaskkitError) as excinfo:
        Inputs().check_folder(out, "OUT")
    one_line(excinfo, "deep/images: a symbolic link inside the OUT", str(elsewhere), "remove the link")
    (out / "deep" / "images").unlink()
    (out / "loop").symlink_to("loop")
    with pytest.raises(MaskkitError) as excinfo:
        Inputs().check_folder(out, "OUT")
    one_line(excinfo, "loop: a symbolic link", "a loop of links")


def test_a_write_error_names_the_output_not_the_copied_source():
    import errno

    from maskkit.contract.files import write_error

    copying = OSError(errno.ENOSPC, "No space left on device")
    copying.filename, copying.filename2 = "folds.csv", "runs/x/.manifest.csv.tmp7.csv"  # as shutil.copyfile sets them
    assert str(write_error("runs/x/manifest.csv", copying)).startswith("runs/x/manifest.csv: cannot write: no space")
    parent = OSError(errno.EROFS, "Read-only file system")
    parent.filename = "runs"  # mkdir of a folder above the output: that folder is the one to name
    assert str(write_error("runs/x/manifest.csv", parent)).startswith("runs: cannot write: read-only")


def test_messages_to_a_broken_stderr_are_dropped_not_raised(monkeypatch, capsys):
    from maskkit.contract.files import console
    from maskkit.contract.streams import say

    tried = []

    class Broken:
        def write(self, text):
            tried.append(text)
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def isatty(self):
            return False

    monkeypatch.setattr("sys.stderr", Broken())
    console.print("a table nobody reads")
    say("maskkit x: error: nobody reads this either")
    written = "".join(tried)
    assert "a table nobody reads" in written and "nobody reads this either" in written  # tried, then dropped
    monkeypatch.setattr("sys.stderr", None)
    console.print("stderr closed")
    say("maskkit x: error: stderr closed")
    monkeypatch.undo()
    say("maskkit x: error: heard again")  # nothing was left broken behind
    assert capsys.readouterr().err == "maskkit x: error: heard again\n"


# --- no write follows a link someone planted (a shared server) -----------------------------------

def test_atomic_writes_never_follow_a_link_at_a_guessable_temporary_name(tmp_path):
    import os

    from maskkit.contract.files import write_csv

    victim, out = tmp_path / "victim.txt", tmp_path / "out.csv"
    victim.write_text("keep me")
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # every name the older scheme would have used
        os.symlink(victim, tmp_path / f".out.csv.tmp{pid}.csv")
    write_csv(pd.DataFrame({"a": [1]}), out)
    assert victim.read_text() == "keep me" and out.read_text() == "a\n1\n"
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's private 0600


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("plant", ["symlink", "link"])
def test_a_linked_lock_file_is_refused_and_its_target_untouched(plant, tmp_path):
    import os

    from maskkit.contract.files import LOCK_FILE, folder_lock

    victim, folder = tmp_path / "victim.txt", tmp_path / "run"
    victim.write_text("keep me")
    folder.mkdir()
    getattr(os, plant)(victim, folder / LOCK_FILE)
    with pytest.raises(MaskkitError) as excinfo:
        with folder_lock(folder, "train"):
            pass
    one_line(excinfo, str(folder / LOCK_FILE), "remove it")
    assert victim.read_text() == "keep me"


def test_a_checkpoint_write_on_a_full_device_is_one_write_error():
    import torch

    from maskkit.contract.files import WriteError, write_errors

    with pytest.raises(WriteError) as excinfo:  # /dev/full: torch's first write fails inside its zip writer
        with write_errors("runs/x/last.pt"):
            torch.save({"w": torch.zeros(100_000)}, "/dev/full")
    one_line(excinfo, "runs/x/last.pt", "disk full")
    assert excinfo.value.exit_code == 1


@pytest.mark.parametrize("image_id, expected", [("a\0b.jpg", "NUL byte"), ("loop.jpg", "loops")])
def test_an_info_csv_image_id_that_no_file_can_be_is_one_line(image_id, expected, tmp_path):
    import os

    from maskkit.contract.layout import load_eval

    images = tmp_path / "eval" / "images"
    images.mkdir(parents=True)
    os.symlink("loop.jpg", images / "loop.jpg")  # a link to itself
    (tmp_path / "eval" / "info.csv").write_bytes(f"ImageID,ans\n{image_id},0\n".encode())
    with pytest.raises(MaskkitError) as excinfo:
        load_eval(tmp_path / "eval")
    one_line(excinfo, "info.csv", "line 2", expected)


# --- outputs: the replace rule and one run per folder ----------------------------------------------

def test_an_output_of_the_same_kind_is_replaced_and_one_of_another_kind_refused(cli, world):
    """The replace rule is not a refusal of everything: a split replaces a split, a vote a vote."""
    assert cli("split", "X/train", "--folds", "2", "-o", "f2.csv").exit_code == 0
    assert cli("split", "X/train", "--folds", "2", "--seed", "7", "-o", "f2.csv").exit_code == 0
    assert cli("vote", "p.csv", "q.csv", "-o", "v.csv").exit_code == 0
    assert cli("vote", "p.csv", "-o", "v.csv").exit_code == 0  # same header: a vote replaces a vote
    assert pd.read_csv(world / "f2.csv")["fold"].nunique() == 2 and len(pd.read_csv(world / "v.csv")) > 0
    result = cli("split", "X/train", "--folds", "2", "-o", "v.csv")
    assert_one_line_error(result, "maskkit split: error: ", "delete it or choose another path")
    result = cli("predict", "runs/base", "X/eval", "--device", "cpu", "-o", "eval_preds.csv")
    assert result.exit_code == 0 and (world / "eval_preds.csv").is_file()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    import os

    from maskkit.contract.files import LOCK_FILE, folder_lock

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_FILE).write_text("999999999 maskkit segment\n")  # no process holds it
    with folder_lock(folder, "segment"):
        assert (folder / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert not (folder / LOCK_FILE).exists()
