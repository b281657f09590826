"""Constants and helpers the tests share (the fixtures themselves live in conftest.py)."""

from __future__ import annotations

import contextlib

import torch

from maskkit.options import TrainOptions

# A few-second training on the drawn 48x64 images: timm's tiny test ResNet from scratch.
# Its own settings, not the real-faces defaults (strong aug, cutmix, EMA, DLDL age: benchmarks/README.md).
# The one tiny recipe: in process as TrainOptions(**FAST), on the command line as train_flags(FAST).
FAST = dict(backbone="test_resnet", pretrained=False, img_size=(48, 40), batch_size=16, lr=5e-3, aug="none",
            label_smoothing=0.0, workers=0, warmup=0.5, device="cpu", cache="ram", threads=1, opt="adamw",
            weight_decay=0.01, dropout=0.0, balanced=False, cutmix=0.0, ema=False, age_weight=0.1, age_loss="mse")
FOLDS = 4  # the shared drawn dataset has too few old men for 5 folds


def tiny(**changes) -> dict:
    """FAST with `changes` (TrainOptions fields)."""
    return {**FAST, **changes}


def train_flags(recipe: dict) -> list[str]:
    """`maskkit train` flags that set every field of `recipe` (TrainOptions fields), spelt by the fields'
    own Flags, so the command-line tests train exactly what the in-process ones do."""
    flags, words = TrainOptions.flags(), []
    for name, value in recipe.items():
        flag = flags[name]
        if value is None:  # the field's default, which no flag spells
            continue
        if "/" in flag.name:  # --ema/--no-ema, --multi/--single
            on, off = flag.name.split("/")
            words.append(on if (flag.show(value) if flag.show else value) else off)
        else:
            words += [flag.name, str(flag.show(value) if flag.show else value)]
    return words


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread: on a shared 2-core machine, two threads per process are several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def assert_one_line_error(result, *needles: str, code: int = 2, after_messages: bool = False) -> None:
    """A command refused with one line on stderr holding every needle, the exit code `code`, no traceback.
    `after_messages`: the command's own messages (a report, progress) may come before that last line,
    as when a write fails after the work."""
    assert result.exit_code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    if after_messages:
        lines = lines[-1:]
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
