"""Pure face drawing for `maskkit synth`: a Person's looks on an RGB layer with its alpha (the person
mask), the face mask it wears, and a textured background. No files, no randomness of its own: every
random draw comes from the Generator the caller passes, in a fixed order, so a seed gives the same pixels.

Geometry is designed at REFERENCE_WIDTH x 4/3 of it and scaled by `u`; coordinates are sub-pixel
(cv2 fixed point, SHIFT bits).

Why over 400 lines: a face is many small named steps (back to front) plus the primitives they share;
they change together, and only synth draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from maskkit.contract.labels import IMAGE_STEMS

STEMS = tuple(IMAGE_STEMS)  # mask1..mask5, incorrect_mask, normal
REFERENCE_WIDTH = 384  # geometry is designed at 384x512
MASK_COLOURS = (  # RGB, all far from skin tones: white, light blue, black, grey, pink, navy, yellow, mint
    (238, 238, 236), (140, 195, 240), (28, 28, 32), (140, 140, 148),
    (240, 150, 200), (40, 50, 110), (240, 225, 90), (150, 230, 200),
)
SHIFT = 4  # cv2 fixed-point bits: sub-pixel coordinates
ONE = 1 << SHIFT


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



@dataclass(frozen=True)
class Face:
    """Where one image's face lies on the layer: centre, half-axes, the reference unit `u` and the
    size of one output pixel (age lines are at least about that thick)."""

    cx: float
    cy: float
    ax: float
    ay: float
    u: float
    pixel: float


# --- primitives ---------------------------------------------------------------------------------


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64) * ONE).astype(np.int32).reshape(-1, 1, 2)


def _fixed(x: float, y: float) -> tuple[int, int]:
    """A point in cv2's fixed-point coordinates."""
    return int(x * ONE), int(y * ONE)


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

    def dot(self, x: float, y: float, radius: float, colour) -> None:
        """A filled circle on the image only (not part of the person mask)."""
        cv2.circle(self.img, _fixed(x, y), int(radius * ONE), colour, -1, cv2.LINE_AA, SHIFT)

    def oval(self, x: float, y: float, rx: float, ry: float, colour, thickness: int = -1) -> None:
        """An axis-aligned ellipse on the image only, filled (thickness -1) or outlined."""
        cv2.ellipse(self.img, _fixed(x, y), (int(rx * ONE), int(ry * ONE)), 0, 0, 360, colour, thickness,
                    cv2.LINE_AA, SHIFT)


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


def shade(colour, factor: float) -> tuple:
    return tuple(int(min(255.0, max(0.0, c * factor))) for c in colour)


def mix(a, b, t: float) -> tuple:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


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


# --- the face mask ------------------------------------------------------------------------------


def mask_outline(rng: np.random.Generator, f: Face, chin: float, state: str) -> tuple[np.ndarray, float, float, float]:
    """The mask's outline over nose and mouth (wear), below the nose or under the chin (incorrect);
    also its top, the height of its peak over the nose, and its bottom."""
    cx, cy, ax, ay = f.cx, f.cy, f.ax, f.ay
    if state == "wear":
        top_y, peak, bottom_y = cy - rng.uniform(0.03, 0.07) * ay, 0.08 * ay, cy + 1.04 * ay
    elif rng.random() < 0.7:  # below the nose, mouth covered
        top_y, peak, bottom_y = cy + rng.uniform(0.34, 0.42) * ay, 0.04 * ay, cy + 1.06 * ay
    else:  # under the chin
        top_y, peak, bottom_y = cy + rng.uniform(0.66, 0.76) * ay, 0.02 * ay, cy + 1.25 * ay
    outline = face_outline(cx, cy + 0.04 * ay, ax, ay * 1.04, chin, grow=1.06)
    pts = band(outline, lambda x: top_y - peak * np.clip(1 - ((x - cx) / ax) ** 2, 0, 1), bottom_y)
    return pts, top_y, peak, bottom_y


