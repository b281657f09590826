"""`maskkit calibrate OOF.csv... -o calib.json`: fit, on pooled out-of-fold predictions (`runs --oof-out`),
the decision that maximises macro F1 with few parameters (engine/decision.py): two log-biases on the age
groups, the soft-vote weights when several recipes' OOF files are given, and 18 class biases only with
`--biases`. The fit never lowers the OOF macro F1 it was fitted on; the before/after F1 of each task
goes to stderr and into calib.json (contract/decision.py), which `predict` and `vote` apply.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.table import Table

from maskkit import __version__
from maskkit.contract.decision import SCORE_KEYS, Decision, Recipe
from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console, examples
from maskkit.contract.labels import AGE_GROUPS
from maskkit.contract.oof import read_oof
from maskkit.contract.streams import is_stream, read_input
from maskkit.engine.decision import fit, held_out, soft_vote
from maskkit.engine.metrics import scores


def read_recipes(files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(recipes, rows, 18) probabilities in the first file's row order, the rows' true classes and folds
    (the first file's), and each file's sha256; every file must hold the same images with the same labels."""
    probs, hashes, first = [], [], None
    for path in files:
        data = read_input(path) if is_stream(path) else None
        frame, p = read_oof(path, data=data)
        digest = hashlib.sha256(data if data is not None else path.read_bytes()).hexdigest()
        if digest in hashes:
            raise MaskkitError(f"{path}: the same out-of-fold predictions as {files[hashes.index(digest)]}; "
                               "give each recipe's file once")
        hashes.append(digest)
        if first is None:
            first, order = frame, frame["ImageID"]
        positions = first_positions(frame, order, path, files[0])
        if not np.array_equal(frame["label"].to_numpy()[positions], first["label"].to_numpy()):
            wrong = frame["label"].to_numpy()[positions] != first["label"].to_numpy()
            raise MaskkitError(f"{path}: {int(wrong.sum())} images with another label than in {files[0]} "
                               f"({examples(order[wrong].tolist())}); calibrate recipes trained on one manifest")
        probs.append(p[positions])
    return np.stack(probs), first["label"].to_numpy(), first["fold"].astype(str).to_numpy(), hashes


def first_positions(frame, order, path: Path, reference: Path) -> np.ndarray:
    """Row positions of `order`'s ImageIDs in `frame`; one line when the two files hold other images."""
    positions = frame.set_index("ImageID").index.get_indexer(order)
    if (positions >= 0).all() and len(frame) == len(order):
        return positions
    missing = order[positions < 0].tolist()
    extra = frame.loc[~frame["ImageID"].isin(order), "ImageID"].tolist()
    raise MaskkitError(f"{path}: {len(missing) + len(extra)} images differ from {reference} "
                       f"(e.g. {examples((missing + extra)[:3])}); every OOF file must pool the same manifest's folds")


def summary(before: dict, after: dict, unseen: dict | None, images: int, recipes: int) -> Table:
    """before / after (fitted on all rows) / held out (each fold decided by the fit on the other folds)."""
    title = f"OOF macro F1 of {images} images" + (f", soft vote of {recipes} recipes" if recipes > 1 else "")
    table = Table(title=title + ("; held out: each fold decided by the fit on the other folds" if unseen else ""),
                  title_justify="left")
    for column in ("score", "before", "after", *(["held out"] if unseen else [])):
        table.add_column(column, justify="left" if column == "score" else "right")
    for key in SCORE_KEYS:
        table.add_row(key, f"{before[key]:.4f}", f"{after[key]:.4f}", *([f"{unseen[key]:.4f}"] if unseen else []))
    return table


def check_out(out: Path | None, inputs: Inputs) -> None:
    """-o may replace a calibration file, nothing else (and never an input)."""
    inputs.check(out, magic=b"{")
    if out is not None and str(out) != "-" and Path(out).is_file() and not is_stream(out):
        try:
            Decision.read(out)
        except MaskkitError:
            raise MaskkitError(f"{out}: exists and is not a calibration file; maskkit only replaces its own kind of "
                               "output: delete it or choose another path") from None


def run(files: Sequence[str | Path], out: str | Path | None = None, biases: bool = False) -> Decision:
    """Fit the decision on the OOF `files` (one per recipe) and write calib.json to `out` (stdout when None)."""
    if not files:
        raise MaskkitError("calibrate: no out-of-fold files (pass what maskkit runs --oof-out writes)")
    files = [Path(f) for f in files]
    check_out(out, Inputs.of(files))
    probs, labels, folds, hashes = read_recipes(files)
    equal = soft_vote(probs, np.ones(len(files)))
    found = fit(probs, labels, biases=biases)
    decision = Decision(
        recipes=tuple(Recipe(str(f), h, float(w)) for f, h, w in zip(files, hashes, found.weights)),
        age_bias=tuple(float(v) for v in found.age_bias),
        class_bias=tuple(float(v) for v in found.class_bias) if found.class_bias is not None else None,
        images=len(labels), before={}, after={}, maskkit=__version__)
    before = scores(labels, equal.argmax(axis=1))
    after = scores(labels, decision.apply(soft_vote(probs, decision.weights())).argmax(axis=1))  # as vote applies it
    unseen = held_out(probs, labels, folds, biases=biases)
    unseen = scores(labels, unseen) if unseen is not None else None
    decision = replace(decision, before={k: round(before[k], 6) for k in SCORE_KEYS},
                       after={k: round(after[k], 6) for k in SCORE_KEYS},
                       held_out={k: round(unseen[k], 6) for k in SCORE_KEYS} if unseen else None)
    console.print(summary(before, after, unseen, len(labels), len(files)))
    if len(files) > 1:
        for f, p, w in zip(files, probs, found.weights):
            console.print(f"{f}: OOF macro F1 {scores(labels, p.argmax(axis=1))['macro_f1']:.4f} alone, "
                          f"vote weight {w:g}", markup=False, highlight=False)
    shifts = ", ".join(f"{g} {b:+.2f}" for g, b in zip(AGE_GROUPS[1:], found.age_bias[1:]))
    console.print(f"age-group log-biases (against {AGE_GROUPS[0]}): {shifts}; class biases: "
                  + ("fitted" if found.class_bias is not None else "off (--biases fits them)"),
                  markup=False, highlight=False)
    decision.write(out)
    if out is not None and str(out) != "-":
        console.print(f"{out}: the decision for predict/vote --calibration", markup=False, highlight=False)
    return decision
