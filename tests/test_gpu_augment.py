"""Batch augmentation on the training device (run here on the CPU): per-image seeded, reproducible,
the `basic` recipe's effects, and the device decoding path's host fallback."""

from __future__ import annotations

import json

import cv2
import pandas as pd
import numpy as np
import pytest
import torch

from maskkit.data import gpu_augment as ga
from maskkit.data.loader import UnreadableImage
from maskkit.data.presets import eval_transform, normalize_batch

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny images gain nothing from threads


def batch(count: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(30, 220, (count, 3, 24, 20), dtype=np.uint8))


def test_same_seed_same_tensors_and_an_image_does_not_depend_on_its_batch():
    images, aug = batch(), ga.BatchAugment(MEAN, STD, p_noise=0.5)
    seeds = ga.image_seeds(7, 3, range(len(images)))
    first, again = ga.augment_batch(images, seeds, aug), ga.augment_batch(images, seeds, aug)
    assert torch.equal(first, again)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:5]
    alone = ga.augment_batch(images[order], [seeds[i] for i in order], aug)
    assert torch.equal(alone, first[order])  # another batch, another order: the same augmentation
    other_epoch = ga.augment_batch(images, ga.image_seeds(7, 4, range(len(images))), aug)
    assert not torch.equal(other_epoch, first)


def test_without_augmentation_it_is_the_loaders_normalisation():
    images = batch()
    got = ga.augment_batch(images, ga.image_seeds(0, 0, range(len(images))), ga.BatchAugment.off(MEAN, STD))
    torch.testing.assert_close(got, normalize_batch(images, MEAN, STD), rtol=1e-5, atol=1e-5)


def test_each_effect_hits_about_its_share_of_images_with_its_own_strength():
    images = batch(400)
    seeds = ga.image_seeds(1, 0, range(len(images)))
    plain = normalize_batch(images, MEAN, STD)
    flip_only = ga.augment_batch(images, seeds, ga.BatchAugment(MEAN, STD, p_color=0, p_noise=0))
    flipped = torch.tensor([torch.equal(f, p.flip(-1)) and not torch.equal(f, p) for f, p in zip(flip_only, plain)])
    unchanged = torch.tensor([torch.equal(f, p) for f, p in zip(flip_only, plain)])
    assert (flipped | unchanged).all() and 0.4 < flipped.float().mean() < 0.6

    noise_only = ga.augment_batch(images, seeds, ga.BatchAugment(MEAN, STD, p_color=0, p_flip=0))
    pixels = (noise_only - plain) * torch.tensor(STD).view(1, 3, 1, 1) * 255  # back to pixel units
    spread = pixels.flatten(1).std(dim=1)
    noisy = spread > 0
    assert 0.2 < noisy.float().mean() < 0.4
    assert spread[noisy].min() > 0.015 * 255 and spread[noisy].max() < 0.085 * 255  # std_range 0.02..0.08

    colour_only = ga.augment_batch(images, seeds, ga.BatchAugment(MEAN, STD, p_noise=0, p_flip=0))
    params = ga.draw_params(seeds, ga.BatchAugment(MEAN, STD))
    changed = ~torch.tensor([torch.equal(c, p) for c, p in zip(colour_only, plain)])
    assert torch.equal(changed, torch.from_numpy((params["alpha"] != 1) | (params["beta"] != 0)))
    assert 0.4 < changed.float().mean() < 0.6
    expected = (images.float() * torch.tensor(params["alpha"], dtype=torch.float32).view(-1, 1, 1, 1)
                + torch.tensor(params["beta"], dtype=torch.float32).view(-1, 1, 1, 1) * 255).clamp(0, 255)
    torch.testing.assert_close(colour_only, normalize_batch(expected, MEAN, STD), rtol=1e-4, atol=1e-4)


def test_refuses_a_float_batch_and_a_wrong_number_of_seeds():
    with pytest.raises(ValueError, match="uint8"):
        ga.augment_batch(batch().float(), list(range(16)), ga.BatchAugment())
    with pytest.raises(ValueError, match="seeds"):
        ga.augment_batch(batch(), [1, 2], ga.BatchAugment())


def test_decoding_on_the_host_frames_images_like_the_loader(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, suffix in enumerate((".jpg", ".png", ".jpg")):
        image = cv2.GaussianBlur(rng.integers(0, 255, (128, 96, 3), dtype=np.uint8), (0, 0), 3)
        paths.append(tmp_path / f"{i}{suffix}")
        cv2.imwrite(str(paths[-1]), image)
    got = ga.decode_batch(paths, (64, 48), "cpu")
    assert got.shape == (3, 3, 64, 48) and got.dtype == torch.uint8
    transform = eval_transform((64, 48), MEAN, STD, normalize=False)
    for path, image in zip(paths, got):
        expected = transform(image=cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))["image"]
        assert (image.int() - expected.int()).abs().float().mean() < 2  # bilinear vs INTER_AREA resizing

    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UnreadableImage, match="bad.jpg"):
        ga.decode_batch([paths[0], tmp_path / "bad.jpg"], (64, 48), "cpu")


