"""Everything issues 11 and 20 measure on one GPU, in one run under 5 minutes (the CPU parts without one).

Draws its own data (`maskkit synth`, 384x512 JPEGs) in a temporary folder and prints one table:

  train  synthetic      step rate (img/s) of maskkit's own training step (`engine.trainer.Trainer.train_epoch`) fed
                        one batch already on the device, over and over: the model's ceiling
  train  loader-fed     the same trainer fed by its real loader (second epoch), with --cache disk (the
                        shared cache, what auto picks) and --cache none; `x synthetic` = loader-fed /
                        synthetic (goal >= 0.9), `wait` = share of the epoch spent waiting for a batch
                        (goal < 5 %) (`--aug basic`: on CUDA the loader ships uint8 crops and flips, noise,
                        brightness/contrast and normalisation run on the batch, data/gpu_augment.py)
  train  cpu-aug        the same with the augmentation on the loader's workers (albumentations), as
                        before issue 11 (the trainer's train transform swapped back; CUDA only)
  first epoch           its parts: cache build (each variant builds its own, in a fresh cache folder),
                        model build, rest of the set-up, warm-up excess of epoch 1 over epoch 2 (worker
                        start, cudnn autotuning of the training shapes), excess of the first validation
                        over the second; `projected` = those for a real-size set (cache of 18,900 images,
                        the rest fixed) as a share of one epoch of 15,000 images (goal <= 10 %)
  ddp                   `torchrun --nproc_per_node 1 -m maskkit train` (DistributedDataParallel, world size
                        1: nccl on CUDA, gloo on the CPU) vs `python -m maskkit train`, same options and
                        seed: epoch-3 img/s, their ratio, and the two train-loss curves (goal: the same
                        within noise)
  balanced              `--balanced` draws with replacement: duplicate draws of one image in an epoch,
                        and how many of them got the same GPU augmentation as another draw of the image
                        (goal 0; seeding per image, as before issue 20, gives all of them)
  cache (CPU)           benchmarks/cache.py's rows: two processes (torchrun ranks, and two fold runs) with
                        private caches vs the shared --cache disk file: the cache pages' PSS, build time
  segment               `maskkit segment` img/s vs the forward pass alone (same pre-resized batches,
                        no I/O; goal >= 0.9x), the device pipeline (default on CUDA), with nvjpeg
                        encoding, and the host pipeline; DeepLabV3-ResNet50 with RANDOM weights
                        (person bias raised so every image is composited) at 520, batch 32
  predict               img/s of `predict_probs` over all drawn images, cold decoding (as `maskkit predict`)

Each section that fails prints its one-line reason and the others still run; a section that would
start after --budget seconds (default 220) is skipped with a note, so the script ends in under
5 minutes on one GPU (issue 20's rows come first). Without CUDA it runs the same on the CPU
(`--quick` for a dry run: tiny sizes, one torch thread). Run from the repository root:

    python benchmarks/gpu.py --out gpu_results.json           # one GPU, under 5 minutes
    python benchmarks/gpu.py --quick --out /tmp/gpu.json      # CPU dry run: tiny sizes, one thread
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskkit.commands import segment  # noqa: E402
from maskkit.data.masks import to_working  # noqa: E402
from maskkit.engine import deeplab  # noqa: E402
from maskkit.data.folds import make_manifest  # noqa: E402
from maskkit.commands import synth  # noqa: E402
from maskkit.options import Size
from maskkit.contract.errors import MaskkitError  # noqa: E402
from maskkit.contract.files import write_csv  # noqa: E402
from maskkit.contract.layout import load_train  # noqa: E402
from maskkit.contract.manifest import MANIFEST_COLUMNS  # noqa: E402

REAL_TRAIN_IMAGES, REAL_ALL_IMAGES = 15_000, 18_900
SECTIONS = ["train", "ddp", "balanced", "cache", "segment", "predict"]


class Results:
    """Rows of (section, measure, value, unit, note), printed as they come and saved at the end."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.meta: dict = {}

    def add(self, section: str, measure: str, value: float | str | None, unit: str = "", note: str = "") -> None:
        row = {"section": section, "measure": measure, "value": value, "unit": unit, "note": note}
        self.rows.append(row)
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"  {section:<12} {measure:<44} {shown:>10} {unit:<6} {note}", flush=True)

    def markdown(self) -> str:
        lines = [f"{key}: {value}  " for key, value in self.meta.items()]
        lines += ["", "| section | measure | value | unit | note |", "|---|---|---:|---|---|"]
        for r in self.rows:
            value = f"{r['value']:.3g}" if isinstance(r["value"], float) else str(r["value"])
            lines.append(f"| {r['section']} | {r['measure']} | {value} | {r['unit']} | {r['note']} |")
        return "\n".join(lines) + "\n"


