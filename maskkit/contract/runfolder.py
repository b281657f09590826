"""The run folder (docs/formats.md, "Run folder"): what `train` writes under runs/NAME/ and what
`predict`, `cam`, `runs`, `audit`, `demo` and `train --resume` read back.

config.json (format 2) stores every training option once, under "options"; the top level holds
only what is derived (timm name, normalisation, crop, the manifest's hash and sizes, versions).
`read_config` returns one flat view for readers (options first, derived fields beside them).
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import atomic_path, examples, read_csv, write_csv
from maskkit.contract.manifest import file_sha256
from maskkit.options import INPUT_SIDE_RANGE, TrainOptions

CONFIG, MANIFEST, METRICS, BEST, LAST, VAL_PREDS = (
    "config.json", "manifest.csv", "metrics.csv", "best.pt", "last.pt", "val_preds.csv")
CONFUSION, CURVES = "confusion.png", "curves.png"
STEPS, TENSORBOARD = "steps.csv", "tb"  # engine/tracking.py: every step's loss, and --logger tensorboard's folder
AUG_PIPELINE = "aug.yaml"  # the copy of `--aug FILE.yaml` the run trains with (config.json: aug_file, aug_sha256)
TRAIN_BATCH = "train_batch.jpg"  # the first augmented training batch with its labels (engine/plots.py)
RUN_FILES = (CONFIG, MANIFEST, METRICS, BEST, LAST, VAL_PREDS, CONFUSION, CURVES, STEPS, AUG_PIPELINE, TRAIN_BATCH)
CONFIG_FORMAT = 2
METRIC_COLUMNS = ("epoch", "seconds", "lr", "train_loss", "val_loss", "val_f1", "val_acc",
                  "f1_mask", "f1_gender", "f1_age")
# The options a reader needs to rebuild the model, which the flat view lifts out of "options".
MODEL_FIELDS = ("backbone", "heads", "img_size", "dropout", "age_weight", "old_age", "fold", "seed")
SCORED = ("epoch", "val_f1", "f1_mask", "f1_gender", "f1_age")  # numbers in every metrics row (runs, best_row)
NOT_A_RUN = "give a run folder written by maskkit train"


def write_json(data: Mapping, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def save_checkpoint(obj: Mapping, path: str | Path) -> None:
    """torch.save to a temporary name, then rename (a kill leaves the old file intact)."""
    import torch  # here, not at the top: runs, score and vote read run folders without torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def config_view(stored: Mapping) -> dict:
    """The flat view of a stored config: the stored keys, each model field (MODEL_FIELDS) "options"
    holds, and `age_regression` (age_weight > 0)."""
    options = stored["options"]
    view = {**stored, **{key: options[key] for key in MODEL_FIELDS if key in options}}
    view["age_regression"] = float(view.get("age_weight") or 0.0) > 0
    return view


def stored_config(view: Mapping) -> dict:
    """What config.json holds (format 2): the view without the fields "options" already stores."""
    stored = {k: v for k, v in view.items() if k not in MODEL_FIELDS and k != "age_regression"}
    stored["format"] = CONFIG_FORMAT
    return stored


def read_config(run_dir: str | Path) -> dict:
    """RUN/config.json as its flat view (`config_view`). One-line MaskkitError when the folder or
    file is missing, or the file is not a maskkit config."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise MaskkitError(f"{run_dir}: run folder not found ({NOT_A_RUN})")
    if not path.is_file():
        raise MaskkitError(f"{run_dir}: no config.json (not a run folder written by maskkit train)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MaskkitError(f"{path}: not valid JSON ({exc}); re-create the run with maskkit train") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("options"), dict):
        raise MaskkitError(f"{path}: not a maskkit run config (a JSON object with \"options\"); "
                           "re-create the run with maskkit train")
    if raw.get("format") != CONFIG_FORMAT:
        raise MaskkitError(f"{path}: config format {raw.get('format', 1)} is not the format {CONFIG_FORMAT} this "
                           "maskkit reads; re-create the run with maskkit train")
    TrainOptions.from_dict(raw["options"], source=f"{path}: options", ranges=False)  # each value of its type
    view = config_view(raw)
    missing = [k for k in ("backbone", "img_size") if k not in view]
    if missing:
        raise MaskkitError(f"{path}: missing {', '.join(missing)} (re-create the run with maskkit train)")
    check_geometry(view, path)
    check_normalisation(view, path)
    return view


def aug_pipeline(run_dir: str | Path, view: Mapping) -> str | None:
    """The run's copy of its `--aug FILE.yaml` (RUN/aug.yaml) as a path to train with, None for a
    preset; a copy that is missing or changed since the run started (aug_sha256) is one line."""
    if not view.get("aug_file"):
        return None
    path = Path(run_dir) / str(view["aug_file"])
    if not path.is_file():
        raise MaskkitError(f"{path}: missing (the copy of --aug {view['options'].get('aug')} this run trains with); "
                           "restore it, or start a new run")
    if file_sha256(path) != view.get("aug_sha256"):
        raise MaskkitError(f"{path}: changed since the run started (its sha256 differs from config.json's aug_sha256); "
                           "restore it, or start a new run")
    return str(path)


def check_normalisation(view: Mapping, path: Path) -> None:
    """mean and std (when stored) are three finite numbers each, every std above 0: otherwise every
    image normalises to NaN or inf and predict would write empty probabilities."""
    for key in ("mean", "std"):
        if key not in view:
            continue
        values = view[key]
        ok = (isinstance(values, list) and len(values) == 3
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))
        if ok and key == "std":
            ok = all(v > 0 for v in values)
        if not ok:
            rule = "three finite numbers above 0" if key == "std" else "three finite numbers"
            raise MaskkitError(f"{path}: {key} {json.dumps(values)} must be {rule} (the backbone's "
                               "normalisation, e.g. [0.229, 0.224, 0.225]); restore config.json or re-train the run")


