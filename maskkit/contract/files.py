"""File helpers shared by every subcommand: atomic writes, CSV in and out, the stderr console.

Writing safely: `Inputs` (what one command call reads) checks every output target first, so an
output never lands on an input or on a file of another kind, and an output folder holds no link
that leads out of it; `atomic_path` (and `write_csv`, `write_bytes` on top of it) writes to a
temporary name, renames, and turns a failed write into a one-line `WriteError`; a target that is a
stream (a pipe, /dev/null, /dev/stdout: contract/streams.py) is written straight through instead.
`folder_lock` keeps a second run out of an output folder.

Over 400 lines because the write rule is one piece: the checks, the writers and the lock share the
error mapping and the temporary-name scheme, and splitting them would spread the rule over modules.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console

from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.streams import (STDIN, QuietStderr, StdoutGone, check_streams_once, data_stdout, is_stream,
                                      read_input, require_stdout)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Everything that is not data goes to stderr, so stdout stays a clean CSV stream; a closed or
# broken stderr (`2>&1 | head -1`) loses the messages, never the job.
console = Console(file=QuietStderr(), highlight=False, soft_wrap=True)


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
# Leftovers of atomic_path in a killed process: ".<name>.tmp<pid>.<random><suffix>" (the older
# ".<name>.tmp<pid><suffix>" too).
STALE_TEMP = re.compile(r"^\..+\.tmp\d+(\.[a-z0-9_]{8})?(\.[^.]*)?$")
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
    where = _named_output(path, exc)
    message = f"{where}: cannot write: {advice} ({os.strerror(exc.errno)})"
    return WriteError(message, MaskkitError.exit_code if bad_path else RunFailure.exit_code)


def _named_output(path: str | Path, exc: OSError) -> Path:
    """The file to name in a write error: the one the OS names when it is `path`, lies inside it or
    is a folder above it (not one of our hidden temporary names), else `path`. shutil.copyfile puts
    its *source* on the error, and a message must name the output, not the input."""
    target = Path(os.path.abspath(path))
    for name in (exc.filename, exc.filename2):
        if not isinstance(name, (str, bytes, os.PathLike)) or not name:
            continue
        named = Path(os.fsdecode(name))
        absolute = Path(os.path.abspath(named))
        related = absolute == target or target in absolute.parents or absolute in target.parents
        if related and not named.name.startswith("."):
            return named
    return Path(path)


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
    except RuntimeError as exc:  # torch.save on a full disk: "PytorchStreamWriter failed writing file",
        # "basic_ios::clear", or at the first write "[enforce fail at inline_container.cc] unexpected pos"
        signs = ("PytorchStreamWriter", "file write failed", "basic_ios::clear", "inline_container")
        if not any(sign in str(exc) for sign in signs):
            raise
        raise WriteError(f"{path}: cannot write: the write failed (disk full?); free some space", 1) from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Ctrl-C or an error leaves no half-written file under the final name; a write that fails
    (read-only, full disk, a folder in the way) becomes a one-line WriteError. A stream target
    (contract/streams.is_stream: a pipe, /dev/null, /dev/stdout) is never renamed over: the block
    writes a private temporary file, which is then appended to the stream (`into_stream`).
    """
    path = Path(path)
    if is_stream(path):
        with into_stream(path) as tmp:
            yield tmp
        return
    tmp = None
    try:
        with write_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = private_temp(path)
            yield tmp
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            if tmp is not None and tmp.is_file():
                tmp.unlink()


