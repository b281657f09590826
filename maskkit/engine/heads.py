"""Head kinds, looked up by name: the linear heads a `MaskModel` carries, what its forward makes of
them, how they are scored, and their loss terms (docs/formats.md, "Age head").

Task heads (`options.HEADS`): `single` is one 18-way head `"class"`; `multi` is `"mask"` (3),
`"gender"` (2) and `"age"` (3). Age heads (`options.AGE_HEADS`): `none`; `mse`, `"age_years"` (B,)
regressing normalised years (`contract.labels.age_to_target`); `dldl`, `"age_dist"` (B,101) logits over
the years 0..100 whose expectation is `"age_years"` and, with multi heads, whose mass below 30, from 30
to old_age - 1 and from old_age on is the `"age"` group head (as log-probabilities).

A new age loss is a subclass of `AgeHead` registered with `@register_age_head`, its name in
`options.AGE_LOSSES`, and its test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from maskkit.contract.errors import MaskkitError
from maskkit.contract.labels import AGE_SCALE, NUM_CLASSES, TASKS, YOUNG_BELOW, age_to_target, target_to_age
from maskkit.options import AGE_HEADS, HEADS

AGE_YEARS = 101  # the dldl head's support: years 0..100

Outputs = Mapping[str, torch.Tensor]
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- task heads ----------------------------------------------------------------------------

class TaskHeads:
    """The class heads: their linear outputs, probabilities, Grad-CAM scores and (logits, target) pairs."""

    name: ClassVar[str]
    outputs: ClassVar[dict[str, int]]  # linear head name -> width

    def class_probs(self, outputs: Outputs) -> torch.Tensor:
        """(B, 18) class probabilities."""
        raise NotImplementedError

    def task_probs(self, outputs: Outputs) -> dict[str, torch.Tensor]:
        """{"mask": (B,3), "gender": (B,2), "age": (B,3)} probabilities."""
        raise NotImplementedError

    def scores(self, outputs: Outputs, head: str) -> torch.Tensor:
        """What Grad-CAM explains for `head` (class, mask, gender or age): logits or log-probabilities."""
        raise NotImplementedError

    def loss(self, outputs: Outputs, targets: Outputs, criterion: Criterion) -> torch.Tensor:
        """`criterion(logits, target)` summed over the heads; with targets["age_keep"] (train --drop-ages)
        `criterion(logits, target, weight)` leaves out the age of the images whose weight is 0."""
        raise NotImplementedError


class SingleHead(TaskHeads):
    """One 18-way head; the task probabilities are its marginals (class = 6*mask + 3*gender + age)."""

    name = "single"
    outputs = {"class": NUM_CLASSES}

    def class_probs(self, outputs: Outputs) -> torch.Tensor:
        return outputs["class"].float().softmax(dim=1)

    def task_probs(self, outputs: Outputs) -> dict[str, torch.Tensor]:
        joint = self.class_probs(outputs).reshape(-1, *TASKS.values())
        return {"mask": joint.sum((2, 3)), "gender": joint.sum((1, 3)), "age": joint.sum((1, 2))}

    def scores(self, outputs: Outputs, head: str) -> torch.Tensor:
        if head == "class":
            return outputs["class"]
        grid = torch.log_softmax(outputs["class"], 1).view(-1, *TASKS.values())
        summed = {"mask": (2, 3), "gender": (1, 3), "age": (1, 2)}[head]
        return torch.logsumexp(grid, dim=summed)  # the log of the marginal probability

    def loss(self, outputs: Outputs, targets: Outputs, criterion: Criterion) -> torch.Tensor:
        keep = targets.get("age_keep")
        if keep is None:
            return criterion(outputs["class"], targets["label"])
        # The images without age train the mask x gender marginal (6 classes, label // 3), the age summed out.
        grid = torch.log_softmax(outputs["class"].float(), 1).view(-1, *TASKS.values())
        return (criterion(outputs["class"], targets["label"], keep)
                + criterion(torch.logsumexp(grid, dim=3).flatten(1), targets["label"] // 3, 1 - keep))


class MultiHead(TaskHeads):
    """A head per task; the class probabilities are p_mask x p_gender x p_age."""

    name = "multi"
    outputs = dict(TASKS)

    def class_probs(self, outputs: Outputs) -> torch.Tensor:
        p_mask, p_gender, p_age = (outputs[task].float().softmax(dim=1) for task in TASKS)
        joint = p_mask[:, :, None, None] * p_gender[:, None, :, None] * p_age[:, None, None, :]
        return joint.reshape(joint.shape[0], NUM_CLASSES)

    def task_probs(self, outputs: Outputs) -> dict[str, torch.Tensor]:
        return {task: outputs[task].float().softmax(dim=1) for task in TASKS}

    def scores(self, outputs: Outputs, head: str) -> torch.Tensor:
        if head != "class":
            return outputs[head]
        joint = (torch.log_softmax(outputs["mask"], 1)[:, :, None, None]
                 + torch.log_softmax(outputs["gender"], 1)[:, None, :, None]
                 + torch.log_softmax(outputs["age"], 1)[:, None, None, :])
        return joint.flatten(1)  # log p_mask + log p_gender + log p_age

    def loss(self, outputs: Outputs, targets: Outputs, criterion: Criterion) -> torch.Tensor:
        keep = targets.get("age_keep")
        if keep is None:
            return sum(criterion(outputs[task], targets[task]) for task in TASKS)
        return (criterion(outputs["mask"], targets["mask"]) + criterion(outputs["gender"], targets["gender"])
                + criterion(outputs["age"], targets["age"], keep))


TASK_HEADS: dict[str, TaskHeads] = {kind.name: kind() for kind in (SingleHead, MultiHead)}


def get_task_heads(name: str) -> TaskHeads:
    """The task-head kind called `name` (options.HEADS); MaskkitError naming the choices otherwise."""
    if name not in HEADS or name not in TASK_HEADS:
        raise MaskkitError(f"unknown heads {name!r}: use {' or '.join(HEADS)}")
    return TASK_HEADS[name]


def heads_of(outputs: Outputs) -> TaskHeads:
    """The task-head kind whose linear outputs a forward's `outputs` hold (predict, val and export read
    outputs without their model)."""
    for kind in TASK_HEADS.values():
        if kind.outputs.keys() <= outputs.keys():
            return kind
    raise KeyError(f"outputs {sorted(outputs)} hold the heads of none of {', '.join(HEADS)}")


# --- age heads -----------------------------------------------------------------------------

AGE_HEAD_KINDS: dict[str, type[AgeHead]] = {}


def register_age_head(cls: type[AgeHead]) -> type[AgeHead]:
    """Register an age-head class under its `name` (a class decorator, as timm's register_model)."""
    AGE_HEAD_KINDS[cls.name] = cls
    return cls


class AgeHead(nn.Module):
    """An age branch: the linear heads it adds, the forward's post-processing of them and its loss term.
    A module for its constant buffers, which are not in the state dict (best.pt files keep their keys).

    old_age: where the oldest age group starts (training's targets); sigma: a distribution's width in
    years (`--age-sigma`).
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # for train's first line: "training effb2 (multi + SUMMARY)"
    outputs: ClassVar[dict[str, int]] = {}  # linear head name -> width
    replaces_age_group: ClassVar[bool] = False  # multi heads: the branch gives "age", no linear "age" head

    def __init__(self, old_age: int = 60, sigma: float = 3.0) -> None:
        super().__init__()
        self.old_age, self.sigma = int(old_age), float(sigma)

    def finish(self, out: dict[str, torch.Tensor], task: TaskHeads) -> None:
        """Turn the linear outputs in `out` into the branch's outputs, in place."""

    def loss(self, outputs: Outputs, targets: Outputs) -> torch.Tensor | None:
        """The age term (before `age_weight`), without the images whose targets["age_keep"] is 0; None: no term."""
        return None


def kept_mean(per_image: torch.Tensor, targets: Outputs) -> torch.Tensor:
    """The batch mean of a per-image loss, the images of targets["age_keep"] 0 counting zero (train --drop-ages)."""
    keep = targets.get("age_keep")
    return per_image.mean() if keep is None else (per_image * keep.float()).sum() / len(per_image)


@register_age_head
class NoAgeHead(AgeHead):
    """No age branch (`age_weight` 0)."""

    name = "none"
    summary = ""


@register_age_head
class MseAgeHead(AgeHead):
    """"age_years": the normalised years regressed; loss MSE. The group heads are untouched."""

    name = "mse"
    summary = "mse age regression"
    outputs = {"age_years": 1}

    def finish(self, out: dict[str, torch.Tensor], task: TaskHeads) -> None:
        out["age_years"] = out["age_years"].squeeze(-1)

    def loss(self, outputs: Outputs, targets: Outputs) -> torch.Tensor:
        return kept_mean(F.mse_loss(outputs["age_years"].float(), targets["age_years"].float(), reduction="none"), targets)


def year_distribution(years: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 101): the discretised Gaussian around each labelled age (years clamped to 0..100), sums to 1."""
    support = torch.arange(AGE_YEARS, device=years.device, dtype=torch.float32)
    centre = years.float().clamp(0, AGE_YEARS - 1)[:, None]
    return (-((support - centre) ** 2) / (2 * sigma**2)).softmax(dim=1)


def dldl_loss(logits: torch.Tensor, years: torch.Tensor, sigma: float,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """DLDL-v2 (Gao et al. 2018): KL(Gaussian around the year || softmax over 0..100) + L1 of the
    distribution's expectation (in AGE_SCALE units, so both terms are about one at the start);
    `weight` (B,): each image's share (0: no loss), the sum still divided by the batch size."""
    log_p = logits.float().log_softmax(dim=1)
    expectation = log_p.exp() @ torch.arange(AGE_YEARS, device=logits.device, dtype=torch.float32)
    if weight is not None:
        kl = F.kl_div(log_p, year_distribution(years, sigma), reduction="none").sum(1)
        per_image = kl + (expectation - years.float()).abs() / AGE_SCALE
        return (per_image * weight.float()).sum() / len(per_image)
    kl = F.kl_div(log_p, year_distribution(years, sigma), reduction="batchmean")
    return kl + (expectation - years.float()).abs().mean() / AGE_SCALE


@register_age_head
class DldlAgeHead(AgeHead):
    """"age_dist": logits over the years 0..100; "age_years" its expectation and, with multi heads,
    "age" the log of its mass per age group; loss `dldl_loss`."""

    name = "dldl"
    summary = "dldl age distribution"
    outputs = {"age_dist": AGE_YEARS}
    replaces_age_group = True

    def __init__(self, old_age: int = 60, sigma: float = 3.0) -> None:
        super().__init__(old_age, sigma)
        # Which group each year falls in (old_age marks the oldest group, as for the targets), one-hot
        # (years x 3): a matmul sums the group masses (index_add has no ONNX export).
        years = torch.arange(AGE_YEARS)
        group = (years >= YOUNG_BELOW).long() + (years >= self.old_age).long()
        self.register_buffer("year_group", nn.functional.one_hot(group, 3).float(), persistent=False)
        self.register_buffer("year_values", years.float(), persistent=False)

    def finish(self, out: dict[str, torch.Tensor], task: TaskHeads) -> None:
        with torch.autocast(out["age_dist"].device.type, enabled=False):  # sums of probabilities in float32
            p_years = out["age_dist"].float().softmax(dim=1)
            out["age_years"] = age_to_target(p_years @ self.year_values.float())
            if "age" in task.outputs:
                mass = p_years @ self.year_group.float()
                out["age"] = mass.clamp_min(1e-12).log()  # log-probabilities: their softmax is the mass

    def loss(self, outputs: Outputs, targets: Outputs) -> torch.Tensor:
        return dldl_loss(outputs["age_dist"], target_to_age(targets["age_years"].float()), self.sigma,
                         targets.get("age_keep"))


def create_age_head(name: str, old_age: int = 60, sigma: float = 3.0) -> AgeHead:
    """The age head called `name` (options.AGE_HEADS); MaskkitError naming the choices otherwise."""
    if name not in AGE_HEADS or name not in AGE_HEAD_KINDS:
        raise MaskkitError(f"unknown age head {name!r}: use {', '.join(AGE_HEADS)}")
    return AGE_HEAD_KINDS[name](old_age=old_age, sigma=sigma)
