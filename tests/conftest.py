"""Shared fixtures: small drawn datasets, made once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maskkit.cli import app


@pytest.fixture(scope="session")
def drawn(tmp_path_factory) -> Path:
    """A small drawn dataset in the competition layout (read-only: copy it before breaking it)."""
    from maskkit.commands.synth import synthesize

    root = tmp_path_factory.mktemp("drawn") / "data"
    synthesize(root, persons=60, eval_persons=8, size=(48, 64), seed=3)
    return root


@pytest.fixture
def drawn_copy(drawn, tmp_path) -> Path:
    """A private copy of the drawn dataset that a test may break on purpose."""
    copy = tmp_path / "data"
    shutil.copytree(drawn, copy)
    return copy


@pytest.fixture
def cli():
    """Invoke the maskkit app in-process: cli('split', 'data/train') -> Result (stdout, stderr, exit_code)."""
    runner = CliRunner()

    def invoke(*args: object):
        return runner.invoke(app, [str(a) for a in args])

    return invoke
