"""The `maskkit` command line: parses options and calls one module per subcommand.

Logic lives in the subcommand modules; this file only declares options (one vocabulary for all
subcommands: see maskkit/options.py), turns errors into one-line messages with the exit codes of
docs/formats.md, and imports heavy modules lazily so `--help` is fast.

Why over 400 lines: it is only declarations, one block of typed options per subcommand.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import List, Literal, Optional

# Set before torch is imported (lazily, by the subcommands): OpenMP threads that wait passively
# leave the cores to other processes instead of spinning (a shared machine otherwise collapses).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from maskkit import __version__  # noqa: E402
from maskkit import options as vocab  # noqa: E402
from maskkit.contract.errors import MaskkitError  # noqa: E402

app = typer.Typer(
    name="maskkit",
    help="Toolkit for mask / gender / age face-classification competitions (18 classes, macro F1).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@contextlib.contextmanager
def reported(command: str) -> Iterator[None]:
    """Turn MaskkitError into one line on stderr and its exit code; Ctrl-C into exit 130."""
    try:
        yield
    except MaskkitError as exc:
        typer.echo(f"maskkit {command}: error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo(f"maskkit {command}: interrupted", err=True)
        raise typer.Exit(130) from None


def parse_size(text: str, option: str) -> tuple[int, int]:
    """'384x512' -> (384, 512), as written (WIDTHxHEIGHT everywhere); a bad value is a usage error."""
    try:
        first, second = (int(v) for v in text.lower().split("x"))
        if first <= 0 or second <= 0:
            raise ValueError
    except ValueError:
        raise MaskkitError(f"{option} {text!r}: expected WIDTHxHEIGHT, two positive integers like 384x512") from None
    return first, second


def deprecated(old: str, new: str) -> None:
    """One line on stderr for an old option spelling (kept working for one release)."""
    typer.echo(f"maskkit: note: {old} is deprecated and goes in the next release; use {new}", err=True)


# Choice options: their values are listed in --help, checked, and completed by the shell.
AugmentationsChoice = Literal[vocab.AUGMENTATIONS]
CacheModesChoice = Literal[vocab.CACHE_MODES]
CamMethodsChoice = Literal[vocab.CAM_METHODS]
FillsChoice = Literal[vocab.FILLS]
OptimizersChoice = Literal[vocab.OPTIMIZERS]
PrecisionsChoice = Literal[vocab.PRECISIONS]
SchedulersChoice = Literal[vocab.SCHEDULERS]
SegmentModelsChoice = Literal[vocab.SEGMENT_MODELS]
TtaModesChoice = Literal[vocab.TTA_MODES]


def set_threads(threads: Optional[int]) -> None:
    from maskkit.engine.devices import use_threads

    use_threads(threads)


THREADS_HELP = "Torch threads (default: the cores other processes leave free)."
WORKERS_HELP = "Worker processes (default: from the device and the cores)."


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"maskkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Toolkit for mask / gender / age face-classification competitions (18 classes, macro F1).

    Subcommands read and write plain files so they chain in a shell:
    synth -> split -> train -> predict -> vote (see the README for the whole pipeline).
    """


# --- synth (issue 2) ---------------------------------------------------------------------------
@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to create (OUT/train, OUT/eval, OUT/masks); must be empty or absent."),
    persons: int = typer.Option(60, "--persons", help="Training persons (7 images each)."),
    eval_persons: int = typer.Option(20, "--eval-persons", help="Evaluation persons (7 images each, hex names, shuffled)."),
    size: str = typer.Option("384x512", "--size", help="Image size WIDTHxHEIGHT (the real data is 384x512)."),
    seed: int = typer.Option(vocab.SEED, "--seed", help="Same seed, byte-identical files."),
    noise: float = typer.Option(0.0, "--noise", help="Label errors: flip the gender of this fraction of persons and "
                                "swap incorrect_mask/normal of another such fraction (listed in train/injected_errors.csv)."),
    shortcut: float = typer.Option(0.0, "--shortcut", help="0..1: chance that a train person's background is chosen "
                                   "by gender x age group (eval backgrounds stay random)."),
    with_masks: bool = typer.Option(False, "--with-masks", help="Also write each image's true person mask under OUT/masks/."),
    masks_old: bool = typer.Option(False, "--masks", hidden=True, help="Deprecated spelling of --with-masks."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it holds a dataset written by synth."),
) -> None:
    """Draw a synthetic dataset in the competition layout (faces with masks, gender and age).

    Example: maskkit synth data --persons 200 --eval-persons 60 --size 192x256 --seed 1 --noise 0.05
    """
    from maskkit.commands import synth as synth_module   # lazy import: keeps --help fast

    if masks_old:
        deprecated("synth --masks", "--with-masks")
    with reported("synth"):
        synth_module.synthesize(out, persons=persons, eval_persons=eval_persons, size=parse_size(size, "--size"),
                                seed=seed, noise=noise, shortcut=shortcut, masks=with_masks or masks_old,
                                overwrite=overwrite)
