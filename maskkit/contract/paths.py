"""The one path rule for paths read from a CSV cell (docs/formats.md, "Paths in CSV files").

A file named by a CSV (info.csv's ImageID, a manifest's path, a fixes target) must never lead a
command outside the data it was given: no `..` part anywhere, and where the path is relative to a
dataset folder (ImageID under DATA/eval/images) it is relative and, symlinks followed, stays inside
that folder. Run names (`train --name`) are one path component. Each breach is a one-line
MaskkitError naming the CSV, its line and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from maskkit.contract.errors import MaskkitError


def has_parent_part(text: str) -> bool:
    """True when a path written in a CSV climbs a folder (`..`, in / or \\ spelling)."""
    return ".." in PurePosixPath(str(text).replace("\\", "/")).parts


def is_absolute_text(text: str) -> bool:
    """True for /x, \\x, C:\\x or C:x: a path that ignores the folder it is read relative to."""
    text = str(text)
    return PurePosixPath(text.replace("\\", "/")).is_absolute() or bool(PureWindowsPath(text).drive)


def bad_path_cell(source: str | Path, line: int, column: str, value: object, rule: str) -> MaskkitError:
    return MaskkitError(f"{source}: line {line}: {column} {str(value)!r} {rule}; correct or remove the row")


def inside(root: str | Path, value: object, source: str | Path, line: int, column: str) -> Path:
    """`root / value` for a CSV cell naming a file under `root`: relative, without `..`, and (symlinks
    followed) resolving inside `root`; else a one-line MaskkitError naming `source` and `line`."""
    text = str(value)
    if "\0" in text:
        raise bad_path_cell(source, line, column, value, "holds a NUL byte, which no file name can")
    if is_absolute_text(text) or has_parent_part(text):
        raise bad_path_cell(source, line, column, value, f"must be a path relative to {root} (not absolute, no '..')")
    path = Path(root) / PurePosixPath(text.replace("\\", "/"))
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # a symbolic link loop (RuntimeError before Python 3.13)
        raise bad_path_cell(source, line, column, value, "is a symbolic link that loops") from None
    if not resolved.is_relative_to(Path(root).resolve()):
        raise bad_path_cell(source, line, column, value, f"leads outside {root} through a symbolic link")
    return path


def check_no_parent(values, source: str | Path, column: str, first_line: int = 2) -> None:
    """Every cell of a CSV column free of `..` (paths that may be absolute, as a manifest's)."""
    for offset, value in enumerate(values):
        if isinstance(value, str) and has_parent_part(value):
            raise bad_path_cell(source, first_line + offset, column, value,
                                "climbs folders with '..', which maskkit never follows")


# What reads as an escape in CSV text: a doubled backslash, or a backslash, x and two hex digits.
ESCAPE_LIKE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")
SHOWN_CHARS = 80  # the most of one user-given text an error message quotes


def as_text(path: str | Path) -> str:
    r"""A path as CSV text: itself when it is valid UTF-8 (the usual case), else its bytes with \xNN
    escapes for the bytes that are not (a latin-1 `caf\xe9.jpg` from a zip archive) and every
    backslash doubled. A valid name that already reads as an escape (holds \\ or \xNN literally)
    is written escaped too, so no two file names ever give one text."""
    text = str(path)
    try:
        text.encode("utf-8")
        if not ESCAPE_LIKE.search(text):
            return text
    except UnicodeEncodeError:
        pass
    return os.fsencode(text).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def shown(text: object, limit: int = SHOWN_CHARS) -> str:
    """User-given text (a path from stdin, a value from a file) as an error message quotes it: one line,
    control and undecodable characters escaped, at most `limit` characters (then "...")."""
    text = as_text(str(text))
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit * 4])
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run_name(name: str) -> str:
    """A run name (`train --name`): one path component, so the run stays inside --runs-dir."""
    text = str(name)
    if (not text or text in (".", "..") or "/" in text or "\\" in text or is_absolute_text(text)
            or text != text.strip() or "\0" in text):
        raise MaskkitError(f"--name {text!r}: a run name is one folder name (no '/', '\\' or '..'), "
                           "e.g. --name resnet18-f0; put the runs elsewhere with --runs-dir")
    return text


def study_name(name: str) -> str:
    """A study name (`tune --study`): one path component, as a run name, so RUNS_DIR/tune-NAME stays
    inside --runs-dir."""
    try:
        return run_name(name)
    except MaskkitError:
        raise MaskkitError(f"--study {str(name)!r}: a study name is one folder name (no '/', '\\' or '..'), "
                           "e.g. --study s1; put the study elsewhere with --runs-dir") from None
