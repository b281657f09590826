"""The DLDL age head (`--age-loss dldl`): a distribution over the years whose group mass is the age
group probabilities, its loss, and that it learns the age on drawn data."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from helpers import FAST, one_thread
from maskkit.engine.heads import dldl_loss, year_distribution
from maskkit.engine.loss import MaskLoss
from maskkit.contract.labels import age_to_target
from maskkit.engine.models import build_model, class_probs, head_task_probs
from maskkit.options import TrainOptions


@pytest.mark.parametrize("heads", ["single", "multi"])
def test_dldl_group_probabilities_sum_to_one(heads):
    torch.manual_seed(0)
    model = build_model("test_resnet", heads=heads, age_head="dldl", old_age=58).eval()
    with torch.no_grad():
        out = model(torch.randn(5, 3, 48, 40) * 3)
    groups = head_task_probs(out)["age"]
    torch.testing.assert_close(groups.sum(1), torch.ones(5))
    torch.testing.assert_close(class_probs(out).sum(1), torch.ones(5))
    if heads == "multi":  # the group probabilities are the distribution's mass: < 30, 30..57, >= 58
        p_years = out["age_dist"].softmax(1)
        mass = torch.stack([p_years[:, :30].sum(1), p_years[:, 30:58].sum(1), p_years[:, 58:].sum(1)], 1)
        torch.testing.assert_close(groups, mass)


def test_dldl_loss_is_smallest_at_the_labelled_year():
    years = torch.tensor([25.0, 61.0])
    target = year_distribution(years, sigma=3.0)
    torch.testing.assert_close(target.sum(1), torch.ones(2))
    assert target.argmax(1).tolist() == [25, 61]
    right = dldl_loss(target.clamp_min(1e-30).log(), years, 3.0)
    wrong = dldl_loss(year_distribution(torch.tensor([40.0, 40.0]), 3.0).clamp_min(1e-30).log(), years, 3.0)
    assert float(right) == pytest.approx(0.0, abs=1e-3) and float(wrong) > 1.0


def test_mask_loss_uses_the_age_weight_on_the_distribution():
    out = {"class": torch.zeros(2, 18), "age_dist": torch.zeros(2, 101), "age_years": torch.zeros(2)}
    targets = {"label": torch.tensor([0, 1]), "age_years": age_to_target(torch.tensor([20.0, 70.0]))}
    base = MaskLoss(age_weight=0.0, age_loss="dldl")(out, targets)
    weighted = MaskLoss(age_weight=0.5, age_loss="dldl")(out, targets)
    expected = 0.5 * dldl_loss(out["age_dist"], torch.tensor([20.0, 70.0]), 3.0)
    torch.testing.assert_close(weighted - base, expected)


@pytest.mark.slow
def test_dldl_head_learns_the_age_groups_on_drawn_data(manifest_path, tmp_path):
    from maskkit.commands import train

    with one_thread():
        run = train.run(manifest_path, TrainOptions(**{**FAST, "heads": "multi", "age_weight": 1.0, "age_loss": "dldl",
                                                       "epochs": 8}), runs_dir=tmp_path, name="dldl", show_progress=False)
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["f1_age"].max() > 0.55, metrics[["epoch", "val_f1", "f1_age"]]  # 3 groups: chance is about 0.33
