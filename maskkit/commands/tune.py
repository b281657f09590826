"""`maskkit tune`: a recipe search on Optuna (docs/formats.md, "Study folder").

A study is "this recipe, with these parts free": the fixed options come from train's flags or
`--config`, the free ones from a search space (contract.searchspace) less the options fixed that
way (flags win over the space, with one line naming them). Every trial trains ordinary
run folders under RUNS_DIR/tune-NAME/ (trial-NNNN, or trial-NNNN-fK with `--objective oof`), so
`runs`, `predict`, `vote` and `audit` work on them. Objectives: `fold`, the best val macro F1 of
one fold, reported per epoch to the pruner; `oof`, the pooled out-of-fold macro F1 of `--folds K`
fold runs (the score `maskkit runs` shows), reported after each fold.

Workers: any number of `maskkit tune` processes on one study (the default storage is an SQLite
file in the study folder; `--storage URL` any database Optuna takes, for many machines). Optuna's
heartbeat marks the trial of a killed worker failed and queues its parameters again. Each worker
takes a new trial only while the finished (complete or pruned) plus running trials are fewer than
`--trials`, counting and taking under a file lock of the study folder, so the workers of one
machine end with exactly `--trials` finished trials (workers on several machines share no lock and
may, rarely, start one more each). Ctrl-C or kill -9 lose only the running trial (failed; its run
folder is left as it was and never reused: trial numbers are never given twice); running the same
command again continues the study. Progress: one line per trial ("trial k of N", its value or
pruning, the time elapsed and an estimate of the time left); Optuna's own log lines are off.

The training function is passed in by cli.py (`train=commands.train.run`): a command module does
not import another. Over 400 lines: a study's whole life (storage, identity checks, workers, progress,
Ctrl-C), its results (`--best`) and the checks of what someone else may have put into its folder or
database (links, a foreign database, crafted or enqueued trials: docs/formats.md) in one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import sqlite3
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection
from optuna.trial import TrialState

from maskkit.contract import runfolder
from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.files import Inputs, atomic_path, console, examples, open_lock, write_csv
from maskkit.contract.manifest import check_images_exist, read_manifest, validation_folds
from maskkit.contract.oof import pooled_predictions
from maskkit.contract.paths import study_name
from maskkit.contract.recipe import PLACES, as_fields, is_recipe_file, write_recipe
from maskkit.contract.searchspace import (DEFAULT_SPACE, Dimension, OutsideSpace, field_of, read_search_space, rounded,
                                          stored_dimension, suggest)
from maskkit.contract.streams import is_stream
from maskkit.engine.metrics import scores
from maskkit.engine.trainer import Interrupted
from maskkit.options import MACHINE_OPTIONS, Size, TrainOptions

OBJECTIVES = ("fold", "oof")
PRUNERS = ("median", "hyperband", "none")
STUDY_DB, LOCK, TRIALS_CSV = "study.db", ".tune.lock", "trials.csv"
HISTORY_PNG, IMPORTANCE_PNG = "history.png", "importance.png"
RUNTIME_OPTIONS = ("device", "workers", "cache", "threads", "wandb")  # may differ between workers
HEARTBEAT_S, GRACE_S = 20, 60  # a trial whose worker sent no heartbeat for GRACE_S is failed
WAIT_S = 2.0  # a worker with nothing left to start polls the running trials this often
MAX_FAILURES = 3  # trials in a row failing (NaN loss...) stop a worker
NOT_IN_BEST = ("fold", *MACHINE_OPTIONS)  # --best writes the recipe: not where nor on which fold it ran
SQLITE_MAGIC = b"SQLite format 3\0"
OPTUNA_TABLES = {"studies", "trials", "version_info"}  # a few of the tables every Optuna database holds


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C in a worker; its message says how to continue the study (cli.py prints it, exit 130)."""


