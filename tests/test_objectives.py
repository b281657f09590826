"""train's objective options of issue 32: --drop-ages (no age loss, or no training, for a band of ages),
MixUp and vertical CutMix, and the soft macro-F1 loss (--f1-loss)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import FAST, assert_one_line_error, one_thread
from hostile import assert_refused_while_parsing
from maskkit.contract.labels import TASKS
from maskkit.contract.manifest import read_manifest
from maskkit.data.sampling import targets_of
from maskkit.engine.build import build_data
from maskkit.engine.distributed import Distributed
from maskkit.engine.heads import AGE_YEARS
from maskkit.engine.loss import MaskLoss, mixup, soft_f1_loss, vertical_cutmix
from maskkit.options import TrainOptions, age_band

pytestmark = pytest.mark.usefixtures("torch_one_thread")

B = 8


def batch_targets(keep: list[float] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random multi-head targets of B images (class label, task labels, years), with age_keep when given."""
    g = torch.Generator().manual_seed(seed)
    mask, gender, age = (torch.randint(n, (B,), generator=g) for n in TASKS.values())
    years = torch.randint(0, 90, (B,), generator=g).float()
    targets = {"label": 6 * mask + 3 * gender + age, "mask": mask, "gender": gender, "age": age,
               "age_years": (years - 40) / 20}
    return targets if keep is None else {**targets, "age_keep": torch.tensor(keep)}


def leaf_outputs(seed: int = 1) -> dict[str, torch.Tensor]:
    """Logits of every head a model may carry, as leaves whose gradients the tests read."""
    g = torch.Generator().manual_seed(seed)
    widths = {"class": 18, **TASKS, "age_dist": AGE_YEARS}
    outputs = {name: torch.randn(B, n, generator=g).requires_grad_() for name, n in widths.items()}
    outputs["age_years"] = torch.randn(B, generator=g).requires_grad_()
    return outputs


# --- --drop-ages ---------------------------------------------------------------------------------

KEEP = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
DROPPED = torch.tensor(KEEP) == 0


@pytest.mark.parametrize("age_loss", ["mse", "dldl"])
def test_a_band_s_persons_give_no_age_loss_but_their_mask_and_gender_losses(age_loss):
    loss_fn = MaskLoss(heads="multi", age_weight=0.5, age_loss=age_loss, f1_loss=0.5, label_smoothing=0.1)
    grads = {}
    for kept in (None, KEEP):
        outputs = leaf_outputs()
        loss_fn(outputs, batch_targets(kept)).backward()
        grads[kept is None] = {k: v.grad for k, v in outputs.items() if v.grad is not None}
    dropping, plain = grads[False], grads[True]
    age_outputs = ["age", "age_dist"] if age_loss == "dldl" else ["age", "age_years"]
    for name in age_outputs:
        assert torch.all(dropping[name][DROPPED] == 0), name  # no age gradient for the band's images
        assert torch.all(dropping[name][~DROPPED].abs().sum(-1 if dropping[name].ndim > 1 else 0) > 0), name
    for name in ("mask", "gender"):  # their mask and gender losses are those of a run without the band
        assert torch.allclose(dropping[name], plain[name])


