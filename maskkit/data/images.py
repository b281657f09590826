"""The one image writer: encode with OpenCV in the path's own format, write atomically."""

from __future__ import annotations

from pathlib import Path

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
