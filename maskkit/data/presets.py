"""Image recipes (albumentations), in the manner of torchvision's references/classification/presets.py.

Every recipe is `geometry` (bring any image to the model's input size: resize to the working size,
then a deterministic centre crop) + augmentation (training only) + `finish` (Normalize and
ToTensorV2, or ToTensorV2 alone when the device normalises: see `normalize_batch`). Readers that
need the pixels at the model's geometry before normalisation (cam's overlays) call `geometry` and
`finish` themselves instead of cutting a recipe apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import torch
from albumentations.pytorch import ToTensorV2

from maskkit.contract.errors import MaskkitError
from maskkit.options import AUGMENTATIONS, DEFAULT_CROP, FULL_CROP, parse_crop

SQUARE_RATIO = (0.9, 1.1)  # width / height counted as square by `--crop auto`


def resolve_crop(text: str, image_wh: Sequence[int]) -> tuple[float, float]:
    """The centre crop a run uses: `--crop auto` keeps the whole frame of square images (face crops)
    and the competition's crop of anything else (its 3:4 portraits); other values as `parse_crop`."""
    crop = parse_crop(text)
    if crop is not None:
        return crop
    ratio = image_wh[0] / max(image_wh[1], 1)
    return FULL_CROP if SQUARE_RATIO[0] <= ratio <= SQUARE_RATIO[1] else DEFAULT_CROP


def work_size(img_size: Sequence[int], crop: Sequence[float] = DEFAULT_CROP) -> tuple[int, int]:
    """(H, W) to decode and cache at, so that the centre crop `crop` of it is `img_size`."""
    return (int(round(img_size[0] / crop[0])), int(round(img_size[1] / crop[1])))


def geometry_steps(img_size: Sequence[int], crop: Sequence[float] = DEFAULT_CROP) -> list:
    """Resize to the working size (INTER_AREA), then cut the deterministic centre crop `img_size` (H, W)."""
    work = work_size(img_size, crop)
    return [A.Resize(*work, interpolation=cv2.INTER_AREA), A.CenterCrop(int(img_size[0]), int(img_size[1]))]


def geometry(img_size: Sequence[int], crop: Sequence[float] = DEFAULT_CROP) -> A.Compose:
    """The eval geometry alone (applies to an image and its mask together, masks by nearest)."""
    return A.Compose(geometry_steps(img_size, crop))


def finish_steps(mean: Sequence[float], std: Sequence[float], normalize: bool = True) -> list:
    if not normalize:
        return [ToTensorV2()]
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]


def finish(mean: Sequence[float], std: Sequence[float], normalize: bool = True) -> A.Compose:
    """HWC uint8 -> CHW tensor, normalised with (mean, std) unless `normalize` is False (uint8)."""
    return A.Compose(finish_steps(mean, std, normalize))


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) uint8 batch -> float32 normalised like A.Normalize; run it on the GPU.

    Pair with `normalize=False` transforms: workers then ship uint8 (4x fewer bytes) and skip
    the per-image float maths, which is most of a cached epoch's CPU time.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255
    return images.float().sub_(mean_t).div_(std_t)


def eval_transform(img_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                   crop: Sequence[float] = DEFAULT_CROP, normalize: bool = True) -> A.Compose:
    """Deterministic: `geometry` then `finish` (normalize=False: uint8 tensors; see `normalize_batch`)."""
    return A.Compose([*geometry_steps(img_size, crop), *finish_steps(mean, std, normalize)])


def build_transform(aug: str, img_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                    crop: Sequence[float] = DEFAULT_CROP, normalize: bool = True) -> A.Compose:
    """Training transform. none: as eval; basic: centre crop, RandomBrightnessContrast, GaussNoise,
    HorizontalFlip (that team's recipe); strong: adds Affine (shift, scale, rotate: it uses the
    pixels around the crop), HueSaturationValue or ColorJitter, and CoarseDropout.
    Seed it per item with `set_random_state` (ImageDataset does) for reproducible augmentation.
    normalize=False leaves out Normalize (uint8 tensors; see `normalize_batch`).
    """
    if aug not in AUGMENTATIONS:
        raise MaskkitError(f"unknown augmentation {aug!r}: use none, basic or strong")
    if aug == "none":
        return eval_transform(img_size, mean, std, crop, normalize)
    work = work_size(img_size, crop)
    photometric = [
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
        A.HorizontalFlip(p=0.5),
    ]
    if aug == "basic":
        return A.Compose([*geometry_steps(img_size, crop), *photometric, *finish_steps(mean, std, normalize)])
    strong = [
        A.Resize(*work, interpolation=cv2.INTER_AREA),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-12, 12),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.CenterCrop(int(img_size[0]), int(img_size[1])),
        *photometric,
        A.OneOf([
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=15),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
        ], p=0.5),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.08, 0.2), hole_width_range=(0.08, 0.2), p=0.3),
    ]
    return A.Compose([*strong, *finish_steps(mean, std, normalize)])