def masked(url: str) -> str:
    """A storage URL as printed: its password as ***."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
        return parsed.render_as_string(hide_password=True) if parsed.password else url
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy parses: mask what looks like user:password@
        return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", url)


@dataclass(frozen=True)
class Study:
    """Where a study lives and what it optimises."""

    name: str
    runs_dir: Path = Path("runs")
    storage: str | None = None  # None: the SQLite file of the study folder
    objective: str = "fold"
    folds: int = 5  # --objective oof
    trials: int = 20
    pruner: str = "median"

    def __post_init__(self) -> None:
        study_name(self.name)  # one folder name: the study folder stays inside --runs-dir
        if self.storage is not None and in_memory(self.storage):
            raise MaskkitError(f"--storage {self.shown}: an in-memory database ends with this process, and the "
                               "study with it; give a file (sqlite:///study.db) or a server, or leave --storage out")

    @property
    def folder(self) -> Path:
        return Path(self.runs_dir) / f"tune-{self.name}"

    @property
    def url(self) -> str:
        return self.storage or f"sqlite:///{(self.folder / STUDY_DB).resolve()}"

    @property
    def shown(self) -> str:
        """The URL as messages print it (no password)."""
        return masked(self.url)


def in_memory(url: str) -> bool:
    """Whether a storage URL names an SQLite database in memory (sqlite://, sqlite:///:memory:, mode=memory)."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: open_storage says so
        return False
    database = parsed.database or ""
    return parsed.get_backend_name() == "sqlite" and (
        database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in url)


@contextlib.contextmanager
def study_lock(folder: Path) -> Iterator[Callable[[], None]]:
    """Hold the study folder's lock (blocking: the workers of a machine take turns); yields `release`,
    which lets go early (a trial releases it once Optuna has given it its number). The lock file is
    never opened through a link (files.open_lock)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = open_lock(folder / LOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held = [True]

        def release() -> None:
            if held[0]:
                fcntl.flock(fd, fcntl.LOCK_UN)
                held[0] = False

        try:
            yield release
        finally:
            release()
    finally:
        os.close(fd)


def check_study_file(study: Study) -> None:
    """Refuse an SQLite study database that is not safe to open: Optuna would write its tables into any
    SQLite file, through a link. The study folder's study.db must be a plain file of its own (no
    symbolic or hard link) holding no study but NAME; any SQLite file, the study folder's or a
    `--storage sqlite:///FILE`, must be absent, empty or an Optuna database."""
    own = study.storage is None
    if own:
        path = study.folder / STUDY_DB
    else:
        try:
            parsed = sqlalchemy.engine.make_url(study.storage)
        except Exception:  # noqa: BLE001 - not a URL: open_storage says so
            return
        if parsed.get_backend_name() != "sqlite" or not parsed.database:
            return
        path = Path(parsed.database)
    fix = "remove it or choose another --study" if own else "give another --storage"
    try:
        info = os.lstat(path) if own else os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise MaskkitError(f"{path}: cannot read the study database ({os.strerror(exc.errno or 0)})") from None
    if stat.S_ISLNK(info.st_mode):
        raise MaskkitError(f"{path}: is a symbolic link, not the study's own database; {fix}")
    if not stat.S_ISREG(info.st_mode):
        raise MaskkitError(f"{path}: is not a file; {fix}")
    if own and info.st_nlink > 1:
        raise MaskkitError(f"{path}: is linked to another file (a hard link), not the study's own database; {fix}")
    if info.st_size == 0:
        return
    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise MaskkitError(f"{path}: is not an SQLite database (so not an Optuna study); {fix}")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            names = ([row[0] for row in db.execute("SELECT study_name FROM studies")]
                     if OPTUNA_TABLES <= tables else [])
    except sqlite3.Error as exc:
        raise MaskkitError(f"{path}: not a readable SQLite database ({str(exc)[:120]}); {fix}") from None
    if tables and not OPTUNA_TABLES <= tables:
        raise MaskkitError(f"{path}: an SQLite database of another program (tables {examples(sorted(tables))}), "
                           f"not an Optuna study; maskkit does not turn it into one: {fix}")
    others = [name for name in names if name != study.name]
    if own and others:
        raise MaskkitError(f"{path}: holds other studies ({examples(others)}) than {study.name!r}, whose folder "
                           f"this is: not a database maskkit tune made; {fix}")


def open_storage(study: Study) -> optuna.storages.RDBStorage:
    """The study's database with Optuna's heartbeat; a failed (stale) trial is queued once again. An
    SQLite file is checked first (check_study_file)."""
    check_study_file(study)
    url = study.url
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(1))
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = re.sub(r"^\([\w.]+\) ", "", reason)  # sqlalchemy's "(psycopg.OperationalError) "
        password = _password(url)
        if password:
            reason = reason.replace(password, "***")
        fix = "; python3 -m pip install -e '.[tune]' installs the PostgreSQL driver" if isinstance(exc, ImportError) else ""
        raise MaskkitError(f"--storage {study.shown}: cannot open the study database ({reason[:200]}){fix}") from None


def _password(url: str) -> str | None:
    try:
        return sqlalchemy.engine.make_url(url).password
    except Exception:  # noqa: BLE001 - an unparsable URL: masked() hides what looks like one
        return None


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's own log lines (a failed trial's traceback too) and its "experimental" warnings (heartbeat,
    plots) and the importances' "too few trials" off: tune prints its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "The number of trials is too small", UserWarning)  # one trial's importances
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        yield


def make_pruner(kind: str, fixed: TrainOptions, space: dict, folds: tuple = ()) -> optuna.pruners.BasePruner:
    """Optuna's pruner. A fold trial is first judged after its first epoch past the LR warmup. During
    the warmup every recipe scores low, and on real faces the median of those epochs pruned recipes
    that score as well as the best."""
    steps = len(folds) or most_epochs(fixed, space)
    warmup = max(space["warmup"].values()) if "warmup" in space else fixed.warmup
    first = 1 if folds else max(1, min(steps, math.ceil(warmup) + 1))
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=first)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(steps, first), reduction_factor=3)
    return optuna.pruners.NopPruner()


def identity(fixed: TrainOptions, space: dict, study: Study) -> dict:
    """What makes a study the same study: the fixed recipe (without runtime options), the space, the objective."""
    recipe = {k: v for k, v in fixed.to_dict().items() if k not in RUNTIME_OPTIONS}
    return {"recipe": recipe, "space": {k: d.to_dict() for k, d in space.items()}, "objective": study.objective,
            "folds": study.folds if study.objective == "oof" else None}


def check_maskkit_study(optuna_study: optuna.Study, study: Study) -> dict | None:
    """The identity of a study maskkit made (None: new and empty); another program's study, or one whose
    identity is not what maskkit records (the fixed recipe and the space as mappings), is refused."""
    saved = optuna_study.user_attrs.get("identity")
    if optuna_study.directions != [StudyDirection.MAXIMIZE]:
        why = "it minimizes or has several objectives, where maskkit maximizes one macro F1"
    elif saved is None:
        if not optuna_study.get_trials(deepcopy=False):
            return None
        why = "it holds trials but no maskkit identity"
    elif not (isinstance(saved, dict) and isinstance(saved.get("recipe"), dict) and isinstance(saved.get("space"), dict)):
        why = "its identity is not the fixed recipe and search space maskkit records"
    else:
        return saved
    raise MaskkitError(f"study {study.name!r} in {study.shown} was not made by maskkit tune ({why}); "
                       "choose another --study")


def check_same_study(optuna_study: optuna.Study, wanted: dict, study: Study) -> None:
    """A new study records its identity; a continued one must match it (one line naming the differences)."""
    saved = check_maskkit_study(optuna_study, study)
    if saved is None:
        if any(study.folder.glob("trial-*")):
            raise MaskkitError(f"{study.folder}: holds trial run folders of an earlier study but {study.shown} has no "
                               f"study {study.name!r}; remove the folder or choose another --study")
        optuna_study.set_user_attr("identity", json.loads(json.dumps(wanted)))
        return
    wanted = json.loads(json.dumps(wanted))  # tuples as lists, as stored
    differ = [f"{part}.{key}" for part in ("recipe", "space")
              for key in sorted(set(saved.get(part) or {}) | set(wanted[part]))
              if (saved.get(part) or {}).get(key) != wanted[part].get(key)]
    differ += [part for part in ("objective", "folds") if saved.get(part) != wanted[part]]
    if differ:
        raise MaskkitError(f"study {study.name!r} in {study.shown} was started with other settings ({', '.join(differ[:6])} "
                           "differ); re-run it with the same options and search space, or choose another --study")


def count(optuna_study: optuna.Study, *states: TrialState) -> int:
    return len(optuna_study.get_trials(deepcopy=False, states=states))


def trial_options(fixed: TrainOptions, values: dict) -> TrainOptions:
    return dataclasses.replace(fixed, **as_fields(values, "the trial's parameters"))


@dataclass
class TrialRunner:
    """Runs one trial's training: `train` is commands.train.run."""

    manifest: Path
    study: Study
    train: Callable[..., Path]
    folds: tuple = ()

    def _fit(self, trial: optuna.Trial, options: TrainOptions, name: str, step_offset: int = 0,
             prune_epochs: bool = True) -> Path:
        """Train one run folder; a pruned epoch raises optuna.TrialPruned (its run folder stays as trained)."""
        pruned = []

        def on_epoch(epoch: int, metrics: dict) -> bool:
            if not prune_epochs:
                return False
            trial.report(float(metrics["val_f1"]), step_offset + epoch)
            if trial.should_prune():
                pruned.append((epoch, float(metrics["val_f1"])))
                return True
            return False

        try:
            return self.train(self.manifest, options, runs_dir=self.study.folder, name=name, show_progress=False,
                              on_epoch=on_epoch, hints=False)
        except Interrupted:
            if pruned:
                raise optuna.TrialPruned(f"pruned after epoch {pruned[0][0]} (val macro F1 {pruned[0][1]:.4f})") from None
            raise

    def fold(self, trial: optuna.Trial, options: TrainOptions) -> float:
        name = f"trial-{trial.number:04d}"
        trial.set_user_attr("runs", [str(self.study.folder / name)])
        run_dir = self._fit(trial, options, name)
        return float(runfolder.read_metrics(run_dir)["val_f1"].max())

    def oof(self, trial: optuna.Trial, options: TrainOptions) -> float:
        names = [f"trial-{trial.number:04d}-f{fold}" for fold in self.folds]
        trial.set_user_attr("runs", [str(self.study.folder / n) for n in names])
        run_dirs, value = [], 0.0
        for step, (fold, name) in enumerate(zip(self.folds, names), start=1):
            run_dirs.append(self._fit(trial, dataclasses.replace(options, fold=fold), name, prune_epochs=False))
            pooled, _ = pooled_predictions(run_dirs)
            value = scores(pooled["label"], pooled["ans"])["macro_f1"]
            trial.report(value, step)
            if step < len(self.folds) and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after {step} fold(s): pooled OOF macro F1 {value:.4f}")
        return value


