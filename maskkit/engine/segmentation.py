"""segment's two pipelines: images in, composited images and masks out, each recorded in the journal.

Both read through one DataLoader (`make_loader`: workers decode ahead, the same fixed batches in
every run) and hand the writes to a thread pool; `Results` records what became of each image.

- Host (`HostPipeline`, the CPU default): workers also resize to the working size; the main thread
  runs the forward pass; a writer thread resizes each person-score map (head resolution) to its
  image, keeps the person region (largest connected components, holes filled), composites the
  fill and writes the result atomically.
- Device (`DevicePipeline`, the CUDA default): workers only decode; resize, forward, the full-size
  margin and the composite run as torch ops on the batch, one batch behind the forward pass, so
  that the host's part (connected components, encode, write) overlaps it. Outputs are the host
  pipeline's up to rounding at the edges.

An output is written under a temporary name and renamed (mask first: the image's presence means
both are done); only then is its journal row appended.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.io import encode_jpeg

from maskkit.contract.files import atomic_path, console, write_bytes
from maskkit.contract.journal import Journal, Records
from maskkit.contract.labels import logit
from maskkit.data.images import JPEG_QUALITY, image_magic, write_image
from maskkit.data.masks import composite, composite_batch, mask_with_area, soften
from maskkit.data.forking import serial_opencv
from maskkit.data.segment_loader import make_loader
from maskkit.engine.deeplab import error_line, person_margins, person_scores
from maskkit.engine.devices import cpu_count
from maskkit.contract.progress import progress_bar

JPEG_SUFFIXES = (".jpg", ".jpeg")


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


@dataclass(frozen=True)
class Settings:
    """How the pipeline runs (the outputs do not depend on it, up to the device pipeline's rounding)."""

    batch_size: int = 8
    size: int = 520  # working resolution: the shorter side
    workers: int | None = None  # decoding processes; default up to 4
    amp: bool = True
    show_progress: bool = True
    on_device: bool | None = None  # the device pipeline; default: on CUDA
    jpeg_on_device: bool | None = None  # nvjpeg for JPEG outputs there; default: on CUDA


@dataclass
class Summary:
    """What a run did (this run only; `skipped` were finished by an earlier run)."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    no_person: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the processing loop, model loading excluded


# --- writing -----------------------------------------------------------------------------------

def copy_file(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def finish(job: Job, image: np.ndarray, score: np.ndarray, style: Style) -> tuple[float, str]:
    """The host pipeline's writer: mask at full size, composite, write (mask first)."""
    height, width = image.shape[:2]
    full = cv2.resize(score, (width, height), interpolation=cv2.INTER_LINEAR)
    mask, area = mask_with_area(full, logit(style.threshold))
    if job.mask is not None:
        write_image(job.mask, mask)
    if area == 0:
        copy_file(job.source, job.target)  # nobody found: the image as it was
        return 0.0, "no_person"
    radius = round(style.feather * min(height, width))
    write_image(job.target, composite(image, soften(mask, radius), style.fill))
    return area, "done"


def write_result(job: Job, mask: np.ndarray, area: float, image: np.ndarray | None, encoded: bytes | None) -> tuple[float, str]:
    """The device pipeline's writer (mask first; the composite as pixels or JPEG bytes)."""
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


class Results:
    """Outputs in flight in the writer pool and what became of each image (journal, summary, progress)."""

    def __init__(self, jobs: Sequence[Job], records: Records, journal: Journal, summary: Summary,
                 bar, limit: int) -> None:
        self.jobs, self.records, self.journal, self.summary, self.bar = jobs, records, journal, summary, bar
        self.limit = limit  # results waiting to be written: bounds memory, keeps the pool busy
        self.pending: collections.deque = collections.deque()

    def submit(self, pool: concurrent.futures.Executor, index: int, write: Callable, *args: object) -> None:
        self.pending.append((index, pool.submit(write, *args)))

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


# --- the pipelines -----------------------------------------------------------------------------

class Pipeline:
    """The loop both pipelines share; a subclass says what to do with each group of same-size images."""

    def __init__(self, net: nn.Module, device: torch.device, jobs: Sequence[Job], wanted: set[int],
                 style: Style, settings: Settings, results: Results) -> None:
        self.net, self.device, self.jobs, self.wanted = net, device, jobs, wanted
        self.style, self.settings, self.results = style, settings, results

    def run(self, loader: DataLoader) -> None:
        try:
            for batch in loader:
                for position, index in enumerate(batch["index"]):
                    if index in self.wanted and not batch["readable"][position]:
                        self.results.record(index, 0.0, "failed")
                for positions, images in batch["groups"]:
                    self.group(batch, positions, images)
                self.results.throttle()
            self.flush()
            self.results.collect(block=True)
        except BaseException:
            self.results.cancel()
            raise

    def group(self, batch: dict, positions: list[int], images: torch.Tensor) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Hand over any work still held back at the end."""


class HostPipeline(Pipeline):
    """Forward pass on the main thread; mask, composite and write (OpenCV) in the writer pool."""

    def __init__(self, *args: object, writers: concurrent.futures.Executor) -> None:
        super().__init__(*args)
        self.writers = writers

    def group(self, batch: dict, positions: list[int], images: torch.Tensor) -> None:
        scores = person_scores(self.net, images, self.device, self.settings.amp)
        for position, score in zip(positions, scores):
            index = batch["index"][position]
            if index in self.wanted:
                self.results.submit(self.writers, index, finish, self.jobs[index], batch["image"][position],
                                    score, self.style)


class DevicePipeline(Pipeline):
    """Resize, forward, threshold and composite on the device, finishing each group one group behind.

    The main thread uploads a group and queues its forward pass; while the device runs it, the
    previous group's 0/1 maps are cleaned on the host (connected components, holes: OpenCV in the
    cleaner pool), uploaded, composited on the device (optionally JPEG-encoded there with nvjpeg)
    and handed to the writer pool.
    """

    def __init__(self, *args: object, cleaners: concurrent.futures.Executor,
                 writers: concurrent.futures.Executor, jpeg: bool) -> None:
        super().__init__(*args)
        self.cleaners, self.writers = cleaners, writers
        self.jpeg = jpeg  # switched off for the rest of the run when the device cannot encode
        self.margin_threshold = logit(self.style.threshold)
        self.previous: tuple | None = None  # the group queued on the device, not yet finished

    def group(self, batch: dict, positions: list[int], full: torch.Tensor) -> None:
        rows = [r for r, p in enumerate(positions) if batch["index"][p] in self.wanted]
        if not rows:
            return
        indices = [batch["index"][positions[r]] for r in rows]
        images = (full[rows] if len(rows) < len(positions) else full).to(self.device, non_blocking=True)
        binary, ready = self.threshold(images)
        self.flush()  # overlaps the forward pass just queued
        self.previous = (indices, images, binary, ready)

    def flush(self) -> None:
        if self.previous is not None:
            previous, self.previous = self.previous, None
            self.finish(*previous)

    def threshold(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Queue the 0/1 person maps' computation and copy to the host; the event marks their arrival."""
        with torch.inference_mode():
            binary = (person_margins(self.net, images, self.settings.size, self.settings.amp)
                      >= self.margin_threshold).to(torch.uint8)
            binary = binary.to("cpu", non_blocking=True)
        ready = None
        if self.device.type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        return binary, ready

    def finish(self, indices: list[int], images: torch.Tensor, binary: torch.Tensor, ready) -> None:
        if ready is not None:
            ready.synchronize()  # the non-blocking copy of the 0/1 maps has landed
        cleaned = list(self.cleaners.map(mask_with_area, binary.numpy()))
        persons = [k for k, (_, area) in enumerate(cleaned) if area > 0]
        pixels, encoded = self.composite(indices, images, cleaned, persons) if persons else ({}, {})
        for k, index in enumerate(indices):
            mask, area = cleaned[k]
            self.results.submit(self.writers, index, write_result, self.jobs[index], mask, area,
                                pixels.get(k), encoded.get(k))

    def composite(self, indices: list[int], images: torch.Tensor, cleaned: list[tuple[np.ndarray, float]],
                  persons: list[int]) -> tuple[dict[int, np.ndarray], dict[int, bytes]]:
        """The composites of the groups' images with a person: (pixels, JPEG bytes) by position in the group."""
        height, width = images.shape[1:3]
        masks = torch.from_numpy(np.stack([cleaned[k][0] for k in persons])).to(self.device)
        radius = round(self.style.feather * min(height, width))
        with torch.inference_mode():
            result = composite_batch(images[persons] if len(persons) < len(images) else images, masks,
                                     self.style.fill, radius)
        as_jpeg = [n for n, k in enumerate(persons)
                   if self.jpeg and self.jobs[indices[k]].target.suffix.lower() in JPEG_SUFFIXES]
        encoded = {persons[n]: data for n, data in zip(as_jpeg, self.encode_jpegs(result, as_jpeg))}
        pixels: dict[int, np.ndarray] = {}
        if len(encoded) < len(persons):
            host = result.cpu().numpy()
            pixels = {k: host[n] for n, k in enumerate(persons) if k not in encoded}
        return pixels, encoded

    def encode_jpegs(self, result: torch.Tensor, rows: list[int]) -> list[bytes]:
        """JPEG bytes of result[rows] encoded on the device; none when it cannot (the writers then encode)."""
        if not rows:
            return []
        chw = [result[n].permute(2, 0, 1).flip(0).contiguous() for n in rows]  # BGR -> RGB
        try:
            return [data.cpu().numpy().tobytes() for data in encode_jpeg(chw, quality=JPEG_QUALITY)]
        except RuntimeError as exc:  # no nvjpeg encoder here
            console.print(f"[yellow]warning:[/] JPEG encoding on {self.device} failed ({error_line(exc)}); encoding on the host")
            self.jpeg = False
            return []