def check_geometry(view: dict, path: Path) -> None:
    """config.json's img_size (H, W: whole numbers in INPUT_SIDE_RANGE) and crop (two fractions in
    (0, 1]), as train would have written them; one line naming the field otherwise."""
    low, high = INPUT_SIDE_RANGE
    size, crop = view["img_size"], view.get("crop", [1.0, 1.0])
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and low <= v <= high for v in size)):
        raise MaskkitError(f"{path}: img_size {size!r} is not two whole numbers in {low}..{high} (height, width); "
                           "restore the file or re-create the run with maskkit train")
    if not (isinstance(crop, list) and len(crop) == 2
            and all(type(v) in (int, float) and 0 < v <= 1 for v in crop)):
        raise MaskkitError(f"{path}: crop {crop!r} is not two fractions in (0, 1] (height, width); "
                           "restore the file or re-create the run with maskkit train")


def saved_options(config: Mapping) -> dict:
    """The training options of a config view (its "options")."""
    options = config.get("options")
    if not isinstance(options, dict) or not options:
        raise MaskkitError("config.json holds no training options (not a maskkit train run); "
                           "start the run again with --overwrite")
    return dict(options)


def require(run_dir: str | Path, *names: str) -> None:
    """One-line error naming the first missing file of a run folder (and what to do)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MaskkitError(f"{run_dir}: run folder not found ({NOT_A_RUN}, e.g. runs/NAME)")
    for name in names:
        if (run_dir / name).is_file():
            continue
        if name == BEST:
            raise MaskkitError(f"{run_dir}: no best.pt (training has not finished an epoch; "
                               f"resume it with maskkit train --resume {run_dir})")
        if name == LAST:
            raise MaskkitError(f"{run_dir}: no last.pt to resume from (start the run again with --overwrite)")
        raise MaskkitError(f"{run_dir / name}: missing ({NOT_A_RUN})")


def read_best_state(run_dir: str | Path) -> dict:
    """The model state dict of RUN/best.pt ({"model": state, "epoch", "val_f1"} or a plain state dict)."""
    import torch  # see save_checkpoint

    path = Path(run_dir) / BEST
    require(run_dir, BEST)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MaskkitError(f"{path}: unreadable checkpoint ({type(exc).__name__}); re-train or resume the run") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise MaskkitError(f"{path}: holds no model state dict (re-train the run)")
    broken = [name for name, value in state.items()
              if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise MaskkitError(f"{path}: weights hold NaN or inf ({examples(broken)}); the checkpoint is broken: "
                           "re-train the run or restore best.pt")
    return dict(state)


LAST_KEYS = ("epoch", "progress", "model", "ema", "optimizer", "scheduler", "scaler", "rng")


def read_last(run_dir: str | Path) -> dict:
    """Everything RUN/last.pt holds for resuming (optimizer, schedule, RNG states...). Loaded with
    `weights_only=True`: tensors, lists and numbers only, so a planted object never runs; a last.pt
    of an older layout (pickled RNG objects) or one missing a state is refused in one line."""
    import torch  # see save_checkpoint

    path = Path(run_dir) / LAST
    require(run_dir, LAST)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise MaskkitError(f"{path}: holds objects other than tensors, lists and numbers (written by an older "
                           "maskkit, or not by maskkit); it is not loaded: start a new run") from None
    except Exception as exc:
        raise MaskkitError(f"{path}: unreadable checkpoint ({type(exc).__name__}); start a new run") from None
    missing = [key for key in LAST_KEYS if not isinstance(saved, Mapping) or key not in saved]
    if missing:
        raise MaskkitError(f"{path}: not a maskkit last.pt (no {', '.join(missing)}); start a new run")
    return dict(saved)


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """RUN/metrics.csv (empty with the contract's columns when no epoch finished)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    fix = "metrics.csv is written by maskkit train; re-create the run or restore the file"
    metrics = read_csv(path, METRIC_COLUMNS, fix=fix)
    # A row without validation (`train --fold all`) leaves every score empty; otherwise all are numbers.
    scores = [c for c in SCORED if c != "epoch"]
    no_validation = metrics[scores].isna().all(axis=1)
    for column in SCORED:
        values = pd.to_numeric(metrics[column], errors="coerce")
        bad = values.isna() & (True if column == "epoch" else ~no_validation)
        if bad.any():
            lines = [str(i + 2) for i in metrics.index[bad]]
            raise MaskkitError(f"{path}: {column} is not a number on line {examples(lines)} ({fix})")
        metrics[column] = values
    return metrics.assign(epoch=metrics["epoch"].astype(int))


def append_metrics(run_dir: str | Path, row: Mapping) -> None:
    """Add one epoch's row, replacing rows of that epoch or later (a resumed epoch is written again)."""
    path = Path(run_dir) / METRICS
    new = pd.DataFrame([dict(row)]).reindex(columns=list(METRIC_COLUMNS))
    old = read_metrics(run_dir)
    if len(old):
        new = pd.concat([old[old["epoch"] < row["epoch"]], new], ignore_index=True)
    write_csv(new, path)


def best_row(metrics: pd.DataFrame) -> pd.Series | None:
    """The best epoch's row by val macro F1 (the first of equal ones, as training selects); the
    last row of a run without validation (`train --fold all`: empty val columns, best.pt = final)."""
    if not len(metrics):
        return None
    val_f1 = pd.to_numeric(metrics["val_f1"])
    if val_f1.isna().all():
        return metrics.iloc[-1]
    return metrics.loc[val_f1.idxmax()]


def prepare_run_dir(out: str | Path, name: str, overwrite: bool) -> Path:
    """runs/<name>/, refusing to replace a run unless `overwrite` (then its files are removed first)."""
    run_dir = Path(out) / name
    if run_dir.exists() and not run_dir.is_dir():
        raise MaskkitError(f"{run_dir}: exists and is not a folder (choose another --name or --runs-dir)")
    existing = [f for f in RUN_FILES if (run_dir / f).exists()]
    if existing and not overwrite:
        raise MaskkitError(
            f"{run_dir}: a run already exists here; continue it with --resume {run_dir}, "
            "choose another --name, or replace it with --overwrite"
        )
    for file in existing:
        (run_dir / file).unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def remove_run(run_dir: str | Path) -> None:
    """Remove the files a new run wrote before it could start (and the folder when that empties it)."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if (run_dir / TENSORBOARD).is_dir() and not (run_dir / TENSORBOARD).is_symlink():
        shutil.rmtree(run_dir / TENSORBOARD)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
