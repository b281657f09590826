"""One decoded image cache per machine: a memory-mapped uint8 file that every process maps read-only.

`shared_cache(paths, size_hw, mode)` returns the (N, H, W, 3) uint8 cache of `paths` decoded at
the working size `size_hw` (`loader.build_cache` decodes them) and its `valid` flags. The cache is
two files in a cache folder, named by a key: the sha256 of the format version, the working size
(what the input size and crop decide) and, for every image in order, its path, byte size and
mtime, so a changed, added or moved image gives a new key (a new cache) and never a stale one:

    <folder>/<key>.u8     the pixels, N*H*W*3 bytes, row-major
    <folder>/<key>.json   {"version", "key", "shape", "invalid": [rows], "first_path", "complete": true}

The header is written (atomically) after the pixels are flushed, so a cache without one, with
another key or shape, or whose pixel file has the wrong size is partial or stale: it is rebuilt.
Building takes `<key>.lock` (fcntl, exclusive): the first process (a DDP rank, or one of several
fold runs) decodes, the others block on the lock and then map the finished file; a process killed
mid-build leaves no header, and its lock goes with it. The pages are shared by every process that
maps the file (the page cache, or tmpfs for `ram`): 8 ranks hold one copy, not 8.

Folders: `ram` -> $MASKKIT_RAM_CACHE_DIR or /dev/shm/maskkit (tmpfs: memory until removed or
reboot); `disk` -> $MASKKIT_CACHE_DIR or $XDG_CACHE_HOME/maskkit (~/.cache/maskkit). Caches whose
images are gone (their first path no longer exists) are removed when a new cache is built there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console
from maskkit.data.loader import build_cache

FORMAT_VERSION = 1
SHARED_MODES = ("ram", "disk")


def cache_bytes(n_images: int, size_hw: Sequence[int]) -> int:
    """Bytes a uint8 RGB cache of `n_images` at `size_hw` takes."""
    return int(n_images) * int(size_hw[0]) * int(size_hw[1]) * 3


def available_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable), 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class CacheFolderError(MaskkitError):
    """The cache folder cannot be created or written."""


def cache_folder(mode: str) -> Path:
    """The folder of `mode`'s caches (see the module docstring for the environment variables)."""
    if mode == "ram":
        return Path(os.environ.get("MASKKIT_RAM_CACHE_DIR") or "/dev/shm/maskkit")
    if mode == "disk":
        if os.environ.get("MASKKIT_CACHE_DIR"):
            return Path(os.environ["MASKKIT_CACHE_DIR"])
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maskkit"
    raise ValueError(f"no cache folder for mode {mode!r}")