def mask_pattern(patch: np.ndarray, pattern: int, colour: tuple, top_y: float, peak: float, bottom_y: float,
                 cx: float, ax: float, u: float) -> None:
    """Draw pattern 0..4 (plain, pleats, dots, centre seam, two-tone band) on a patch filled with `colour`;
    coordinates are the patch's own."""
    h, w = patch.shape[:2]
    dark = shade(colour, 0.72) if sum(colour) > 150 else shade((90, 90, 95), 1.0)
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


def draw_mask(layer: Layer, rng: np.random.Generator, f: Face, chin: float, style: tuple, state: str) -> None:
    """A face mask in `style` (colour index, pattern): anti-aliased outline, pattern inside, ear straps."""
    colour_index, pattern = style
    colour = MASK_COLOURS[colour_index]
    pts, top_y, peak, bottom_y = mask_outline(rng, f, chin, state)
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
    mask_pattern(patch, pattern, colour, top_y - y0, peak, bottom_y - y0, f.cx - x0, f.ax, f.u)
    np.copyto(layer.img[y0:y1, x0:x1], patch, where=region[..., None].astype(bool))
    cx, cy, ax, ay = f.cx, f.cy, f.ax, f.ay
    strap = shade(colour, 0.85)
    for side in (-1, 1):
        ear = (cx + side * ax * 1.02, cy - 0.05 * ay)
        edge_top = (cx + side * ax * 0.9, top_y + 0.05 * ay)
        layer.line([edge_top, ear], strap, 2.5 * f.u)


# --- the person, step by step (back to front) ---------------------------------------------------


def draw_clothes_and_neck(layer: Layer, p: Person, f: Face) -> None:
    """Shoulders in the person's clothes, the neck, and the collar (none, V neck, shirt collar)."""
    cx, cy, ax, ay, u = f.cx, f.cy, f.ax, f.ay, f.u
    shadow = shade(p.skin, 0.78)
    shoulder_y = cy + ay * 1.55
    layer.poly(ellipse_points(cx, shoulder_y + 150 * u, 175 * u if p.gender == 0 else 150 * u, 165 * u), p.clothes)
    neck_w = (0.42 if p.gender == 0 else 0.34) * ax
    layer.poly([(cx - neck_w, cy + 0.5 * ay), (cx + neck_w, cy + 0.5 * ay),
                (cx + neck_w * 1.1, shoulder_y + 10 * u), (cx - neck_w * 1.1, shoulder_y + 10 * u)], shadow)
    if p.collar == 1:  # V neck
        layer.poly([(cx - neck_w * 1.4, shoulder_y), (cx + neck_w * 1.4, shoulder_y), (cx, shoulder_y + 45 * u)], shadow)
    elif p.collar == 2:  # shirt collar
        dark = shade(p.clothes, 0.6)
        layer.line([(cx - neck_w * 1.6, shoulder_y - 2 * u), (cx, shoulder_y + 30 * u), (cx + neck_w * 1.6, shoulder_y - 2 * u)],
                   dark, 4 * u)


def draw_hair_behind_head(layer: Layer, p: Person, f: Face) -> None:
    """Long hair or a bob: the part that falls behind the head and shoulders."""
    if p.hair_style not in ("long", "bob"):
        return
    cx, cy, ax, ay = f.cx, f.cy, f.ax, f.ay
    back = ellipse_points(cx, cy - 0.08 * ay, ax * 1.3, ay * 1.12)
    bottom = cy + p.hair_len * ay
    spread = 1.4 if p.hair_style == "long" else 1.22
    body = np.array([(cx - ax * 1.3, cy - 0.08 * ay), (cx + ax * 1.3, cy - 0.08 * ay),
                     (cx + ax * spread, bottom), (cx - ax * spread, bottom)])
    layer.poly(back, p.hair)
    layer.poly(body, p.hair)


def draw_ears_and_face(layer: Layer, p: Person, f: Face) -> None:
    cx, cy, ax, ay = f.cx, f.cy, f.ax, f.ay
    for side in (-1, 1):
        layer.poly(ellipse_points(cx + side * ax * 0.98, cy - 0.02 * ay, 0.16 * ax, 0.2 * ay, 24), shade(p.skin, 0.78))
    layer.poly(face_outline(cx, cy, ax, ay, p.chin), p.skin)


