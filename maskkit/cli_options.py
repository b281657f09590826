"""The command line's options, declared once: one `Annotated` type and one help text per option.

cli.py's subcommands name these types; a parameter's default is written beside it. train's (and
tune's) options are not written here: `option_parameters` builds them from TrainOptions' fields,
whose Flags (options.py) hold each flag, help text, choices and range, and the shared --device,
--threads, --workers, --batch-size and --seed are built from the same Flags. Choice options are
`Literal`s of the vocabulary in options.py, so typer lists, checks and completes their values.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated, List, Literal, Optional

import typer

from maskkit import options as vocab
from maskkit.contract.errors import MaskkitError

# --- shared by several subcommands ---------------------------------------------------------------


def complete_from(choices):
    """Shell completion of a value, or of the next item of a comma list (cam --head mask,ge)."""
    def complete(incomplete: str) -> List[str]:
        done, _, last = incomplete.rpartition(",")
        prefix = f"{done}," if done else ""
        return [prefix + c for c in choices if c.startswith(last)]
    return complete


def _bounded(check):
    """A typer callback running one of options.py's checks: its MaskkitError becomes click's bad value."""
    def callback(value):
        try:
            check(value)
        except MaskkitError as exc:
            raise typer.BadParameter(str(exc).split(": ", 1)[-1]) from None
        return value
    return callback


def flag_option(flag: vocab.Flag, cli_type: object, panel: bool = True) -> object:
    """The typer option of one options.Flag (train's fields and the shared --device, --seed...)."""
    settings = {"help": flag.help, "rich_help_panel": flag.panel if panel else None}
    if flag.metavar:
        settings["metavar"] = flag.metavar
    if flag.bounds:
        settings["min"], settings["max"] = flag.bounds
    if flag.callback:
        settings["callback"] = _bounded(flag.callback)
    if flag.complete == "backbone":
        settings["autocompletion"] = complete_backbone
    elif flag.complete:
        settings["autocompletion"] = complete_from(flag.complete)
    return Annotated[cli_type, typer.Option(*flag.decls, **settings)]


def complete_backbone(incomplete: str) -> List[str]:
    """The aliases and a few timm names; timm's whole list (a slow import) only when none of them fits."""
    known = [b for b in (*vocab.BACKBONES, *vocab.TIMM_EXAMPLES) if b.startswith(incomplete)]
    if known or len(incomplete) < 3:
        return known
    import timm

    return timm.list_models(f"{incomplete}*")[:100]


def _cli_type(flag: vocab.Flag, hint: object) -> object:
    """What the command line parses a field as: its choices, the Flag's cli_type, or the field's type."""
    if flag.choices and flag.cli_type is None:
        return Literal[flag.choices]
    named = {"bool": bool, "str": str, "path": Optional[Path]}
    if flag.cli_type:
        return named[flag.cli_type]
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    return Optional[inner[0]] if inner and len(inner) < len(typing.get_args(hint)) else hint


def option_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per TrainOptions field, named by its Flag's key (input_size, multi) or the
    field, defaulting to the field's default as the command line writes it: train's options and tune's."""
    hints, defaults = typing.get_type_hints(vocab.TrainOptions), vocab.TrainOptions()
    parameters = []
    for name, flag in vocab.TrainOptions.flags().items():
        default = getattr(defaults, name)
        parameters.append(inspect.Parameter(
            flag.key or name, inspect.Parameter.KEYWORD_ONLY, annotation=flag_option(flag, _cli_type(flag, hints[name])),
            default=flag.show(default) if flag.show else default))
    return parameters


Device = flag_option(vocab.DEVICE, str, panel=False)
Threads = flag_option(vocab.THREADS, Optional[int], panel=False)
Workers = flag_option(vocab.WORKERS, Optional[int], panel=False)
BatchSize = flag_option(vocab.BATCH_SIZE, int, panel=False)
Out = Annotated[Optional[Path], typer.Option("-o", "--out", help="Write the output CSV here instead of stdout.")]
Seed = flag_option(vocab.SEED_FLAG, int, panel=False)
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Redo every image, replacing what an earlier run "
                                         "wrote in OUT, instead of resuming where it stopped.")]
SynthOverwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT when it holds a dataset that maskkit "
                                              "synth drew (its files only; any other non-empty folder is refused).")]
