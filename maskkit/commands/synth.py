"""`maskkit synth`: a procedurally drawn dataset in the exact competition layout (docs/formats.md).

Faces are drawn with OpenCV (maskkit/data/drawing.py) so that a small CNN can learn the three tasks:
the mask state is plain (mask over nose and mouth / mask below the nose or under the chin / no mask),
gender is clear (hair length, face shape, lips, eyebrows), age is the hardest (wrinkles from the
mid-twenties, grey hair from the mid-thirties, white at 60; the 50s vs 60 boundary is subtle). Every
person and every image has its own numpy Generator seeded from (seed, split, person, image), so files
do not depend on the drawing order and the same seed gives byte-identical files.

Options that model the competition's traps: `--noise` injects label errors (listed in
`train/injected_errors.csv`, fixes-CSV format, mask targets are `images/<folder>/<file>` relative
to DATA/train), `--shortcut` ties the background to the person's group in train only, `--with-masks`
writes the true person mask of each image under `OUT/masks/` (mirroring OUT's tree).

Over 400 lines: the work folder's life (drawn beside OUT, renamed in, removed on Ctrl-C, SIGTERM or,
for a killed run's, by the next synth) belongs with the drawing it protects.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, process_alive, write_errors
from maskkit.contract.labels import GENDERS, IMAGE_STEMS, label_of
from maskkit.contract.progress import progress_bar
from maskkit.data.drawing import MASK_COLOURS, STEMS, Person, background, draw_person
from maskkit.data.images import write_image
from maskkit.options import SEED, Size

JPEG_QUALITY = 92
TRAIN, EVAL = 0, 1  # split codes in the seeds
FEMALE_SHARE = 0.6
AGE_GROUP_SHARES = (0.45, 0.40, 0.15)  # < 30, 30..59, 60 (the real data's oldest are all exactly 60)
OLD_AGE = 60
MIN_DRAW_WIDTH = 256  # tiny outputs are drawn larger and shrunk (anti-aliasing)
DATASET_ENTRIES = {"train", "eval", "masks"}
# Lists every file synth wrote (size and relative path): --overwrite replaces only such a folder.
MARKER = ".maskkit-synth"
MAX_SIDE = 4096  # pixels per image side; 10x the real data, and still ~50 MB of drawing layers per image
MAX_PERSONS = 100_000  # per split: 700,000 images, 100x the real data's persons (hours of drawing)
TEMP_NAME = re.compile(r"^\..+\.synth-(tmp|old)(?P<pid>\d+)$")  # a synth's work folders beside OUT


# --- people -------------------------------------------------------------------------------------


def person_rng(seed: int, split: int, index: int, image: int = 0) -> np.random.Generator:
    """The Generator of one person (image 0) or of one of its images (1..7): independent of order."""
    return np.random.default_rng([seed, split, index, image])


def group_plan(n: int, seed: int, split: int) -> list[tuple[int, int]]:
    """(gender, age group) per person: shares as in real data, rounded so that small sets cover all groups."""
    shares = np.array([[(1 - FEMALE_SHARE) * a, FEMALE_SHARE * a] for a in AGE_GROUP_SHARES]).T.ravel()
    groups = [(g, a) for g in range(2) for a in range(3)]
    exact = shares * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    plan = [groups[i] for i, c in enumerate(counts) for _ in range(c)]
    order = np.random.default_rng([seed, split, 1_000_003]).permutation(n)
    return [plan[i] for i in order]


def make_person(seed: int, split: int, index: int, pid: str, gender: int, group: int,
                shortcut: float) -> Person:
    """Draw one person's looks from its own Generator."""
    rng = person_rng(seed, split, index)
    age = int(rng.integers(18, 30)) if group == 0 else int(rng.integers(30, 60)) if group == 1 else OLD_AGE
    female = gender == 1
    tone = float(np.clip(rng.normal(0, 1), -2.2, 2.2))
    base = np.array([224, 189, 160]) * (0.86 + 0.06 * tone + (0.03 if female else 0.0))
    skin = tuple(int(v) for v in np.clip(base + rng.normal(0, 4, 3), 60, 250))

    grey = float(np.clip((age - 33) / 27 + rng.normal(0, 0.1), 0, 1))
    dark = np.array([35, 28, 24]) if rng.random() < 0.75 else np.array([85, 55, 35])
    hair = np.clip(dark * (1 - grey) + np.array([205, 205, 200]) * grey + rng.normal(0, 6, 3), 0, 255)
    wrinkles = float(np.clip((age - 24) / 36 + rng.normal(0, 0.06), 0, 1))

    if female:
        style = "long" if rng.random() < 0.7 else "bob"
        hair_len = rng.uniform(1.6, 2.4) if style == "long" else rng.uniform(0.85, 1.15)
        hairline = rng.uniform(-0.55, -0.42)
        lips = tuple(int(v) for v in np.array([196, 62, 88]) + rng.normal(0, 12, 3))
    else:
        style = "receding" if age >= 50 and rng.random() < 0.5 else "short"
        hair_len = 0.0
        hairline = rng.uniform(-0.68, -0.58) if style == "short" else rng.uniform(-0.9, -0.8)
        lips = tuple(int(v) for v in np.array(skin) * np.array([0.78, 0.58, 0.55]))

    # the shortcut trap: in train, the background family (hue, texture, tone) follows the group
    # (both draws are always made, so that --shortcut changes nothing but the background)
    family = 3 * gender + group
    free = (int(rng.integers(0, 180)), int(rng.integers(0, 4)), int(rng.integers(70, 170)), int(rng.integers(120, 225)))
    tied = (int(family * 30 + rng.integers(-6, 7)) % 180, family % 4, int(rng.integers(120, 160)), int(rng.integers(165, 205)))
    bg_hue, bg_texture, bg_sat, bg_val = tied if split == TRAIN and rng.random() < shortcut else free

    colours = rng.permutation(len(MASK_COLOURS))
    patterns = rng.permutation(5)
    mask_styles = tuple((int(colours[i]), int(patterns[i % 5])) for i in range(6))
    return Person(
        pid=pid, gender=gender, age=age, split=split, index=index,
        face_w=rng.uniform(64, 72) if female else rng.uniform(78, 88),
        face_h=rng.uniform(90, 98) if female else rng.uniform(96, 106),
        chin=rng.uniform(0.55, 0.8) if female else rng.uniform(0.0, 0.25),
        skin=skin, hair=tuple(int(v) for v in hair), hair_style=style, hair_len=float(hair_len),
        hairline=float(hairline), wrinkles=wrinkles,
        beard=float(rng.uniform(0.3, 0.7)) if not female and rng.random() < 0.3 else 0.0,
        glasses=bool(rng.random() < 0.15), earrings=bool(female and rng.random() < 0.35),
        lips=lips, clothes=tuple(int(v) for v in rng.integers(20, 235, 3)), collar=int(rng.integers(0, 3)),
        bg_hue=bg_hue, bg_texture=bg_texture, bg_sat=bg_sat, bg_val=bg_val,
        bg_phase=float(rng.uniform(0, 2 * np.pi)), mask_styles=mask_styles,
    )


