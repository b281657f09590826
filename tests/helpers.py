"""Constants and helpers the tests share (the fixtures themselves live in conftest.py)."""

from __future__ import annotations

import contextlib

import torch

# A few-second training on the drawn 48x64 images: timm's tiny test ResNet from scratch.
# Its own settings, not the real-faces defaults (strong aug, cutmix, EMA, DLDL age: benchmarks/README.md).
FAST = dict(backbone="test_resnet", pretrained=False, img_size=(48, 40), batch_size=16, lr=5e-3, aug="none",
            label_smoothing=0.0, workers=0, warmup=0.5, device="cpu", cache="ram", threads=1, opt="adamw",
            weight_decay=0.01, dropout=0.0, balanced=False, cutmix=0.0, ema=False, age_weight=0.1, age_loss="mse")
# FAST's recipe part as train flags, for the tests that train through the command line.
FAST_RECIPE_FLAGS = ["--opt", "adamw", "--weight-decay", "0.01", "--dropout", "0", "--no-balanced", "--cutmix", "0",
                     "--no-ema"]
FOLDS = 4  # the shared drawn dataset has too few old men for 5 folds


@contextlib.contextmanager
def one_thread():
    """Run torch on one CPU thread: on a shared 2-core machine, two threads per process are several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
