"""`maskkit crop IN OUT`: cut every photo to its face, widened by --margin and made --aspect.

OUT mirrors IN (same relative paths and names, the CSVs copied), so split, train, predict, cam and
audit work on OUT as on IN, and the same cut reaches the test images. The face comes from the
detector (engine/faces.py); where it finds none, from the same person's other photos (a train person
folder: its `normal` photo first, else the other photo found with the highest score, scaled to this
image's size; eval images are anonymous, so the detector alone), else the competition's centre crop.
Every image's box and how it was found go to `OUT/crop_boxes.csv` (contract/boxes.py).

Resuming: a person's photos are decided together once all are detected; each crop is written under
a temporary name and renamed, then its row is appended to `OUT/.crop_journal.csv`. A re-run skips
every image whose crop exists and has a row (the boxes found on a person's finished photos still
lend theirs), so a killed and resumed run ends with the same files.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskkit.contract import mirror
from maskkit.contract.boxes import (BOXES, JOURNAL, BoxRow, Journal, Records, forget_records, is_crop_output,
                                    read_records, write_boxes)
from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.files import (LOCK_FILE, Inputs, WriteError, console, examples, folder_lock, remove_stale_temps,
                                    write_errors)
from maskkit.contract.mirror import Layout
from maskkit.contract.paths import as_text
from maskkit.contract.progress import progress_bar
from maskkit.data.faceboxes import ASPECTS, Box, centre_box, fit, rescale, widen
from maskkit.data.images import write_image
from maskkit.engine.devices import cpu_count, resolve_device
from maskkit.engine.faces import DEFAULT_DETECTOR, Detector, Face, detect_images, load_detector

MAX_MARGIN = 2.0  # --margin: each side moved out by up to twice the face's size
DONOR = "normal"  # the photo whose face lends its box first (no mask: the detectors' easiest case)


@dataclass(frozen=True)
class Job:
    """One image: where it comes from, where its crop goes, and its person (None: an image on its own)."""

    rel: str
    source: Path
    target: Path
    person: str | None


@dataclass
class Summary:
    """A run's counts: `hows` over every image of OUT, `done` and `skipped` of this run."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    hows: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_request(src: Path, out: Path, margin: float, aspect: str) -> Layout:
    """IN's layout, once IN, OUT, --margin and --aspect are known to be usable."""
    if not src.is_dir():
        raise MaskkitError(f"{src}: folder not found (pass a dataset root, DATA/train, DATA/eval or a folder of images)")
    if not 0 <= margin <= MAX_MARGIN:
        raise MaskkitError(f"--margin {margin}: use 0..{MAX_MARGIN} (each side moved out by this share of the face)")
    if aspect not in ASPECTS:
        raise MaskkitError(f"--aspect {aspect}: use {' or '.join(ASPECTS)}")
    layout = mirror.scan(src, skip=(BOXES,))
    if not layout.images:
        raise MaskkitError(f"{src}: no images found (expected .jpg, .jpeg or .png files)")
    Inputs(tuple(src / rel for rel in layout.images + layout.copies), (src,)).check_folder(out, "OUT")
    if out.is_dir() and not is_crop_output(out):
        others = sorted(e.name for e in out.iterdir() if e.name != LOCK_FILE)
        if others:
            raise MaskkitError(f"{out}: OUT holds files that crop did not write ({', '.join(others[:3])}); "
                               "crop would replace them, so pick a new or empty folder")
    return layout


def person_of(src: Path, rel: Path) -> str | None:
    """The person folder of a train image (`[train/]images/<person>/<file>` under a train.csv), else None."""
    parts = rel.parts
    if len(parts) < 3 or parts[-3] != "images":
        return None
    split = src.joinpath(*parts[:-3])
    return as_text(Path(*parts[:-1]).as_posix()) if (split / "train.csv").is_file() else None


