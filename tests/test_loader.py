"""The fast loader: reduced decoding, the RAM cache, unreadable images, isolation, seeded augmentation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.data.loader import ImageDataset, build_cache, decode_image, make_loader, reduction_factor, set_epoch
from maskkit.data.presets import build_transform, eval_transform, normalize_batch, work_size

IMG = (48, 36)  # model input (H, W) for the tests
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _draw(path: Path, seed: int, size_wh=(96, 128)) -> Path:
    """A smooth JPEG with a few shapes (like a portrait: large structures, little noise)."""
    rng = np.random.default_rng(seed)
    w, h = size_wh
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 200, yy / h * 200, np.full_like(xx, 90 + 60 * rng.random())], axis=2).astype(np.uint8)
    for _ in range(4):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, centre, int(rng.integers(w // 10, w // 3)), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return [_draw(tmp_path / f"img{i:02d}.jpg", i) for i in range(12)]


def test_reduced_decoding_gives_the_size_and_the_look_of_a_full_decode(tmp_path):
    path = _draw(tmp_path / "portrait.jpg", 0, size_wh=(384, 512))
    size = (120, 90)
    assert reduction_factor((384, 512), size) == 4  # the fast path is the one under test
    fast = decode_image(path, size)
    full = cv2.cvtColor(cv2.resize(cv2.imread(str(path)), (90, 120), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    assert fast.shape == (120, 90, 3) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3
    red = np.zeros((512, 384, 3), np.uint8)
    red[:, :, 2] = 255  # OpenCV writes BGR
    cv2.imwrite(str(tmp_path / "red.jpg"), red)
    assert decode_image(tmp_path / "red.jpg", size).mean(axis=(0, 1)).round(-1).tolist() == [250, 0, 0]
    assert reduction_factor((384, 512), (300, 200)) == 1
    assert reduction_factor((384, 512), (256, 192)) == 2


def test_cached_dataset_equals_uncached(images):
    work = work_size(IMG)
    cache, valid = build_cache(images, work, threads=3)
    assert valid.all() and cache.shape == (len(images), *work, 3)
    for i, path in enumerate(images):
        assert np.array_equal(cache[i], decode_image(path, work))
    transform = build_transform("basic", IMG, MEAN, STD)
    cached = ImageDataset(images, None, IMG, transform, cache=cache, seed=4)
    uncached = ImageDataset(images, None, IMG, transform, seed=4)
    for key in (0, 5, (7, 123)):
        assert torch.equal(cached[key][0], uncached[key][0])


def test_transforms_output_the_model_input(images):
    img = decode_image(images[0], work_size(IMG))
    for aug in ("none", "basic", "strong"):
        out = build_transform(aug, IMG, MEAN, STD)(image=img)["image"]
        assert out.shape == (3, *IMG) and out.dtype == torch.float32
    # eval: uint8 [0, 255] mapped by mean/std, any input size brought to the working size first
    out = eval_transform(IMG, MEAN, STD)(image=np.full((200, 150, 3), 255, np.uint8))["image"]
    assert out.shape == (3, *IMG) and torch.allclose(out, torch.ones_like(out))
    # uint8 tensors normalised per batch (on the GPU) give what Normalize gives per image
    raw = torch.stack([eval_transform(IMG, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25), normalize=False)(image=img)["image"]])
    assert raw.dtype == torch.uint8
    expected = eval_transform(IMG, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))(image=img)["image"]
    assert torch.allclose(normalize_batch(raw, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))[0], expected, atol=1e-5)
    with pytest.raises(MaskkitError, match="none, basic or strong"):
        build_transform("wild", IMG, MEAN, STD)


def test_a_corrupt_image_is_skipped_with_a_warning(images, capsys):
    images[3].write_bytes(b"\xff\xd8 not really a jpeg")
    cache, valid = build_cache(images, work_size(IMG))
    assert valid.tolist() == [i != 3 for i in range(len(images))]
    assert "img03.jpg" in capsys.readouterr().err
    transform = eval_transform(IMG, MEAN, STD)
    cached = ImageDataset(images, {"label": np.arange(12)}, IMG, transform, cache=cache, valid=valid)
    assert len(cached) == 11 and 3 not in {cached[i][2] for i in range(len(cached))}
    # decoding on the fly: the next readable image stands in, with its own target
    live = ImageDataset(images, {"label": np.arange(12)}, IMG, eval_transform(IMG, MEAN, STD))
    _, targets, row = live[3]
    assert row == 4 and int(targets["label"]) == 4
    assert "img03.jpg" in capsys.readouterr().err
    strict = ImageDataset(images, None, IMG, eval_transform(IMG, MEAN, STD), on_error="raise")
    with pytest.raises(MaskkitError, match="img03.jpg"):
        strict[3]


def test_many_corrupt_images_stop_the_run(tmp_path, capsys):
    paths = [_draw(tmp_path / f"ok{i}.jpg", i, (32, 40)) for i in range(4)]
    broken = []
    for i in range(22):
        broken.append(tmp_path / f"bad{i:02d}.jpg")
        broken[-1].write_bytes(b"truncated")
    with pytest.raises(RunFailure, match="unreadable images.*bad00.jpg"):
        build_cache(paths + broken, work_size(IMG))
    live = ImageDataset(paths[:1] + broken + paths[1:], None, IMG, eval_transform(IMG, MEAN, STD))
    with pytest.raises(RunFailure, match="in a row"):
        live[1]


def test_datasets_share_no_state(images):
    """The team's leak: validation images appeared in training through shared class state."""
    transform = build_transform("basic", IMG, MEAN, STD)
    labels = np.arange(12)
    train = ImageDataset(images[:8], {"label": labels[:8]}, IMG, transform)
    val = ImageDataset(images[8:], {"label": labels[8:]}, IMG, transform)
    assert len(train) == 8 and len(val) == 4
    assert {train[i][2] for i in range(len(train))} == set(range(8))
    assert train.paths == [str(p) for p in images[:8]]
    assert train.transform is not val.transform and train.transform is not transform
    assert not any(isinstance(v, (list, dict, set, np.ndarray)) for v in vars(ImageDataset).values())
    train.targets["label"][:] = -1
    assert val.targets["label"].tolist() == [8, 9, 10, 11] and labels.tolist() == list(range(12))