def draw_beard(layer: Layer, p: Person, f: Face) -> None:
    """A darker lower face (men with a beard only)."""
    if p.beard <= 0:
        return
    cx, cy, ax, ay = f.cx, f.cy, f.ax, f.ay
    beard = mix(p.skin, p.hair, p.beard)
    layer.poly(band(face_outline(cx, cy, ax, ay, p.chin, 1.0), cy + 0.35 * ay, cy + 2 * ay), beard, solid=False)


def draw_wrinkles(layer: Layer, p: Person, f: Face) -> None:
    """Age lines, more and darker with p.wrinkles: bags under the eyes (visible above a worn mask),
    forehead lines, nasolabial folds, crow's feet."""
    w = p.wrinkles
    if w <= 0.1:
        return
    colour = mix(p.skin, (90, 55, 45), 0.3 + 0.45 * w)
    fine = max(1.6 * f.u, 0.9 * f.pixel)  # thickness of age lines
    if w > 0.45:
        draw_eye_bags(layer, f, colour, fine)
    draw_forehead_lines(layer, f, int(round(1 + 3 * w)), colour, fine)
    if w > 0.35:
        draw_nasolabial_folds(layer, f, colour, fine * 1.2)
    if w > 0.55:
        draw_crows_feet(layer, f, colour, fine * 0.9)


def draw_eye_bags(layer: Layer, f: Face, colour: tuple, thickness: float) -> None:
    cx, cy, ax, ay = f.cx, f.cy, f.ax, f.ay
    for side in (-1, 1):
        ex = cx + side * 0.38 * ax
        layer.line([(ex - 0.14 * ax, cy - 0.05 * ay), (ex, cy - 0.01 * ay), (ex + 0.14 * ax, cy - 0.05 * ay)],
                   colour, thickness)


def draw_forehead_lines(layer: Layer, f: Face, count: int, colour: tuple, thickness: float) -> None:
    cx, cy, ax, ay = f.cx, f.cy, f.ax, f.ay
    for k in range(count):
        yk = cy - (0.42 + 0.09 * k) * ay
        xs = np.linspace(cx - 0.45 * ax, cx + 0.45 * ax, 9)
        layer.line(np.stack([xs, yk + 0.04 * ay * ((xs - cx) / ax) ** 2 * 4], 1), colour, thickness)


def draw_nasolabial_folds(layer: Layer, f: Face, colour: tuple, thickness: float) -> None:
    cx, cy, ax, ay = f.cx, f.cy, f.ax, f.ay
    for side in (-1, 1):
        layer.line([(cx + side * 0.42 * ax, cy + 0.18 * ay), (cx + side * 0.52 * ax, cy + 0.45 * ay),
                    (cx + side * 0.5 * ax, cy + 0.62 * ay)], colour, thickness)


def draw_crows_feet(layer: Layer, f: Face, colour: tuple, thickness: float) -> None:
    cx, cy, ax, ay = f.cx, f.cy, f.ax, f.ay
    for side in (-1, 1):
        ex = cx + side * 0.62 * ax
        for dy in (-0.06, 0.0, 0.06):
            layer.line([(ex, cy - 0.15 * ay + dy * ay * 0.5), (ex + side * 0.18 * ax, cy - 0.15 * ay + dy * ay)],
                       colour, thickness)


def draw_eyes_and_brows(layer: Layer, p: Person, f: Face) -> None:
    """Eyes (lashes for women) and eyebrows: thick and flat for men, thin and arched for women."""
    cx, cy, ax, ay, u = f.cx, f.cy, f.ax, f.ay, f.u
    brow = mix(p.hair, (40, 30, 25), 0.5 if p.gender == 0 else 0.3)
    for side in (-1, 1):
        ex, ey = cx + side * 0.38 * ax, cy - 0.15 * ay
        layer.oval(ex, ey, 0.17 * ax, 0.07 * ay, (245, 245, 245))
        layer.dot(ex, ey, 0.06 * ay, (40, 30, 25))
        if p.gender == 1:  # lashes
            layer.line([(ex - 0.17 * ax, ey), (ex, ey - 0.085 * ay), (ex + 0.17 * ax, ey)], (25, 20, 20), 2.2 * u)
        by = ey - (0.16 if p.gender == 0 else 0.2) * ay
        arch = 0.02 if p.gender == 0 else 0.06
        layer.line([(ex - 0.2 * ax, by + arch * ay), (ex, by - arch * ay), (ex + 0.22 * ax, by + arch * ay * 0.5)],
                   brow, (6 if p.gender == 0 else 2.5) * u)


