"""The fast loader: OpenCV decoding at reduced size, a shared uint8 cache, seeded augmentation.

Pipeline of one image: `decode_image` reads it straight at the *working size* (a little larger
than the model's input, see `work_size`), using libjpeg's reduced decoding (1/2, 1/4, 1/8) when
the working size allows, then INTER_AREA resizing. `build_cache` does that once for every image,
in threads, into one contiguous (N, H, W, 3) uint8 array (for `train`, a file that every process
on the machine maps: data/cache.py) that DataLoader workers share through fork (never written),
so later epochs only augment. The transforms
(`maskkit.data.presets`) crop the working image to the model's input (`img_size`) and normalise.

Reproducibility: the `SeededSampler` draws the order of an epoch from (seed, epoch) and hands each
item a seed drawn from (seed, epoch, index); the dataset re-seeds the transform with it before
augmenting. So the batches and their augmentations depend only on (seed, epoch), not on workers,
their count or on how many epochs ran in this process: a resumed run sees the same data as an
uninterrupted one (call `set_epoch(loader, epoch)` before each epoch).

Just over 400 lines: decoding, the cached dataset, the seeded sampler and the loader factory are
one pipeline whose parts share the same image geometry.
"""

from __future__ import annotations

import copy
import functools
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.files import console, examples
from maskkit.data.forking import die_with_parent
from maskkit.data.images import read_image
from maskkit.data.presets import DEFAULT_CROP, work_size
from maskkit.contract.progress import progress_bar

MAX_CONSECUTIVE_BAD = 20  # unreadable images in a row before a run stops
MAX_BAD_FRACTION = 0.05  # ... or this share of the dataset (and more than MAX_CONSECUTIVE_BAD)

_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


