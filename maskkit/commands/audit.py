"""`maskkit audit`: suspects in a training set, ranked, instead of a hunt by eye.

Structural checks need no model: train.csv against the folders, person folders with missing, extra
or doubled images, zero-byte / truncated / undecodable files, exact duplicates (file hash) and
near-duplicates across persons (a 64-bit dHash computed with OpenCV, confirmed by the correlation
of small grayscale thumbnails; cv2.img_hash is not part of opencv-python-headless).

Label checks read out-of-fold predictions (`val_preds.csv`, docs/formats.md). A person's gender and age
group are judged on all the person's images together (mean probability over the images), so one odd
image never overrules the other six; a mask swap on the person's likeliest pair of images with
different masks (each looks like the other's label, and "swapped" beats "as labelled"). cleanlab
(`find_label_issues`, `get_label_quality_scores`) flags image-level issues on the 18 classes and per
task: its counts go into the evidence, and an image it flags whose mask no swap explains is listed
on its own ("this image alone"), for review only. `--fixes-out` writes the person-level gender and
mask-swap suggestions, the ones whose hit rate benchmarks/audit.py measures.

Why over 400 lines: the structural checks and the label checks are two halves of one report;
the scoring (issue 10 reworks it) is kept together so its cut-offs stay next to the code they tune.
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
from maskkit.contract.runfolder import VAL_PREDS
from maskkit.data.images import contact_sheet, image_magic, write_image
from maskkit.engine.progress import progress_bar
from maskkit.contract.labels import AGE_GROUPS, GENDERS, IMAGE_STEMS, MASKS, NUM_CLASSES, OLD_FROM, YOUNG_BELOW, decode

SUSPECT_COLUMNS = ["target", "column", "given", "suggested", "score", "reason", "evidence"]
FIXES_OUT_COLUMNS = [*FIXES_COLUMNS, "score"]  # the fixes CSV plus audit's score
FIX = {"fix": True}  # marks the label suspects that --fixes-out writes

# Cut-offs, chosen from benchmarks/audit.py (drawn data with injected errors; see benchmarks/README.md).
MIN_SCORE = 0.65  # gender and mask suspects listed (and written by --fixes-out) from this score on
AGE_MIN_SCORE = 0.9  # age is the weakest task: a person's age group needs stronger evidence
IMAGE_MIN_SCORE = 0.9  # a single image's mask, when no swap explains it
AGE_RANGE = (10, 100)  # plausible ages in years
HASH_BITS = 8  # dHash candidates: at most this many of 64 bits differ
THUMB_CORRELATION = 0.98  # confirmed near-duplicate: grayscale thumbnails correlate at least this much
THUMB_SIZE = (24, 32)  # width, height
FLAT_STD = 3.0  # images this uniform have meaningless hashes


def suspect(target: str, column: str, given: object, suggested: object, score: float, reason: str,
            evidence: str = "") -> dict:
    """One row of the suspects CSV."""
    return {"target": str(target), "column": column, "given": "" if given is None else str(given),
            "suggested": "" if suggested is None else str(suggested), "score": round(float(score), 4),
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


def read_oof(sources: Sequence[Path]) -> pd.DataFrame:
    """Out-of-fold predictions from run folders (RUN/val_preds.csv) or val_preds CSVs, concatenated."""
    frames, seen = [], {}
    for source in sources:
        source = Path(source)
        path = source / VAL_PREDS if source.is_dir() else source
        if source.is_dir() and not path.is_file():
            raise MaskkitError(f"{source}: run folder without {VAL_PREDS} (pass a finished run of maskkit train)")
        df, probs = read_predictions(path, fix="val_preds.csv has columns ImageID,ans,p0..p17,person,label")
        keys = df["ImageID"].map(image_key)
        for key in keys:
            if key in seen:
                raise MaskkitError(f"{path}: image {key} is also in {seen[key]}; pass one val_preds.csv per fold")
            seen[key] = path
        probs = probs / probs.sum(axis=1, keepdims=True)
        frames.append(pd.DataFrame(probs, columns=PROB_COLUMNS).assign(key=keys.to_numpy()))
    return pd.concat(frames, ignore_index=True)


def join_oof(images: pd.DataFrame, oof: pd.DataFrame, source: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The training images that have a prediction, and their (n, 18) probabilities."""
    keys = images["path"].map(image_key)
    if keys.duplicated().any():
        raise MaskkitError(f"{source}: two images share {examples(keys[keys.duplicated()].tolist())}; "
                           "cannot match predictions to them")
    positions = pd.Index(oof["key"]).get_indexer(keys)
    covered = positions >= 0
    if not covered.any():
        raise MaskkitError(f"{source}: none of the {len(oof)} predictions match an image of this dataset "
                           "(pass the val_preds.csv of runs trained on it)")
    unmatched = len(oof) - int(covered.sum())
    if unmatched:
        console.print(f"audit: {unmatched} predictions name images not in this dataset (ignored)")
    if not covered.all():
        console.print(f"audit: {int((~covered).sum())} of {len(images)} images have no out-of-fold prediction "
                      "(judged on the rest)")
    return images[covered].reset_index(drop=True), oof[PROB_COLUMNS].to_numpy()[positions[covered]]


