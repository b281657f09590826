"""One decoded image cache per machine: a memory-mapped uint8 file that every process maps read-only.

`shared_cache(paths, size_hw, mode)` returns the (N, H, W, 3) uint8 cache of `paths` decoded at
the working size `size_hw` (`loader.build_cache` decodes them) and its `valid` flags. The cache is
two files in a cache folder, named by a key: the sha256 of the format version, the working size
(what the input size and crop decide) and, for every image in order, its path and a digest of its
bytes (content, not size and mtime: an image edited in place gives a new key, never a stale cache):

    <folder>/<key>.u8     the pixels, N*H*W*3 bytes, row-major
    <folder>/<key>.json   {"version", "key", "shape", "invalid": [rows], "first_path", "pixels": [digest
                          of each PIXEL_BLOCK bytes], "complete": true, "seal": digest of the rest}

The header is written (atomically) after the pixels are flushed, so a cache without one, with
another key or shape, or whose pixels do not match their digests is partial, stale or damaged: it
is rebuilt. Nothing another user wrote is trusted: the folder is created owner-only (0700), and one
owned by someone else or writable by others (what anyone can pre-create as /dev/shm/maskkit) is
refused (`--cache auto` then uses a private cache, saying so); files are 0600, temporaries get
unpredictable names opened O_EXCL, the lock is opened O_NOFOLLOW, and no link is followed or mapped.
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
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, open_lock, process_alive
from maskkit.data.loader import build_cache
from maskkit.options import cpu_cores

FORMAT_VERSION = 2  # 2: content digests in the key, pixel digests in the header
PIXEL_BLOCK = 64 * 2**20  # bytes per pixel digest: blocks are checked in parallel threads
BUILDER_TEMP = re.compile(r"^\.[0-9a-f]{32}\.(u8|json)\.tmp(\d+)\.")  # a builder's temporary, with its pid
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


def file_digest(path: str | Path) -> str:
    """blake2b of a file's bytes ("missing" when it cannot be read: build_cache marks it invalid)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.blake2b(handle.read()).hexdigest()[:32]
    except OSError:
        return "missing"


def cache_key(paths: Sequence[str | Path], size_hw: Sequence[int]) -> str:
    """sha256 of the format, the working size and every image's (path, content digest), in order."""
    digest = hashlib.sha256(f"maskkit-cache {FORMAT_VERSION} {int(size_hw[0])}x{int(size_hw[1])}\n".encode())
    with ThreadPoolExecutor(max_workers=min(8, cpu_cores())) as pool:  # hashlib releases the GIL
        for path, content in zip(paths, pool.map(file_digest, paths, chunksize=64)):
            digest.update(f"{os.path.abspath(path)}\0{content}\n".encode())
    return digest.hexdigest()[:32]


