"""The training objective as an object built once from the options, and the batch mixes: CutMix (a box,
or the vertical halves of two images of one class) and MixUp."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from maskkit.engine.heads import AgeHead, TaskHeads, create_age_head, get_task_heads


def task_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0, gamma: float = 0.0,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (with label smoothing), focal-weighted by (1 - p_true) ** gamma when gamma > 0;
    `weight` (B,): each image's share (0: no loss), the sum still divided by the batch size."""
    logits = logits.float()
    loss = F.cross_entropy(logits, target, reduction="none", label_smoothing=smoothing)
    if gamma > 0:
        p_true = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        loss = (1 - p_true) ** gamma * loss
    return loss.mean() if weight is None else (loss * weight.float()).sum() / len(loss)


def soft_f1_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                 eps: float = 1e-7) -> torch.Tensor:
    """1 - the soft macro F1 of a batch: the F1 of each class the (weighted) targets hold, counting
    probabilities as fractional hits (TP = sum p_true, FP = sum p_other, FN = sum 1 - p_true), averaged;
    differentiable, 0 when every image puts all its mass on its label. 0 without a weighted image."""
    p = logits.float().softmax(dim=1)
    y = F.one_hot(target, p.shape[1]).float()
    w = torch.ones(len(p), device=p.device) if weight is None else weight.float()
    w = w[:, None]
    tp, fp, fn = (w * p * y).sum(0), (w * p * (1 - y)).sum(0), (w * (1 - p) * y).sum(0)
    present = (w * y).sum(0) > 0
    if not bool(present.any()):
        return p.sum() * 0
    f1 = 2 * tp / (2 * tp + fp + fn + eps)
    return 1 - f1[present].mean()


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
    f1_loss: float = 0.0  # weight of 1 - soft macro F1 beside the CE of each class head
    task: TaskHeads = field(init=False, repr=False, compare=False)
    age: AgeHead = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", get_task_heads(self.heads))
        age_head = self.age_loss if self.age_weight > 0 else "none"  # as TrainOptions.age_head
        object.__setattr__(self, "age", create_age_head(age_head, sigma=self.age_sigma))

    @classmethod
    def from_options(cls, options) -> MaskLoss:
        return cls(label_smoothing=options.label_smoothing, focal=options.focal, age_weight=options.age_weight,
                   age_sigma=options.age_sigma, heads=options.heads, age_loss=options.age_loss,
                   f1_loss=options.f1_loss)

    def criterion(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """One class head's loss: CE/focal, plus f1_loss x (1 - soft macro F1) when f1_loss > 0."""
        loss = task_loss(logits, target, self.label_smoothing, self.focal, weight)
        return loss + self.f1_loss * soft_f1_loss(logits, target, weight) if self.f1_loss > 0 else loss

    def __call__(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of a batch; targets["age_keep"] (train --drop-ages): 0 for the images that give no age loss."""
        loss = self.task.loss(outputs, targets, self.criterion)
        age = self.age.loss(outputs, targets)
        return loss if age is None else loss + self.age_weight * age

    def mixed(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
              perm: torch.Tensor, lam: float) -> torch.Tensor:
        """The loss of a mixed batch (CutMix, MixUp): lam x on the targets + (1 - lam) x on the pasted images'
        targets (every head's: cross-entropy is linear in its target, so each head learns the mixed target)."""
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


def vertical_cutmix(images: torch.Tensor, labels: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The bottom half of each image replaced by that of another image of the same class in the batch
    (an image alone in its class keeps its own): (images, permutation, lambda = the kept top's share).
    The class targets stay; the age years mix by lambda as CutMix's."""
    batch, _, height, _ = images.shape
    order = torch.randperm(batch, generator=generator)
    labels = labels.cpu()[order]
    perm = torch.arange(batch)
    for label in labels.unique():
        members = order[labels == label]  # the class's images, in a random order
        perm[members] = members.roll(1)  # each takes the bottom of the one before it (a cycle)
    perm = perm.to(images.device)
    top = height // 2
    mixed = images.clone()
    mixed[:, :, top:] = images[perm][:, :, top:]
    return mixed, perm, top / height


def mixup(images: torch.Tensor, generator: torch.Generator, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp (Zhang et al. 2018): lam x the batch + (1 - lam) x a shuffled batch, lam ~ Beta(alpha, alpha);
    (images, permutation, lam). lam is drawn by numpy from a seed `generator` gives (torch's Beta takes no generator)."""
    lam = float(np.random.default_rng(int(torch.randint(2**31 - 1, (), generator=generator))).beta(alpha, alpha))
    perm = torch.randperm(len(images), generator=generator).to(images.device)
    return lam * images + (1 - lam) * images[perm], perm, lam
