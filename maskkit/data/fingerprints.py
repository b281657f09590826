"""Fingerprints of image files for `maskkit audit`'s file checks: size, damage (zero-byte, truncated,
undecodable), strangeness (tiny, odd aspect, a format its extension does not name: PIL reads the
header only), SHA-1, a 64-bit dHash computed with OpenCV and a small grayscale thumbnail
(cv2.img_hash is not part of opencv-python-headless), and the near-duplicates they reveal."""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from collections.abc import Collection, Iterable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

THUMB_SIZE = (24, 32)  # width, height
FLAT_STD = 3.0  # images this uniform have meaningless hashes
SCAN_COLUMNS = ["path", "folder", "size", "problem", "strange", "sha1", "dhash", "thumb"]
MIN_SIDE = 16  # pixels: smaller images carry no face (the smallest model input)
MAX_ASPECT = 4.0  # longer side / shorter side: portraits are 4:3, face crops 1:1
# The format each image extension promises (PIL's names).
EXTENSION_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
TINY, ODD_ASPECT, WRONG_FORMAT = "tiny image", "odd aspect", "wrong format"


def strangeness(name: str, header: io.BufferedIOBase | str | Path) -> str | None:
    """'tiny image: 1x1 pixels', 'odd aspect: 2000x3 pixels', 'wrong format: GIF data named .jpg',
    or None, from the image header (PIL reads no pixels); an unreadable header is left to the decoder."""
    try:
        with Image.open(header) as im:
            kind, (width, height) = im.format, im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    promised = EXTENSION_FORMATS.get(Path(name).suffix.lower())
    if promised is not None and kind != promised:
        return f"{WRONG_FORMAT}: {kind} data named {Path(name).suffix}"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"{ODD_ASPECT}: {width}x{height} pixels"
    if min(width, height) < MIN_SIDE:
        return f"{TINY}: {width}x{height} pixels"
    return None


def strange_images(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(path, strangeness) of each strange image among `paths` (headers only)."""
    found = []
    for path in paths:
        kind = strangeness(path, path)
        if kind is not None:
            found.append((path, kind))
    return found


def _dhash(gray: np.ndarray) -> int:
    """64-bit difference hash: is each of 8x8 cells brighter than its right neighbour."""
    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = np.packbits((small[:, 1:] > small[:, :-1]).ravel())
    return int.from_bytes(bits.tobytes(), "big")


def _thumbnail(gray: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-length grayscale thumbnail: its dot product with another is their correlation."""
    t = cv2.resize(gray, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-6)


def file_problem(data: bytes) -> str | None:
    """'zero-byte', 'truncated' or None, from the bytes alone (JPEG end marker, PNG IEND chunk)."""
    if not data:
        return "zero-byte file"
    if data[:2] == b"\xff\xd8":
        # The end marker must follow the last scan: FF D9 cannot occur inside entropy-coded data.
        if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
            return "truncated JPEG (no end-of-image marker after the last scan)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-16:]:
            return "truncated PNG (no IEND chunk)"
    return None


def scan_file(path: Path) -> dict:
    """Size, problem, SHA-1, dHash and thumbnail of one image file."""
    data = path.read_bytes()
    result = {"path": str(path), "folder": path.parent.name, "size": len(data), "problem": file_problem(data),
              "strange": None, "sha1": hashlib.sha1(data).hexdigest(), "dhash": None, "thumb": None}
    if result["problem"] == "zero-byte file":
        return result
    result["strange"] = strangeness(path.name, io.BytesIO(data))
    flag = cv2.IMREAD_REDUCED_GRAYSCALE_2 if len(data) > 100_000 else cv2.IMREAD_GRAYSCALE
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if gray is None or gray.size == 0:
        result["problem"] = result["problem"] or "cannot be decoded as an image"
        return result
    if float(gray.std()) >= FLAT_STD:
        result["dhash"], result["thumb"] = _dhash(gray), _thumbnail(gray)
    return result


def near_duplicates(scans: pd.DataFrame, max_bits: int, min_correlation: float,
                    skip: Collection[tuple[str, str]] = ()) -> dict[tuple[str, str], list[tuple]]:
    """Images in different folders whose dHashes differ in at most `max_bits` bits and whose thumbnails
    correlate at least `min_correlation`: (folder a, folder b) -> [(path a, path b, bits, correlation)].

    scans: scan_file results; pairs in `skip` (identical files, say) are left out.
    """
    hashed = scans[scans["dhash"].notna()].reset_index(drop=True)
    pairs = defaultdict(list)
    if len(hashed) < 2:
        return pairs
    hashes = np.array([int(h) for h in hashed["dhash"]], dtype=np.uint64)
    thumbs = np.stack(hashed["thumb"].to_numpy())
    folders = hashed["folder"].to_numpy()
    block = 512  # rows of the all-pairs bit-count matrix at a time
    for start in range(0, len(hashes), block):
        bits = np.bitwise_count(hashes[start:start + block, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(bits <= max_bits)):
            i += start
            if j <= i or folders[i] == folders[j]:
                continue
            if folders[i] > folders[j]:
                i, j = j, i
            a, b = hashed.at[i, "path"], hashed.at[j, "path"]
            if (a, b) in skip:
                continue
            corr = float(thumbs[i] @ thumbs[j])
            if corr >= min_correlation:
                pairs[(folders[i], folders[j])].append((a, b, int(np.bitwise_count(hashes[i] ^ hashes[j])), corr))
    return pairs
