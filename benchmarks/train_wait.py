"""Share of a training step spent waiting for data, with a small model on the CPU (goal: < 5%).

maskkit's training loop (`maskkit.engine.trainer.Trainer.train_epoch`, the code `maskkit train` runs) times
how long each step waits for its batch. Same drawn 384x512 JPEGs, same model (lite0, 128x96,
batch 32, AdamW), same process, four data pipelines:

  baseline        the official competition baseline's: PIL open + torchvision Resize/ToTensor/
                  Normalize, every image, every epoch, in the training process (workers=0)
  no cache        maskkit's loader, OpenCV reduced-size decoding every epoch, workers=0
  cache           maskkit's RAM cache (decoded once), augmentation in the training process
  cache+workers   the RAM cache and `--workers` loader processes (the CPU default: 1 on <= 4 cores)

The share is wait / step time over the last epoch (the first one warms up). The model runs on one
torch thread by default (`--threads`): on a shared machine, more threads than free cores make every
step several times slower and the share meaningless. The share is a ratio inside one run, so it
moves less than wall time.

Run from the repository root: python benchmarks/train_wait.py [--persons 60] [--epochs 2] [--size 128x96] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from maskkit.contract.layout import load_train
from maskkit.contract.files import write_csv
from maskkit.data.folds import make_manifest
from maskkit.commands import synth
from maskkit.options import Size
from maskkit.engine.devices import default_workers
from maskkit.commands.train import build_config
from maskkit.data.sampling import targets_of
from maskkit.engine.loop import EpochState
from maskkit.engine.trainer import Trainer
from maskkit.options import TrainOptions


class BaselineDataset(Dataset):
    """The official baseline's pipeline, yielding what the training loop expects."""

    def __init__(self, paths: list[str], targets: dict[str, np.ndarray], size_hw, mean, std) -> None:
        self.paths, self.targets = paths, targets
        self.transform = transforms.Compose([
            transforms.Resize(tuple(size_hw)), transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = self.transform(Image.open(self.paths[i]).convert("RGB"))
        return image, {k: torch.as_tensor(v[i]) for k, v in self.targets.items()}, i


def measure(name: str, root: Path, manifest, manifest_path: Path, options: TrainOptions, epochs: int,
            baseline: bool = False) -> dict:
    run_dir = root / name.replace("+", "_").replace(" ", "_")
    run_dir.mkdir()
    config = build_config(options, manifest_path, str(manifest_path), manifest)
    trainer = Trainer(run_dir, manifest, options, config, show_progress=False)
    if baseline:
        rows = trainer.data.train_rows
        dataset = BaselineDataset(rows["path"].tolist(), targets_of(rows, options.old_age),
                                  options.img_size, config["mean"], config["std"])
        trainer.data.train_loader = DataLoader(dataset, batch_size=options.batch_size, shuffle=True, drop_last=True,
                                               generator=torch.Generator().manual_seed(0))
    for epoch in range(epochs):
        trainer.state.current = EpochState()
        trainer.train_epoch(epoch, None)
    last = trainer.state.current
    return {"name": name, "wait": last.wait, "seconds": last.seconds, "images": last.seen,
            "share": last.wait / last.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=60, help="drawn persons (7 JPEGs of 384x512 each)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per pipeline; the last one counts")
    parser.add_argument("--size", default="128x96", help="model input HxW")
    parser.add_argument("--backbone", default="lite0", help="a small model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the model (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth.run(root / "data", persons=args.persons, eval_persons=0, size=Size(width=384, height=512), seed=0, show_progress=False)
        manifest = make_manifest(load_train(root / "data" / "train", report=False), 4, 42)
        manifest_path = root / "manifest.csv"
        write_csv(manifest, manifest_path)
        common = dict(backbone=args.backbone, pretrained=False, heads="multi", age_weight=0.1, img_size=size,
                      batch_size=32, aug="basic", device="cpu", epochs=args.epochs)
        workers = default_workers(torch.device("cpu"))
        pipelines = [
            ("baseline", dict(cache="none", workers=0), True),
            ("no cache", dict(cache="none", workers=0), False),
            ("cache", dict(cache="ram", workers=0), False),
            (f"cache+workers={workers}", dict(cache="ram", workers=workers), False),
        ]
        print(f"{len(manifest)} JPEGs 384x512, {args.backbone} at {size[0]}x{size[1]}, batch 32, "
              f"{torch.get_num_threads()} torch threads, last of {args.epochs} epochs:", file=sys.stderr)
        results = []
        for name, extra, baseline in pipelines:
            result = measure(name, root, manifest, manifest_path, TrainOptions(**common, **extra), args.epochs, baseline)
            results.append(result)
            print(f"  {name:<18} wait {result['wait']:6.2f}s of {result['seconds']:6.2f}s "
                  f"= {result['share']:6.1%}   {result['images'] / result['seconds']:6.1f} img/s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
