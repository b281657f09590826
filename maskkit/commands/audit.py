"""`maskkit audit`: suspects in a training set, ranked, instead of a hunt by eye.

Structural checks need no model: train.csv against the folders, person folders with missing, extra
or doubled images, zero-byte / truncated / undecodable files, exact duplicates (file hash) and
near-duplicates across persons (a 64-bit dHash computed with OpenCV, confirmed by the correlation
of small grayscale thumbnails; cv2.img_hash is not part of opencv-python-headless).

Label checks read out-of-fold predictions (`val_preds.csv` of DESIGN.md), from one or more models:
files that predict the same images form separate sets (see read_oof). Each set's probabilities are
calibrated first (temperature scaling per task, fitted on the set itself: short runs are
overconfident). A person's gender and age group are judged on the person's photos together, as one
piece of evidence (mean calibrated log-probabilities with a person-level temperature, then weighed
against the label with cleanlab's estimated noise matrix), so one odd image never overrules six and
seven photos of one face are not seven votes; a mask swap on the person's likeliest pair of images
with different masks. Every label suspect carries p_wrong, the probability that its label is wrong
(sets combined by their mean log-odds), and `models`, how many sets on their own agree; suspects and
the contact sheet are ordered by it. cleanlab (`find_label_issues`, `get_label_quality_scores`)
flags image-level issues on the 18 classes and per task: its counts go into the evidence, and an
image it flags whose mask no swap explains is listed on its own ("this image alone"), for review
only. `--fixes-out` writes the person-level gender and mask-swap suggestions, the ones whose hit
rate benchmarks/audit.py (drawn) and benchmarks/realfaces_audit.py (real faces) measure.

Why over 400 lines: the structural checks and the label checks are two halves of one report;
the scoring is kept together so its cut-offs stay next to the code they tune.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath

import cv2
import numpy as np
import pandas as pd
from rich.table import Table

from maskkit.contract.layout import load_train, parse_folder_name, train_root
from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console, examples, files_in, is_hidden, read_csv, write_csv
from maskkit.contract.fixes import FIXES_COLUMNS
from maskkit.contract.manifest import read_manifest
from maskkit.contract.predictions import PROB_COLUMNS, read_predictions
from maskkit.contract.runfolder import VAL_PREDS, read_config
from maskkit.data.images import contact_sheet, image_magic, write_image
from maskkit.engine.progress import progress_bar
from maskkit.options import ALL_FOLDS
from maskkit.contract.labels import AGE_GROUPS, GENDERS, IMAGE_STEMS, MASKS, NUM_CLASSES, OLD_FROM, YOUNG_BELOW, decode

SUSPECT_COLUMNS = ["target", "column", "given", "suggested", "score", "p_wrong", "models", "reason", "evidence"]
FIXES_OUT_COLUMNS = [*FIXES_COLUMNS, "score"]  # the fixes CSV plus audit's score (P(label wrong))
FIX = {"fix": True}  # marks the label suspects that --fixes-out writes

# Cut-offs on P(label wrong), chosen with benchmarks/realfaces_audit.py (real faces) and checked with
# benchmarks/audit.py (drawn faces); see benchmarks/README.md.
MIN_SCORE = 0.4  # gender and mask suspects listed (and written by --fixes-out) from this P(label wrong) on
AGE_MIN_SCORE = 0.9  # age is the weakest task: a person's age group needs stronger evidence
IMAGE_MIN_SCORE = 0.9  # a single image's mask, when no swap explains it
AGE_RANGE = (10, 100)  # plausible ages in years
HASH_BITS = 8  # dHash candidates: at most this many of 64 bits differ
THUMB_CORRELATION = 0.98  # confirmed near-duplicate: grayscale thumbnails correlate at least this much
THUMB_SIZE = (24, 32)  # width, height
FLAT_STD = 3.0  # images this uniform have meaningless hashes


def suspect(target: str, column: str, given: object, suggested: object, score: float, reason: str,
            evidence: str = "", p_wrong: float | None = None, models: str = "") -> dict:
    """One row of the suspects CSV (p_wrong and models: label checks only)."""
    return {"target": str(target), "column": column, "given": "" if given is None else str(given),
            "suggested": "" if suggested is None else str(suggested), "score": round(float(score), 4),
            "p_wrong": "" if p_wrong is None else round(float(p_wrong), 4), "models": models,
            "reason": reason, "evidence": evidence}


def frame(rows: Sequence[dict], extra: Sequence[str] = ()) -> pd.DataFrame:
    """Suspect rows as a table (boolean `extra` columns default to False)."""
    df = pd.DataFrame(list(rows), columns=[*SUSPECT_COLUMNS, *extra])
    for column in extra:
        df[column] = df[column].eq(True)
    return df


# --- structural: train.csv and folders ------------------------------------------------------------


def check_table(root: Path) -> list[dict]:
    """train.csv on its own and against the folder names: duplicate ids, odd ages, disagreements."""
    csv_path = root / "train.csv"
    table = read_csv(csv_path, ("id", "gender", "age", "path"), dtype=str, keep_default_na=False)
    folders = {e.name for e in (root / "images").iterdir() if e.is_dir() and not is_hidden(e.name)}
    rows = []
    for pid, group in table.groupby("id", sort=True):
        if group["path"].nunique() > 1:
            rows.append(suspect(pid, "id", pid, "", 0.95,
                                f"id used by {group['path'].nunique()} person folders in train.csv",
                                "; ".join(sorted(group["path"].unique()))))
    for path, group in table.groupby("path", sort=True):
        if len(group) > 1:
            rows.append(suspect(path, "path", path, "", 0.9, f"folder listed {len(group)} times in train.csv",
                                f"rows {', '.join(str(i + 2) for i in group.index)}"))
    for _, row in table.drop_duplicates("path").iterrows():
        pid, folder = row["id"], row["path"]
        parsed = parse_folder_name(folder)
        if folder not in folders:
            rows.append(suspect(folder, "path", folder, "", 1.0, "train.csv row whose folder is missing",
                                f"id {pid}"))
        if parsed is None:
            rows.append(suspect(folder, "path", folder, "", 0.8, "folder name is not <id>_<gender>_<race>_<age>",
                                f"id {pid}"))
        age_text = row["age"].strip()
        age = pd.to_numeric(age_text, errors="coerce")
        plausible_folder_age = parsed["age"] if parsed and AGE_RANGE[0] <= parsed["age"] <= AGE_RANGE[1] else ""
        if pd.isna(age) or age != int(age):
            rows.append(suspect(pid, "age", age_text, plausible_folder_age, 1.0, "age is not a whole number of years",
                                f"folder {folder}"))
        elif not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
            rows.append(suspect(pid, "age", age_text, plausible_folder_age, 0.9,
                                f"implausible age (outside {AGE_RANGE[0]}..{AGE_RANGE[1]})", f"folder {folder}"))
        elif parsed and parsed["age"] != int(age):
            rows.append(suspect(pid, "age", age_text, parsed["age"], 0.7,
                                "train.csv age disagrees with the folder name", f"folder {folder}"))
        if row["gender"] not in GENDERS:
            rows.append(suspect(pid, "gender", row["gender"], parsed["gender"] if parsed else "", 1.0,
                                "gender is not male or female", f"folder {folder}"))
        elif parsed and parsed["gender"] != row["gender"]:
            rows.append(suspect(pid, "gender", row["gender"], parsed["gender"], 0.7,
                                "train.csv gender disagrees with the folder name", f"folder {folder}"))
        if parsed and parsed["id"] != pid:
            rows.append(suspect(pid, "id", pid, parsed["id"], 0.7, "train.csv id disagrees with the folder name",
                                f"folder {folder}"))
    for folder in sorted(folders - set(table["path"])):
        rows.append(suspect(folder, "path", "", folder, 0.9, "person folder not listed in train.csv",
                            "labels can only come from the folder name"))
    return rows


def check_folders(root: Path) -> tuple[list[dict], list[Path]]:
    """Person folders with missing, extra or doubled images; returns the rows and every image file found."""
    rows, files = [], []
    images_dir = root / "images"
    for entry in sorted(images_dir.iterdir()):
        if is_hidden(entry.name):
            continue
        if not entry.is_dir():
            rows.append(suspect(entry, "file", entry.name, "", 0.6, "file outside the person folders"))
            continue
        by_stem = defaultdict(list)
        for file in sorted(entry.iterdir()):
            if is_hidden(file.name) or not file.is_file():
                continue
            if file.stem in IMAGE_STEMS:
                by_stem[file.stem].append(file)
                files.append(file)
            else:
                rows.append(suspect(file, "file", file.name, "", 0.6, "extra file in a person folder",
                                    f"a person has {', '.join(IMAGE_STEMS)}"))
        missing = [stem for stem in IMAGE_STEMS if stem not in by_stem]
        if missing:
            rows.append(suspect(entry, "file", f"missing {' '.join(missing)}", "", 0.9,
                                f"person folder missing {len(missing)} of {len(IMAGE_STEMS)} images",
                                f"found {len(by_stem)} image stems"))
        for stem, found in by_stem.items():
            if len(found) > 1:
                rows.append(suspect(entry, "file", " ".join(f.name for f in found), found[0].name, 0.8,
                                    f"image {stem} present {len(found)} times", "keep one (split uses .jpg first)"))
    return rows, files


# --- structural: the image files ------------------------------------------------------------------


def _dhash(gray: np.ndarray) -> int:
    """64-bit difference hash: is each of 8x8 cells brighter than its right neighbour."""
    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = np.packbits((small[:, 1:] > small[:, :-1]).ravel())
    return int.from_bytes(bits.tobytes(), "big")


def _thumbnail(gray: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-length grayscale thumbnail: its dot product with another is their correlation."""
    t = cv2.resize(gray, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-6)


