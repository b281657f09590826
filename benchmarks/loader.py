"""Loader images/s on one core: maskkit's fast loader against the official competition baseline.

Baseline (the competition's starter code): PIL open + torchvision Resize / ToTensor / Normalize,
every image, every epoch. maskkit: OpenCV decoding at reduced size (cold), then the RAM cache
(warm: later epochs only crop, augment and normalise). Same drawn 384x512 JPEGs, same output
tensor size, same process, one thread (torch and OpenCV), batches of 32 through a DataLoader
with workers=0; images/s counts CPU seconds of the process, so it is a rate per core.

Run from the repository root: python benchmarks/loader.py [--images 280] [--size 128x96] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from maskkit.data.cache import shared_cache
from maskkit.data.loader import ImageDataset, build_cache, make_loader, reduction_factor
from maskkit.data.presets import build_transform, normalize_batch, work_size
from maskkit.commands import synth
from maskkit.options import Size
from maskkit.data.gpu_augment import BatchAugment, augment_batch, image_seeds

MEAN, STD = (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)  # the baseline's normalisation
BATCH = 32


class BaselineDataset(Dataset):
    """The official baseline's pipeline: PIL decode at full size, torchvision resize, every epoch."""

    def __init__(self, paths: list[Path], size_hw: tuple[int, int]) -> None:
        self.paths = paths
        self.transform = transforms.Compose([
            transforms.Resize(size_hw, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.ToTensor(),
            transforms.Normalize(mean=MEAN, std=STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), i


def images_per_second(loader, epochs: int, on_batch=None) -> float:
    """Images per CPU-second of this (single-threaded) process over `epochs` passes: a rate per core
    that other load on a shared machine barely moves, unlike wall time."""
    count, start = 0, time.process_time()
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            if on_batch is not None:
                on_batch(batch[0])
            count += len(batch[0])
    return count / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=280, help="number of drawn 384x512 JPEGs (7 per person)")
    parser.add_argument("--size", default="128x96", help="model input HxW")
    parser.add_argument("--epochs", type=int, default=2, help="passes per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best counts")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        synth.run(Path(tmp) / "data", persons=max(1, args.images // 7), eval_persons=0, size=Size(width=384, height=512), seed=0,
                   show_progress=False)
        paths = sorted((Path(tmp) / "data" / "train" / "images").rglob("*.jpg"))
        work = work_size(size)
        print(f"{len(paths)} JPEGs 384x512 -> {size[0]}x{size[1]} (working size {work[0]}x{work[1]}, "
              f"JPEG reduction 1/{reduction_factor((384, 512), work)}); 1 thread, batch {BATCH}", file=sys.stderr)

        start = time.process_time()
        cache, _ = build_cache(paths, work, threads=1, show_progress=False)
        build_rate = len(paths) / (time.process_time() - start)
        mapped, _ = shared_cache(paths, work, folder=Path(tmp) / "caches", threads=1, show_progress=False)
        def loaders() -> dict[str, tuple[DataLoader, int]]:
            """name -> (loader, passes, per-batch work); cold datasets are new each round, so every pass is a first epoch."""
            out = {"baseline (PIL + torchvision)": (DataLoader(BaselineDataset(paths, size), batch_size=BATCH), args.epochs, None)}
            for aug in ("none", "basic"):
                dataset = ImageDataset(paths, None, size, build_transform(aug, size, MEAN, STD))
                out[f"maskkit cold, aug {aug}"] = (make_loader(dataset, BATCH, shuffle=True), 1, None)
            for aug in ("none", "basic", "strong"):
                dataset = ImageDataset(paths, None, size, build_transform(aug, size, MEAN, STD), cache=cache)
                out[f"maskkit cached, aug {aug}"] = (make_loader(dataset, BATCH, shuffle=True), args.epochs, None)
            for aug in ("none", "basic"):  # uint8 batches, normalised per batch (here on the CPU, in the loop)
                transform = build_transform(aug, size, MEAN, STD, normalize=False)
                dataset = ImageDataset(paths, None, size, transform, cache=cache)
                out[f"maskkit cached, aug {aug}, uint8"] = (make_loader(dataset, BATCH, shuffle=True), args.epochs,
                                                           lambda x: normalize_batch(x, MEAN, STD))
            # the shared cache (data/cache.py: a memory-mapped file, what train maps now) against the private array
            for aug in ("none", "basic"):
                transform = build_transform(aug, size, MEAN, STD, normalize=False)
                dataset = ImageDataset(paths, None, size, transform, cache=mapped)
                out[f"maskkit shared cache (mapped), aug {aug}, uint8"] = (
                    make_loader(dataset, BATCH, shuffle=True), args.epochs, lambda x: normalize_batch(x, MEAN, STD))
            # the loader alone (what a GPU server's workers do; normalisation then runs on the device):
            # per-image crop + collation against whole batches cut from the shared cache at once (gather)
            for gather in (False, True):
                dataset = ImageDataset(paths, None, size, build_transform("none", size, MEAN, STD, normalize=False),
                                       cache=mapped, gather=gather)
                name = "gathered batches" if gather else "per image"
                out[f"maskkit shared cache, uint8, loader only, {name}"] = (
                    make_loader(dataset, BATCH, shuffle=True), args.epochs, None)
            # the basic recipe on the uint8 batch (maskkit.data.gpu_augment: meant for the GPU, timed here on the CPU)
            dataset = ImageDataset(paths, None, size, build_transform("none", size, MEAN, STD, normalize=False), cache=cache)
            augment = BatchAugment(MEAN, STD)
            out["maskkit cached, uint8, batch aug basic"] = (
                make_loader(dataset, BATCH, shuffle=True), args.epochs,
                lambda x: augment_batch(x, image_seeds(0, 0, range(len(x))), augment))
            return out

        # rounds interleave the pipelines and the best round counts: other load on the machine
        # then slows every pipeline alike instead of whichever ran at the wrong moment
        results: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, (loader, passes, on_batch) in loaders().items():
                results[name] = max(results.get(name, 0.0), images_per_second(loader, passes, on_batch))
        results["maskkit cache build (1 thread)"] = build_rate
        baseline = results["baseline (PIL + torchvision)"]

    print(f"{'pipeline':40s} {'images/s':>9s} {'vs baseline':>12s}")
    for name, rate in results.items():
        print(f"{name:40s} {rate:9.0f} {rate / baseline:11.1f}x")


if __name__ == "__main__":
    main()
