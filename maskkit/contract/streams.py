"""Standard streams and paths that are not regular files (docs/formats.md, "Streams").

Inputs: `-` is standard input, and a path that exists but is neither a regular file nor a folder
(a pipe, a FIFO, /dev/stdin, the /dev/fd/N of `<(...)`) is a stream; `read_input` reads either
once, into memory. Outputs: `is_stream` tells files.py which targets are written straight through.
Messages: `QuietStderr` and `say` never let a closed or broken stderr stop a job. Data on stdout:
`data_stdout` turns a closed stdout into a one-line error and a reader that went away into
`StdoutGone`, which `cli.main` ends quietly with exit 141, as other Unix tools do.

Only the standard library and errors.py are imported: cli.py imports this module at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from maskkit.contract.errors import MaskkitError

STDIN = "-"
# A folder of open file descriptors: /dev/stdout -> /proc/self/fd/1, /dev/fd/63 of `<(...)`.
DESCRIPTOR_FOLDER = re.compile(r"^(/proc/(self|\d+)/fd|/dev/fd)$")


class StdoutGone(Exception):
    """The reader of standard output (or of a stream given to -o) went away, as `| head` does.

    Not an OSError, so click's own broken-pipe handling (exit 1) never sees it; cli.main exits 141.
    """

    exit_code = 141  # 128 + SIGPIPE, what `cat`, `seq` and `yes` exit with under `set -o pipefail`


def names_descriptor(path: str | Path) -> bool:
    """True for a name of an open file descriptor (/dev/stdout, /dev/fd/3, /proc/self/fd/1), even
    when the descriptor is a regular file: it must be written through, never renamed over."""
    current = os.path.abspath(path)
    for _ in range(40):  # a chain of links; the OS gives up after 40 too
        if DESCRIPTOR_FOLDER.match(os.path.realpath(os.path.dirname(current))):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.join(os.path.dirname(current), os.readlink(current))
    return False


def is_stream(path: str | Path) -> bool:
    """`-`, or an existing path that is not a folder and either not a regular file (pipe, FIFO,
    character device such as /dev/null) or the name of an open descriptor (/dev/stdout)."""
    if str(path) == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing (a new file), or a name the OS refuses
        return False
    if stat.S_ISDIR(mode):
        return False
    return not stat.S_ISREG(mode) or names_descriptor(path)


def _identity(path: str | Path) -> tuple:
    """What a stream is: the same pipe reached as `-` and as /dev/stdin has one identity."""
    try:
        info = os.fstat(0) if str(path) == STDIN else os.stat(path)
    except OSError:
        return (str(path),)
    return (info.st_dev, info.st_ino)


def check_streams_once(paths: Iterable[str | Path]) -> None:
    """Refuse (exit 2) a command call that names one stream twice (`-` twice, or `-` and /dev/stdin):
    a stream can be read only once. /dev/null and other character devices may repeat."""
    seen: dict[tuple, str] = {}
    for path in paths:
        if not is_stream(path) or (str(path) != STDIN and stat.S_ISCHR(_mode(path))):
            continue
        key = _identity(path)
        if key in seen:
            again = "given twice" if seen[key] == str(path) else f"the same stream as {seen[key]}"
            raise MaskkitError(f"{path}: {again}, and a stream can be read only once per command; "
                               "save it to a file first (cat > in.csv) and pass the file")
        seen[key] = str(path)


def _mode(path: str | Path) -> int:
    try:
        return os.fstat(0).st_mode if str(path) == STDIN else os.stat(path).st_mode
    except OSError:
        return 0


def read_input(path: str | Path) -> bytes:
    """All bytes of an input file or stream (`-` is standard input), read once; one line on failure."""
    try:
        if str(path) == STDIN:
            if sys.stdin is None:
                raise MaskkitError("-: standard input is closed; pipe a file into the command or name the file")
            return sys.stdin.buffer.read()
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise MaskkitError(f"{path}: cannot read: {exc.strerror or exc}") from None


# --- the message stream ------------------------------------------------------------------------

def _stderr() -> TextIO:
    """sys.stderr as it is now; under a live rich display (which puts a proxy there that prints
    through the console) the stream behind the proxy, or writes would loop back into the console."""
    return getattr(sys.stderr, "rich_proxied_file", sys.stderr)


class QuietStderr:
    """sys.stderr for messages (looked up on every call, so redirections and test captures apply)
    that swallows a closed or broken stream: a message that cannot be shown never stops the job."""

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            _stderr().write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            _stderr().flush()

    def isatty(self) -> bool:
        try:
            return _stderr().isatty()
        except (OSError, ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        return _stderr().fileno()

    @property
    def encoding(self) -> str:
        return getattr(_stderr(), "encoding", None) or "utf-8"


def say(message: str) -> None:
    """One line on stderr, unless stderr is closed or broken."""
    QuietStderr().write(message + "\n")
    QuietStderr().flush()


def guard_descriptors() -> None:
    """Open /dev/null on a closed descriptor 0, 1 or 2 (`>&-`, `2>&-`): otherwise the next file
    opened gets that number, and a library writing to "stderr" would write into it. Python has
    already set sys.stdout (or sys.stderr) to None for it, so a closed stdout is still reported."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:  # not the lowest free number: another one is closed too
                    os.dup2(null, fd)
                    os.close(null)


def settle_streams() -> None:
    """Point stdout or stderr at /dev/null when it can no longer take the bytes it still holds, so
    the interpreter's last flush neither prints 'Exception ignored' nor turns the exit code into 120."""
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)


# --- the data stream ---------------------------------------------------------------------------

def require_stdout() -> None:
    """Refuse (exit 2) to send data to a standard output that is closed (`>&-`)."""
    if sys.stdout is None:
        raise MaskkitError("standard output is closed (>&-): the data has nowhere to go; "
                           "redirect it (> out.csv) or name a file with -o")


@contextlib.contextmanager
def data_stdout() -> Iterator[TextIO]:
    """sys.stdout for data, flushed at the end: closed -> MaskkitError, reader gone -> StdoutGone;
    other failures (a full /dev/full) are left to the caller, as OSError."""
    require_stdout()
    try:
        yield sys.stdout
        sys.stdout.flush()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise StdoutGone() from None
        raise
