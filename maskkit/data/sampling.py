"""Training targets of manifest rows, and the resumable (optionally class-balanced) sampler."""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch.utils.data import Sampler

from maskkit.contract.labels import GENDERS, MASKS, NUM_CLASSES, age_group, age_to_target, encode
from maskkit.data.loader import SeededSampler


def in_age_band(rows: pd.DataFrame, band: tuple[int, int] | None) -> np.ndarray:
    """Which rows' recorded age lies in `band` (low, high years, both included; None: none)."""
    age = rows["age"].to_numpy(np.float64)
    return np.zeros(len(age), bool) if band is None else (age >= band[0]) & (age <= band[1])


def targets_of(rows: pd.DataFrame, old_age: int, drop_ages: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Per-image targets: training groups use `old_age`; `true_label` always uses the true groups (60).
    `drop_ages` (a band of years): also "age_keep", 0 for the band's images (no age loss), else 1."""
    mask = rows["mask"].map(MASKS.index).to_numpy(np.int64)
    gender = rows["gender"].map(GENDERS.index).to_numpy(np.int64)
    age = rows["age"].to_numpy(np.float64)
    train_group = age_group(age, old_from=old_age).astype(np.int64)
    return {
        "label": encode(mask, gender, train_group).astype(np.int64),
        "mask": mask,
        "gender": gender,
        "age": train_group,
        "age_years": age_to_target(age).astype(np.float32),
        "true_label": encode(mask, gender, age_group(age)).astype(np.int64),
    } | ({} if drop_ages is None else {"age_keep": (~in_age_band(rows, drop_ages)).astype(np.float32)})


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling probabilities that give every present class the same share."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()


class ResumableSampler(SeededSampler):
    """SeededSampler that can sample class-balanced (with replacement) and skip the items already
    trained this epoch (`skip`), so a resumed epoch sees exactly the rest of the interrupted one."""

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(n, shuffle=True, seed=seed)
        self.weights = weights
        self.skip = 0
        self.rank, self.world_size = int(rank), int(world_size)

    def __len__(self) -> int:
        return self.n // self.world_size - self.skip

    def __iter__(self):
        if self.weights is None:
            items = list(super().__iter__())
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.choice(self.n, size=self.n, replace=True, p=self.weights)
            seeds = rng.integers(0, 2**63 - 1, size=self.n)
            items = [(int(i), int(s)) for i, s in zip(order, seeds)]
        if self.world_size > 1:  # DDP: this rank's slice of the seeded order, as many items on every rank
            items = items[self.rank:self.n - self.n % self.world_size:self.world_size]
        return iter(items[self.skip:])


class ShardSampler(Sampler):
    """Evaluation under DDP: positions rank, rank + world_size, ... (every image on exactly one rank)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))
