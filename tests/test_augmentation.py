"""Issue 32's augmentation: torchvision's policies as --aug presets, --erasing, --aug FILE.yaml (the
user's albumentations pipeline, copied into the run) and RUN/train_batch.jpg."""

from __future__ import annotations

import json
import random
import warnings

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from helpers import FAST, assert_one_line_error, one_thread, train_flags
from maskkit.commands import train
from maskkit.commands.runs import recipe_key
from maskkit.contract.errors import MaskkitError
from maskkit.contract.recipe import read_recipe
from maskkit.data.loader import ImageDataset
from maskkit.data.presets import build_transform, eval_transform
from maskkit.engine.build import device_side
from maskkit.engine.trainer import Interrupted
from maskkit.options import AUG_NAMES, POLICIES, TrainOptions

IMG, MEAN, STD, CROP = (32, 24), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (0.8, 0.75)
SEEDS = range(6)


def picture(seed: int = 0) -> np.ndarray:
    """A working-size RGB uint8 image with structure (a gradient and a square), so every op changes it."""
    rng = np.random.default_rng(seed)
    image = np.zeros((40, 32, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, 32, dtype=np.uint8)[None]
    image[..., 1] = np.linspace(255, 0, 40, dtype=np.uint8)[:, None]
    image[8:24, 6:18, 2] = 200
    return np.clip(image.astype(int) + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)


def seeded(transform, seed: int) -> torch.Tensor:
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transform(image=picture())["image"]


def save_pipeline(path, *transforms) -> str:
    A.save(A.Compose(list(transforms)), str(path), data_format="yaml")
    return str(path)


@pytest.mark.parametrize("aug", [*POLICIES, "erasing"])
def test_each_new_preset_is_deterministic_per_image_seed_and_varies_between_seeds(aug):
    transform = build_transform("none" if aug == "erasing" else aug, IMG, MEAN, STD, CROP,
                                erasing=0.5 if aug == "erasing" else 0.0)
    outputs = [seeded(transform, seed) for seed in SEEDS]
    again = [seeded(transform, seed) for seed in reversed(SEEDS)][::-1]  # another order: the seed decides alone
    for first, second in zip(outputs, again):
        assert first.shape == (3, *IMG) and first.dtype == torch.float32
        assert torch.equal(first, second)
    assert len({out.numpy().tobytes() for out in outputs}) > 1  # seeds give different augmentations
    plain = eval_transform(IMG, MEAN, STD, CROP)(image=picture())["image"]
    assert any(not torch.equal(out, plain) for out in outputs)


def test_strong_shifts_before_it_crops_and_the_others_crop_first():
    """strong's Affine sees the pixels around the crop (resize, Affine, crop); every other recipe
    starts with the eval geometry (resize, crop) and augments the crop."""
    def first_steps(aug):
        return [type(t).__name__ for t in build_transform(aug, IMG, MEAN, STD, CROP).transforms[:3]]

    assert first_steps("strong") == ["Resize", "Affine", "CenterCrop"]
    for aug in ("none", "basic", *POLICIES):
        assert first_steps(aug)[:2] == ["Resize", "CenterCrop"], aug


def test_a_policy_leaves_torch_global_generator_where_it_was():
    """torchvision's v2 policies draw from torch's global generator: the preset forks it, so the
    model's initialisation and dropout draw the same numbers whatever the loader augments."""
    transform = build_transform("randaugment", IMG, MEAN, STD, CROP)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    seeded(transform, 1)
    assert torch.equal(torch.rand(3), expected)


def test_a_dataset_item_is_the_same_image_whatever_was_drawn_before():
    images = np.stack([picture(s) for s in range(4)])
    dataset = ImageDataset([f"x{i}.png" for i in range(4)], {"label": np.arange(4)}, IMG,
                           build_transform("augmix", IMG, MEAN, STD, CROP), cache=images, crop=CROP)
    first = dataset[(2, 123)][0]
    dataset[(1, 5)], dataset[(3, 9)]
    assert torch.equal(dataset[(2, 123)][0], first)


@pytest.mark.parametrize("transform, expected", [
    (A.InvertImg(p=1), lambda plain: 255 - plain),
    (A.ToGray(p=1), lambda plain: None),
], ids=["InvertImg", "ToGray"])
def test_a_yaml_pipeline_is_applied_between_geometry_and_finish(tmp_path, transform, expected):
    path = save_pipeline(tmp_path / "aug.yaml", transform)
    plain = eval_transform(IMG, MEAN, STD, CROP, normalize=False)(image=picture())["image"]
    got = seeded(build_transform(path, IMG, MEAN, STD, CROP, normalize=False), 0)
    assert got.dtype == torch.uint8 and got.shape == plain.shape
    want = expected(plain)
    if want is None:  # gray: the three channels are equal, and not the colour picture
        assert torch.equal(got[0], got[1]) and torch.equal(got[1], got[2]) and not torch.equal(got, plain)
    else:
        assert torch.equal(got, want)


def test_basic_with_erasing_augments_in_the_loader_not_on_the_gpu():
    """The GPU batch augmentation has no RandomErasing: a CUDA run of basic + --erasing falls back."""
    cuda = torch.device("cuda")
    assert device_side(cuda, "basic") == (True, True)
    assert device_side(cuda, "basic", 0.25) == (True, False)
    assert device_side(cuda, "randaugment") == (True, False)


def test_every_aug_name_and_the_erasing_option_are_train_options():
    for aug in (*AUG_NAMES, "mine.yaml", "deep/Mine.YML"):
        TrainOptions(aug=aug, erasing=0.3).check(backbone=False)
    for bad, needle in ((dict(aug="wild"), "--aug wild"), (dict(aug="mine.json"), "--aug mine.json"),
                        (dict(erasing=1.5), "--erasing 1.5")):
        with pytest.raises(MaskkitError, match=needle):
            TrainOptions(**bad).check(backbone=False)


def test_the_default_search_space_offers_the_policies_and_erasing():
    from maskkit.contract.searchspace import DEFAULT_SPACE, read_search_space

    space = read_search_space(DEFAULT_SPACE, TrainOptions())  # every value checked as a train option
    assert set(POLICIES) <= set(space["aug"].choices)
    assert space["erasing"].low == 0.0 < space["erasing"].high <= 1


# --- bad pipelines: one line, exit 2, no run folder ---------------------------------------------

def _bad_pipelines(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (--aug value, a word the error holds)."""
    (tmp_path / "broken.yaml").write_text("transform: [unclosed\n")
    (tmp_path / "unknown.yaml").write_text("__version__: 2.0.8\ntransform:\n  __class_fullname__: NoSuchTransform\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xd8\xff\x00 not yaml")
    return {
        "not YAML": (str(tmp_path / "broken.yaml"), "not a readable albumentations pipeline"),
        "unknown transform": (str(tmp_path / "unknown.yaml"), "not a readable albumentations pipeline"),
        "binary": (str(tmp_path / "binary.yaml"), "not a readable albumentations pipeline"),
        "missing": (str(tmp_path / "nowhere.yaml"), "file not found"),
        "resizes": (save_pipeline(tmp_path / "resize.yaml", A.Resize(10, 10)), "at its size"),
        "normalises": (save_pipeline(tmp_path / "norm.yaml", A.Normalize()), "leave resizing, Normalize"),
    }


@pytest.mark.parametrize("case", ["not YAML", "unknown transform", "binary", "missing", "resizes", "normalises"])
def test_a_bad_pipeline_file_is_one_line_and_exit_2_before_any_run_folder(cli, manifest_path, tmp_path, case):
    aug, needle = _bad_pipelines(tmp_path)[case]
    with warnings.catch_warnings(record=True) as warned:  # a Python warning would be a second stderr line
        warnings.simplefilter("always")
        result = cli("train", manifest_path, *train_flags(FAST), "--aug", aug, "--runs-dir", tmp_path / "runs",
                     "--name", "bad")
    assert_one_line_error(result, f"--aug {aug}", needle)
    assert not [w for w in warned if "albumentations" in w.filename], [str(w.message) for w in warned]
    assert not (tmp_path / "runs").exists()


# --- runs: the copy of the pipeline, train_batch.jpg ----------------------------------------------

def test_a_yaml_run_keeps_its_pipeline_and_train_batch_jpg_and_resume_keeps_both(tmp_path, manifest_path, cli,
                                                                                  monkeypatch):
    from maskkit.engine.loop import OnDevice

    batches = []  # what OnDevice hands on: train_batch.jpg's batch first, then the training steps'
    original = OnDevice.train_images
    monkeypatch.setattr(OnDevice, "train_images", lambda *args: batches.append(original(*args)) or batches[-1])
    mine = save_pipeline(tmp_path / "mine.yaml", A.InvertImg(p=1))
    options = dict(FAST, aug=mine, erasing=0.5, epochs=1)
    with one_thread(), pytest.raises(Interrupted):
        train.run(manifest_path, TrainOptions(**options), runs_dir=tmp_path, name="r", show_progress=False,
                  stop=lambda epoch, step: (epoch, step) == (0, 2))
    run = tmp_path / "r"
    assert len(batches) == 3 and torch.equal(batches[0], batches[1])  # the picture shows the first step's batch
    stored = json.loads((run / "config.json").read_text())
    assert (run / "aug.yaml").read_bytes() == (tmp_path / "mine.yaml").read_bytes()
    assert stored["aug_file"] == "aug.yaml" and len(stored["aug_sha256"]) == 64 and stored["options"]["aug"] == mine

    picture_ = cv2.imread(str(run / "train_batch.jpg"))
    assert picture_ is not None and picture_.ndim == 3
    tile_h = -(-160 // FAST["img_size"][0]) * FAST["img_size"][0]  # engine.plots.TILE_HEIGHT, nearest
    assert picture_.shape[0] >= 4 * tile_h  # 16 tiles, 4 a row: the first batch of 16

    # The user's file may change now: resume and --config train with the run's own copy.
    save_pipeline(tmp_path / "mine.yaml", A.ToGray(p=1))
    assert read_recipe(run / "config.json")["aug"] == str(run / "aug.yaml")
    marker = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    (run / "train_batch.jpg").write_bytes(marker)
    (run / "aug.yaml").write_text((run / "aug.yaml").read_text() + "# edited\n")
    result = cli("train", "--resume", run)
    assert_one_line_error(result, "aug.yaml", "changed since the run started")

    save_pipeline(run / "aug.yaml", A.InvertImg(p=1))
    with one_thread():
        train.run(None, TrainOptions(**options), resume=run, show_progress=False)
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1]
    assert (run / "train_batch.jpg").read_bytes() == marker  # written once: resume keeps it


def test_the_recipe_of_a_yaml_run_is_its_pipeline_content_not_its_path():
    config = {"options": {"aug": "mine.yaml"}, "manifest_sha256": "m"}
    assert recipe_key({**config, "aug_sha256": "a"}) != recipe_key({**config, "aug_sha256": "b"})
    assert recipe_key({"options": {"aug": "strong"}, "manifest_sha256": "m"}) == recipe_key(
        {"options": {"aug": "strong"}, "manifest_sha256": "m"})


@pytest.mark.slow
def test_a_short_run_with_randaugment_learns(tmp_path, manifest_path):
    """Six epochs of the tiny model (about 40 s): the same F1 as --aug none reaches in six epochs here
    (measured 0.166 and 0.160; the mask head needs more epochs on the drawn faces with either)."""
    with one_thread():
        run = train.run(manifest_path, TrainOptions(**dict(FAST, aug="randaugment", epochs=6)),
                        runs_dir=tmp_path, name="ra", show_progress=False)
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["val_f1"].max() > 2 / 18  # twice chance
    assert metrics["f1_gender"].max() > 0.6 and metrics["f1_age"].max() > 0.6
    assert metrics["train_loss"].iloc[-1] < 0.8 * metrics["train_loss"].iloc[0]
    assert cv2.imread(str(run / "train_batch.jpg")) is not None