def most_epochs(fixed: TrainOptions, space: dict) -> int:
    """The longest trial's epochs (Hyperband's largest resource)."""
    if "epochs" not in space:
        return fixed.epochs
    return int(max(space["epochs"].values()))


def check_manifest(manifest: Path, fixed: TrainOptions, study: Study) -> tuple:
    """Read and check the manifest as train does (rows, folds, images there) before the study is made,
    so a bad one is one line and leaves no study behind; returns the folds of `--objective oof`."""
    if not manifest.is_file():
        raise MaskkitError(f"{manifest}: manifest not found (give the manifest CSV from maskkit split)")
    frame = read_manifest(manifest)
    folds = validation_folds(frame)  # extra persons (fold -1) never validate
    if study.objective == "oof":
        if not 2 <= study.folds <= len(folds):
            raise MaskkitError(f"--folds {study.folds}: {manifest} has {len(folds)} folds; use 2..{len(folds)}")
    elif fixed.fold not in folds:
        raise MaskkitError(f"--fold {fixed.fold}: {manifest} has folds {examples(folds, 10)}; pick one of them")
    check_images_exist(frame, str(manifest))
    return tuple(folds[:study.folds]) if study.objective == "oof" else ()


def run(manifest: str | Path, study: Study, fixed: TrainOptions, space_path: str | Path | None = None,
        train: Callable[..., Path] | None = None, fixed_fields: frozenset = frozenset(),
        fixed_by: str = "the command line") -> optuna.Study:
    """Work on the study until it holds `study.trials` finished trials (see the module docstring).
    `fixed_fields`: the options the command line (`fixed_by`) set, left out of the search space."""
    manifest = Path(manifest)
    fixed.check()
    if fixed.all_folds:
        raise MaskkitError("--fold all: a trial needs a validation fold to be scored; give --fold K, or --objective oof")
    space_path = Path(space_path or DEFAULT_SPACE)
    every = read_search_space(space_path, fixed, unchecked=frozenset(fixed_fields))
    space = {name: d for name, d in every.items() if field_of(name) not in fixed_fields}
    taken = [name for name in every if name not in space]
    if taken and not space:
        raise MaskkitError(f"{space_path}: every option it frees is fixed by {fixed_by} ({', '.join(taken)}); "
                           "nothing left to search: fix fewer options, or give --space FILE")
    note = f"fixed by {fixed_by}: {', '.join(taken)} (not searched)" if taken else None
    folds = check_manifest(manifest, fixed, study)
    trainer = TrialRunner(manifest, study, train, folds)
    with quiet_optuna():
        try:
            return _work(study, fixed, space, trainer, note)
        except KeyboardInterrupt:
            raise StudyInterrupted(_interrupted(study)) from None


