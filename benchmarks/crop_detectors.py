"""Face detectors of `maskkit crop` compared on a folder of photos: detection rate and images per second.

Every detector runs through engine/faces.find_face, as `maskkit crop` calls it (the photo framed
by a grey border, the longer side at DETECT_SIDE), one image at a time on one CPU thread, on the same
sample of the folder's images (recursive, seeded). A detector that cannot load here (not installed,
no weights) is reported with its one-line reason instead of numbers. Run from the repository root:

    python benchmarks/crop_detectors.py PHOTOS [--limit 300] [--detectors mtcnn,dlib] [--weights yunet=FILE.onnx]

PHOTOS: e.g. real masked faces (Face-Mask-Detection's dataset/with_mask), a competition train/images
folder, or `maskkit synth` output for a smoke test (drawn faces are cartoons: the rates mean little).
Prints a Markdown table (detector, images, found, rate, images/s, note) on stdout.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import cv2
import torch

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import is_image
from maskkit.data.images import read_image
from maskkit.engine.faces import DETECTORS, find_face, load_detector


def sample(folder: Path, limit: int, seed: int) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
    random.Random(seed).shuffle(paths)
    return paths[:limit] if limit else paths


def measure(name: str, weights: str | None, images: list) -> dict:
    """Found faces and images per second of one detector over decoded images (decoding not timed)."""
    try:
        detector = load_detector(name, weights)
    except MaskkitError as exc:
        return {"detector": name, "images": len(images), "found": "", "rate": "", "images/s": "", "note": str(exc)}
    find_face(detector, images[0])  # warm-up: lazy initialisation is not the detector's speed
    start, found = time.perf_counter(), 0
    for image in images:
        found += find_face(detector, image) is not None
    seconds = time.perf_counter() - start
    return {"detector": name, "images": len(images), "found": found, "rate": f"{found / len(images):.3f}",
            "images/s": f"{len(images) / seconds:.1f}", "note": f"weights {weights}" if weights else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--limit", type=int, default=300, help="images sampled from the folder (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=FILE",
                        help="a detector's weights file, e.g. yunet=face_detection_yunet_2023mar.onnx")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    weights = dict(item.split("=", 1) for item in args.weights)
    paths = sample(args.photos, args.limit, args.seed)
    images = [image for image in (read_image(p) for p in paths) if image is not None]
    if not images:
        raise SystemExit(f"{args.photos}: no readable images")
    rows = [measure(name, weights.get(name), images) for name in args.detectors.split(",")]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
