"""`maskkit demo`: the whole pipeline end to end (tiny sizes here), and re-running reuses its work."""

from __future__ import annotations

import pandas as pd
import pytest

from maskkit.cli import app
from maskkit.commands.demo import DemoPlan, run
from maskkit.options import Size
from helpers import assert_one_line_error, one_thread
from hostile import a_file, bad, run_bad

TINY = DemoPlan(persons=40, eval_persons=6, size=Size(width=48, height=64), img_size=Size(width=40, height=48), folds=2, models=2, epochs=1,
                batch_size=16)


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_reruns_reuse_it(tmp_path):
    out = tmp_path / "demo"
    with one_thread():
        first = run(out, app=app, device="cpu", plan=TINY)
    assert first["model"].tolist()[:2] == ["lite0-f0", "lite0-f1"]
    assert first["model"].iloc[-1] == "soft vote of 2"
    assert first["macro_f1"].between(0, 1).all()
    for name in ("data/eval/truth.csv", "manifest.csv", "runs/lite0-f0/best.pt", "runs/lite0-f1/best.pt",
                 "preds/lite0-f0.csv", "submission.csv", "scores.csv"):
        assert (out / name).is_file(), name
    submission = pd.read_csv(out / "submission.csv", dtype={"ImageID": str})
    info = pd.read_csv(out / "data" / "eval" / "info.csv", dtype={"ImageID": str})
    assert list(submission.columns) == ["ImageID", "ans"]
    assert submission["ImageID"].tolist() == info["ImageID"].tolist()

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".pt", ".jpg")}
    with one_thread():
        again = run(out, app=app, device="cpu", plan=TINY)
    pd.testing.assert_frame_equal(first, again)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing drawn or trained again


# --- bad input ----------------------------------------------------------------------------------

BAD_CALLS = [
    bad("demo below a file", ["demo", "afile/demo", "--epochs", "1", "--device", "cpu"], a_file),
    bad("demo OUT a file", ["demo", "p.csv", "--epochs", "1", "--device", "cpu"]),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


def test_demo_on_a_missing_cuda_fails_before_writing(cli, world):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    result = cli("demo", "d", "--epochs", "1", "--device", "cuda")
    assert_one_line_error(result, "maskkit demo: error: ", "--device cuda")
    assert not (world / "d").exists()


def test_demo_epochs_0_is_refused_before_any_work(cli, world):
    result = cli("demo", "d", "--epochs", "0", "--device", "cpu")
    assert_one_line_error(result, "--epochs 0")
    assert not (world / "d").exists()
