"""`maskkit train`: one fold of a person-grouped manifest -> a run folder (docs/formats.md, "Run folder").

This module keeps what timm's train.py `main()` keeps around the training: the run folder's setup
(config.json, manifest.csv), resume, and the lines printed before and after. The epoch loop is
engine.trainer's Trainer; engine.build builds the data and the optimisation from the options,
engine.checkpoint's RunKeeper records each epoch in the run folder, the step loops live in
engine.loop, run control in engine.runtime, the run folder's files in contract.runfolder.

Reproducibility: everything random is seeded from `--seed`: the model's initialisation, the order
and augmentation of every epoch (drawn from (seed, epoch) by the sampler, per item by the dataset),
cutmix (a generator saved in last.pt). last.pt is written at every epoch end and, on Ctrl-C, at the
step reached, so `--resume` continues exactly where training stopped: on the CPU, an interrupted
then resumed run ends with the same weights as an uninterrupted one.

Resume never ignores an option: one that differs from config.json (other than RUNTIME_OPTIONS) is
refused, naming each difference. A larger `--epochs` extends the run: the schedule is re-planned
for the new total and continues from the step reached, so every step after the resume has the
learning rate of a run planned for the new total from the start (the steps before it had the old
plan's, so the weights differ from such a run). Nor does it ignore where the run is or what it
trained on: a `--name`, `--runs-dir` or SOURCE given with `--resume` must name that run's folder and
its manifest (`check_resume_target`, `check_resume_source`). Over 400 lines: those checks sit beside
the resume they guard.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import albumentations
import cv2
import numpy as np
import pandas as pd
import sklearn
import timm
import torch
import torchvision

from maskkit import __version__
from maskkit.contract import runfolder
from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.files import Inputs, WriteError, atomic_path, console, examples, folder_lock, remove_stale_temps, write_csv
from maskkit.contract.layout import load_train
from maskkit.contract.paths import run_name
from maskkit.contract.manifest import check_images_exist, file_sha256, read_manifest, validation_folds
from maskkit.data.fingerprints import strange_images
from maskkit.contract.streams import is_stream, read_input
from maskkit.data.folds import make_manifest
from maskkit.data.loader import image_size
from maskkit.data.pseudo import images_root, pseudo_rows
from maskkit.data.presets import load_pipeline, resolve_crop
from maskkit.engine.build import skipped_rows, training_rows
from maskkit.engine.devices import resolve_device, use_threads
from maskkit.engine.distributed import Distributed, env_rank
from maskkit.engine.heads import AGE_HEAD_KINDS
from maskkit.engine.models import check_backbone, model_defaults
from maskkit.engine.runtime import deterministic
from maskkit.engine.tracking import logger_module
from maskkit.engine.trainer import Interrupted, Trainer
from maskkit.options import MACHINE_OPTIONS, SEED, TrainOptions, is_aug_file, parse_crop, resolve_backbone

AUTO_FOLDS, AUTO_SPLIT_SEED = 5, SEED  # the split made on the fly from a dataset folder
# Options that may differ when resuming (they change where and how fast, not what is learned).
RUNTIME_OPTIONS = MACHINE_OPTIONS


# --- the data ----------------------------------------------------------------------------------

def manifest_from_folder(data: str | Path) -> pd.DataFrame:
    """The 5-fold person split (seed 42) of a dataset folder, made on the fly."""
    return make_manifest(load_train(data), AUTO_FOLDS, AUTO_SPLIT_SEED, source=str(data))


def load_source(source: str | Path) -> tuple[pd.DataFrame, bytes | None]:
    """(manifest, its bytes): a manifest CSV (`-` or another stream included) read once, or the
    on-the-fly split of a dataset folder (bytes None)."""
    if Path(source).is_dir():
        return manifest_from_folder(source), None
    if not is_stream(source) and not Path(source).exists():
        raise MaskkitError(f"{source}: not found (give a manifest CSV from maskkit split, or DATA/train)")
    data = read_input(source)
    return read_manifest(source, data=data), data


def load_pseudo(options: TrainOptions, source: str | Path | None, manifest: pd.DataFrame,
                config: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """The manifest with the pseudo-labelled rows of `--pseudo` added (data/pseudo.py), and what
    config.json records of them (`config`: a resumed run's, whose file must not have changed)."""
    if options.pseudo is None:
        return manifest, {}
    preds = Path(options.pseudo)
    if is_stream(preds) or not preds.is_file():
        raise MaskkitError(f"--pseudo {preds}: not a file (give the prediction CSV of maskkit predict or vote --soft --probs; "
                           "config.json records its sha256)")
    digest = file_sha256(preds)
    if config is not None and digest != config.get("pseudo_sha256"):
        raise MaskkitError(f"{preds}: changed since the run started (its sha256 differs from config.json's "
                           "pseudo_sha256); restore it, or start a new run")
    images = (config or {}).get("pseudo_data") or options.pseudo_data or images_root(source or "", manifest)
    if images is None:
        raise MaskkitError(f"--pseudo {preds}: which images did it predict? pass --pseudo-data DATA/eval")
    rows, total = pseudo_rows(preds, images, options.pseudo_min, options.old_age)
    if rows.empty:
        raise MaskkitError(f"--pseudo-min {options.pseudo_min:g}: none of the {total} images of {preds} is that "
                           "confident in every task; lower it, or drop --pseudo")
    trained = {str(Path(p).resolve()) for p in manifest["path"]}
    overlap = [p for p in rows["path"] if str(Path(p).resolve()) in trained]
    if overlap:
        raise MaskkitError(f"--pseudo {preds}: {len(overlap)} of its images are in the manifest ({examples(overlap)}), "
                           "so a validation image could train; pseudo-label test images only")
    if config is None:
        console.print(f"pseudo-labels: {len(rows)} of the {total} images of {preds} reach --pseudo-min "
                      f"{options.pseudo_min:g} in every task; they train in every fold (sampling weight "
                      f"{options.pseudo_weight:g})", markup=False, highlight=False)
    info = {"pseudo_sha256": digest, "pseudo_data": str(images), "pseudo_images": len(rows), "pseudo_predicted": total}
    return pd.concat([manifest, rows], ignore_index=True), info


# --- the run folder's config ---------------------------------------------------------------------

def package_versions() -> dict[str, str]:
    return {"maskkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "albumentations": albumentations.__version__, "opencv": cv2.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "scikit-learn": sklearn.__version__}


def image_shape(manifest: pd.DataFrame, sample: int = 25) -> tuple[int, int]:
    """(width, height) of the dataset's images: the median over the first readable headers of
    `sample` images (unreadable ones are left to the loader, which names them)."""
    sizes = []
    for path in manifest["path"].head(sample):
        try:
            sizes.append(image_size(path))
        except Exception:  # noqa: BLE001 - PIL raises several types for a broken header
            continue
    if not sizes:
        raise MaskkitError(f"{manifest['path'].iloc[0]}: the first {sample} training images are unreadable "
                           "(check the files, or pass --crop full/competition)")
    sizes = np.array(sizes)
    return int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1]))