def _epoch(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    set_epoch(loader, epoch)
    return [(x, index) for x, _, index in loader]


def test_augmentation_is_reproducible_from_the_seed(images):
    work = work_size(IMG)
    cache, _ = build_cache(images, work)
    transform = build_transform("strong", IMG, MEAN, STD)

    def loader(seed: int, workers: int = 0):
        dataset = ImageDataset(images, None, IMG, transform, cache=cache, seed=seed)
        return make_loader(dataset, batch_size=4, shuffle=True, workers=workers, seed=seed)

    first = loader(7)
    epoch0, epoch1 = _epoch(first, 0), _epoch(first, 1)
    resumed = _epoch(loader(7, workers=2), 1)  # a fresh process state, in workers, starting at epoch 1
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch1, resumed))
    assert not torch.equal(epoch0[0][1], epoch1[0][1])  # each epoch has its own order...
    by_row = [{int(r): x[k] for x, rows in batches for k, r in enumerate(rows)} for batches in (epoch0, epoch1)]
    assert any(not torch.equal(by_row[0][r], by_row[1][r]) for r in range(len(images)))  # ...and draws
    other = _epoch(loader(8), 1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(epoch1, other))  # each seed too


def test_data_wait_counts_the_time_spent_waiting():
    import time

    from maskkit.data.loader import DataWait

    def slow():
        for i in range(3):
            time.sleep(0.02)
            yield i

    wait = DataWait()
    assert list(wait.iterate(slow())) == [0, 1, 2]
    assert wait.batches == 3 and wait.seconds >= 0.06


def test_gathered_batches_equal_the_per_image_transform_and_collation(images):
    """With `gather` (the GPU paths: eval geometry, uint8), a batch cut from the cache in one
    indexing has the pixels, targets, draw seeds and rows of per-image transforms + collation."""
    from maskkit.data.sampling import ResumableSampler

    work = work_size(IMG)
    cache, valid = build_cache(images, work)
    valid[2] = False  # rows left out, as unreadable images are
    transform = eval_transform(IMG, MEAN, STD, normalize=False)
    per_image, gathered = (ImageDataset(images, {"label": np.arange(len(images))}, IMG, transform, cache=cache,
                                        valid=valid, gather=gather) for gather in (False, True))
    batches = []
    for dataset in (per_image, gathered):
        loader = make_loader(dataset, 4, shuffle=True, sampler=ResumableSampler(len(dataset), seed=1))
        set_epoch(loader, 3)
        batches.append(list(loader))
    assert len(batches[0]) == len(batches[1]) == 3
    for (x0, t0, r0), (x1, t1, r1) in zip(*batches):
        assert x1.dtype == torch.uint8 and torch.equal(x0, x1) and torch.equal(r0, r1)
        assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
    assert 2 not in torch.cat([r for _, _, r in batches[1]]).tolist()


STUCK_LOADER = """
import os, time
import torch
from maskkit.data.loader import make_loader

class Stuck(torch.utils.data.Dataset):  # a worker that never returns, as one deadlocked after fork
    def __len__(self):
        return 4

    def __getitem__(self, item):
        print(os.getpid(), flush=True)
        time.sleep(600)

next(iter(make_loader(Stuck(), batch_size=2, shuffle=False, workers=1)))
"""


@pytest.mark.slow
def test_a_stuck_worker_dies_with_the_killed_main_process(tmp_path):
    """kill -9 of a run whose loader worker is stuck: the worker goes too (torch's own check runs only
    between items), so no orphan holds the run's pipes, memory or cores."""
    import os
    import signal
    import subprocess
    import sys
    import time

    main = subprocess.Popen([sys.executable, "-c", STUCK_LOADER], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    worker = int(main.stdout.readline())
    main.send_signal(signal.SIGKILL)
    main.wait(timeout=60)

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 20
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the loader worker outlived the killed main process")
