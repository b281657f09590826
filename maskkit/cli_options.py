"""The command line's options, declared once: one `Annotated` type and one help text per option.

cli.py's subcommands name these types; a parameter's default is written beside it (train's are
TrainOptions' field defaults). Choice options are `Literal`s of the vocabulary in options.py, so
typer lists, checks and completes their values and no command checks them again.
"""

from __future__ import annotations

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


Device = Annotated[str, typer.Option("--device", help="auto (cuda when available), cpu, cuda or cuda:N.")]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", callback=_bounded(lambda n: vocab.check_workers_threads(threads=n)),
    help="Torch threads, 1..cores (default: the cores other processes leave free).")]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", "-j", callback=_bounded(lambda n: vocab.check_workers_threads(workers=n)),
    help="Worker processes that load images, 0..cores x 4 (0: this process; default: from the device and the cores).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per step (per forward pass).")]
Out = Annotated[Optional[Path], typer.Option("-o", "--out", help="Write the output CSV here instead of stdout.")]
Seed = Annotated[int, typer.Option("--seed", min=vocab.SEED_RANGE[0], max=vocab.SEED_RANGE[1],
                                   help="Seed of everything random: the same seed, the same output.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Redo every image, replacing what an earlier run "
                                         "wrote in OUT, instead of resuming where it stopped.")]
SynthOverwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT when it holds a dataset that maskkit "
                                              "synth drew (its files only; any other non-empty folder is refused).")]
Masks = Annotated[Optional[Path], typer.Option(
    "--masks", help="Folder of person masks (PNG, 255 = person) mirroring the images: segment writes it, "
    "cam reads it (synth --with-masks writes OUT/masks).")]
RunFolder = Annotated[Path, typer.Argument(help="Run folder written by `maskkit train` (config.json + best.pt).")]

# --- train ---------------------------------------------------------------------------------------
DATA, MODEL, LOSS, AUG, OPTIM, RUN = "Data", "Model", "Loss", "Augmentation", "Optimisation", "Run"

TrainSource = Annotated[Path, typer.Argument(help="Manifest CSV from `maskkit split`, or DATA/train (split on the "
                                             f"fly into 5 person folds, seed {vocab.SEED}, saved in the run folder).")]
Fold = Annotated[str, typer.Option("--fold", "-f", rich_help_panel=DATA, help="Validation fold; the other folds "
                                   "train. all: every person trains, no validation, a fixed --epochs (the full-data "
                                   "model; best.pt = the final weights).")]
Cache = Annotated[Literal[vocab.CACHE_MODES], typer.Option(
    "--cache", rich_help_panel=DATA, help="Decode every image once into one file that every process on the machine maps (DDP ranks, "
    "concurrent folds): ram (/dev/shm), disk (~/.cache/maskkit, $MASKKIT_CACHE_DIR); none; auto: disk when it fits.")]
def complete_backbone(incomplete: str) -> List[str]:
    """The aliases and a few timm names; timm's whole list (a slow import) only when none of them fits."""
    known = [b for b in (*vocab.BACKBONES, *vocab.TIMM_EXAMPLES) if b.startswith(incomplete)]
    if known or len(incomplete) < 3:
        return known
    import timm

    return timm.list_models(f"{incomplete}*")[:100]


Backbone = Annotated[str, typer.Option("--backbone", "-b", rich_help_panel=MODEL, autocompletion=complete_backbone,
                                       help=f"{', '.join(vocab.BACKBONES)} (lite0-2: offline ImageNet weights), "
                                       "or any timm model name.")]
Multi = Annotated[bool, typer.Option("--multi/--single", rich_help_panel=MODEL,
                                     help="Heads: mask, gender and age (multi) or one 18-way head.")]
Pretrained = Annotated[bool, typer.Option("--pretrained/--no-pretrained", rich_help_panel=MODEL,
                                          help="Start from ImageNet weights.")]
BackboneWeights = Annotated[Optional[Path], typer.Option(
    "--weights", rich_help_panel=MODEL, help="Local weights file for the backbone (offline servers; ViTs at any size).")]
InputSize = Annotated[str, typer.Option("--input-size", rich_help_panel=MODEL, help="Model input WIDTHxHEIGHT.")]
Dropout = Annotated[float, typer.Option("--dropout", rich_help_panel=MODEL, help="Dropout before the heads.")]
AgeWeight = Annotated[float, typer.Option("--age-weight", rich_help_panel=LOSS, help="> 0 adds the age branch of "
                                          "--age-loss (learnt from the years) with this loss weight; 0 turns it off.")]
OldAge = Annotated[int, typer.Option("--old-age", rich_help_panel=LOSS, help="Train with age >= N as the oldest "
                                     "group (e.g. 58); validation always scores the true groups (60).")]
LabelSmoothing = Annotated[float, typer.Option("--label-smoothing", rich_help_panel=LOSS,
                                               help="Cross-entropy label smoothing (0 = off).")]