def file_problem(data: bytes) -> str | None:
    """'zero-byte', 'truncated' or None, from the bytes alone (JPEG end marker, PNG IEND chunk)."""
    if not data:
        return "zero-byte file"
    if data[:2] == b"\xff\xd8":
        # The end marker must follow the last scan: FF D9 cannot occur inside entropy-coded data.
        if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
            return "truncated JPEG (no end-of-image marker after the last scan)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-16:]:
            return "truncated PNG (no IEND chunk)"
    return None


def scan_file(path: Path) -> dict:
    """Size, problem, SHA-1, dHash and thumbnail of one image file."""
    data = path.read_bytes()
    result = {"path": str(path), "folder": path.parent.name, "size": len(data), "problem": file_problem(data),
              "sha1": hashlib.sha1(data).hexdigest(), "dhash": None, "thumb": None}
    if result["problem"] == "zero-byte file":
        return result
    flag = cv2.IMREAD_REDUCED_GRAYSCALE_2 if len(data) > 100_000 else cv2.IMREAD_GRAYSCALE
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if gray is None or gray.size == 0:
        result["problem"] = result["problem"] or "cannot be decoded as an image"
        return result
    if float(gray.std()) >= FLAT_STD:
        result["dhash"], result["thumb"] = _dhash(gray), _thumbnail(gray)
    return result