def segment_images(net: nn.Module, device: torch.device, jobs: Sequence[Job], wanted: set[int], style: Style,
                   settings: Settings, records: Records, journal: Journal, summary: Summary) -> None:
    """Segment jobs[i] for every i in `wanted` with the host or the device pipeline (`settings.on_device`)."""
    cuda = device.type == "cuda"
    on_device = cuda if settings.on_device is None else settings.on_device
    jpeg = cuda if settings.jpeg_on_device is None else settings.jpeg_on_device
    workers = min(4, cpu_count()) if settings.workers is None else settings.workers
    cores = cpu_count()
    with contextlib.ExitStack() as stack:
        stack.enter_context(serial_opencv())
        bar = stack.enter_context(progress_bar("segment", len(wanted), show=None if settings.show_progress else False))
        results = Results(jobs, records, journal, summary, bar, limit=2 * settings.batch_size)
        args = (net, device, jobs, wanted, style, settings, results)
        if on_device:
            cleaners = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max(1, min(8, cores))))
            writers = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max(2, min(16, cores))))
            pipeline: Pipeline = DevicePipeline(*args, cleaners=cleaners, writers=writers, jpeg=jpeg)
        else:  # mask, composite, encode: ~7 ms an image
            writers = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max(2, min(8, cores - workers - 1))))
            pipeline = HostPipeline(*args, writers=writers)
        paths = [job.source for job in jobs]
        pipeline.run(make_loader(paths, wanted, settings.batch_size, settings.size, workers, cuda, resize=not on_device))