def make_jobs(src: Path, out: Path, layout: Layout) -> list[Job]:
    return [Job(as_text(rel.as_posix()), src / rel, out / rel, person_of(src, rel)) for rel in layout.images]


def prepare_out(src: Path, out: Path, layout: Layout, overwrite: bool) -> Records:
    """Make OUT ready (holding its lock): the other files copied, a killed run's rows folded in; earlier rows."""
    out.mkdir(parents=True, exist_ok=True)
    interrupted = (out / JOURNAL).is_file()
    if interrupted:
        remove_stale_temps(out, recursive=True)
    (out / JOURNAL).touch()  # from now on OUT is recognisably a crop output, even if this run is killed
    mirror.copy_files(src, out, layout.copies, overwrite)
    if overwrite:
        forget_records(out)
    records = read_records(out)
    if interrupted and (out / JOURNAL).is_file():
        write_boxes(out, layout.images, records)
    return records


def unfinished(jobs: Sequence[Job], records: Records) -> list[int]:
    def finished(job: Job) -> bool:
        row = records.get(job.rel)
        return row is not None and row.how != "failed" and job.target.is_file()

    return [i for i, job in enumerate(jobs) if not finished(job)]


def face_row(job: Job, image: np.ndarray, face: Box, how: str, score: float, source: str, margin: float,
             ratio: float) -> BoxRow:
    height, width = image.shape[:2]
    face = tuple(round(v, 2) for v in face)  # as the boxes CSV keeps it, so a resumed run cuts the same
    x, y, w, h = fit(widen(face, margin), ratio, (width, height))
    return BoxRow(job.rel, how, round(score, 4), width, height, *face, x, y, w, h, source)


def decide(jobs: Sequence[Job], found: dict[int, tuple[np.ndarray | None, Face | None]], records: Records,
           margin: float, ratio: float) -> dict[int, BoxRow]:
    """The rows of one person's (or one lone image's) images detected in this run (`found`: index ->
    (image, face)); the person's photos finished earlier still lend their faces through `records`."""
    faces: dict[str, tuple[Box, float, int, int]] = {}  # rel -> (face, score, width, height) found by the detector
    for index, (image, face) in found.items():
        if image is not None and face is not None:
            faces[jobs[index].rel] = (face.box, face.score, image.shape[1], image.shape[0])
    person = jobs[next(iter(found))].person
    if person is not None:
        for job in jobs:
            row = records.get(job.rel)
            if job.person == person and job.rel not in faces and row is not None and row.how == "detector" and row.face:
                faces[job.rel] = (row.face, row.score, row.width, row.height)
    donors = sorted(faces, key=lambda rel: (Path(rel).stem != DONOR, -faces[rel][1], rel))
    rows = {}
    for index, (image, face) in found.items():
        job = jobs[index]
        if image is None:
            rows[index] = BoxRow(job.rel, "failed")
        elif face is not None:
            rows[index] = face_row(job, image, face.box, "detector", face.score, "", margin, ratio)
        elif person is not None and donors:
            box, score, width, height = faces[donors[0]]
            moved = rescale(box, (width, height), (image.shape[1], image.shape[0]))
            rows[index] = face_row(job, image, moved, "person", score, donors[0], margin, ratio)
        else:
            height, width = image.shape[:2]
            x, y, w, h = fit(centre_box((width, height)), ratio, (width, height))
            rows[index] = BoxRow(job.rel, "centre", width=width, height=height, x=x, y=y, w=w, h=h)
    return rows


