"""Box arithmetic of `maskkit crop`: a face box widened, made square or 3:4, kept inside the frame.

A box is (x, y, w, h) in pixels of its image, x and y its top-left corner.
"""

from __future__ import annotations

from collections.abc import Sequence

from maskkit.options import CROP_ASPECTS, DEFAULT_CROP

Box = tuple[float, float, float, float]
ASPECTS = dict(zip(CROP_ASPECTS, (1.0, 3 / 4)))  # --aspect: width / height of every crop


def widen(box: Box, margin: float) -> Box:
    """Each side moved out by `margin` times the box's width (left, right) or height (top, bottom)."""
    x, y, w, h = box
    return (x - margin * w, y - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin))


def fit(box: Box, ratio: float, frame: Sequence[int]) -> tuple[int, int, int, int]:
    """`box` made `ratio` (width / height) around its centre by growing its shorter side, shrunk to fit
    the frame (width, height) when it is larger, then shifted inside it; whole pixels."""
    frame_w, frame_h = frame
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    w, h = max(w, h * ratio), max(h, w / ratio)
    scale = min(1.0, frame_w / w, frame_h / h)
    w, h = max(1, round(w * scale)), max(1, round(h * scale))
    left = min(max(round(cx - w / 2), 0), frame_w - w)
    top = min(max(round(cy - h / 2), 0), frame_h - h)
    return int(left), int(top), int(w), int(h)


def centre_box(frame: Sequence[int]) -> Box:
    """The competition's centre crop (options.DEFAULT_CROP: 0.8 of the height, 0.85 of the width) of the frame."""
    frame_w, frame_h = frame
    h, w = DEFAULT_CROP[0] * frame_h, DEFAULT_CROP[1] * frame_w
    return ((frame_w - w) / 2, (frame_h - h) / 2, w, h)


def rescale(box: Box, source: Sequence[int], target: Sequence[int]) -> Box:
    """A box of an image of size `source` (width, height) at the same place in an image of size `target`."""
    sx, sy = target[0] / source[0], target[1] / source[1]
    x, y, w, h = box
    return (x * sx, y * sy, w * sx, h * sy)