Masks = Annotated[Optional[Path], typer.Option(
    "--masks", help="Folder of person masks (PNG, 255 = person) mirroring the images: segment writes it, "
    "cam reads it (synth --with-masks writes OUT/masks).")]
RunFolder = Annotated[Path, typer.Argument(help="Run folder written by `maskkit train` (config.json + best.pt).")]

# --- train (its options come from TrainOptions' fields: option_parameters) ----------------------
RUN = vocab.RUN

TrainSource = Annotated[Path, typer.Argument(help="Manifest CSV from `maskkit split`, or DATA/train (split on the "
                                             f"fly into 5 person folds, seed {vocab.SEED}, saved in the run folder).")]
Recipe = Annotated[Optional[Path], typer.Option("--config", "-c", rich_help_panel=RUN, help="Recipe: a YAML file "
                                                "(from --print-config) or a run's config.json; flags given here win.")]
PrintConfig = Annotated[bool, typer.Option("--print-config", rich_help_panel=RUN,
                                           help="Write the effective recipe (YAML) to stdout and exit.")]
RunsDir = Annotated[Path, typer.Option("--runs-dir", rich_help_panel=RUN, help="Folder of run folders.")]
RunName = Annotated[Optional[str], typer.Option("--name", "-n", rich_help_panel=RUN,
                                                help="Run name (default BACKBONE-fFOLD).")]
TrainOverwrite = Annotated[bool, typer.Option("--overwrite", rich_help_panel=RUN, help="Replace the run folder "
                                              "RUNS_DIR/NAME when it holds a run (its run files are removed first); "
                                              "without it, train refuses and names --resume.")]
Resume = Annotated[Optional[Path], typer.Option(
    "--resume", rich_help_panel=RUN, help="Continue RUN from its last.pt (its config.json gives the options; only "
    "the machine settings --device, --workers, --cache, --threads, --logger and --wandb may change, and a larger "
    "--epochs extends it).")]
# train's own parameters, before its options: (name, type, default)
TRAIN_RUN_PARAMETERS = (("source", TrainSource, Path("data/train")), ("config", Recipe, None),
                        ("print_config", PrintConfig, False), ("runs_dir", RunsDir, Path("runs")), ("name", RunName, None),
                        ("overwrite", TrainOverwrite, False), ("resume", Resume, None))

Fixes = Annotated[Optional[List[str]], typer.Option(
    "--fixes", metavar="FILE", help="Fixes CSV to apply first (from `maskkit audit --fixes-out`), or a shipped list of "
    "corrections of the real competition data: 'known' (what two published lists agree on) or 'community' (the "
    "gender and age fixes only one of them gives). The lists: boostcampaitech3/level1-image-classification-level1-"
    "nlp-01 label_corrections.py and boostcampaitech4cv2/level1_imageclassification_cv-level1-cv-09 "
    "utils/mislabeled.csv; each row's reason names its sources (docs/formats.md). Both match whole folder names such "
    "as 000020_female_Asian_50 and apply only to a dataset holding at least half of their persons, so a drawn "
    "dataset is untouched. Repeat to apply several, in the order given.")]

Extra = Annotated[Optional[Path], typer.Option(
    "--extra", metavar="EXTRA/train", help="Extra persons (from `maskkit import`, in the competition layout) that "
    "train in every fold and never validate: fold -1 in the manifest; stratification ignores them.")]

# --- import --------------------------------------------------------------------------------------
ImportSource = Annotated[Path, typer.Argument(help="Folder of face photos named age_gender_race_date.jpg (UTKFace: "
                                              "gender 0 male, 1 female), or a CSV path,age,gender.")]
ImportOut = Annotated[Path, typer.Argument(help="Folder to write (OUT/train in the competition layout): new, empty, "
                                           "or an earlier import (a re-run adds to it, skipping finished persons).")]
ImportAges = Annotated[Optional[str], typer.Option("--ages", metavar="LOW-HIGH",
                                                   help="Only photos of these ages, in years, e.g. 60-120 or 60-.")]
ImportLimit = Annotated[Optional[int], typer.Option("--limit", min=1, help="At most N persons, drawn by --seed.")]

# --- segment and cam -----------------------------------------------------------------------------
SegmentModel = Annotated[Literal[vocab.SEGMENT_MODELS], typer.Option("--model", help="DeepLabV3 backbone.")]
Fill = Annotated[Literal[vocab.FILLS], typer.Option(
    "--fill", help="Background: black, white, gray, mean (the image's mean colour) or blur.")]