def task_probs(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Marginal probabilities of mask (n, 3), gender (n, 2) and age group (n, 3)."""
    mask, gender, age = decode(np.arange(NUM_CLASSES))
    return {name: probs @ np.eye(size)[index]  # (n, 18) @ (18, size)
            for name, index, size in (("mask", mask, 3), ("gender", gender, 2), ("age", age, 3))}


def cleanlab_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's (issue flags, label quality scores); quiet about classes with few examples."""
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
    """Out-of-fold evidence on a table of images: given labels, task probabilities, cleanlab's view."""

    def __init__(self, images: pd.DataFrame, probs: np.ndarray) -> None:
        self.images = images.reset_index(drop=True)
        labels = self.images["label"].to_numpy(np.int64)
        self.given = dict(zip(("mask", "gender", "age"), decode(labels)))
        self.probs = task_probs(probs)
        self.flags18, self.quality18 = cleanlab_issues(labels, probs)
        self.flags, self.quality = {}, {}
        for task in self.probs:
            self.flags[task], self.quality[task] = cleanlab_issues(self.given[task], self.probs[task])

    def cleanlab(self, idx: np.ndarray, task: str) -> str:
        return (f"cleanlab flags {int(self.flags[task][idx].sum())}/{len(idx)} ({task}), "
                f"{int(self.flags18[idx].sum())}/{len(idx)} (18 classes)")

    def gender(self, person: str, idx: np.ndarray, min_score: float) -> list[dict]:
        """A person whose images, taken together, look like the other gender."""
        given = int(self.given["gender"][idx[0]])
        other = 1 - given
        p_other = self.probs["gender"][idx, other]
        score = float(p_other.mean())
        if score < min_score:
            return []
        return [suspect(person, "gender", GENDERS[given], GENDERS[other], score,
                        f"{int((p_other > 0.5).sum())}/{len(idx)} images look {GENDERS[other]}",
                        f"mean P({GENDERS[other]}) {score:.2f} over {len(idx)} images; "
                        + self.cleanlab(idx, "gender")) | FIX]

    def age(self, person: str, idx: np.ndarray, min_score: float) -> list[dict]:
        """A person whose images, taken together, look like another age group."""
        given = int(self.given["age"][idx[0]])
        mean = self.probs["age"][idx].mean(axis=0)
        best = int(mean.argmax())
        if best == given or mean[best] < min_score:
            return []
        years = int(self.images.at[idx[0], "age"])
        return [suspect(person, "age", years, nearest_age(years, best), mean[best],
                        f"images look {AGE_GROUPS[best]}, labelled {AGE_GROUPS[given]}",
                        "mean P(age group) " + ", ".join(f"{g} {p:.2f}" for g, p in zip(AGE_GROUPS, mean))
                        + f" over {len(idx)} images; " + self.cleanlab(idx, "age"))]

    def swap(self, idx: np.ndarray, min_score: float) -> tuple[list[dict], set[int]]:
        """Two rows for the person's likeliest swapped pair of images, and the pair."""
        found = best_swap(idx, self.given["mask"], self.probs["mask"])
        if found is None or found[2] < min_score:
            return [], set()
        i, j, score = found
        mask, path, pm = self.given["mask"], self.images["path"], self.probs["mask"]
        rows = [suspect(path[a], "mask", MASKS[mask[a]], MASKS[mask[b]], score,
                        f"{PurePath(path[a]).name} and {PurePath(path[b]).name} look swapped",
                        f"P({MASKS[mask[b]]}) {pm[a, mask[b]]:.2f} here, P({MASKS[mask[a]]}) {pm[b, mask[a]]:.2f} "
                        f"on the other; " + self.cleanlab(np.array([a, b]), "mask")) | FIX
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
                rows.append(suspect(path[a], "mask", MASKS[mask[a]], MASKS[predicted], pm[a, predicted],
                                    f"this image alone looks {MASKS[predicted]}",
                                    f"cleanlab flags it (label quality {self.quality['mask'][a]:.2f}); "
                                    "no other image of the person looks swapped with it"))
        return rows


def label_suspects(images: pd.DataFrame, probs: np.ndarray, min_score: float = MIN_SCORE,
                   age_min_score: float = AGE_MIN_SCORE, image_min_score: float = IMAGE_MIN_SCORE) -> pd.DataFrame:
    """Gender, age group and mask swaps per person, then lone odd masks per image; ranked by score.

    The `fix` column marks the rows that --fixes-out writes (gender and swaps).
    """
    evidence = Evidence(images, probs)
    rows = []
    for person, idx in evidence.images.groupby("person", sort=True).indices.items():
        rows += evidence.gender(person, idx, min_score)
        rows += evidence.age(person, idx, max(min_score, age_min_score))
        swap_rows, pair = evidence.swap(idx, min_score)
        rows += swap_rows
        rows += evidence.lone_masks(idx, pair, max(min_score, image_min_score))
    return rank(frame(rows, extra=("fix",)))


def best_swap(idx: np.ndarray, mask: np.ndarray, pm: np.ndarray) -> tuple[int, int, float] | None:
    """The person's likeliest swapped pair of images with different masks: (i, j, score).

    With a = P_i(mask of j), b = P_j(mask of i), c = P_i(own mask), d = P_j(own mask):
    score = sqrt(sqrt(ab) * ab / (ab + cd)), the geometric mean of "each image looks like the other's
    label" and the posterior of "swapped" against "as labelled" (equal priors).
    """
    best = None
    for pos, i in enumerate(idx):
        for j in idx[pos + 1:]:
            mi, mj = mask[i], mask[j]
            if mi == mj:
                continue
            swapped, kept = pm[i, mj] * pm[j, mi], pm[i, mi] * pm[j, mj]
            posterior = swapped / (swapped + kept) if swapped + kept > 0 else 0.5
            score = float(np.sqrt(np.sqrt(swapped) * posterior))
            if best is None or score > best[2]:
                best = (int(i), int(j), score)
    return best


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
        lines = [*head, f"{row['given']} -> {row['suggested']}", f"score {float(row['score']):.2f}"]
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
        predictions = read_oof(oof)
        judged, probs = join_oof(images, predictions, ", ".join(map(str, oof)))
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