@contextlib.contextmanager
def section(results: Results, name: str):
    """Run one section; a failure becomes a row saying why, and the script goes on."""
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a benchmark section must not end the run
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        results.add(name, "FAILED", type(exc).__name__, "", reason[:200])
        traceback.print_exc(limit=3)
    finally:
        print(f"  ({name}: {time.perf_counter() - start:.0f} s)", flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- train --------------------------------------------------------------------------------------

class Timer:
    """Wraps a module function to sum its wall time (e.g. build_cache_of_manifest, build_model in engine.build)."""

    def __init__(self, module, name: str) -> None:
        self.module, self.name, self.original, self.seconds = module, name, getattr(module, name, None), 0.0

    def __enter__(self) -> Timer:
        if self.original is None:  # moved elsewhere: its time stays in "rest of set-up"
            return self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        setattr(self.module, self.name, timed)
        return self

    def __exit__(self, *_: object) -> None:
        if self.original is not None:
            setattr(self.module, self.name, self.original)


def run_epoch(trainer, epoch: int, device: torch.device) -> tuple[float, float, int]:
    """(seconds, data-wait seconds, images) of one training epoch of `trainer`."""
    from maskkit.engine.loop import EpochState

    trainer.state.current = EpochState()
    synchronize(device)
    trainer.train_epoch(epoch, None)
    synchronize(device)
    current = trainer.state.current
    return current.seconds, current.wait, current.seen


def timed_validate(trainer, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    trainer.validate()
    synchronize(device)
    return time.perf_counter() - start


def train_config(results: Results, label: str, work: Path, manifest, manifest_path: Path, backbone: str,
                 img_size: tuple[int, int], batch: int, device: torch.device, caches: list[str],
                 synthetic_steps: int, deadline: float = float("inf"), compare_worker_aug: bool | None = None,
                 compare_cudnn: bool = False) -> None:
    """Rows for one model: synthetic, loader-fed per cache, cpu-aug (CUDA), and with `compare_cudnn`
    first a run with cudnn.benchmark off (no autotuning: its warm-up and steady rate vs autotuned)."""
    from maskkit.commands.train import build_config
    from maskkit.engine import build as build_module
    from maskkit.engine.trainer import Trainer
    from maskkit.options import TrainOptions

    synthetic_rate = None
    variants = [(cache, "loader-fed") for cache in caches]
    if device.type == "cuda" if compare_worker_aug is None else compare_worker_aug:
        variants.insert(1, (caches[0], "cpu-aug"))
    if compare_cudnn:
        variants.insert(0, (caches[0], "cudnn-off"))  # first: no autotuned shapes of this model yet
    for cache, variant in variants:
        if time.perf_counter() > deadline:
            results.add("train", f"{label} {variant} --cache {cache}", "skipped", "", "time budget")
            continue
        options = TrainOptions(backbone=backbone, pretrained=False, heads="multi", age_weight=0.1,
                               img_size=img_size, batch_size=batch, aug="basic", epochs=2, cache=cache,
                               device=str(device), seed=0)
        run_dir = work / f"{label}-{cache}-{variant}"
        run_dir.mkdir()
        fresh_cache_folders(run_dir / "caches")  # each variant pays its own cache build
        config = build_config(options, manifest_path, str(manifest_path), manifest)
        start = time.perf_counter()
        with Timer(build_module, "build_cache_of_manifest") as cache_timer, \
                Timer(build_module, "build_model") as model_timer:
            trainer = Trainer(run_dir, manifest, options, config, show_progress=False)
        synchronize(device)
        setup = time.perf_counter() - start
        if variant == "cpu-aug":
            augment_on_workers(trainer, config)
        if variant == "cudnn-off":
            torch.backends.cudnn.benchmark = False
        first, first_wait, _ = run_epoch(trainer, 0, device)
        first_val = timed_validate(trainer, device)
        steady, steady_wait, seen = run_epoch(trainer, 1, device)
        steady_val = timed_validate(trainer, device)
        rate = seen / steady
        name = f"{label} {variant} --cache {cache}"
        if variant == "cudnn-off":
            torch.backends.cudnn.benchmark = True
            results.add("train", name, rate, "img/s",
                        f"no autotuning: warm-up (epoch 1 - epoch 2) {max(0.0, first - steady):.1f} s, "
                        f"first validation excess {max(0.0, first_val - steady_val):.1f} s")
            del trainer
            continue
        if synthetic_rate is None:
            synthetic_rate = synthetic(trainer, device, synthetic_steps)
            results.add("train", f"{label} synthetic (batch on the device)", synthetic_rate, "img/s")
        where = "GPU batch" if trainer.data.augment_on_device else "workers"
        note = f"{rate / synthetic_rate:.2f}x synthetic, data wait {steady_wait / steady:.1%}, augmentation on {where}"
        results.add("train", name, rate, "img/s", note)
        if variant == "loader-fed" and cache == caches[0]:
            first_epoch_parts(results, label, trainer, setup, cache_timer.seconds, model_timer.seconds,
                              first, steady, first_val, steady_val, rate)
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def fresh_cache_folders(folder: Path) -> None:
    """Point --cache disk and --cache ram (data/cache.py) at empty folders under `folder`."""
    os.environ["MASKKIT_CACHE_DIR"], os.environ["MASKKIT_RAM_CACHE_DIR"] = str(folder / "disk"), str(folder / "ram")


def synthetic(trainer, device: torch.device, steps: int) -> float:
    """img/s of the training step fed one real batch, already on the device, `steps` times."""
    images, targets, rows = next(iter(trainer.data.train_loader))
    images = images.to(device)
    targets = {k: v.to(device) for k, v in targets.items()}
    real_loader = trainer.data.train_loader
    trainer.data.train_loader = [(images, targets, rows)] * steps
    try:
        seconds, _, seen = run_epoch(trainer, 2, device)
    finally:
        trainer.data.train_loader = real_loader
    return seen / seconds


def augment_on_workers(trainer, config: dict) -> None:
    """Before the first epoch (workers not started): the basic recipe back on the loader's workers
    (uint8 out, normalised on the GPU), as train did before the batch augmentation."""
    import dataclasses

    from maskkit.data.presets import build_transform

    trainer.data.train_set.transform = build_transform("basic", tuple(config["img_size"]), config["mean"], config["std"],
                                                  tuple(config["crop"]), normalize=False)
    trainer.data.train_set.gather = False  # per-image transforms again
    trainer.data.train_on_device = dataclasses.replace(trainer.data.train_on_device, augment=None)
    trainer.data.augment_on_device = False


def first_epoch_parts(results: Results, label: str, trainer, setup: float, cache: float, model: float,
                      first: float, steady: float, first_val: float, steady_val: float, rate: float) -> None:
    images = len(trainer.data.train_set) + len(trainer.data.val_set)
    warmup, val_excess = max(0.0, first - steady), max(0.0, first_val - steady_val)
    results.add("first epoch", f"{label} cache build ({images} images)", cache, "s")
    results.add("first epoch", f"{label} model build", model, "s")
    results.add("first epoch", f"{label} rest of set-up (loaders, optimiser)", max(0.0, setup - cache - model), "s")
    results.add("first epoch", f"{label} warm-up (epoch 1 - epoch 2)", warmup, "s",
                f"epoch 1 {first:.1f} s, epoch 2 {steady:.1f} s: worker start + cudnn autotune")
    results.add("first epoch", f"{label} first validation excess", val_excess, "s",
                f"{first_val:.1f} s vs {steady_val:.1f} s (validation at the training batch size, last batch padded)")
    real_epoch = REAL_TRAIN_IMAGES / rate
    overhead = cache / max(images, 1) * REAL_ALL_IMAGES + model + max(0.0, setup - cache - model) + warmup + val_excess
    results.add("first epoch", f"{label} projected overhead, real-size set", overhead / real_epoch * 100, "%",
                f"{overhead:.1f} s over one {REAL_TRAIN_IMAGES}-image epoch of {real_epoch:.0f} s (goal <= 10 %)")


# --- predict ------------------------------------------------------------------------------------

def predict_rate(results: Results, paths: list[str], device: torch.device, quick: bool) -> None:
    from maskkit.data.loader import ImageDataset, make_loader
    from maskkit.data.presets import eval_transform
    from maskkit.engine.devices import autocast_dtype, default_workers
    from maskkit.engine.loop import OnDevice, predict_probs
    from maskkit.engine.models import build_model, model_defaults, to_channels_last

    img_size, backbone = ((128, 96), "lite0") if quick else ((512, 384), "effb2")
    model = build_model(backbone, heads="multi", age_head="mse", pretrained=False, img_size=img_size).to(device).eval()
    defaults = model_defaults(backbone)
    mean, std = tuple(defaults["mean"]), tuple(defaults["std"])
    if device.type == "cuda":
        to_channels_last(model)
    on_device = device.type == "cuda"
    dataset = ImageDataset(paths, None, img_size, eval_transform(img_size, mean, std, normalize=not on_device),
                           on_error="raise")
    loader = make_loader(dataset, 64, shuffle=False, workers=default_workers(device), device=device)
    moving = OnDevice(device, autocast_dtype(device), (mean, std) if on_device else None)
    predict_probs(model, [next(iter(loader))], 64, moving, "none", show_progress=False)  # warm-up: workers, cudnn
    synchronize(device)
    start = time.perf_counter()
    predict_probs(model, loader, len(paths), moving, "none", show_progress=False)
    synchronize(device)
    results.add("predict", f"{backbone} {img_size[0]}x{img_size[1]} batch 64, cold decode", len(paths) / (time.perf_counter() - start),
                "img/s", f"{len(paths)} images, {default_workers(device)} workers")


# --- segment ------------------------------------------------------------------------------------

def segment_rates(results: Results, work: Path, src: Path, device: torch.device, quick: bool) -> None:
    import cv2

    model, size, batch = ("mobilenet", 128, 4) if quick else ("resnet50", 520, 32)
    builder, _ = deeplab.deeplab_builder(model)
    torch.manual_seed(0)
    net = builder(weights=None, weights_backbone=None, num_classes=deeplab.NUM_CLASSES, aux_loss=False)
    with torch.no_grad():
        net.classifier[4].bias[deeplab.PERSON] = 20.0  # "person" everywhere: every image is composited
    weights = work / "deeplab.pt"
    torch.save(net.state_dict(), weights)
    net = deeplab.prepare(deeplab.load_deeplab(model, weights), device)
    paths = [src / rel for rel in segment.scan(src).images]
    works = [torch.from_numpy(to_working(cv2.imread(str(p)), size)) for p in paths]
    batches = [torch.stack(works[i:i + batch]) for i in range(0, len(works), batch)]
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
    for b in batches[:2]:
        deeplab.person_scores(net, b, device)  # warm-up (cudnn, allocator)
    synchronize(device)
    start = time.perf_counter()
    for b in batches:
        deeplab.person_scores(net, b, device)
    forward = len(paths) / (time.perf_counter() - start)
    label = f"DeepLabV3-{model} (random weights) @{size}, batch {batch}, {len(paths)} images"
    results.add("segment", "forward pass only (pre-resized batches, no I/O)", forward, "img/s", label)
    variants = [("device pipeline (resize, composite on the device)", dict(on_device=True, jpeg_on_device=False))]
    if device.type == "cuda":
        variants.append(("device pipeline + nvjpeg encode", dict(on_device=True, jpeg_on_device=True)))
    variants.append(("host pipeline (OpenCV resize/composite)", dict(on_device=False)))
    if device.type != "cuda":
        variants.reverse()  # the CPU default first
    for name, extra in variants:
        out = work / "seg_out"
        best = 0.0
        for _ in range(1 if not quick else 1):
            summary = segment.run(src, out, model=model, weights=weights, batch_size=batch, device=str(device),
                                  short_side=size, overwrite=True, show_progress=False, **extra)
            best = max(best, summary.done / summary.seconds)
        results.add("segment", name, best, "img/s", f"{best / forward:.2f}x forward (goal >= 0.9x)")
        shutil.rmtree(out, ignore_errors=True)


# --- ddp ----------------------------------------------------------------------------------------

def ddp_rates(results: Results, work: Path, manifest_path: Path, device: torch.device, quick: bool,
              timeout: float) -> None:
    import pandas as pd

    size, batch, epochs = ("64x64", 8, 2) if quick else ("128x128", 64, 3)
    common = ["train", str(manifest_path), "--backbone", "lite0", "--no-pretrained", "--input-size", size,
              "--batch-size", str(batch), "--epochs", str(epochs), "--device", str(device), "--seed", "0",
              "--runs-dir", str(work / "ddp_runs")]
    if quick:
        common += ["--threads", "1", "--workers", "0"]
    backend = "nccl" if device.type == "cuda" else "gloo"
    commands = {
        "plain": [sys.executable, "-m", "maskkit", *common, "--name", "plain"],
        f"torchrun world size 1 ({backend})": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                               "--nproc_per_node", "1", "-m", "maskkit", *common, "--name", "ddp1"],
    }
    rates, losses = {}, {}
    for name, command in commands.items():
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(30.0, timeout / 2),
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                 filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        run = work / "ddp_runs" / ("plain" if name == "plain" else "ddp1")
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        metrics = pd.read_csv(run / "metrics.csv") if (run / "metrics.csv").is_file() else None
        if metrics is None or len(metrics) < epochs:  # a failure after the epochs (e.g. the plots) still times them
            results.add("ddp", name, "failed", "", f"exit {done.returncode}: {tail[:160]}")
            continue
        config = json.loads((run / "config.json").read_text())
        seen = config["train_images"] // batch * batch  # full batches only
        rates[name] = seen / float(metrics["seconds"].iloc[-1])
        losses[name] = metrics["train_loss"].to_numpy()
        status = "" if done.returncode == 0 else f"; exit {done.returncode} after the epochs: {tail[:100]}"
        results.add("ddp", f"{name}, epoch {epochs}", rates[name], "img/s",
                    f"whole command {time.perf_counter() - start:.0f} s, val F1 {metrics['val_f1'].iloc[-1]:.3f}, "
                    f"train loss {' '.join(f'{v:.4f}' for v in losses[name])}{status}")
    if len(rates) == 2:
        plain, ddp = (np.asarray(losses[k]) for k in commands)
        rate_plain, rate_ddp = (rates[k] for k in commands)
        results.add("ddp", "world size 1 / plain", rate_ddp / rate_plain, "x")
        worst = float(np.max(np.abs(ddp - plain) / np.maximum(np.abs(plain), 1e-12)))
        results.add("ddp", "train loss, largest relative difference per epoch", worst * 100, "%",
                    "same seed and order: within noise (cudnn/AMP nondeterminism) is a few %, 0 on the CPU")


# --- balanced -----------------------------------------------------------------------------------

def balanced_duplicates(results: Results, manifest, device: torch.device, quick: bool) -> None:
    """Duplicate draws of one epoch of `--balanced` sampling and whether their GPU augmentations differ."""
    from maskkit.data.gpu_augment import BatchAugment, augment_batch, image_seeds
    from maskkit.data.loader import ImageDataset, make_loader, set_epoch
    from maskkit.data.presets import build_transform
    from maskkit.data.sampling import ResumableSampler, balanced_weights, targets_of
    from maskkit.engine.devices import default_workers

    size, batch = ((64, 48), 8) if quick else ((256, 192), 64)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    targets = targets_of(manifest, 60)
    dataset = ImageDataset(manifest["path"], targets, size, build_transform("none", size, mean, std, normalize=False))
    sampler = ResumableSampler(len(dataset), seed=0, weights=balanced_weights(targets["label"]))
    loader = make_loader(dataset, batch, shuffle=True, workers=0 if quick else default_workers(device),
                         device=device, sampler=sampler)
    set_epoch(loader, 0)
    aug = BatchAugment(mean, std)
    outputs = {"per draw (now)": {}, "per image (before)": {}}  # row -> [(seed, hash of the augmented image)]
    for images, batch_targets, rows in loader:
        images = images.to(device)
        for name, keys in (("per draw (now)", batch_targets["draw"]), ("per image (before)", rows)):
            seeds = image_seeds(0, 0, keys)
            for row, seed, image in zip(rows.tolist(), seeds, augment_batch(images, seeds, aug)):
                outputs[name].setdefault(row, []).append((seed, hash(image.cpu().numpy().tobytes())))
    drawn = outputs["per draw (now)"]
    results.add("balanced", "duplicate draws of an image in one epoch", sum(len(v) - 1 for v in drawn.values()), "",
                f"{len(dataset)} draws of {len(drawn)} distinct images")
    for name, seen in outputs.items():
        shared_seed = sum(len(v) - len({seed for seed, _ in v}) for v in seen.values())
        same = sum(len(v) - len({h for _, h in v}) for v in seen.values())
        results.add("balanced", f"duplicates sharing another draw's seed, {name}", shared_seed, "",
                    f"{same} with the same augmented pixels" + (
                        " (by chance: both unflipped and untouched, p ~ 0.2 each)" if name.startswith("per draw") else ""))


# --- cache (CPU) --------------------------------------------------------------------------------

def cache_rows(results: Results, work: Path, quick: bool) -> None:
    """benchmarks/cache.py's scenarios: private caches vs the shared --cache disk file, two processes."""
    spec = importlib.util.spec_from_file_location("cache_benchmark", ROOT / "benchmarks" / "cache.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = work / "cache_bench"
    folder.mkdir()
    size = "64x64" if quick else "128x128"
    manifest = bench.draw(folder, 12 if quick else 60)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MASKKIT_CACHE_DIR": str(folder / "disk")}
    scenarios = ["torchrun"] if quick else ["torchrun", "two folds"]
    for scenario in scenarios:
        for mode in ("private", "disk"):
            lines = bench.launch(scenario, mode, manifest, size, env, folder)
            kind = bench.KIND[mode]
            pss = sum(line["pss_after"].get(kind, 0) - line["pss_before"].get(kind, 0) for line in lines) / 2**20
            results.add("cache (CPU)", f"{scenario}, {'private (before)' if mode == 'private' else 'shared --cache disk'}",
                        pss, "MiB", f"cache {lines[0]['bytes'] / 2**20:.1f} MiB; build {max(x['seconds'] for x in lines):.2f} s "
                        f"wall, decode CPU {sum(x['cpu'] for x in lines):.2f} s in both processes ({kind})")
        shutil.rmtree(folder / "disk", ignore_errors=True)


# --- main ---------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results JSON (a .md table is written beside it)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run on the CPU")
    parser.add_argument("--persons", type=int, default=None, help="drawn persons, 7 images each (default 120; quick 6)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (quick: 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    parser.add_argument("--budget", type=float, default=220.0,
                        help="seconds after which no new section starts (default 220: the whole run stays under 5 minutes)")
    args = parser.parse_args()
    from maskkit.engine.devices import resolve_device

    device = resolve_device(args.device)
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    persons = args.persons or (6 if args.quick else 120)
    results = Results()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"no GPU: CPU only ({platform.processor() or platform.machine()})"
    results.meta = {
        "card": card, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "device": str(device), "quick": args.quick, "persons": persons, "torch threads": torch.get_num_threads(),
    }
    print("\n".join(f"{k}: {v}" for k, v in results.meta.items()), flush=True)
    if device.type != "cuda":
        print("no CUDA device: running the CPU parts only (GPU goals need a GPU)", flush=True)
    started = time.perf_counter()

    def within_budget(name: str) -> bool:
        spent = time.perf_counter() - started
        if spent <= args.budget:
            return True
        results.add(name, "skipped", "time budget", "", f"{spent:.0f} s spent of --budget {args.budget:.0f} s")
        return False

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synth.run(work / "data", persons=persons, eval_persons=0, size=Size(width=384, height=512), seed=0, show_progress=False)
        src = work / "data" / "train"
        try:
            manifest = make_manifest(load_train(src, report=False), 4, 42)
        except MaskkitError:  # too few persons per stratum (--quick): persons dealt round-robin
            images = load_train(src, report=False)
            persons = sorted(images["person"].unique())
            fold_of = {person: i % 4 for i, person in enumerate(persons)}
            manifest = images.assign(fold=images["person"].map(fold_of))[list(MANIFEST_COLUMNS)].reset_index(drop=True)
        manifest_path = work / "folds.csv"
        write_csv(manifest, manifest_path)
        paths = manifest["path"].tolist()
        print(f"drew {len(paths)} images 384x512 in {time.perf_counter() - started:.0f} s", flush=True)

        if args.quick:
            configs = [("effb2 128x96 b8", "effb2", (128, 96), 8), ("lite0 64x64 b8", "lite0", (64, 64), 8)]
        else:
            configs = [("effb2 512x384 b64", "effb2", (512, 384), 64), ("lite0 128x128 b64", "lite0", (128, 128), 64)]

        def train_section(label: str, backbone: str, img_size: tuple[int, int], batch: int) -> None:
            if "train" in args.skip or not within_budget(f"train {label}"):
                return
            with section(results, f"train {label}"):
                caches = ["disk"] if args.quick else ["disk", "none"]
                train_config(results, label.replace(" ", "_"), work, manifest, manifest_path, backbone,
                             img_size, batch, device, caches, synthetic_steps=4 if args.quick else 20,
                             deadline=started + args.budget, compare_cudnn=backbone == "effb2" and device.type == "cuda")

        # Issue 20's rows first (loader-fed effb2, DDP, balanced, lite0's first epoch, the cache),
        # then what earlier runs measured.
        train_section(*configs[0])
        if "ddp" not in args.skip and within_budget("ddp"):
            with section(results, "ddp"):
                ddp_rates(results, work, manifest_path, device, args.quick,
                          timeout=max(60.0, args.budget + 60 - (time.perf_counter() - started)))
        if "balanced" not in args.skip and within_budget("balanced"):
            with section(results, "balanced"):
                balanced_duplicates(results, manifest, device, args.quick)
        train_section(*configs[1])
        if "cache" not in args.skip and within_budget("cache (CPU)"):
            with section(results, "cache (CPU)"):
                cache_rows(results, work, args.quick)
        if "segment" not in args.skip and within_budget("segment"):
            with section(results, "segment"):
                segment_rates(results, work, src, device, args.quick)
        if "predict" not in args.skip and within_budget("predict"):
            with section(results, "predict"):
                predict_rate(results, paths, device, args.quick)
    results.meta["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": results.meta, "rows": results.rows}, indent=1))
    args.out.with_suffix(".md").write_text(results.markdown())
    print(f"done in {results.meta['seconds']:.0f} s: {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