FaceDetector = Annotated[Literal[vocab.FACE_DETECTORS], typer.Option(
    "--detector", help="Face detector: mtcnn (ships its weights), dlib (HOG; pip install dlib-bin), haar (OpenCV 4 "
    "only), yunet (--weights its ONNX file), mediapipe (pip install mediapipe==0.10.14).")]
CropAspect = Annotated[Literal[vocab.CROP_ASPECTS], typer.Option(
    "--aspect", help="Shape of every crop, width:height: square (train's --crop auto then keeps the whole crop) or 3:4.")]
CropMargin = Annotated[float, typer.Option(
    "--margin", min=0.0, max=2.0, help="Widen the face box: each side moves out by this share of the face's width "
    "(left, right) or height (top, bottom), 0..2.")]
CamMethod = Annotated[Literal[vocab.CAM_METHODS], typer.Option("--method", help="CAM method.")]
TtaMode = Annotated[Literal[vocab.TTA_MODES], typer.Option(
    "--tta", help="Test-time augmentation: none or flip (average with the mirror image).")]


CamHead = Annotated[str, typer.Option("--head", autocompletion=complete_from(vocab.CAM_HEADS),
                                      help="class, mask, gender, age, a comma list, or all.")]


# --- predict and export --------------------------------------------------------------------------
PredictSources = Annotated[List[str], typer.Argument(
    metavar="MODELS_THEN_IMAGES", show_default=False,
    help="First the models: run folders (a folder holding config.json) or .onnx files from maskkit export; "
         "several give the mean of their probabilities. Then the images (default data/eval): DATA/eval, a folder "
         "(recursive), DATA/train or a manifest CSV (rows keyed by their paths, as split writes them), image files, "
         "globs ('more/*.png', expanded here when the shell did not) or - (paths on stdin, one per line).")]
Names = Annotated[bool, typer.Option("--names", help="Add mask,gender,age columns: the words of ans, for reading.")]
ValManifest = Annotated[Optional[Path], typer.Argument(
    metavar="MANIFEST", show_default=False,
    help="Labelled images to score on: a manifest CSV or DATA/train (default: the run's own validation fold "
         "of the manifest it trained on).")]
ValOut = Annotated[Optional[Path], typer.Option("-o", "--out", help="Write the predictions here (val_preds.csv's "
                                                "columns); stdout keeps the score row.")]
NoHeader = Annotated[bool, typer.Option("--no-header", help="Leave the CSV header out (to append rows: >> scores.csv).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No tables on stderr, for loops (the CSV row and any "
                                     "warning still print).")]
ExportRun = Annotated[Path, typer.Argument(metavar="RUN", help="Run folder written by `maskkit train` (config.json + best.pt).",
                                           show_default=False)]
OnnxOut = Annotated[Path, typer.Argument(metavar="FILE.onnx", help="The .onnx file to write (its preprocessing goes to FILE.onnx.json).",
                                         show_default=False)]
CheckImages = Annotated[Optional[List[Path]], typer.Option(
    "--check-images", help="Image files to add to the torch vs onnxruntime check (seeded random pixels always run).")]


# --- tune ---------------------------------------------------------------
Study = Annotated[Optional[str], typer.Option("--study", "-s", help="Study name: its trials go to "
                                              "RUNS_DIR/tune-NAME/ (with the SQLite file study.db by default).")]
SearchSpace = Annotated[Optional[Path], typer.Option("--space", help="Search-space YAML (default: the shipped "
                                                     "maskkit/data/search_space.yaml; see docs/formats.md).")]
Objective = Annotated[Literal["fold", "oof"], typer.Option(
    "--objective", help="fold: best val macro F1 of --fold, pruned per epoch; oof: pooled out-of-fold macro F1 "
    "of --folds K fold runs, pruned after each fold.")]
TuneFolds = Annotated[int, typer.Option("--folds", "-k", min=2, help="--objective oof: the first K folds of the manifest.")]
Trials = Annotated[int, typer.Option("--trials", min=1, help="Finished (complete or pruned) trials the study "
                                     "should hold, counted over all its workers.")]