def test_a_single_head_trains_the_band_s_mask_and_gender_but_not_their_age():
    loss_fn = MaskLoss(heads="single", f1_loss=0.5)
    targets = batch_targets([0.0] * B)  # every image in the band
    outputs = {"class": torch.randn(B, 18)}
    swapped = outputs["class"].view(B, 3, 2, 3).flip(3).reshape(B, 18)  # the age groups' logits exchanged
    assert float(loss_fn({"class": swapped}, targets)) == pytest.approx(float(loss_fn(outputs, targets)), rel=1e-6)
    right = torch.nn.functional.one_hot(targets["label"] // 3 * 3, 18).float() * 10  # right mask and gender
    assert float(loss_fn({"class": right}, targets)) < float(loss_fn(outputs, targets))


def test_the_age_keep_target_marks_exactly_the_band_s_images():
    rows = pd.DataFrame({"mask": ["wear"] * 6, "gender": ["male"] * 6, "age": [56, 57, 58, 59, 60, 20]})
    targets = targets_of(rows, 60, age_band("57-59"))
    assert targets["age_keep"].tolist() == [1, 0, 0, 0, 1, 1]
    assert "age_keep" not in targets_of(rows, 60)


def band_of(manifest: pd.DataFrame) -> str:
    """A band holding a few training persons of the drawn data (their most common age and the next)."""
    age = int(manifest.loc[manifest["fold"] != 0, "age"].mode().iloc[0])
    return f"{age}-{age + 1}"


def test_skip_leaves_the_band_out_of_training_but_not_out_of_validation(manifest_path):
    manifest = read_manifest(manifest_path)
    band = band_of(manifest)
    low, high = age_band(band)
    config = {"img_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "crop": [1.0, 1.0]}
    sizes = {}
    for mode in ("loss", "skip"):
        options = TrainOptions(**{**FAST, "cache": "none", "drop_ages": band, "drop_ages_mode": mode})
        data = build_data(manifest, options, config, torch.device("cpu"), None, Distributed())
        in_band = data.train_rows["age"].between(low, high)
        sizes[mode] = len(data.train_set), len(data.val_set), in_band.sum()
        assert len(data.val_rows) == (manifest["fold"] == 0).sum()  # validation scores every person
        keep = data.train_set.targets.get("age_keep")
        if mode == "loss":
            assert keep is not None and keep.tolist() == (~in_band).astype(float).tolist()
        else:
            assert keep is None and in_band.sum() == 0
    assert sizes["loss"][2] > 0 and sizes["skip"][0] == sizes["loss"][0] - sizes["loss"][2]
    assert sizes["skip"][1] == sizes["loss"][1]


# --- MixUp and vertical CutMix -------------------------------------------------------------------

def implied_targets(logits: torch.Tensor) -> torch.Tensor:
    """The soft target a cross-entropy's gradient implies: d/dlogits mean CE = (softmax - target) / B."""
    return logits.detach().softmax(1) - len(logits) * logits.grad


def test_mixup_mixes_images_and_every_head_s_target_summing_to_one():
    images = torch.randn(B, 3, 8, 8)
    mixed, perm, lam = mixup(images, torch.Generator().manual_seed(0), alpha=0.4)
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(B))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm])

    targets = batch_targets()
    for heads, names in (("multi", TASKS), ("single", {"class": 18})):
        outputs = leaf_outputs()
        MaskLoss(heads=heads).mixed(outputs, targets, perm, lam).backward()
        for name, width in names.items():
            soft = implied_targets(outputs[name])
            assert torch.allclose(soft.sum(1), torch.ones(B), atol=1e-5)  # a distribution per image
            label = targets["label" if name == "class" else name]
            expected = lam * torch.eye(width)[label] + (1 - lam) * torch.eye(width)[label[perm]]
            assert torch.allclose(soft, expected, atol=1e-5)


def test_vertical_cutmix_joins_two_images_of_one_class_and_keeps_the_labels():
    labels = torch.tensor([0, 5, 0, 5, 0, 17, 3, 3])
    images = torch.arange(B, dtype=torch.float32)[:, None, None, None].expand(B, 3, 8, 6).clone()
    mixed, perm, lam = vertical_cutmix(images, labels, torch.Generator().manual_seed(0))
    assert lam == 0.5 and torch.equal(labels[perm], labels)  # the bottom comes from an image of the same class
    for i in range(B):
        assert torch.all(mixed[i, :, :4] == i) and torch.all(mixed[i, :, 4:] == perm[i])  # top own, bottom its partner
        assert (perm[i] != i) == (int((labels == labels[i]).sum()) > 1)  # another image when the class has one
    outputs, targets = {"class": torch.randn(B, 18)}, {**batch_targets(), "label": labels}
    loss_fn = MaskLoss(heads="single")
    assert float(loss_fn.mixed(outputs, targets, perm, lam)) == pytest.approx(float(loss_fn(outputs, targets)))


