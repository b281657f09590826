"""A portrait-style stand-in of a realfaces build: every face crop placed in a 384x512 photo.

The realfaces builds (../shared/realfaces/build.py) are UTKFace crops, where the face fills the
frame; a competition photo is a 384x512 portrait where the face fills about half of the height and
the rest is hair, clothes and wall. This makes the second kind from the first, so `maskkit crop`
can be measured against `--crop competition`. It is a stand-in, not the real photos. How:
- background: a vertical two-colour gradient (random wall colours) plus low-frequency grey noise;
- a torso: a filled ellipse in a random clothes colour under the face;
- the face: the 200x200 crop scaled to 230-290 px, centred at x 192 +- 25 and y 215 +- 25 px, blended
  in through a feathered ellipse (no hard square edge for a model to find);
- per image, a random generator seeded by the image's path, so a re-run draws the same photo.
train/ (folders and train.csv) and eval/ (info.csv, truth.csv) are mirrored; nothing is written
inside DATA. Never commit the output (UTKFace is for non-commercial research only).

  python benchmarks/realfaces_portraits.py /work/rf/clean /work/rf/portrait
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 384, 512


def seeded(name: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha1(name.encode()).hexdigest()[:12], 16))


def background(rng: np.random.Generator) -> np.ndarray:
    top, bottom = rng.integers(60, 235, 3), rng.integers(60, 235, 3)
    ramp = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]
    image = top * (1 - ramp) + bottom * ramp + np.zeros((HEIGHT, WIDTH, 3))
    noise = cv2.resize(rng.normal(0, 18, (8, 6)).astype(np.float32), (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    image = image + noise[:, :, None]
    return np.clip(image, 0, 255).astype(np.uint8)


def portrait(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = background(rng)
    clothes = tuple(int(c) for c in rng.integers(20, 230, 3))
    cx, cy = int(WIDTH / 2 + rng.integers(-25, 26)), int(215 + rng.integers(-25, 26))
    side = int(rng.integers(230, 291))
    cv2.ellipse(image, (cx, cy + side // 2 + 160), (int(side * 0.85), 170), 0, 0, 360, clothes, -1)
    face = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    alpha = np.zeros((side, side), np.float32)
    cv2.ellipse(alpha, (side // 2, side // 2), (int(side * 0.46), int(side * 0.49)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), side * 0.04)[:, :, None]
    x0, y0 = cx - side // 2, cy - side // 2
    xs, ys = slice(max(x0, 0), min(x0 + side, WIDTH)), slice(max(y0, 0), min(y0 + side, HEIGHT))
    fx, fy = slice(xs.start - x0, xs.stop - x0), slice(ys.start - y0, ys.stop - y0)
    region = image[ys, xs].astype(np.float32)
    image[ys, xs] = (alpha[fy, fx] * face[fy, fx] + (1 - alpha[fy, fx]) * region).astype(np.uint8)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out}: exists and is not empty")
    images = sorted(args.data.glob("train/images/*/*.jpg")) + sorted(args.data.glob("eval/images/*.jpg"))
    for source in images:
        relative = source.relative_to(args.data)
        target = args.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        photo = portrait(cv2.imread(str(source)), seeded(str(relative)))
        cv2.imwrite(str(target), photo, [cv2.IMWRITE_JPEG_QUALITY, 92])
    for table in ("train/train.csv", "eval/info.csv", "eval/truth.csv"):
        if (args.data / table).exists():
            shutil.copyfile(args.data / table, args.out / table)
    print(f"{len(images)} portraits -> {args.out}")


if __name__ == "__main__":
    main()
