"""File helpers shared by every subcommand: atomic writes, CSV in and out, the stderr console."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console

from maskkit.contract.errors import MaskkitError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Everything that is not data goes to stderr, so stdout stays a clean CSV stream.
console = Console(stderr=True, highlight=False, soft_wrap=True)


def is_hidden(name: str) -> bool:
    """macOS resource forks (`._x.jpg`) and other dot files."""
    return name.startswith(".")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(path.name)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Ctrl-C or an error leaves no half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_csv(df: pd.DataFrame, out: str | Path | None = None, float_format: str | None = None) -> None:
    """Write a table to `out` atomically, or to stdout when `out` is None or '-'."""
    if out is None or str(out) == "-":
        df.to_csv(sys.stdout, index=False, float_format=float_format, lineterminator="\n")
        sys.stdout.flush()
        return
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")


def read_csv(path: str | Path, required: Sequence[str] = (), fix: str = "", **kwargs) -> pd.DataFrame:
    """Read a CSV, turning a missing file, bad CSV or missing columns into a one-line MaskkitError."""
    path = Path(path)
    hint = f" ({fix})" if fix else ""
    if not path.is_file():
        raise MaskkitError(f"{path}: file not found{hint}")
    try:
        df = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaskkitError(f"{path}: not a readable CSV: {reason}{hint}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise MaskkitError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(required)}{hint}"
        )
    return df


def examples(items: Sequence[object], limit: int = 3) -> str:
    """'a, b, c (+4 more)': the first few items of a list for a one-line message."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
