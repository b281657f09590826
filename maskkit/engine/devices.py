"""Devices shared by train, predict, segment and cam: --device parsing, autocast dtype, workers."""

from __future__ import annotations

import os

import torch

from maskkit.contract.errors import MaskkitError
from maskkit.options import check_workers_threads, cpu_cores


cpu_count = cpu_cores  # the cores this process may run on (its affinity mask), not all the machine's


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; a named device that is not there is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MaskkitError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MaskkitError(f"--device {name}: CUDA is not available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise MaskkitError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MaskkitError(f"--device {name}: MPS is not available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None:
        # cuda:N becomes the current device: the loader's pin-memory thread and libraries that use
        # "the" GPU then work on N instead of opening a context on GPU 0 too.
        torch.cuda.set_device(device)
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype on CUDA (bf16 where supported, else fp16); None (fp32) elsewhere."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def default_workers(device: torch.device) -> int:
    """Loader workers: most cores on a GPU server; on the CPU the model needs the cores itself."""
    cpus = cpu_count()
    if device.type == "cuda":  # all cores but the main process's (8 workers left a 16-core server's GPU waiting)
        return max(1, min(16, cpus - 1))
    return 1 if cpus <= 4 else 2


def free_cores() -> int:
    """Cores this process may use that other processes are not busy on (1-minute load average)."""
    cpus = cpu_count()
    try:
        busy = int(round(os.getloadavg()[0]))
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(cpus, cpus - busy))


def use_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads`, or by default the cores left free by other processes.

    More threads than free cores make every step several times slower on a shared machine (they
    spin waiting for cores another process holds); the CLI also sets OMP_WAIT_POLICY=PASSIVE before
    torch is imported. DataLoader workers run one torch thread each (PyTorch sets it in workers).
    """
    check_workers_threads(threads=threads)
    count = threads or free_cores()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