def render(p: Person, stem: str, seed: int, size: Size) -> tuple[np.ndarray, np.ndarray]:
    """One image (BGR, ready for imwrite) and its binary person mask at `size`."""
    height, width = size
    rng = person_rng(seed, p.split, p.index, 1 + STEMS.index(stem))
    k = max(1, int(np.ceil(MIN_DRAW_WIDTH / width)))
    dw, dh = width * k, height * k
    img, alpha = draw_person(p, stem, rng, dw, dh, pixel=k)

    # pose: small rotation, scale and shift of the whole person around the face
    centre = (dw / 2, dh * 0.45)
    matrix = cv2.getRotationMatrix2D(centre, rng.normal(0, 5), rng.uniform(0.9, 1.1))
    matrix[:, 2] += rng.normal(0, 0.03, 2) * (dw, dh)
    img = cv2.warpAffine(img, matrix, (dw, dh), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = cv2.warpAffine(alpha, matrix, (dw, dh), flags=cv2.INTER_LINEAR, borderValue=0)

    weight = alpha.astype(np.float32) * (1 / 255)
    out = cv2.blendLinear(img, background(p, rng, dw, dh), weight, 1 - weight)
    # colour jitter (contrast, brightness, white balance) as one lookup table per channel
    levels = np.arange(256, dtype=np.float32)[:, None]
    lut = ((levels - 128) * rng.uniform(0.85, 1.15) + 128 + rng.uniform(-18, 18)) * rng.uniform(0.93, 1.07, 3)
    out = cv2.LUT(out, np.clip(lut, 0, 255).astype(np.uint8).reshape(256, 1, 3))
    if k > 1:
        out = cv2.resize(out, (width, height), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_AREA)
    mask = np.where(alpha >= 128, 255, 0).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR), mask


