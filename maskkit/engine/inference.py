"""Inference of saved models on images, shared by `predict` and `val`: each model a `Member` (a run
folder's best.pt through torch, or an exported .onnx through onnxruntime) with its own input size,
crop and normalisation, and `ensemble_probs`, the mean of the members' class probabilities in one
pass over the images (each image decoded once per distinct geometry). Every member's rows are checked
to be probability vectors (contract/predictions.check_predicted): a broken run or a lying graph is
refused, never averaged into a CSV."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from maskkit.contract.labels import NUM_CLASSES
from maskkit.contract.predictions import check_predicted
from maskkit.data.loader import ImageDataset, make_loader
from maskkit.data.presets import eval_transform
from maskkit.engine.devices import autocast_dtype
from maskkit.engine.export import OnnxModel
from maskkit.engine.loop import OnDevice, next_batch, tta_outputs
from maskkit.engine.models import class_probs, load_run, to_channels_last
from maskkit.contract.progress import progress_bar


@dataclass(frozen=True)
class Member:
    """One model of the ensemble: its geometry and `probs(uint8 batch, tta) -> (B, 18)` numpy; `source`
    (the file an error names) and `fix` (what to do when its rows are not probabilities)."""

    name: str
    img_size: tuple[int, int]
    crop: tuple[float, float]
    probs: Callable[[torch.Tensor, str], np.ndarray]
    source: str = ""
    fix: str = "best.pt or config.json (mean, std, img_size) is broken: restore them or re-train the run"


def torch_member(run_dir: str, device: torch.device) -> Member:
    model, config = load_run(run_dir, device)
    if device.type == "cuda":
        to_channels_last(model)
    on_device = OnDevice(device, autocast_dtype(device), (config["mean"], config["std"]))

    @torch.no_grad()
    def probs(images: torch.Tensor, tta: str) -> np.ndarray:
        views = tta_outputs(model, on_device.images(images), on_device, tta)
        return (sum(class_probs(out) for out in views) / len(views)).double().cpu().numpy()

    return Member(Path(run_dir).name, tuple(config["img_size"]), tuple(config["crop"]), probs, source=str(run_dir))


def onnx_member(path: str, device: torch.device) -> Member:
    model = OnnxModel(path, device.type)

    def probs(images: torch.Tensor, tta: str) -> np.ndarray:
        batch = images.numpy()
        views = [batch, batch[..., ::-1]] if tta == "flip" else [batch]
        return sum(model.probs(view) for view in views) / len(views)

    return Member(Path(path).name, model.img_size, model.crop, probs, source=str(path),
                  fix="the graph does not give class probabilities: re-export the run with maskkit export")


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
                probs = member.probs(views[view], tta)
                check_predicted(member.source or member.name, probs, [paths[i] for i in rows.tolist()], member.fix)
                total[rows.numpy()] += probs
            if bar is not None:
                bar.advance(len(rows))
    return total / len(members)
