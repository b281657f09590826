"""Tiny trained runs shared by the train / predict / runs tests (made once per test session).

Not a test module: imported by tests/test_train.py, test_predict.py and test_runs.py.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from maskkit.contract.layout import load_train
from maskkit.contract.files import write_csv
from maskkit.commands.split import make_manifest

# A few-second training on the drawn 48x64 images: timm's tiny test ResNet from scratch.
FAST = dict(backbone="test_resnet", pretrained=False, img_size=(48, 40), batch_size=16, lr=5e-3, aug="none",
            workers=0, warmup=0.5, device="cpu", cache="ram")
FOLDS = 4  # the shared drawn dataset has too few old men for 5 folds

_made: dict[str, Path] = {}


@contextlib.contextmanager
def one_thread():
    """Train on one CPU thread: on a shared 2-core machine, two threads per process are several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def manifest(tmp_path_factory, drawn: Path) -> Path:
    """The 4-fold manifest of the shared drawn dataset (fold 0 = validation)."""
    if "manifest" not in _made:
        path = tmp_path_factory.mktemp("manifest") / "manifest.csv"
        write_csv(make_manifest(load_train(drawn / "train", report=False), FOLDS, 42), path)
        _made["manifest"] = path
    return _made["manifest"]


def trained_run(tmp_path_factory, drawn: Path, name: str, **options) -> Path:
    """runs/<name>, trained once per session with FAST options updated by `options`."""
    if name not in _made:
        from maskkit.commands.train import TrainOptions, train

        out = tmp_path_factory.mktemp("runs")
        with one_thread():
            _made[name] = train(manifest(tmp_path_factory, drawn), TrainOptions(**{**FAST, **options}),
                                out=out, name=name, progress=False)
    return _made[name]


def single_run(tmp_path_factory, drawn: Path) -> Path:
    """18-way head, no age regression, class-balanced sampling."""
    return trained_run(tmp_path_factory, drawn, "single", heads="single", epochs=10, balanced=True)


def multi_run(tmp_path_factory, drawn: Path) -> Path:
    """Mask, gender and age heads with the age-regression branch (weight 0.1)."""
    return trained_run(tmp_path_factory, drawn, "multi", heads="multi", age_weight=0.1, epochs=10)
