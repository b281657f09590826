"""`maskkit val RUN [MANIFEST]`: re-score a run's best.pt on labelled images (docs/formats.md, "Val output").

Without MANIFEST, the run's own validation fold: the rows of RUN/manifest.csv (the manifest it
trained on, byte for byte) in its fold, so on the same weights and images it gives the best epoch's
val_f1 of metrics.csv again (a `--fold all` run has no such fold and is refused). With MANIFEST (a
manifest CSV, or DATA/train as `split` reads it), every labelled image in it; images the run
trained on are counted in a warning (that part of the score is not out-of-fold). The images go
through the same inference as `predict` (engine/inference.py, `--tta` included); stdout gets the
Score output row of `score` (stderr its tables), `-o FILE` the predictions keyed like val_preds.csv:
ImageID (the manifest's path), ans, p0..p17, person, label.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console
from maskkit.contract.layout import load_train
from maskkit.contract.manifest import check_images_exist, file_sha256, read_manifest
from maskkit.contract.predictions import prediction_frame, prediction_header, write_predictions
from maskkit.contract.runfolder import BEST, MANIFEST, read_config, require
from maskkit.engine.devices import default_workers, resolve_device
from maskkit.engine.inference import ensemble_probs, torch_member
from maskkit.engine.metrics import print_scores, score_row, write_score_row
from maskkit.options import ALL_FOLDS

VAL_PREDS_HEADER = [*prediction_header(), "person", "label"]


def run_fold(run_dir: Path, config: dict) -> tuple[pd.DataFrame, Path]:
    """The run's validation rows of the manifest it trained on (RUN/manifest.csv), and that file."""
    if config.get("fold") == ALL_FOLDS:
        raise MaskkitError(f"{run_dir}: trained with --fold all, so it has no validation fold to re-score; "
                           "give a labelled MANIFEST (maskkit val RUN other.csv) or val a fold run")
    source = run_dir / MANIFEST
    require(run_dir, MANIFEST)
    stored = config.get("manifest_sha256")
    if stored and file_sha256(source) != stored:
        raise MaskkitError(f"{source}: changed since the run trained (sha256 differs from config.json); "
                           "restore it, or give the manifest to score on as MANIFEST")
    manifest = read_manifest(source)
    rows = manifest[manifest["fold"] == config.get("fold")].reset_index(drop=True)
    if rows.empty:
        raise MaskkitError(f"{source}: no rows in the run's fold {config.get('fold')}; give a MANIFEST to score on")
    return rows, source


def labelled_rows(source: Path) -> pd.DataFrame:
    """path, person, label of every image of a manifest CSV or of DATA/train (as split lists them)."""
    if source.is_dir():
        return load_train(source)
    return read_manifest(source)


def trained_on(run_dir: Path, config: dict, paths: pd.Series) -> int:
    """How many of `paths` the run trained on (by absolute path; 0 when RUN/manifest.csv is unreadable)."""
    try:
        manifest = read_manifest(run_dir / MANIFEST)
    except MaskkitError:
        return 0
    fold = config.get("fold")
    trained = manifest["path"] if fold == ALL_FOLDS else manifest.loc[manifest["fold"] != fold, "path"]
    seen = {os.path.abspath(p) for p in trained}
    return int(sum(os.path.abspath(p) in seen for p in paths))


def run(run_dir: str | Path, manifest: str | Path | None = None, tta: str = "none", out: str | Path | None = None,
        batch_size: int = 64, device: str = "auto", workers: int | None = None, show_progress: bool | None = None,
        quiet: bool = False, header: bool = True) -> dict:
    """Score RUN's best.pt on its validation fold (or on `manifest`); the Score output row to stdout
    (without `header`: the row alone), its tables and notes on stderr unless `quiet` (warnings
    always), the predictions to `out`.
    Returns the row. torch's threads are the caller's."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    require(run_dir, BEST)
    if out is not None and str(out) == "-":
        raise MaskkitError("-o -: stdout gets the score row; name a file for the predictions (-o preds.csv)")
    if manifest is None:
        rows, source = run_fold(run_dir, config)
        where = f"fold {config['fold']} of {source}"
    else:
        source = Path(manifest)
        rows, where = labelled_rows(source), str(source)
        seen = trained_on(run_dir, config, rows["path"])
        if seen:
            console.print(f"warning: {seen} of {len(rows)} images of {source} are in {run_dir}'s training folds: "
                          "the score is not out-of-fold (optimistic)", markup=False, highlight=False)
    check_images_exist(rows, str(source))
    paths = rows["path"].astype(str).tolist()
    inputs = Inputs.of(run_dir, source, paths)
    inputs.check(out, header=VAL_PREDS_HEADER)
    torch_device = resolve_device(device)
    member = torch_member(str(run_dir), torch_device)
    if not quiet:
        console.print(f"val: {run_dir} on {len(rows)} images of {rows['person'].nunique()} persons ({where})"
                      + (", --tta flip" if tta == "flip" else ""), markup=False, highlight=False)
    workers = default_workers(torch_device) if workers is None else workers
    probs = ensemble_probs([member], paths, tta, batch_size, workers, torch_device, show_progress)
    frame = prediction_frame(paths, probs).assign(person=rows["person"].astype(str).to_numpy(),
                                                  label=rows["label"].astype(int).to_numpy())
    row = score_row(run_dir, frame["label"].to_numpy(), frame["ans"].to_numpy())
    if not quiet:
        print_scores(row, frame["label"].to_numpy(), frame["ans"].to_numpy())
    if out is not None:
        write_predictions(frame, out, inputs=inputs)
        if not quiet:
            console.print(f"val: {len(frame)} predictions written to {out}", markup=False, highlight=False)
    write_score_row(row, header=header)
    return row
