"""`maskkit audit`: suspects in a training set, ranked, instead of a hunt by eye (docs/formats.md,
"Audit suspects"; hit rates in benchmarks/README.md).

Structural checks need no model: the quirks `layout.read_train` finds in train.csv and the person
folders (missing, extra or doubled images, names and labels that disagree) become suspects here,
plus zero-byte / truncated / undecodable files, exact duplicates (file hash) and near-duplicates
across persons (dHash candidates confirmed by thumbnail correlation, data/fingerprints.py).

Label checks read out-of-fold predictions (`val_preds.csv` of a run folder), from one or more models:
files that predict the same images form separate sets (see read_oof). engine/calibration.py turns
them into calibrated evidence; here a person's gender and age group are judged on the person's photos
together (one odd image never overrules six), a mask swap on the person's likeliest pair of images
with different masks. Every label suspect carries p_wrong, the probability that its label is wrong,
and `models`, how many sets on their own agree; suspects and the contact sheet are ordered by it. An
image cleanlab flags whose mask no swap explains is listed on its own ("this image alone"), for
review only. `--fixes-out` writes the person-level gender and mask-swap suggestions, the ones whose
hit rate benchmarks/audit.py (drawn) and benchmarks/realfaces_audit.py (real faces) measure.
`--expert` adds an outside face model's opinions (contract/opinions.py, `maskkit expert`): one more
evidence set for gender, and age suspects with a fix of the years where it and the fold models
agree (`expert_age_suspects`); column `wrong_by` names the sets that call a label wrong.

Why over 400 lines: the structural checks and the label checks are two halves of one report, and
the rules that score suspects are kept together so their cut-offs stay next to the code they tune.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath

import cv2
import numpy as np
import pandas as pd
from rich.table import Table

from maskkit.contract import layout
from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console, examples, files_in, write_csv
from maskkit.contract.fixes import FIXES_COLUMNS
from maskkit.contract.labels import (AGE_GROUPS, GENDERS, IMAGE_STEMS, MASKS, NUM_CLASSES, OLD_FROM, YOUNG_BELOW,
                                    age_group, logit)
from maskkit.contract.manifest import read_manifest
from maskkit.contract.opinions import check_opinions, opinions_table, read_opinions
from maskkit.contract.paths import as_text
from maskkit.contract.predictions import PROB_COLUMNS, read_predictions
from maskkit.contract.runfolder import VAL_PREDS, read_config
from maskkit.data.fingerprints import SCAN_COLUMNS, near_duplicates, scan_file
from maskkit.data.images import contact_sheet, image_magic, read_image, write_image
from maskkit.engine.calibration import Evidence, flip_probability, pooled
from maskkit.engine.expert import compute, persons_of
from maskkit.engine.metrics import scores
from maskkit.contract.progress import progress_bar
from maskkit.options import ALL_FOLDS

SUSPECT_COLUMNS = ["target", "column", "given", "suggested", "score", "p_wrong", "models", "reason", "evidence",
                   "wrong_by"]
FIXES_OUT_COLUMNS = [*FIXES_COLUMNS, "score"]  # the fixes CSV plus audit's score (P(label wrong))
FIX = {"fix": True}  # marks the label suspects that --fixes-out writes

# Cut-offs on P(label wrong), chosen with benchmarks/realfaces_audit.py (real faces) and checked with
# benchmarks/audit.py (drawn faces); see benchmarks/README.md.
MIN_SCORE = 0.4  # gender and mask suspects listed (and written by --fixes-out) from this P(label wrong) on
AGE_MIN_SCORE = 0.9  # age is the weakest task: a person's age group needs stronger evidence
IMAGE_MIN_SCORE = 0.9  # a single image's mask, when no swap explains it
SHEET_TILES = 30  # suspects on the contact sheet (a line of images each), unless --top says how many
# Evidence too weak to judge labels by: a task's out-of-fold macro F1 against the given labels under
# halfway from chance (1/classes) to perfect. Not measured on a sweep of models: a sane floor, far
# below every model the audit's hit rates were measured with (drawn proxy: ~92% gender, ~96% mask
# accuracy; real faces: gender F1 0.87-0.89) and above the near-chance model of issue 25 (macro F1
# 0.18), whose 21 suspects and "about 15 wrong labels" were its own mistakes (no label was wrong).
# audit --expert's age suspects (issue 27): the expert's years this far across a group boundary, at
# this age confidence (the package's top-class percentage) or more. Not yet fitted on real faces.
EXPERT_AGE_MARGIN = 10
EXPERT_AGE_CONFIDENCE = 20
EXPERT_AGE_MIN_SCORE = 0.8  # chosen on realfaces build A (benchmarks/README.md): at 0.4, 2 of 22 age rows were errors
WEAK_F1 = {"gender": (1 + 1 / 2) / 2, "mask": (1 + 1 / 3) / 2}
HASH_BITS = 8  # dHash candidates: at most this many of 64 bits differ
THUMB_CORRELATION = 0.98  # confirmed near-duplicate: grayscale thumbnails correlate at least this much


def suspect(target: str, column: str, given: object, suggested: object, score: float, reason: str,
            evidence: str = "", p_wrong: float | None = None, models: str = "", wrong_by: Sequence[str] = ()) -> dict:
    """One row of the suspects CSV (p_wrong, models and wrong_by: label checks only)."""
    return {"target": str(target), "column": column, "given": "" if given is None else str(given),
            "suggested": "" if suggested is None else str(suggested), "score": round(float(score), 4),
            "p_wrong": "" if p_wrong is None else round(float(p_wrong), 4), "models": models,
            "reason": reason, "evidence": evidence, "wrong_by": " ".join(wrong_by)}


def frame(rows: Sequence[dict], extra: Sequence[str] = ()) -> pd.DataFrame:
    """Suspect rows as a table (boolean `extra` columns default to False)."""
    df = pd.DataFrame(list(rows), columns=[*SUSPECT_COLUMNS, *extra])
    for column in extra:
        df[column] = df[column].eq(True)
    return df


# --- structural: the layout's quirks --------------------------------------------------------------


def table_suspect(quirk: layout.Quirk) -> dict | None:
    """The suspect row of a quirk of train.csv or of a folder name; None for other quirks."""
    q, folder = quirk, f"folder {quirk.path}"
    match q.kind:
        case layout.UNREADABLE_ROW if q.column == "gender":
            return suspect(q.person, "gender", q.given, q.other, 1.0, "gender is not male or female", folder)
        case layout.UNREADABLE_ROW | layout.FRACTIONAL_AGE:
            return suspect(q.person, "age", q.given, q.other, 1.0, "age is not a whole number of years", folder)
        case layout.IMPLAUSIBLE_AGE:
            low, high = layout.PLAUSIBLE_AGES
            return suspect(q.person, "age", q.given, q.other, 0.9, f"implausible age (outside {low}..{high})", folder)
        case layout.DISAGREEING:
            return suspect(q.person, q.column, q.given, q.other, 0.7,
                           f"train.csv {q.column} disagrees with the folder name", folder)
        case layout.SHARED_ID:
            return suspect(q.person, "id", q.person, "", 0.95,
                           f"id used by {len(q.related)} person folders in train.csv", "; ".join(sorted(q.related)))
        case layout.REPEATED_ROW:
            return suspect(q.path, "path", q.path, "", 0.9, f"folder listed {len(q.related)} times in train.csv",
                           f"rows {', '.join(q.related)}")
        case layout.MISSING_FOLDER:
            return suspect(q.path, "path", q.path, "", 1.0, "train.csv row whose folder is missing", f"id {q.person}")
        case layout.UNREADABLE_NAME:
            return suspect(q.path, "path", q.path, "", 0.8, "folder name is not <id>_<gender>_<race>_<age>",
                           f"id {q.person}")
        case layout.UNLISTED | layout.UNLISTED_UNREADABLE:
            return suspect(q.path, "path", "", q.path, 0.9, "person folder not listed in train.csv",
                           "labels can only come from the folder name")
    return None


def file_quirk_suspect(quirk: layout.Quirk, images_dir: Path) -> dict | None:
    """The suspect row of an extra file or a person folder missing images; None for other quirks."""
    if quirk.kind == layout.EXTRA_FILE:
        file = Path(quirk.path)
        if file.parent == images_dir:
            return suspect(file, "file", file.name, "", 0.6, "file outside the person folders")
        return suspect(file, "file", file.name, "", 0.6, "extra file in a person folder",
                       f"a person has {', '.join(IMAGE_STEMS)}")
    if quirk.kind == layout.MISSING_IMAGES:
        missing = quirk.related
        return suspect(quirk.path, "file", f"missing {' '.join(missing)}", "", 0.9,
                       f"person folder missing {len(missing)} of {len(IMAGE_STEMS)} images",
                       f"found {len(IMAGE_STEMS) - len(missing)} image stems")
    return None


def doubled_image_suspects(quirks: Sequence[layout.Quirk]) -> list[dict]:
    """One row per image present in several formats: every file of it, and the one the layout reads."""
    files = defaultdict(set)  # kept file -> every file of that image
    for quirk in quirks:
        if quirk.kind == layout.TWO_FORMATS:
            files[quirk.path].update((quirk.path, quirk.other))
    return [suspect(Path(kept).parent, "file", " ".join(sorted(Path(f).name for f in found)), Path(kept).name, 0.8,
                    f"image {Path(kept).stem} present {len(found)} times", "keep one (split uses .jpg first)")
            for kept, found in files.items()]


def quirk_suspects(quirks: Sequence[layout.Quirk], images_dir: Path) -> list[dict]:
    """The layout's quirks that deserve a look, as suspect rows (each listed train.csv folder once)."""
    unreadable_rows = {q.path for q in quirks if q.kind == layout.UNREADABLE_ROW}
    rows, repeated = [], set()
    for quirk in quirks:
        if quirk.kind == layout.REPEATED_ROW:
            if quirk.path in repeated:
                continue
            repeated.add(quirk.path)
        if quirk.kind == layout.UNLISTED and quirk.path in unreadable_rows:
            continue  # listed, on a row the layout could not read: that row is the suspect
        row = table_suspect(quirk) or file_quirk_suspect(quirk, images_dir)
        if row is not None:
            rows.append(row)
    return rows + doubled_image_suspects(quirks)