# --- writing ------------------------------------------------------------------------------------


def _write_jpeg(path: Path, bgr: np.ndarray) -> None:
    write_image(path, bgr, quality=JPEG_QUALITY)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, mask)


def _folder_name(pid: str, gender: int, age: int) -> str:
    return f"{pid}_{GENDERS[gender]}_Asian_{age}"


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty OUT (or, with overwrite, one that is not a dataset this command wrote)."""
    if out.exists() and not out.is_dir():
        raise MaskkitError(f"{out}: exists and is not a folder (choose another OUT)")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise MaskkitError(f"{out}: folder is not empty (choose another OUT or pass --overwrite to replace it)")
    problem = _not_written_by_synth(out)
    if problem:
        raise MaskkitError(f"{out}: {problem}; --overwrite only replaces a dataset that maskkit synth wrote "
                           "(and nothing added to it since), so choose another OUT")


def _written_files(root: Path) -> dict[str, int]:
    """Relative path -> size of every file under `root` (the marker left out)."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel != MARKER:
                found[rel] = path.stat().st_size
    return found


def _write_marker(root: Path) -> None:
    listing = "".join(f"{size}\t{rel}\n" for rel, size in sorted(_written_files(root).items()))
    (root / MARKER).write_text("maskkit synth: files written (size, path); --overwrite replaces only these\n" + listing)


def _not_written_by_synth(out: Path) -> str | None:
    """Why OUT may not be replaced (a file synth did not write, or changed since), or None."""
    marker = out / MARKER
    if not marker.is_file():
        return f"has no {MARKER} file, so it was not written by maskkit synth"
    written = {}
    for line in marker.read_text(errors="replace").splitlines()[1:]:
        size, _, rel = line.partition("\t")
        if size.isdigit() and rel:
            written[rel] = int(size)
    for rel, size in sorted(_written_files(out).items()):
        if rel not in written:
            return f"holds {rel}, which maskkit synth did not write"
        if written[rel] != size:
            return f"{rel} changed since maskkit synth wrote it"
    return None


def _validate(persons: int, eval_persons: int, size: Size, seed: int, noise: float, shortcut: float) -> None:
    if persons < 1 or eval_persons < 0:
        raise MaskkitError(f"--persons {persons} / --eval-persons {eval_persons}: need at least 1 train person and 0 or more eval persons")
    if max(persons, eval_persons) > MAX_PERSONS:
        raise MaskkitError(f"--persons {persons} / --eval-persons {eval_persons}: at most {MAX_PERSONS} each "
                           "(the real data has 2,700 train persons)")
    if min(size) < 16:
        raise MaskkitError(f"--size {size.text}: too small to draw a face (use at least 16x16, e.g. 64x80)")
    if max(size) > MAX_SIDE:
        raise MaskkitError(f"--size {size.text}: too large (at most {MAX_SIDE} pixels a side; "
                           "the real data is 384x512)")
    if seed < 0:
        raise MaskkitError(f"--seed {seed}: must be 0 or more")
    if not 0 <= noise <= 0.5:
        raise MaskkitError(f"--noise {noise}: must be between 0 and 0.5 (fraction of persons per kind of error)")
    if not 0 <= shortcut <= 1:
        raise MaskkitError(f"--shortcut {shortcut}: must be between 0 and 1")


