"""`maskkit predict RUN DATA/eval`: the prediction CSV of DESIGN.md (ImageID,ans,p0..p17).

Rows follow info.csv's order (or the sorted relative paths of a plain image folder); `p*` are the
18 class probabilities (a multi-output model's are p_mask x p_gender x p_age), `ans` their argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console, files_in, write_csv
from maskkit.contract.labels import NUM_CLASSES

PROB_COLUMNS = [f"p{i}" for i in range(NUM_CLASSES)]
TTA_MODES = ("none", "flip")
DECIMALS = 6  # probabilities as written; `ans` is the argmax of the written values


def prediction_frame(image_ids: Sequence[str], probs: np.ndarray) -> pd.DataFrame:
    """ImageID, ans, p0..p17 from (N, 18) probabilities (rounded to DECIMALS places)."""
    probs = np.round(np.asarray(probs, dtype=np.float64), DECIMALS)
    frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
    frame.insert(0, "ans", probs.argmax(1).astype(int))
    frame.insert(0, "ImageID", list(image_ids))
    return frame


@torch.no_grad()
def predict_probs(model: torch.nn.Module, loader, n: int, device: torch.device, tta: str = "none",
                  amp_dtype: torch.dtype | None = None, progress: bool | None = None,
                  normalize: tuple | None = None) -> np.ndarray:
    """(n, 18) class probabilities for the loader's images (rows placed by the dataset's index).

    tta="flip" averages the probabilities of the image and its horizontal mirror.
    normalize=(mean, std): the loader gives uint8 batches, normalised here on `device`.
    """
    from rich.progress import Progress

    from maskkit.data.loader import UnreadableImage, normalize_batch
    from maskkit.engine.models import class_probs

    probs = np.zeros((n, NUM_CLASSES), dtype=np.float64)
    show = console.is_terminal if progress is None else progress
    with Progress(console=console, transient=True, disable=not show) as bar:
        task = bar.add_task("predicting", total=n)
        iterator = iter(loader)
        while True:
            try:
                images, _, rows = next(iterator)
            except StopIteration:
                break
            except UnreadableImage as exc:  # raised in a loader worker: keep the one line that names the file
                lines = [line for line in str(exc).splitlines() if line.strip()]
                raise MaskkitError(lines[-1].split(": ", 1)[-1] if len(lines) > 1 else str(exc)) from None
            images = images.to(device, non_blocking=True)
            if normalize is not None:
                images = normalize_batch(images, *normalize)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            views = [images, images.flip(3)] if tta == "flip" else [images]
            total = 0
            for view in views:
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    outputs = model(view)
                total = total + class_probs({k: v.float() for k, v in outputs.items()})
            probs[rows.numpy()] = (total / len(views)).cpu().numpy()
            bar.update(task, advance=len(rows))
    return probs


def predict(run: str | Path, data: str | Path, tta: str = "none", out: str | Path | None = None,
            batch_size: int = 64, device: str = "auto", workers: int | None = None) -> pd.DataFrame:
    """Predict every image of DATA/eval (or a plain image folder) with RUN's best.pt; write the CSV."""
    from maskkit.contract.layout import load_eval
    from maskkit.data.loader import DEFAULT_CROP, ImageDataset, eval_transform, make_loader
    from maskkit.engine.models import load_run, to_channels_last
    from maskkit.engine.devices import autocast_dtype, default_workers, resolve_device

    if tta not in TTA_MODES:
        raise MaskkitError(f"--tta {tta!r}: use none or flip")
    if batch_size < 1:
        raise MaskkitError(f"--batch-size {batch_size}: need at least 1")
    if workers is not None and workers < 0:
        raise MaskkitError(f"--workers {workers}: must be 0 (load in this process) or more")
    inputs = Inputs.of(files_in(run), data)
    inputs.check(out, header=["ImageID", "ans", *PROB_COLUMNS])
    torch_device = resolve_device(device)
    model, config = load_run(run, torch_device)
    images = load_eval(data)
    if torch_device.type == "cuda":
        to_channels_last(model)
    img_size = tuple(config["img_size"])
    crop = tuple(config.get("crop", DEFAULT_CROP))
    on_device = torch_device.type == "cuda"  # uint8 batches, normalised on the GPU
    dataset = ImageDataset(images["path"].tolist(), None, img_size,
                           eval_transform(img_size, config["mean"], config["std"], crop, normalize=not on_device),
                           crop=crop, on_error="raise")
    workers = default_workers(torch_device) if workers is None else workers
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers, device=torch_device)
    probs = predict_probs(model, loader, len(images), torch_device, tta, autocast_dtype(torch_device),
                          normalize=(config["mean"], config["std"]) if on_device else None)
    frame = prediction_frame(images["ImageID"].tolist(), probs)
    write_csv(frame, out, inputs=inputs)
    if out is not None and str(out) != "-":
        console.print(f"{len(frame)} predictions of {Path(run).name} written to {out}")
    return frame
