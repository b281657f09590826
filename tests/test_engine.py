"""The engine's shared pieces: the progress factory in logs, the thread default, the loss object."""

from __future__ import annotations

import torch

from maskkit.contract import progress as progress_module
from maskkit.engine.devices import free_cores, use_threads
from maskkit.engine.loss import MaskLoss


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    """Under nohup a rich bar shows nothing: a plain line every so often instead, none for short jobs."""
    clock = iter(range(0, 1000, 10))  # each call to the clock moves 10 s on
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    with progress_module.progress_bar("predicting", 6, fields="loss {loss:.2f}", loss=1.0) as bar:
        for step in range(6):
            bar.advance(1, loss=0.5)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines and all(line.startswith("predicting: ") and "loss 0.50" in line for line in lines)
    assert lines[-1].startswith("predicting: 6/6 (100%")
    with progress_module.progress_bar("quiet", 3, show=False) as bar:
        bar.advance(3)
    assert capsys.readouterr().err == ""


def test_threads_default_to_the_free_cores_and_can_be_set():
    before = torch.get_num_threads()
    try:
        assert use_threads(1) == 1 == torch.get_num_threads()
        assert use_threads(None) == free_cores() == torch.get_num_threads() >= 1
    finally:
        torch.set_num_threads(before)


def test_the_loss_object_matches_its_options_and_mixes_cutmix_targets():
    torch.manual_seed(0)
    outputs = {"class": torch.randn(4, 18), "age_years": torch.randn(4)}
    targets = {"label": torch.tensor([0, 5, 17, 3]), "age_years": torch.zeros(4)}
    plain, aged = MaskLoss(), MaskLoss(age_weight=0.5)
    mse = torch.nn.functional.mse_loss(outputs["age_years"], targets["age_years"])
    assert float(aged(outputs, targets)) == pytest_approx(float(plain(outputs, targets)) + 0.5 * float(mse))
    perm = torch.tensor([1, 0, 3, 2])
    shuffled = {k: v[perm] for k, v in targets.items()}
    mixed = plain.mixed(outputs, targets, perm, 0.25)
    assert float(mixed) == pytest_approx(0.25 * float(plain(outputs, targets)) + 0.75 * float(plain(outputs, shuffled)))


def pytest_approx(value):
    import pytest

    return pytest.approx(value, rel=1e-6)
