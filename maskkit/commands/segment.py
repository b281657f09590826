"""`maskkit segment IN OUT`: replace image backgrounds using torchvision DeepLabV3's person class.

OUT mirrors IN (same relative paths and names, other files copied), so every command works on OUT
as on IN. The pipeline: a DataLoader whose workers decode and resize (prefetching), batched
inference at a working resolution (AMP + channels_last on CUDA), and a thread pool that resizes
each person-score map (head resolution) to its image, keeps the person region (largest connected
components, holes filled), composites the background fill and writes the result atomically.
On CUDA (`process_on_device`) workers only decode; resize, forward, the full-size margin and the
composite run as torch ops on the batch, one batch behind the forward pass so that the host's part
(connected components, encode, write) overlaps it. Masks (--masks) are named after the image with `.png` for its
extension, so two images differing only in extension are refused up front.

Resuming: an output is written under a temporary name and renamed, then its row is appended to a
hidden journal (`OUT/.segment_journal.csv`); a re-run skips every image whose output exists and
has a row, and recomputes the rest in the same fixed batches as an uninterrupted run, so a killed
and resumed run ends with the same files. `OUT/segment_report.csv` (path, person_area, status) is
written atomically at the end from the previous report, the journal and this run's rows.

Why over 400 lines: two pipelines (host for the CPU, device for CUDA) must give the same files and
share the journal, resume and write-error handling; keeping them side by side keeps them in step.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import ctypes
import math
import functools
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from maskkit.engine.devices import resolve_device
from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.files import (LOCK_FILE, WriteError, atomic_path, console, examples, folder_lock, is_hidden,
                                    is_image, write_bytes, write_csv, write_errors)
from maskkit.data.images import JPEG_QUALITY, image_magic, write_image
from maskkit.engine.models import read_state_dict
from maskkit.engine.progress import progress_bar

# torchvision builder and weights enum per --model (COCO images with the 21 Pascal VOC labels).
MODELS = {
    "resnet50": ("deeplabv3_resnet50", "DeepLabV3_ResNet50_Weights"),
    "resnet101": ("deeplabv3_resnet101", "DeepLabV3_ResNet101_Weights"),
    "mobilenet": ("deeplabv3_mobilenet_v3_large", "DeepLabV3_MobileNet_V3_Large_Weights"),
}
NUM_CLASSES = 21
PERSON = 15  # index of "person" among the VOC labels
MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation of the torchvision weights' transforms
STD = (0.229, 0.224, 0.225)
FILLS = ("black", "white", "gray", "mean", "blur")
STATUSES = ("done", "no_person", "failed")
FINISHED = ("done", "no_person")
REPORT = "segment_report.csv"
JOURNAL = ".segment_journal.csv"
REPORT_COLUMNS = ["path", "person_area", "status"]
DOWNLOAD_TIMEOUT_S = 60
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
# Leftovers of atomic_path in a killed run: ".<name>.tmp<pid><suffix>".
STALE_TEMP = re.compile(r"^\..+\.tmp\d+(\.[^.]*)?$")


# --- model -------------------------------------------------------------------------------------

def _torchvision(model: str):
    """(builder, weights enum) of torchvision for a --model name."""
    if model not in MODELS:
        raise MaskkitError(f"--model {model!r}: unknown model (use one of {', '.join(MODELS)})")
    from torchvision.models import segmentation

    builder, weights = MODELS[model]
    return getattr(segmentation, builder), getattr(segmentation, weights)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub downloads without a timeout; a firewalled server would otherwise hang forever."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(model: str) -> nn.Module:
    builder, weights_enum = _torchvision(model)
    weights = weights_enum.DEFAULT
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return builder(weights=weights, weights_backbone=None)
    except (URLError, OSError, RuntimeError) as exc:  # no network, timeout, bad hash or truncated file
        reason = str(getattr(exc, "reason", "") or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise MaskkitError(
            f"{weights.url}: could not download the DeepLabV3 {model} weights ({reason}); "
            f"on an offline machine fetch that file elsewhere and pass it with --weights FILE (or put it at {cached})"
        ) from None


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """engine.models.read_state_dict, with the keys of a DataParallel/DDP save unprefixed."""
    state = read_state_dict(path)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _from_file(model: str, path: Path) -> nn.Module:
    builder, _ = _torchvision(model)
    state = _state_dict(path)
    head = state.get("classifier.4.weight")
    if head is None:
        raise MaskkitError(f"{path}: not a DeepLabV3 state dict (no classifier.4.weight); pass torchvision DeepLabV3 weights")
    if head.shape[0] != NUM_CLASSES:
        raise MaskkitError(
            f"{path}: the head has {head.shape[0]} classes, not the {NUM_CLASSES} VOC labels whose class "
            f"{PERSON} is person; pass torchvision's COCO_WITH_VOC_LABELS weights"
        )
    aux = any(k.startswith("aux_classifier.") for k in state)
    net = builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=aux)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise MaskkitError(f"{path}: does not fit DeepLabV3 {model} ({_first_line(exc)}); is --model right?") from None
    if result.missing_keys or result.unexpected_keys:
        keys = result.missing_keys + result.unexpected_keys
        raise MaskkitError(
            f"{path}: does not fit DeepLabV3 {model} ({len(result.missing_keys)} missing and "
            f"{len(result.unexpected_keys)} unexpected keys, e.g. {examples(keys, 2)}); is --model right?"
        )
    return net


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(exc).__name__)


def build_model(model: str = "resnet50", weights: str | Path | None = None) -> nn.Module:
    """DeepLabV3 in eval mode from a local state dict, or torchvision's download when weights is None."""
    net = _download(model) if weights is None else _from_file(model, Path(weights))
    net.aux_classifier = None  # the auxiliary head only helps training; skipping it saves time
    return net.eval().requires_grad_(False)