def draw_nose_and_mouth(layer: Layer, p: Person, f: Face) -> None:
    cx, cy, ax, ay, u = f.cx, f.cy, f.ax, f.ay, f.u
    layer.poly([(cx, cy - 0.08 * ay), (cx + 0.16 * ax, cy + 0.24 * ay), (cx - 0.16 * ax, cy + 0.24 * ay)],
               shade(p.skin, 0.8), solid=False)
    for side in (-1, 1):
        layer.dot(cx + side * 0.06 * ax, cy + 0.23 * ay, 0.045 * ax, shade(p.skin, 0.4))
    mouth_w = (0.3 if p.gender == 0 else 0.26) * ax
    layer.oval(cx, cy + 0.5 * ay, mouth_w, (0.05 if p.gender == 0 else 0.08) * ay, p.lips)
    layer.line([(cx - mouth_w, cy + 0.5 * ay), (cx + mouth_w, cy + 0.5 * ay)], shade(p.lips, 0.6), 1.5 * u)


def draw_hair_on_top(layer: Layer, p: Person, f: Face, rng: np.random.Generator) -> None:
    """The hair cap down to the hairline (receding: a bare forehead in the middle), women's side
    strands over the temples, and a few streaks."""
    cx, cy, ax, ay, u = f.cx, f.cy, f.ax, f.ay, f.u
    hair = p.hair
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
    streak = shade(hair, 1.25 if grey > 120 else 0.7)
    for _ in range(6):
        x0 = cx + rng.uniform(-0.7, 0.7) * ax
        layer.line([(x0, cy - 1.0 * ay), (x0 + rng.uniform(-0.2, 0.2) * ax, hairline - 0.02 * ay)], streak, 1.2 * u)


def draw_earrings_and_glasses(layer: Layer, p: Person, f: Face) -> None:
    cx, cy, ax, ay, u = f.cx, f.cy, f.ax, f.ay, f.u
    if p.earrings:
        for side in (-1, 1):
            layer.dot(cx + side * 1.0 * ax, cy + 0.22 * ay, 0.06 * ax, (230, 200, 60))
    if p.glasses:
        for side in (-1, 1):
            layer.oval(cx + side * 0.38 * ax, cy - 0.15 * ay, 0.25 * ax, 0.14 * ay, (30, 30, 30), max(1, int(3 * u)))


def draw_person(p: Person, stem: str, rng: np.random.Generator, width: int, height: int,
                pixel: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The person (RGB) and its alpha on a black layer, before pose and background; wearing the mask
    that image `stem` shows.

    `pixel`: the size of one output pixel on this layer; age lines are at least about that thick so
    that age stays visible in tiny images.
    """
    u = min(width, height * 0.75) / REFERENCE_WIDTH
    layer = Layer(width, height)
    cx = width / 2 + rng.normal(0, 4) * u
    cy = height * 0.43 + rng.normal(0, 4) * u
    f = Face(cx, cy, p.face_w * u, p.face_h * u, u, pixel)
    draw_clothes_and_neck(layer, p, f)
    draw_hair_behind_head(layer, p, f)
    draw_ears_and_face(layer, p, f)
    draw_beard(layer, p, f)
    draw_wrinkles(layer, p, f)
    draw_eyes_and_brows(layer, p, f)
    draw_nose_and_mouth(layer, p, f)
    draw_hair_on_top(layer, p, f, rng)
    draw_earrings_and_glasses(layer, p, f)
    state = IMAGE_STEMS[stem]
    if state != "not_wear":
        style = p.mask_styles[STEMS.index(stem)] if state == "wear" else p.mask_styles[5]
        draw_mask(layer, rng, f, p.chin, style, state)
    return layer.img, layer.alpha