def private_temp(path: Path) -> Path:
    """A new empty file beside `path`, ".<name>.tmp<pid>.<random><suffix>": created O_EXCL (mkstemp), so
    no link planted at a guessable name is ever written through; its mode is what the umask gives a
    new file (mkstemp's 0600 would make every output private)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp{os.getpid()}.", suffix=path.suffix)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return Path(name)


def current_umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every thread a moment)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def into_stream(path: Path) -> Iterator[Path]:
    """Yield a private temporary file; when the block succeeds, append its bytes to the stream `path`
    (opened for appending: never read, truncated or renamed), so a failed command writes nothing
    into a pipe. A reader that went away is StdoutGone (a quiet exit); the rest are WriteErrors."""
    handle, name = tempfile.mkstemp(prefix=".maskkit-", suffix=path.suffix)
    os.close(handle)
    tmp = Path(name)
    try:
        with write_errors(path):
            yield tmp
            with open(tmp, "rb") as source, open(path, "ab") as stream:
                shutil.copyfileobj(source, stream)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise StdoutGone() from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_stdout(write) -> None:
    """Call `write(stream)` on stdout for data: closed -> one line, exit 2; full (/dev/full) -> one
    line, exit 1; its reader gone (`| head`) -> StdoutGone, a quiet exit 141."""
    with write_errors("standard output"), data_stdout() as stream:
        write(stream)


def write_csv(df: pd.DataFrame, out: str | Path | None = None, float_format: str | None = None,
              inputs: Inputs | None = None) -> None:
    """Write a table to `out` atomically (a stream straight through), or to stdout when `out` is
    None or '-'.

    With `inputs`, `out` is first checked against them (see Inputs.check). The temporary files a
    killed writer of the same target left are removed first (`remove_dead_temps`).
    """
    if out is None or str(out) == STDIN:
        write_stdout(lambda stream: df.to_csv(stream, index=False, float_format=float_format, lineterminator="\n"))
        return
    if inputs is not None:
        inputs.check(out, header=[str(c) for c in df.columns])
    remove_dead_temps(out)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")


def write_text(text: str, out: str | Path | None = None) -> None:
    """Write text to `out` like write_csv (atomically, a stream straight through), or to stdout."""
    if out is None or str(out) == STDIN:
        write_stdout(lambda stream: stream.write(text))
        return
    remove_dead_temps(out)
    with atomic_path(out) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes, inputs: Inputs | None = None, magic: bytes | None = None) -> None:
    """Write encoded bytes atomically; with `inputs`, check the target first (an existing file is
    replaced only when it starts with `magic`, by default the first 4 bytes of `data`).

    Images go through data/images.write_image, which encodes them and calls this."""
    if inputs is not None:
        inputs.check(path, magic=magic if magic is not None else data[:4])
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def process_alive(pid: int) -> bool:
    """True while process `pid` runs on this machine (a writer's temporary file or folder is then its own)."""
    if not 0 < pid < 2**22:  # above Linux's largest pid_max: no such process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead_temps(target: str | Path) -> int:
    """Delete `.<name>.tmp<pid>.<random><suffix>` files beside `target` whose process is gone (a writer
    killed with kill -9 while writing it); a live process's temporary file is left alone."""
    target = Path(target)
    if is_stream(target):
        return 0
    prefix = f".{target.name}.tmp"
    pattern = re.compile(r"(\d+)(\.[a-z0-9_]{8})?" + re.escape(target.suffix))
    removed = 0
    with contextlib.suppress(OSError):
        with os.scandir(target.parent) as entries:
            for entry in entries:
                found = entry.name.startswith(prefix) and pattern.fullmatch(entry.name[len(prefix):])
                if found and int(found[1]) != os.getpid() and not process_alive(int(found[1])):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed += 1
    return removed


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
        """Inputs from paths (None, '-' and missing paths are skipped; lists are flattened).

        A stream named twice (`-` twice, `-` and /dev/stdin) is refused here: it can be read once."""
        given: list[str | Path] = []
        for item in paths:
            if item is None:
                continue
            if isinstance(item, (str, Path)):
                item = [item]
            given.extend(p for p in item if p is not None)
        check_streams_once(given)
        flat = [Path(p) for p in given if str(p) != STDIN]
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
        if target is None:  # not given: the caller writes elsewhere, or to stdout (checked when written)
            return
        if str(target) == STDIN:
            require_stdout()
            return
        target = Path(target)
        clash = self._clash(target)
        if clash:
            raise MaskkitError(f"{target}: {what} {clash}; maskkit never writes over its inputs, choose another path")
        if is_stream(target):  # a pipe, /dev/null, /dev/stdout: written straight through, never read
            return
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
        escape = link_out_of(folder)
        if escape is not None:
            link, leads = escape
            raise MaskkitError(f"{link}: a symbolic link inside the {what} {folder} that leads out of it ({leads}); "
                               f"maskkit writes only inside {folder}: remove the link or choose another folder")
        return folder


def link_out_of(folder: Path) -> tuple[Path, str] | None:
    """The first symbolic link inside `folder` (at any depth, links not followed) that leads out of
    it, and where to; writing through it would write outside the folder. None when there is none."""
    if not folder.is_dir():
        return None
    root = folder.resolve()
    pending = [str(folder)]
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    try:
                        leads = Path(entry.path).resolve()
                    except (OSError, RuntimeError):  # a loop of links
                        return Path(entry.path), "a loop of links"
                    if leads != root and root not in leads.parents:
                        return Path(entry.path), str(leads)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
    return None


def files_in(folder: str | Path) -> list[Path]:
    """The files directly in a run folder: they are inputs, while a new file beside them harms nothing."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [folder]


# --- one run at a time per output folder -------------------------------------------------------

def open_lock(lock_path: Path, mode: int = 0o644) -> int:
    """Open (or create) a lock file, never through a link: a symbolic link or a hard-linked file planted
    at its name is refused with one line, so the pid written into it reaches no one else's file."""
    try:
        with write_errors(lock_path):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise MaskkitError(f"{lock_path}: is a symbolic link, not maskkit's lock; remove it, then re-run") from None
    info = os.fstat(fd)
    if info.st_nlink != 1 or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise MaskkitError(f"{lock_path}: is linked to another file (a hard link), not maskkit's lock; remove it, "
                           "then re-run")
    return fd


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
        fd = open_lock(lock_path)
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


def read_csv(path: str | Path, required: Sequence[str] = (), fix: str = "", data: bytes | None = None,
             **kwargs) -> pd.DataFrame:
    """Read a CSV, turning a missing file, bad CSV or missing columns into a one-line MaskkitError.

    `-` is standard input and any other stream (a pipe, /dev/stdin, `<(...)`) is read once, into
    memory (streams.read_input); `data` gives bytes already read from `path` (named in messages).
    """
    path = Path(path)
    hint = f" ({fix})" if fix else ""
    if data is None and is_stream(path):
        data = read_input(path)
    if data is not None and not data.strip():
        came = "nothing came on standard input" if str(path) == STDIN else "the stream was empty"
        raise MaskkitError(f"{path}: no CSV: {came}{hint}")
    if data is None and not path.is_file():
        raise MaskkitError(f"{path}: file not found{hint}")
    try:
        df = pd.read_csv(io.BytesIO(data) if data is not None else path, **kwargs)
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
