"""The option vocabulary shared by the command line and the modules behind it (no heavy imports:
cli.py reads these to build `--help` and shell completion).

One name, one meaning, in every subcommand:
- sizes are WIDTHxHEIGHT (`--size` of drawn images, `--input-size` of a model's input);
- `-o/--out` is always a file (stdout when absent); folders are positional or `--*-dir`;
- `--weights FILE` is always a local weights file for the network the command builds;
- `--masks DIR` is always a folder of person masks; `--overwrite` replaces earlier outputs;
- `--seed` defaults to SEED; `-j/--workers` counts worker processes; `--threads` torch threads.
"""

from __future__ import annotations

SEED = 42
AUGMENTATIONS = ("none", "basic", "strong")
HEADS = ("single", "multi")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CACHE_MODES = ("auto", "ram", "none")
# A few of timm's optimizers and schedulers (the library call accepts any timm optimizer name).
OPTIMIZERS = ("adamw", "adam", "nadamw", "sgd", "lamb", "lion", "adabelief", "rmsproptf")
SCHEDULERS = ("cosine", "tanh", "poly", "step", "constant")
TTA_MODES = ("none", "flip")
FILLS = ("black", "white", "gray", "mean", "blur")  # segment's backgrounds
SEGMENT_MODELS = ("resnet50", "resnet101", "mobilenet")
CAM_METHODS = ("gradcam", "gradcam++", "eigencam")
CAM_HEADS = ("class", "mask", "gender", "age", "all")