def run(out_dir: str | Path, persons: int = 60, eval_persons: int = 20, size: Size = Size(height=512, width=384),
        seed: int = SEED, noise: float = 0.0, shortcut: float = 0.0, masks: bool = False,
        overwrite: bool = False, show_progress: bool | None = None) -> dict:
    """Draw a dataset into OUT_DIR (competition layout); returns a summary dict.

    Written into a temporary folder beside OUT_DIR and renamed at the end, so an interrupted run leaves
    nothing half-done. `size` is an options.Size (a plain tuple is refused: its order would be a guess);
    `masks` is --with-masks.
    """
    out = Path(out_dir)
    if not isinstance(size, Size):
        raise TypeError(f"synth.run: size {size!r}: give an options.Size(height=..., width=...)")
    _validate(persons, eval_persons, size, seed, noise, shortcut)
    _check_out(out, overwrite)
    started = time.perf_counter()
    where = out.resolve()  # also gives OUT = "." a name for the temporary folder beside it
    with write_errors(where):
        where.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_work_folders(where.parent)
    tmp = where.with_name(f".{where.name}.synth-tmp{os.getpid()}")
    try:
        with write_errors(where):
            if tmp.exists():
                shutil.rmtree(tmp)
            summary = _draw_dataset(tmp, persons, eval_persons, size, seed, noise, shortcut, masks, show_progress)
            _write_marker(tmp)
            _replace(tmp, where)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    summary["seconds"] = time.perf_counter() - started
    console.print(
        f"maskkit synth: wrote {out}: {persons} train persons ({7 * persons} images), {eval_persons} eval persons "
        f"({7 * eval_persons} images) at {size.text}, seed {seed}, {summary['injected']} injected errors"
        f"{', masks' if masks else ''} in {summary['seconds']:.1f}s"
    )
    return summary


def remove_dead_work_folders(parent: Path) -> None:
    """Remove the work folders (`.OUT.synth-tmpPID`, `.OUT.synth-oldPID`) of synth runs whose process
    is gone (kill -9 leaves them); a live process's are its own."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        match = TEMP_NAME.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not process_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished dataset into OUT, replacing an old dataset there (OUT itself is kept)."""
    out.mkdir(exist_ok=True)
    old = out.with_name(f".{out.name}.synth-old{os.getpid()}")
    entries = [e for e in out.iterdir() if e.name in DATASET_ENTRIES or e.name == MARKER]
    if entries:
        old.mkdir()
        for entry in entries:
            os.replace(entry, old / entry.name)
    for entry in tmp.iterdir():
        os.replace(entry, out / entry.name)
    tmp.rmdir()
    if old.exists():
        shutil.rmtree(old)


def _draw_dataset(root: Path, persons: int, eval_persons: int, size: Size, seed: int, noise: float,
                  shortcut: float, masks: bool, show_progress: bool | None) -> dict:
    """Draw every image (and mask) under root, write the CSVs, and return the summary."""
    train_people = _people(persons, seed, TRAIN, shortcut, first_number=1)
    eval_people = _people(eval_persons, seed, EVAL, shortcut, first_number=persons + 1)
    flipped, swapped = _noisy_persons(persons, noise, seed)
    (root / "train" / "images").mkdir(parents=True)
    (root / "eval" / "images").mkdir(parents=True)
    show = show_progress if show_progress is not None else (persons + eval_persons) * 7 * size[0] * size[1] > 5_000_000
    rows, injected, truth = [], [], []
    with progress_bar("synth", persons + eval_persons, show=None if show else False) as bar:
        for i, p in enumerate(train_people):
            row, errors = _write_train_person(root, p, seed, size, masks, flip=i in flipped, swap=i in swapped)
            rows.append(row)
            injected.extend(errors)
            bar.advance()
        for p in eval_people:
            truth.extend(_write_eval_person(root, p, seed, size, masks))
            bar.advance()
    _write_tables(root, rows, injected, truth, seed)
    return {"persons": persons, "eval_persons": eval_persons, "images": 7 * (persons + eval_persons),
            "injected": len(injected), "flipped": len(flipped), "swapped": len(swapped)}


