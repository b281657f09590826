"""Held-out macro F1 of maskkit's training recipe against the official competition baseline's recipe.

Same backbone (lite0 = timm tf_efficientnet_lite0 with the ImageNet weights `maskkit.engine.models`
loads offline), same input size (128x96 HxW), same epochs, same training persons, same held-out
persons; only the recipe differs:

  baseline  the official starter code's defaults, written here in plain torch the way it was:
            MaskBaseDataset's random split of *images* (val_ratio 0.2: every person sits in both
            train and val, a leak), BaseAugmentation (PIL open, torchvision Resize((128, 96)),
            ToTensor, Normalize with the dataset's mean/std), one 18-way head, CrossEntropy,
            SGD lr 1e-3 (momentum 0, weight decay 5e-4), StepLR(20, gamma 0.5), batch 64, the best
            epoch chosen by accuracy on the leaky validation split.
  maskkit   `maskkit.commands.train.run` with heads=multi, age_weight=0.1 and every other option at its
            default (AdamW, cosine schedule with warm-up, aug basic, batch 32, centre crop,
            validation on a person-grouped fold), then `maskkit.commands.predict.run` on the held-out
            persons.

Held-out persons: by default a drawn dataset (`maskkit.commands.synth`), whose DATA/eval persons are never
trained on (labels in eval/truth.csv). With --data DIR: DIR/eval/truth.csv (ImageID,ans), or with
--holdout-persons FRACTION that share of DIR/train's persons (stratified by gender x age group).
Wall times are measured in this process, one recipe after the other. --device auto trains both
recipes on a GPU when there is one (maskkit then uses its AMP and GPU normalisation; the baseline
runs fp32, as written).

Run from the repository root: python benchmarks/recipe.py [--persons 120] [--eval-persons 60] [--epochs 6] [--seed 0]
Real faces: python benchmarks/recipe.py --data /path/to/real --holdout-persons 0.2
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader, Dataset, random_split
from torchvision import transforms

from maskkit.contract.layout import load_train
from maskkit.engine.devices import resolve_device
from maskkit.contract.files import write_csv
from maskkit.contract.labels import NUM_CLASSES, task_labels
from maskkit.engine.models import build_model
from maskkit.commands.predict import run as predict
from maskkit.data.folds import make_manifest, person_strata
from maskkit.commands import synth, train
from maskkit.options import Size, TrainOptions

BACKBONE = "lite0"
BASELINE_MEAN, BASELINE_STD = (0.548, 0.504, 0.479), (0.237, 0.247, 0.246)  # MaskBaseDataset's defaults
BASELINE_VAL_RATIO = 0.2
BASELINE_BATCH, BASELINE_VAL_BATCH = 64, 1000
BASELINE_LR, BASELINE_WEIGHT_DECAY = 1e-3, 5e-4
BASELINE_DECAY_STEP, BASELINE_GAMMA = 20, 0.5
MASKKIT_FOLDS = 5  # fold 0 (a fifth of the training persons) validates, like the baseline's 0.2


@dataclass
class HeldOut:
    """The test images: ImageID relative to `root`, true class `label` (0..17)."""

    root: Path
    frame: pd.DataFrame  # ImageID, label
    source: str

    @property
    def paths(self) -> list[str]:
        return [str(self.root / image_id) for image_id in self.frame["ImageID"]]


@dataclass
class Result:
    """One recipe's numbers."""

    name: str
    val_f1: float  # on the recipe's own validation split, at the epoch it selected
    val_note: str
    best_epoch: int
    test_pred: np.ndarray
    train_seconds: float
    predict_seconds: float


# --- data ------------------------------------------------------------------------------------------

def draw_dataset(root: Path, persons: int, eval_persons: int, size_wh: tuple[int, int], seed: int) -> Path:
    """A drawn dataset in the competition layout (eval/truth.csv holds the true classes)."""
    synth.run(root, persons=persons, eval_persons=eval_persons, size=Size(width=size_wh[0], height=size_wh[1]),
              seed=seed, overwrite=True, show_progress=False)
    return root