def test_training_batches_are_augmented_per_image_through_on_device():
    from maskkit.engine.loop import OnDevice

    images, rows = batch(8), torch.arange(10, 18)
    aug = ga.BatchAugment(MEAN, STD, p_noise=0.5)
    on_device = OnDevice(torch.device("cpu"), normalize=(MEAN, STD), augment=aug, seed=5)
    x = on_device.train_images(images, rows, epoch=2)
    assert torch.equal(x, ga.augment_batch(images, ga.image_seeds(5, 2, rows), aug))
    assert torch.equal(on_device.train_images(images[3:5], rows[3:5], epoch=2), x[3:5])  # per image, not per batch
    plain = OnDevice(torch.device("cpu"), normalize=(MEAN, STD))  # no augmentation: normalisation only
    assert torch.equal(plain.train_images(images, rows, epoch=2), normalize_batch(images, MEAN, STD))


def test_padding_the_last_inference_batch_changes_no_prediction():
    import timm

    from maskkit.engine.loop import OnDevice, infer

    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=18).eval()

    class Single(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = backbone

        def forward(self, x):
            return {"class": self.net(x)}

    images = torch.randn(5, 3, 32, 32)
    loader = [(images[:4], {}, torch.arange(4)), (images[4:], {}, torch.arange(4, 5))]
    plain = infer(Single(), loader, OnDevice(torch.device("cpu")))
    padded = infer(Single(), loader, OnDevice(torch.device("cpu"), pad_to=4))
    assert padded.probs.shape == (5, 18) and padded.rows.tolist() == [0, 1, 2, 3, 4]
    assert np.allclose(padded.probs, plain.probs, atol=1e-6)


@pytest.mark.slow
def test_trainer_augments_uint8_batches_on_the_device_when_the_device_side_says_so(manifest_path, tmp_path, monkeypatch):
    """train's CUDA data path (uint8 crops from the loader, the basic recipe and normalisation on
    the batch), forced on the CPU: every step goes through augment_batch, it learns, and a fixed
    seed gives the same weights twice."""
    from helpers import FAST
    from maskkit.commands import train
    from maskkit.engine import build
    from maskkit.options import TrainOptions
    from maskkit.contract.runfolder import LAST
    from maskkit.engine import loop

    monkeypatch.setattr(build, "device_side", lambda device, aug, erasing=0.0: (True, aug == "basic" and not erasing))
    calls = []
    original = ga.augment_batch

    def counted(images, seeds, aug):
        calls.append(images.dtype)
        return original(images, seeds, aug)

    monkeypatch.setattr(loop, "augment_batch", counted)  # where the training loop calls it
    options = TrainOptions(**{**FAST, "aug": "basic", "epochs": 3})
    runs = [train.run(manifest_path, options, runs_dir=tmp_path, name=f"run{i}", show_progress=False) for i in range(2)]
    metrics = pd.read_csv(runs[0] / "metrics.csv")
    steps = json.loads((runs[0] / "config.json").read_text())["train_images"] // FAST["batch_size"]
    # every step of both runs and each run's train_batch.jpg (its first batch, as the model gets it), uint8 in
    assert len(calls) == 2 * (3 * steps + 1) and set(calls) == {torch.uint8}
    assert np.isfinite(metrics["train_loss"]).all() and metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    states = [torch.load(run / LAST, map_location="cpu", weights_only=False)["model"] for run in runs]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_balanced_duplicates_of_one_image_are_augmented_independently():
    """--balanced draws with replacement: two draws of one image carry their own seeds (targets
    "draw"), so the batch augmentation treats them as two images, and a fixed seed repeats them."""
    from maskkit.data.loader import ImageDataset, make_loader, set_epoch
    from maskkit.data.presets import build_transform
    from maskkit.data.sampling import ResumableSampler

    cache = batch(4).permute(0, 2, 3, 1).contiguous().numpy()  # 4 uint8 images (H, W, 3)
    dataset = ImageDataset([f"img{i}.jpg" for i in range(4)], {"label": np.arange(4)}, (24, 20),
                           build_transform("none", (24, 20), MEAN, STD, normalize=False), cache=cache, crop=(1.0, 1.0))
    weights = np.array([0.97, 0.01, 0.01, 0.01])  # almost every draw is image 0
    aug = ga.BatchAugment(MEAN, STD, p_noise=0.5)

    def augmented_epoch():
        sampler = ResumableSampler(len(dataset), seed=3, weights=weights)
        loader = make_loader(dataset, 4, shuffle=True, sampler=sampler)
        set_epoch(loader, 1)
        images, targets, rows = next(iter(loader))
        return ga.augment_batch(images, ga.image_seeds(3, 1, targets["draw"]), aug), targets["draw"], rows

    x, draws, rows = augmented_epoch()
    duplicates = [i for i in range(len(rows)) if rows[i] == 0]
    assert len(duplicates) >= 3  # the same image drawn several times in one batch
    assert len({int(draws[i]) for i in duplicates}) == len(duplicates)  # one seed per draw
    assert len({x[i].numpy().tobytes() for i in duplicates}) == len(duplicates)  # each its own augmentation
    same_rows = ga.augment_batch(torch.stack([torch.from_numpy(cache[0]).permute(2, 0, 1)] * 2),
                                 ga.image_seeds(3, 1, [0, 0]), aug)
    assert torch.equal(same_rows[0], same_rows[1])  # what seeding by row did: identical duplicates
    again, _, _ = augmented_epoch()
    assert torch.equal(again, x)  # reproducible from the seed