def scan_files(files: Sequence[Path]) -> pd.DataFrame:
    """scan_file over many files on threads (OpenCV releases the GIL), with a progress bar on stderr."""
    results: list[dict] = []
    with progress_bar("audit: reading images", len(files), show=None if len(files) >= 2000 else False) as bar:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for result in pool.map(scan_file, files, chunksize=64):
                results.append(result)
                bar.advance()
    return pd.DataFrame(results, columns=["path", "folder", "size", "problem", "sha1", "dhash", "thumb"])


def check_files(scans: pd.DataFrame) -> list[dict]:
    rows = []
    for scan in scans[scans["problem"].notna()].itertuples():
        score = 1.0 if scan.problem.startswith(("zero", "cannot")) else 0.95
        rows.append(suspect(scan.path, "file", f"{scan.size} bytes", "", score, scan.problem,
                            "re-export or drop the image"))
    return rows


def check_duplicates(scans: pd.DataFrame) -> list[dict]:
    """Identical files anywhere, and near-identical images in different person folders."""
    rows = []
    exact_pairs = set()
    for sha1, group in scans[scans["size"] > 0].groupby("sha1"):
        if len(group) < 2:
            continue
        paths = group["path"].tolist()
        exact_pairs.update((a, b) for a in paths for b in paths)
        persons = group["folder"].nunique()
        reason = (f"identical file in {persons} person folders" if persons > 1
                  else f"{len(group)} identical files in one person folder")
        rows.append(suspect(paths[0], "file", "", "", 0.95 if persons > 1 else 0.7, reason, "; ".join(paths[1:])))
    hashed = scans[scans["dhash"].notna()].reset_index(drop=True)
    if len(hashed) < 2:
        return rows
    hashes = np.array([int(h) for h in hashed["dhash"]], dtype=np.uint64)
    thumbs = np.stack(hashed["thumb"].to_numpy())
    folders = hashed["folder"].to_numpy()
    pairs = defaultdict(list)  # (folder a, folder b) -> [(path a, path b, bits, correlation)]
    block = 512
    for start in range(0, len(hashes), block):
        bits = np.bitwise_count(hashes[start:start + block, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(bits <= HASH_BITS)):
            i += start
            if j <= i or folders[i] == folders[j]:
                continue
            if folders[i] > folders[j]:
                i, j = j, i
            a, b = hashed.at[i, "path"], hashed.at[j, "path"]
            if (a, b) in exact_pairs:
                continue
            corr = float(thumbs[i] @ thumbs[j])
            if corr >= THUMB_CORRELATION:
                pairs[(folders[i], folders[j])].append((a, b, int(np.bitwise_count(hashes[i] ^ hashes[j])), corr))
    for (first, second), matches in sorted(pairs.items()):
        detail = "; ".join(f"{PurePath(a).name}~{PurePath(b).name} ({bits} bits, r={corr:.3f})"
                           for a, b, bits, corr in matches[:4])
        # the more images match, the likelier one person sits under two ids
        rows.append(suspect(first, "file", first, second, min(0.99, 0.6 + 0.05 * len(matches)),
                            f"{len(matches)} near-duplicate images in another person's folder ({second})", detail))
    return rows


def structural_suspects(root: Path) -> pd.DataFrame:
    """Every structural check of DATA/train."""
    rows = check_table(root)
    folder_rows, files = check_folders(root)
    rows += folder_rows
    scans = scan_files(files)
    rows += check_files(scans)
    rows += check_duplicates(scans)
    return frame(rows)


# --- label checks with out-of-fold predictions ----------------------------------------------------


def image_key(path: str) -> str:
    """'<folder>/<file>': how a prediction's ImageID is matched to a training image wherever each lives."""
    parts = PurePath(str(path).replace("\\", "/")).parts
    return "/".join(parts[-2:])


def _trained_on_all(run_dir: Path) -> bool:
    try:
        return read_config(run_dir).get("fold") == ALL_FOLDS
    except MaskkitError:
        return False


def read_oof(sources: Sequence[Path]) -> list[pd.DataFrame]:
    """Out-of-fold predictions from run folders (RUN/val_preds.csv) or val_preds CSVs, as prediction sets.

    Files whose images do not overlap are the folds of one model and join one set; a file that
    predicts images a set already holds opens another set (another backbone or seed), in order.
    """
    sets: list[dict] = []
    files: dict[Path, Path] = {}
    for source in sources:
        source = Path(source)
        path = source / VAL_PREDS if source.is_dir() else source
        if source.is_dir() and not path.is_file():
            if _trained_on_all(source):
                raise MaskkitError(f"{source}: trained with --fold all (no validation fold, so no out-of-fold "
                                   f"{VAL_PREDS}); pass the runs of the folds instead (--oof RUN-f0 ... --oof RUN-f4)")
            raise MaskkitError(f"{source}: run folder without {VAL_PREDS} (pass a finished run of maskkit train)")
        if path.resolve() in files:
            raise MaskkitError(f"{path}: also in --oof {files[path.resolve()]}; pass each val_preds.csv once")
        files[path.resolve()] = path
        df, probs = read_predictions(path, fix="val_preds.csv has columns ImageID,ans,p0..p17,person,label")
        keys = df["ImageID"].map(image_key)
        if keys.duplicated().any():
            raise MaskkitError(f"{path}: image {keys[keys.duplicated()].iloc[0]} predicted twice; "
                               "a val_preds.csv has one row per image")
        probs = probs / probs.sum(axis=1, keepdims=True)
        frame_ = pd.DataFrame(probs, columns=PROB_COLUMNS).assign(key=keys.to_numpy())
        keyset = set(keys)
        home = next((s for s in sets if not s["keys"] & keyset), None)
        if home is None:
            home = {"keys": set(), "frames": []}
            sets.append(home)
        home["keys"] |= keyset
        home["frames"].append(frame_)
    return [pd.concat(s["frames"], ignore_index=True) for s in sets]


def join_oof(images: pd.DataFrame, sets: Sequence[pd.DataFrame], source: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The training images that at least one set predicts, and their (sets, n, 18) probabilities (NaN: not predicted)."""
    keys = images["path"].map(image_key)
    if keys.duplicated().any():
        raise MaskkitError(f"{source}: two images share {examples(keys[keys.duplicated()].tolist())}; "
                           "cannot match predictions to them")
    positions = np.stack([pd.Index(oof["key"]).get_indexer(keys) for oof in sets])
    covered = (positions >= 0).any(axis=0)
    if not covered.any():
        raise MaskkitError(f"{source}: none of the {sum(map(len, sets))} predictions match an image of this dataset "
                           "(pass the val_preds.csv of runs trained on it)")
    unmatched = sum(len(oof) - int((pos >= 0).sum()) for oof, pos in zip(sets, positions))
    if unmatched:
        console.print(f"audit: {unmatched} predictions name images not in this dataset (ignored)")
    if not covered.all():
        console.print(f"audit: {int((~covered).sum())} of {len(images)} images have no out-of-fold prediction "
                      "(judged on the rest)")
    probs = np.full((len(sets), int(covered.sum()), NUM_CLASSES), np.nan)
    for k, (oof, pos) in enumerate(zip(sets, positions[:, covered])):
        found = pos >= 0
        probs[k, found] = oof[PROB_COLUMNS].to_numpy()[pos[found]]
    if len(sets) > 1:
        console.print(f"audit: {len(sets)} prediction sets (models); a label is suspect when they agree")
    return images[covered].reset_index(drop=True), probs


def task_probs(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Marginal probabilities of mask (n, 3), gender (n, 2) and age group (n, 3)."""
    mask, gender, age = decode(np.arange(NUM_CLASSES))
    return {name: probs @ np.eye(size)[index]  # (n, 18) @ (18, size)
            for name, index, size in (("mask", mask, 3), ("gender", gender, 2), ("age", age, 3))}


def fit_temperature(logp: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the mean NLL of softmax(logp / T) against `labels` (temperature scaling).

    Fitted on the out-of-fold set itself: the labels are mostly right, and T only rescales confidence.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    if len(labels) < 10 or len(np.unique(labels)) < 2:
        return 1.0
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=1)[rows, labels].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(50.0)), method="bounded").x))