def build_config(options: TrainOptions, manifest_path: Path, source: str, manifest: pd.DataFrame) -> dict:
    """config.json, format 2: the options once, plus what is derived from them and the data
    (the centre crop `--crop auto` chose from the images' shape, which predict and cam reuse).
    Returned as the view `runfolder.read_config` gives (what is written is `stored_config` of it)."""
    defaults = model_defaults(options.backbone)
    train_rows = training_rows(manifest, options)
    trained = train_rows & ~skipped_rows(manifest, options)  # --drop-ages-mode skip: the band's persons do not train
    stored = {
        "format": runfolder.CONFIG_FORMAT,
        "options": options.to_dict(),
        "timm_name": resolve_backbone(options.backbone),
        "mean": list(defaults["mean"]),
        "std": list(defaults["std"]),
        "crop": list(parse_crop(options.crop) or resolve_crop("auto", image_shape(manifest))),
        "source": source,
        "manifest": runfolder.MANIFEST,
        "manifest_sha256": file_sha256(manifest_path),
        "train_images": int(trained.sum()),
        "val_images": int((~train_rows).sum()),
        "train_persons": int(manifest.loc[trained, "person"].nunique()),
        "val_persons": int(manifest.loc[~train_rows, "person"].nunique()),
        "versions": package_versions(),
        "command": sys.argv,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return runfolder.config_view(stored)


# --- entry point -------------------------------------------------------------------------------

def _check_new_run(source: str | Path, options: TrainOptions, manifest: pd.DataFrame) -> None:
    folds = validation_folds(manifest)
    if not options.all_folds and options.fold not in folds:
        raise MaskkitError(f"--fold {options.fold}: {source} has folds {examples(folds, 10)}; pick one of them, "
                           "or all (a full-data model)")
    n_train = int(training_rows(manifest, options).sum())
    if n_train == 0:
        raise MaskkitError(f"{source}: nothing left to train on outside fold {options.fold}")
    n_train -= int((training_rows(manifest, options) & skipped_rows(manifest, options)).sum())
    if n_train == 0:
        raise MaskkitError(f"--drop-ages {options.drop_ages}: --drop-ages-mode skip leaves no training image in "
                           f"{source}; narrow the band or use --drop-ages-mode loss")
    if n_train < options.batch_size:
        raise MaskkitError(f"--batch-size {options.batch_size}: larger than the {n_train} training images; use a smaller one")
    check_images_exist(manifest, str(source))
    _warn_strange_images(source, manifest)


def _warn_strange_images(source: str | Path, manifest: pd.DataFrame) -> None:
    """One line when training images are tiny, oddly shaped or not the format their name says."""
    strange = strange_images(manifest["path"])
    if strange:
        path, kind = strange[0]
        console.print(f"warning: {len(strange)} strange training image(s) in {source}, first {path} ({kind}); "
                      "they are used as they are: maskkit audit lists them all", markup=False, highlight=False)


def _new_run(source: str | Path, options: TrainOptions, runs_dir: Path, name: str | None, overwrite: bool):
    """Check everything, then write the run folder's manifest.csv and config.json."""
    options.check()
    check_backbone(options.backbone, options.img_size)  # a family that cannot take this size: before any file
    logger_module(options)
    resolve_device(options.device)
    manifest, data = load_source(source)
    made_here = data is None
    _check_new_run(source, options, manifest)
    pipeline = _aug_file_bytes(options)
    trained, pseudo = load_pseudo(options, source, manifest)
    run_dir = runfolder.prepare_run_dir(Path(runs_dir), name or options.run_name, overwrite)
    try:  # the folder holds no run files now: what fails from here leaves none
        if made_here:
            write_csv(manifest, run_dir / runfolder.MANIFEST)
        else:  # byte for byte, so its sha256 names the user's file
            with atomic_path(run_dir / runfolder.MANIFEST) as tmp:
                tmp.write_bytes(data)
        config = {**build_config(options, run_dir / runfolder.MANIFEST, str(source), manifest), **pseudo}
        if pipeline is not None:  # the run trains with its own copy: resume and --config stay exact
            with atomic_path(run_dir / runfolder.AUG_PIPELINE) as tmp:
                tmp.write_bytes(pipeline)
            config["aug_file"] = runfolder.AUG_PIPELINE
            config["aug_sha256"] = file_sha256(run_dir / runfolder.AUG_PIPELINE)
        runfolder.write_json(runfolder.stored_config(config), run_dir / runfolder.CONFIG)
    except BaseException:
        runfolder.remove_run(run_dir)
        raise
    if made_here:
        console.print(f"split {source} into {AUTO_FOLDS} person folds (seed {AUTO_SPLIT_SEED}): "
                      f"{run_dir / runfolder.MANIFEST}")
    return run_dir, config, trained


def _aug_file_bytes(options: TrainOptions) -> bytes | None:
    """The bytes of `--aug FILE.yaml` once its pipeline loads and keeps the image (one line naming the
    file otherwise, before any run file exists); None for a preset."""
    if not is_aug_file(options.aug):
        return None
    load_pipeline(options.aug, options.img_size)
    return Path(options.aug).read_bytes()


def _merge_resumed(run_dir: Path, saved: TrainOptions, options: TrainOptions, names: list[str],
                   everything: bool) -> bool:
    """Take the runtime options and a larger `epochs` of `options` into `saved`, refusing any
    other difference; True when the run is extended."""
    changed = [n for n in names if n not in RUNTIME_OPTIONS and n != "epochs" and getattr(options, n) != getattr(saved, n)]
    if changed:
        detail = ", ".join(f"--{n.replace('_', '-')} {_shown(getattr(options, n))} (run: {_shown(getattr(saved, n))})"
                           for n in changed)
        raise MaskkitError(f"{run_dir}: --resume continues the run as configured, but {detail} differ; "
                           f"drop them, or start a new run (--config {run_dir / runfolder.CONFIG} --name NEW, "
                           "with the changes)")
    extended = False
    if "epochs" in names and options.epochs != saved.epochs:
        if options.epochs < saved.epochs:
            raise MaskkitError(f"--epochs {options.epochs}: {run_dir} is planned for {saved.epochs} epochs; "
                               "resume can only extend a run (a larger --epochs)")
        saved.epochs, extended = options.epochs, True
    for key in RUNTIME_OPTIONS:
        if everything or key in names:
            setattr(saved, key, getattr(options, key))
    return extended


def resume_options(run_dir: Path, options: TrainOptions | None, given: Iterable[str] | None = None):
    """(options, config, manifest, extended) of a run to resume.

    `options`: what the caller asks for; `given`: the option names the user set (None: all of
    `options`). Runtime options are taken from them; any other difference is refused, except a
    larger `epochs`, which extends the run (`extended` is then True).
    """
    runfolder.require(run_dir, runfolder.LAST)
    config = runfolder.read_config(run_dir)
    # Ranges after the merge: a config.json from a larger machine may hold more --workers than this one has.
    saved = TrainOptions.from_dict(runfolder.saved_options(config), str(run_dir / runfolder.CONFIG), ranges=False)
    extended = False
    if options is not None:
        names = [f.name for f in dataclasses.fields(TrainOptions)] if given is None else list(given)
        extended = _merge_resumed(run_dir, saved, options, names, given is None)
    try:
        saved.check()
    except MaskkitError as exc:
        raise MaskkitError(f"{run_dir / runfolder.CONFIG}: {exc}") from None
    logger_module(saved)
    manifest_path = run_dir / runfolder.MANIFEST
    manifest = read_manifest(manifest_path)
    if file_sha256(manifest_path) != config["manifest_sha256"]:
        raise MaskkitError(f"{manifest_path}: changed since the run started (its sha256 differs from config.json); start a new run")
    check_images_exist(manifest, str(manifest_path))
    if extended:
        config["options"] = saved.to_dict()  # written once last.pt has loaded (see _ready_to_train)
    return saved, config, manifest, extended


def check_resume_target(run_dir: Path, runs_dir: str | Path | None, name: str | None) -> None:
    """--runs-dir / --name given with --resume must name the resumed folder (a resume stays where it is)."""
    if runs_dir is None and name is None:
        return
    named = Path(runs_dir if runs_dir is not None else run_dir.parent) / run_name(name or run_dir.name)
    if named.resolve() != run_dir.resolve():
        given = " ".join(f"{flag} {value}" for flag, value in (("--runs-dir", runs_dir), ("--name", name)) if value is not None)
        raise MaskkitError(f"{given}: names {named}, but --resume continues {run_dir} where it is; drop them, "
                           f"or start a new run with its options (--config {run_dir / runfolder.CONFIG} --name NEW)")


def check_resume_source(run_dir: Path, source: str | Path | None, config: dict) -> None:
    """The manifest a resumed run trains on (RUN/manifest.csv) is the one it started from: a source CSV
    given now, or the one config.json names when it is still there, must hold the same bytes."""
    recorded = config.get("source")
    path = Path(source if source is not None else recorded or "")
    if source is None and (not recorded or not path.is_file()):
        return  # the source is gone or was a dataset folder: RUN/manifest.csv is the record
    if path.is_dir():
        if recorded and path.resolve() == Path(recorded).resolve():
            return
        raise MaskkitError(f"{path}: not the source {run_dir} started from ({recorded}); "
                           "drop it (resume trains on RUN/manifest.csv), or start a new run with it")
    if not path.is_file():
        raise MaskkitError(f"{path}: not found; drop it (resume trains on {run_dir / runfolder.MANIFEST})")
    if file_sha256(path) != config.get("manifest_sha256"):
        raise MaskkitError(f"{path}: changed since {run_dir} started from it (its sha256 differs from "
                           f"{run_dir / runfolder.MANIFEST}); restore it, or start a new run with it (--name NEW)")


def _shown(value) -> str:
    return "x".join(map(str, value[::-1])) if isinstance(value, (tuple, list)) else str(value)


@contextmanager
def holding_run_folder(run_dir: Path):
    """Rank 0 (or the only process) locks the run folder, clears a killed run's temporary files, and
    turns a failed write into one line saying how many epochs are saved and how to resume."""
    if env_rank() != 0:  # under torchrun rank 0 alone holds the run folder (and writes it)
        yield
        return
    with folder_lock(run_dir, "train"):
        remove_stale_temps(run_dir)
        try:
            yield
        except WriteError as exc:
            if exc.exit_code != RunFailure.exit_code or not (run_dir / runfolder.LAST).is_file():
                raise
            done = len(runfolder.read_metrics(run_dir))
            raise RunFailure(f"{exc}; {done} epoch(s) finished and saved: resume with "
                             f"maskkit train --resume {run_dir}") from None


def _new_run_dir(source: str | Path | None, options: TrainOptions | None, runs_dir: str | Path | None,
                 name: str | None) -> Path:
    """RUNS_DIR/NAME of a new run (RUNS_DIR: runs; NAME: one folder name), checked against the inputs."""
    options = options or TrainOptions()
    run_dir = Path(runs_dir if runs_dir is not None else "runs") / run_name(name or options.run_name)
    Inputs.of(source if source is not None else "data/train", options.weights, options.pseudo,
              options.pseudo_data).check_folder(run_dir, "run folder")
    return run_dir


def run(
    source: str | Path | None = "data/train",
    options: TrainOptions | None = None,
    runs_dir: str | Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    stop: Callable[[int, int], bool] | None = None,
    show_progress: bool | None = None,
    given: Iterable[str] | None = None,
    on_epoch: Callable[[int, dict], bool] | None = None,
    hints: bool = True,
) -> Path:
    """Train one fold and write the run folder RUNS_DIR/NAME (RUNS_DIR: runs when None); returns its path.

    `resume`: a run folder to continue from its last.pt (see `resume_options`; `given` names the
    options the user set, None meaning all of `options`); a `source`, `runs_dir` or `name` given with it
    must name that run's manifest and folder (None: not given). `stop(epoch, step)` is asked after every
    step and every epoch (0-based epoch); True stops like Ctrl-C: last.pt is written and
    `Interrupted` (a KeyboardInterrupt) is raised; `on_epoch(epochs_done, validation metrics)` after each
    validated epoch likewise (engine.trainer.Trainer.fit). `show_progress`: the progress bar (None: on a terminal).
    `hints=False` leaves out the closing "next: ..." and "resume with ..." hints (tune's trials: tune says what's next).

    Under torchrun (engine.distributed) every process trains its share; rank 0 alone checks the
    inputs, writes the run folder and prints, and the others take its run folder and config.

    Where commands start: the run folder is checked against the inputs (never inside a dataset,
    never holding the manifest trained on), locked for the run (a second run on it exits 2 naming
    this process), cleared of a killed run's temporary files, and a failed write says how many
    epochs finished and how to resume.
    """
    run_dir = Path(resume) if resume is not None else _new_run_dir(source, options, runs_dir, name)
    if resume is None:
        source, options = source if source is not None else "data/train", options or TrainOptions()
    elif not run_dir.is_dir():
        raise MaskkitError(f"{run_dir}: run folder not found (give a run folder written by maskkit train)")
    with holding_run_folder(run_dir):
        extended = False
        if resume is not None:
            options, config, manifest, extended = resume_options(run_dir, options, given)
            manifest, _ = load_pseudo(options, config.get("source"), manifest, config)
            check_resume_target(run_dir, runs_dir, name)  # after the options: a changed option is named first
            check_resume_source(run_dir, source, config)
        dist = Distributed.from_env(options.device)
        created = False  # by this call: only then may a failure remove the run's files
        try:
            if resume is None:
                run_dir, config, manifest = dist.from_main(
                    lambda: _new_run(source, options, run_dir.parent, run_dir.name, overwrite))
                created = True
            with deterministic(dist.device(resolve_device(options.device))):
                trainer = _make_trainer(run_dir, options, config, manifest, resume is not None, show_progress, dist)
                if _ready_to_train(trainer, config, resume is not None, extended):
                    _train(trainer, config, stop, on_epoch, hints)
            return run_dir
        except Exception:  # not Ctrl-C: its last.pt resumes even within the first epoch
            if created and dist.main and not (run_dir / runfolder.METRICS).is_file():
                runfolder.remove_run(run_dir)  # failed before an epoch was saved: leave no half run
            raise
        finally:
            dist.close()


def _say(trainer: Trainer, line: str) -> None:
    if trainer.dist.main:
        console.print(line, markup=False, highlight=False)


def _make_trainer(run_dir: Path, options: TrainOptions, config: dict, manifest: pd.DataFrame, resumed: bool,
                  show_progress: bool | None, dist: Distributed) -> Trainer:
    """The Trainer of the prepared run folder (a new run without one leaves no run folder behind)."""
    use_threads(options.threads)
    try:
        return Trainer(run_dir, manifest, options, config, show_progress=show_progress, resumed=resumed, dist=dist)
    except BaseException:  # pretrained download failed, Ctrl-C while caching...: leave no half run
        if not resumed and dist.main:
            runfolder.remove_run(run_dir)
        raise


def _ready_to_train(trainer: Trainer, config: dict, resumed: bool, extended: bool) -> bool:
    """A new run writes its first last.pt, a resumed one restores it; False when nothing is left to train."""
    run_dir, options = trainer.run_dir, trainer.options
    if not resumed:
        trainer.keeper.save_last(trainer.checkpoint())  # a Ctrl-C in the first epoch can resume too
        return True
    trainer.load_last(replan=extended)
    if extended and trainer.dist.main:
        runfolder.write_json(runfolder.stored_config(config), run_dir / runfolder.CONFIG)
    if extended and trainer.state.epoch < options.epochs:
        trainer.state.finished = False
        _say(trainer, f"extending {run_dir} to {options.epochs} epochs (schedule re-planned)")
    if trainer.state.finished:
        _say(trainer, f"{run_dir}: already finished ({trainer.state.epoch} epochs); nothing to do "
                      "(a larger --epochs extends it)")
        return False
    _say(trainer, f"resuming {run_dir} at epoch {trainer.state.epoch + 1}, step {trainer.state.current.step}")
    return True


def _train(trainer: Trainer, config: dict, stop: Callable[[int, int], bool] | None,
           on_epoch: Callable[[int, dict], bool] | None = None, hints: bool = True) -> None:
    """Fit the run, saying what it trains on before and what came out after (`hints`: and what to run next)."""
    run_dir, options, dist = trainer.run_dir, trainer.options, trainer.dist
    processes = f", {dist.world_size} processes (DDP)" if dist.enabled else ""
    validation = ("every person (--fold all: no validation, best.pt = the final weights), " if options.all_folds else
                  f"validating on fold {options.fold} ({len(trainer.data.val_set)} images of "
                  f"{config['val_persons']} persons), ")
    summary = AGE_HEAD_KINDS[options.age_head].summary
    age = f" + {summary}" if summary else ""
    _say(trainer, f"training {options.backbone} ({options.heads}{age}) "
                  f"on {len(trainer.data.train_set)} images of {config['train_persons']} persons, {validation}"
                  f"input {options.img_size[1]}x{options.img_size[0]} (WxH), crop {tuple(config['crop'])} (HxW "
                  f"fractions), {trainer.device}{processes}: {run_dir}")
    try:
        state = trainer.fit(stop, on_epoch)
    except Interrupted:
        if hints:
            _say(trainer, f"stopped; last.pt written: resume with: maskkit train --resume {run_dir}")
        raise
    next_hint = f"; next: maskkit predict {run_dir} DATA/eval -o preds.csv" if hints else ""
    if options.all_folds:
        _say(trainer, f"trained {state.epoch} epochs on every person (best.pt = the final weights){next_hint}")
    elif dist.main:
        best = runfolder.read_metrics(run_dir).query("epoch == @state.best_epoch").iloc[0]
        _say(trainer, f"best epoch {state.best_epoch}: val macro F1 {best['val_f1']:.4f} (mask {best['f1_mask']:.3f}, "
                      f"gender {best['f1_gender']:.3f}, age {best['f1_age']:.3f}){next_hint}")
