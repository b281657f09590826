"""`maskkit demo`: the whole pipeline end to end (tiny sizes here), and re-running reuses its work."""

from __future__ import annotations

import pandas as pd

from maskkit.cli import app
from maskkit.commands.demo import DemoPlan, run
from maskkit.options import Size
from helpers import one_thread

TINY = DemoPlan(persons=40, eval_persons=6, size=Size(width=48, height=64), img_size=Size(width=40, height=48), folds=2, models=2, epochs=1,
                batch_size=16)


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