def _interrupted(study: Study) -> str:
    """What Ctrl-C says: how the study stands and how to go on."""
    try:
        optuna_study = optuna.load_study(study_name=study.name, storage=open_storage(study))
        stand = f" ({count(optuna_study, TrialState.COMPLETE, TrialState.PRUNED)} of {study.trials} trials finished)"
    except Exception:  # noqa: BLE001 - the study may not exist yet or the server be gone: say less
        stand = ""
    return (f"interrupted (this worker's running trial, if any, is marked failed); study {study.name!r}{stand}: "
            "run the same command again to continue it")


@dataclass
class Progress:
    """The per-trial line: "trial k of N", the value or pruning, the time elapsed and left. The time left
    is the study's rate since this worker started (every worker's trials) applied to what remains."""

    trials: int
    finished_before: int
    started: float = dataclasses.field(default_factory=time.monotonic)

    def line(self, trial: optuna.trial.FrozenTrial, finished: int, note: str) -> str:
        elapsed = time.monotonic() - self.started
        done, left = finished - self.finished_before, max(self.trials - finished, 0)
        timing = f"{clock(elapsed)} elapsed"
        if left and done:
            timing += f", about {clock(elapsed / done * left)} left"
        if trial.state == TrialState.FAIL:
            return f"trial #{trial.number} failed ({note}); {timing}"
        return f"trial {finished} of {self.trials} (#{trial.number}): {note}; {timing}"