def _people(n: int, seed: int, split: int, shortcut: float, first_number: int) -> list[Person]:
    """The persons of one split, numbered (6-digit ids) from first_number."""
    return [make_person(seed, split, i, f"{first_number + i:06d}", g, a, shortcut)
            for i, (g, a) in enumerate(group_plan(n, seed, split))]


def _noisy_persons(persons: int, noise: float, seed: int) -> tuple[set[int], set[int]]:
    """Indices of the train persons whose gender is flipped, and of those whose incorrect_mask and
    normal images are swapped (each a `noise` share, never the same person)."""
    order = np.random.default_rng([seed, TRAIN, 2_000_003]).permutation(persons)
    k = int(round(noise * persons))
    return set(order[:k].tolist()), set(order[k: 2 * k].tolist())


def _write_train_person(root: Path, p: Person, seed: int, size: Size, masks: bool,
                        flip: bool, swap: bool) -> tuple[dict, list[dict]]:
    """One train person's seven images (and masks): its train.csv row and the errors injected into it."""
    gender = 1 - p.gender if flip else p.gender
    folder = _folder_name(p.pid, gender, p.age)
    row = {"id": p.pid, "gender": GENDERS[gender], "race": "Asian", "age": p.age, "path": folder}
    injected = []
    if flip:
        injected.append({"target": p.pid, "column": "gender", "old": GENDERS[gender],
                         "new": GENDERS[p.gender], "reason": "injected: gender flipped in train.csv and folder name"})
    files = {stem: stem for stem in STEMS}
    if swap:
        files["incorrect_mask"], files["normal"] = "normal", "incorrect_mask"
        for stem in ("incorrect_mask", "normal"):
            injected.append({"target": f"images/{folder}/{files[stem]}.jpg", "column": "mask",
                             "old": IMAGE_STEMS[files[stem]], "new": IMAGE_STEMS[stem],
                             "reason": "injected: incorrect_mask and normal swapped"})
    (root / "train" / "images" / folder).mkdir()
    for stem in STEMS:
        bgr, person_mask = render(p, stem, seed, size)
        _write_jpeg(root / "train" / "images" / folder / f"{files[stem]}.jpg", bgr)
        if masks:
            _write_mask(root / "masks" / "train" / "images" / folder / f"{files[stem]}.png", person_mask)
    return row, injected


def _write_eval_person(root: Path, p: Person, seed: int, size: Size, masks: bool) -> list[dict]:
    """One eval person's seven images (hex names) and masks; their truth.csv rows."""
    truth = []
    for stem in STEMS:
        image_id = hashlib.sha1(f"maskkit-synth:{seed}:{p.pid}:{stem}".encode()).hexdigest() + ".jpg"
        bgr, person_mask = render(p, stem, seed, size)
        _write_jpeg(root / "eval" / "images" / image_id, bgr)
        if masks:
            _write_mask(root / "masks" / "eval" / "images" / f"{image_id[:-4]}.png", person_mask)
        mask = IMAGE_STEMS[stem]
        truth.append({"ImageID": image_id, "ans": label_of(mask, GENDERS[p.gender], p.age), "mask": mask,
                      "gender": GENDERS[p.gender], "age": p.age, "person": p.pid})
    return truth


def _write_tables(root: Path, rows: list[dict], injected: list[dict], truth: list[dict], seed: int) -> None:
    """train.csv, injected_errors.csv, and eval's info.csv and truth.csv (rows shuffled by seed)."""
    _to_csv(pd.DataFrame(rows, columns=["id", "gender", "race", "age", "path"]), root / "train" / "train.csv")
    _to_csv(pd.DataFrame(injected, columns=["target", "column", "old", "new", "reason"]),
            root / "train" / "injected_errors.csv")
    truth_df = pd.DataFrame(truth, columns=["ImageID", "ans", "mask", "gender", "age", "person"])
    if len(truth_df):
        truth_df = truth_df.iloc[np.random.default_rng([seed, EVAL, 3_000_017]).permutation(len(truth_df))]
    _to_csv(truth_df[["ImageID"]].assign(ans=0), root / "eval" / "info.csv")
    _to_csv(truth_df, root / "eval" / "truth.csv")


def _to_csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, lineterminator="\n")
