"""Image recipes (albumentations), in the manner of torchvision's references/classification/presets.py.

Every recipe is `geometry` (bring any image to the model's input size: resize to the working size,
then a deterministic centre crop) + augmentation (training only: a preset, torchvision's policies
wrapped by `TorchvisionPolicy`, or the user's own albumentations pipeline from `load_pipeline`, then
`--erasing`) + `finish` (Normalize and ToTensorV2, or ToTensorV2 alone when the device normalises:
see `normalize_batch`). Readers that
need the pixels at the model's geometry before normalisation (cam's overlays) call `geometry` and
`finish` themselves instead of cutting a recipe apart.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from maskkit.contract.errors import MaskkitError
from maskkit.options import AUG_NAMES, DEFAULT_CROP, FULL_CROP, POLICIES, is_aug_file, parse_crop

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
                    crop: Sequence[float] = DEFAULT_CROP, normalize: bool = True, erasing: float = 0.0) -> A.Compose:
    """Training transform. none: as eval; basic: centre crop, RandomBrightnessContrast, GaussNoise,
    HorizontalFlip (that team's recipe); strong: adds Affine (shift, scale, rotate: it uses the
    pixels around the crop), HueSaturationValue or ColorJitter, and CoarseDropout; randaugment,
    trivialaugment, augmix: HorizontalFlip + torchvision's policy (`policy_steps`); FILE.yaml: the
    user's albumentations pipeline (`load_pipeline`) between geometry and finish. `erasing` > 0
    adds RandomErasing (A.Erasing, noise-filled) with that probability after the augmentation.
    Seed it per item with `set_random_state` (ImageDataset does) for reproducible augmentation.
    normalize=False leaves out Normalize (uint8 tensors; see `normalize_batch`).
    """
    steps = training_steps(aug, img_size, crop)
    if erasing > 0:
        steps.append(A.Erasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), fill="random", p=float(erasing)))
    return A.Compose([*steps, *finish_steps(mean, std, normalize)])


def training_steps(aug: str, img_size: Sequence[int], crop: Sequence[float] = DEFAULT_CROP) -> list:
    """The geometry and the random part of a training recipe, before `finish` (strong puts its
    Affine between the resize and the crop, so that a shift shows the pixels around the crop)."""
    if aug not in AUG_NAMES and not is_aug_file(aug):
        raise MaskkitError(f"unknown augmentation {aug!r}: use none, basic or strong, {', '.join(POLICIES)}, or an "
                           "albumentations FILE.yaml")
    geometry = geometry_steps(img_size, crop)
    if is_aug_file(aug):
        return [*geometry, load_pipeline(aug, img_size)]
    if aug == "none":
        return geometry
    if aug in POLICIES:
        return [*geometry, *policy_steps(aug)]
    work = work_size(img_size, crop)
    photometric = [
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
        A.HorizontalFlip(p=0.5),
    ]
    if aug == "basic":
        return [*geometry, *photometric]
    return [
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


# --- torchvision's policies and the user's own pipeline -------------------------------------------

class TorchvisionPolicy(A.ImageOnlyTransform):
    """A torchvision.transforms.v2 policy (RandAugment, TrivialAugmentWide, AugMix) on the HWC uint8
    image. v2 draws from torch's global generator, so each call runs in a forked generator seeded
    from this transform's own (which ImageDataset seeds per item): the image's augmentation depends
    on its item seed alone, as albumentations' do."""

    def __init__(self, policy: torch.nn.Module, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.policy = policy

    def get_params(self) -> dict:
        return {"torch_seed": int(self.random_generator.integers(0, 2**63 - 1))}

    def apply(self, img: np.ndarray, torch_seed: int = 0, **params) -> np.ndarray:
        chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            out = self.policy(chw)
        return out.permute(1, 2, 0).contiguous().numpy()

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("policy",)


def policy_steps(name: str) -> list:
    """HorizontalFlip + torchvision's policy `name` at its defaults (RandAugment: 2 ops at magnitude 9)."""
    from torchvision.transforms import v2  # only for these recipes

    policy = {"randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide, "augmix": v2.AugMix}[name]()
    return [A.HorizontalFlip(p=0.5), TorchvisionPolicy(policy)]


def load_pipeline(path: str | Path, img_size: Sequence[int] = (64, 48)) -> A.BaseCompose | A.BasicTransform:
    """The user's albumentations pipeline at `path` (`A.save(pipeline, path, data_format="yaml")`),
    tried once on a random image of `img_size` (H, W): it must give back an RGB uint8 image of that
    size (maskkit's geometry sizes it and its finish normalises). A missing, unreadable or invalid
    file is one MaskkitError naming it."""
    path = Path(path)
    fix = f"write it with A.save(pipeline, {str(path)!r}, data_format='yaml'), or use --aug {'/'.join(AUG_NAMES)}"
    if not path.is_file():
        raise MaskkitError(f"--aug {path}: file not found; {fix}")
    height, width = int(img_size[0]), int(img_size[1])
    try:
        with warnings.catch_warnings():  # albumentations warns about the file's gaps: the error says it all
            warnings.simplefilter("ignore")
            pipeline = A.load(str(path), data_format="yaml")
            if not isinstance(pipeline, (A.BaseCompose, A.BasicTransform)):
                raise TypeError(f"holds a {type(pipeline).__name__}, not a transform")
            probe = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
            out = A.Compose([pipeline])(image=probe)["image"]
    except Exception as exc:  # noqa: BLE001 - yaml, albumentations and the transforms raise many types
        lines = str(exc).strip().splitlines()
        reason = (lines[0] if lines else type(exc).__name__)[:200]
        if isinstance(exc, KeyError):  # albumentations' registry or a missing key of the file
            reason = f"unknown transform or missing key {reason}"
        raise MaskkitError(f"--aug {path}: not a readable albumentations pipeline ({reason}); {fix}") from None
    if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (height, width, 3)):
        got = f"{type(out).__name__} {getattr(out, 'dtype', '')} {tuple(getattr(out, 'shape', ()))}".strip()
        raise MaskkitError(f"--aug {path}: the pipeline must keep the image RGB uint8 at its size ({height}x{width}x3), "
                           f"but gives {got}: leave resizing, Normalize and ToTensorV2 out (maskkit adds them)")
    return pipeline
