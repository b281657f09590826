"""An output folder that mirrors an input tree (`segment OUT`, `crop OUT`): what to process, what to copy.

IN's images are processed into OUT under the same relative paths; its other files (CSVs...) are
copied, so every command works on OUT as on IN (docs/formats.md, "Segment output", "Crop output").
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import atomic_path, is_hidden, is_image


@dataclass(frozen=True)
class Layout:
    """What to do with IN's files: images to process and other files to copy (relative paths)."""

    images: list[Path]
    copies: list[Path]


def image_dirs(root: Path) -> list[Path] | None:
    """The competition layout's image folders under IN, or None for a plain image folder."""
    def is_split(folder: Path) -> bool:
        return (folder / "train.csv").is_file() or (folder / "info.csv").is_file()

    if is_split(root):
        return [root / "images"]
    folders = [root / name / "images" for name in ("train", "eval") if is_split(root / name)]
    return folders or None


def scan(root: Path, skip: Sequence[str] = ()) -> Layout:
    """IN's files, hidden ones (`._x.jpg`, dot folders) and the top-level files named in `skip` left out.

    In the competition layout only the images under `images/` are processed (a `masks/` folder
    beside them is copied as it is); in a plain folder every image is.
    """
    dirs = image_dirs(root)
    images, copies = [], []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not is_hidden(d))
        here = Path(folder)
        for name in sorted(files):
            if is_hidden(name):
                continue
            path = here / name
            rel = path.relative_to(root)
            if path.is_symlink() and not path.exists():  # a loop (ln -s x x) or a link to nothing
                raise MaskkitError(f"{path}: a symbolic link that leads nowhere (it loops or its target is gone); "
                                   "remove it or point it at a file, then re-run")
            inside = dirs is None or any(d == here or d in here.parents for d in dirs)
            if is_image(path) and inside:
                images.append(rel)
            elif rel.as_posix() not in skip:
                copies.append(rel)
    return Layout(sorted(images, key=Path.as_posix), sorted(copies, key=Path.as_posix))


def copy_files(src: Path, out: Path, copies: Sequence[Path], overwrite: bool, skip_under: Path | None = None) -> int:
    """Copy IN's non-image files (CSVs...) to OUT unless an identical copy is there (nor under
    `skip_under`, resolved); returns how many were copied."""
    copied = 0
    for rel in copies:
        source, target = src / rel, out / rel
        if skip_under is not None and skip_under in target.resolve().parents:
            continue
        stat = source.stat()
        if not overwrite and target.is_file():
            have = target.stat()
            if have.st_size == stat.st_size and have.st_mtime_ns == stat.st_mtime_ns:
                continue
        with atomic_path(target) as tmp:
            shutil.copy2(source, tmp)
        copied += 1
    return copied
