"""The training objective as an object built once from the options, and CutMix."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from maskkit.engine.heads import AgeHead, TaskHeads, create_age_head, get_task_heads


def task_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0, gamma: float = 0.0) -> torch.Tensor:
    """Cross-entropy (with label smoothing), focal-weighted by (1 - p_true) ** gamma when gamma > 0."""
    logits = logits.float()
    loss = F.cross_entropy(logits, target, reduction="none", label_smoothing=smoothing)
    if gamma > 0:
        p_true = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        loss = (1 - p_true) ** gamma * loss
    return loss.mean()


@dataclass(frozen=True)
class MaskLoss:
    """CE/focal on the task heads (`heads`: the class, or the sum over mask, gender and age), plus
    `age_weight` x the loss of the age head `age_loss` (engine/heads.py; none when age_weight is 0)."""

    label_smoothing: float = 0.0
    focal: float = 0.0  # gamma; 0 = plain cross-entropy
    age_weight: float = 0.0
    age_sigma: float = 3.0  # dldl's Gaussian (years)
    heads: str = "single"
    age_loss: str = "mse"
    task: TaskHeads = field(init=False, repr=False, compare=False)
    age: AgeHead = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", get_task_heads(self.heads))
        age_head = self.age_loss if self.age_weight > 0 else "none"  # as TrainOptions.age_head
        object.__setattr__(self, "age", create_age_head(age_head, sigma=self.age_sigma))

    @classmethod
    def from_options(cls, options) -> MaskLoss:
        return cls(label_smoothing=options.label_smoothing, focal=options.focal, age_weight=options.age_weight,
                   age_sigma=options.age_sigma, heads=options.heads, age_loss=options.age_loss)

    def __call__(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        smoothing, gamma = self.label_smoothing, self.focal
        loss = self.task.loss(outputs, targets, lambda logits, target: task_loss(logits, target, smoothing, gamma))
        age = self.age.loss(outputs, targets)
        return loss if age is None else loss + self.age_weight * age

    def mixed(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
              perm: torch.Tensor, lam: float) -> torch.Tensor:
        """The loss of a CutMix batch: lam x on the targets + (1 - lam) x on the pasted images' targets."""
        shuffled = {k: v[perm] for k, v in targets.items()}
        return lam * self(outputs, targets) + (1 - lam) * self(outputs, shuffled)


def cutmix(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a random box of a shuffled batch into the batch: (images, permutation, lambda = kept area)."""
    batch, _, height, width = images.shape
    lam = float(torch.rand((), generator=generator))
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    perm = torch.randperm(batch, generator=generator).to(images.device)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
    return mixed, perm, 1 - (y1 - y0) * (x1 - x0) / (height * width)
