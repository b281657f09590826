"""Person masks and compositing for segment (pure functions): OpenCV on one image, torch on a batch.

The host pipeline uses the OpenCV functions; the device pipeline their batch twins
(`composite_batch`, ...), which give the same pixels up to rounding at the edges. A mask folder
mirrors the image tree with the suffix `.png` (docs/formats.md, "Mask folders"): `mask_path`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

FLAT_FILLS = {"black": 0, "white": 255, "gray": 128}  # the other fills: "mean" and "blur"


def mask_path(masks: Path, rel: Path) -> Path:
    """Where an image's mask goes: IN's relative path with the suffix `.png`."""
    return masks / rel.with_suffix(".png")


def working_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side `size`, keeping the aspect ratio (like the weights' transforms)."""
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_working(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 copy of a BGR image with its shorter side resized to `size`."""
    height, width = working_size(*image.shape[:2], size)
    method = cv2.INTER_AREA if height < image.shape[0] else cv2.INTER_LINEAR
    return cv2.cvtColor(cv2.resize(image, (width, height), interpolation=method), cv2.COLOR_BGR2RGB)


# --- one image (OpenCV) ------------------------------------------------------------------------

def person_mask(prob: np.ndarray, threshold: float = 0.5, keep: float = 0.2, min_area: float = 0.005) -> np.ndarray:
    """Binary person mask (uint8, 255 = person) from a probability (or margin) map: no specks, no holes.

    Keeps the connected components of `prob >= threshold` at least `keep` times the largest one,
    then fills the holes; all zeros when the largest is under `min_area` of the image.
    """
    binary = (prob >= threshold).view(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return np.zeros_like(binary)
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = int(areas.max())
    if largest < min_area * binary.size:
        return np.zeros_like(binary)
    kept = areas >= keep * largest
    if kept.all():
        mask = binary * np.uint8(255)
    else:
        lut = np.zeros(count, np.uint8)
        lut[1:][kept] = 255
        mask = lut[labels]
    return fill_holes(mask)


def mask_with_area(prob: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, float]:
    """(`person_mask`, the fraction of the image it covers)."""
    mask = person_mask(prob, threshold)
    return mask, float(np.count_nonzero(mask)) / mask.size


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background regions that do not touch the image border become person."""
    outside = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(outside, None, (0, 0), 255)  # paints the background reachable from the border
    return cv2.bitwise_or(mask, cv2.bitwise_not(outside[1:-1, 1:-1]))


def soften(mask: np.ndarray, radius: int) -> np.ndarray:
    """Feathered alpha (float32 0..1): the mask grown by `radius` pixels, then blurred over as much."""
    if radius <= 0:
        return mask.astype(np.float32) / 255
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = cv2.dilate(mask, kernel)
    return cv2.GaussianBlur(grown.astype(np.float32) / 255, (0, 0), radius / 2)


def background(image: np.ndarray, fill: str) -> np.ndarray:
    """The fill image (options.FILLS): a flat colour, the image's mean colour, or a heavily blurred copy."""
    if fill == "blur":
        height, width = image.shape[:2]
        small = cv2.resize(image, (max(1, width // 16), max(1, height // 16)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), 2)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if fill == "mean":
        colour = np.round(image.reshape(-1, image.shape[2]).mean(axis=0))
    else:
        colour = FLAT_FILLS[fill]
    filled = np.empty_like(image)
    filled[:] = colour
    return filled


def composite(image: np.ndarray, mask: np.ndarray, fill: str = "black") -> np.ndarray:
    """`image` (H, W, 3 uint8) kept where `mask` is person, the fill elsewhere.

    `mask` is uint8 (255 = person) or a float alpha in 0..1 (a feathered edge blends the two).
    """
    alpha = mask.astype(np.float32) / 255 if mask.dtype == np.uint8 else mask.astype(np.float32)
    fill_image = background(image, fill)
    return cv2.blendLinear(image, fill_image, alpha, 1 - alpha)


# --- a batch (torch, any device) ---------------------------------------------------------------

def _blur(x: torch.Tensor, sigma: float, ksize: int) -> torch.Tensor:
    """Gaussian blur (reflected border, as OpenCV's default) with the kernel clipped to the image."""
    limit = 2 * min(x.shape[-2:]) - 1  # reflect padding needs pad < side
    ksize = max(1, min(ksize, limit if limit % 2 else limit - 1))
    return TF.gaussian_blur(x, [ksize, ksize], [sigma, sigma])


def soften_batch(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """`soften` for a batch: (B, H, W) uint8 masks (255 = person) -> (B, 1, H, W) float alpha 0..1."""
    alpha = masks[:, None].float() / 255
    if radius <= 0:
        return alpha
    ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    kernel = torch.from_numpy(ellipse).to(alpha)[None, None]
    grown = (F.conv2d(alpha, kernel, padding=radius) > 0.5).float()  # binary dilation by the ellipse
    sigma = radius / 2
    return _blur(grown, sigma, round(sigma * 8 + 1) | 1)  # OpenCV's kernel size for float images


def background_batch(images: torch.Tensor, fill: str) -> torch.Tensor:
    """`background` for a batch of float images (B, 3, H, W) 0..255."""
    if fill == "blur":
        height, width = images.shape[-2:]
        small = F.interpolate(images, size=(max(1, height // 16), max(1, width // 16)), mode="area").round_()
        small = _blur(small, 2.0, 13).round_()  # OpenCV's kernel size for sigma 2 on uint8 images
        return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False).round_()
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).round_().expand_as(images)
    return torch.full_like(images, FLAT_FILLS[fill])


def composite_batch(images: torch.Tensor, masks: torch.Tensor, fill: str = "black", radius: int = 0) -> torch.Tensor:
    """`composite(image, soften(mask, radius), fill)` for a batch on any device: (B, H, W, 3) uint8."""
    x = images.permute(0, 3, 1, 2).float()
    alpha = soften_batch(masks, radius)
    blended = x * alpha + background_batch(x, fill) * (1 - alpha)
    return blended.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