# --- structural: the image files ------------------------------------------------------------------


def scan_files(files: Sequence[Path]) -> pd.DataFrame:
    """scan_file over many files on threads (OpenCV releases the GIL), with a progress bar on stderr."""
    results: list[dict] = []
    with progress_bar("audit: reading images", len(files), show=None if len(files) >= 2000 else False) as bar:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for result in pool.map(scan_file, files, chunksize=64):
                results.append(result)
                bar.advance()
    return pd.DataFrame(results, columns=SCAN_COLUMNS)


def check_files(scans: pd.DataFrame) -> list[dict]:
    """Damaged files, then strange ones (tiny, odd aspect, wrong format: the kind before the colon)."""
    rows = []
    for scan in scans[scans["problem"].notna()].itertuples():
        score = 1.0 if scan.problem.startswith(("zero", "cannot")) else 0.95
        rows.append(suspect(scan.path, "file", f"{scan.size} bytes", "", score, scan.problem,
                            "re-export or drop the image"))
    for scan in scans[scans["strange"].notna()].itertuples():
        kind, detail = scan.strange.split(": ", 1)
        rows.append(suspect(scan.path, "file", f"{scan.size} bytes", "", 0.8, kind,
                            f"{detail}; re-export or drop the image"))
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
    pairs = near_duplicates(scans, HASH_BITS, THUMB_CORRELATION, skip=exact_pairs)
    for (first, second), matches in sorted(pairs.items()):
        detail = "; ".join(f"{PurePath(a).name}~{PurePath(b).name} ({bits} bits, r={corr:.3f})"
                           for a, b, bits, corr in matches[:4])
        # the more images match, the likelier one person sits under two ids
        rows.append(suspect(first, "file", first, second, min(0.99, 0.6 + 0.05 * len(matches)),
                            f"{len(matches)} near-duplicate images in another person's folder ({second})", detail))
    return rows