class UnreadableImage(MaskkitError):
    """An image file that is missing, corrupt or not an image (exit 2 where it is the user's input)."""


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as displayed, from its header only (PIL reads no pixels here).

    An EXIF rotation by 90 degrees swaps them, as OpenCV applies it when decoding.
    """
    with Image.open(path) as im:
        width, height = im.size
        if im.format == "JPEG" and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            return height, width
        return width, height


def reduction_factor(image_wh: Sequence[int], size_hw: Sequence[int]) -> int:
    """Largest of 8, 4, 2 (else 1) by which the image can shrink and still cover `size_hw`."""
    width, height = image_wh
    for factor, _ in _REDUCED:
        if size_hw[0] * factor <= height and size_hw[1] * factor <= width:
            return factor
    return 1


def decode_image(path: str | Path, size_hw: Sequence[int], image_wh: Sequence[int] | None = None) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3) at `size_hw`, decoding JPEGs at reduced size when possible.

    `image_wh` (width, height) skips reading the header when the size is known.
    Raises UnreadableImage naming the file when it is missing or cannot be decoded.
    """
    path = str(path)
    try:
        wh = image_wh if image_wh is not None else image_size(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{path}: cannot read image ({type(exc).__name__}); remove or replace the file") from None
    factor = reduction_factor(wh, size_hw)
    flag = dict(_REDUCED).get(factor, cv2.IMREAD_COLOR)
    bgr = read_image(path, flag)
    if bgr is None:
        raise UnreadableImage(f"{path}: cannot decode image (corrupt or truncated); remove or replace the file")
    height, width = int(size_hw[0]), int(size_hw[1])
    if bgr.shape[:2] != (height, width):
        # INTER_AREA averages properly when shrinking by 2x or more; below that (the usual case
        # after reduced decoding) INTER_LINEAR barely aliases and is ~6x faster than INTER_AREA
        # at a non-integer scale.
        shrink = min(bgr.shape[0] / height, bgr.shape[1] / width)
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --- the cache (shared between processes by data/cache.py) ------------------------------------

def _check_bad(bad: list[str], total: int, consecutive: int) -> None:
    """RunFailure when unreadable images are too many (in a row, or in all)."""
    if consecutive > MAX_CONSECUTIVE_BAD or len(bad) > max(MAX_CONSECUTIVE_BAD, MAX_BAD_FRACTION * total):
        raise RunFailure(
            f"{len(bad)} unreadable images ({examples(bad)}), {consecutive} in a row:"
            " check the data folder (disk full, interrupted copy?) and re-run"
        )


def _warn_bad(path: str) -> None:
    console.print(f"[yellow]warning:[/] {path}: unreadable image, skipped")


def build_cache(
    paths: Sequence[str | Path],
    size_hw: Sequence[int],
    threads: int | None = None,
    show_progress: bool | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image once at `size_hw` into one (N, H, W, 3) uint8 array (threads; cv2 frees the GIL).

    Returns (cache, valid): `valid[i]` is False for an unreadable image (warned about; its row is
    zeros). Too many unreadable images (more than MAX_CONSECUTIVE_BAD in a row, or more than
    MAX_BAD_FRACTION of all and more than MAX_CONSECUTIVE_BAD) raise RunFailure naming them.
    Build it in the main process before the DataLoader starts its workers, so they share it.
    `show_progress`: the progress bar (None: for 500 images or more, on a terminal or every 30 s).
    `out`: fill this (N, H, W, 3) uint8 array (e.g. a memory-mapped file, data/cache.py) instead of a new one.
    """
    n = len(paths)
    height, width = int(size_hw[0]), int(size_hw[1])
    cache = np.zeros((n, height, width, 3), dtype=np.uint8) if out is None else out
    valid = np.ones(n, dtype=bool)

    def fill(i: int) -> bool:
        try:
            cache[i] = decode_image(paths[i], (height, width))
            return True
        except UnreadableImage:
            cache[i] = 0  # `out` may hold anything
            return False

    threads = threads or min(32, os.cpu_count() or 1)

    show = (None if n >= 500 else False) if show_progress is None else show_progress
    bad: list[str] = []
    consecutive = 0
    with ThreadPoolExecutor(max_workers=threads) as pool, \
            progress_bar(f"caching {n} images at {height}x{width}", n, show=show) as bar:
        for i, ok in enumerate(pool.map(fill, range(n), chunksize=16)):
            bar.advance()
            if ok:
                consecutive = 0
                continue
            valid[i] = False
            bad.append(str(paths[i]))
            consecutive += 1
            _warn_bad(str(paths[i]))
            _check_bad(bad, n, consecutive)
    return cache, valid


# --- dataset and loader ------------------------------------------------------------------------

class ImageDataset(Dataset):
    """Images (from the RAM cache, or decoded on the fly) with their targets, transformed.

    Item: (image tensor (3, H, W) float, {target name: tensor}, index), where index is the row of
    `paths` actually returned; the targets also hold "draw", the item's seed (two draws of one
    image under `--balanced` have different ones: the GPU batch augmentation seeds from it). Keys: an int index, or (index, item_seed) from `SeededSampler`.
    An unreadable image (a False in `valid`, or a failed decode) is replaced by the next readable
    one with a warning; more than MAX_CONSECUTIVE_BAD in a row raise RunFailure. With
    `on_error="raise"` (prediction) it raises UnreadableImage instead. Rows with valid False are
    left out of the dataset entirely (len counts only valid rows). `cache_rows[i]`: the cache's row
    of `paths[i]` (default: the same row), so a fold's datasets read one cache of the whole manifest.
    `gather` (with a cache and the eval geometry with `normalize=False`, the GPU paths): batches are
    cut from the cache in one indexing (uint8, channels-last) instead of per-image transforms.
    All state is per instance; the transform is copied, so instances never share it.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        targets: Mapping[str, np.ndarray] | None,
        img_size: Sequence[int],
        transform: Callable,
        cache: np.ndarray | None = None,
        valid: np.ndarray | None = None,
        crop: Sequence[float] = DEFAULT_CROP,
        seed: int = 0,
        on_error: str = "skip",
        cache_rows: Sequence[int] | None = None,
        gather: bool = False,
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
        self.paths = [str(p) for p in paths]
        self.targets = {k: np.array(v) for k, v in (targets or {}).items()}  # own copies
        for name, values in self.targets.items():
            if len(values) != len(self.paths):
                raise ValueError(f"target {name!r} has {len(values)} values for {len(self.paths)} images")
        self.cache_rows = np.arange(len(self.paths)) if cache_rows is None else np.asarray(cache_rows, dtype=np.int64)
        if len(self.cache_rows) != len(self.paths):
            raise ValueError(f"{len(self.cache_rows)} cache rows for {len(self.paths)} paths")
        if cache is not None and len(self.paths) and not 0 <= self.cache_rows.min() <= self.cache_rows.max() < len(cache):
            raise ValueError(f"cache has {len(cache)} images, fewer than its rows for {len(self.paths)} paths need")
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.work_size = tuple(cache.shape[1:3]) if cache is not None else work_size(img_size, crop)
        self.transform = copy.deepcopy(transform)
        self.cache = cache
        self.rows = np.flatnonzero(valid) if valid is not None else np.arange(len(self.paths))
        self.seed = int(seed)
        self.on_error = on_error
        self._warned: set[str] = set()
        self._sizes: dict[str, tuple[int, int]] = {}
        self.gather = bool(gather) and cache is not None

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, row: int) -> np.ndarray:
        """RGB uint8 image at the working size for row `row` of `paths` (UnreadableImage if it fails)."""
        if self.cache is not None:
            return self.cache[self.cache_rows[row]]
        path = self.paths[row]
        if path not in self._sizes:  # header read once per image (per worker)
            try:
                self._sizes[path] = image_size(path)
            except (OSError, ValueError, Image.DecompressionBombError):
                raise UnreadableImage(f"{path}: cannot read image; remove or replace the file") from None
        return decode_image(path, self.work_size, self._sizes[path])

    def _readable(self, position: int) -> tuple[int, np.ndarray]:
        """(row, image) for dataset position `position`, skipping unreadable images forward."""
        bad: list[str] = []
        for step in range(len(self.rows)):
            row = int(self.rows[(position + step) % len(self.rows)])
            try:
                return row, self.image(row)
            except UnreadableImage:
                if self.on_error == "raise":
                    raise
                bad.append(self.paths[row])
                if self.paths[row] not in self._warned:
                    self._warned.add(self.paths[row])
                    _warn_bad(self.paths[row])
                if len(bad) > MAX_CONSECUTIVE_BAD:
                    _check_bad(bad, len(self.rows), len(bad))
        raise RunFailure(f"no readable image among {len(self.rows)} ({examples(bad)}): check the data folder")

    def _seeded(self, key: int | tuple[int, int]) -> tuple[int, int]:
        """(position, item seed) of a key: the sampler's seed, or one drawn from (seed, position)."""
        position, item_seed = key if isinstance(key, tuple) else (key, None)
        if item_seed is None:
            item_seed = int(np.random.SeedSequence([self.seed, int(position)]).generate_state(1)[0])
        return int(position), int(item_seed)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list:
        """A batch (DataLoader calls this): gathered from the cache in one go with `gather`, else per item."""
        if not self.gather:
            return [self[key] for key in keys]
        positions, seeds = zip(*(self._seeded(key) for key in keys))
        rows = self.rows[np.asarray(positions) % len(self.rows)]
        (height, width), (work_h, work_w) = self.img_size, self.work_size
        top, left = (work_h - height) // 2, (work_w - width) // 2  # albumentations' CenterCrop
        crops = self.cache[self.cache_rows[rows], top:top + height, left:left + width]  # one copy
        images = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)
        targets = {name: torch.as_tensor(values[rows]) for name, values in self.targets.items()}
        targets["draw"] = torch.tensor(seeds, dtype=torch.int64)
        return GatheredBatch([images, targets, torch.as_tensor(rows, dtype=torch.int64)])

    def __getitem__(self, key: int | tuple[int, int]):
        position, item_seed = self._seeded(key)
        row, img = self._readable(position)
        self.transform.set_random_state(np.random.default_rng(item_seed), random.Random(item_seed))
        tensor = self.transform(image=img)["image"]
        targets = {name: torch.as_tensor(values[row]) for name, values in self.targets.items()}
        targets["draw"] = torch.tensor(item_seed, dtype=torch.int64)  # this draw's seed (GPU augmentation)
        return tensor, targets, row