def crop_images(jobs: Sequence[Job], wanted: list[int], detector: Detector, name: str, weights: Path | None,
                device, batch_size: int, workers: int, margin: float, ratio: float, records: Records,
                journal: Journal, summary: Summary, show_progress: bool) -> None:
    """Detect the `wanted` images, decide each person's boxes once all its photos are in, write the crops."""
    left: dict[object, int] = defaultdict(int)
    for index in wanted:
        left[jobs[index].person or jobs[index].rel] += 1
    pending: dict[object, dict[int, tuple]] = defaultdict(dict)
    paths = [job.source for job in jobs]
    with progress_bar("crop", len(wanted), show=show_progress) as bar:
        for index, image, face in detect_images(paths, wanted, name, weights, device, batch_size, workers, detector):
            key = jobs[index].person or jobs[index].rel
            pending[key][index] = (image, face)
            left[key] -= 1
            if left[key]:
                continue
            found = pending.pop(key)
            for position, row in decide(jobs, found, records, margin, ratio).items():
                if row.how == "failed":
                    summary.failed.append(row.path)
                else:
                    image = found[position][0]
                    write_image(jobs[position].target, image[row.y:row.y + row.h, row.x:row.x + row.w])
                    summary.done += 1
                records[row.path] = row
                journal.add(row)
            bar.advance(len(found))


def print_summary(out: Path, summary: Summary) -> None:
    hows = summary.hows
    console.print(
        f"crop: {summary.total} images: {hows.get('detector', 0)} face found, {hows.get('person', 0)} from the "
        f"person's other photos, {hows.get('centre', 0)} centre crop (no face), {len(summary.failed)} failed; "
        f"{summary.done} cut now, {summary.skipped} skipped (finished earlier) -> {out}"
    )
    if hows.get("centre"):
        console.print(f"  centre crops: how == centre in {out / BOXES}")


def run(
    src: str | Path,
    out_dir: str | Path,
    *,
    detector: str | Detector = DEFAULT_DETECTOR,
    weights: str | Path | None = None,
    margin: float = 0.4,
    aspect: str = "square",
    batch_size: int = 16,
    device: str = "auto",
    workers: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Summary:
    """Crop IN into OUT (see the module docstring); raises RunFailure when images could not be read.

    `detector`: a name of engine/faces.DETECTORS, or a detector object (tests inject a stand-in).
    `workers`: detecting processes (default: up to 4, one per core; 0: this process). The detectors run
    on the CPU, in parallel over `workers`; `device` is checked, and used by yunet where OpenCV is built with
    CUDA (opencv-python-headless is not).
    """
    src, out_dir = Path(src), Path(out_dir)
    weights = Path(weights) if weights is not None else None
    layout = check_request(src, out_dir, margin, aspect)
    torch_device = resolve_device(device)
    name = detector if isinstance(detector, str) else detector.name
    net = load_detector(name, weights, torch_device) if isinstance(detector, str) else detector
    workers = min(4, cpu_count()) if workers is None else workers
    with folder_lock(out_dir, "crop"):  # one run per OUT: two would delete each other's temporary files
        records = prepare_out(src, out_dir, layout, overwrite)
        jobs = make_jobs(src, out_dir, layout)
        wanted = list(range(len(jobs))) if overwrite else unfinished(jobs, records)
        summary = Summary(total=len(jobs), skipped=len(jobs) - len(wanted))
        start = time.perf_counter()
        if wanted:
            try:
                with write_errors(out_dir / JOURNAL), Journal(out_dir) as journal:
                    crop_images(jobs, wanted, net, name, weights, torch_device, batch_size, workers, margin,
                                ASPECTS[aspect], records, journal, summary, show_progress)
            except WriteError as exc:
                raise type(exc)(f"{exc}; {summary.done} of {len(wanted)} images were finished before it: "
                                "re-run to resume", exc.exit_code) from None
        summary.seconds = time.perf_counter() - start
        write_boxes(out_dir, layout.images, records)
        for job in jobs:
            row = records.get(job.rel)
            if row is not None:
                summary.hows[row.how] = summary.hows.get(row.how, 0) + 1
    print_summary(out_dir, summary)
    if summary.failed:
        raise RunFailure(f"{src}: {len(summary.failed)} image(s) could not be read ({examples(summary.failed)}); "
                         f"see {out_dir / BOXES}, fix or remove them and re-run to finish")
    return summary
