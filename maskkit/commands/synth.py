"""`maskkit synth`: a procedurally drawn dataset in the exact competition layout (docs/formats.md).

Faces are drawn with OpenCV so that a small CNN can learn the three tasks: the mask state is plain
(mask over nose and mouth / mask below the nose or under the chin / no mask), gender is clear (hair
length, face shape, lips, eyebrows), age is the hardest (wrinkles from the mid-twenties, grey hair
from the mid-thirties, white at 60; the 50s vs 60 boundary is subtle). Every person and every image has its
own numpy Generator seeded from (seed, split, person, image), so files do not depend on the drawing
order and the same seed gives byte-identical files.

Options that model the competition's traps: `noise` injects label errors (listed in
`train/injected_errors.csv`, fixes-CSV format, mask targets are `images/<folder>/<file>` relative
to DATA/train), `shortcut` ties the background to the person's group in train only, `masks` writes
the true person mask of each image under `OUT/masks/` (mirroring OUT's tree).

Why over 400 lines: the drawing code (face, hair, mask, age cues, backgrounds) is most of it and
only synth uses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, write_errors
from maskkit.data.images import write_image
from maskkit.engine.progress import progress_bar
from maskkit.contract.labels import GENDERS, IMAGE_STEMS, label_of

STEMS = tuple(IMAGE_STEMS)  # mask1..mask5, incorrect_mask, normal
JPEG_QUALITY = 92
TRAIN, EVAL = 0, 1  # split codes in the seeds
FEMALE_SHARE = 0.6
AGE_GROUP_SHARES = (0.45, 0.40, 0.15)  # < 30, 30..59, 60 (the real data's oldest are all exactly 60)
OLD_AGE = 60
REFERENCE_WIDTH = 384  # geometry is designed at 384x512
MIN_DRAW_WIDTH = 256  # tiny outputs are drawn larger and shrunk (anti-aliasing)
DATASET_ENTRIES = {"train", "eval", "masks"}
# Lists every file synth wrote (size and relative path): --overwrite replaces only such a folder.
MARKER = ".maskkit-synth"
MAX_SIDE = 4096  # pixels per image side; 10x the real data, and still ~50 MB of drawing layers per image
MASK_COLOURS = (  # RGB, all far from skin tones: white, light blue, black, grey, pink, navy, yellow, mint
    (238, 238, 236), (140, 195, 240), (28, 28, 32), (140, 140, 148),
    (240, 150, 200), (40, 50, 110), (240, 225, 90), (150, 230, 200),
)


@dataclass(frozen=True)
class Person:
    """Everything that stays the same across one person's seven images."""

    pid: str
    gender: int  # 0 male, 1 female
    age: int
    split: int
    index: int
    face_w: float  # half-width of the face ellipse in reference pixels
    face_h: float
    chin: float  # how pointed the chin is (female higher), 0..1
    skin: tuple
    hair: tuple
    hair_style: str  # short | receding | long | bob
    hair_len: float
    hairline: float
    wrinkles: float  # 0..1
    beard: float  # 0 = none
    glasses: bool
    earrings: bool
    lips: tuple
    clothes: tuple
    collar: int
    bg_hue: int
    bg_texture: int
    bg_sat: int
    bg_val: int
    bg_phase: float
    mask_styles: tuple  # per mask1..5 and incorrect_mask: (colour index, pattern)


# --- people -------------------------------------------------------------------------------------


def person_rng(seed: int, split: int, index: int, image: int = 0) -> np.random.Generator:
    """The Generator of one person (image 0) or of one of its images (1..7): independent of order."""
    return np.random.default_rng([seed, split, index, image])


def group_plan(n: int, seed: int, split: int) -> list[tuple[int, int]]:
    """(gender, age group) per person: shares as in real data, rounded so that small sets cover all groups."""
    shares = np.array([[(1 - FEMALE_SHARE) * a, FEMALE_SHARE * a] for a in AGE_GROUP_SHARES]).T.ravel()
    groups = [(g, a) for g in range(2) for a in range(3)]
    exact = shares * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    plan = [groups[i] for i, c in enumerate(counts) for _ in range(c)]
    order = np.random.default_rng([seed, split, 1_000_003]).permutation(n)
    return [plan[i] for i in order]