Pruner = Annotated[Literal["median", "hyperband", "none"], typer.Option("--pruner", help="Optuna's pruner; a fold trial is first judged after its LR warmup.")]
Storage = Annotated[Optional[str], typer.Option("--storage", help="Study database URL (e.g. postgresql://user:pw@host/db "
                                                "for workers on many machines); default: sqlite in the study folder.")]
TuneOut = Annotated[Optional[Path], typer.Option("-o", "--out", help="With --best: write the best trial's recipe "
                                                 "(YAML for train --config) here instead of stdout.")]
Best = Annotated[bool, typer.Option("--best", help="Print the best trial's recipe (YAML for train --config) and write "
                                    "trials.csv, history.png and importance.png into the study folder.")]


# --- runs ----------------------------------------------------------------------------------------
RunsColumns = Annotated[Optional[str], typer.Option(
    "--columns", autocompletion=complete_from(vocab.RUNS_COLUMNS),
    help="Columns to show, e.g. name,status,backbone,val_f1,recipe (the terminal's default: "
    "name,status,fold,epochs,best_epoch,val_f1,oof_folds,oof_f1; piped CSV: every column).")]


# --- expert (issue 27) -----------------------------------------------------------------------------
ExpertData = Annotated[Path, typer.Argument(help="DATA/train (or DATA) of the competition layout.")]
ExpertOut = Annotated[Optional[Path], typer.Option(
    "-o", "--out", help="Write the opinions CSV here (resumable: a re-run continues a killed one) instead of stdout.")]
ExpertWorkers = Annotated[Optional[int], typer.Option(
    "--workers", "-j", min=0, help="Worker processes, each loading the face model once (default 1: this process).")]
AuditExpert = Annotated[Optional[str], typer.Option(
    "--expert", metavar="FILE", help="Opinions CSV of `maskkit expert` (or 'run': compute them now), one more "
    "evidence set beside --oof for gender, and age suspects where it and the fold models agree.")]

# --- calibrate, and the --calibration of predict and vote ---------------------------------------
OofFiles = Annotated[List[Path], typer.Argument(
    metavar="OOF", show_default=False,
    help="Out-of-fold predictions from `maskkit runs --recipe ID --oof-out FILE` (ImageID,ans,p0..p17,person,"
         "label,fold), one file per recipe; several also fit the weights of their soft vote.")]
CalibrateBiases = Annotated[bool, typer.Option("--biases", help="Also fit one log-bias per class (18 parameters; "
                                               "off by default: an earlier 18-bias fit lost 0.03 on eval).")]
CalibrateOut = Annotated[Optional[Path], typer.Option("-o", "--out", help="Write calib.json here instead of stdout.")]
Calibration = Annotated[Optional[Path], typer.Option(
    "--calibration", help="calib.json from `maskkit calibrate`: its fitted biases decide (and, fitted on several "
    "recipes, its vote weights weigh a soft vote of one prediction CSV per recipe, in calibrate's order).")]


# --- help text as click and every other CLI write it ---------------------------------------------
# typer 0.29 writes `{run}` for required arguments in usage lines, `<list[Path]>` as their type and
# `<bool>` beside plain flags (which makes `--soft true` look right; `true` is then read as a file).
# These three renderers are replaced: RUN, [DATA], FILES... in usage; `<path>...`; no type on a flag.
def _usage_name(argument) -> str:
    name = (argument.metavar or argument.name).upper() + ("..." if argument.nargs != 1 else "")
    return name if argument.required else f"[{name}]"


def _plain_type(render):
    def display_type_rich(param, ctx):
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            return None
        shown = render(param, ctx)
        if isinstance(shown, str) and shown.startswith("<list["):
            return f"<{shown[6:].split(']')[0].lower()}>..."
        return shown
    return display_type_rich


def conventional_help() -> None:
    """Patch typer's help renderers (kept when a typer release drops them: help then looks as before)."""
    from typer import core

    if hasattr(core.TyperArgument, "_usage_display_name"):
        core.TyperArgument._usage_display_name = _usage_name
    for cls in (core.TyperArgument, *core.TyperArgument.__mro__[1:2], core.TyperOption):
        if "display_type_rich" in vars(cls) and not getattr(cls.display_type_rich, "maskkit", False):
            cls.display_type_rich = _plain_type(cls.display_type_rich)
            cls.display_type_rich.maskkit = True


conventional_help()
