"""Masks drawn on a real face photo (for `maskkit import`): the seven shots of the competition from one
photo, in the mask styles `maskkit synth` draws (data/drawing.py's `draw_mask`). Pure functions: every
random draw comes from the Generator the caller passes.

The photo is taken to be a face crop (UTKFace's aligned crops: the face centred and filling most of
the frame), so the face's ellipse is placed from the frame: centre a little below the middle, half
axes about a third of the width and 0.43 of the height (the mask over nose and mouth then spans
about 0.5..0.97 of the height, as on such crops).
"""

from __future__ import annotations

import numpy as np

from maskkit.contract.labels import IMAGE_STEMS
from maskkit.data.drawing import MASK_COLOURS, REFERENCE_WIDTH, STEMS, Face, Layer, draw_mask

FACE_CENTRE = (0.5, 0.52)  # (x, y) fractions of the frame
FACE_AXES = (0.34, 0.43)  # half-width and half-height fractions
REFERENCE_FACE_WIDTH = 80  # a drawn face's half-width in reference pixels (synth: 64..88)


def mask_styles(rng: np.random.Generator) -> tuple[tuple[int, int], ...]:
    """(colour index, pattern) for mask1..mask5 and incorrect_mask: five different colours and patterns,
    as synth gives a person."""
    colours = rng.permutation(len(MASK_COLOURS))
    patterns = rng.permutation(5)
    return tuple((int(colours[i]), int(patterns[i % 5])) for i in range(6))


def face_of(width: int, height: int, rng: np.random.Generator) -> Face:
    """Where the face of a face crop lies (with a little jitter per shot)."""
    ax, ay = FACE_AXES[0] * width, FACE_AXES[1] * height
    cx = width * FACE_CENTRE[0] + rng.normal(0, 0.01) * width
    cy = height * FACE_CENTRE[1] + rng.normal(0, 0.01) * height
    u = ax / REFERENCE_FACE_WIDTH
    return Face(cx, cy, ax, ay, u, pixel=max(1.0, u * REFERENCE_WIDTH / width))


def masked_shot(rgb: np.ndarray, stem: str, styles: tuple, chin: float, rng: np.random.Generator) -> np.ndarray:
    """The photo (RGB uint8) as image `stem` shows it: a mask over nose and mouth (mask1..5), one below
    the nose or under the chin (incorrect_mask), or the photo itself (normal)."""
    state = IMAGE_STEMS[stem]
    if state == "not_wear":
        return rgb.copy()
    height, width = rgb.shape[:2]
    layer = Layer(width, height)
    layer.img = np.ascontiguousarray(rgb).copy()
    style = styles[STEMS.index(stem)] if state == "wear" else styles[5]
    draw_mask(layer, rng, face_of(width, height, rng), chin, style, state)
    return layer.img


def seven_shots(rgb: np.ndarray, gender: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The seven images of one person from one photo (RGB uint8), by stem; `gender` 0 male, 1 female
    shapes the mask's lower edge (a squarer jaw or a narrower chin, as synth draws them)."""
    styles = mask_styles(rng)
    chin = float(rng.uniform(0.55, 0.8) if gender == 1 else rng.uniform(0.0, 0.25))
    return {stem: masked_shot(rgb, stem, styles, chin, rng) for stem in STEMS}