def make_person(seed: int, split: int, index: int, pid: str, gender: int, group: int,
                shortcut: float) -> Person:
    """Draw one person's looks from its own Generator."""
    rng = person_rng(seed, split, index)
    age = int(rng.integers(18, 30)) if group == 0 else int(rng.integers(30, 60)) if group == 1 else OLD_AGE
    female = gender == 1
    tone = float(np.clip(rng.normal(0, 1), -2.2, 2.2))
    base = np.array([224, 189, 160]) * (0.86 + 0.06 * tone + (0.03 if female else 0.0))
    skin = tuple(int(v) for v in np.clip(base + rng.normal(0, 4, 3), 60, 250))

    grey = float(np.clip((age - 33) / 27 + rng.normal(0, 0.1), 0, 1))
    dark = np.array([35, 28, 24]) if rng.random() < 0.75 else np.array([85, 55, 35])
    hair = np.clip(dark * (1 - grey) + np.array([205, 205, 200]) * grey + rng.normal(0, 6, 3), 0, 255)
    wrinkles = float(np.clip((age - 24) / 36 + rng.normal(0, 0.06), 0, 1))

    if female:
        style = "long" if rng.random() < 0.7 else "bob"
        hair_len = rng.uniform(1.6, 2.4) if style == "long" else rng.uniform(0.85, 1.15)
        hairline = rng.uniform(-0.55, -0.42)
        lips = tuple(int(v) for v in np.array([196, 62, 88]) + rng.normal(0, 12, 3))
    else:
        style = "receding" if age >= 50 and rng.random() < 0.5 else "short"
        hair_len = 0.0
        hairline = rng.uniform(-0.68, -0.58) if style == "short" else rng.uniform(-0.9, -0.8)
        lips = tuple(int(v) for v in np.array(skin) * np.array([0.78, 0.58, 0.55]))

    # the shortcut trap: in train, the background family (hue, texture, tone) follows the group
    # (both draws are always made, so that --shortcut changes nothing but the background)
    family = 3 * gender + group
    free = (int(rng.integers(0, 180)), int(rng.integers(0, 4)), int(rng.integers(70, 170)), int(rng.integers(120, 225)))
    tied = (int(family * 30 + rng.integers(-6, 7)) % 180, family % 4, int(rng.integers(120, 160)), int(rng.integers(165, 205)))
    bg_hue, bg_texture, bg_sat, bg_val = tied if split == TRAIN and rng.random() < shortcut else free

    colours = rng.permutation(len(MASK_COLOURS))
    patterns = rng.permutation(5)
    mask_styles = tuple((int(colours[i]), int(patterns[i % 5])) for i in range(6))
    return Person(
        pid=pid, gender=gender, age=age, split=split, index=index,
        face_w=rng.uniform(64, 72) if female else rng.uniform(78, 88),
        face_h=rng.uniform(90, 98) if female else rng.uniform(96, 106),
        chin=rng.uniform(0.55, 0.8) if female else rng.uniform(0.0, 0.25),
        skin=skin, hair=tuple(int(v) for v in hair), hair_style=style, hair_len=float(hair_len),
        hairline=float(hairline), wrinkles=wrinkles,
        beard=float(rng.uniform(0.3, 0.7)) if not female and rng.random() < 0.3 else 0.0,
        glasses=bool(rng.random() < 0.15), earrings=bool(female and rng.random() < 0.35),
        lips=lips, clothes=tuple(int(v) for v in rng.integers(20, 235, 3)), collar=int(rng.integers(0, 3)),
        bg_hue=bg_hue, bg_texture=bg_texture, bg_sat=bg_sat, bg_val=bg_val,
        bg_phase=float(rng.uniform(0, 2 * np.pi)), mask_styles=mask_styles,
    )


# --- drawing ------------------------------------------------------------------------------------

SHIFT = 4  # cv2 fixed-point bits: sub-pixel coordinates
ONE = 1 << SHIFT


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64) * ONE).astype(np.int32).reshape(-1, 1, 2)


class Layer:
    """An RGB person layer plus its alpha (the person mask), drawn together."""

    def __init__(self, width: int, height: int) -> None:
        self.img = np.zeros((height, width, 3), np.uint8)
        self.alpha = np.zeros((height, width), np.uint8)

    def poly(self, points, colour, solid: bool = True) -> None:
        pts = _pts(points)
        cv2.fillPoly(self.img, [pts], colour, cv2.LINE_AA, SHIFT)
        if solid:
            cv2.fillPoly(self.alpha, [pts], 255, cv2.LINE_AA, SHIFT)

    def line(self, points, colour, thickness: float) -> None:
        cv2.polylines(self.img, [_pts(points)], False, colour, max(1, int(round(thickness))), cv2.LINE_AA, SHIFT)


