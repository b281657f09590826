"""Batch augmentation and JPEG decoding on the training device (a GPU server's answer to data wait).

The loader then ships uint8 crops (`build_transform("none", ..., normalize=False)`), and the
per-image float work of the `basic` recipe (RandomBrightnessContrast, GaussNoise, HorizontalFlip,
Normalize: most of a cached epoch's CPU time) runs here on the whole batch:

    images, targets, rows = batch                                   # uint8 (B, 3, H, W)
    images = images.to(device, non_blocking=True)
    x = augment_batch(images, image_seeds(seed, epoch, targets["draw"]), BatchAugment(mean, std))

Per-draw seeds: every random choice of an image comes from its seed (drawn from the run's seed,
the epoch and the draw's own seed from the sampler, so `--balanced` duplicates of one image
differ), so an image's augmentation does not depend on the batch it lands in, on the workers or
on the device's kernels, and a fixed seed gives identical tensors on the CPU.

Why plain tensor ops and not torchvision.transforms.v2 objects: a v2 transform called on a batch
draws ONE set of parameters for the whole batch (every image flipped or none), and seeding it per
image would mean one call per image. Here the parameters are drawn per image on the host (a few
numbers each) and applied to the batch at once by broadcasting; normalisation is the loader's
`normalize_batch`. Noise is drawn per image from a generator on the device seeded by the image.

`decode_batch` is the cold-epoch path: file bytes -> `torchvision.io.decode_jpeg(device="cuda")`
(nvjpeg, batched) -> resize and centre crop on the device; on the CPU, for PNGs, or when nvjpeg
refuses a file, it decodes on the host instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from maskkit.data.loader import UnreadableImage
from maskkit.data.presets import DEFAULT_CROP, normalize_batch, work_size


@dataclass(frozen=True)
class BatchAugment:
    """The `basic` recipe's parameters (albumentations' defaults as `build_transform` sets them)."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    brightness: float = 0.2  # beta in [-b, b] of the maximum value (albumentations brightness_by_max)
    contrast: float = 0.2  # alpha in [1-c, 1+c]
    p_color: float = 0.5
    noise_std: tuple[float, float] = (0.02, 0.08)  # of the maximum value, per image
    p_noise: float = 0.3
    p_flip: float = 0.5

    @classmethod
    def off(cls, mean: Sequence[float], std: Sequence[float]) -> BatchAugment:
        """Normalisation only (validation, --aug none)."""
        return cls(tuple(mean), tuple(std), p_color=0.0, p_noise=0.0, p_flip=0.0)


def image_seeds(seed: int, epoch: int, rows: Sequence[int] | torch.Tensor) -> list[int]:
    """One seed per image from (run seed, epoch, `rows`): pass the draws' seeds (the loader's
    targets["draw"]) so two draws of one image (`--balanced`) get two augmentations; dataset rows
    give every draw of a row the same one."""
    rows = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
    return [int(np.random.SeedSequence([int(seed), int(epoch), int(row)]).generate_state(1, np.uint64)[0] >> 1)
            for row in rows]


def draw_params(seeds: Sequence[int], aug: BatchAugment) -> dict[str, np.ndarray]:
    """Each image's choices from its own seed: flip, alpha, beta, noise std (0 = none), noise seed."""
    params = {name: np.empty(len(seeds)) for name in ("flip", "alpha", "beta", "noise")}
    params["noise_seed"] = np.empty(len(seeds), dtype=np.int64)
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        u = rng.random(6)  # always six draws: each choice is the same whatever the others decide
        colour = u[0] < aug.p_color
        params["alpha"][i] = 1 + (2 * u[1] - 1) * aug.contrast if colour else 1.0
        params["beta"][i] = (2 * u[2] - 1) * aug.brightness if colour else 0.0
        low, high = aug.noise_std
        params["noise"][i] = low + (high - low) * u[4] if u[3] < aug.p_noise else 0.0
        params["flip"][i] = u[5] < aug.p_flip
        params["noise_seed"][i] = int(rng.integers(0, 2**62))
    return params


def augment_batch(images: torch.Tensor, seeds: Sequence[int], aug: BatchAugment) -> torch.Tensor:
    """uint8 (B, 3, H, W) on any device -> float32 normalised, augmented per image from `seeds`.

    Order as in the `basic` recipe: brightness/contrast, Gaussian noise, horizontal flip, normalise.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected a uint8 batch (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if len(seeds) != len(images):
        raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
    device = images.device
    params = draw_params(seeds, aug)

    def column(name: str) -> torch.Tensor:
        return torch.as_tensor(params[name], dtype=torch.float32).view(-1, 1, 1, 1).to(device, non_blocking=True)

    x = images.float()
    if (params["alpha"] != 1).any() or params["beta"].any():
        x = (x * column("alpha") + column("beta") * 255).clamp_(0, 255)
    for i in np.flatnonzero(params["noise"]):
        generator = torch.Generator(device=device)
        generator.manual_seed(int(params["noise_seed"][i]))
        noise = torch.randn(x.shape[1:], generator=generator, device=device)
        x[i] = (x[i] + noise * float(params["noise"][i] * 255)).clamp_(0, 255)
    if params["flip"].any():
        x = torch.where(column("flip").bool(), x.flip(-1), x)
    return normalize_batch(x, aug.mean, aug.std)  # the loader's own normalisation, in place on x


# --- cold epochs: decoding on the device -------------------------------------------------------

def _decode_on_host(data: torch.Tensor, path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        raise UnreadableImage(f"{path}: cannot decode image (corrupt or truncated); remove or replace the file") from None


def decode_files(paths: Sequence[str | Path], device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """RGB uint8 (3, H, W) tensors on `device`: JPEGs with nvjpeg in one batch on CUDA, the rest on the host."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    device = torch.device(device)
    datas = []
    for path in paths:
        try:
            datas.append(read_file(str(path)))
        except (RuntimeError, OSError):
            raise UnreadableImage(f"{path}: cannot read image; remove or replace the file") from None
    is_jpeg = [len(d) > 2 and int(d[0]) == 0xFF and int(d[1]) == 0xD8 for d in datas]
    images: list[torch.Tensor | None] = [None] * len(datas)
    if device.type == "cuda" and any(is_jpeg):
        jpegs = [i for i, ok in enumerate(is_jpeg) if ok]
        try:
            for i, image in zip(jpegs, decode_jpeg([datas[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)):
                images[i] = image
        except RuntimeError:  # one bad file fails the whole batch: decode them one by one on the host
            pass
    for i, image in enumerate(images):
        if image is None:
            images[i] = _decode_on_host(datas[i], str(paths[i])).to(device, non_blocking=True)
    return images


def decode_batch(paths: Sequence[str | Path], img_size: Sequence[int], device: torch.device | str = "cpu",
                 crop: Sequence[float] = DEFAULT_CROP) -> torch.Tensor:
    """uint8 (B, 3, H, W) at `img_size` on `device`: decode (`decode_files`), resize to the working
    size (antialiased bilinear) and take the centre crop, as the loader's `eval_transform` frames it."""
    work = work_size(img_size, crop)
    height, width = int(img_size[0]), int(img_size[1])
    top, left = (work[0] - height) // 2, (work[1] - width) // 2
    out = []
    for image in decode_files(paths, device):
        x = F.interpolate(image[None].float(), size=work, mode="bilinear", antialias=True, align_corners=False)
        out.append(x[0, :, top:top + height, left:left + width].round_().clamp_(0, 255).to(torch.uint8))
    return torch.stack(out)


__all__ = ["BatchAugment", "image_seeds", "draw_params", "augment_batch", "decode_files", "decode_batch"]
