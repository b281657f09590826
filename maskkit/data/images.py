"""The one image writer: encode with OpenCV in the path's own format, write atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import math

import cv2
import numpy as np

from maskkit.contract.errors import RunFailure
from maskkit.contract.files import atomic_path

JPEG_QUALITY = 95


def write_image(path: str | Path, image: np.ndarray, rgb: bool = False, quality: int = JPEG_QUALITY) -> None:
    """Write `image` (BGR, or RGB with rgb=True; a 2-D array is grayscale) to `path` as its suffix
    says (.jpg/.jpeg at `quality`, .png...), through a temporary name renamed at the end."""
    path = Path(path)
    suffix = path.suffix.lower()
    if rgb and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if suffix in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(suffix, image, params)
    if not ok:
        raise RunFailure(f"{path}: could not encode the image as {suffix or 'an image'}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def contact_sheet(tiles: Sequence[np.ndarray], columns: int = 8, gap: int = 4) -> np.ndarray:
    """(H, W, 3) uint8 tiles in a grid, row by row, on white, `gap` pixels apart (cam and audit sheets)."""
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    cell_h = max(t.shape[0] for t in tiles) + gap
    cell_w = max(t.shape[1] for t in tiles) + gap
    sheet = np.full((rows * cell_h + gap, columns * cell_w + gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        y, x = gap + (i // columns) * cell_h, gap + (i % columns) * cell_w
        sheet[y: y + t.shape[0], x: x + t.shape[1]] = t
    return sheet
