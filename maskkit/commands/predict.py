"""`maskkit predict MODEL... [IMAGES...]`: the prediction CSV (docs/formats.md) of one or more models.

MODEL is a run folder (a folder with config.json; its best.pt) or an `.onnx` file from `maskkit
export`; the leading arguments that are models are the models, the rest are images: DATA/eval, a
folder (recursive), image files, globs (expanded here when the shell did not) or `-` (paths on
stdin, one per line). Several models give the mean of their probabilities, in one pass over the
images: each image is decoded once per distinct (input size, crop) among the models, and each model
normalises with its own mean and std (TTA included). `p*` are the 18 class probabilities (a
multi-output model's are p_mask x p_gender x p_age), `ans` their argmax.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console, examples, is_image
from maskkit.contract.labels import NUM_CLASSES
from maskkit.contract.layout import load_eval
from maskkit.contract.predictions import prediction_frame, prediction_header, write_predictions
from maskkit.contract.runfolder import check_probabilities
from maskkit.data.loader import ImageDataset, make_loader
from maskkit.data.presets import eval_transform
from maskkit.engine.devices import autocast_dtype, default_workers, resolve_device
from maskkit.engine.export import OnnxModel
from maskkit.engine.loop import OnDevice, next_batch, tta_outputs
from maskkit.engine.models import class_probs, load_run, to_channels_last
from maskkit.engine.progress import progress_bar

DEFAULT_DATA = "data/eval"
MODEL_FIX = "the first arguments are run folders (with config.json) or .onnx files from maskkit export"


# --- what the arguments name ---------------------------------------------------------------

def is_model(arg: str) -> bool:
    """A run folder (holds config.json) or an .onnx file name."""
    path = Path(arg)
    return arg.lower().endswith(".onnx") or (path.is_dir() and (path / "config.json").is_file())


def split_arguments(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(models, image arguments): the leading models, then the rest (default DATA/eval)."""
    args = [str(a) for a in args]
    count = next((i for i, a in enumerate(args) if not is_model(a)), len(args))
    models, rest = args[:count], args[count:]
    if not models:
        first = args[0] if args else "MODEL"
        state = "not found" if args and not Path(first).exists() and first != "-" else "not a model"
        raise MaskkitError(f"{first}: {state}; {MODEL_FIX}")
    late = [a for a in rest if is_model(a)]
    if late:
        raise MaskkitError(f"{late[0]}: a model after the images; put every run folder or .onnx file first")
    return models, rest or [DEFAULT_DATA]


def stdin_paths(stream) -> list[str]:
    """Image paths listed on `stream`, one per line (blank lines skipped); each must be a file."""
    paths = [line.strip() for line in stream.read().splitlines() if line.strip()]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise MaskkitError(f"-: {len(missing)} of {len(paths)} listed images not found ({examples(missing)}); "
                           "stdin lists one image path per line")
    if not paths:
        raise MaskkitError("-: no image paths on stdin (list one path per line, e.g. find DIR -name '*.jpg' |)")
    return paths


def expanded(arg: str) -> list[str]:
    """The image files a pattern matches (sorted; `**` recursive); an error when none does."""
    found = sorted(p for p in glob.glob(arg, recursive=True) if Path(p).is_file() and is_image(Path(p)))
    if not found:
        raise MaskkitError(f"{arg}: no image matches this pattern (.jpg, .jpeg, .png, .bmp, .webp files)")
    return found


def argument_images(arg: str, stdin) -> pd.DataFrame:
    """ImageID, path of one image argument, ImageID = the path as given or found."""
    path = Path(arg)
    if arg == "-":
        paths = stdin_paths(stdin)
    elif path.is_dir():
        paths = load_eval(path)["path"].tolist()
    elif path.is_file():
        if not is_image(path):
            raise MaskkitError(f"{arg}: not an image (.jpg, .jpeg, .png, .bmp, .webp); pass images, folders, "
                               "globs or - (paths on stdin)")
        paths = [arg]
    elif glob.has_magic(arg):
        paths = expanded(arg)
    else:
        raise MaskkitError(f"{arg}: not found; pass DATA/eval, a folder, image files, globs or - (paths on stdin)")
    return pd.DataFrame({"ImageID": paths, "path": paths})


def resolve_images(args: Sequence[str], stdin=None) -> pd.DataFrame:
    """ImageID, path of every image the arguments name, in argument order.

    One folder alone keeps the competition's keys (info.csv's ImageIDs, or paths relative to the
    folder); otherwise each row is keyed by its path as given (files, stdin lines) or found (under a
    folder, by a glob). An image named twice is predicted once."""
    if list(args).count("-") > 1:
        raise MaskkitError("-: standard input given twice; list every path in one stream")
    if len(args) == 1 and Path(args[0]).is_dir():
        return load_eval(args[0])
    table = pd.concat([argument_images(str(a), stdin or sys.stdin) for a in args], ignore_index=True)
    repeated = table["ImageID"].duplicated()
    if repeated.any():
        console.print(f"note: {int(repeated.sum())} images named twice ({examples(table.loc[repeated, 'ImageID'].tolist())}); "
                      "each is predicted once")
        table = table[~repeated].reset_index(drop=True)
    return table