def structural_suspects(images: pd.DataFrame, quirks: Sequence[layout.Quirk], images_dir: Path) -> pd.DataFrame:
    """Every structural check of DATA/train: the layout's quirks, then every image file it found."""
    dropped = [q.other for q in quirks if q.kind == layout.TWO_FORMATS]  # scanned too: they may differ
    scans = scan_files([Path(p) for p in [*images["path"], *dropped]])
    return frame(quirk_suspects(quirks, images_dir) + check_files(scans) + check_duplicates(scans))


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
        console.print(f"audit: {len(sets)} prediction sets (models), pooled into P(label wrong); column models "
                      "counts the sets that find a label wrong on their own")
    return images[covered].reset_index(drop=True), probs


def nearest_age(age: int, group: int) -> int:
    """The age in `group` closest to `age` (the smallest change of the label that a person confirms)."""
    low, high = [(0, YOUNG_BELOW - 1), (YOUNG_BELOW, OLD_FROM - 1), (OLD_FROM, 200)][group]
    return int(min(max(age, low), high))


def cleanlab_counts(evidence: Evidence, idx: np.ndarray, task: str) -> str:
    return (f"cleanlab flags {int(evidence.flags[task][idx].sum())}/{len(idx)} ({task}), "
            f"{int(evidence.flags18[idx].sum())}/{len(idx)} (18 classes)")


def gender_suspects(evidence: Evidence, person: str, idx: np.ndarray, min_score: float) -> list[dict]:
    """A person whose photos, taken together, look like the other gender."""
    given = int(evidence.given["gender"][idx[0]])
    other = 1 - given
    combined, models, agree = evidence.person("gender", person)
    if not models or combined[other] < min_score:
        return []
    p_other = evidence.probs["gender"][idx, other]
    return [suspect(person, "gender", GENDERS[given], GENDERS[other], combined[other],
                    f"{int((p_other > 0.5).sum())}/{len(idx)} images look {GENDERS[other]}",
                    f"mean calibrated P({GENDERS[other]}) {p_other.mean():.2f} over {len(idx)} images; "
                    + cleanlab_counts(evidence, idx, "gender") + expert_note(evidence, person), p_wrong=combined[other],
                    models=f"{agree}/{models}", wrong_by=evidence.wrong_by("gender", person))
            | FIX]