def calibrated(logp: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """softmax(logp / T) with T fitted on all rows, wrong labels included.

    Refitting without the rows that look mislabelled would leave separable data, whose best T is
    near zero: every judgement would read as certain. The labels' own noise keeps T honest.
    """
    from scipy.special import softmax

    temperature = fit_temperature(logp, labels)
    return softmax(logp / temperature, axis=1), temperature


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-7, 1.0))


def logit(p):
    p = np.clip(np.asarray(p, float), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def mean_of_logits(values: Sequence[float]) -> float:
    """Combine several models' probabilities of one event: the mean of their log-odds."""
    return float(1 / (1 + np.exp(-np.mean(logit(values)))))


def label_noise_posterior(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """P(true class | evidence, given label) ~ N[given, class] x probs[class].

    `probs` are calibrated against the given labels; N[i, j] = P(label i | true j) is the noise matrix
    that cleanlab's confident learning estimates (per-class thresholds: each class's mean
    self-confidence). Without it a doubted label would read as wrong as often as the model errs;
    with it, about as often as labels are wrong. (Also undoing the noise in `probs`, N^-1 probs,
    made p_wrong overconfident on real faces, where N counts the model's own errors as noise:
    precision 0.74 among suspects with p_wrong >= 0.9, benchmarks/realfaces_audit.py.)
    Falls back to `probs` where too few examples (under 30, or a class under 5) make N unreliable.
    """
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    classes = probs.shape[1]
    counts = np.bincount(given, minlength=classes)
    if len(given) < 30 or counts.min() < 5:
        return probs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, noise, _, _ = estimate_py_and_noise_matrices_from_probabilities(given, probs)
    posterior = probs * np.clip(noise, 1e-4, 1.0)[given]  # never rule a flip out entirely
    return posterior / posterior.sum(axis=1, keepdims=True)


def cleanlab_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's (issue flags, label quality scores); quiet about classes with few examples.

    find_label_issues is confident learning: per-class thresholds (each class's mean self-confidence).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quality = get_label_quality_scores(labels, probs)
        if len(np.unique(labels)) < 2:
            return np.zeros(len(labels), bool), quality
        return find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1), quality


def nearest_age(age: int, group: int) -> int:
    """The age in `group` closest to `age` (the smallest change of the label that a person confirms)."""
    low, high = [(0, YOUNG_BELOW - 1), (YOUNG_BELOW, OLD_FROM - 1), (OLD_FROM, 200)][group]
    return int(min(max(age, low), high))


class Evidence:
    """Calibrated out-of-fold evidence on a table of images, from one or more prediction sets (models).

    Per set and task, image probabilities are temperature-scaled (fitted on the set itself). A
    person's seven photos share one face, so they are one piece of evidence, not seven votes: gender
    and age group are judged on the mean of the person's calibrated log-probabilities, scaled by a
    second, person-level temperature fitted on all persons (it learns how far the shared face makes
    the photos agree), then weighed against the label with cleanlab's noise matrix (P(label wrong)).
    Sets are combined by the mean of their log-probabilities, and `models` counts the sets whose own
    calibrated verdict differs from the label (for a swap: that find the pair more likely swapped).
    """

    def __init__(self, images: pd.DataFrame, probs: np.ndarray) -> None:
        self.images = images.reset_index(drop=True)
        labels = self.images["label"].to_numpy(np.int64)
        self.given = dict(zip(("mask", "gender", "age"), decode(labels)))
        self.persons = self.images.groupby("person", sort=True).indices
        self.sets = []  # per set: (rows it covers, {task: calibrated (n, k) probs, NaN elsewhere})
        # person_probs[task][set]: person -> (P(true class | photos, label), calibrated P(class | photos))
        for set_probs in probs:
            rows = np.isfinite(set_probs).all(axis=1)
            tasks = {}
            for task, p in task_probs(set_probs[rows]).items():
                full = np.full((len(labels), p.shape[1]), np.nan)
                full[rows] = calibrated(log_probs(p), self.given[task][rows])[0]
                tasks[task] = full
            self.sets.append((rows, tasks))
        self.person_probs = {task: self._person_level(task) for task in ("gender", "age")}
        # cleanlab on every set's calibrated probabilities, averaged (in log space) where several cover an image
        mean18 = np.exp(np.nanmean(np.log(np.clip(probs, 1e-7, 1)), axis=0))
        mean18 /= mean18.sum(axis=1, keepdims=True)
        self.flags18, self.quality18 = cleanlab_issues(labels, mean18)
        self.probs = {task: self._mean_over_sets(task) for task in ("mask", "gender", "age")}
        self.flags, self.quality = {}, {}
        for task in self.probs:
            self.flags[task], self.quality[task] = cleanlab_issues(self.given[task], self.probs[task])

    def _mean_over_sets(self, task: str) -> np.ndarray:
        stacked = np.stack([tasks[task] for _, tasks in self.sets])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.exp(np.nanmean(np.log(np.clip(stacked, 1e-7, 1)), axis=0))
        return mean / mean.sum(axis=1, keepdims=True)

    def _person_level(self, task: str) -> list[dict[str, np.ndarray]]:
        """Per set: person -> calibrated probabilities of the person's gender or age group."""
        result = []
        for rows, tasks in self.sets:
            names, means, given = [], [], []
            for person, idx in self.persons.items():
                idx = idx[rows[idx]]
                if len(idx):
                    names.append(person)
                    means.append(log_probs(tasks[task][idx]).mean(axis=0))
                    given.append(int(self.given[task][idx[0]]))
            if not names:
                result.append({})
                continue
            given = np.array(given)
            probs, _ = calibrated(np.array(means), given)
            result.append(dict(zip(names, zip(label_noise_posterior(probs, given), probs))))
        return result

    def person(self, task: str, person: str) -> tuple[np.ndarray, int, int]:
        """(P(true class | photos, label) combined over sets, sets covering the person, sets whose own
        calibrated verdict is another class than the label)."""
        given = int(self.given[task][self.persons[person][0]])
        found = [probs[person] for probs in self.person_probs[task] if person in probs]
        if not found:
            return np.full(len(AGE_GROUPS) if task == "age" else 2, np.nan), 0, 0
        combined = np.exp(np.mean(log_probs(np.array([posterior for posterior, _ in found])), axis=0))
        combined /= combined.sum()
        return combined, len(found), int(sum(verdict.argmax() != given for _, verdict in found))

    def cleanlab(self, idx: np.ndarray, task: str) -> str:
        return (f"cleanlab flags {int(self.flags[task][idx].sum())}/{len(idx)} ({task}), "
                f"{int(self.flags18[idx].sum())}/{len(idx)} (18 classes)")

    def gender(self, person: str, idx: np.ndarray, min_score: float) -> list[dict]:
        """A person whose photos, taken together, look like the other gender."""
        given = int(self.given["gender"][idx[0]])
        other = 1 - given
        combined, models, agree = self.person("gender", person)
        if not models or combined[other] < min_score:
            return []
        p_other = self.probs["gender"][idx, other]
        return [suspect(person, "gender", GENDERS[given], GENDERS[other], combined[other],
                        f"{int((p_other > 0.5).sum())}/{len(idx)} images look {GENDERS[other]}",
                        f"mean calibrated P({GENDERS[other]}) {p_other.mean():.2f} over {len(idx)} images; "
                        + self.cleanlab(idx, "gender"), p_wrong=combined[other], models=f"{agree}/{models}") | FIX]

    def age(self, person: str, idx: np.ndarray, min_score: float) -> list[dict]:
        """A person whose photos, taken together, look like another age group."""
        given = int(self.given["age"][idx[0]])
        combined, models, agree = self.person("age", person)
        if not models:
            return []
        best = int(combined.argmax())
        if best == given or combined[best] < min_score:
            return []
        years = int(self.images.at[idx[0], "age"])
        return [suspect(person, "age", years, nearest_age(years, best), 1 - combined[given],
                        f"images look {AGE_GROUPS[best]}, labelled {AGE_GROUPS[given]}",
                        "P(age group) " + ", ".join(f"{g} {p:.2f}" for g, p in zip(AGE_GROUPS, combined))
                        + f" over {len(idx)} images; " + self.cleanlab(idx, "age"),
                        p_wrong=1 - combined[given], models=f"{agree}/{models}")]

    def swap(self, idx: np.ndarray, min_score: float) -> tuple[list[dict], set[int]]:
        """Two rows for the person's likeliest swapped pair of images, and the pair."""
        per_set = [swap_probabilities(idx[rows[idx]], self.given["mask"], tasks["mask"]) for rows, tasks in self.sets]
        pairs = set().union(*per_set)
        if not pairs:
            return [], set()
        # a set that does not name a pair gives it (almost) no probability
        scored = [(mean_of_logits([found.get(pair, 0.0) for found in per_set if found]), pair) for pair in pairs]
        score, (i, j) = max(scored)
        if score < min_score:
            return [], set()
        values = [found.get((i, j), 0.0) for found in per_set if found]
        agree = f"{sum(v > 0.5 for v in values)}/{len(values)}"
        mask, path, pm = self.given["mask"], self.images["path"], self.probs["mask"]
        rows = [suspect(path[a], "mask", MASKS[mask[a]], MASKS[mask[b]], score,
                        f"{PurePath(path[a]).name} and {PurePath(path[b]).name} look swapped",
                        f"P({MASKS[mask[b]]}) {pm[a, mask[b]]:.2f} here, P({MASKS[mask[a]]}) {pm[b, mask[a]]:.2f} "
                        f"on the other; " + self.cleanlab(np.array([a, b]), "mask"), p_wrong=score, models=agree) | FIX
                for a, b in ((i, j), (j, i))]
        return rows, {i, j}

    def lone_masks(self, idx: np.ndarray, skip: set[int], min_score: float) -> list[dict]:
        """Images cleanlab flags whose mask looks wrong with no swap to explain it (for review only)."""
        rows = []
        mask, path, pm = self.given["mask"], self.images["path"], self.probs["mask"]
        for a in idx:
            if a in skip or not (self.flags["mask"][a] or self.flags18[a]):
                continue
            predicted = int(pm[a].argmax())
            if predicted != mask[a] and pm[a, predicted] >= min_score:
                models = [tasks["mask"][a] for rows_, tasks in self.sets if rows_[a]]
                agree = f"{sum(p[mask[a]] < 0.5 for p in models)}/{len(models)}"
                rows.append(suspect(path[a], "mask", MASKS[mask[a]], MASKS[predicted], 1 - pm[a, mask[a]],
                                    f"this image alone looks {MASKS[predicted]}",
                                    f"cleanlab flags it (label quality {self.quality['mask'][a]:.2f}); "
                                    "no other image of the person looks swapped with it",
                                    p_wrong=1 - pm[a, mask[a]], models=agree))
        return rows


def label_suspects(images: pd.DataFrame, probs: np.ndarray, min_score: float = MIN_SCORE,
                   age_min_score: float = AGE_MIN_SCORE, image_min_score: float = IMAGE_MIN_SCORE) -> pd.DataFrame:
    """Gender, age group and mask swaps per person, then lone odd masks per image; ranked by score.

    probs: (sets, n, 18) out-of-fold probabilities, NaN where a set does not predict an image
    (an (n, 18) array is one set). The `fix` column marks the rows that --fixes-out writes.
    """
    probs = np.asarray(probs, float)
    evidence = Evidence(images, probs[None] if probs.ndim == 2 else probs)
    rows = []
    for person, idx in evidence.persons.items():
        rows += evidence.gender(person, idx, min_score)
        rows += evidence.age(person, idx, max(min_score, age_min_score))
        swap_rows, pair = evidence.swap(idx, min_score)
        rows += swap_rows
        rows += evidence.lone_masks(idx, pair, max(min_score, image_min_score))
    return rank(frame(rows, extra=("fix",)))


SWAP_PRIOR = (0.5, 0.25, 0.25)  # as labelled, swapped, any other pair of true masks (shared by those 7)


def swap_probabilities(idx: np.ndarray, mask: np.ndarray, pm: np.ndarray) -> dict[tuple[int, int], float]:
    """P(images i and j carry each other's mask label) for each pair of the person's images with different labels.

    The pair's true masks have 9 combinations, each as likely as the product of the two images'
    calibrated probabilities: as labelled (c = P_i(own), d = P_j(own)), swapped (a = P_i(mask of j),
    b = P_j(mask of i)), or one of 7 others (the rest, r = 1 - ab - cd). With SWAP_PRIOR's weights
    P(swapped) = 0.25ab / (0.5cd + 0.25ab + 0.25r/7): a pair is swapped only when each image looks
    like the other's label, not merely when one image looks wrong.
    """
    kept_prior, swap_prior, other_prior = SWAP_PRIOR
    result = {}
    for pos, i in enumerate(idx):
        for j in idx[pos + 1:]:
            mi, mj = mask[i], mask[j]
            if mi == mj:
                continue
            swapped, kept = pm[i, mj] * pm[j, mi], pm[i, mi] * pm[j, mj]
            rest = max(0.0, 1.0 - swapped - kept)
            weight = swap_prior * swapped
            result[(int(i), int(j))] = float(weight / (weight + kept_prior * kept + other_prior * rest / 7))
    return result


def rank(suspects: pd.DataFrame) -> pd.DataFrame:
    """Most likely first; stable for equal scores."""
    return suspects.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


# --- outputs --------------------------------------------------------------------------------------


def fixes_table(labels: pd.DataFrame) -> pd.DataFrame:
    """Person-level gender and mask-swap suggestions as a fixes CSV (docs/formats.md) plus their score.

    Age suspects and single-image masks stay in the suspects CSV only: age-group evidence cannot say
    how many years to write and mostly sits at a group boundary; a lone image is not judged against
    the person's other images. On drawn data both were nearly all false alarms (benchmarks/audit.py).
    """
    labels = labels[labels["fix"]] if "fix" in labels else labels.iloc[:0]
    return pd.DataFrame({"target": labels["target"], "column": labels["column"], "old": labels["given"],
                         "new": labels["suggested"], "reason": "audit: " + labels["reason"], "score": labels["score"]},
                        columns=FIXES_OUT_COLUMNS)


def sheet_image(row: pd.Series, images: pd.DataFrame) -> str | None:
    """The image that shows a suspect best: the image itself, or the person's unmasked photo."""
    target = row["target"]
    if Path(target).is_file():
        return target
    owned = images[(images["person"].astype(str) == target) | (images["folder"] == PurePath(target).name)]
    if owned.empty:
        return None
    normal = owned[owned["stem"] == "normal"]
    return (normal if len(normal) else owned).iloc[0]["path"]


def draw_sheet(suspects: pd.DataFrame, images: pd.DataFrame, path: Path, top: int = 30,
               inputs: Inputs | None = None) -> int:
    """A PNG grid of the top suspects: thumbnail, target, given -> suggested, score. Returns tiles drawn."""
    tile_w, tile_h, text_h, columns = 160, 200, 76, 6
    tiles = []
    for _, row in suspects.iterrows():
        if len(tiles) >= top:
            break
        file = sheet_image(row, images)
        img = cv2.imread(file) if file else None
        if img is None:
            continue
        scale = min(tile_w / img.shape[1], tile_h / img.shape[0])
        img = cv2.resize(img, (max(1, int(img.shape[1] * scale)), max(1, int(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
        tile = np.full((tile_h + text_h, tile_w, 3), 255, np.uint8)
        x0 = (tile_w - img.shape[1]) // 2
        tile[: img.shape[0], x0: x0 + img.shape[1]] = img
        target = PurePath(row["target"])
        head = [target.parent.name, f"{target.name}: {row['column']}"] if Path(row["target"]).is_file() \
            else [target.name, row["column"]]
        judged = str(row.get("p_wrong", "")) not in ("", "nan")
        lines = [*head, f"{row['given']} -> {row['suggested']}",
                 f"P(wrong) {float(row['p_wrong']):.2f} {row['models']}" if judged else f"score {float(row['score']):.2f}"]
        for k, line in enumerate(lines):
            cv2.putText(tile, str(line)[:25], (4, tile_h + 15 + 17 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                        cv2.LINE_AA)
        tiles.append(tile)
    drawn = len(tiles)
    if not tiles:
        empty = np.full((tile_h + text_h, tile_w, 3), 255, np.uint8)
        cv2.putText(empty, "no suspects", (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(empty)
    write_image(path, contact_sheet(tiles, columns=columns, gap=0), inputs=inputs)
    return drawn


def summary(suspects: pd.DataFrame) -> Table:
    table = Table(title="audit: suspects by reason", title_justify="left")
    table.add_column("count", justify="right")
    table.add_column("column")
    table.add_column("reason")
    kinds = (suspects["reason"].str.replace(r"\(.*\)", "", regex=True)
             .str.replace(r"(?<![<>=-])\b\d+(/\d+)?\s+(of \d+\s+)?", "", regex=True).str.strip())
    reasons = suspects.assign(kind=kinds)
    for (column, kind), group in reasons.groupby(["column", "kind"], sort=False):
        table.add_row(str(len(group)), column, kind)
    return table


def load_images(data: Path, manifest: Path | None) -> tuple[Path, pd.DataFrame]:
    """DATA/train and the table whose labels are judged (train.csv's, or a manifest's after fixes)."""
    root = train_root(data)
    images = load_train(root)
    if manifest is None:
        return root, images
    table = read_manifest(manifest)
    table = table.assign(folder=[PurePath(p).parent.name for p in table["path"]],
                         stem=[PurePath(p).stem for p in table["path"]])
    # judge the manifest's labels, but show the dataset's own files on the sheet
    by_key = dict(zip(images["path"].map(image_key), images["path"]))
    table["path"] = [by_key.get(image_key(p), p) for p in table["path"]]
    return root, table


def run(data: Path, oof: Sequence[Path] = (), manifest: Path | None = None, fixes_out: Path | None = None,
        sheet: Path | None = None, out: Path | None = None, min_score: float | None = None,
        top: int = 30) -> pd.DataFrame:
    """`maskkit audit`: suspects CSV to stdout or `out`; optional fixes CSV and contact sheet."""
    min_score = MIN_SCORE if min_score is None else min_score
    if not 0 <= min_score <= 1:
        raise MaskkitError(f"--min-score {min_score}: must be between 0 and 1")
    if fixes_out is not None and not oof:
        raise MaskkitError("--fixes-out writes label suggestions, which need --oof "
                           "(out-of-fold predictions of maskkit train)")
    inputs = Inputs.of(data, [f for source in oof for f in files_in(source)], manifest)
    inputs.check(out, header=SUSPECT_COLUMNS)
    inputs.check(fixes_out, header=FIXES_OUT_COLUMNS)
    inputs.check(sheet, magic=image_magic(sheet))
    root, images = load_images(data, manifest)
    labels = frame([])
    if oof:
        prediction_sets = read_oof(oof)
        judged, probs = join_oof(images, prediction_sets, ", ".join(map(str, oof)))
        labels = label_suspects(judged, probs, min_score=min_score)
    structural = structural_suspects(root)
    parts = [p for p in (structural, labels.drop(columns="fix", errors="ignore")) if len(p)]
    suspects = rank(pd.concat(parts, ignore_index=True)) if parts else frame([])
    if sheet is not None:
        drawn = draw_sheet(suspects, images, sheet, top=top, inputs=inputs)
        console.print(f"audit: contact sheet of {drawn} suspects written to {sheet}")
    if fixes_out is not None:
        fixes = fixes_table(labels)
        write_csv(fixes, fixes_out, inputs=inputs)
        console.print(f"audit: {len(fixes)} label suggestions written to {fixes_out} "
                      f"(review them, then: maskkit split {data} --fixes {fixes_out})")
    if len(suspects):
        console.print(summary(suspects))
    else:
        console.print("audit: no suspects")
    write_csv(suspects, out, inputs=inputs)
    return suspects