def ellipse_points(cx: float, cy: float, ax: float, ay: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def face_outline(cx: float, cy: float, ax: float, ay: float, chin: float, grow: float = 1.0) -> np.ndarray:
    """Face ellipse; the lower half is squared (male) or narrowed to a chin (female)."""
    pts = ellipse_points(cx, cy, ax * grow, ay * grow)
    lower = pts[:, 1] > cy
    depth = np.clip((pts[:, 1] - cy) / (ay * grow), 0, 1)
    dx = pts[:, 0] - cx
    # squared jaw: push x outwards on the lower half; pointed chin: pull it in near the bottom
    factor = np.where(lower, 1 + (0.25 - chin) * 0.6 * depth ** 2 - chin * 0.25 * depth ** 3, 1.0)
    pts[:, 0] = cx + dx * factor
    return pts


def band(points: np.ndarray, top, bottom) -> np.ndarray:
    """Clip a convex outline's y into [top(x), bottom(x)] (callables or numbers)."""
    x = points[:, 0]
    lo = top(x) if callable(top) else np.full_like(x, top)
    hi = bottom(x) if callable(bottom) else np.full_like(x, bottom)
    return np.stack([x, np.clip(points[:, 1], lo, hi)], axis=1)


def background(p: Person, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured background in the person's colour family (RGB), vectorised."""
    x = (np.arange(width, dtype=np.float32) / width)[None, :]
    y = (np.arange(height, dtype=np.float32) / height)[:, None]
    phase = p.bg_phase + rng.uniform(-0.3, 0.3)
    if p.bg_texture == 0:  # gradient
        v = 0.75 + 0.25 * np.cos(phase) * (x - 0.5) * 2 + 0.2 * (y - 0.5)
    elif p.bg_texture == 1:  # vertical panels
        v = 0.8 + 0.18 * np.sign(np.sin(2 * np.pi * 3.5 * x + phase)) + 0.0 * y
    elif p.bg_texture == 2:  # soft blobs
        v = 0.8 + 0.12 * np.sin(7 * x + phase) * np.cos(5 * y - phase) + 0.08 * np.sin(13 * (x + y) + 2 * phase)
    else:  # tiles
        v = 0.82 + 0.15 * ((np.floor(x * 6 + 0.3 * np.sin(phase)) + np.floor(y * 8)) % 2 - 0.5)
    hsv = np.empty((height, width, 3), np.uint8)
    hsv[..., 0] = p.bg_hue
    hsv[..., 1] = int(min(255, max(0, p.bg_sat + rng.normal(0, 8))))
    hsv[..., 2] = np.clip(v * (p.bg_val + rng.normal(0, 8)), 0, 255)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _shade(colour, factor: float) -> tuple:
    return tuple(int(min(255.0, max(0.0, c * factor))) for c in colour)


def _mix(a, b, t: float) -> tuple:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


def draw_mask(layer: Layer, rng: np.random.Generator, cx, cy, ax, ay, chin, style, state: str, u: float) -> None:
    """A face mask: over nose and mouth (wear), below the nose or under the chin (incorrect)."""
    colour_index, pattern = style
    colour = MASK_COLOURS[colour_index]
    if state == "wear":
        top_y, peak, bottom_y = cy - rng.uniform(0.03, 0.07) * ay, 0.08 * ay, cy + 1.04 * ay
    elif rng.random() < 0.7:  # below the nose, mouth covered
        top_y, peak, bottom_y = cy + rng.uniform(0.34, 0.42) * ay, 0.04 * ay, cy + 1.06 * ay
    else:  # under the chin
        top_y, peak, bottom_y = cy + rng.uniform(0.66, 0.76) * ay, 0.02 * ay, cy + 1.25 * ay
    outline = face_outline(cx, cy + 0.04 * ay, ax, ay * 1.04, chin, grow=1.06)
    pts = band(outline, lambda x: top_y - peak * np.clip(1 - ((x - cx) / ax) ** 2, 0, 1), bottom_y)
    layer.poly(pts, colour)  # anti-aliased outline; the pattern goes inside it
    h, w = layer.alpha.shape
    x0, y0 = max(0, int(pts[:, 0].min())), max(0, int(pts[:, 1].min()))
    x1, y1 = min(w, int(pts[:, 0].max()) + 2), min(h, int(pts[:, 1].max()) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    region = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(region, [_pts(pts - (x0, y0))], 1, cv2.LINE_8, SHIFT)
    patch = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    patch[:] = colour
    top_y, bottom_y, cx = top_y - y0, bottom_y - y0, cx - x0
    h, w = patch.shape[:2]
    dark = _shade(colour, 0.72) if sum(colour) > 150 else _shade((90, 90, 95), 1.0)
    if pattern == 1:  # pleats
        for k in range(1, 4):
            yk = top_y + (bottom_y - top_y) * k / 4.5
            cv2.line(patch, (0, int(yk)), (w, int(yk)), dark, max(1, int(2 * u)), cv2.LINE_AA)
    elif pattern == 2:  # dots
        step = max(4, int(14 * u))
        for yy in range(int(top_y), int(bottom_y), step):
            for xx in range(int(cx - ax), int(cx + ax), step):
                cv2.circle(patch, (xx + (yy // step % 2) * step // 2, yy), max(1, int(3 * u)), dark, -1, cv2.LINE_AA)
    elif pattern == 3:  # centre seam (cloth / KF94)
        cv2.line(patch, (int(cx), int(top_y - peak)), (int(cx), int(bottom_y)), dark, max(1, int(2 * u)), cv2.LINE_AA)
    elif pattern == 4:  # two-tone band
        patch[int(top_y): int(top_y + (bottom_y - top_y) * 0.25)] = dark
    np.copyto(layer.img[y0:y1, x0:x1], patch, where=region[..., None].astype(bool))
    cx, top_y = cx + x0, top_y + y0
    strap = _shade(colour, 0.85)
    for side in (-1, 1):
        ear = (cx + side * ax * 1.02, cy - 0.05 * ay)
        edge_top = (cx + side * ax * 0.9, top_y + 0.05 * ay)
        layer.line([edge_top, ear], strap, 2.5 * u)


def draw_person(p: Person, stem: str, rng: np.random.Generator, width: int, height: int,
                pixel: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The person (RGB) and its alpha on a black layer, before pose and background.

    `pixel`: the size of one output pixel on this layer; age lines are at least about that thick so
    that age stays visible in tiny images.
    """
    u = min(width, height * 0.75) / REFERENCE_WIDTH
    layer = Layer(width, height)
    cx = width / 2 + rng.normal(0, 4) * u
    cy = height * 0.43 + rng.normal(0, 4) * u
    ax, ay = p.face_w * u, p.face_h * u
    skin, hair = p.skin, p.hair
    shadow = _shade(skin, 0.78)

    # clothes and neck
    shoulder_y = cy + ay * 1.55
    layer.poly(ellipse_points(cx, shoulder_y + 150 * u, 175 * u if p.gender == 0 else 150 * u, 165 * u), p.clothes)
    neck_w = (0.42 if p.gender == 0 else 0.34) * ax
    layer.poly([(cx - neck_w, cy + 0.5 * ay), (cx + neck_w, cy + 0.5 * ay),
                (cx + neck_w * 1.1, shoulder_y + 10 * u), (cx - neck_w * 1.1, shoulder_y + 10 * u)], shadow)
    if p.collar == 1:  # V neck
        layer.poly([(cx - neck_w * 1.4, shoulder_y), (cx + neck_w * 1.4, shoulder_y), (cx, shoulder_y + 45 * u)], shadow)
    elif p.collar == 2:  # shirt collar
        dark = _shade(p.clothes, 0.6)
        layer.line([(cx - neck_w * 1.6, shoulder_y - 2 * u), (cx, shoulder_y + 30 * u), (cx + neck_w * 1.6, shoulder_y - 2 * u)],
                   dark, 4 * u)

    # hair behind the head (long or bob)
    if p.hair_style in ("long", "bob"):
        back = ellipse_points(cx, cy - 0.08 * ay, ax * 1.3, ay * 1.12)
        bottom = cy + p.hair_len * ay
        body = np.array([(cx - ax * 1.3, cy - 0.08 * ay), (cx + ax * 1.3, cy - 0.08 * ay),
                         (cx + ax * (1.4 if p.hair_style == "long" else 1.22), bottom),
                         (cx - ax * (1.4 if p.hair_style == "long" else 1.22), bottom)])
        layer.poly(back, hair)
        layer.poly(body, hair)

    # ears, face
    for side in (-1, 1):
        layer.poly(ellipse_points(cx + side * ax * 0.98, cy - 0.02 * ay, 0.16 * ax, 0.2 * ay, 24), shadow)
    outline = face_outline(cx, cy, ax, ay, p.chin)
    layer.poly(outline, skin)

    # beard (male): darker lower face
    if p.beard > 0:
        beard = _mix(skin, hair, p.beard)
        layer.poly(band(face_outline(cx, cy, ax, ay, p.chin, 1.0), cy + 0.35 * ay, cy + 2 * ay), beard, solid=False)

    # wrinkles: forehead lines, crow's feet, nasolabial folds
    w = p.wrinkles
    fine = max(1.6 * u, 0.9 * pixel)  # thickness of age lines
    if w > 0.1:
        line_colour = _mix(skin, (90, 55, 45), 0.3 + 0.45 * w)
        if w > 0.45:  # bags under the eyes (visible above a worn mask)
            for side in (-1, 1):
                ex = cx + side * 0.38 * ax
                layer.line([(ex - 0.14 * ax, cy - 0.05 * ay), (ex, cy - 0.01 * ay), (ex + 0.14 * ax, cy - 0.05 * ay)],
                           line_colour, fine)
        for k in range(int(round(1 + 3 * w))):
            yk = cy - (0.42 + 0.09 * k) * ay
            xs = np.linspace(cx - 0.45 * ax, cx + 0.45 * ax, 9)
            layer.line(np.stack([xs, yk + 0.04 * ay * ((xs - cx) / ax) ** 2 * 4], 1), line_colour, fine)
        if w > 0.35:
            for side in (-1, 1):
                layer.line([(cx + side * 0.42 * ax, cy + 0.18 * ay), (cx + side * 0.52 * ax, cy + 0.45 * ay),
                            (cx + side * 0.5 * ax, cy + 0.62 * ay)], line_colour, fine * 1.2)
        if w > 0.55:
            for side in (-1, 1):
                ex = cx + side * 0.62 * ax
                for dy in (-0.06, 0.0, 0.06):
                    layer.line([(ex, cy - 0.15 * ay + dy * ay * 0.5), (ex + side * 0.18 * ax, cy - 0.15 * ay + dy * ay)],
                               line_colour, fine * 0.9)

    # eyes and eyebrows
    brow = _mix(hair, (40, 30, 25), 0.5 if p.gender == 0 else 0.3)
    for side in (-1, 1):
        ex, ey = cx + side * 0.38 * ax, cy - 0.15 * ay
        cv2.ellipse(layer.img, (int(ex * ONE), int(ey * ONE)), (int(0.17 * ax * ONE), int(0.07 * ay * ONE)), 0, 0, 360,
                    (245, 245, 245), -1, cv2.LINE_AA, SHIFT)
        cv2.circle(layer.img, (int(ex * ONE), int(ey * ONE)), int(0.06 * ay * ONE), (40, 30, 25), -1, cv2.LINE_AA, SHIFT)
        if p.gender == 1:  # lashes
            layer.line([(ex - 0.17 * ax, ey), (ex, ey - 0.085 * ay), (ex + 0.17 * ax, ey)], (25, 20, 20), 2.2 * u)
        by = ey - (0.16 if p.gender == 0 else 0.2) * ay
        arch = 0.02 if p.gender == 0 else 0.06
        layer.line([(ex - 0.2 * ax, by + arch * ay), (ex, by - arch * ay), (ex + 0.22 * ax, by + arch * ay * 0.5)],
                   brow, (6 if p.gender == 0 else 2.5) * u)

    # nose and mouth
    layer.poly([(cx, cy - 0.08 * ay), (cx + 0.16 * ax, cy + 0.24 * ay), (cx - 0.16 * ax, cy + 0.24 * ay)],
               _shade(skin, 0.8), solid=False)
    for side in (-1, 1):
        cv2.circle(layer.img, (int((cx + side * 0.06 * ax) * ONE), int((cy + 0.23 * ay) * ONE)), int(0.045 * ax * ONE),
                   _shade(skin, 0.4), -1, cv2.LINE_AA, SHIFT)
    mouth_w = (0.3 if p.gender == 0 else 0.26) * ax
    cv2.ellipse(layer.img, (int(cx * ONE), int((cy + 0.5 * ay) * ONE)),
                (int(mouth_w * ONE), int((0.05 if p.gender == 0 else 0.08) * ay * ONE)), 0, 0, 360, p.lips, -1,
                cv2.LINE_AA, SHIFT)
    layer.line([(cx - mouth_w, cy + 0.5 * ay), (cx + mouth_w, cy + 0.5 * ay)], _shade(p.lips, 0.6), 1.5 * u)

    # hair on top
    hairline = cy + p.hairline * ay
    cap = ellipse_points(cx, cy - 0.06 * ay, ax * 1.07, ay * 1.06)
    if p.hair_style == "receding":
        top = band(cap, -1e9, lambda x: hairline - 0.25 * ay * np.clip(1 - ((x - cx) / (0.7 * ax)) ** 2, 0, 1))
    else:
        top = band(cap, -1e9, lambda x: hairline + (0.12 if p.gender == 1 else 0.05) * ay * ((x - cx) / ax) ** 2)
    layer.poly(top, hair)
    if p.gender == 1:  # side strands over the temples
        for side in (-1, 1):
            layer.poly([(cx + side * 0.75 * ax, hairline), (cx + side * 1.08 * ax, hairline),
                        (cx + side * 1.1 * ax, cy + 0.35 * ay), (cx + side * 0.98 * ax, cy + 0.3 * ay)], hair)
    grey = sum(hair) / 3
    streak = _shade(hair, 1.25 if grey > 120 else 0.7)
    for _ in range(6):
        x0 = cx + rng.uniform(-0.7, 0.7) * ax
        layer.line([(x0, cy - 1.0 * ay), (x0 + rng.uniform(-0.2, 0.2) * ax, hairline - 0.02 * ay)], streak, 1.2 * u)

    if p.earrings:
        for side in (-1, 1):
            cv2.circle(layer.img, (int((cx + side * 1.0 * ax) * ONE), int((cy + 0.22 * ay) * ONE)), int(0.06 * ax * ONE),
                       (230, 200, 60), -1, cv2.LINE_AA, SHIFT)
    if p.glasses:
        for side in (-1, 1):
            cv2.ellipse(layer.img, (int((cx + side * 0.38 * ax) * ONE), int((cy - 0.15 * ay) * ONE)),
                        (int(0.25 * ax * ONE), int(0.14 * ay * ONE)), 0, 0, 360, (30, 30, 30), max(1, int(3 * u)),
                        cv2.LINE_AA, SHIFT)

    state = IMAGE_STEMS[stem]
    if state != "not_wear":
        style = p.mask_styles[STEMS.index(stem)] if state == "wear" else p.mask_styles[5]
        draw_mask(layer, rng, cx, cy, ax, ay, p.chin, style, state, u)
    return layer.img, layer.alpha


def render(p: Person, stem: str, seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image (BGR, ready for imwrite) and its binary person mask at `size` (width, height)."""
    width, height = size
    rng = person_rng(seed, p.split, p.index, 1 + STEMS.index(stem))
    k = max(1, int(np.ceil(MIN_DRAW_WIDTH / width)))
    dw, dh = width * k, height * k
    img, alpha = draw_person(p, stem, rng, dw, dh, pixel=k)

    # pose: small rotation, scale and shift of the whole person around the face
    centre = (dw / 2, dh * 0.45)
    matrix = cv2.getRotationMatrix2D(centre, rng.normal(0, 5), rng.uniform(0.9, 1.1))
    matrix[:, 2] += rng.normal(0, 0.03, 2) * (dw, dh)
    img = cv2.warpAffine(img, matrix, (dw, dh), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = cv2.warpAffine(alpha, matrix, (dw, dh), flags=cv2.INTER_LINEAR, borderValue=0)

    weight = alpha.astype(np.float32) * (1 / 255)
    out = cv2.blendLinear(img, background(p, rng, dw, dh), weight, 1 - weight)
    # colour jitter (contrast, brightness, white balance) as one lookup table per channel
    levels = np.arange(256, dtype=np.float32)[:, None]
    lut = ((levels - 128) * rng.uniform(0.85, 1.15) + 128 + rng.uniform(-18, 18)) * rng.uniform(0.93, 1.07, 3)
    out = cv2.LUT(out, np.clip(lut, 0, 255).astype(np.uint8).reshape(256, 1, 3))
    if k > 1:
        out = cv2.resize(out, (width, height), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_AREA)
    mask = np.where(alpha >= 128, 255, 0).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR), mask


# --- writing ------------------------------------------------------------------------------------


def _write_jpeg(path: Path, bgr: np.ndarray) -> None:
    write_image(path, bgr, quality=JPEG_QUALITY)


def _write_png(path: Path, mask: np.ndarray) -> None:
    write_image(path, mask)


def _folder_name(pid: str, gender: int, age: int) -> str:
    return f"{pid}_{GENDERS[gender]}_Asian_{age}"


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty OUT (or, with overwrite, one that is not a dataset this command wrote)."""
    if out.exists() and not out.is_dir():
        raise MaskkitError(f"{out}: exists and is not a folder (choose another OUT)")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise MaskkitError(f"{out}: folder is not empty (choose another OUT or pass --overwrite to replace it)")
    problem = _not_written_by_synth(out)
    if problem:
        raise MaskkitError(f"{out}: {problem}; --overwrite only replaces a dataset that maskkit synth wrote "
                           "(and nothing added to it since), so choose another OUT")


def _written_files(root: Path) -> dict[str, int]:
    """Relative path -> size of every file under `root` (the marker left out)."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel != MARKER:
                found[rel] = path.stat().st_size
    return found


def _write_marker(root: Path) -> None:
    listing = "".join(f"{size}\t{rel}\n" for rel, size in sorted(_written_files(root).items()))
    (root / MARKER).write_text("maskkit synth: files written (size, path); --overwrite replaces only these\n" + listing)


def _not_written_by_synth(out: Path) -> str | None:
    """Why OUT may not be replaced (a file synth did not write, or changed since), or None."""
    marker = out / MARKER
    if not marker.is_file():
        return f"has no {MARKER} file, so it was not written by maskkit synth"
    written = {}
    for line in marker.read_text(errors="replace").splitlines()[1:]:
        size, _, rel = line.partition("\t")
        if size.isdigit() and rel:
            written[rel] = int(size)
    for rel, size in sorted(_written_files(out).items()):
        if rel not in written:
            return f"holds {rel}, which maskkit synth did not write"
        if written[rel] != size:
            return f"{rel} changed since maskkit synth wrote it"
    return None


def _validate(persons: int, eval_persons: int, size: tuple[int, int], seed: int, noise: float, shortcut: float) -> None:
    if persons < 1 or eval_persons < 0:
        raise MaskkitError(f"--persons {persons} / --eval-persons {eval_persons}: need at least 1 train person and 0 or more eval persons")
    if min(size) < 16:
        raise MaskkitError(f"--size {size[0]}x{size[1]}: too small to draw a face (use at least 16x16, e.g. 64x80)")
    if max(size) > MAX_SIDE:
        raise MaskkitError(f"--size {size[0]}x{size[1]}: too large (at most {MAX_SIDE} pixels a side; "
                           "the real data is 384x512)")
    if seed < 0:
        raise MaskkitError(f"--seed {seed}: must be 0 or more")
    if not 0 <= noise <= 0.5:
        raise MaskkitError(f"--noise {noise}: must be between 0 and 0.5 (fraction of persons per kind of error)")
    if not 0 <= shortcut <= 1:
        raise MaskkitError(f"--shortcut {shortcut}: must be between 0 and 1")


def synthesize(out: str | Path, persons: int = 60, eval_persons: int = 20, size: tuple[int, int] = (384, 512),
               seed: int = 0, noise: float = 0.0, shortcut: float = 0.0, masks: bool = False,
               overwrite: bool = False, progress: bool | None = None) -> dict:
    """Draw a dataset into OUT (competition layout); returns a summary dict.

    Written into a temporary folder beside OUT and renamed at the end, so an interrupted run leaves
    nothing half-done. `size` is (width, height).
    """
    out = Path(out)
    _validate(persons, eval_persons, size, seed, noise, shortcut)
    _check_out(out, overwrite)
    started = time.perf_counter()
    where = out.resolve()  # also gives OUT = "." a name for the temporary folder beside it
    with write_errors(where):
        where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_name(f".{where.name}.synth-tmp{os.getpid()}")
    try:
        with write_errors(where):
            if tmp.exists():
                shutil.rmtree(tmp)
            summary = _draw_dataset(tmp, persons, eval_persons, size, seed, noise, shortcut, masks, progress)
            _write_marker(tmp)
            _replace(tmp, where)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    summary["seconds"] = time.perf_counter() - started
    console.print(
        f"maskkit synth: wrote {out}: {persons} train persons ({7 * persons} images), {eval_persons} eval persons "
        f"({7 * eval_persons} images) at {size[0]}x{size[1]}, seed {seed}, {summary['injected']} injected errors"
        f"{', masks' if masks else ''} in {summary['seconds']:.1f}s"
    )
    return summary


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished dataset into OUT, replacing an old dataset there (OUT itself is kept)."""
    out.mkdir(exist_ok=True)
    old = out.with_name(f".{out.name}.synth-old{os.getpid()}")
    entries = [e for e in out.iterdir() if e.name in DATASET_ENTRIES or e.name == MARKER]
    if entries:
        old.mkdir()
        for entry in entries:
            os.replace(entry, old / entry.name)
    for entry in tmp.iterdir():
        os.replace(entry, out / entry.name)
    tmp.rmdir()
    if old.exists():
        shutil.rmtree(old)


def _draw_dataset(root: Path, persons: int, eval_persons: int, size: tuple[int, int], seed: int, noise: float,
                  shortcut: float, masks: bool, progress: bool | None) -> dict:
    train_people = [make_person(seed, TRAIN, i, f"{i + 1:06d}", g, a, shortcut)
                    for i, (g, a) in enumerate(group_plan(persons, seed, TRAIN))]
    eval_people = [make_person(seed, EVAL, i, f"{persons + i + 1:06d}", g, a, shortcut)
                   for i, (g, a) in enumerate(group_plan(eval_persons, seed, EVAL))]

    noise_rng = np.random.default_rng([seed, TRAIN, 2_000_003])
    order = noise_rng.permutation(persons)
    k = int(round(noise * persons))
    flipped, swapped = set(order[:k].tolist()), set(order[k: 2 * k].tolist())

    train_dir, eval_dir, mask_dir = root / "train", root / "eval", root / "masks"
    (train_dir / "images").mkdir(parents=True)
    (eval_dir / "images").mkdir(parents=True)
    show = progress if progress is not None else (persons + eval_persons) * 7 * size[0] * size[1] > 5_000_000
    rows, injected, truth = [], [], []
    with progress_bar("synth", persons + eval_persons, show=None if show else False) as bar:
        for i, p in enumerate(train_people):
            gender = 1 - p.gender if i in flipped else p.gender
            folder = _folder_name(p.pid, gender, p.age)
            rows.append({"id": p.pid, "gender": GENDERS[gender], "race": "Asian", "age": p.age, "path": folder})
            if i in flipped:
                injected.append({"target": p.pid, "column": "gender", "old": GENDERS[gender],
                                 "new": GENDERS[p.gender], "reason": "injected: gender flipped in train.csv and folder name"})
            files = {stem: stem for stem in STEMS}
            if i in swapped:
                files["incorrect_mask"], files["normal"] = "normal", "incorrect_mask"
                for stem in ("incorrect_mask", "normal"):
                    injected.append({"target": f"images/{folder}/{files[stem]}.jpg", "column": "mask",
                                     "old": IMAGE_STEMS[files[stem]], "new": IMAGE_STEMS[stem],
                                     "reason": "injected: incorrect_mask and normal swapped"})
            (train_dir / "images" / folder).mkdir()
            for stem in STEMS:
                bgr, person_mask = render(p, stem, seed, size)
                _write_jpeg(train_dir / "images" / folder / f"{files[stem]}.jpg", bgr)
                if masks:
                    target = mask_dir / "train" / "images" / folder / f"{files[stem]}.png"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _write_png(target, person_mask)
            bar.advance()
        for p in eval_people:
            for stem in STEMS:
                image_id = hashlib.sha1(f"maskkit-synth:{seed}:{p.pid}:{stem}".encode()).hexdigest() + ".jpg"
                bgr, person_mask = render(p, stem, seed, size)
                _write_jpeg(eval_dir / "images" / image_id, bgr)
                if masks:
                    target = mask_dir / "eval" / "images" / f"{image_id[:-4]}.png"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _write_png(target, person_mask)
                mask = IMAGE_STEMS[stem]
                truth.append({"ImageID": image_id, "ans": label_of(mask, GENDERS[p.gender], p.age), "mask": mask,
                              "gender": GENDERS[p.gender], "age": p.age, "person": p.pid})
            bar.advance()

    _to_csv(pd.DataFrame(rows, columns=["id", "gender", "race", "age", "path"]), train_dir / "train.csv")
    _to_csv(pd.DataFrame(injected, columns=["target", "column", "old", "new", "reason"]),
            train_dir / "injected_errors.csv")
    truth_df = pd.DataFrame(truth, columns=["ImageID", "ans", "mask", "gender", "age", "person"])
    if len(truth_df):
        truth_df = truth_df.iloc[np.random.default_rng([seed, EVAL, 3_000_017]).permutation(len(truth_df))]
    _to_csv(truth_df[["ImageID"]].assign(ans=0), eval_dir / "info.csv")
    _to_csv(truth_df, eval_dir / "truth.csv")
    return {"persons": persons, "eval_persons": eval_persons, "images": 7 * (persons + eval_persons),
            "injected": len(injected), "flipped": len(flipped), "swapped": len(swapped)}


def _to_csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, lineterminator="\n")


__all__ = ["synthesize", "render", "make_person", "group_plan"]