# --- the models --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """One model of the ensemble: its geometry and `probs(uint8 batch, tta) -> (B, 18)` numpy."""

    name: str
    img_size: tuple[int, int]
    crop: tuple[float, float]
    probs: Callable[[torch.Tensor, str], np.ndarray]


def torch_member(run_dir: str, device: torch.device) -> Member:
    model, config = load_run(run_dir, device)
    if device.type == "cuda":
        to_channels_last(model)
    on_device = OnDevice(device, autocast_dtype(device), (config["mean"], config["std"]))

    @torch.no_grad()
    def probs(images: torch.Tensor, tta: str) -> np.ndarray:
        views = tta_outputs(model, on_device.images(images), on_device, tta)
        return (sum(class_probs(out) for out in views) / len(views)).double().cpu().numpy()

    return Member(Path(run_dir).name, tuple(config["img_size"]), tuple(config["crop"]), probs)


def onnx_member(path: str, device: torch.device) -> Member:
    model = OnnxModel(path, device.type)

    def probs(images: torch.Tensor, tta: str) -> np.ndarray:
        batch = images.numpy()
        views = [batch, batch[..., ::-1]] if tta == "flip" else [batch]
        return sum(model.probs(view) for view in views) / len(views)

    return Member(Path(path).name, model.img_size, model.crop, probs)


class GeometryViews(Dataset):
    """The images as uint8 tensors at each geometry (input size, crop): item (views, {}, row)."""

    def __init__(self, paths: Sequence[str], geometries: Sequence[tuple]) -> None:
        self.sets = [ImageDataset(paths, None, size, eval_transform(size, (0, 0, 0), (1, 1, 1), crop, normalize=False),
                                  crop=crop, on_error="raise") for size, crop in geometries]

    def __len__(self) -> int:
        return len(self.sets[0])

    def __getitem__(self, key):
        items = [dataset[key] for dataset in self.sets]
        return [tensor for tensor, _, _ in items], {}, items[0][2]


def ensemble_probs(members: Sequence[Member], paths: Sequence[str], tta: str, batch_size: int,
                   workers: int, device: torch.device, show_progress: bool | None = None) -> np.ndarray:
    """(n, 18): the mean over `members` of their probabilities, in one pass over `paths`."""
    geometries = list(dict.fromkeys((m.img_size, m.crop) for m in members))
    view_of = [geometries.index((m.img_size, m.crop)) for m in members]
    loader = make_loader(GeometryViews(paths, geometries), batch_size, shuffle=False, workers=workers, device=device)
    total = np.zeros((len(paths), NUM_CLASSES), dtype=np.float64)
    with progress_bar("predicting", len(paths), show=show_progress) as bar:
        iterator = iter(loader)
        while (batch := next_batch(iterator)) is not None:
            views, _, rows = batch
            for member, view in zip(members, view_of):
                total[rows.numpy()] += member.probs(views[view], tta)
            if bar is not None:
                bar.advance(len(rows))
    return total / len(members)


def run(models: str | Path | Sequence[str | Path], data: str | Path | Sequence[str | Path] = (), tta: str = "none",
        out: str | Path | None = None, batch_size: int = 64, device: str = "auto", workers: int | None = None,
        show_progress: bool | None = None, names: bool = False, stdin=None) -> pd.DataFrame:
    """Predict the images `data` names (default DATA/eval) with the mean of `models`; write the CSV.

    `models` may also hold the image arguments after the models (the command line passes one list).
    `tta` is one of options.TTA_MODES (the command line checks it); torch's threads are the caller's."""
    models, data = ([x] if isinstance(x, (str, Path)) else list(x) for x in (models, data))
    models, image_args = split_arguments([str(a) for a in [*models, *data]])
    images = resolve_images(image_args, stdin)
    header = prediction_header(names)
    inputs = Inputs.of(*models, images["path"].tolist(),  # run folders are inputs: nothing is written inside
                       [a for a in image_args if Path(a).is_dir()])
    inputs.check(out, header=header)
    torch_device = resolve_device(device)
    members = [onnx_member(m, torch_device) if m.lower().endswith(".onnx") else torch_member(m, torch_device)
               for m in models]
    workers = default_workers(torch_device) if workers is None else workers
    probs = ensemble_probs(members, images["path"].tolist(), tta, batch_size, workers, torch_device, show_progress)
    check_probabilities(", ".join(models), probs, images["ImageID"])
    frame = prediction_frame(images["ImageID"].tolist(), probs, names=names)
    write_predictions(frame, out, inputs=inputs)
    if out is not None and str(out) != "-":
        which = members[0].name if len(members) == 1 else f"the mean of {len(members)} models"
        console.print(f"{len(frame)} predictions of {which} written to {out}")
    return frame
