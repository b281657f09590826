"""Worker processes: they die with the main process (forked DataLoader workers, expert's spawned pool),
and OpenCV runs without its thread pool while workers are forked."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator

import cv2

PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def die_with_parent(parent: int, _worker: int = 0) -> None:
    """A worker process's first call (a DataLoader's worker init via functools.partial): on Linux the
    worker dies with the main process `parent`, even when it is stuck.

    Without it, `kill -9` of the main process leaves workers blocked on a full queue forever.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def serial_opencv() -> Iterator[None]:
    """OpenCV without its own thread pool while DataLoader workers are forked.

    A worker forked from a process whose OpenCV pool is running can deadlock in that pool (seen with
    cv2.setNumThreads in the worker); parallelism comes from the workers and the writing threads.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)