def split_holdout(images: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train images, held-out images): `fraction` of the persons of each gender x age stratum held out."""
    if not 0 < fraction < 1:
        raise SystemExit(f"--holdout-persons {fraction}: use a fraction in (0, 1)")
    strata = person_strata(images)
    rng = np.random.default_rng([seed, 7_001])
    held = []
    for _, persons in strata.groupby(strata):
        names = persons.index.to_numpy()
        held.extend(rng.permutation(names)[: int(round(fraction * len(names)))].tolist())
    test = images["person"].isin(held)
    return images[~test].reset_index(drop=True), images[test].reset_index(drop=True)


def load_data(data: Path, holdout: float | None, seed: int) -> tuple[pd.DataFrame, HeldOut]:
    """Training images (load_train rows) and the held-out test set of a dataset folder."""
    images = load_train(data / "train")
    if holdout is not None:
        train_images, test_images = split_holdout(images, holdout, seed)
        image_root = data / "train" / "images"
        frame = pd.DataFrame({
            "ImageID": [Path(p).relative_to(image_root).as_posix() for p in test_images["path"]],
            "label": test_images["label"].to_numpy(),
        })
        source = f"{test_images['person'].nunique()} persons of {data / 'train'} held out ({holdout:g})"
        return train_images, HeldOut(image_root, frame, source)
    truth_path = data / "eval" / "truth.csv"
    if not truth_path.is_file():
        raise SystemExit(f"{truth_path}: not found; hold out training persons instead: --holdout-persons 0.2")
    truth = pd.read_csv(truth_path, dtype={"ImageID": str})
    frame = pd.DataFrame({"ImageID": truth["ImageID"], "label": truth["ans"].astype(int)})
    return images, HeldOut(data / "eval" / "images", frame, f"{truth_path} ({len(frame)} images)")


def write_manifest(images: pd.DataFrame, path: Path, seed: int) -> Path:
    """The person-grouped folds maskkit trains on (fewer folds when a stratum has under 5 persons)."""
    smallest = int(person_strata(images).value_counts().min())
    folds = max(2, min(MASKKIT_FOLDS, smallest))
    if folds < MASKKIT_FOLDS:
        print(f"note: {folds} folds (a stratum has only {smallest} persons): maskkit validates on "
              f"1/{folds} of the persons", file=sys.stderr)
    write_csv(make_manifest(images, folds, seed), path)
    return path


def write_eval_folder(test: HeldOut, folder: Path) -> Path:
    """A DATA/eval-like folder of the held-out images (info.csv + an `images` link) for maskkit predict."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "images").symlink_to(test.root.resolve(), target_is_directory=True)
    write_csv(test.frame[["ImageID"]].assign(ans=0), folder / "info.csv")
    return folder


# --- the baseline recipe -----------------------------------------------------------------------------