def expert_note(evidence: Evidence, person: str) -> str:
    """'; expert: P(female) 0.9312' where the outside expert judged the person."""
    found = evidence.expert.get(person)
    return "" if found is None else f"; expert: P({GENDERS[1]}) {found:.4f}"


def age_suspects(evidence: Evidence, person: str, idx: np.ndarray, min_score: float) -> list[dict]:
    """A person whose photos, taken together, look like another age group."""
    given = int(evidence.given["age"][idx[0]])
    combined, models, agree = evidence.person("age", person)
    if not models:
        return []
    best = int(combined.argmax())
    if best == given or combined[best] < min_score:
        return []
    years = int(evidence.images.at[idx[0], "age"])
    return [suspect(person, "age", years, nearest_age(years, best), 1 - combined[given],
                    f"images look {AGE_GROUPS[best]}, labelled {AGE_GROUPS[given]}",
                    "P(age group) " + ", ".join(f"{g} {p:.2f}" for g, p in zip(AGE_GROUPS, combined))
                    + f" over {len(idx)} images; " + cleanlab_counts(evidence, idx, "age"),
                    p_wrong=1 - combined[given], models=f"{agree}/{models}", wrong_by=evidence.wrong_by("age", person))]


def group_boundary(given: int, other: int) -> int:
    """The first year of the group next to `given` on `other`'s side: the boundary an age crosses."""
    return (YOUNG_BELOW, OLD_FROM)[given] if other > given else (YOUNG_BELOW, OLD_FROM)[given - 1]


def expert_age_suspects(evidence: Evidence, person: str, idx: np.ndarray, opinion: dict | None,
                        min_score: float = EXPERT_AGE_MIN_SCORE) -> list[dict]:
    """The outside expert puts the person's age EXPERT_AGE_MARGIN years or more across a group
    boundary, at EXPERT_AGE_CONFIDENCE or more, and the fold models lean the same way: a fix of the
    years to the expert's estimate (its own rows in --fixes-out)."""
    if opinion is None or opinion["status"] != "found" or opinion["age_confidence"] < EXPERT_AGE_CONFIDENCE:
        return []
    years, guess = int(evidence.images.at[idx[0], "age"]), int(opinion["age"])
    given, other = int(evidence.given["age"][idx[0]]), int(age_group(np.array([guess]))[0])
    verdict = evidence.verdict("age", person)
    if other == given or verdict is None or verdict[other] <= verdict[given]:
        return []
    boundary = group_boundary(given, other)
    margin = guess - boundary if other > given else boundary - guess
    if margin < EXPERT_AGE_MARGIN:
        return []
    share = float(verdict[other] / (verdict[other] + verdict[given]))  # the folds' lean, given one of the two
    if share < min_score:
        return []
    _, models, agree = evidence.person("age", person)
    return [suspect(person, "age", years, guess, share,
                    f"expert: {guess} years ({AGE_GROUPS[other]}), labelled {AGE_GROUPS[given]}",
                    f"{margin} years across {boundary}, age confidence {int(opinion['age_confidence'])}%; fold "
                    "models' P(age group) " + ", ".join(f"{g} {p:.2f}" for g, p in zip(AGE_GROUPS, verdict)),
                    p_wrong=share, models=f"{agree + 1}/{models + 1}",
                    wrong_by=[*evidence.wrong_by("age", person), "expert"]) | FIX]


def swap_suspects(evidence: Evidence, idx: np.ndarray, min_score: float) -> tuple[list[dict], set[int]]:
    """Two rows for the person's likeliest swapped pair of images, and the pair."""
    found = evidence.likeliest_swap(idx)
    if found is None or found[0] < min_score:
        return [], set()
    score, (i, j), per_set = found
    agree = f"{sum(v > 0.5 for v in per_set)}/{len(per_set)}"
    mask, path, pm = evidence.given["mask"], evidence.images["path"], evidence.probs["mask"]
    rows = [suspect(path[a], "mask", MASKS[mask[a]], MASKS[mask[b]], score,
                    f"{PurePath(path[a]).name} and {PurePath(path[b]).name} look swapped",
                    f"P({MASKS[mask[b]]}) {pm[a, mask[b]]:.2f} here, P({MASKS[mask[a]]}) {pm[b, mask[a]]:.2f} "
                    f"on the other; " + cleanlab_counts(evidence, np.array([a, b]), "mask"),
                    p_wrong=score, models=agree, wrong_by=evidence.mask_wrong_by((i, j), swapped=True)) | FIX
            for a, b in ((i, j), (j, i))]
    return rows, {i, j}