def pixel_digests(path: Path) -> list[str]:
    """blake2b of each PIXEL_BLOCK bytes of a pixel file (read in parallel threads)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        def block(start: int) -> str:
            return hashlib.blake2b(os.pread(fd, PIXEL_BLOCK, start)).hexdigest()[:32]

        with ThreadPoolExecutor(max_workers=min(8, cpu_cores())) as pool:
            return list(pool.map(block, range(0, size, PIXEL_BLOCK)))
    finally:
        os.close(fd)


def trusted_folder(folder: Path) -> Path:
    """Create the cache folder owner-only, or refuse one that another user could write into."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = folder.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        whose = "owned by another user" if info.st_uid != os.geteuid() else "writable by other users"
        raise CacheFolderError(f"image cache folder {folder}: {whose}, so its files cannot be trusted; set "
                               "MASKKIT_CACHE_DIR (or MASKKIT_RAM_CACHE_DIR) to a folder of your own, or use --cache none")
    return folder


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
    """Hold `path` (fcntl, exclusive; blocks while another process builds this cache); a link planted
    there is refused (contract/files.open_lock), never followed."""
    try:
        fd = open_lock(path, 0o600)
    except MaskkitError as exc:
        raise CacheFolderError(f"image cache: {exc} (or use --cache none)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _own_file(path: Path) -> bool:
    """A regular file of this user's, not a link."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()


def _read_header(folder: Path, key: str, shape: tuple[int, ...], check_pixels: bool = True) -> dict | None:
    """The header when the cache `key` is complete and sound (`check_pixels`: the pixels match their
    digests), else None: partial, stale or damaged."""
    header_path, pixels = folder / f"{key}.json", folder / f"{key}.u8"
    if not (_own_file(header_path) and _own_file(pixels)):
        return None
    try:
        header = json.loads(header_path.read_text())
        size = pixels.stat().st_size
    except (OSError, ValueError):
        return None
    sound = (isinstance(header, dict) and header.get("complete") is True and header.get("key") == key
             and header.get("version") == FORMAT_VERSION and tuple(header.get("shape", ())) == shape
             and size == int(np.prod(shape)) and _rows(header.get("invalid"), shape[0])
             and isinstance(header.get("pixels"), list) and header.get("seal") == seal(header))
    if sound and check_pixels and header["pixels"] != pixel_digests(pixels):
        console.print(f"image cache {pixels}: its pixels do not match their digests; rebuilding it")
        return None
    return header if sound else None


def seal(header: dict) -> str:
    """A digest of the header's other fields: an edited header (rows marked invalid) is rebuilt."""
    fields = {k: v for k, v in header.items() if k != "seal"}
    return hashlib.blake2b(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _rows(invalid: object, n: int) -> bool:
    return isinstance(invalid, list) and all(type(i) is int and 0 <= i < n for i in invalid)


@contextlib.contextmanager
def _private_temp(folder: Path, name: str) -> Iterator[Path]:
    """A new 0600 file with an unpredictable name beside `name` (mkstemp: O_EXCL, so no planted link is
    followed), renamed onto FOLDER/name when the block succeeds, removed otherwise."""
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.tmp{os.getpid()}.")
    os.close(fd)
    try:
        yield Path(temp)
        os.replace(temp, folder / name)
    finally:
        Path(temp).unlink(missing_ok=True)


def _build(folder: Path, key: str, paths: Sequence[str | Path], shape: tuple[int, ...],
           threads: int | None, show_progress: bool | None) -> None:
    """Decode into `<key>.u8` (through a temporary name), then write the header: complete last."""
    (folder / f"{key}.json").unlink(missing_ok=True)
    with _private_temp(folder, f"{key}.u8") as temp:
        os.truncate(temp, int(np.prod(shape)))
        out = np.memmap(temp, dtype=np.uint8, mode="r+", shape=shape)
        _, valid = build_cache(paths, shape[1:3], threads=threads, show_progress=show_progress, out=out)
        out.flush()
        del out
        digests = pixel_digests(temp)
    header = {"version": FORMAT_VERSION, "key": key, "shape": list(shape),
              "invalid": np.flatnonzero(~valid).tolist(), "first_path": os.path.abspath(paths[0]) if paths else "",
              "pixels": digests, "complete": True}
    header["seal"] = seal(header)
    with _private_temp(folder, f"{key}.json") as temp:
        with open(temp, "w") as handle:
            handle.write(json.dumps(header))
            handle.flush()
            os.fsync(handle.fileno())


def remove_dead_builders_temps(folder: Path) -> int:
    """Delete the temporaries of builders that died (kill -9 mid-build) in a cache folder."""
    removed = 0
    for path in folder.glob(".*.tmp*"):
        match = BUILDER_TEMP.match(path.name)
        if match and not process_alive(int(match.group(2))) and _own_file(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def prune(folder: Path, keep: str = "") -> int:
    """Remove the caches in `folder` whose images are gone (their first path no longer exists), and the
    temporaries of dead builders."""
    removed = remove_dead_builders_temps(folder)
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
        trusted_folder(folder)
        header = _read_header(folder, key, shape)
        if header is None:
            with _locked(folder / f"{key}.lock"):
                header = _read_header(folder, key, shape)  # another process may have built it meanwhile
                if header is None:
                    prune(folder, keep=key)
                    _build(folder, key, paths, shape, threads, show_progress)
                    header = _read_header(folder, key, shape, check_pixels=False)  # just digested
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
           "disk_fits", "resolve_mode", "prune", "shared_cache", "trusted_folder"]
