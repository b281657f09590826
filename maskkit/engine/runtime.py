"""Run control around a training loop: seeding, Ctrl-C or SIGTERM that stops after the step, CPU determinism."""

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
def stop_signals_set_flag(trainer):
    """First Ctrl-C or SIGTERM: finish the current step, write last.pt, exit 130 (SIGTERM: 143). A second
    one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    main_pid = os.getpid()
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in stops}

    def handler(signum, frame):
        if os.getpid() != main_pid:  # a forked loader worker: keep serving batches until told to stop
            return
        trainer.stop_requested, trainer.stop_signal = True, signum
        console.print("stopping after this step to write last.pt (Ctrl-C again to stop at once)")
        for each in stops:
            signal.signal(each, previous[each])

    for signum in stops:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum in stops:
            signal.signal(signum, previous[signum])


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