def cache_key(paths: Sequence[str | Path], size_hw: Sequence[int]) -> str:
    """sha256 of the format, the working size and every image's (path, size, mtime), in order."""
    digest = hashlib.sha256(f"maskkit-cache {FORMAT_VERSION} {int(size_hw[0])}x{int(size_hw[1])}\n".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:  # unreadable now: build_cache marks it invalid; the key still names it
            digest.update(f"{os.path.abspath(path)}\0missing\n".encode())
    return digest.hexdigest()[:32]


def _free_bytes(folder: Path) -> int:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return 0


def ram_fits(n_images: int, size_hw: Sequence[int], budget_bytes: int | None = None) -> bool:
    """Whether a `ram` cache fits: within half the available memory and tmpfs's free space."""
    need = cache_bytes(n_images, size_hw)
    budget = available_memory() // 2 if budget_bytes is None else budget_bytes
    return need <= budget and need <= _free_bytes(cache_folder("ram"))


def disk_fits(n_images: int, size_hw: Sequence[int]) -> bool:
    """Whether a `disk` cache fits the cache folder's free space (with 1 GiB to spare)."""
    return cache_bytes(n_images, size_hw) + 2**30 <= _free_bytes(cache_folder("disk"))


def resolve_mode(mode: str, n_images: int, size_hw: Sequence[int]) -> str:
    """`ram`, `disk` or `none` for the requested `--cache` mode (see benchmarks/README.md for auto).

    auto -> disk when it fits, else none. `ram` that does not fit falls back to disk (saying so).
    """
    if mode == "none":
        return "none"
    if mode == "ram":
        if ram_fits(n_images, size_hw):
            return "ram"
        console.print(f"--cache ram: {cache_bytes(n_images, size_hw) / 2**30:.1f} GiB does not fit half the free "
                      f"memory or {cache_folder('ram')}; caching on disk instead")
        return "disk"
    if mode in ("disk", "auto"):
        if disk_fits(n_images, size_hw):
            return "disk"
        console.print(f"cache off: {cache_bytes(n_images, size_hw) / 2**30:.1f} GiB would not fit {cache_folder('disk')}")
        return "none"
    raise ValueError(f"unknown cache mode {mode!r}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # blocks while another process builds this cache
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_header(folder: Path, key: str, shape: tuple[int, ...]) -> dict | None:
    """The header when the cache `key` is complete and sound, else None (partial or stale)."""
    try:
        header = json.loads((folder / f"{key}.json").read_text())
        size = (folder / f"{key}.u8").stat().st_size
    except (OSError, ValueError):
        return None
    sound = (isinstance(header, dict) and header.get("complete") is True and header.get("key") == key
             and header.get("version") == FORMAT_VERSION and tuple(header.get("shape", ())) == shape
             and size == int(np.prod(shape)))
    return header if sound else None


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _build(folder: Path, key: str, paths: Sequence[str | Path], shape: tuple[int, ...],
           threads: int | None, show_progress: bool | None) -> None:
    """Decode into `<key>.u8` (through a temporary name), then write the header: complete last."""
    (folder / f"{key}.json").unlink(missing_ok=True)
    temp = folder / f".{key}.u8.tmp{os.getpid()}"
    try:
        out = np.memmap(temp, dtype=np.uint8, mode="w+", shape=shape)
        _, valid = build_cache(paths, shape[1:3], threads=threads, show_progress=show_progress, out=out)
        out.flush()
        del out
        os.replace(temp, folder / f"{key}.u8")
    finally:
        temp.unlink(missing_ok=True)
    header = {"version": FORMAT_VERSION, "key": key, "shape": list(shape),
              "invalid": np.flatnonzero(~valid).tolist(), "first_path": os.path.abspath(paths[0]) if paths else "",
              "complete": True}
    _write_atomic(folder / f"{key}.json", json.dumps(header).encode())


def prune(folder: Path, keep: str = "") -> int:
    """Remove the caches in `folder` whose images are gone (their first path no longer exists)."""
    removed = 0
    for header_path in folder.glob("*.json"):
        key = header_path.stem
        if key == keep:
            continue
        try:
            first = json.loads(header_path.read_text()).get("first_path", "")
        except (OSError, ValueError, AttributeError):
            continue
        if first and not os.path.exists(first):
            for suffix in (".u8", ".json", ".lock"):
                (folder / f"{key}{suffix}").unlink(missing_ok=True)
            removed += 1
    return removed


def shared_cache(paths: Sequence[str | Path], size_hw: Sequence[int], mode: str = "disk", folder: Path | None = None,
                 threads: int | None = None, show_progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cache, valid) as `build_cache` returns them, from the machine's shared cache file (mapped
    read-only), built first by whichever process gets there first. `mode`: ram or disk."""
    folder = Path(folder) if folder is not None else cache_folder(mode)
    shape = (len(paths), int(size_hw[0]), int(size_hw[1]), 3)
    if not len(paths):  # nothing to share (and an empty file cannot be mapped)
        return np.zeros(shape, dtype=np.uint8), np.ones(0, dtype=bool)
    key = cache_key(paths, size_hw)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        header = _read_header(folder, key, shape)
        if header is None:
            with _locked(folder / f"{key}.lock"):
                header = _read_header(folder, key, shape)  # another process may have built it meanwhile
                if header is None:
                    prune(folder, keep=key)
                    _build(folder, key, paths, shape, threads, show_progress)
                    header = _read_header(folder, key, shape)
    except OSError as exc:
        raise CacheFolderError(f"image cache folder {folder}: {exc.strerror or exc}; free space there, "
                               "set MASKKIT_CACHE_DIR to another folder, or use --cache none") from None
    if header is None:
        raise CacheFolderError(f"image cache {folder / key}.u8 could not be written whole; use --cache none")
    valid = np.ones(len(paths), dtype=bool)
    valid[header["invalid"]] = False
    # a plain ndarray view of the mapping: np.memmap's per-slice bookkeeping slows every image read
    return np.asarray(np.memmap(folder / f"{key}.u8", dtype=np.uint8, mode="r", shape=shape)), valid


__all__ = ["FORMAT_VERSION", "SHARED_MODES", "cache_bytes", "available_memory", "CacheFolderError", "cache_folder", "cache_key", "ram_fits",
           "disk_fits", "resolve_mode", "prune", "shared_cache"]