Focal = Annotated[float, typer.Option("--focal", rich_help_panel=LOSS,
                                      help="Focal-loss gamma (0 = plain cross-entropy), e.g. 2.")]
Balanced = Annotated[bool, typer.Option("--balanced/--no-balanced", rich_help_panel=LOSS,
                                        help="Class-balanced sampling (with replacement).")]
Aug = Annotated[Literal[vocab.AUGMENTATIONS], typer.Option(
    "--aug", rich_help_panel=AUG, help="none (as validation: centre crop and resize), basic (+ brightness/contrast, "
    "Gaussian noise, horizontal flip) or strong (basic + a random shift, scale and rotation, hue/saturation or "
    "colour jitter, and CoarseDropout holes).")]
Cutmix = Annotated[float, typer.Option("--cutmix", rich_help_panel=AUG, help="Probability of CutMix per batch.")]
Crop = Annotated[str, typer.Option("--crop", rich_help_panel=AUG, autocompletion=complete_from(vocab.CROP_MODES), help="Centre crop before resizing: full (the whole "
                                   "frame), competition (0.8 of the height, 0.85 of the width: the competition's 3:4 "
                                   "portraits), two fractions H,W, or auto: full for square images (face crops), "
                                   "competition otherwise. Stored in config.json; predict and cam reuse it.")]
Epochs = Annotated[int, typer.Option("--epochs", "-e", rich_help_panel=OPTIM,
                                     help="Epochs (with --resume: a larger number extends the run).")]
Optimizer = Annotated[Literal[vocab.OPTIMIZERS], typer.Option(
    "--opt", rich_help_panel=OPTIM, help="Optimizer (timm's factory; no weight decay on norms and biases).")]
Scheduler = Annotated[Literal[vocab.SCHEDULERS], typer.Option(
    "--sched", rich_help_panel=OPTIM, help="Learning-rate schedule after the warmup (timm's factory, stepped per update).")]
LearningRate = Annotated[float, typer.Option("--lr", rich_help_panel=OPTIM, help="Peak learning rate.")]
WeightDecay = Annotated[float, typer.Option("--weight-decay", rich_help_panel=OPTIM, help="Weight decay.")]
Warmup = Annotated[float, typer.Option("--warmup", rich_help_panel=OPTIM, help="Epochs of linear learning-rate warmup.")]
Ema = Annotated[bool, typer.Option("--ema/--no-ema", rich_help_panel=OPTIM,
                                   help="Keep an exponential moving average of the weights; validate and save it.")]
EmaDecay = Annotated[float, typer.Option("--ema-decay", rich_help_panel=OPTIM, help="EMA decay.")]
Patience = Annotated[int, typer.Option("--patience", rich_help_panel=OPTIM,
                                       help="Stop after N epochs without a better val macro F1 (0 = never).")]
Precision = Annotated[Literal[vocab.PRECISIONS], typer.Option(
    "--precision", rich_help_panel=OPTIM, help="CUDA autocast: auto (bf16 where supported, else fp16), bf16, fp16 or fp32.")]
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
Logger = Annotated[Literal[vocab.LOGGERS], typer.Option(
    "--logger", rich_help_panel=RUN, help="Scalars per step and epoch: csv (metrics.csv, steps.csv), tensorboard "
    "(also RUN/tb/, offline; needs tensorboard) or wandb (also Weights & Biases; needs wandb).")]
Wandb = Annotated[Optional[str], typer.Option("--wandb", rich_help_panel=RUN, metavar="PROJECT",
                                              help="The Weights & Biases project of --logger wandb (default maskkit; "
                                              "given alone, it implies --logger wandb).")]

Fixes = Annotated[Optional[List[str]], typer.Option(
    "--fixes", metavar="FILE", help="Fixes CSV to apply first (from `maskkit audit --fixes-out`), or 'known' for the "
    "agreed corrections of the real competition data (matched on whole folder names such as 000020_female_Asian_50, "
    "so a drawn dataset is untouched). Repeat to apply several, in the order given.")]

# --- segment and cam -----------------------------------------------------------------------------
SegmentModel = Annotated[Literal[vocab.SEGMENT_MODELS], typer.Option("--model", help="DeepLabV3 backbone.")]
Fill = Annotated[Literal[vocab.FILLS], typer.Option(
    "--fill", help="Background: black, white, gray, mean (the image's mean colour) or blur.")]
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


# --- train's age branch and tune ---------------------------------------------------------------
AgeLoss = Annotated[Literal[vocab.AGE_LOSSES], typer.Option(
    "--age-loss", rich_help_panel=LOSS, help="The age branch --age-weight turns on: mse (regression of the years) "
    "or dldl (a distribution over the years 0..100: KL to a Gaussian + L1 on its mean; with --multi its mass "
    "below 30, 30..OLD_AGE-1 and OLD_AGE+ is the age group head).")]
AgeSigma = Annotated[float, typer.Option("--age-sigma", rich_help_panel=LOSS,
                                         help="dldl: the Gaussian's standard deviation around the labelled age, in years.")]
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
