"""`maskkit export RUN model.onnx`: a self-checked ONNX model that `predict` runs like the run folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import assert_one_line_error, one_thread
from maskkit.contract.predictions import PROB_COLUMNS

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, manifest_path):
    """A run of the recipe users get, TrainOptions()'s defaults (multi heads, DLDL age, EMA, cutmix, strong
    aug...), only the backbone, input size, epochs, batch and machine shrunk (the fixtures train FAST)."""
    from maskkit.commands import train
    from maskkit.options import TrainOptions

    options = TrainOptions(backbone="test_resnet", pretrained=False, img_size=(48, 40), epochs=1, batch_size=16,
                           device="cpu", threads=1, workers=0, cache="ram")
    with one_thread():
        return train.run(manifest_path, options, runs_dir=tmp_path_factory.mktemp("runs"), name="defaults",
                         show_progress=False)


def test_the_default_run_is_the_default_recipe(default_run):
    options = json.loads((default_run / "config.json").read_text())["options"]
    assert (options["heads"], options["age_loss"], options["age_weight"] > 0, options["ema"]) == ("multi", "dldl",
                                                                                                 True, True)


@pytest.mark.parametrize("which", ["single_run", "multi_run", "default_run"])
def test_exported_model_predicts_the_same_ans_as_its_run_folder(which, request, drawn, tmp_path, cli):
    run = request.getfixturevalue(which)
    model = tmp_path / "m.onnx"
    with one_thread():
        exported = cli("export", run, model, "--check-images", sorted((drawn / "eval" / "images").iterdir())[0])
        from_onnx = cli("predict", model, drawn / "eval", "--device", "cpu", "-o", tmp_path / "onnx.csv")
        from_run = cli("predict", run, drawn / "eval", "--device", "cpu", "-o", tmp_path / "run.csv")
    assert exported.exit_code == 0, exported.stderr
    assert from_onnx.exit_code == 0 and from_run.exit_code == 0, from_onnx.stderr + from_run.stderr
    onnx_preds, run_preds = (pd.read_csv(tmp_path / f"{n}.csv", dtype={"ImageID": str}) for n in ("onnx", "run"))
    assert onnx_preds["ImageID"].tolist() == run_preds["ImageID"].tolist()
    assert (onnx_preds["ans"] == run_preds["ans"]).all()
    np.testing.assert_allclose(onnx_preds[PROB_COLUMNS], run_preds[PROB_COLUMNS], atol=1e-4)
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert sidecar["input"] == {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                                "range": [0, 255], "height": config["options"]["img_size"][0],
                                "width": config["options"]["img_size"][1]}
    assert sidecar["crop"] == config["crop"] and len(sidecar["output"]["classes"]) == 18
    assert sidecar["check"]["images"] == 9 and sidecar["check"]["max_abs_difference"] <= 1e-4
    metadata = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert {k: v for k, v in sidecar.items() if k != "check"} == json.loads(metadata["maskkit"])
    batch = onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"


def test_an_export_that_disagrees_with_torch_leaves_nothing_and_exits_1(multi_run, tmp_path, cli, monkeypatch):
    from maskkit.engine import export as engine_export
    from maskkit.commands import export as command_export

    real = engine_export.OnnxModel.probs
    monkeypatch.setattr(engine_export.OnnxModel, "probs", lambda self, images: real(self, images) + 1e-3)
    assert command_export.OnnxModel is engine_export.OnnxModel
    with one_thread():
        result = cli("export", multi_run, tmp_path / "m.onnx")
    assert result.exit_code == 1, result.stderr
    assert "differ" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_other_files_and_predict_refuses_foreign_onnx(multi_run, drawn, tmp_path, cli):
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes")
    for args, expected in (((multi_run, notes), "exists and is not"), ((multi_run, tmp_path / "m.pt"), "*.onnx"),
                           ((tmp_path / "nowhere", tmp_path / "m.onnx"), "not found")):
        result = cli("export", *args)
        assert result.exit_code == 2 and expected in result.stderr, result.stderr
    assert notes.read_text() == "my notes"
    result = cli("predict", notes, drawn / "eval", "--device", "cpu")
    assert result.exit_code == 2 and "not a readable ONNX model" in result.stderr, result.stderr


def test_an_operation_onnx_cannot_export_is_one_line_exit_1_and_leaves_nothing(multi_run, tmp_path, cli, monkeypatch):
    import torch

    def refuse(*args, **kwargs):  # as torch does: the reason, then the TorchScript graph
        raise RuntimeError("ONNX export does not support exporting 'op_x'\n" + "%1 : Float(2, 3)\n" * 50)

    monkeypatch.setattr(torch.onnx, "export", refuse)
    result = cli("export", multi_run, tmp_path / "m.onnx")
    assert result.exit_code == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot be exported to ONNX" in result.stderr and "op_x" in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- issue 31 item 6: nothing written inside the run, no link followed at the sidecar --------------

def digest(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def into_the_run(tmp_path, run):
    """`export RUN RUN/m.onnx`: the output inside the run folder it reads (predict refuses the same)."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, copy / "m.onnx", copy / "config.json"


def sidecar_link(tmp_path, run):
    """A link planted at the sidecar's name, leading to someone's JSON file outside."""
    victim = tmp_path / "victim.json"
    victim.write_text('{"theirs": true}\n')
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "m.onnx.json").symlink_to(victim)
    return run, tmp_path / "out" / "m.onnx", victim


def sidecar_link_to_nothing(tmp_path, run):
    """A dangling link at the sidecar's name: writing through it would create the file it names."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "m.onnx.json").symlink_to(tmp_path / "created.json")
    marker = tmp_path / "marker"
    marker.write_text("nothing may appear beside me\n")
    return run, tmp_path / "out" / "m.onnx", marker


@pytest.mark.parametrize("setup, expected", [(into_the_run, "inside the input folder"),
                                             (sidecar_link, "is a symbolic link"),
                                             (sidecar_link_to_nothing, "is a symbolic link")],
                         ids=["into-the-run", "sidecar-link", "sidecar-dangling-link"])
def test_export_writes_nothing_into_its_run_or_through_a_sidecar_link(multi_run, tmp_path, cli, setup, expected):
    run, out, victim = setup(tmp_path, multi_run)
    before = {p: digest(p) for p in [*run.iterdir(), victim] if p.is_file()}
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    with one_thread():
        result = cli("export", run, out)
    assert_one_line_error(result, expected)
    assert {p: digest(p) for p in before} == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing  # no model, no sidecar, no created target


# --- slow marks (appended: the tests above stay as they are) ---

pytest.mark.slow(test_exported_model_predicts_the_same_ans_as_its_run_folder)  # over ~4 s (-m "not slow" skips it)
