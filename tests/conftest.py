"""Shared fixtures: small drawn datasets and tiny trained runs, made once per test session, and
one CliRunner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import FAST, FOLDS, one_thread
from maskkit.cli import app


@pytest.fixture(scope="session", autouse=True)
def image_cache_folders(tmp_path_factory):
    """The shared image caches (data/cache.py) of this session, its subprocesses included, in a temp folder."""
    import os

    root = tmp_path_factory.mktemp("image_caches")
    saved = {name: os.environ.get(name) for name in ("MASKKIT_CACHE_DIR", "MASKKIT_RAM_CACHE_DIR")}
    os.environ["MASKKIT_CACHE_DIR"], os.environ["MASKKIT_RAM_CACHE_DIR"] = str(root / "disk"), str(root / "ram")
    yield root
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def drawn(tmp_path_factory) -> Path:
    """A small drawn dataset in the competition layout (read-only: copy it before breaking it)."""
    from maskkit.commands import synth

    root = tmp_path_factory.mktemp("drawn") / "data"
    synth.run(root, persons=60, eval_persons=8, size=(48, 64), seed=3)
    return root


@pytest.fixture
def drawn_copy(drawn, tmp_path) -> Path:
    """A private copy of the drawn dataset that a test may break on purpose."""
    copy = tmp_path / "data"
    shutil.copytree(drawn, copy)
    return copy


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner):
    """Invoke the maskkit app in-process: cli('split', 'data/train') -> Result (stdout, stderr, exit_code)."""

    def invoke(*args: object):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture(scope="session")
def manifest_path(tmp_path_factory, drawn) -> Path:
    """The 4-fold manifest of the shared drawn dataset (fold 0 = validation)."""
    from maskkit.contract.layout import load_train
    from maskkit.contract.manifest import write_manifest
    from maskkit.data.folds import make_manifest

    path = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    write_manifest(make_manifest(load_train(drawn / "train", report=False), FOLDS, 42), path)
    return path


def _trained(tmp_path_factory, manifest_path: Path, name: str, **options) -> Path:
    from maskkit.commands import train
    from maskkit.options import TrainOptions

    with one_thread():
        return train.run(manifest_path, TrainOptions(**{**FAST, **options}), out=tmp_path_factory.mktemp("runs"),
                     name=name, show_progress=False)


@pytest.fixture(scope="session")
def single_run(tmp_path_factory, manifest_path) -> Path:
    """A trained run: 18-way head, no age regression, class-balanced sampling."""
    return _trained(tmp_path_factory, manifest_path, "single", heads="single", age_weight=0.0, epochs=10, balanced=True)


@pytest.fixture(scope="session")
def multi_run(tmp_path_factory, manifest_path) -> Path:
    """A trained run: mask, gender and age heads with the age-regression branch (weight 0.1)."""
    return _trained(tmp_path_factory, manifest_path, "multi", heads="multi", age_weight=0.1, epochs=10)