class BaselineDataset(Dataset):
    """MaskBaseDataset with BaseAugmentation: PIL open, Resize, ToTensor, Normalize, every epoch."""

    def __init__(self, paths: list[str], labels: np.ndarray, size_hw: tuple[int, int]) -> None:
        self.paths, self.labels = paths, np.asarray(labels, dtype=np.int64)
        self.transform = transforms.Compose([
            transforms.Resize(size_hw, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.ToTensor(),
            transforms.Normalize(mean=BASELINE_MEAN, std=BASELINE_STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.open(self.paths[i]).convert("RGB")), int(self.labels[i])


def seed_baseline(seed: int) -> None:
    """The baseline's seed_everything (CPU part)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def baseline_loaders(images: pd.DataFrame, size_hw: tuple[int, int]) -> tuple[DataLoader, DataLoader]:
    """MaskBaseDataset.split_dataset: a random split of the images (torch's global generator)."""
    dataset = BaselineDataset(images["path"].tolist(), images["label"].to_numpy(), size_hw)
    n_val = int(len(dataset) * BASELINE_VAL_RATIO)
    train_set, val_set = random_split(dataset, [len(dataset) - n_val, n_val])
    workers = multiprocessing.cpu_count() // 2
    train_loader = DataLoader(train_set, batch_size=BASELINE_BATCH, shuffle=True, drop_last=True, num_workers=workers)
    # The baseline's val loader also drops the last batch; with a batch of 1000 that would leave
    # no batch at all on a small dataset, so every validation image is kept here.
    val_loader = DataLoader(val_set, batch_size=BASELINE_VAL_BATCH, shuffle=False, num_workers=workers)
    return train_loader, val_loader


@torch.no_grad()
def predict_logits(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(argmax predictions, true labels) of a (tensor, label) loader."""
    model.eval()
    preds, labels = [], []
    for images, target in loader:
        preds.append(model(images.to(device))["class"].argmax(1).cpu().numpy())
        labels.append(target.numpy())
    return np.concatenate(preds), np.concatenate(labels)


def train_baseline(images: pd.DataFrame, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """The baseline's train(): returns the best-accuracy epoch's model and its leaky val metrics."""
    seed_baseline(args.seed)
    train_loader, val_loader = baseline_loaders(images, args.img_size)
    device = resolve_device(args.device)
    model = build_model(BACKBONE, heads="single", pretrained=True).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=BASELINE_LR, weight_decay=BASELINE_WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, BASELINE_DECAY_STEP, gamma=BASELINE_GAMMA)
    best_acc, best = -1.0, {}
    best_state = None
    epochs = args.baseline_epochs or args.epochs
    for epoch in range(epochs):
        model.train()
        loss_sum, seen = 0.0, 0
        for batch, target in train_loader:
            optimizer.zero_grad()
            batch, target = batch.to(device), target.to(device)
            loss = F.cross_entropy(model(batch)["class"], target)
            loss.backward()
            optimizer.step()
            loss_sum, seen = loss_sum + float(loss.detach()) * len(target), seen + len(target)
        scheduler.step()
        pred, true = predict_logits(model, val_loader, device)
        acc, f1 = float((pred == true).mean()), macro_f1(true, pred)
        print(f"baseline epoch {epoch + 1}/{epochs}  loss {loss_sum / max(seen, 1):.4f}  "
              f"leaky val acc {acc:.4f}  macro F1 {f1:.4f}" + ("  *best" if acc > best_acc else ""), file=sys.stderr)
        if acc > best_acc:
            best_acc, best = acc, {"val_f1": f1, "val_acc": acc, "epoch": epoch + 1}
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model, best


def run_baseline(images: pd.DataFrame, test: HeldOut, args: argparse.Namespace) -> Result:
    """Train the baseline recipe, then predict the held-out images with its selected epoch."""
    started = time.perf_counter()
    model, best = train_baseline(images, args)
    trained = time.perf_counter()
    loader = DataLoader(BaselineDataset(test.paths, test.frame["label"].to_numpy(), args.img_size),
                        batch_size=BASELINE_BATCH, shuffle=False)
    pred, _ = predict_logits(model, loader, resolve_device(args.device))
    return Result("baseline", best["val_f1"], "random 20% of images (leaky)", best["epoch"], pred,
                  trained - started, time.perf_counter() - trained)


# --- the maskkit recipe ------------------------------------------------------------------------------

def run_maskkit(images: pd.DataFrame, test: HeldOut, work: Path, args: argparse.Namespace) -> Result:
    """maskkit.commands.train on person-grouped folds (fold 0 validates), then maskkit.commands.predict on the held-out images."""
    started = time.perf_counter()
    manifest = write_manifest(images, work / "manifest.csv", args.seed)
    options = TrainOptions(backbone=BACKBONE, heads="multi", age_weight=0.1, img_size=args.img_size,
                           epochs=args.epochs, seed=args.seed, device=args.device)
    run_dir = train.run(manifest, options, runs_dir=work / "runs", name="maskkit", overwrite=True, show_progress=False)
    trained = time.perf_counter()
    eval_dir = write_eval_folder(test, work / "heldout")
    frame = predict(run_dir, eval_dir, out=work / "heldout_preds.csv", device=args.device)
    predicted = time.perf_counter()
    metrics = pd.read_csv(run_dir / "metrics.csv")
    best = metrics.loc[metrics["val_f1"].idxmax()]
    return Result("maskkit", float(best["val_f1"]), "fold 0 of the persons (grouped)", int(best["epoch"]),
                  frame["ans"].to_numpy(), trained - started, predicted - trained)


# --- scoring and output ------------------------------------------------------------------------------

def macro_f1(true: np.ndarray, pred: np.ndarray, classes: int = NUM_CLASSES) -> float:
    """The competition metric: macro F1 over all classes (absent classes score 0 when predicted)."""
    return float(f1_score(true, pred, average="macro", labels=range(classes), zero_division=0))


def task_f1(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Macro F1 of each task (mask, gender, age) from 18-class labels."""
    t, p = task_labels(true), task_labels(pred)
    return {task: macro_f1(t[task], p[task], classes=n) for task, n in (("mask", 3), ("gender", 2), ("age", 3))}


def print_table(results: list[Result], test: HeldOut) -> None:
    """The comparison: validation F1 each recipe selected on, held-out F1 (and per task), wall times."""
    true = test.frame["label"].to_numpy()
    base = results[0].train_seconds + results[0].predict_seconds
    print(f"held-out: {test.source}")
    print(f"{'recipe':<9} {'val F1':>7}  {'on':<32} {'epoch':>5} {'held-out F1':>11} {'acc':>6} "
          f"{'mask':>6} {'gender':>6} {'age':>6} {'train s':>8} {'pred s':>7} {'time':>6}")
    for r in results:
        tasks = task_f1(true, r.test_pred)
        total = r.train_seconds + r.predict_seconds
        print(f"{r.name:<9} {r.val_f1:7.4f}  {r.val_note:<32} {r.best_epoch:5d} {macro_f1(true, r.test_pred):11.4f} "
              f"{float((r.test_pred == true).mean()):6.3f} {tasks['mask']:6.3f} {tasks['gender']:6.3f} "
              f"{tasks['age']:6.3f} {r.train_seconds:8.1f} {r.predict_seconds:7.1f} {total / base:5.2f}x")
    gap = macro_f1(true, results[1].test_pred) - macro_f1(true, results[0].test_pred)
    drop = results[0].val_f1 - macro_f1(true, results[0].test_pred)
    print(f"maskkit - baseline held-out macro F1: {gap:+.4f}; baseline leaky val F1 - its held-out F1: {drop:+.4f}")


def parse_size(text: str) -> tuple[int, int]:
    first, second = (int(v) for v in text.lower().split("x"))
    return first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a dataset folder in the competition layout (default: draw one)")
    parser.add_argument("--holdout-persons", type=float, metavar="FRACTION",
                        help="hold out this share of DATA/train's persons as the test set (for data without truth.csv)")
    parser.add_argument("--persons", type=int, default=120, help="drawn training persons (7 images each)")
    parser.add_argument("--eval-persons", type=int, default=60, help="drawn held-out persons")
    parser.add_argument("--draw-size", default="192x256", help="drawn image size WxH")
    parser.add_argument("--img-size", default="128x96", help="model input HxW (both recipes)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs (both recipes)")
    parser.add_argument("--baseline-epochs", type=int, help="give the baseline more (or fewer) epochs than --epochs")
    parser.add_argument("--seed", type=int, default=0, help="seeds the drawing, the splits and both trainings")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N], both recipes")
    parser.add_argument("--work", type=Path, help="keep the drawn data and runs here (default: a temporary folder)")
    args = parser.parse_args()
    args.img_size = parse_size(args.img_size)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.data is None:
            data = draw_dataset(work / "data", args.persons, args.eval_persons, parse_size(args.draw_size), args.seed)
        else:
            data = args.data
        images, test = load_data(data, args.holdout_persons, args.seed)
        epochs = f"{args.epochs} epochs" + (f" (baseline {args.baseline_epochs})" if args.baseline_epochs else "")
        print(f"{len(images)} training images of {images['person'].nunique()} persons; {BACKBONE} at "
              f"{args.img_size[0]}x{args.img_size[1]}, {epochs}, seed {args.seed}, "
              f"{resolve_device(args.device)}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs",
              file=sys.stderr)
        baseline = run_baseline(images, test, args)
        maskkit = run_maskkit(images, test, work / "maskkit", args)
        print_table([baseline, maskkit], test)


if __name__ == "__main__":
    sys.exit(main())
