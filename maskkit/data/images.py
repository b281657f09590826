"""The one image reader and the one image writer.

`read_image` reads the file's bytes with Python (any name the file system holds works: a latin-1
or cp949 name from a zip archive is a surrogate-escaped str here, which OpenCV's `imread` cannot
open) and decodes them with `cv2.imdecode`, which gives the pixels `imread` would.
`write_image` encodes with OpenCV in the path's own format, then writes through the checked atomic
writer (contract/files.write_bytes: the target is checked against the command's inputs, an existing
file is replaced only when it is an image of that format)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.files import PNG_MAGIC, Inputs, write_bytes

JPEG_QUALITY = 95
JPEG_MAGIC = b"\xff\xd8\xff"
# The first bytes every file of a format starts with: an existing target is replaced only if it has them.
MAGIC = {".png": PNG_MAGIC, ".jpg": JPEG_MAGIC, ".jpeg": JPEG_MAGIC, ".bmp": b"BM"}


def read_image(path: str | Path, flag: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """The image at `path` decoded with `flag` (BGR for IMREAD_COLOR, EXIF rotation applied as
    imread does); None when it is missing, unreadable or not an image."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (OSError, ValueError):
        return None
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    return image if image is not None and image.size else None


def image_magic(path: str | Path | None) -> bytes | None:
    """The signature an existing image at `path` must start with to be replaced (None: any file is refused)."""
    return MAGIC.get(Path(path).suffix.lower()) if path is not None else None


def write_image(path: str | Path, image: np.ndarray, rgb: bool = False, quality: int = JPEG_QUALITY,
                inputs: Inputs | None = None) -> None:
    """Write `image` (BGR, or RGB with rgb=True; a 2-D array is grayscale) to `path` as its suffix
    says (.jpg/.jpeg at `quality`, .png...), through a temporary name renamed at the end.

    With `inputs` (what the command reads), the target is checked first (files.Inputs.check): never
    an input, a folder, or an existing file that is not an image of this format (MaskkitError,
    exit 2). A failed write is a one-line WriteError either way."""
    path = Path(path)
    suffix = path.suffix.lower()
    if rgb and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if suffix in (".jpg", ".jpeg") else []
    if suffix not in MAGIC and suffix != ".webp":
        raise MaskkitError(f"{path}: cannot write an image named {suffix or 'without a suffix'}; "
                           "name it .png or .jpg")
    ok, data = cv2.imencode(suffix, image, params)
    if not ok:
        raise RunFailure(f"{path}: could not encode the image as {suffix}")
    write_bytes(path, data.tobytes(), inputs=inputs, magic=image_magic(path))


def write_figure(path: str | Path, figure, dpi: int = 100) -> None:
    """A matplotlib figure as PNG at `path`, through the same checked atomic writer (run-folder plots)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_bytes(path, buffer.getvalue(), magic=PNG_MAGIC)


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
