"""The shared image cache (data/cache.py): built once per machine, mapped read-only by every
process, partial or stale caches rebuilt, and training reads the same pixels as without it."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maskkit.data import cache as shared
from maskkit.data.loader import build_cache
from test_loader import _draw

WORK = (40, 32)


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return [_draw(tmp_path / f"img{i:02d}.jpg", i) for i in range(10)]


@pytest.fixture
def builds(monkeypatch, tmp_path) -> Path:
    """A file with one line per cache build (forked processes inherit the counting)."""
    log = tmp_path / "builds.log"
    original = shared.build_cache

    def counted(*args, **kwargs):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return original(*args, **kwargs)

    monkeypatch.setattr(shared, "build_cache", counted)
    return log


def build_count(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_built_once_then_mapped_read_only_with_the_private_caches_pixels(images, tmp_path, builds):
    folder = tmp_path / "caches"
    first, valid = shared.shared_cache(images, WORK, folder=folder)
    again, _ = shared.shared_cache(images, WORK, folder=folder)
    private, private_valid = build_cache(images, WORK)
    assert build_count(builds) == 1  # the second call mapped the finished file
    assert np.array_equal(first, private) and np.array_equal(again, private) and valid.all() and private_valid.all()
    assert not again.flags.writeable and not again.flags.owndata  # a read-only view of the mapped file
    header = json.loads(next(folder.glob("*.json")).read_text())
    assert header["complete"] is True and header["shape"] == [len(images), *WORK, 3]


def _open_from_a_process(args) -> str:
    images, folder = args
    cache, _ = shared.shared_cache(images, WORK, folder=folder)
    return str(int(cache.sum()))


def test_concurrent_processes_build_it_once_and_see_the_same_pixels(images, tmp_path, builds):
    folder = tmp_path / "caches"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        sums = pool.map(_open_from_a_process, [(images, folder)] * 3)
    assert build_count(builds) == 1  # one process decoded; the others waited on the lock and mapped it
    assert len(set(sums)) == 1 and int(sums[0]) == int(build_cache(images, WORK)[0].sum())


def test_partial_and_stale_caches_are_rebuilt(images, tmp_path, builds):
    folder = tmp_path / "caches"
    shared.shared_cache(images, WORK, folder=folder)
    key = shared.cache_key(images, WORK)
    (folder / f"{key}.json").unlink()  # killed before the header ("complete") was written
    shared.shared_cache(images, WORK, folder=folder)
    with open(folder / f"{key}.u8", "r+b") as handle:  # truncated pixels
        handle.truncate(100)
    cache, _ = shared.shared_cache(images, WORK, folder=folder)
    assert build_count(builds) == 3 and np.array_equal(cache, build_cache(images, WORK)[0])
    header = json.loads((folder / f"{key}.json").read_text())
    (folder / f"{key}.json").write_text(json.dumps({**header, "complete": False}))
    shared.shared_cache(images, WORK, folder=folder)
    assert build_count(builds) == 4

    _draw(images[3], 99)  # an image replaced: another key, the new pixels
    os.utime(images[3], ns=(1, 1))
    assert shared.cache_key(images, WORK) != key
    cache, _ = shared.shared_cache(images, WORK, folder=folder)
    assert build_count(builds) == 5 and np.array_equal(cache[3], build_cache(images[3:4], WORK)[0][0])
    assert shared.cache_key(images, (WORK[0], WORK[1] + 1)) != shared.cache_key(images, WORK)  # size is in the key


def test_unreadable_images_stay_invalid_in_every_process(images, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    folder = tmp_path / "caches"
    paths = [*images, broken]
    _, valid = shared.shared_cache(paths, WORK, folder=folder)
    _, mapped_valid = shared.shared_cache(paths, WORK, folder=folder)
    assert valid.tolist() == mapped_valid.tolist() == [True] * len(images) + [False]


def test_caches_of_vanished_images_are_pruned(tmp_path, images):
    folder = tmp_path / "caches"
    gone = [_draw(tmp_path / "gone.jpg", 5)]
    shared.shared_cache(gone, WORK, folder=folder)
    gone[0].unlink()
    shared.shared_cache(images, WORK, folder=folder)
    assert len(list(folder.glob("*.u8"))) == 1


def test_modes_resolve_to_a_folder_that_fits(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKKIT_CACHE_DIR", str(tmp_path / "disk"))
    monkeypatch.setenv("MASKKIT_RAM_CACHE_DIR", str(tmp_path / "ram"))
    assert shared.resolve_mode("none", 10, WORK) == "none"
    assert shared.resolve_mode("auto", 10, WORK) == "disk"
    assert shared.resolve_mode("ram", 10, WORK) == "ram"
    assert shared.ram_fits(1000, (100, 100), budget_bytes=30_000_000)
    assert not shared.ram_fits(1001, (100, 100), budget_bytes=30_000_000)
    monkeypatch.setattr(shared, "available_memory", lambda: 1000)
    assert shared.resolve_mode("ram", 10, WORK) == "disk"  # too big for half the free memory: on disk instead
    assert shared.cache_folder("disk") == tmp_path / "disk"


def test_an_unwritable_cache_folder_is_one_line(images, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(shared.CacheFolderError, match="MASKKIT_CACHE_DIR"):
        shared.shared_cache(images, WORK, folder=blocker / "caches")


@pytest.mark.slow
def test_training_with_the_shared_cache_equals_training_without_one(manifest_path, tmp_path):
    """Same seed, --cache none vs disk vs ram: the same val_f1 every epoch and the same weights."""
    from helpers import FAST
    from maskkit.commands import train
    from maskkit.contract.runfolder import LAST
    from maskkit.options import TrainOptions

    runs = {mode: train.run(manifest_path, TrainOptions(**{**FAST, "aug": "basic", "epochs": 2, "cache": mode}),
                            runs_dir=tmp_path, name=mode, show_progress=False) for mode in ("none", "disk", "ram")}
    metrics = {mode: pd.read_csv(run / "metrics.csv") for mode, run in runs.items()}
    states = {mode: torch.load(run / LAST, map_location="cpu", weights_only=False)["model"] for mode, run in runs.items()}
    for mode in ("disk", "ram"):
        assert metrics[mode]["val_f1"].tolist() == metrics["none"]["val_f1"].tolist()
        assert all(torch.equal(states[mode][k], states["none"][k]) for k in states["none"])
    assert list(Path(os.environ["MASKKIT_RAM_CACHE_DIR"]).glob("*.u8"))  # the ram run did use the shared folder


def test_auto_falls_back_to_a_private_cache_when_the_folder_cannot_be_written(manifest_path, tmp_path, monkeypatch, capsys):
    from maskkit.contract.manifest import read_manifest
    from maskkit.engine import build
    from maskkit.options import TrainOptions

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MASKKIT_CACHE_DIR", str(blocker / "caches"))
    manifest = read_manifest(manifest_path).head(6)
    config = {"img_size": (48, 40), "crop": (1.0, 1.0)}
    images, valid = build.build_cache_of_manifest(TrainOptions(cache="auto"), config, manifest)
    assert images.shape == (6, 48, 40, 3) and images.flags.writeable and valid.all()  # private, in memory
    assert "MASKKIT_CACHE_DIR" in capsys.readouterr().err
    with pytest.raises(shared.CacheFolderError):  # asked for explicitly: the one-line error
        build.build_cache_of_manifest(TrainOptions(cache="disk"), config, manifest)


# --- nothing another user wrote is trusted (a shared GPU server: /dev/shm, a team's cache folder) ---

def test_cache_files_are_owner_only(images, tmp_path):
    folder = tmp_path / "caches"
    shared.shared_cache(images, WORK, folder=folder)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {oct(0o600)}


def test_a_folder_others_can_write_is_refused(images, tmp_path):
    folder = tmp_path / "shm"
    folder.mkdir()
    folder.chmod(0o1777)  # what anyone can pre-create as /dev/shm/maskkit
    with pytest.raises(shared.CacheFolderError, match="writable by other users"):
        shared.shared_cache(images, WORK, folder=folder)
    assert not list(folder.iterdir())
    if os.geteuid() == 0:  # only root can give a folder away
        folder.chmod(0o700)
        os.chown(folder, 65534, 65534)
        with pytest.raises(shared.CacheFolderError, match="owned by another user"):
            shared.shared_cache(images, WORK, folder=folder)


def test_auto_trains_on_a_private_cache_beside_a_folder_others_can_write(manifest_path, tmp_path, monkeypatch, capsys):
    from maskkit.contract.manifest import read_manifest
    from maskkit.engine import build
    from maskkit.options import TrainOptions

    folder = tmp_path / "shared"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    monkeypatch.setenv("MASKKIT_CACHE_DIR", str(folder))
    config = {"img_size": (48, 40), "crop": (1.0, 1.0)}
    images, valid = build.build_cache_of_manifest(TrainOptions(cache="auto"), config, read_manifest(manifest_path).head(4))
    assert images.flags.writeable and valid.all() and not list(folder.iterdir())
    assert "writable by other users" in capsys.readouterr().err


def test_links_planted_at_the_lock_are_refused_and_never_written_through(images, tmp_path):
    folder, victim = tmp_path / "caches", tmp_path / "victim.txt"
    folder.mkdir(mode=0o700)
    victim.write_text("keep me")
    key = shared.cache_key(images, WORK)
    for plant in (os.symlink, os.link):
        lock = folder / f"{key}.lock"
        lock.unlink(missing_ok=True)
        plant(victim, lock)
        with pytest.raises(shared.CacheFolderError, match="lock"):
            shared.shared_cache(images, WORK, folder=folder)
        assert victim.read_text() == "keep me" and not list(folder.glob("*.u8"))


def test_links_at_the_cache_files_are_not_mapped(images, tmp_path, builds):
    folder, elsewhere = tmp_path / "caches", tmp_path / "elsewhere"
    shared.shared_cache(images, WORK, folder=folder)
    key = shared.cache_key(images, WORK)
    elsewhere.mkdir()
    for suffix in (".u8", ".json"):  # the files moved away and linked back: not this user's plain files
        (folder / f"{key}{suffix}").rename(elsewhere / f"{key}{suffix}")
        os.symlink(elsewhere / f"{key}{suffix}", folder / f"{key}{suffix}")
    cache, _ = shared.shared_cache(images, WORK, folder=folder)
    assert build_count(builds) == 2 and not (folder / f"{key}.u8").is_symlink()
    assert np.array_equal(cache, build_cache(images, WORK)[0])


def test_damaged_pixels_and_edited_headers_are_rebuilt(images, tmp_path, builds):
    folder = tmp_path / "caches"
    shared.shared_cache(images, WORK, folder=folder)
    key = shared.cache_key(images, WORK)
    pixels = folder / f"{key}.u8"
    pixels.write_bytes(bytes(255 - b for b in pixels.read_bytes()))  # every byte inverted, same size
    cache, valid = shared.shared_cache(images, WORK, folder=folder)
    assert build_count(builds) == 2 and np.array_equal(cache, build_cache(images, WORK)[0])
    header_path = folder / f"{key}.json"
    header = json.loads(header_path.read_text())
    header_path.write_text(json.dumps({**header, "invalid": list(range(len(images) // 2))}))
    _, valid = shared.shared_cache(images, WORK, folder=folder)
    assert build_count(builds) == 3 and valid.all()


def test_an_image_edited_with_its_size_and_mtime_kept_gives_a_new_cache(images, tmp_path):
    folder = tmp_path / "caches"
    shared.shared_cache(images, WORK, folder=folder)
    before = shared.cache_key(images, WORK)
    info = images[2].stat()
    data = bytearray(images[2].read_bytes())
    data[len(data) // 2] ^= 0xFF
    images[2].write_bytes(bytes(data))
    os.utime(images[2], ns=(info.st_atime_ns, info.st_mtime_ns))
    assert images[2].stat().st_size == info.st_size and shared.cache_key(images, WORK) != before


def test_a_killed_builders_temporary_is_removed(images, tmp_path):
    folder = tmp_path / "caches"
    folder.mkdir(mode=0o700)
    key = shared.cache_key(images, WORK)
    dead = folder / f".{key}.u8.tmp{2**22 + 5}.x1y2"  # no such pid: its builder died (kill -9)
    alive = folder / f".{key}.u8.tmp{os.getpid()}.x1y2"
    dead.write_bytes(b"\0" * 1000)
    alive.write_bytes(b"\0" * 10)
    shared.shared_cache(images, WORK, folder=folder)
    assert not dead.exists() and alive.exists()