def lone_mask_suspects(evidence: Evidence, idx: np.ndarray, skip: set[int], min_score: float) -> list[dict]:
    """Images cleanlab flags whose mask looks wrong with no swap to explain it (for review only)."""
    rows = []
    mask, path, pm = evidence.given["mask"], evidence.images["path"], evidence.probs["mask"]
    for a in idx:
        if a in skip or not (evidence.flags["mask"][a] or evidence.flags18[a]):
            continue
        predicted = int(pm[a].argmax())
        if predicted != mask[a] and pm[a, predicted] >= min_score:
            votes = evidence.mask_votes(a)
            agree = f"{sum(p[mask[a]] < 0.5 for p in votes)}/{len(votes)}"
            rows.append(suspect(path[a], "mask", MASKS[mask[a]], MASKS[predicted], 1 - pm[a, mask[a]],
                                f"this image alone looks {MASKS[predicted]}",
                                f"cleanlab flags it (label quality {evidence.quality['mask'][a]:.2f}); "
                                "no other image of the person looks swapped with it",
                                p_wrong=1 - pm[a, mask[a]], models=agree,
                                wrong_by=evidence.mask_wrong_by((a,), swapped=False)))
    return rows


def label_suspects(images: pd.DataFrame, probs: np.ndarray, min_score: float = MIN_SCORE, top: int | None = None,
                   age_min_score: float = AGE_MIN_SCORE,
                   image_min_score: float = IMAGE_MIN_SCORE,
                   opinions: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Gender, age group and mask swaps per person, then lone odd masks per image; ranked by score.

    probs: (sets, n, 18) out-of-fold probabilities, NaN where a set does not predict an image
    (an (n, 18) array is one set). The `fix` column marks the rows that --fixes-out writes, `case`
    the error a row belongs to (a swap's two rows share one; the sheet draws by case). Suspects
    are kept from `min_score` on or, with `top`, the `top` likeliest label errors whatever their
    score (a swap's two rows are one error). `opinions` (contract/opinions.py): the outside expert's,
    one more evidence set for gender and the source of `expert_age_suspects`. Also returns, per column (gender, mask), the sum of
    P(label wrong) over every person's gender and likeliest swap: the errors the evidence expects.
    """
    probs = np.asarray(probs, float)
    evidence = Evidence(images, probs[None] if probs.ndim == 2 else probs)
    by_person = {} if opinions is None else {row["person"]: row for row in opinions.to_dict("records")}
    if opinions is not None:
        evidence.add_expert({p: row["p_female"] for p, row in by_person.items()})
    floor = 0.0 if top is not None else min_score
    rows, cases = [], []  # cases: one per error (a swap's two rows share the person's)
    for person, idx in evidence.persons.items():
        swap_rows, pair = swap_suspects(evidence, idx, 0.0)
        ages = expert_age_suspects(evidence, person, idx, by_person.get(person), max(floor, EXPERT_AGE_MIN_SCORE)) \
            or age_suspects(evidence, person, idx, max(floor, age_min_score))
        for row in [*gender_suspects(evidence, person, idx, 0.0), *ages, *swap_rows]:
            rows.append(row)
            cases.append(f"{person}/{row['column']}")
        for row in lone_mask_suspects(evidence, idx, pair, max(floor, image_min_score)):
            rows.append(row)
            cases.append(row["target"])
    every = rank(frame(rows, extra=("fix",)).assign(case=cases))
    fixable = every[every["fix"]].drop_duplicates("case")
    expected = {column: float(fixable.loc[fixable["column"] == column, "score"].sum()) for column in ("gender", "mask")}
    if top is None:
        kept = every[every["score"] >= min_score]
    else:
        kept = every[every["case"].isin(every["case"].drop_duplicates().head(top))]
    return kept.reset_index(drop=True), expected


def expert_gender_suspects(images: pd.DataFrame, opinions: pd.DataFrame, min_score: float = MIN_SCORE,
                           top: int | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """--expert without --oof: the expert alone judges gender (`flip_probability` of its log-odds,
    fitted on the labels with their flip rate). No age suspects: those need the fold models to agree.
    Returns what label_suspects does."""
    given_of = images.groupby("person", sort=True)["gender"].first()
    found = opinions[(opinions["status"] == "found") & opinions["person"].isin(given_of.index)]
    given = np.array([GENDERS.index(given_of[p]) for p in found["person"]], dtype=np.int64)
    female = found["p_female"].to_numpy(float)
    rows, cases = [], []
    if len(found):
        p_wrong = flip_probability(logit(female)[:, None], given)
        for k, opinion in enumerate(found.itertuples()):
            other = 1 - given[k]
            calls = bool(round(female[k]) != given[k])
            rows.append(suspect(opinion.person, "gender", GENDERS[given[k]], GENDERS[other], p_wrong[k],
                                f"expert: {opinion.gender} ({int(opinion.gender_confidence)}%)",
                                f"expert P(female) {female[k]:.4f} on {opinion.photo}",
                                p_wrong=p_wrong[k], models=f"{int(calls)}/1", wrong_by=["expert"] * calls)
                        | FIX)
            cases.append(f"{opinion.person}/gender")
    every = rank(frame(rows, extra=("fix",)).assign(case=cases))
    expected = {"gender": float(every["score"].sum()), "mask": 0.0}
    kept = every[every["score"] >= min_score] if top is None else every.head(top)
    return kept.reset_index(drop=True), expected


def rank(suspects: pd.DataFrame) -> pd.DataFrame:
    """Most likely first; stable for equal scores."""
    return suspects.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


# --- outputs --------------------------------------------------------------------------------------


def fixes_table(labels: pd.DataFrame) -> pd.DataFrame:
    """Person-level gender and mask-swap suggestions, and the expert's age suspects (audit --expert),
    as a fixes CSV (docs/formats.md) plus their score.

    The fold models' own age suspects and single-image masks stay in the suspects CSV only: age-group
    evidence cannot say how many years to write and mostly sits at a group boundary; a lone image is
    not judged against the person's other images. On drawn data both were nearly all false alarms
    (benchmarks/audit.py). The expert's age suspects carry its estimate of the years.
    """
    labels = labels[labels["fix"]] if "fix" in labels else labels.iloc[:0]
    return pd.DataFrame({"target": labels["target"], "column": labels["column"], "old": labels["given"],
                         "new": labels["suggested"], "reason": "audit: " + labels["reason"], "score": labels["score"]},
                        columns=FIXES_OUT_COLUMNS)


def person_images(target: str, images: pd.DataFrame) -> list[str]:
    """The images of a person (an id or a folder name), in the order of the competition's stems."""
    owned = images[(images["person"].astype(str) == target) | (images["folder"] == PurePath(target).name)]
    order = {stem: k for k, stem in enumerate(IMAGE_STEMS)}
    return owned.assign(order=owned["stem"].map(order)).sort_values("order", kind="stable")["path"].tolist()


def sheet_image(row: pd.Series, images: pd.DataFrame) -> str | None:
    """The image that shows a structural suspect best: the image itself, or the person's unmasked photo."""
    target = row["target"]
    if Path(target).is_file():
        return target
    owned = person_images(target, images)
    normal = [p for p in owned if PurePath(p).stem == "normal"]
    return (normal or owned or [None])[0]


def case_images(row: pd.Series, images: pd.DataFrame) -> list[str]:
    """What a reviewer needs to judge one suspect row: every photo of a person whose gender or age is
    doubted, the image itself for a mask, one image for a structural suspect."""
    judged = str(row.get("p_wrong", "")) not in ("", "nan")
    if judged and row["column"] in ("gender", "age"):
        return person_images(row["target"], images)
    file = sheet_image(row, images)
    return [file] if file else []


def sheet_tile(file: str, lines: Sequence[str], size: tuple[int, int, int]) -> np.ndarray | None:
    """One thumbnail with its caption lines below (None when the image cannot be read)."""
    tile_w, tile_h, text_h = size
    img = read_image(file)
    if img is None:
        return None
    scale = min(tile_w / img.shape[1], tile_h / img.shape[0])
    img = cv2.resize(img, (max(1, int(img.shape[1] * scale)), max(1, int(img.shape[0] * scale))),
                     interpolation=cv2.INTER_AREA)
    tile = np.full((tile_h + text_h, tile_w, 3), 255, np.uint8)
    x0 = (tile_w - img.shape[1]) // 2
    tile[: img.shape[0], x0: x0 + img.shape[1]] = img
    for k, line in enumerate(lines):
        cv2.putText(tile, as_text(line)[:25], (4, tile_h + 15 + 17 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return tile


def suspect_lines(row: pd.Series, expert: str | None = None) -> list[str]:
    """A suspect's caption: what it is, given -> suggested, how sure, and the expert's opinion (if any)."""
    target = PurePath(row["target"])
    head = [target.parent.name, f"{target.name}: {row['column']}"] if Path(row["target"]).is_file() \
        else [target.name, row["column"]]
    judged = str(row.get("p_wrong", "")) not in ("", "nan")
    return [*head, f"{row['given']} -> {row['suggested']}",
            f"P(wrong) {float(row['p_wrong']):.2f} {row['models']}" if judged else f"score {float(row['score']):.2f}",
            *([expert] if expert else [])]


def expert_captions(opinions: pd.DataFrame | None) -> dict[str, str]:
    """person -> 'expert: female 97% 34y' (or 'expert: no face'), the contact sheet's line."""
    if opinions is None:
        return {}
    return {row.person: f"expert: {row.gender} {int(row.gender_confidence)}% {int(row.age)}y" if row.status == "found"
            else "expert: no face" for row in opinions.itertuples()}


def draw_sheet(suspects: pd.DataFrame, images: pd.DataFrame, path: Path, top: int = 30,
               inputs: Inputs | None = None, experts: dict[str, str] | None = None) -> tuple[int, int]:
    """A PNG of the `top` first suspects (by `case` when the table has it: a swap's two rows are one),
    one suspect per line: every image it concerns (a doubted person's photos, both images of a swap),
    the first captioned with target, given -> suggested and P(wrong) (and `experts`' line for a doubted
    person's gender or age). Returns (suspects, images) drawn."""
    experts = experts or {}
    size, tile_w = (160, 200, 93 if experts else 76), 160
    cases = suspects["case"] if "case" in suspects else pd.Series(range(len(suspects)), index=suspects.index)
    chosen = list(dict.fromkeys(cases))[:top]
    strips = []
    for case in chosen:
        tiles = []
        for _, row in suspects[cases == case].iterrows():
            expert = experts.get(row["target"]) if row["column"] in ("gender", "age") else None
            for k, file in enumerate(case_images(row, images)):
                tile = sheet_tile(file, suspect_lines(row, expert) if k == 0 else [PurePath(file).name], size)
                if tile is not None:
                    tiles.append(tile)
        if tiles:
            strips.append(np.concatenate(tiles, axis=1))
    drawn = (len(strips), sum(strip.shape[1] // tile_w for strip in strips))
    if not strips:
        empty = np.full((size[1] + size[2], tile_w, 3), 255, np.uint8)
        cv2.putText(empty, "no suspects", (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        strips.append(empty)
    write_image(path, contact_sheet(strips, columns=1, gap=0), inputs=inputs)
    return drawn


SWAPPED = "pairs of images look swapped (two rows each)"


def summary(suspects: pd.DataFrame) -> Table:
    """Suspects counted by column and reason; a swap's two rows count once."""
    table = Table(title="audit: suspects by reason", title_justify="left")
    table.add_column("count", justify="right")
    table.add_column("column")
    table.add_column("reason")
    kinds = (suspects["reason"].str.replace(r"\(.*\)", "", regex=True)
             .str.replace(r"^\S+ and \S+ look swapped$", SWAPPED, regex=True)
             .str.replace(r"(?<![<>=-])\b\d+(/\d+)?\s+(of \d+\s+)?", "", regex=True).str.strip())
    reasons = suspects.assign(kind=kinds)
    for (column, kind), group in reasons.groupby(["column", "kind"], sort=False):
        table.add_row(str(len(group) // 2 if kind == SWAPPED else len(group)), column, kind)
    return table


def judged_table(images: pd.DataFrame, manifest: Path | None) -> pd.DataFrame:
    """The table whose labels are judged: the dataset's (train.csv), or a manifest's after fixes."""
    if manifest is None:
        return images
    table = read_manifest(manifest)
    table = table.assign(folder=[PurePath(p).parent.name for p in table["path"]],
                         stem=[PurePath(p).stem for p in table["path"]])
    # judge the manifest's labels, but show the dataset's own files on the sheet
    by_key = dict(zip(images["path"].map(image_key), images["path"]))
    table["path"] = [by_key.get(image_key(p), p) for p in table["path"]]
    return table


def weak_tasks(quality: dict[str, float]) -> list[str]:
    """The tasks whose out-of-fold F1 against the given labels is under WEAK_F1 (see there)."""
    return [task for task, floor in WEAK_F1.items() if quality[f"f1_{task}"] < floor]


def expected_line(expected: dict[str, float], quality: dict[str, float] | None = None) -> str:
    """How many gender and mask errors the evidence expects, and how far down a review should go;
    first a warning when the evidence is weak (`quality`: the predictions' own scores, `scores`)."""
    total = sum(expected.values())
    budget = max(1, round(2 * total))
    weak = weak_tasks(quality) if quality is not None else []
    warning = ""
    if weak:
        f1s = ", ".join(f"{task} {quality[f'f1_{task}']:.2f} (under {WEAK_F1[task]:.2f})" for task in weak)
        warning = (f"warning: weak evidence, the suspects are mostly the model's own mistakes: its out-of-fold F1 "
                   f"against these labels is {f1s}, macro F1 {quality['macro_f1']:.2f}, so train a better model "
                   "before trusting them; ")
    return (f"audit: {warning}the out-of-fold evidence expects about {total:.1f} wrong labels (the sum of P(label "
            f"wrong): gender {expected['gender']:.1f}, mask swaps {expected['mask']:.1f}); to review twice that: "
            f"--top {budget}")


def sheet_cases(suspects: pd.DataFrame, top: int | None) -> pd.DataFrame:
    """The suspects the sheet draws: the first SHEET_TILES cases, or with `top` the ranked cases down
    to the `top`-th label error (the review budget; structural suspects ranked among them too)."""
    if "case" not in suspects or suspects.empty:
        return suspects.head(top or SHEET_TILES)
    order = list(dict.fromkeys(suspects["case"]))
    if top is None:
        chosen = order[:SHEET_TILES]
    else:
        judged = set(suspects.loc[suspects["p_wrong"].astype(str) != "", "case"])
        errors = [case for case in order if case in judged][:top]
        chosen = order[:order.index(errors[-1]) + 1] if errors else order[:top]
    return suspects[suspects["case"].isin(chosen)]


def write_outputs(suspects: pd.DataFrame, labels: pd.DataFrame, judged: pd.DataFrame, inputs: Inputs,
                  data: Path, fixes_out: Path | None, sheet: Path | None, top: int | None,
                  expected: dict[str, float] | None, quality: dict[str, float] | None = None,
                  opinions: pd.DataFrame | None = None) -> None:
    """The contact sheet and the fixes CSV, when asked for, and the summary on stderr (with the
    errors the evidence expects and how strong it is, when there are label checks)."""
    if sheet is not None:
        chosen = sheet_cases(suspects, top)
        cases, tiles = draw_sheet(chosen, judged, sheet, top=len(chosen), inputs=inputs,
                                  experts=expert_captions(opinions))
        console.print(f"audit: contact sheet of {cases} suspects ({tiles} images) written to {sheet}")
    if fixes_out is not None:
        fixes = fixes_table(labels)
        write_csv(fixes, fixes_out, inputs=inputs)
        console.print(f"audit: {len(fixes)} label suggestions written to {fixes_out} "
                      f"(review them, then: maskkit split {data} --fixes {fixes_out})")
    shown = suspects.drop(columns="case", errors="ignore")
    console.print(summary(shown) if len(shown) else "audit: no suspects")
    if expected is not None:
        console.print(expected_line(expected, quality), markup=False, highlight=False)


EXPERT_RUN = "run"  # --expert run: the opinions computed here, not read from a file


def expert_opinions(expert: str | Path, images: pd.DataFrame) -> pd.DataFrame:
    """The outside expert's opinions of the dataset's persons: read (strictly) or computed now."""
    persons = dict(zip(images["person"].astype(str), images["folder"].astype(str)))
    if str(expert) == EXPERT_RUN:
        people = persons_of(images)
        table = opinions_table(compute(people, workers=1), [p for p, _, _ in people])
        opinions = check_opinions(table, Path(f"--expert {EXPERT_RUN}"), persons)
    else:
        opinions = read_opinions(expert, persons)
    found = int((opinions["status"] == "found").sum())
    console.print(f"audit: expert opinions on {len(opinions)} of {len(persons)} persons ({found} with a face)")
    return opinions


def run(data: Path, oof: Sequence[Path] = (), manifest: Path | None = None, fixes_out: Path | None = None,
        sheet: Path | None = None, out: Path | None = None, min_score: float | None = None,
        top: int | None = None, expert: str | Path | None = None) -> pd.DataFrame:
    """`maskkit audit`: suspects CSV to stdout or `out`; optional fixes CSV and contact sheet.

    `expert`: an opinions CSV of `maskkit expert`, or EXPERT_RUN to compute the opinions here.

    Label suspects from `min_score` on, or with `top` the `top` likeliest label errors (a review budget).
    """
    if top is not None and min_score is not None:
        raise MaskkitError(f"--top {top} and --min-score {min_score} both choose the label suspects; give one")
    if top is not None and top < 1:
        raise MaskkitError(f"--top {top}: must be at least 1")
    min_score = MIN_SCORE if min_score is None else min_score
    if not 0 <= min_score <= 1:
        raise MaskkitError(f"--min-score {min_score}: must be between 0 and 1")
    if fixes_out is not None and not oof and expert is None:
        raise MaskkitError("--fixes-out writes label suggestions, which need --oof "
                           "(out-of-fold predictions of maskkit train) or --expert")
    expert_file = None if expert is None or str(expert) == EXPERT_RUN else Path(expert)
    inputs = Inputs.of(data, [f for source in oof for f in files_in(source)], manifest, expert_file)
    inputs.check(out, header=SUSPECT_COLUMNS)
    inputs.check(fixes_out, header=FIXES_OUT_COLUMNS)
    inputs.check(sheet, magic=image_magic(sheet))
    root = layout.train_root(data)
    images, quirks = layout.read_train(root)
    quirks.report()
    judged = judged_table(images, manifest)
    labels, expected, quality = frame([]), None, None
    opinions = None if expert is None else expert_opinions(expert, images)
    if oof:
        covered, probs = join_oof(judged, read_oof(oof), ", ".join(map(str, oof)))
        labels, expected = label_suspects(covered, probs, min_score=min_score, top=top, opinions=opinions)
        quality = scores(covered["label"].to_numpy(), pooled(probs).argmax(axis=1))
    elif opinions is not None:
        labels, expected = expert_gender_suspects(judged, opinions, min_score=min_score, top=top)
    structural = structural_suspects(images, quirks.found, root / "images")
    structural["case"] = [f"structural {k}" for k in range(len(structural))]
    parts = [p for p in (structural, labels.drop(columns="fix", errors="ignore")) if len(p)]
    suspects = rank(pd.concat(parts, ignore_index=True)) if parts else frame([])
    write_outputs(suspects, labels, judged, inputs, data, fixes_out, sheet, top, expected, quality, opinions)
    suspects = suspects.drop(columns="case", errors="ignore")
    write_csv(suspects, out, inputs=inputs)
    return suspects