def prepare(net: nn.Module, device: torch.device) -> nn.Module:
    """Move the model to the device; channels_last on CUDA (faster convolutions with AMP)."""
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net


def person_scores(net: nn.Module, batch: torch.Tensor, device: torch.device, amp: bool = True) -> np.ndarray:
    """Person logit margin (B, h', w') float32 at the head's resolution for RGB uint8 images (B, h, w, 3).

    margin = person logit - logsumexp(other logits), so sigmoid(margin) is the softmax person
    probability. It is the model's forward without its final 21-channel upsampling to (h, w): the
    margin is resized once, straight to each image's full size, which saves that upsampling, the
    full-size softmax and the device-to-host copy.
    """
    with torch.inference_mode():
        x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW
        mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
        x = (x.float() - mean) / std
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            logits = net.classifier(net.backbone(x)["out"])  # DeepLabV3.forward minus F.interpolate
        logits = logits.float()
        others = torch.cat([logits[:, :PERSON], logits[:, PERSON + 1:]], dim=1).logsumexp(dim=1)
        return (logits[:, PERSON] - others).cpu().numpy()


def logit(p: float) -> float:
    """The margin at which the person probability is p."""
    return math.log(p / (1 - p))


# --- masks and compositing (pure functions) ----------------------------------------------------

