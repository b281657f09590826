"""`maskkit segment IN OUT`: replace image backgrounds using torchvision DeepLabV3's person class.

OUT mirrors IN (same relative paths and names, other files copied), so every command works on OUT
as on IN. This module holds the command: its checks, the scan of IN and the resume logic; the
model is engine/deeplab.py, the masks and composites data/masks.py, the two pipelines (host for
the CPU, device for CUDA) engine/segmentation.py, and the report and journal contract/journal.py.
Masks (--masks) are named after the image with `.png` for its extension, so two images differing
only in extension are refused up front.

Resuming: an output is written under a temporary name and renamed, then its row is appended to a
hidden journal (`OUT/.segment_journal.csv`); a re-run skips every image whose output exists and
has a row, and recomputes the rest in the same fixed batches as an uninterrupted run, so a killed
and resumed run ends with the same files. `OUT/segment_report.csv` (path, person_area, status) is
written atomically at the end from the previous report, the journal and this run's rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.files import (LOCK_FILE, Inputs, WriteError, console, examples, folder_lock, remove_stale_temps,
                                    write_errors)
from maskkit.contract.journal import (FINISHED, JOURNAL, REPORT, Journal, Records, forget_records,
                                      is_segment_output, read_records, write_report)
from maskkit.contract import mirror
from maskkit.contract.mirror import Layout
from maskkit.contract.paths import as_text
from maskkit.data.masks import mask_path
from maskkit.engine.deeplab import load_deeplab, prepare
from maskkit.engine.devices import resolve_device
from maskkit.engine.segmentation import Job, Settings, Style, Summary, segment_images


MIN_SHORT_SIDE, MAX_SHORT_SIDE = 16, 4096  # --short-side: 4096 is 8x the model's training resolution


def scan(root: Path) -> Layout:
    """IN's files (contract/mirror.scan), segment's own report left out."""
    return mirror.scan(root, skip=(REPORT,))


# --- checks before anything is written ---------------------------------------------------------

def check_request(src: Path, out: Path, masks: Path | None, threshold: float) -> Layout:
    """IN's layout, once IN, OUT, --masks and --threshold are known to be usable."""
    if not src.is_dir():
        raise MaskkitError(f"{src}: folder not found (pass a dataset root, DATA/train, DATA/eval or a folder of images)")
    if not 0 < threshold < 1:  # the options allow 0 and 1, where every or no pixel would be person
        raise MaskkitError(f"--threshold {threshold}: expected a probability between 0 and 1")
    layout = scan(src)
    if not layout.images:
        raise MaskkitError(f"{src}: no images found (expected .jpg, .jpeg or .png files)")
    # IN's files count as inputs too, so an OUT above IN (holding them) is refused.
    inputs = Inputs(tuple(src / rel for rel in layout.images + layout.copies), (src,))
    inputs.check_folder(out, "OUT")
    if masks is not None:
        inputs.check_folder(masks, "--masks")
        if masks.resolve() == out.resolve():
            raise MaskkitError(f"{masks}: --masks is OUT itself; pick a folder of its own, e.g. {out / 'masks'}")
        check_mask_names(src, layout.images, masks)
    check_out_is_ours(out)
    return layout


def check_out_is_ours(out: Path) -> None:
    """A non-empty OUT must be an earlier segment output (its report or journal is there):
    copying IN's files into another dataset would replace that dataset's own files."""
    if not out.is_dir() or is_segment_output(out):
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


# --- OUT before and after the pipeline ---------------------------------------------------------

def copy_others(src: Path, out: Path, copies: Sequence[Path], masks: Path | None, overwrite: bool) -> int:
    """Copy IN's non-image files (CSVs...) to OUT unless an identical copy is there; returns how many."""
    return mirror.copy_files(src, out, copies, overwrite, skip_under=masks.resolve() if masks is not None else None)


def prepare_out(src: Path, out: Path, layout: Layout, masks: Path | None, overwrite: bool) -> Records:
    """Make OUT ready (called holding its lock): the other files copied, a killed run's work folded in.

    Returns the records of earlier runs (none with `overwrite`).
    """
    out.mkdir(parents=True, exist_ok=True)
    interrupted = (out / JOURNAL).is_file()
    if interrupted:  # an interrupted run: its temporary files are garbage
        for folder in (out, masks):
            if folder is not None:
                remove_stale_temps(folder, recursive=True)
    (out / JOURNAL).touch()  # from now on OUT is recognisably a segment output, even if this run is killed
    copy_others(src, out, layout.copies, masks, overwrite)
    if overwrite:
        forget_records(out)
    records = read_records(out)
    if interrupted and (out / JOURNAL).is_file():
        write_report(out, layout.images, records)  # fold the journal in: a new one starts with this run
    return records


