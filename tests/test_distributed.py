"""`torchrun -m maskkit train`: two processes (gloo on the CPU) train one run with DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from maskkit.contract.labels import NUM_CLASSES
from maskkit.contract.manifest import read_manifest
from maskkit.data.sampling import ResumableSampler

ROOT = Path(__file__).resolve().parents[1]
CHANCE = 1 / NUM_CLASSES
EPOCHS = 10


def torchrun(*args: object, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "maskkit", "train", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_each_rank_takes_its_slice_of_the_seeded_order():
    whole = list(ResumableSampler(11, seed=3))
    parts = [list(ResumableSampler(11, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 5  # trimmed to a multiple of the world size
    assert sorted(parts[0] + parts[1]) == sorted(whole[:10])
    resumed = ResumableSampler(11, seed=3, rank=1, world_size=2)
    resumed.skip = 2
    assert list(resumed) == parts[1][2:]


@pytest.mark.slow
def test_two_processes_train_one_run_written_once_and_resume(manifest_path, tmp_path):
    runs = tmp_path / "runs"
    common = ["--backbone", "test_resnet", "--no-pretrained", "--input-size", "40x48", "--batch-size", 8,
              "--lr", 5e-3, "--aug", "none", "--workers", 0, "--warmup", 0.5, "--device", "cpu", "--cache", "ram",
              "--threads", 1, "--single", "--balanced"]
    done = torchrun(manifest_path, *common, "--epochs", EPOCHS - 2, "--runs-dir", runs, "--name", "ddp")
    assert done.returncode == 0, done.stderr[-2000:]
    run = runs / "ddp"
    assert (done.stdout + done.stderr).count("training test_resnet") == 1  # rank 0 alone reports
    assert "2 processes (DDP)" in done.stdout + done.stderr
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp files, no lock left

    done = torchrun("--resume", run, "--epochs", EPOCHS)  # resume (extending the run) under torchrun
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(1, EPOCHS + 1))  # one row per epoch: written once

    # Validation was gathered from both ranks: val_preds holds every validation image once, and
    # its F1 is the best epoch's val_f1 (what one process evaluating the whole fold reports).
    manifest = read_manifest(manifest_path)
    val = manifest[manifest["fold"] == 0]
    preds = pd.read_csv(run / "val_preds.csv")
    assert sorted(preds["ImageID"]) == sorted(val["path"])
    best = metrics.loc[metrics["val_f1"].idxmax()]
    f1 = f1_score(preds["label"], preds["ans"], average="macro", labels=range(NUM_CLASSES), zero_division=0)
    assert f1 == pytest.approx(best["val_f1"], abs=1e-6)
    assert best["val_f1"] > 3 * CHANCE  # the model learned
    assert np.isfinite(metrics["train_loss"]).all()

    # One process evaluating best.pt on the whole fold gives the probabilities the ranks gathered.
    from maskkit.contract.predictions import PROB_COLUMNS
    from maskkit.data.loader import ImageDataset, build_cache, make_loader
    from maskkit.data.presets import eval_transform, work_size
    from maskkit.engine.loop import OnDevice, predict_probs
    from maskkit.engine.models import load_run

    model, config = load_run(run, "cpu")
    size, crop = tuple(config["img_size"]), tuple(config["crop"])
    paths = preds["ImageID"].tolist()
    cache, _ = build_cache(paths, work_size(size, crop))  # as train read them (--cache ram)
    dataset = ImageDataset(paths, None, size, eval_transform(size, config["mean"], config["std"], crop),
                           cache=cache, crop=crop)
    probs = predict_probs(model, make_loader(dataset, 16, shuffle=False), len(dataset),
                          OnDevice(torch.device("cpu")), show_progress=False)
    assert np.allclose(probs, preds[list(PROB_COLUMNS)].to_numpy(), atol=1e-4)