class Seeing(torch.nn.Module):
    """A linear 18-way model that keeps the images of its last forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.seen = torch.nn.Linear(3 * 8 * 6, 18), None

    def forward(self, images):
        self.seen = images.detach().clone()
        return {"class": self.linear(images.flatten(1))}


@pytest.mark.parametrize("cutmix, mode, mixup", [(0.0, "box", 0.0), (1.0, "vertical", 0.0), (0.0, "box", 1.0)])
def test_a_training_step_mixes_the_batch_as_its_probabilities_say(cutmix, mode, mixup):
    from maskkit.engine.loop import OnDevice, Optimisation, train_step

    model, images = Seeing(), torch.randn(B, 3, 8, 6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])  # every image has a partner of its class
    opt = Optimisation(torch.optim.SGD(model.parameters(), lr=0.1), None, torch.amp.GradScaler("cpu", enabled=False),
                       cutmix=cutmix, cutmix_generator=torch.Generator().manual_seed(0), cutmix_mode=mode,
                       mixup=mixup, mixup_alpha=10.0)  # alpha 10: lam near 1/2, so a blend changes every pixel
    loss = train_step(model, images, {"label": labels}, MaskLoss(), opt, OnDevice(torch.device("cpu")))
    assert torch.isfinite(loss)
    close = torch.isclose(model.seen, images, atol=1e-6)
    same = close.flatten(1).all(1)  # per image: unchanged
    if mixup:  # images blended with another (randperm may pair one with itself): every pixel of them changed
        changed = ~same
        assert changed.sum() >= B // 2 and not close[changed].any()
    elif cutmix:  # tops kept, bottoms from the partner of the same class
        assert torch.equal(model.seen[:, :, :4], images[:, :, :4]) and not same.any()
    else:
        assert same.all()


def test_the_runs_table_names_the_new_objectives():
    from maskkit.commands.runs import loss_name

    options = {"f1_loss": 0.5, "cutmix": 0.3, "cutmix_mode": "vertical", "mixup": 0.2, "drop_ages": "57-59",
               "drop_ages_mode": "skip"}
    assert loss_name(options) == "ce+f1w0.5+vcutmix0.3+mixup0.2+skip57-59"
    assert loss_name({**options, "drop_ages_mode": "loss", "cutmix_mode": "box"}) == "ce+f1w0.5+cutmix0.3+mixup0.2+drop57-59"


# --- the soft macro-F1 loss ----------------------------------------------------------------------

def test_the_f1_loss_falls_as_predictions_match_the_labels_and_is_differentiable():
    target = batch_targets()["label"]
    noise = torch.randn(B, 18, generator=torch.Generator().manual_seed(0))
    losses = []
    for scale in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0):
        logits = (noise + scale * torch.eye(18)[target]).requires_grad_()
        loss = soft_f1_loss(logits, target)
        loss.backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
        losses.append(float(loss.detach()))
    assert all(a > b for a, b in zip(losses, losses[1:])) and losses[0] > 0.8 and losses[-1] < 0.01

    outputs, targets = {k: v.detach() for k, v in leaf_outputs().items()}, batch_targets()
    plain, with_f1 = MaskLoss(heads="multi"), MaskLoss(heads="multi", f1_loss=0.7)
    f1_terms = sum(soft_f1_loss(outputs[t], targets[t]) for t in TASKS)
    assert float(with_f1(outputs, targets)) == pytest.approx(float(plain(outputs, targets) + 0.7 * f1_terms), rel=1e-6)


# --- the options: recipe, search space, bad values -----------------------------------------------

NEW = {"drop_ages": "57-59", "drop_ages_mode": "skip", "f1_loss": 0.5, "mixup": 0.3, "mixup_alpha": 0.2,
       "cutmix_mode": "vertical"}


def test_the_new_options_are_recipe_keys_and_search_space_dimensions(cli, tmp_path):
    from maskkit.contract.searchspace import DEFAULT_SPACE, read_search_space

    flags = [w for k, v in NEW.items() for w in (TrainOptions.flags()[k].name, str(v))]
    result = cli("train", "x", "--print-config", *flags)
    assert result.exit_code == 0, result.stderr
    recipe = yaml.safe_load(result.stdout)
    assert {k: recipe[k] for k in NEW} == NEW
    (tmp_path / "r.yaml").write_text(result.stdout)
    from maskkit.contract.recipe import read_recipe

    assert {k: v for k, v in read_recipe(tmp_path / "r.yaml").items() if k in NEW} == NEW
    space = read_search_space(DEFAULT_SPACE, TrainOptions())
    assert None in space["drop_ages"].choices and "57-59" in space["drop_ages"].choices
    assert {"drop_ages_mode", "f1_loss", "mixup", "cutmix_mode"} <= set(space)


@pytest.mark.parametrize("flags, needle", [
    (["--drop-ages", "60-50"], "--drop-ages '60-50'"),
    (["--drop-ages", "100-130"], "--drop-ages '100-130'"),
    (["--drop-ages", "-3-5"], "--drop-ages '-3-5'"),
    (["--drop-ages", "old"], "--drop-ages 'old'"),
    (["--drop-ages", "57"], "--drop-ages '57'"),
    (["--drop-ages-mode", "both"], "--drop-ages-mode"),
    (["--mixup", "1.5"], "--mixup 1.5"),
    (["--cutmix", "0.8", "--mixup", "0.5"], "--mixup 0.5"),
    (["--mixup-alpha", "0"], "--mixup-alpha"),
    (["--cutmix-mode", "diagonal"], "--cutmix-mode"),
    (["--f1-loss", "-1"], "--f1-loss"),
    (["--f1-loss", "nan"], "--f1-loss"),
])
def test_a_bad_value_is_one_line_exit_2_and_writes_nothing(manifest_path, tmp_path, flags, needle, monkeypatch, capsys):
    argv = ["train", str(manifest_path), "--runs-dir", str(tmp_path / "runs"), *flags]
    assert_refused_while_parsing(tmp_path, argv, needle, monkeypatch, capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, needle", [("drop_ages: 59-57\n", "drop_ages '59-57'"),
                                          ("drop_ages: 57-200\n", "drop_ages '57-200'"),
                                          ("drop_ages: 57\n", "drop_ages 57")])
def test_a_recipe_s_bad_band_is_one_line_naming_the_file(cli, manifest_path, tmp_path, text, needle):
    (tmp_path / "r.yaml").write_text(text)
    result = cli("train", manifest_path, "--config", tmp_path / "r.yaml", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(result, "r.yaml", needle)
    assert not (tmp_path / "runs").exists()


def test_skip_of_every_training_person_is_one_line(cli, manifest_path, tmp_path):
    result = cli("train", manifest_path, "--drop-ages", "0-120", "--drop-ages-mode", "skip",
                 "--runs-dir", tmp_path / "runs", "--backbone", "test_resnet", "--no-pretrained")
    assert_one_line_error(result, "--drop-ages 0-120", "skip")


# --- end to end ----------------------------------------------------------------------------------

@pytest.mark.slow  # about 25 s of CPU: eight epochs
def test_a_run_with_every_new_option_learns_on_drawn_data(manifest_path, tmp_path):
    from maskkit.commands import train

    manifest = read_manifest(manifest_path)
    options = TrainOptions(**{**FAST, "epochs": 8, "heads": "multi", "drop_ages": band_of(manifest), "f1_loss": 0.5,
                              "mixup": 0.3, "cutmix": 0.3, "cutmix_mode": "vertical"})
    with one_thread():
        run = train.run(manifest_path, options, runs_dir=tmp_path, name="new", show_progress=False)
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["val_f1"].max() > 0.25 and metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    stored = json.loads((run / "config.json").read_text())["options"]
    assert {k: stored[k] for k in ("drop_ages", "f1_loss", "mixup", "cutmix_mode")} == {
        "drop_ages": options.drop_ages, "f1_loss": 0.5, "mixup": 0.3, "cutmix_mode": "vertical"}
    val = pd.read_csv(run / "val_preds.csv")
    assert val["person"].nunique() == manifest.loc[manifest["fold"] == 0, "person"].nunique()
    assert np.isfinite(metrics["val_loss"]).all()


@pytest.mark.slow  # about 10 s of CPU: two short runs
def test_a_run_with_the_new_mixes_resumes_to_the_same_weights(manifest_path, tmp_path):
    from maskkit.commands import train
    from maskkit.engine.trainer import Interrupted

    manifest = read_manifest(manifest_path)
    options = TrainOptions(**{**FAST, "epochs": 2, "heads": "single", "drop_ages": band_of(manifest), "f1_loss": 0.5,
                              "mixup": 0.5, "cutmix": 0.5, "cutmix_mode": "vertical"})
    with one_thread():
        straight = train.run(manifest_path, options, runs_dir=tmp_path, name="straight", show_progress=False)
        with pytest.raises(Interrupted):
            train.run(manifest_path, options, runs_dir=tmp_path, name="resumed", show_progress=False,
                      stop=lambda epoch, step: (epoch, step) == (0, 3))
        resumed = train.run(None, options, resume=tmp_path / "resumed", show_progress=False)
    a, b = (torch.load(r / "last.pt", map_location="cpu", weights_only=True)["model"] for r in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the mixes' draws are restored with last.pt