class GatheredBatch(list):
    """[images, targets, rows] that `ImageDataset.__getitems__` assembled itself: `collate` passes it on."""


def collate(samples: list) -> list:
    """torch's default collation, except for a batch the dataset already gathered."""
    return list(samples) if isinstance(samples, GatheredBatch) else default_collate(samples)


class SeededSampler(Sampler):
    """Yields (position, item_seed): the order and the per-item augmentation seeds of an epoch
    depend only on (seed, epoch). Call `set_epoch` before each epoch (as with DistributedSampler)."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0) -> None:
        self.n = int(n)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2**63 - 1, size=self.n)  # seeds[i] belongs to position i
        return iter([(int(i), int(seeds[i])) for i in order])


def worker_init(parent: int, worker_id: int) -> None:
    """A worker dies with `parent`, the main process (a worker left blocked would hold the run's pipes
    for ever), and seeds the global RNGs from torch's per-worker seed for any library that still uses them."""
    die_with_parent(parent, worker_id)
    # (No cv2.setNumThreads here: in a forked child it can deadlock on the parent's thread pool.)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    shuffle: bool,
    workers: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    drop_last: bool = False,
    prefetch_factor: int = 4,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader over `dataset` with a `SeededSampler`: pinned memory on CUDA, persistent
    workers (started by fork on Linux, so they share the RAM cache), a seeded generator and
    `worker_init_fn`. Call `set_epoch(loader, epoch)` before iterating each epoch.
    With workers, this sets OpenCV to one thread in the calling process (fork safety).
    `sampler` replaces the SeededSampler (it must yield (position, item_seed) too, e.g. a subclass);
    `shuffle` is then ignored.
    """
    extra = {}
    if workers > 0:
        # OpenCV's thread pool does not survive fork: a worker touching it can hang for ever.
        # One OpenCV thread in this process joins the pool's threads before the workers fork
        # (the workers give the parallelism; build_cache's Python threads are unaffected).
        cv2.setNumThreads(1)
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor,
                 "worker_init_fn": functools.partial(worker_init, os.getpid())}
        if sys.platform.startswith("linux"):
            # fork shares the cache copy-on-write; spawn/forkserver would pickle it to every worker
            extra["multiprocessing_context"] = multiprocessing.get_context("fork")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler if sampler is not None else SeededSampler(len(dataset), shuffle=shuffle, seed=seed),
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop_last,
        generator=generator,
        collate_fn=collate,
        **extra,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Fix the order and augmentation of the next pass over `loader` to those of `epoch`."""
    loader.sampler.set_epoch(epoch)


class DataWait:
    """Counts the seconds a loop spends waiting for the next batch.

    >>> wait = DataWait()
    >>> for images, targets, index in wait.iterate(loader): ...
    >>> wait.seconds
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.batches = 0

    def reset(self) -> None:
        self.seconds, self.batches = 0.0, 0

    def iterate(self, iterable: Iterable) -> Iterator:
        iterator = iter(iterable)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - start
            self.batches += 1
            yield item


__all__ = [
    "UnreadableImage", "image_size", "reduction_factor", "decode_image", "build_cache", "ImageDataset", "GatheredBatch", "collate", "SeededSampler",
    "make_loader", "set_epoch", "worker_init", "DataWait",
]