def clock(seconds: float) -> str:
    """1h02m, 3m05s or 42s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _work(study: Study, fixed: TrainOptions, space: dict, trainer: TrialRunner, note: str | None) -> optuna.Study:
    """Open (or create) the study, then (after printing `note`) take trials until it holds enough."""
    with study_lock(study.folder):  # one worker at a time creates the database and the study
        storage = open_storage(study)
        optuna_study = optuna.create_study(
            study_name=study.name, storage=storage, direction="maximize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(constant_liar=True),
            pruner=make_pruner(study.pruner, fixed, space, trainer.folds))
        check_same_study(optuna_study, identity(fixed, space, study), study)
    if note:
        console.print(note, markup=False, highlight=False)
    progress = Progress(study.trials, count(optuna_study, TrialState.COMPLETE, TrialState.PRUNED))
    failures = 0
    while failures < MAX_FAILURES:
        with study_lock(study.folder) as release:
            optuna.storages.fail_stale_trials(optuna_study)
            finished = count(optuna_study, TrialState.COMPLETE, TrialState.PRUNED)
            if finished >= study.trials:
                break
            if finished + count(optuna_study, TrialState.RUNNING) >= study.trials:
                release()
                time.sleep(WAIT_S)  # the last trials run elsewhere: wait in case one of them fails
                continue
            mine = {}  # this worker's trial: its number, and why it was pruned or failed
            optuna_study.optimize(lambda trial: _objective(trial, trainer, fixed, space, release, mine),
                                  n_trials=1, catch=(RunFailure,))
        if not mine:
            continue
        trial = optuna_study.get_trials(deepcopy=False)[mine["number"]]
        finished = count(optuna_study, TrialState.COMPLETE, TrialState.PRUNED)
        outcome = (f"{study.objective} macro F1 {trial.value:.4f}" if trial.state == TrialState.COMPLETE else
                   mine.get("note") or trial.state.name.lower())
        console.print(progress.line(trial, finished, outcome), markup=False, highlight=False)
        failures = failures + 1 if trial.state == TrialState.FAIL else 0
    if failures >= MAX_FAILURES:
        raise RunFailure(f"study {study.name!r}: {failures} trials in a row failed (see the lines above); "
                         "narrow the search space (a lower lr range) and re-run")
    finished = count(optuna_study, TrialState.COMPLETE, TrialState.PRUNED)
    console.print(f"study {study.name!r}: {finished} finished trials ({count(optuna_study, TrialState.COMPLETE)} "
                  f"complete) in {study.shown}; next: maskkit tune --study {study.name} --best > best.yaml",
                  markup=False, highlight=False)
    return optuna_study


def _objective(trial: optuna.Trial, trainer: TrialRunner, fixed: TrainOptions, space: dict,
               release: Callable[[], None], mine: dict) -> float:
    release()  # the trial has its number: other workers may take theirs
    mine["number"] = trial.number
    try:
        values = suggest(trial, space)
    except OutsideSpace as exc:  # Optuna marks the trial failed; nothing was trained
        raise MaskkitError(f"study {trainer.study.name!r}: trial #{trial.number} was enqueued with {exc}: not a "
                           "trial this study draws; it is marked failed, nothing trained: re-run to go on") from None
    options = trial_options(fixed, values)
    trial.set_user_attr("recipe", json.loads(json.dumps(options.to_dict())))
    drawn = ", ".join(f"{k}={v}" for k, v in values.items())
    console.print(f"trial #{trial.number} starts: {drawn or 'the fixed recipe'}", markup=False, highlight=False)
    try:
        return trainer.oof(trial, options) if trainer.study.objective == "oof" else trainer.fold(trial, options)
    except optuna.TrialPruned as exc:
        mine["note"] = str(exc) or "pruned"
        raise
    except RunFailure as exc:  # Optuna marks it failed; its message is the progress line's
        mine["note"] = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise


# --- the results ---------------------------------------------------------------------------------

def load(study: Study) -> optuna.Study:
    if study.storage is None and not (study.folder / STUDY_DB).is_file():
        raise MaskkitError(f"{study.folder / STUDY_DB}: no study {study.name!r} here (start it with "
                           f"maskkit tune MANIFEST --study {study.name}, or give its --storage/--runs-dir)")
    try:
        return optuna.load_study(study_name=study.name, storage=open_storage(study))
    except KeyError:
        raise MaskkitError(f"{study.shown}: has no study {study.name!r}") from None


def trials_table(optuna_study: optuna.Study, space: dict[str, Dimension]) -> pd.DataFrame:
    """One row per trial: number, state, value, duration, the parameters (floats as the trials trained
    them) and its run folders."""
    table = optuna_study.trials_dataframe(attrs=("number", "state", "value", "duration", "params"))
    for name, d in space.items():
        column = f"params_{name}"
        if d.kind == "float" and column in table:
            table[column] = [rounded(v, d.low, d.high) if isinstance(v, float) and math.isfinite(v) else v
                             for v in table[column]]
    table["runs"] = [";".join(runs_of(t)) for t in optuna_study.get_trials(deepcopy=False)]
    return table


def runs_of(trial: optuna.trial.FrozenTrial) -> list[str]:
    """A trial's run folders (its user attribute `runs`; none when it is not a list of paths)."""
    runs = trial.user_attrs.get("runs")
    return runs if isinstance(runs, list) and all(isinstance(r, str) for r in runs) else []


