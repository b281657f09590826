"""The training objective as an object built once from the options, and CutMix."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskkit.contract.labels import TASKS
from maskkit.contract.labels import AGE_SCALE, target_to_age
from maskkit.engine.models import AGE_YEARS


def task_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0, gamma: float = 0.0) -> torch.Tensor:
    """Cross-entropy (with label smoothing), focal-weighted by (1 - p_true) ** gamma when gamma > 0."""
    logits = logits.float()
    loss = F.cross_entropy(logits, target, reduction="none", label_smoothing=smoothing)
    if gamma > 0:
        p_true = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        loss = (1 - p_true) ** gamma * loss
    return loss.mean()


def year_distribution(years: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 101): the discretised Gaussian around each labelled age (years clamped to 0..100), sums to 1."""
    support = torch.arange(AGE_YEARS, device=years.device, dtype=torch.float32)
    centre = years.float().clamp(0, AGE_YEARS - 1)[:, None]
    return (-((support - centre) ** 2) / (2 * sigma**2)).softmax(dim=1)


def dldl_loss(logits: torch.Tensor, years: torch.Tensor, sigma: float) -> torch.Tensor:
    """DLDL-v2 (Gao et al. 2018): KL(Gaussian around the year || softmax over 0..100) + L1 of the
    distribution's expectation (in AGE_SCALE units, so both terms are about one at the start)."""
    log_p = logits.float().log_softmax(dim=1)
    kl = F.kl_div(log_p, year_distribution(years, sigma), reduction="batchmean")
    expectation = log_p.exp() @ torch.arange(AGE_YEARS, device=logits.device, dtype=torch.float32)
    return kl + (expectation - years.float()).abs().mean() / AGE_SCALE


@dataclass(frozen=True)
class MaskLoss:
    """CE/focal on the class (single head) or the sum over the mask, gender and age heads (multi),
    plus `age_weight` x the age branch's loss: MSE on normalised years (mse) or `dldl_loss` (dldl)."""

    label_smoothing: float = 0.0
    focal: float = 0.0  # gamma; 0 = plain cross-entropy
    age_weight: float = 0.0
    age_sigma: float = 3.0  # dldl's Gaussian (years)

    @classmethod
    def from_options(cls, options) -> MaskLoss:
        return cls(label_smoothing=options.label_smoothing, focal=options.focal, age_weight=options.age_weight,
                   age_sigma=options.age_sigma)

    def __call__(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        smoothing, gamma = self.label_smoothing, self.focal
        if "class" in outputs:
            loss = task_loss(outputs["class"], targets["label"], smoothing, gamma)
        else:
            loss = sum(task_loss(outputs[task], targets[task], smoothing, gamma) for task in TASKS)
        if "age_dist" in outputs:
            years = target_to_age(targets["age_years"].float())
            loss = loss + self.age_weight * dldl_loss(outputs["age_dist"], years, self.age_sigma)
        elif "age_years" in outputs:
            loss = loss + self.age_weight * F.mse_loss(outputs["age_years"].float(), targets["age_years"].float())
        return loss

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