def working_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side `size`, keeping the aspect ratio (like the weights' transforms)."""
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def person_mask(prob: np.ndarray, threshold: float = 0.5, keep: float = 0.2, min_area: float = 0.005) -> np.ndarray:
    """Binary person mask (uint8, 255 = person) from a probability (or margin) map: no specks, no holes.

    Keeps the connected components of `prob >= threshold` at least `keep` times the largest one,
    then fills the holes; all zeros when the largest is under `min_area` of the image.
    """
    binary = (prob >= threshold).view(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return np.zeros_like(binary)
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = int(areas.max())
    if largest < min_area * binary.size:
        return np.zeros_like(binary)
    kept = areas >= keep * largest
    if kept.all():
        mask = binary * np.uint8(255)
    else:
        lut = np.zeros(count, np.uint8)
        lut[1:][kept] = 255
        mask = lut[labels]
    return fill_holes(mask)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background regions that do not touch the image border become person."""
    outside = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(outside, None, (0, 0), 255)  # paints the background reachable from the border
    return cv2.bitwise_or(mask, cv2.bitwise_not(outside[1:-1, 1:-1]))


def soften(mask: np.ndarray, radius: int) -> np.ndarray:
    """Feathered alpha (float32 0..1): the mask grown by `radius` pixels, then blurred over as much."""
    if radius <= 0:
        return mask.astype(np.float32) / 255
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = cv2.dilate(mask, kernel)
    return cv2.GaussianBlur(grown.astype(np.float32) / 255, (0, 0), radius / 2)


def background(image: np.ndarray, fill: str) -> np.ndarray:
    """The fill image: a flat colour, the image's mean colour, or a heavily blurred copy."""
    if fill not in FILLS:
        raise MaskkitError(f"--fill {fill!r}: unknown fill (use one of {', '.join(FILLS)})")
    if fill == "blur":
        height, width = image.shape[:2]
        small = cv2.resize(image, (max(1, width // 16), max(1, height // 16)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), 2)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if fill == "mean":
        colour = np.round(image.reshape(-1, image.shape[2]).mean(axis=0))
    else:
        colour = {"black": 0, "white": 255, "gray": 128}[fill]
    filled = np.empty_like(image)
    filled[:] = colour
    return filled


def composite(image: np.ndarray, mask: np.ndarray, fill: str = "black") -> np.ndarray:
    """`image` (H, W, 3 uint8) kept where `mask` is person, the fill elsewhere.

    `mask` is uint8 (255 = person) or a float alpha in 0..1 (a feathered edge blends the two).
    """
    alpha = mask.astype(np.float32) / 255 if mask.dtype == np.uint8 else mask.astype(np.float32)
    fill_image = background(image, fill)
    return cv2.blendLinear(image, fill_image, alpha, 1 - alpha)


# --- the folder layout -------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """What to do with IN's files: images to segment and other files to copy (relative paths)."""

    images: list[Path]
    copies: list[Path]


def _image_dirs(root: Path) -> list[Path] | None:
    """The competition layout's image folders under IN, or None for a plain image folder."""
    def is_split(folder: Path) -> bool:
        return (folder / "train.csv").is_file() or (folder / "info.csv").is_file()

    if is_split(root):
        return [root / "images"]
    folders = [root / name / "images" for name in ("train", "eval") if is_split(root / name)]
    return folders or None


def scan(root: Path) -> Layout:
    """IN's files, hidden ones (`._x.jpg`, dot folders) left out.

    In the competition layout only the images under `images/` are segmented (a `masks/` folder
    beside them is copied as it is); in a plain folder every image is.
    """
    image_dirs = _image_dirs(root)
    images, copies = [], []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not is_hidden(d))
        here = Path(folder)
        for name in sorted(files):
            if is_hidden(name):
                continue
            path = here / name
            rel = path.relative_to(root)
            inside = image_dirs is None or any(d == here or d in here.parents for d in image_dirs)
            if is_image(path) and inside:
                images.append(rel)
            elif rel.as_posix() != REPORT:
                copies.append(rel)
    return Layout(sorted(images, key=Path.as_posix), sorted(copies, key=Path.as_posix))


def check_paths(src: Path, out: Path, masks: Path | None) -> None:
    """IN must be a folder; OUT and --masks must not overlap IN (segment never writes inside IN)."""
    if not src.is_dir():
        raise MaskkitError(f"{src}: folder not found (pass a dataset root, DATA/train, DATA/eval or a folder of images)")
    source = src.resolve()
    for option, target in (("OUT", out), ("--masks", masks)):
        if target is None:
            continue
        resolved = target.resolve()
        if resolved == source:
            raise MaskkitError(f"{target}: {option} is IN itself; segment never writes inside IN, pick a new folder such as {src.name}_segmented")
        if source in resolved.parents:
            raise MaskkitError(f"{target}: {option} is inside IN ({src}); segment never writes inside IN, pick a folder outside it")
        if resolved in source.parents:
            raise MaskkitError(f"{target}: {option} contains IN ({src}); pick a folder beside IN, not above it")
        if target.exists() and not target.is_dir():
            raise MaskkitError(f"{target}: {option} exists and is not a folder; pick a folder")
    if masks is not None and masks.resolve() == out.resolve():
        raise MaskkitError(f"{masks}: --masks is OUT itself; pick a folder of its own, e.g. {out / 'masks'}")


def check_out_is_ours(out: Path) -> None:
    """A non-empty OUT must be an earlier segment output (its report or journal is there):
    copying IN's files into another dataset would replace that dataset's own files."""
    if not out.is_dir() or (out / REPORT).is_file() or (out / JOURNAL).is_file():
        return
    others = sorted(e.name for e in out.iterdir() if e.name != LOCK_FILE)
    if others:
        raise MaskkitError(f"{out}: OUT holds files that segment did not write ({', '.join(others[:3])}); "
                           "segment would replace them, so pick a new or empty folder")


def check_mask_names(src: Path, images: Sequence[Path], masks: Path) -> None:
    """Two images of one folder that differ only in their extension (a.jpg, a.png) would share one mask."""
    first: dict[Path, Path] = {}
    for rel in images:
        other = first.setdefault(mask_path(masks, rel), rel)
        if other != rel:
            raise MaskkitError(f"{src / rel}: {src / other} would share its mask {mask_path(masks, rel)}; "
                               "rename or move one of the two images (or leave out --masks)")


def mask_path(masks: Path, rel: Path) -> Path:
    """Where an image's mask goes: IN's relative path with the suffix `.png` (see 'Mask folders')."""
    return masks / rel.with_suffix(".png")


def copy_others(src: Path, out: Path, copies: Sequence[Path], masks: Path | None, overwrite: bool) -> int:
    """Copy IN's non-image files (CSVs...) to OUT unless an identical copy is there; returns how many."""
    copied = 0
    skip_under = masks.resolve() if masks is not None else None
    for rel in copies:
        source, target = src / rel, out / rel
        if skip_under is not None and skip_under in target.resolve().parents:
            continue  # our own masks go there
        stat = source.stat()
        if not overwrite and target.is_file():
            have = target.stat()
            if have.st_size == stat.st_size and have.st_mtime_ns == stat.st_mtime_ns:
                continue
        with atomic_path(target) as tmp:
            shutil.copy2(source, tmp)
        copied += 1
    return copied


def remove_stale_temps(*folders: Path | None) -> None:
    """Temporary files a killed run left behind (its finished files were all renamed)."""
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        for path in folder.rglob(".*.tmp*"):
            if path.is_file() and STALE_TEMP.match(path.name):
                path.unlink()


# --- report and journal ------------------------------------------------------------------------

def read_records(out: Path) -> dict[str, tuple[float, str]]:
    """path -> (person_area, status) from the previous report and then the journal of a killed run."""
    records: dict[str, tuple[float, str]] = {}
    for name in (REPORT, JOURNAL):
        path = out / name
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                # A killed run may leave a cut last line: take only complete, valid rows.
                if len(row) != 3 or row[2] not in STATUSES:
                    continue
                try:
                    records[row[0]] = (float(row[1]), row[2])
                except ValueError:
                    continue
    return records


def report_table(images: Sequence[Path], records: dict[str, tuple[float, str]]) -> pd.DataFrame:
    rows = []
    for rel in images:
        key = rel.as_posix()
        if key in records:
            area, status = records[key]
            rows.append({"path": key, "person_area": area, "status": status})
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def write_report(out: Path, images: Sequence[Path], records: dict[str, tuple[float, str]]) -> None:
    """The report, written atomically; the journal is then no longer needed."""
    write_csv(report_table(images, records), out / REPORT, float_format="%.6f")
    (out / JOURNAL).unlink(missing_ok=True)


class Journal:
    """Rows appended (and flushed) as outputs finish, so a killed run's work is known on re-run.

    It exists from the run's start until its report is written: its presence marks an interrupted run.
    """

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle, lineterminator="\n")

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.close()

    def add(self, rel: str, area: float, status: str) -> None:
        self.writer.writerow([rel, f"{area:.6f}", status])
        self.handle.flush()


# --- the pipeline ------------------------------------------------------------------------------

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
        image = cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR)
        if image is None:
            return index, None, None
        if not self.resize:
            return index, None, torch.from_numpy(image)
        return index, image, torch.from_numpy(to_working(image, self.size))


def to_working(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 copy of a BGR image with its shorter side resized to `size`."""
    height, width = working_size(*image.shape[:2], size)
    method = cv2.INTER_AREA if height < image.shape[0] else cv2.INTER_LINEAR
    return cv2.cvtColor(cv2.resize(image, (width, height), interpolation=method), cv2.COLOR_BGR2RGB)


def collate(items: list[tuple[int, np.ndarray | None, torch.Tensor | None]]) -> dict:
    """Stack the working images by shape (one group when all images share a size; runs in workers)."""
    shapes: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
    for position, (_, _, work) in enumerate(items):
        if work is not None:
            shapes[tuple(work.shape)].append(position)
    groups = [(positions, torch.stack([items[p][2] for p in positions])) for positions in shapes.values()]
    return {"index": [i for i, _, _ in items], "image": [image for _, image, _ in items],
            "readable": [work is not None for _, _, work in items], "groups": groups}


def die_with_parent(parent: int, _worker: int) -> None:
    """DataLoader worker init (via functools.partial): on Linux the worker dies with the main process.

    Without it, `kill -9` of the main process leaves workers blocked on a full queue forever.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def serial_opencv() -> Iterator[None]:
    """OpenCV without its own thread pool while DataLoader workers are forked.

    A worker forked from a process whose OpenCV pool is running can deadlock in that pool (seen with
    cv2.setNumThreads in the worker); parallelism comes from the workers and the writing threads.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def fixed_batches(count: int, batch_size: int, wanted: set[int]) -> list[list[int]]:
    """Chunks of the whole sorted list that hold a wanted image: the same batches in every run."""
    chunks = [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]
    return [chunk for chunk in chunks if wanted.intersection(chunk)]


def copy_file(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


@dataclass(frozen=True)
class Job:
    """One image: where it comes from and where its outputs go."""

    rel: str
    source: Path
    target: Path
    mask: Path | None


@dataclass(frozen=True)
class Style:
    """How a mask becomes an output image."""

    fill: str = "black"
    threshold: float = 0.5
    feather: float = 0.005  # edge width as a fraction of the image's shorter side


def finish(job: Job, image: np.ndarray, score: np.ndarray, style: Style) -> tuple[float, str]:
    """Mask at full size, composite, write (mask first: the image's presence means both are done)."""
    height, width = image.shape[:2]
    full = cv2.resize(score, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = person_mask(full, logit(style.threshold))
    area = float(np.count_nonzero(mask)) / mask.size
    if job.mask is not None:
        write_image(job.mask, mask)
    if area == 0:
        copy_file(job.source, job.target)  # nobody found: the image as it was
        return 0.0, "no_person"
    radius = round(style.feather * min(height, width))
    write_image(job.target, composite(image, soften(mask, radius), style.fill))
    return area, "done"


@dataclass
class Summary:
    """What a run did (this run only; `skipped` were finished by an earlier run)."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    no_person: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the processing loop, model loading excluded


def run(
    src: str | Path,
    out: str | Path,
    *,
    model: str = "resnet50",
    weights: str | Path | None = None,
    fill: str = "black",
    masks: str | Path | None = None,
    batch_size: int = 8,
    device: str = "auto",
    threshold: float = 0.5,
    size: int = 520,
    workers: int | None = None,
    overwrite: bool = False,
    amp: bool = True,
    progress: bool = True,
    on_device: bool | None = None,
    jpeg_on_device: bool | None = None,
) -> Summary:
    """Segment IN into OUT (see the module docstring); raises RunFailure when images failed.

    on_device: resize and composite as torch ops on the device (`process_on_device`); default: on
    CUDA. jpeg_on_device: encode JPEG outputs there too (nvjpeg); default: on CUDA, where it was the
    fastest pipeline measured (benchmarks/README.md, GPU section); a failure falls back to the host.
    """
    src, out = Path(src), Path(out)
    masks = Path(masks) if masks is not None else None
    check_paths(src, out, masks)
    if fill not in FILLS:
        raise MaskkitError(f"--fill {fill!r}: unknown fill (use one of {', '.join(FILLS)})")
    if not 0 < threshold < 1:
        raise MaskkitError(f"--threshold {threshold}: expected a probability between 0 and 1")
    if batch_size < 1 or size < 16:
        raise MaskkitError(f"--batch-size {batch_size} / --size {size}: expected a batch of 1 or more and a size of 16 pixels or more")
    if model not in MODELS:
        raise MaskkitError(f"--model {model!r}: unknown model (use one of {', '.join(MODELS)})")
    torch_device = resolve_device(device)
    layout = scan(src)
    if not layout.images:
        raise MaskkitError(f"{src}: no images found (expected .jpg, .jpeg or .png files)")
    if masks is not None:
        check_mask_names(src, layout.images, masks)
    check_out_is_ours(out)
    with folder_lock(out, "segment"):  # one run per OUT: two would delete each other's temporary files
        net = prepare(build_model(model, weights), torch_device)

        out.mkdir(parents=True, exist_ok=True)
        interrupted = (out / JOURNAL).is_file()
        if interrupted:  # an interrupted run: its temporary files are garbage
            remove_stale_temps(out, masks)
        (out / JOURNAL).touch()  # from now on OUT is recognisably a segment output, even if this run is killed
        copy_others(src, out, layout.copies, masks, overwrite)
        if overwrite:
            (out / REPORT).unlink(missing_ok=True)
            (out / JOURNAL).unlink(missing_ok=True)
        records = read_records(out)
        if interrupted and (out / JOURNAL).is_file():
            write_report(out, layout.images, records)  # fold the journal in: a new one starts below

        jobs = [Job(rel.as_posix(), src / rel, out / rel, mask_path(masks, rel) if masks else None) for rel in layout.images]

        def finished(job: Job) -> bool:
            record = records.get(job.rel)
            return (record is not None and record[1] in FINISHED and job.target.is_file()
                    and (job.mask is None or job.mask.is_file()))

        wanted = {i for i, job in enumerate(jobs) if overwrite or not finished(job)}
        summary = Summary(total=len(jobs), skipped=len(jobs) - len(wanted))
        style = Style(fill=fill, threshold=threshold)
        start = time.perf_counter()
        if wanted:
            try:
                with write_errors(out / JOURNAL), Journal(out / JOURNAL) as journal:
                    if on_device is None:
                        on_device = torch_device.type == "cuda"
                    if jpeg_on_device is None:
                        jpeg_on_device = torch_device.type == "cuda"
                    if on_device:
                        process_on_device(net, torch_device, jobs, wanted, style, batch_size, size, workers, amp,
                                          progress, records, journal, summary, jpeg_on_device)
                    else:
                        process(net, torch_device, jobs, wanted, style, batch_size, size, workers, amp, progress,
                                records, journal, summary)
            except WriteError as exc:
                raise type(exc)(f"{exc}; {summary.done + len(summary.no_person)} of {len(wanted)} images were "
                                "finished before it: re-run to resume", exc.exit_code) from None
        summary.seconds = time.perf_counter() - start
        write_report(out, layout.images, records)
        print_summary(out, summary)
        if summary.failed:
            raise RunFailure(
                f"{src}: {len(summary.failed)} image(s) could not be read or written ({examples(summary.failed)}); "
                f"see {out / REPORT}, fix or remove them and re-run to finish"
            )
        return summary


class Results:
    """Outputs in flight in the writer pool and what became of each image (journal, summary, progress)."""

    def __init__(self, jobs: Sequence[Job], records: dict[str, tuple[float, str]], journal: Journal,
                 summary: Summary, bar, limit: int) -> None:
        self.jobs, self.records, self.journal, self.summary, self.bar = jobs, records, journal, summary, bar
        self.limit = limit  # results waiting to be written: bounds memory, keeps the pool busy
        self.pending: collections.deque = collections.deque()

    def record(self, index: int, area: float, status: str) -> None:
        job = self.jobs[index]
        self.records[job.rel] = (area, status)
        self.journal.add(job.rel, area, status)
        if status == "done":
            self.summary.done += 1
        elif status == "no_person":
            self.summary.no_person.append(job.rel)
        else:
            self.summary.failed.append(job.rel)
        self.bar.advance()

    def collect(self, block: bool) -> None:
        while self.pending and (block or self.pending[0][1].done()):
            index, future = self.pending.popleft()
            try:
                area, status = future.result()
            except (OSError, cv2.error) as exc:  # a full disk, a read-only folder: this image failed
                console.print(f"[red]{self.jobs[index].rel}[/]: {exc}")
                area, status = 0.0, "failed"
            self.record(index, area, status)

    def throttle(self) -> None:
        """Record what has finished; wait while more than `limit` results are queued."""
        self.collect(block=False)
        while len(self.pending) > self.limit:
            concurrent.futures.wait([self.pending[0][1]])
            self.collect(block=False)

    def cancel(self) -> None:
        for _, future in self.pending:
            future.cancel()


def process(net: nn.Module, device: torch.device, jobs: Sequence[Job], wanted: set[int], style: Style,
            batch_size: int, size: int, workers: int | None, amp: bool, show: bool,
            records: dict[str, tuple[float, str]], journal: Journal, summary: Summary) -> None:
    """Inference on the main thread while workers decode ahead and a thread pool writes."""
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    loader = DataLoader(
        Images([job.source for job in jobs], size),
        batch_sampler=fixed_batches(len(jobs), batch_size, wanted),
        num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
        worker_init_fn=functools.partial(die_with_parent, os.getpid()) if workers else None,
    )

    writers = max(2, min(8, (os.cpu_count() or 2) - workers - 1))  # mask, composite, encode: ~7 ms an image
    with serial_opencv(), progress_bar("segment", len(wanted), show=None if show else False) as bar, \
            concurrent.futures.ThreadPoolExecutor(writers) as pool:
        results = Results(jobs, records, journal, summary, bar, limit=2 * batch_size)
        try:
            for batch in loader:
                for position, index in enumerate(batch["index"]):
                    if index in wanted and not batch["readable"][position]:
                        results.record(index, 0.0, "failed")
                for positions, work in batch["groups"]:
                    scores = person_scores(net, work, device, amp)
                    for position, score in zip(positions, scores):
                        index = batch["index"][position]
                        if index in wanted:
                            future = pool.submit(finish, jobs[index], batch["image"][position], score, style)
                            results.pending.append((index, future))
                results.throttle()
            results.collect(block=True)
        except BaseException:
            results.cancel()
            raise


# --- the device pipeline: resize, forward, full-size margin and composite as torch ops on the batch ---

def person_margins(net: nn.Module, images: torch.Tensor, size: int, amp: bool = True) -> torch.Tensor:
    """Person margin (B, H, W) float32 at full size for BGR uint8 images (B, H, W, 3) on the model's device.

    The device pipeline's `person_scores`: the resize to the working size (bilinear, antialiased
    when shrinking, rounded to integers like the CPU path's uint8 image) and the margin's resize to
    full size both happen on the device, so the host sees only the images and the binary masks.
    """
    height, width = images.shape[1:3]
    x = images.permute(0, 3, 1, 2).flip(1).float()  # BGR -> RGB, (B, 3, H, W)
    x = F.interpolate(x, size=working_size(height, width, size), mode="bilinear", antialias=True,
                      align_corners=False).round_().clamp_(0, 255)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1) * 255
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, enabled=amp and x.device.type == "cuda"):
        logits = net.classifier(net.backbone(x)["out"])
    logits = logits.float()
    others = torch.cat([logits[:, :PERSON], logits[:, PERSON + 1:]], dim=1).logsumexp(dim=1)
    margin = (logits[:, PERSON] - others)[:, None]
    return F.interpolate(margin, size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def _blur(x: torch.Tensor, sigma: float, ksize: int) -> torch.Tensor:
    """Gaussian blur (reflected border, as OpenCV's default) with the kernel clipped to the image."""
    from torchvision.transforms.v2 import functional as TF

    limit = 2 * min(x.shape[-2:]) - 1  # reflect padding needs pad < side
    ksize = max(1, min(ksize, limit if limit % 2 else limit - 1))
    return TF.gaussian_blur(x, [ksize, ksize], [sigma, sigma])


def soften_batch(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """`soften` for a batch: (B, H, W) uint8 masks (255 = person) -> (B, 1, H, W) float alpha 0..1."""
    alpha = masks[:, None].float() / 255
    if radius <= 0:
        return alpha
    ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    kernel = torch.from_numpy(ellipse).to(alpha)[None, None]
    grown = (F.conv2d(alpha, kernel, padding=radius) > 0.5).float()  # binary dilation by the ellipse
    sigma = radius / 2
    return _blur(grown, sigma, round(sigma * 8 + 1) | 1)  # OpenCV's kernel size for float images


def background_batch(images: torch.Tensor, fill: str) -> torch.Tensor:
    """`background` for a batch of float images (B, 3, H, W) 0..255."""
    if fill not in FILLS:
        raise MaskkitError(f"--fill {fill!r}: unknown fill (use one of {', '.join(FILLS)})")
    if fill == "blur":
        height, width = images.shape[-2:]
        small = F.interpolate(images, size=(max(1, height // 16), max(1, width // 16)), mode="area").round_()
        small = _blur(small, 2.0, 13).round_()  # OpenCV's kernel size for sigma 2 on uint8 images
        return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False).round_()
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).round_().expand_as(images)
    return torch.full_like(images, {"black": 0, "white": 255, "gray": 128}[fill])


def composite_batch(images: torch.Tensor, masks: torch.Tensor, fill: str = "black", radius: int = 0) -> torch.Tensor:
    """`composite(image, soften(mask, radius), fill)` for a batch on any device: (B, H, W, 3) uint8."""
    x = images.permute(0, 3, 1, 2).float()
    alpha = soften_batch(masks, radius)
    blended = x * alpha + background_batch(x, fill) * (1 - alpha)
    return blended.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def clean_mask(binary: np.ndarray) -> tuple[np.ndarray, float]:
    """(person mask, person area) from a 0/1 map: `person_mask`'s components and holes (OpenCV, host)."""
    mask = person_mask(binary, 0.5)
    return mask, float(np.count_nonzero(mask)) / mask.size


def write_result(job: Job, mask: np.ndarray, area: float, image: np.ndarray | None, encoded: bytes | None) -> tuple[float, str]:
    """`finish`'s writes for the device pipeline (mask first; the composite as pixels or JPEG bytes)."""
    if job.mask is not None:
        write_image(job.mask, mask)
    if area == 0:
        copy_file(job.source, job.target)
        return 0.0, "no_person"
    if encoded is not None:
        write_bytes(job.target, encoded, magic=image_magic(job.target))
    else:
        write_image(job.target, image)
    return area, "done"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def process_on_device(net: nn.Module, device: torch.device, jobs: Sequence[Job], wanted: set[int], style: Style,
                      batch_size: int, size: int, workers: int | None, amp: bool, show: bool,
                      records: dict[str, tuple[float, str]], journal: Journal, summary: Summary,
                      jpeg_on_device: bool = False) -> None:
    """`process` with the per-image pixel work on the device (CUDA; the same torch ops on the CPU).

    Workers only decode. The main thread uploads a batch, queues resize + forward + full-size
    margin + threshold, and while the device runs it, finishes the previous batch: its 0/1 maps
    are cleaned on the host (connected components, holes: OpenCV in a thread pool), uploaded,
    composited on the device (optionally JPEG-encoded there with nvjpeg), and handed to writer
    threads. Outputs are the CPU pipeline's up to rounding at the edges.
    """
    workers = min(4, cpu_count()) if workers is None else workers
    loader = DataLoader(
        Images([job.source for job in jobs], size, resize=False),
        batch_sampler=fixed_batches(len(jobs), batch_size, wanted),
        num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
        worker_init_fn=functools.partial(die_with_parent, os.getpid()) if workers else None,
    )
    margin_threshold = logit(style.threshold)
    cores = cpu_count()

    def finish_group(indices: list[int], images: torch.Tensor, binary: torch.Tensor, ready) -> None:
        nonlocal jpeg_on_device
        if ready is not None:
            ready.synchronize()  # the non-blocking copy of the 0/1 maps has landed
        cleaned = list(cleaners.map(clean_mask, binary.numpy()))
        persons = [k for k, (_, area) in enumerate(cleaned) if area > 0]
        pixels: dict[int, np.ndarray] = {}
        encoded: dict[int, bytes] = {}
        if persons:
            height, width = images.shape[1:3]
            masks = torch.from_numpy(np.stack([cleaned[k][0] for k in persons])).to(device)
            radius = round(style.feather * min(height, width))
            with torch.inference_mode():
                result = composite_batch(images[persons] if len(persons) < len(images) else images, masks,
                                         style.fill, radius)
            as_jpeg = [n for n, k in enumerate(persons)
                       if jpeg_on_device and jobs[indices[k]].target.suffix.lower() in (".jpg", ".jpeg")]
            if as_jpeg:
                from torchvision.io import encode_jpeg

                chw = [result[n].permute(2, 0, 1).flip(0).contiguous() for n in as_jpeg]  # BGR -> RGB
                try:
                    for n, data in zip(as_jpeg, encode_jpeg(chw, quality=JPEG_QUALITY)):
                        encoded[persons[n]] = data.cpu().numpy().tobytes()
                except RuntimeError as exc:  # no nvjpeg encoder here: the writers encode with OpenCV
                    console.print(f"[yellow]warning:[/] JPEG encoding on {device} failed ({_first_line(exc)}); encoding on the host")
                    encoded.clear()
                    jpeg_on_device = False
            if len(encoded) < len(persons):
                host = result.cpu().numpy()
                pixels = {k: host[n] for n, k in enumerate(persons) if k not in encoded}
        for k, index in enumerate(indices):
            mask, area = cleaned[k]
            future = writers.submit(write_result, jobs[index], mask, area, pixels.get(k), encoded.get(k))
            results.pending.append((index, future))

    with (serial_opencv(), progress_bar("segment", len(wanted), show=None if show else False) as bar,
          concurrent.futures.ThreadPoolExecutor(max(1, min(8, cores))) as cleaners,
          concurrent.futures.ThreadPoolExecutor(max(2, min(16, cores))) as writers):
        results = Results(jobs, records, journal, summary, bar, limit=2 * batch_size)
        previous = None
        try:
            for batch in loader:
                for position, index in enumerate(batch["index"]):
                    if index in wanted and not batch["readable"][position]:
                        results.record(index, 0.0, "failed")
                for positions, full in batch["groups"]:
                    rows = [r for r, p in enumerate(positions) if batch["index"][p] in wanted]
                    if not rows:
                        continue
                    images = (full[rows] if len(rows) < len(positions) else full).to(device, non_blocking=True)
                    with torch.inference_mode():
                        binary = (person_margins(net, images, size, amp) >= margin_threshold).to(torch.uint8)
                        binary = binary.to("cpu", non_blocking=True)
                    ready = None
                    if device.type == "cuda":
                        ready = torch.cuda.Event()
                        ready.record(torch.cuda.current_stream(device))
                    if previous is not None:
                        finish_group(*previous)  # overlaps the forward pass just queued
                    previous = ([batch["index"][positions[r]] for r in rows], images, binary, ready)
                results.throttle()
            if previous is not None:
                finish_group(*previous)
            results.collect(block=True)
        except BaseException:
            results.cancel()
            raise


def print_summary(out: Path, summary: Summary) -> None:
    console.print(
        f"segment: {summary.total} images: {summary.done} done, {summary.skipped} skipped (finished earlier), "
        f"{len(summary.no_person)} no person found (copied unchanged), {len(summary.failed)} failed -> {out}"
    )
    if summary.no_person:
        console.print(f"  no person found in: {examples(sorted(summary.no_person))} (all in {out / REPORT})")