def save_plot(draw: Callable, optuna_study: optuna.Study, path: Path) -> None:
    """An Optuna matplotlib figure to `path` (PNG, atomically); a one-line note when it cannot be drawn."""
    import matplotlib  # here: only --best draws

    matplotlib.use("Agg")
    from matplotlib import pyplot

    try:
        axes = draw(optuna_study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        console.print(f"{path}: not drawn ({str(exc).splitlines()[0][:120]})", markup=False, highlight=False)
        return
    figure = axes.figure
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    pyplot.close(figure)


def best(study: Study, out: str | Path | None = None) -> dict:
    """Print (or write to `out`) the best trial's recipe as YAML for `train --config`; write trials.csv,
    history.png and importance.png into the study folder. Returns the recipe."""
    with quiet_optuna():
        return _best(study, out)


def best_recipe(trained: dict, space: dict[str, Dimension]) -> dict:
    """A trial's recipe as --best writes it: no machine settings nor fold (the machine and fold that run
    it decide them), a searched float to searchspace.DIGITS significant digits (what newer trials train)."""
    recipe = {k: v for k, v in trained.items() if k not in NOT_IN_BEST}
    for name, d in space.items():
        if d.kind == "float" and isinstance(recipe.get(name), float):
            recipe[name] = rounded(recipe[name], d.low, d.high)
    recipe["img_size"] = tuple(recipe["img_size"])
    return recipe


def study_space(saved: dict, study: Study) -> dict[str, Dimension]:
    """The search space a study's identity records (refused in one line when it is not one)."""
    try:
        space = saved.get("space")
        if not isinstance(space, dict) or not isinstance(saved.get("recipe"), dict):
            raise ValueError
        return {name: stored_dimension(spec) for name, spec in space.items()}
    except (ValueError, TypeError):
        raise MaskkitError(f"study {study.name!r} in {study.shown}: its identity (fixed recipe and search space) is "
                           "malformed, so its trials cannot be checked: not a study maskkit tune made; "
                           "choose another --study") from None


def trusted_recipe(trial: optuna.trial.FrozenTrial, saved: dict, space: dict[str, Dimension], study: Study) -> dict:
    """The trial's recipe as --best writes it, once it reads as `train --config` reads a recipe
    (TrainOptions.from_dict: names, types, ranges), carries no place (name, runs_dir), and is what the
    study could have trained: the study's fixed recipe but for the searched options, each in the space."""
    where = f"study {study.name!r}, trial {trial.number}"
    fix = "not what maskkit tune records; the study was changed by hand or another program: choose another --study"
    recipe = trial.user_attrs.get("recipe")
    if not isinstance(recipe, dict):
        raise MaskkitError(f"{where}: has no recipe ({fix})")
    places = [key for key in PLACES if key in recipe]
    if places:
        raise MaskkitError(f"{where}: its recipe sets {', '.join(places)}, the place of a run ({fix})")
    kept = {k: v for k, v in recipe.items() if k not in NOT_IN_BEST}
    if not isinstance(kept.get("img_size"), list):
        raise MaskkitError(f"{where}: its recipe has no img_size [height, width] ({fix})")
    TrainOptions.from_dict(kept, f"{where}: its recipe")
    searched = {field_of(name): d for name, d in space.items()}
    fixed = saved["recipe"]
    for key, value in kept.items():
        if key in searched and not in_space(searched[key], value):
            d = searched[key]
            shown = f"{value[1]}x{value[0]}" if key == "img_size" else value
            raise MaskkitError(f"{where}: its recipe's {d.name} {shown!r} lies outside the study's search space "
                               f"({d.shown()}) ({fix})")
        if key not in searched and key in fixed and fixed[key] != value:
            raise MaskkitError(f"{where}: its recipe's {key} {value!r} is not the study's fixed {fixed[key]!r} ({fix})")
    return best_recipe(kept, space)


def in_space(d: Dimension, value: object) -> bool:
    """Whether a recipe's value (img_size as [height, width]) is one the dimension gives."""
    if d.name != "input_size":
        return d.holds(value)
    try:
        return any(list(Size.parse(c, "input_size")) == list(value) for c in d.choices)
    except MaskkitError:
        return False


def best_inputs(study: Study) -> Inputs:
    """What --best must never write its recipe over: the study's database, lock and outputs, and its
    trial run folders."""
    own = [study.folder / name for name in (STUDY_DB, LOCK, TRIALS_CSV, HISTORY_PNG, IMPORTANCE_PNG)]
    if study.storage is not None:
        with contextlib.suppress(Exception):
            parsed = sqlalchemy.engine.make_url(study.storage)
            if parsed.get_backend_name() == "sqlite" and parsed.database:
                own.append(Path(parsed.database))
    trials = sorted(study.folder.glob("trial-*")) if study.folder.is_dir() else []
    return Inputs.of(own, trials)


def check_best_out(study: Study, out: str | Path | None) -> None:
    """--best -o FILE replaces only a recipe (recipe.is_recipe_file) that is not one of the study's
    files (best_inputs), and never a file the study writes, even before it exists."""
    if out is None:
        return
    inputs, target = best_inputs(study), Path(out)
    if str(out) != "-" and not is_stream(target):
        names = (STUDY_DB, LOCK, TRIALS_CSV, HISTORY_PNG, IMPORTANCE_PNG)
        try:
            own = {(study.folder / name).resolve(): name for name in names}.get(target.resolve())
        except (OSError, RuntimeError):  # a loop of links
            raise MaskkitError(f"{target}: --out is a symbolic link that loops; choose another path") from None
        if own:
            raise MaskkitError(f"{target}: --out is the study's own {own}; maskkit never writes over its inputs, "
                               "choose another path")
    inputs.check(target, what="--out", magic=b"")  # magic b"": the inputs only; the kind is a recipe's, below
    if target.is_file() and not is_stream(target) and not is_recipe_file(target):
        raise MaskkitError(f"{target}: exists and is not a recipe (a YAML mapping of train options); maskkit only "
                           "replaces its own kind of output: delete it or choose another path")


def _best(study: Study, out: str | Path | None) -> dict:
    """Everything is checked (the -o target, the study, the best trial's recipe) before anything is written."""
    from optuna.visualization import matplotlib as plots  # heavy: only for --best

    check_best_out(study, out)
    optuna_study = load(study)
    saved = check_maskkit_study(optuna_study, study) or {}
    if count(optuna_study, TrialState.COMPLETE) == 0:
        raise MaskkitError(f"study {study.name!r}: no complete trial yet (run maskkit tune MANIFEST --study "
                           f"{study.name} first)")
    space = study_space(saved, study)
    top = optuna_study.best_trial
    recipe = trusted_recipe(top, saved, space, study)
    objective = saved.get("objective") if saved.get("objective") in OBJECTIVES else "fold"
    study.folder.mkdir(parents=True, exist_ok=True)
    write_csv(trials_table(optuna_study, space), study.folder / TRIALS_CSV)
    save_plot(plots.plot_optimization_history, optuna_study, study.folder / HISTORY_PNG)
    save_plot(plots.plot_param_importances, optuna_study, study.folder / IMPORTANCE_PNG)
    console.print(f"best trial {top.number}: {objective} macro F1 {top.value:.4f} ({', '.join(runs_of(top))}); "
                  f"{study.folder / TRIALS_CSV}", markup=False, highlight=False)
    write_recipe(recipe, out)
    return recipe
