"""Building a training run from its TrainOptions: the data (datasets, shared image caches, sampler, loaders)
and the optimisation (model, optimiser, schedule, EMA). `maskkit train`'s Trainer runs what these
build; nothing here trains or writes the run folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console
from maskkit.data.cache import CacheFolderError, available_memory, cache_bytes, resolve_mode, shared_cache
from maskkit.data.gpu_augment import BatchAugment
from maskkit.data.loader import ImageDataset, build_cache, make_loader
from maskkit.data.presets import build_transform, eval_transform, work_size
from maskkit.data.pseudo import PSEUDO_FOLD, weigh_pseudo
from maskkit.data.sampling import ResumableSampler, ShardSampler, balanced_weights, in_age_band, targets_of
from maskkit.engine.devices import default_workers
from maskkit.engine.distributed import Distributed
from maskkit.engine.loop import OnDevice, Optimisation
from maskkit.engine.models import build_model, to_channels_last
from maskkit.options import TrainOptions, age_band

NO_CACHE = (None, None)  # (images, valid) of a dataset read from disk


def training_rows(manifest: pd.DataFrame, options: TrainOptions) -> pd.Series:
    """Which manifest rows train: all of them with `--fold all`, else those outside the fold."""
    if options.all_folds:
        return pd.Series(True, index=manifest.index)
    return manifest["fold"] != options.fold


def skipped_rows(manifest: pd.DataFrame, options: TrainOptions) -> pd.Series:
    """The rows `--drop-ages-mode skip` leaves out of training (validation keeps them)."""
    if options.drop_ages_mode != "skip":
        return pd.Series(False, index=manifest.index)
    return pd.Series(in_age_band(manifest, age_band(options.drop_ages)), index=manifest.index)


def device_side(device: torch.device, aug: str, erasing: float = 0.0) -> tuple[bool, bool]:
    """(normalise on the device, augment on the device). On CUDA the loader ships uint8 crops and
    the GPU normalises (4x fewer bytes, less CPU per image), and the basic recipe's flips, noise and
    brightness/contrast run on the GPU batch too (data/gpu_augment.py); on the CPU the loader does all.
    The GPU batch augmentation has no RandomErasing: basic with `--erasing` augments in the loader."""
    on_cuda = device.type == "cuda"
    return on_cuda, on_cuda and aug == "basic" and not erasing


# --- the data ----------------------------------------------------------------------------------

@dataclass
class TrainData:
    """The fold's images as training consumes them; the `val_` fields are None with `--fold all`."""

    train_rows: pd.DataFrame
    val_rows: pd.DataFrame  # empty with --fold all
    train_set: ImageDataset
    val_set: ImageDataset | None
    sampler: ResumableSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    steps_per_epoch: int
    on_device: OnDevice  # validation batches
    train_on_device: OnDevice  # training batches (with the GPU augmentation when there is one)
    augment_on_device: bool


def build_cache_of_manifest(options: TrainOptions, config: dict, manifest: pd.DataFrame) -> tuple:
    """(images, valid) of every manifest row at the working size, or NO_CACHE: one memory-mapped
    file that every process on the machine maps (DDP ranks, and every fold of this manifest run at
    once), built once by whichever comes first (data/cache.py)."""
    size = work_size(config["img_size"], tuple(config["crop"]))
    mode, paths = resolve_mode(options.cache, len(manifest), size), manifest["path"].tolist()
    if mode == "none":
        return NO_CACHE
    try:
        return shared_cache(paths, size, mode)
    except CacheFolderError as exc:
        if options.cache != "auto":
            raise
        fits = cache_bytes(len(paths), size) <= available_memory() // 2  # as before the shared cache
        console.print(f"[yellow]warning:[/] {exc}: {'a private RAM cache' if fits else 'no cache'} instead")
        return build_cache(paths, size) if fits else NO_CACHE


def build_datasets(options: TrainOptions, config: dict, manifest: pd.DataFrame, trains: pd.Series,
                   normalize_on_device: bool, augment_on_device: bool,
                   aug: str | None = None) -> tuple[ImageDataset, ImageDataset | None]:
    """(training set, validation set or None with `--fold all`), both reading the manifest's cache.
    `aug`: the augmentation to build in place of options.aug (a run folder's copy of --aug FILE.yaml)."""
    img_size, mean, std, crop = tuple(config["img_size"]), config["mean"], config["std"], tuple(config["crop"])
    images, valid = build_cache_of_manifest(options, config, manifest)
    train_at = np.flatnonzero((trains & ~skipped_rows(manifest, options)).to_numpy())
    val_at = np.flatnonzero(~trains.to_numpy())
    train_rows, val_rows = manifest.iloc[train_at].reset_index(drop=True), manifest.iloc[val_at].reset_index(drop=True)
    aug = options.aug if aug is None else aug
    train_transform = build_transform("none" if augment_on_device else aug, img_size, mean, std, crop,
                                      normalize=not normalize_on_device,
                                      erasing=0.0 if augment_on_device else options.erasing)
    # uint8 crops with nothing random on the host: whole batches are cut from the cache at once
    gather_train = normalize_on_device and (augment_on_device or (aug == "none" and not options.erasing))
    drop = age_band(options.drop_ages) if options.drop_ages_mode == "loss" else None
    train_set = ImageDataset(train_rows["path"], targets_of(train_rows, options.old_age, drop), img_size, train_transform,
                             cache=images, valid=None if valid is None else valid[train_at], crop=crop,
                             seed=options.seed, cache_rows=train_at, gather=gather_train)
    if options.all_folds:
        return train_set, None
    val_set = ImageDataset(val_rows["path"], targets_of(val_rows, options.old_age), img_size,
                           eval_transform(img_size, mean, std, crop, normalize=not normalize_on_device),
                           cache=images, valid=None if valid is None else valid[val_at], crop=crop,
                           seed=options.seed, cache_rows=val_at, gather=normalize_on_device)
    return train_set, val_set


