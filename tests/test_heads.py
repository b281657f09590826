"""Head kinds (engine/heads.py): the registries agree with the option tuples, unknown names are refused in
one line, the state-dict keys and loss values are those of earlier versions, and a new age loss is one
class plus one tuple entry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskkit.contract.errors import MaskkitError
from maskkit.contract.labels import age_to_target
from maskkit.engine import heads
from maskkit.engine.heads import AGE_HEAD_KINDS, TASK_HEADS, AgeHead, create_age_head, get_task_heads
from maskkit.engine.loss import MaskLoss
from maskkit.engine.models import build_model
from maskkit.options import AGE_HEADS, AGE_LOSSES, HEADS

YEARS = [20.0, 70.0, 61.0, 33.0]


def test_the_registries_hold_exactly_the_option_tuples_names():
    assert tuple(TASK_HEADS) == HEADS
    assert tuple(AGE_HEAD_KINDS) == AGE_HEADS == ("none", *AGE_LOSSES)
    assert all(AGE_HEAD_KINDS[name].name == name for name in AGE_HEADS)


@pytest.mark.parametrize("lookup, choices", [(lambda: get_task_heads("triple"), "single or multi"),
                                             (lambda: create_age_head("huber"), "none, mse, dldl"),
                                             (lambda: build_model("resnet18", heads="triple"), "single or multi"),
                                             (lambda: build_model("resnet18", age_head="huber"), "none, mse, dldl")])
def test_an_unknown_head_name_is_one_line_naming_the_choices(lookup, choices):
    with pytest.raises(MaskkitError) as err:
        lookup()
    assert choices in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind, age, linear", [
    ("single", "none", ["class"]), ("single", "mse", ["class", "age_years"]), ("single", "dldl", ["class", "age_dist"]),
    ("multi", "none", ["mask", "gender", "age"]), ("multi", "mse", ["mask", "gender", "age", "age_years"]),
    ("multi", "dldl", ["mask", "gender", "age_dist"])])
def test_state_dict_keys_are_those_best_pt_files_hold(kind, age, linear):
    """The head keys of every earlier version, in their order: old best.pt files load strictly."""
    keys = list(build_model("test_resnet", heads=kind, age_head=age).state_dict())
    assert [k for k in keys if not k.startswith("backbone.")] == [f"heads.{n}.{p}" for n in linear
                                                                    for p in ("weight", "bias")]


def _batch(kind: str, age: str) -> tuple[dict, dict]:
    """A fixed batch of outputs and targets (seeded, no model)."""
    gen = torch.Generator().manual_seed(26)
    targets = {"label": torch.tensor([0, 5, 17, 3]), "mask": torch.tensor([0, 0, 2, 0]),
               "gender": torch.tensor([0, 1, 1, 1]), "age": torch.tensor([0, 2, 2, 1]),
               "age_years": age_to_target(torch.tensor(YEARS))}
    single = {"class": torch.randn(4, 18, generator=gen) * 2}
    multi = {t: torch.randn(4, n, generator=gen) for t, n in (("mask", 3), ("gender", 2), ("age", 3))}
    ages = {"mse": {"age_years": torch.randn(4, generator=gen)},
            "dldl": {"age_dist": torch.randn(4, 101, generator=gen) * 3}}
    return {**(single if kind == "single" else multi), **ages[age]}, targets


def _focal_ce(logits, labels, smoothing, gamma) -> float:
    """Label-smoothed cross-entropy weighted by (1 - p_true) ** gamma, written out sample by sample."""
    total = 0.0
    for row, label in zip(logits.double().tolist(), labels.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        log_p = [v - log_z for v in row]
        smoothed = -(1 - smoothing) * log_p[label] - smoothing * sum(log_p) / len(row)
        total += (1 - math.exp(log_p[label])) ** gamma * smoothed
    return total / len(labels)


def _dldl(logits, sigma) -> float:
    """KL(discretised Gaussian around the year || softmax over 0..100), batch mean, + mean |E[year] - year| / 20."""
    kl = l1 = 0.0
    for row, year in zip(logits.double().tolist(), YEARS):
        log_z = math.log(sum(math.exp(v) for v in row))
        p = [math.exp(v - log_z) for v in row]
        weights = [math.exp(-((j - year) ** 2) / (2 * sigma**2)) for j in range(101)]
        q = [w / sum(weights) for w in weights]
        kl += sum(qj * (math.log(qj) - math.log(pj)) for qj, pj in zip(q, p) if qj > 0)
        l1 += abs(sum(j * pj for j, pj in enumerate(p)) - year) / 20
    return (kl + l1) / len(YEARS)


# MaskLoss(label_smoothing=0.1, focal=2.0, age_weight=0.3, age_sigma=2.5) on `_batch`, as the code before the
# head kinds (commit 4844037, keys sniffed in engine/loss.py) computed it: a cross-check that the values stay.
BEFORE = {("single", "mse"): 3.1194067001342773, ("single", "dldl"): 4.9756059646606445,
          ("multi", "mse"): 2.885934352874756, ("multi", "dldl"): 4.742134094238281}


@pytest.mark.parametrize("kind, age", list(BEFORE))
def test_mse_and_dldl_losses_keep_their_values_on_a_fixed_batch(kind, age):
    outputs, targets = _batch(kind, age)
    loss = float(MaskLoss(label_smoothing=0.1, focal=2.0, age_weight=0.3, age_sigma=2.5, heads=kind, age_loss=age)(
        outputs, targets))
    tasks = [("class", "label")] if kind == "single" else [(t, t) for t in ("mask", "gender", "age")]
    expected = sum(_focal_ce(outputs[o], targets[t], 0.1, 2.0) for o, t in tasks)
    if age == "mse":
        expected += 0.3 * sum((p - t) ** 2 for p, t in zip(outputs["age_years"].tolist(),
                                                            targets["age_years"].tolist())) / 4
    else:
        expected += 0.3 * _dldl(outputs["age_dist"], 2.5)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert loss == pytest.approx(BEFORE[kind, age], rel=1e-6)


def test_a_zero_age_weight_adds_no_age_term_whatever_the_age_loss():
    outputs, targets = _batch("multi", "dldl")
    plain = MaskLoss(heads="multi")(outputs, targets)
    for age_loss in AGE_LOSSES:
        assert torch.equal(MaskLoss(heads="multi", age_loss=age_loss, age_weight=0.0)(outputs, targets), plain)


def test_a_new_age_loss_is_one_class_and_one_tuple_entry(monkeypatch):
    class L1AgeHead(AgeHead):
        """The walk the README describes: an L1 regression of the normalised years."""

        name = "l1"
        summary = "l1 age regression"
        outputs = {"age_years": 1}

        def finish(self, out, task):
            out["age_years"] = out["age_years"].squeeze(-1)

        def loss(self, outputs, targets):
            return F.l1_loss(outputs["age_years"].float(), targets["age_years"].float())

    monkeypatch.setitem(AGE_HEAD_KINDS, "l1", L1AgeHead)  # what @register_age_head does
    monkeypatch.setattr(heads, "AGE_HEADS", (*AGE_HEADS, "l1"))  # the tuple entry in options.py
    torch.manual_seed(0)
    model = build_model("test_resnet", heads="multi", age_head="l1").eval()
    with torch.no_grad():
        outputs = model(torch.randn(4, 3, 48, 40))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {"mask": (4, 3), "gender": (4, 2), "age": (4, 3),
                                                                "age_years": (4,)}
    _, targets = _batch("multi", "mse")
    base = MaskLoss(heads="multi")(outputs, targets)
    aged = MaskLoss(heads="multi", age_loss="l1", age_weight=0.5)(outputs, targets)
    expected = sum(abs(p - t) for p, t in zip(outputs["age_years"].tolist(), targets["age_years"].tolist())) / 4
    assert float(aged - base) == pytest.approx(0.5 * expected, rel=1e-5)
