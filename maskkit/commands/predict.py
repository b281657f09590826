"""`maskkit predict RUN DATA/eval`: the prediction CSV (docs/formats.md) of a trained run.

Rows follow info.csv's order (or the sorted relative paths of a plain image folder); `p*` are the
18 class probabilities (a multi-output model's are p_mask x p_gender x p_age), `ans` their argmax.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from maskkit.contract.files import Inputs, console
from maskkit.contract.layout import load_eval
from maskkit.contract.predictions import PREDICTION_HEADER, prediction_frame, write_predictions
from maskkit.contract.runfolder import check_probabilities
from maskkit.data.loader import ImageDataset, make_loader
from maskkit.data.presets import eval_transform
from maskkit.engine.devices import autocast_dtype, default_workers, resolve_device
from maskkit.engine.loop import OnDevice, predict_probs
from maskkit.engine.models import load_run, to_channels_last


def run(run_dir: str | Path, data: str | Path, tta: str = "none", out: str | Path | None = None,
        batch_size: int = 64, device: str = "auto", workers: int | None = None,
        progress: bool | None = None) -> pd.DataFrame:
    """Predict every image of DATA/eval (or a plain image folder) with RUN's best.pt; write the CSV.

    `tta` is one of options.TTA_MODES (the command line checks it); torch's threads are the caller's."""
    inputs = Inputs.of(run_dir, data)  # the run folder is an input: nothing is written inside it
    inputs.check(out, header=PREDICTION_HEADER)
    torch_device = resolve_device(device)
    model, config = load_run(run_dir, torch_device)
    images = load_eval(data)
    if torch_device.type == "cuda":
        to_channels_last(model)
    img_size, crop = tuple(config["img_size"]), tuple(config["crop"])
    on_gpu = torch_device.type == "cuda"  # uint8 batches, normalised on the GPU
    dataset = ImageDataset(images["path"].tolist(), None, img_size,
                           eval_transform(img_size, config["mean"], config["std"], crop, normalize=not on_gpu),
                           crop=crop, on_error="raise")
    workers = default_workers(torch_device) if workers is None else workers
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers, device=torch_device)
    on_device = OnDevice(torch_device, autocast_dtype(torch_device),
                         (config["mean"], config["std"]) if on_gpu else None)
    probs = predict_probs(model, loader, len(images), on_device, tta, progress=progress)
    check_probabilities(run_dir, probs, images["ImageID"])
    frame = prediction_frame(images["ImageID"].tolist(), probs)
    write_predictions(frame, out, inputs=inputs)
    if out is not None and str(out) != "-":
        console.print(f"{len(frame)} predictions of {Path(run_dir).name} written to {out}")
    return frame