def build_data(manifest: pd.DataFrame, options: TrainOptions, config: dict, device: torch.device,
               amp_dtype: torch.dtype | None, dist: Distributed, aug: str | None = None) -> TrainData:
    """Datasets, sampler and loaders of the fold, and how batches move to `device` (`aug`: as build_datasets)."""
    trains = training_rows(manifest, options)
    train_rows = manifest[trains & ~skipped_rows(manifest, options)].reset_index(drop=True)
    val_rows = manifest[~trains].reset_index(drop=True)
    normalize_on_device, augment_on_device = device_side(device, options.aug, options.erasing)
    mean, std = config["mean"], config["std"]
    on_device = OnDevice(device, amp_dtype, (mean, std) if normalize_on_device else None,
                         pad_to=options.batch_size if device.type == "cuda" else None)
    train_on_device = dataclasses.replace(
        on_device, augment=BatchAugment(tuple(mean), tuple(std)) if augment_on_device else None, seed=options.seed)
    train_set, val_set = build_datasets(options, config, manifest, trains, normalize_on_device, augment_on_device,
                                        aug)
    world = dist.world_size
    if len(train_set) < options.batch_size * world:
        raise MaskkitError(f"--batch-size {options.batch_size}: x {world} processes is more than the "
                           f"{len(train_set)} training images; use a smaller one")
    weights = balanced_weights(train_set.targets["label"][train_set.rows]) if options.balanced else None
    is_pseudo = (train_rows["fold"] == PSEUDO_FOLD).to_numpy()[train_set.rows]
    weights = weigh_pseudo(weights, is_pseudo, options.pseudo_weight)
    # By default the machine's cores are shared among the processes torchrun started on it.
    workers = (max(1, default_workers(device) // dist.local_world_size) if options.workers is None
               else options.workers)
    sampler = ResumableSampler(len(train_set), options.seed, weights, dist.rank, world)
    train_loader = make_loader(train_set, options.batch_size, shuffle=True, workers=workers, seed=options.seed,
                               device=device, drop_last=True, sampler=sampler)
    val_loader = None
    if val_set is not None:
        # On CUDA validation runs at the training batch size: the shapes cudnn already tuned.
        val_batch = options.batch_size * (1 if device.type == "cuda" else 2)
        val_sampler = ShardSampler(len(val_set), dist.rank, world) if dist.enabled else None
        val_loader = make_loader(val_set, val_batch, shuffle=False, workers=workers, seed=options.seed,
                                 device=device, sampler=val_sampler)
    return TrainData(train_rows, val_rows, train_set, val_set, sampler, train_loader, val_loader,
                     len(train_set) // (options.batch_size * world), on_device, train_on_device, augment_on_device)


# --- the optimisation --------------------------------------------------------------------------

def build_training_model(options: TrainOptions, img_size: Sequence[int], device: torch.device,
                         resumed: bool) -> torch.nn.Module:
    """The model on `device`, initialised from `--seed` (or `--weights`/pretrained, except when
    resuming: last.pt then has the weights); a backbone that cannot take img_size is refused first."""
    model = build_model(options.backbone, heads=options.heads, age_head=options.age_head, old_age=options.old_age,
                        pretrained=options.pretrained and not resumed, weights=None if resumed else options.weights,
                        img_size=tuple(img_size), dropout=options.dropout, probe=True).to(device)
    if device.type == "cuda":
        to_channels_last(model)
    return model


def make_scheduler(optimizer: torch.optim.Optimizer, options: TrainOptions, steps: int):
    """timm's scheduler factory, stepped per update, planned for options.epochs: linear warmup
    from lr/100 over `warmup` epochs (at most half the run), then `sched` down to lr/100."""
    total = options.epochs * steps
    warmup_steps = min(int(round(options.warmup * steps)), total // 2)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=options.sched, num_epochs=options.epochs, min_lr=options.lr * 0.01,
        warmup_lr=options.lr * 0.01, warmup_epochs=warmup_steps / steps,
        decay_epochs=max(options.epochs / 3, 1 / steps),  # step: lr x 0.1 at each third of the run
        decay_rate=0.1 if options.sched == "step" else 1.0,  # poly: power 1, a linear decay
        step_on_epochs=False, updates_per_epoch=steps)
    return scheduler


def build_optimisation(model: torch.nn.Module, options: TrainOptions, steps: int, device: torch.device,
                       amp_dtype: torch.dtype | None) -> Optimisation:
    """timm's optimiser (weight decay on weights only, norms and biases excluded), its schedule,
    the fp16 grad scaler, the generator of the batch mixes (CutMix, MixUp) and, with `--ema`, timm's EMA
    of the weights."""
    optimizer = create_optimizer_v2(model, opt=options.opt, lr=options.lr, weight_decay=options.weight_decay)
    return Optimisation(
        optimizer=optimizer, scheduler=make_scheduler(optimizer, options, steps),
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        ema=ModelEmaV3(model, decay=options.ema_decay, use_warmup=True) if options.ema else None,
        cutmix=options.cutmix, cutmix_generator=torch.Generator().manual_seed(options.seed + 1),
        cutmix_mode=options.cutmix_mode, mixup=options.mixup, mixup_alpha=options.mixup_alpha)
