"""Run control around a training loop: seeding, Ctrl-C that stops after the step, CPU determinism."""

from __future__ import annotations

import os
import random
import signal
import threading
from contextlib import contextmanager

import numpy as np
import torch

from maskkit.contract.files import console


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def sigint_sets_flag(trainer):
    """First Ctrl-C: finish the current step, write last.pt, exit 130. A second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:  # a forked loader worker: keep serving batches until told to stop
            return
        trainer.stop_requested = True
        console.print("stopping after this step to write last.pt (Ctrl-C again to stop at once)")
        signal.signal(signal.SIGINT, previous)

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def deterministic(device: torch.device):
    """Deterministic algorithms on the CPU (cheap there), restored afterwards."""
    if device.type != "cpu":
        yield
        return
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)