def make_jobs(src: Path, out: Path, layout: Layout, masks: Path | None) -> list[Job]:
    return [Job(as_text(rel.as_posix()), src / rel, out / rel, mask_path(masks, rel) if masks else None)
            for rel in layout.images]


def unfinished(jobs: Sequence[Job], records: Records) -> set[int]:
    """The jobs no earlier run finished: no finished record, or an output missing."""
    def finished(job: Job) -> bool:
        record = records.get(job.rel)
        return (record is not None and record[1] in FINISHED and job.target.is_file()
                and (job.mask is None or job.mask.is_file()))

    return {i for i, job in enumerate(jobs) if not finished(job)}


def print_summary(out: Path, summary: Summary) -> None:
    console.print(
        f"segment: {summary.total} images: {summary.done} done, {summary.skipped} skipped (finished earlier), "
        f"{len(summary.no_person)} no person found (copied unchanged), {len(summary.failed)} failed -> {out}"
    )
    if summary.no_person:
        console.print(f"  no person found in: {examples(sorted(summary.no_person))} (all in {out / REPORT})")


def run(
    src: str | Path,
    out_dir: str | Path,
    *,
    model: str = "resnet50",
    weights: str | Path | None = None,
    fill: str = "black",
    masks: str | Path | None = None,
    batch_size: int = 8,
    device: str = "auto",
    threshold: float = 0.5,
    short_side: int = 520,
    workers: int | None = None,
    overwrite: bool = False,
    amp: bool = True,
    show_progress: bool = True,
    on_device: bool | None = None,
    jpeg_on_device: bool | None = None,
) -> Summary:
    """Segment IN into OUT (see the module docstring); raises RunFailure when images failed.

    `short_side` is --short-side. on_device: resize and composite as torch ops on the device (the device
    pipeline); default: on CUDA. jpeg_on_device: encode JPEG outputs there too (nvjpeg); default: on
    CUDA, where it was the fastest pipeline measured (benchmarks/README.md, GPU section); a failure
    falls back to the host.
    """
    src, out_dir = Path(src), Path(out_dir)
    masks = Path(masks) if masks is not None else None
    if not MIN_SHORT_SIDE <= short_side <= MAX_SHORT_SIDE:
        raise MaskkitError(f"--short-side {short_side}: use {MIN_SHORT_SIDE}..{MAX_SHORT_SIDE} pixels (DeepLabV3 was "
                           "trained at 520)")
    layout = check_request(src, out_dir, masks, threshold)
    torch_device = resolve_device(device)
    settings = Settings(batch_size, short_side, workers, amp, show_progress, on_device, jpeg_on_device)
    with folder_lock(out_dir, "segment"):  # one run per OUT: two would delete each other's temporary files
        net = prepare(load_deeplab(model, weights), torch_device)
        records = prepare_out(src, out_dir, layout, masks, overwrite)
        jobs = make_jobs(src, out_dir, layout, masks)
        wanted = set(range(len(jobs))) if overwrite else unfinished(jobs, records)
        summary = Summary(total=len(jobs), skipped=len(jobs) - len(wanted))
        start = time.perf_counter()
        if wanted:
            try:
                with write_errors(out_dir / JOURNAL), Journal(out_dir) as journal:
                    segment_images(net, torch_device, jobs, wanted, Style(fill=fill, threshold=threshold), settings,
                                   records, journal, summary)
            except WriteError as exc:
                raise type(exc)(f"{exc}; {summary.done + len(summary.no_person)} of {len(wanted)} images were "
                                "finished before it: re-run to resume", exc.exit_code) from None
        summary.seconds = time.perf_counter() - start
        write_report(out_dir, layout.images, records)
    print_summary(out_dir, summary)
    if summary.failed:
        raise RunFailure(
            f"{src}: {len(summary.failed)} image(s) could not be read or written ({examples(summary.failed)}); "
            f"see {out_dir / REPORT}, fix or remove them and re-run to finish"
        )
    return summary
