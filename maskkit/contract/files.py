"""File helpers shared by every subcommand: atomic writes, CSV in and out, the stderr console.

Writing safely: `Inputs` (what one command call reads) checks every output target first, so an
output never lands on an input or on a file of another kind; `atomic_path` (and `write_csv`,
`write_bytes` on top of it) writes to a temporary name, renames, and turns a failed write into a
one-line `WriteError`; `folder_lock` keeps a second run out of an output folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console

from maskkit.contract.errors import MaskkitError, RunFailure

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Everything that is not data goes to stderr, so stdout stays a clean CSV stream.
console = Console(stderr=True, highlight=False, soft_wrap=True)


def is_hidden(name: str) -> bool:
    """macOS resource forks (`._x.jpg`) and other dot files."""
    return name.startswith(".")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(path.name)


# errno -> (is the path's fault, what to tell the user). A bad path is exit 2; the rest exit 1.
WRITE_ERRORS = {
    errno.EROFS: (True, "read-only file system; write somewhere else"),
    errno.EACCES: (True, "permission denied; write somewhere you may write"),
    errno.EPERM: (True, "operation not permitted; write somewhere you may write"),
    errno.EISDIR: (True, "is a folder; name a file"),
    errno.ENOTDIR: (True, "a parent of this path is a file, not a folder; choose another path"),
    errno.EEXIST: (True, "a parent of this path is a file, not a folder; choose another path"),
    errno.ENAMETOOLONG: (True, "file name too long; choose a shorter one"),
    errno.ENOSPC: (False, "no space left on the device; free some space"),
    errno.EDQUOT: (False, "disk quota exceeded; free some space"),
    errno.EFBIG: (False, "file too large for this file system or limit"),
    errno.EIO: (False, "input/output error of the device"),
}
# Leftovers of atomic_path in a killed process: ".<name>.tmp<pid><suffix>".
STALE_TEMP = re.compile(r"^\..+\.tmp\d+(\.[^.]*)?$")
LOCK_FILE = ".maskkit.lock"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class WriteError(MaskkitError, OSError):
    """A write that failed for a reason the user can act on: one line naming the path and the cause.

    Still an OSError, so code that already handles a failed write of one item (segment's images)
    keeps doing so; exit 2 when the path is bad (read-only, a folder...), 1 when it is not (disk full).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __str__(self) -> str:
        return str(self.args[0])


def write_error(path: str | Path, exc: OSError) -> WriteError | None:
    """The one-line error of a failed write, or None when `exc` is not a write problem (e.g. a missing source)."""
    if isinstance(exc, WriteError):
        return exc
    known = WRITE_ERRORS.get(exc.errno or 0)
    if known is None:
        return None
    bad_path, advice = known
    named = Path(str(exc.filename)) if exc.filename else None
    # The file the OS names, unless it is one of our hidden temporary names: then the target.
    where = named if named is not None and not any(part.startswith(".") for part in named.parts) else path
    message = f"{where}: cannot write: {advice} ({os.strerror(exc.errno)})"
    return WriteError(message, MaskkitError.exit_code if bad_path else RunFailure.exit_code)


@contextlib.contextmanager
def write_errors(path: str | Path) -> Iterator[None]:
    """Turn an OSError of a write under `path` (read-only, full disk, folder...) into a WriteError."""
    try:
        yield
    except OSError as exc:
        error = write_error(path, exc)
        if error is None:
            raise
        raise error from None
    except RuntimeError as exc:  # torch.save on a full disk: "PytorchStreamWriter failed writing file", "basic_ios::clear"
        if not any(sign in str(exc) for sign in ("PytorchStreamWriter", "file write failed", "basic_ios::clear")):
            raise
        raise WriteError(f"{path}: cannot write: the write failed (disk full?); free some space", 1) from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Ctrl-C or an error leaves no half-written file under the final name; a write that fails
    (read-only, full disk, a folder in the way) becomes a one-line WriteError.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        with write_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            if tmp.is_file():
                tmp.unlink()


def write_csv(df: pd.DataFrame, out: str | Path | None = None, float_format: str | None = None,
              inputs: Inputs | None = None) -> None:
    """Write a table to `out` atomically, or to stdout when `out` is None or '-'.

    With `inputs`, `out` is first checked against them (see Inputs.check).
    """
    if out is None or str(out) == "-":
        df.to_csv(sys.stdout, index=False, float_format=float_format, lineterminator="\n")
        sys.stdout.flush()
        return
    if inputs is not None:
        inputs.check(out, header=[str(c) for c in df.columns])
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")


def write_bytes(path: str | Path, data: bytes, inputs: Inputs | None = None, magic: bytes | None = None) -> None:
    """Write encoded bytes atomically; with `inputs`, check the target first (an existing file is
    replaced only when it starts with `magic`, by default the first 4 bytes of `data`).

    Images go through data/images.write_image, which encodes them and calls this."""
    if inputs is not None:
        inputs.check(path, magic=magic if magic is not None else data[:4])
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> int:
    """Delete the temporary files killed runs left in `folder` (call it while holding folder_lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")
    removed = 0
    for path in found:
        if path.is_file() and STALE_TEMP.match(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# --- what a command may write ------------------------------------------------------------------

def _first_line(path: Path, limit: int = 65536) -> str:
    with open(path, "rb") as handle:
        return handle.readline(limit).decode("utf-8", "replace").strip().lstrip("\ufeff")


def _below_a_file(path: Path) -> Path | None:
    """The existing ancestor of `path` that is a file (so nothing can be created under it), if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


@dataclass(frozen=True)
class Inputs:
    """What one command call reads: the files and folders its outputs must never land on.

    Passed explicitly to the checks and writers of that call (no module state): `check` refuses a
    target that is an input (also through another name: symlink, hard link), lies inside an input
    folder (a dataset, a run folder), is a folder, lies below a file, or is an existing file of
    another kind than the command writes (so `-o preds.csv` can be re-run, `-o notes.txt` cannot).
    """

    files: tuple[Path, ...] = ()
    folders: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        # Lookups by resolved path and by (device, inode): O(1) per check, even for thousands of images.
        by_path = {f.resolve(): f for f in self.files}
        by_inode = {}
        for file in self.files:
            with contextlib.suppress(OSError):
                info = file.stat()
                by_inode[(info.st_dev, info.st_ino)] = file
        object.__setattr__(self, "_by_path", by_path)
        object.__setattr__(self, "_by_inode", by_inode)
        object.__setattr__(self, "_folders", tuple((f.resolve(), f) for f in self.folders))

    @classmethod
    def of(cls, *paths: str | Path | Iterable[str | Path] | None) -> Inputs:
        """Inputs from paths (None, '-' and missing paths are skipped; lists are flattened)."""
        flat: list[Path] = []
        for item in paths:
            if item is None:
                continue
            if isinstance(item, (str, Path)):
                item = [item]
            flat.extend(Path(p) for p in item if p is not None and str(p) != "-")
        files = tuple(p for p in flat if p.is_file())
        folders = tuple(p for p in flat if p.is_dir())
        return cls(files, folders)

    def _clash(self, target: Path) -> str | None:
        resolved = target.resolve()
        for inside, folder in self._folders:
            if resolved == inside:
                return f"is the input folder {folder}"
            if inside in resolved.parents:
                return f"lies inside the input folder {folder}"
        if resolved in self._by_path:
            return f"is the input {self._by_path[resolved]}"
        with contextlib.suppress(OSError):
            info = target.stat()
            same = self._by_inode.get((info.st_dev, info.st_ino))
            if same is not None:
                return f"is the input {same} under another name"
        return None

    def check(self, target: str | Path | None, *, header: Sequence[str] | None = None,
              magic: bytes | None = None, what: str = "output") -> None:
        """Refuse (MaskkitError, exit 2) a file target that would destroy an input or a file of another kind.

        An existing file is replaced only when it is of the kind written: a CSV whose header line is
        `header`, or a file starting with `magic` (e.g. PNG's signature).
        """
        if target is None or str(target) == "-":
            return
        target = Path(target)
        clash = self._clash(target)
        if clash:
            raise MaskkitError(f"{target}: {what} {clash}; maskkit never writes over its inputs, choose another path")
        blocker = _below_a_file(target)
        if blocker is not None:
            raise MaskkitError(f"{target}: {what} lies below {blocker}, which is a file; choose another path")
        if target.is_dir():
            raise MaskkitError(f"{target}: {what} is a folder; name a file inside it, e.g. {target / 'out.csv'}")
        if not target.exists():
            return
        kind = ""
        try:
            if header is not None:
                kind = f"a CSV with the header {','.join(header)[:60]}"
                if _first_line(target) == ",".join(header):
                    return
            elif magic is not None:
                kind = "a file of the kind written"
                with open(target, "rb") as handle:
                    if handle.read(len(magic)) == magic:
                        return
        except OSError:
            pass
        raise MaskkitError(f"{target}: exists and is not {kind or 'a file this command writes'}; "
                           "maskkit only replaces its own kind of output: delete it or choose another path")

    def check_folder(self, folder: str | Path, what: str = "output folder") -> Path:
        """Refuse an output folder that is or lies inside an input folder, holds an input, or is a file."""
        folder = Path(folder)
        clash = self._clash(folder)
        if clash:
            raise MaskkitError(f"{folder}: {what} {clash}; maskkit never writes into its inputs, choose another folder")
        resolved = folder.resolve()
        for inside, file in self._by_path.items():
            if resolved in inside.parents:
                raise MaskkitError(f"{folder}: {what} holds the input {file}; choose another folder")
        if folder.exists() and not folder.is_dir():
            raise MaskkitError(f"{folder}: {what} exists and is a file; name a folder")
        blocker = _below_a_file(folder)
        if blocker is not None:
            raise MaskkitError(f"{folder}: {what} lies below {blocker}, which is a file; choose another path")
        return folder


def files_in(folder: str | Path) -> list[Path]:
    """The files directly in a run folder: they are inputs, while a new file beside them harms nothing."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [folder]


# --- one run at a time per output folder -------------------------------------------------------

@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder (created if needed) for one run of `command`.

    fcntl.flock on FOLDER/.maskkit.lock, which records the holder's pid; a second run exits 2
    naming that process. The kernel drops the lock when its process dies, so the lock file of a
    killed run is simply taken over.
    """
    folder = Path(folder)
    lock_path = folder / LOCK_FILE
    created = [f for f in (folder, *folder.parents) if not f.exists()]  # deepest first
    with write_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
    while True:
        with write_errors(lock_path):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            os.close(fd)
            pid = holder[0] if holder else "?"
            who = f"process {pid}" + (f" ({' '.join(holder[1:])})" if len(holder) > 1 else "")
            raise MaskkitError(f"{folder}: in use by another maskkit run, {who}; wait for it to finish "
                               f"or stop it (kill {pid}), then re-run") from None
        # The file may have been unlinked by the previous holder between our open and flock: retry.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} maskkit {command}\n".encode(), 0)
        yield folder
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)
        with contextlib.suppress(OSError):  # a run that failed before writing anything leaves no empty folders
            for made in created:
                made.rmdir()


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