# --- end synth ---

# --- split (issue 2) ---------------------------------------------------------------------------
@app.command()
def split(
    data: Path = typer.Argument(Path("data/train"), help="DATA/train of the competition layout (or DATA)."),
    folds: int = typer.Option(5, "--folds", "-k", help="Number of folds (>= 2)."),
    seed: int = typer.Option(vocab.SEED, "--seed", help="Seed: the same seed gives byte-identical folds."),
    fixes: Optional[str] = typer.Option(
        None, "--fixes", help="Fixes CSV to apply first (from `maskkit audit --fixes-out`), or 'known' "
        "for the agreed corrections of the real competition data."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write the manifest here instead of stdout."),
) -> None:
    """Split persons into stratified folds and write the manifest CSV (path,person,...,label,fold).

    A gender x age stratum with fewer persons than folds is named in a warning (some folds then
    lack it); persons never share folds. Example: maskkit split data/train --folds 5 --fixes known > folds.csv
    """
    from maskkit.commands import split as split_module

    with reported("split"):
        split_module.run(data, folds=folds, seed=seed, fixes=fixes, out=out)


# --- end split ---

# --- train / predict / runs / demo (issue 3) ---------------------------------------------------
DATA, MODEL, LOSS, AUG, OPTIM, RUN = "Data", "Model", "Loss", "Augmentation", "Optimisation", "Run"
# CLI parameter -> TrainOptions field, where the names differ.
TRAIN_FIELDS = {"multi": "heads", "input_size": "img_size", "img_size_old": "img_size"}


@app.command(rich_help_panel=None)
def train(
    ctx: typer.Context,
    source: Path = typer.Argument(Path("data/train"), help="Manifest CSV from `maskkit split`, or DATA/train "
                                  "(split on the fly into 5 person folds, seed 42, saved in the run folder)."),
    fold: str = typer.Option("0", "--fold", "-f", rich_help_panel=DATA, help="Validation fold; the other folds train. "
                             "all: every person trains, no validation, a fixed --epochs (the full-data model; "
                             "best.pt = the final weights)."),
    cache: CacheModesChoice = typer.Option("auto", "--cache", rich_help_panel=DATA,
                              help="ram: decode every image once into memory; none; auto: ram when it fits."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", rich_help_panel=DATA, help=WORKERS_HELP),
    backbone: str = typer.Option("effb2", "--backbone", "-b", rich_help_panel=MODEL, help="resnet18, resnet34, "
                                 "effb0..effb4, vit-tiny, vit-small, lite0 (offline ImageNet weights), or any timm model name."),
    multi: bool = typer.Option(False, "--multi/--single", rich_help_panel=MODEL,
                               help="Heads: mask, gender and age (multi) or one 18-way head."),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained", rich_help_panel=MODEL,
                                    help="Start from ImageNet weights."),
    weights: Optional[Path] = typer.Option(None, "--weights", rich_help_panel=MODEL,
                                           help="Local weights file for the backbone (offline servers; ViTs at any size)."),
    input_size: str = typer.Option("256x320", "--input-size", rich_help_panel=MODEL, help="Model input WIDTHxHEIGHT."),
    img_size_old: Optional[str] = typer.Option(None, "--img-size", hidden=True,
                                               help="Deprecated: HEIGHTxWIDTH; use --input-size WIDTHxHEIGHT."),
    dropout: float = typer.Option(0.0, "--dropout", rich_help_panel=MODEL, help="Dropout before the heads."),
    age_weight: float = typer.Option(0.0, "--age-weight", rich_help_panel=LOSS, help="> 0 adds an age-regression "
                                     "branch (MSE on normalised years) with this loss weight, e.g. 0.1."),
    old_age: int = typer.Option(60, "--old-age", rich_help_panel=LOSS, help="Train with age >= N as the oldest group "
                                "(e.g. 58); validation always scores the true groups (60)."),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing", rich_help_panel=LOSS,
                                          help="Cross-entropy label smoothing (0 = off)."),
    focal: float = typer.Option(0.0, "--focal", rich_help_panel=LOSS, help="Focal-loss gamma (0 = plain cross-entropy), e.g. 2."),
    balanced: bool = typer.Option(False, "--balanced", rich_help_panel=LOSS, help="Class-balanced sampling (with replacement)."),
    aug: AugmentationsChoice = typer.Option("basic", "--aug", rich_help_panel=AUG,
                            help="none, basic (crop, brightness/contrast, noise, flip) or strong."),
    cutmix: float = typer.Option(0.0, "--cutmix", rich_help_panel=AUG, help="Probability of CutMix per batch."),
    crop: str = typer.Option("auto", "--crop", rich_help_panel=AUG, help="Centre crop before resizing: full (the whole "
                             "frame), competition (0.8 of the height, 0.85 of the width: the competition's 3:4 "
                             "portraits), two fractions H,W, or auto: full for square images (face crops), "
                             "competition otherwise. Stored in config.json; predict and cam reuse it."),
    epochs: int = typer.Option(10, "--epochs", "-e", rich_help_panel=OPTIM,
                               help="Epochs (with --resume: a larger number extends the run)."),
    batch_size: int = typer.Option(32, "--batch-size", rich_help_panel=OPTIM, help="Images per step."),
    opt: OptimizersChoice = typer.Option("adamw", "--opt", rich_help_panel=OPTIM,
                            help="Optimizer (timm's factory; no weight decay on norms and biases)."),
    sched: SchedulersChoice = typer.Option("cosine", "--sched", rich_help_panel=OPTIM,
                              help="Learning-rate schedule after the warmup (timm's factory, stepped per update)."),
    lr: float = typer.Option(2e-3, "--lr", rich_help_panel=OPTIM, help="Peak learning rate."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", rich_help_panel=OPTIM, help="Weight decay."),
    warmup: float = typer.Option(1.0, "--warmup", rich_help_panel=OPTIM, help="Epochs of linear learning-rate warmup."),
    ema: bool = typer.Option(False, "--ema", rich_help_panel=OPTIM,
                             help="Keep an exponential moving average of the weights; validate and save it."),
    ema_decay: float = typer.Option(0.999, "--ema-decay", rich_help_panel=OPTIM, help="EMA decay."),
    patience: int = typer.Option(0, "--patience", rich_help_panel=OPTIM,
                                 help="Stop after N epochs without a better val macro F1 (0 = never)."),
    precision: PrecisionsChoice = typer.Option("auto", "--precision", rich_help_panel=OPTIM,
                                  help="CUDA autocast: auto (bf16 where supported, else fp16), bf16, fp16 or fp32."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", rich_help_panel=RUN, help="Recipe: a YAML file "
                                          "(from --print-config) or a run's config.json; flags given here win."),
    print_config: bool = typer.Option(False, "--print-config", rich_help_panel=RUN,
                                      help="Write the effective recipe (YAML) to stdout and exit."),
    seed: int = typer.Option(vocab.SEED, "--seed", rich_help_panel=RUN,
                             help="Seed of everything random (same seed, same weights on the CPU)."),
    device: str = typer.Option("auto", "--device", rich_help_panel=RUN, help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, rich_help_panel=RUN, help=THREADS_HELP),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", rich_help_panel=RUN, help="Folder of run folders."),
    out_old: Optional[Path] = typer.Option(None, "--out", hidden=True, help="Deprecated spelling of --runs-dir."),
    name: Optional[str] = typer.Option(None, "--name", "-n", rich_help_panel=RUN, help="Run name (default BACKBONE-fFOLD)."),
    overwrite: bool = typer.Option(False, "--overwrite", rich_help_panel=RUN, help="Replace an existing run of the same name."),
    exist_ok_old: bool = typer.Option(False, "--exist-ok", hidden=True, help="Deprecated spelling of --overwrite."),
    resume: Optional[Path] = typer.Option(None, "--resume", rich_help_panel=RUN, help="Continue RUN from its last.pt "
                                          "(its config.json gives the options; only --device, --workers, --cache, "
                                          "--threads and --wandb may change, and a larger --epochs extends it)."),
    wandb: Optional[str] = typer.Option(None, "--wandb", rich_help_panel=RUN,
                                        help="Log to this Weights & Biases project (needs wandb)."),
) -> None:
    """Train one fold into runs/NAME/ (config, metrics, best.pt, last.pt, val_preds.csv, plots).

    --fold all trains the full-data model: every person, --epochs fixed, no validation.
    Example: maskkit train folds.csv --fold 0 --backbone effb2 --multi --age-weight 0.1 --epochs 12
    """
    from maskkit.commands import train as train_module
    from maskkit.contract.recipe import read_recipe, write_recipe

    for old, new, used in (("--img-size HEIGHTxWIDTH", "--input-size WIDTHxHEIGHT", img_size_old is not None),
                           ("train --out", "--runs-dir", out_old is not None), ("--exist-ok", "--overwrite", exist_ok_old)):
        if used:
            deprecated(old, new)
    with reported("train"):
        values = dict(ctx.params)
        values["multi"] = "multi" if multi else "single"
        values["fold"] = vocab.parse_fold(fold)
        values["input_size"] = parse_size(input_size, "--input-size")[::-1]
        if img_size_old is not None:
            values["img_size_old"] = parse_size(img_size_old, "--img-size")
        values["weights"] = str(weights) if weights else None
        fields = {f.name for f in train_module.dataclasses.fields(train_module.TrainOptions)}
        given = {}
        for param, value in values.items():
            field = TRAIN_FIELDS.get(param, param)
            if field in fields and getattr(ctx.get_parameter_source(param), "name", "") == "COMMANDLINE":
                given[field] = value
        recipe = read_recipe(config) if config is not None else {}
        defaults = {TRAIN_FIELDS.get(p, p): v for p, v in values.items()
                    if TRAIN_FIELDS.get(p, p) in fields and p != "img_size_old"}
        options = train_module.TrainOptions.from_dict({**defaults, **recipe, **given}, str(config or "options"))
        if print_config:
            options.check()
            write_recipe(options.to_dict())
            return
        train_module.train(source, options, out=out_old or runs_dir, name=name, overwrite=overwrite or exist_ok_old,
                           resume=resume, given=set(given) | set(recipe) if resume is not None else None)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run folder written by `maskkit train` (uses its best.pt)."),
    data: Path = typer.Argument(Path("data/eval"), help="DATA/eval (rows in info.csv's order) or a folder of images."),
    tta: TtaModesChoice = typer.Option("none", "--tta",
                            help="Test-time augmentation: none or flip (average with the mirror image)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write the CSV here instead of stdout."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help=WORKERS_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """Write the prediction CSV (ImageID,ans,p0..p17) of a trained run for DATA/eval.

    Example: maskkit predict runs/effb2-f0 data/eval --tta flip -o preds/effb2-f0.csv
    """
    from maskkit.commands import predict as predict_module

    with reported("predict"):
        predict_module.predict(run, data, tta=tta, out=out, batch_size=batch_size, device=device, workers=workers,
                               threads=threads)


@app.command()
def runs(
    folders: Optional[List[Path]] = typer.Argument(None, help="Run folders (default: every run under runs/)."),
) -> None:
    """Compare runs: backbone, heads, key options, best epoch, val macro F1 and per-task F1.

    Example: maskkit runs runs/* > runs.csv
    """
    from maskkit.commands import runs as runs_module

    with reported("runs"):
        runs_module.run(folders or None)


@app.command()
def demo(
    out: Path = typer.Argument(Path("demo"), help="Working folder (re-running reuses what is there)."),
    epochs: int = typer.Option(4, "--epochs", help="Training epochs."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """Draw a small dataset, split it, train lite0, predict, vote, and score against the drawn truth.

    Example: maskkit demo
    """
    from maskkit.commands import demo as demo_module

    with reported("demo"):
        set_threads(threads)
        demo_module.run(out, epochs=epochs, device=device)


# --- end train ---

# --- vote / audit (issue 4) --------------------------------------------------------------------

@app.command()
def vote(
    files: List[Path] = typer.Argument(..., help="Prediction CSVs (ImageID,ans[,p0..p17]); best model first."),
    soft: bool = typer.Option(False, "--soft", help="Average p0..p17 instead of counting ans."),
    file_weights: Optional[str] = typer.Option(None, "--file-weights", help="One vote weight per file, e.g. 2,1,1."),
    weights_old: Optional[str] = typer.Option(None, "--weights", hidden=True, help="Deprecated spelling of --file-weights."),
    info: Optional[Path] = typer.Option(None, "--info", help="info.csv whose ImageID order the output follows."),
    probs: bool = typer.Option(False, "--probs", help="With --soft: also write the averaged p0..p17."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write here instead of stdout."),
) -> None:
    """Hard or soft vote of prediction CSVs; ties go to the earliest input.

    Example: maskkit vote preds/effb2.csv preds/vit.csv preds/r34.csv > submission.csv
    """
    from maskkit.commands import vote as vote_module

    if weights_old is not None:
        deprecated("vote --weights", "--file-weights")
    with reported("vote"):
        vote_module.run(files, soft=soft, weights=file_weights or weights_old, info=info, probs=probs, out=out)


@app.command()
def audit(
    data: Path = typer.Argument(..., help="DATA/train (or DATA) of the competition layout."),
    oof: Optional[List[Path]] = typer.Option(
        None, "--oof", help="Run folder (reads RUN/val_preds.csv) or val_preds CSV; repeat once per fold, "
        "and add other models' or seeds' folds as well: a label is suspect when they agree."),
    manifest: Optional[Path] = typer.Option(
        None, "--manifest", help="Judge this manifest's labels (e.g. after split --fixes) instead of train.csv's."),
    fixes_out: Optional[Path] = typer.Option(
        None, "--fixes-out", help="Write the gender and mask-swap suggestions as a fixes CSV for `split --fixes` (needs --oof)."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Draw a contact sheet of the top suspects (PNG)."),
    top: int = typer.Option(30, "--top", min=1, help="Suspects on the contact sheet."),
    min_score: Optional[float] = typer.Option(
        None, "--min-score",
        help="List gender and mask suspects from this P(label wrong) on, 0..1 (default 0.4, measured in "
             "benchmarks/realfaces_audit.py)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write the suspects CSV here instead of stdout."),
) -> None:
    """Rank suspect files and labels: structural checks, plus label checks from out-of-fold predictions.

    Example: maskkit audit data/train --oof runs/f0 --oof runs/f1 --oof runs/f2 --fixes-out fixes.csv --sheet audit.png
    """
    from maskkit.commands import audit as audit_module

    with reported("audit"):
        audit_module.run(data, oof=oof or [], manifest=manifest, fixes_out=fixes_out, sheet=sheet, out=out,
                         min_score=min_score, top=top)

# --- end vote ---

# --- segment (issue 5) -------------------------------------------------------------------------
@app.command()
def segment(
    src: Path = typer.Argument(..., metavar="IN", help="Dataset root, DATA/train, DATA/eval or any folder of images (never modified)."),
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder: IN's tree with the backgrounds replaced and the other files copied."),
    model: SegmentModelsChoice = typer.Option("resnet50", "--model", help="DeepLabV3 backbone."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local DeepLabV3 weights file (offline servers); default: download torchvision's COCO-with-VOC-labels weights."),
    fill: FillsChoice = typer.Option("black", "--fill", help="Background: black, white, gray, mean (the image's mean colour) or blur."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Also save binary person masks in this folder (PNG, 255 = person), mirroring IN."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda or cuda:N."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Person probability from which a pixel is person."),
    short_side: int = typer.Option(520, "--short-side", min=16, help="Working resolution: the shorter side in pixels (masks are resized back)."),
    size_old: Optional[int] = typer.Option(None, "--size", min=16, hidden=True, help="Deprecated spelling of --short-side."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", min=0, help="Decoding processes (default: up to 4)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images an earlier run finished (default: skip them, i.e. resume)."),
) -> None:
    """Replace image backgrounds with DeepLabV3's person mask; OUT mirrors IN. Resumes when re-run.

    Example: maskkit segment data data_seg --fill gray --masks data_masks --weights deeplabv3_resnet50_coco.pth
    """
    from maskkit.commands import segment as segment_module

    if size_old is not None:
        deprecated("segment --size", "--short-side (--size means WIDTHxHEIGHT elsewhere)")
    with reported("segment"):
        set_threads(threads)
        segment_module.run(
            src, out, model=model, weights=weights, fill=fill, masks=masks, batch_size=batch_size,
            device=device, threshold=threshold, size=size_old or short_side, workers=workers, overwrite=overwrite,
        )
# --- end segment ---

# --- cam (issue 5) -----------------------------------------------------------------------------
def complete_heads(incomplete: str) -> list[str]:
    """Shell completion of --head: one head, or the next item of a comma list."""
    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    return [prefix + h for h in vocab.CAM_HEADS if h.startswith(last)]


@app.command()
def cam(
    run: Path = typer.Argument(..., help="Run folder written by `maskkit train` (config.json + best.pt)."),
    images: List[Path] = typer.Argument(..., help="Images, folders (searched recursively), DATA/train, DATA/eval "
                                        "or a manifest CSV (train data and manifests give true labels)."),
    out_dir: Path = typer.Option(Path("cam"), "--out-dir", help="Folder for OUT_DIR/<head>/<image path>.png, cam.csv, sheet.png."),
    head: str = typer.Option("class", "--head", autocompletion=complete_heads,
                             help="class, mask, gender, age, a comma list, or all."),
    target: str = typer.Option("pred", "--target", help="Explain the predicted class (pred), the true one (true) "
                               "or class K of the head."),
    method: CamMethodsChoice = typer.Option("gradcam", "--method", help="CAM method."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Contact sheet PNG (default: OUT_DIR/sheet.png)."),
    summary: bool = typer.Option(False, "--summary", help="CSV of the CAM mass on the person vs the background, "
                                 "per class and overall (needs --masks)."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Folder of person masks (from segment --masks or synth --with-masks)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write the summary CSV here instead of stdout."),
    output_old: Optional[Path] = typer.Option(None, "--output", hidden=True, help="Deprecated spelling of --out."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Explain only N images, spread evenly over the input."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward/backward pass."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:1..."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """Grad-CAM overlays of a run's decisions, a contact sheet, and how much it looks at the background.

    Example: maskkit cam runs/effb2 data/train --limit 64 --summary --masks data/masks -o cam_summary.csv
    """
    from maskkit.commands import cam as cam_module

    if output_old is not None:
        deprecated("cam --output", "-o/--out")
    if out is not None and (out.is_dir() or not out.suffix):  # the old meaning of cam --out: the overlay folder
        deprecated("cam --out DIR (a folder)", "--out-dir DIR; -o/--out now names the summary CSV")
        out_dir, out = out, None
    with reported("cam"):
        set_threads(threads)
        cam_module.run(run, images, out=out_dir, head=head, target=target, method=method, sheet=sheet,
                       summary=summary, masks=masks, summary_out=out or output_old, batch_size=batch_size,
                       device=device, limit=limit)


# --- end cam ---


# --- score (issue 10) ----------------------------------------------------------------------------
@app.command()
def score(
    submission: Path = typer.Argument(..., help="Prediction CSV (ImageID,ans), e.g. from `maskkit vote`."),
    truth: Path = typer.Argument(..., help="Truth CSV (ImageID,ans) of the same images, e.g. DATA/eval/truth.csv."),
    confusion: Optional[Path] = typer.Option(None, "--confusion", help="Also draw the 18x18 confusion matrix here (PNG)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write the score row here instead of stdout."),
) -> None:
    """Score a submission: macro F1 over the 18 classes, accuracy and each task's F1 (one CSV row).

    Example: maskkit score submission.csv data/eval/truth.csv --confusion confusion.png >> scores.csv
    """
    from maskkit.commands import score as score_module

    with reported("score"):
        score_module.run(submission, truth, out=out, confusion=confusion)
# --- end score ---


def main() -> None:
    """The `maskkit` entry point: a bad option value is one line and exit 2, not a usage box."""
    import sys

    try:
        code = app(prog_name="maskkit", standalone_mode=False)
    except typer.Abort:  # Ctrl-C while click itself was running
        typer.echo("maskkit: interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # click's UsageError, BadParameter, NoSuchOption... (typer vendors click)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `maskkit` or a bare group: show the help
            exc.show()
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "maskkit"
        typer.echo(f"{where}: error: {exc.format_message()} (see {where} --help)", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
