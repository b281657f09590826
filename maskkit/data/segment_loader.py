"""Reading for segment's pipelines: a DataLoader whose workers decode (and resize) ahead.

The batches are fixed chunks of the whole sorted image list, so a resumed run recomputes its
images in the same batches as an uninterrupted one; workers die with the main process.
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maskkit.data.forking import die_with_parent
from maskkit.data.images import read_image
from maskkit.data.masks import to_working


class Images(Dataset):
    """Decodes an image (BGR, full size) and its RGB copy at the working resolution (in workers).

    With `resize=False` (the device pipeline) the item is (index, None, full-size BGR tensor): the
    device resizes. Either way an unreadable image gives (index, None, None).
    """

    def __init__(self, paths: Sequence[Path], size: int, resize: bool = True) -> None:
        self.paths = list(paths)
        self.size = size
        self.resize = resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, torch.Tensor | None]:
        image = read_image(self.paths[index])
        if image is None:
            return index, None, None
        if not self.resize:
            return index, None, torch.from_numpy(image)
        return index, image, torch.from_numpy(to_working(image, self.size))


def collate(items: list[tuple[int, np.ndarray | None, torch.Tensor | None]]) -> dict:
    """Stack the working images by shape (one group when all images share a size; runs in workers)."""
    shapes: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
    for position, (_, _, work) in enumerate(items):
        if work is not None:
            shapes[tuple(work.shape)].append(position)
    groups = [(positions, torch.stack([items[p][2] for p in positions])) for positions in shapes.values()]
    return {"index": [i for i, _, _ in items], "image": [image for _, image, _ in items],
            "readable": [work is not None for _, _, work in items], "groups": groups}


def fixed_batches(count: int, batch_size: int, wanted: set[int]) -> list[list[int]]:
    """Chunks of the whole sorted list that hold a wanted image: the same batches in every run."""
    chunks = [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]
    return [chunk for chunk in chunks if wanted.intersection(chunk)]


def make_loader(paths: Sequence[Path], wanted: set[int], batch_size: int, size: int, workers: int,
                pin_memory: bool, resize: bool = True) -> DataLoader:
    """The batches holding `wanted` images (with their batch neighbours), decoded ahead by `workers`.

    A batch is a dict: "index" (of each image in `paths`), "image" (full-size BGR arrays, None with
    resize=False), "readable" (False for an image that could not be decoded) and "groups", one
    (positions, stacked uint8 tensor) per image size.
    """
    return DataLoader(
        Images(paths, size, resize=resize),
        batch_sampler=fixed_batches(len(paths), batch_size, wanted),
        num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
        worker_init_fn=functools.partial(die_with_parent, os.getpid()) if workers else None,
    )
