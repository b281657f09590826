"""DistributedDataParallel for `train` under torchrun (one process per GPU, or gloo on the CPU).

`torchrun --nproc_per_node N -m maskkit train ...` starts N copies of train with RANK, WORLD_SIZE
and LOCAL_RANK set; `Distributed.from_env` joins them into one process group (nccl on CUDA, each
process on cuda:LOCAL_RANK; gloo on the CPU). Without torchrun's variables everything here is a
no-op for a single process (`Distributed()`), so train has one code path.

What each rank does (see commands/train.py): every rank trains on its slice of the seeded order
(data/sampling.ResumableSampler with rank and world_size), rank 0 alone writes the run folder,
and validation probabilities are gathered from all ranks (`engine.loop.gather_inference`), so val macro F1 is
that of a single-process evaluation. `--batch-size` is per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from maskkit.contract.errors import MaskkitError, RunFailure

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the process group (rank 0 of 1 when not started by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine
    enabled: bool = False
    nccl: bool = False  # a process group is up (also for torchrun with one process)

    @property
    def main(self) -> bool:
        """The rank that writes files and prints."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> Distributed:
        """Join torchrun's process group when its variables are set; else a single process.

        `device`: the --device option; cpu selects gloo, anything else CUDA with nccl (cuda:N is
        replaced by cuda:LOCAL_RANK: under torchrun each process takes its own GPU)."""
        if not all(name in os.environ for name in ENV):
            return cls()
        rank, world, local = (int(os.environ[name]) for name in ENV)
        on_cuda = device != "cpu" and torch.cuda.is_available()
        if device not in ("auto", "cpu") and not on_cuda:
            raise MaskkitError(f"--device {device}: CUDA is not available here (use --device cpu)")
        if on_cuda:
            if local >= torch.cuda.device_count():
                raise MaskkitError(f"LOCAL_RANK {local}: only {torch.cuda.device_count()} CUDA device(s) here "
                                   "(torchrun --nproc_per_node at most that many)")
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if on_cuda else "gloo",
                                    device_id=torch.device("cuda", local) if on_cuda else None)
        return cls(rank, world, local, int(os.environ.get("LOCAL_WORLD_SIZE", world)), enabled=True, nccl=on_cuda)

    def device(self, resolved: torch.device) -> torch.device:
        """The device this rank trains on: cuda:LOCAL_RANK under torchrun on CUDA, else `resolved`."""
        if self.enabled and resolved.type == "cuda":
            self._own_gpu()
            return torch.device("cuda", self.local_rank)
        return resolved

    def _own_gpu(self) -> None:
        """Make cuda:LOCAL_RANK current again (resolving --device cuda:N makes N current, and nccl's
        object collectives run on the current device)."""
        if self.nccl:
            torch.cuda.set_device(self.local_rank)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DistributedDataParallel around `model` (already on `device`), or `model` itself."""
        if not self.enabled:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def copy_from_main(self, module: torch.nn.Module) -> None:
        """Every rank's `module` made rank 0's, in place: BatchNorm running statistics (and an EMA)
        drift apart per rank, and validation must score the weights rank 0 saves."""
        if not self.enabled:
            return
        self._own_gpu()
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is True on any (a stop request seen by one rank)."""
        if not self.enabled:
            return flag
        self._own_gpu()
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sums over all ranks (train loss and image counts of an epoch)."""
        if not self.enabled:
            return values
        self._own_gpu()
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj: object) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        self._own_gpu()
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, make):
        """`make()` on rank 0, its result (or its one-line error) on every rank.

        Rank 0 checks the inputs and writes the run folder; the others wait for it instead of
        writing, and fail with the same message when it fails (no rank is left waiting)."""
        if not self.enabled:
            return make()
        box: list = [None]

        def broadcast() -> None:
            self._own_gpu()
            dist.broadcast_object_list(box, src=0)

        if self.main:
            try:
                box[0] = ("ok", make())
            except (MaskkitError, RunFailure) as exc:
                box[0] = ("error", str(exc), exc.exit_code)
                broadcast()
                raise
            except BaseException as exc:
                box[0] = ("error", f"rank 0 failed: {type(exc).__name__}: {exc}", RunFailure.exit_code)
                broadcast()
                raise
        broadcast()
        if box[0][0] == "ok":
            return box[0][1]
        _, message, code = box[0]
        raise (MaskkitError if code == MaskkitError.exit_code else RunFailure)(message)

    def close(self) -> None:
        if self.enabled:
            if dist.is_initialized():
                dist.destroy_process_group()


def env_rank() -> int:
    """This process's rank as torchrun set it (0 when not under torchrun), before any process group."""
    return int(os.environ.get("RANK", "0")) if all(name in os.environ for name in ENV) else 0


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model)."""
    return model.module if isinstance(model, DistributedDataParallel) else model

