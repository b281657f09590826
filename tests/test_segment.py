"""`maskkit segment`: background removal that mirrors IN, resumes after a kill, and never touches IN.

The model is a random-weight DeepLabV3 (mobilenet) saved to a file and loaded with --weights, so the
real loading path runs; its "persons" are random, so the compositing is checked separately against
the true person masks that `synth --with-masks` draws.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from helpers import assert_one_line_error
from hostile import (SEGMENT, SHORT_SIDE, assert_full_disk_names_the_output, assert_refused_while_parsing, bad,
                     latin1_folder, looping_link, other_dataset, out_images_link_out, run_bad, same_stem_png)
from maskkit.commands import segment
from maskkit.contract.journal import JOURNAL, read_records
from maskkit.data import masks as maskmath
from maskkit.engine import deeplab
from maskkit.options import FILLS, SEGMENT_MODELS
from maskkit.cli import app
from maskkit.contract.layout import load_eval, load_folder, load_train
from maskkit.commands import synth
from maskkit.options import Size

SIZE = 64  # working resolution of every run here
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny images gain nothing from threads


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones too) -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def digest(root: Path) -> dict[str, str]:
    return {k: hashlib.sha1(v).hexdigest() for k, v in tree(root).items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A drawn dataset with true masks, plus the real data's quirks: a .png image and `._` files."""
    root = tmp_path_factory.mktemp("seg") / "data"
    synth.run(root, persons=4, eval_persons=2, size=Size(width=64, height=80), seed=1, masks=True, show_progress=False)
    folder = sorted((root / "train" / "images").iterdir())[0]
    cv2.imwrite(str(folder / "mask2.png"), cv2.imread(str(folder / "mask2.jpg")))
    (folder / "mask2.jpg").unlink()
    (folder / "._mask1.jpg").write_bytes(b"macOS resource fork")
    (root / "eval" / "images" / "._info.jpg").write_bytes(b"macOS resource fork")
    return root


def random_deeplab(images: list[Path], aux: bool = True) -> torch.nn.Module:
    """A random DeepLabV3-mobilenet whose person class covers about half of these images' pixels.

    Batch-norm statistics come from the images (random init would flatten every activation), the
    head is sharpened so the mask has shape, and the person bias is set at the median margin.
    """
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    batch = torch.stack([torch.from_numpy(maskmath.to_working(cv2.imread(str(p)), SIZE)) for p in images])
    x = (batch.permute(0, 3, 1, 2).float() / 255 - torch.tensor(deeplab.MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(deeplab.STD).view(1, 3, 1, 1)
    torch.manual_seed(0)
    net = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # plain average over the calibration pass
    with torch.no_grad():
        net.train()(x)
        net.eval()
        head = net.classifier[4]
        head.weight *= 10
        head.bias *= 10
        logits = net(x)["out"]
        others = torch.cat([logits[:, :15], logits[:, 16:]], dim=1).logsumexp(dim=1)
        head.bias[15] -= (logits[:, 15] - others).median()
    return net


@pytest.fixture(scope="module")
def weights(data, tmp_path_factory) -> Path:
    images = sorted(p for p in data.glob("*/images/**/*.jpg") if not p.name.startswith("."))[::3]
    path = tmp_path_factory.mktemp("weights") / "deeplab_mobilenet.pt"
    torch.save(random_deeplab(images).state_dict(), path)
    return path


def options(weights: Path, *extra: object) -> list[str]:
    return ["--model", "mobilenet", "--weights", str(weights), "--short-side", str(SIZE), "--batch-size", "4", *map(str, extra)]


def invoke(*args: object):
    return runner.invoke(app, ["segment", *map(str, args)])


@pytest.fixture(scope="module")
def segmented(data, weights, tmp_path_factory):
    """One uninterrupted run of the dataset root, with masks: (IN digest before, OUT, MASKS, result)."""
    before = digest(data)
    base = tmp_path_factory.mktemp("segmented")
    out, masks = base / "out", base / "masks"
    result = invoke(data, out, *options(weights, "--masks", masks, "--workers", 1))
    return before, out, masks, result


def report(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "segment_report.csv", dtype={"path": str})


# --- compositing against the true masks --------------------------------------------------------

def true_pairs(data: Path, count: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for mask_file in sorted((data / "masks").rglob("*.png"))[:count]:
        rel = mask_file.relative_to(data / "masks").with_suffix(".jpg")
        pairs.append((cv2.imread(str(data / rel)), cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE)))
    return pairs


@pytest.mark.parametrize("fill", ["black", "white", "gray", "mean"])
def test_composite_keeps_the_person_and_paints_the_background(data, fill):
    for image, mask in true_pairs(data):
        person = mask == 255
        assert 0 < person.mean() < 1
        result = maskmath.composite(image, mask, fill)
        assert result.shape == image.shape and result.dtype == np.uint8
        np.testing.assert_array_equal(result[person], image[person])
        expected = {"black": [0, 0, 0], "white": [255] * 3, "gray": [128] * 3,
                    "mean": np.round(image.reshape(-1, 3).mean(axis=0))}[fill]
        np.testing.assert_array_equal(result[~person], np.broadcast_to(expected, result[~person].shape))


def test_blur_fill_is_a_smooth_copy_and_a_feathered_edge_blends(data):
    for image, mask in true_pairs(data):
        person = mask == 255
        result = maskmath.composite(image, mask, "blur")
        np.testing.assert_array_equal(result[person], image[person])
        blurred = maskmath.background(image, "blur")
        np.testing.assert_array_equal(result[~person], blurred[~person])
        roughness = lambda im: np.abs(np.diff(im.astype(int), axis=1)).mean()  # noqa: E731
        assert roughness(blurred) < 0.5 * roughness(image)

        alpha = maskmath.soften(mask, 2)
        soft = maskmath.composite(image, alpha, "black")
        edge = (alpha > 0.05) & (alpha < 0.95)
        assert edge.any() and (alpha[person] > 0.5).all()
        inside_edge = soft[edge].astype(int).sum(axis=1)
        assert (inside_edge <= image[edge].astype(int).sum(axis=1)).all()  # dimmed toward black, not brighter


def test_person_mask_keeps_large_regions_fills_holes_drops_specks():
    prob = np.zeros((100, 80), np.float32)
    prob[10:70, 10:50] = 0.9  # the person
    prob[30:40, 20:30] = 0.1  # a hole inside it
    prob[75:95, 50:75] = 0.8  # a second region, over a fifth of the first
    prob[2:4, 70:72] = 0.95  # a speck
    mask = maskmath.person_mask(prob, threshold=0.5)
    expected = np.zeros_like(prob, bool)
    expected[10:70, 10:50] = True
    expected[75:95, 50:75] = True
    np.testing.assert_array_equal(mask == 255, expected)
    assert set(np.unique(mask)) == {0, 255}
    assert not maskmath.person_mask(prob, threshold=0.99).any()  # nothing above it
    assert not maskmath.person_mask(np.where(prob == 0.95, 0.95, 0).astype(np.float32)).any()  # only a speck


# --- the command -------------------------------------------------------------------------------

def test_segment_mirrors_the_dataset_and_never_touches_it(data, segmented):
    before, out, masks, result = segmented
    assert result.exit_code == 0, result.output
    assert digest(data) == before

    source = {k for k in tree(data) if not any(part.startswith(".") for part in k.split("/"))}
    assert set(tree(out)) == source | {"segment_report.csv"}  # `._` files not copied, nothing extra
    for name in ("train/train.csv", "train/injected_errors.csv", "eval/info.csv", "eval/truth.csv"):
        assert (out / name).read_bytes() == (data / name).read_bytes()

    original, mirrored = load_train(data / "train", report=False), load_train(out / "train", report=False)
    rel = lambda df, root: df.assign(path=[Path(p).relative_to(root).as_posix() for p in df["path"]])  # noqa: E731
    pd.testing.assert_frame_equal(rel(original, data), rel(mirrored, out))
    assert load_eval(out / "eval")["ImageID"].tolist() == load_eval(data / "eval")["ImageID"].tolist()

    table = report(out)
    images = sorted(k for k in source if k.split("/")[1] == "images")
    assert table["path"].tolist() == images
    assert set(table["status"]) == {"done", "no_person"}  # the random model finds "persons" in some
    checked = 0
    for row in table.itertuples():
        source_bytes, output = (data / row.path).read_bytes(), out / row.path
        assert output.read_bytes()[:4] == source_bytes[:4]  # .png stays PNG, .jpg stays JPEG
        image, mask = cv2.imread(str(output)), cv2.imread(str(maskmath.mask_path(masks, Path(row.path))), 0)
        assert image.shape == cv2.imread(str(data / row.path)).shape and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert row.person_area == pytest.approx((mask == 255).mean(), abs=1e-6)
        if row.status == "no_person":
            assert output.read_bytes() == source_bytes and row.person_area == 0
        else:
            far = cv2.dilate(mask, np.ones((9, 9), np.uint8)) == 0  # background beyond the feathered edge
            if far.sum() > 50:
                assert image[far].mean() < 8  # black fill (up to JPEG ringing)
                checked += 1
    assert checked >= 5
    assert "no person found" in result.stderr and "0 failed" in result.stderr


@pytest.mark.parametrize("part", ["train", "eval/images"])
def test_a_train_folder_or_a_plain_image_folder_is_mirrored(data, weights, tmp_path, part):
    out = tmp_path / "out"
    result = invoke(data / part, out, *options(weights, "--workers", 0, "--fill", "white"))
    assert result.exit_code == 0, result.output
    if part == "train":
        assert (out / "train.csv").read_bytes() == (data / "train" / "train.csv").read_bytes()
        assert len(load_train(out, report=False)) == len(load_train(data / "train", report=False))
    else:
        assert load_folder(out)["ImageID"].tolist() == load_folder(data / part)["ImageID"].tolist()
    assert len(report(out)) == len(load_folder(data / part))


def test_rerun_skips_finished_images_and_overwrite_redoes_them(segmented, weights, data, tmp_path):
    _, out, masks, _ = segmented
    shutil.copytree(out, tmp_path / "out")
    shutil.copytree(masks, tmp_path / "masks")
    before = tree(tmp_path / "out")
    again = invoke(data, tmp_path / "out", *options(weights, "--masks", tmp_path / "masks", "--workers", 0))
    assert again.exit_code == 0, again.output
    assert f"{len(report(out))} skipped" in again.stderr
    assert tree(tmp_path / "out") == before

    redo = invoke(data, tmp_path / "out", *options(weights, "--masks", tmp_path / "masks", "--workers", 0,
                                                     "--fill", "white", "--overwrite"))
    assert redo.exit_code == 0, redo.output
    done = report(out).query("status == 'done'")["path"]
    changed = [p for p in done if (tmp_path / "out" / p).read_bytes() != before[p]]
    assert changed == done.tolist()


KILLER = """
import os, signal, sys, threading
import maskkit.engine.segmentation as seg

lock, writes = threading.Lock(), [0]

def killing(write):
    def wrapped(*args, **kwargs):
        write(*args, **kwargs)
        with lock:
            writes[0] += 1
            if writes[0] == int(os.environ["KILL_AFTER"]):
                os.kill(os.getpid(), signal.SIGKILL)
    return wrapped

seg.write_image, seg.copy_file = killing(seg.write_image), killing(seg.copy_file)
from maskkit.cli import main
sys.argv = ["maskkit", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_killed_run_resumed_ends_with_the_same_files(data, weights, segmented, tmp_path):
    _, out_whole, masks_whole, _ = segmented
    out, masks = tmp_path / "out", tmp_path / "masks"
    args = ["segment", str(data), str(out), *options(weights, "--masks", masks, "--workers", 1)]
    env = {**os.environ, "KILL_AFTER": "25", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    images = report(out_whole)["path"]
    written = [p for p in images if (out / p).is_file()]
    assert 0 < len(written) < len(images)  # killed half-way
    assert (out / JOURNAL).is_file() and not (out / "segment_report.csv").exists()
    journaled = len(read_records(out))
    assert 0 < journaled <= len(written)

    (out / "eval" / ".half_written.jpg.tmp4242.jpg").write_bytes(b"\xff\xd8")  # as a kill mid-write leaves
    resumed = invoke(data, out, *options(weights, "--masks", masks, "--workers", 1))
    assert resumed.exit_code == 0, resumed.output
    assert f" {journaled} skipped" in resumed.stderr  # the killed run's finished work is kept
    assert tree(out) == tree(out_whole)  # byte for byte, report included, no temporary files left
    assert tree(masks) == tree(masks_whole)


def test_no_person_found_copies_the_image_and_a_bad_image_fails_with_exit_1(weights, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (70, 50, 3), dtype=np.uint8))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    result = invoke(folder, out, *options(weights, "--workers", 0, "--threshold", 0.999999))
    assert result.exit_code == 1, result.output
    assert "broken.jpg" in result.stderr and "segment_report.csv" in result.stderr
    table = report(out).set_index("path")["status"].to_dict()
    assert table == {"a.jpg": "no_person", "b.png": "no_person", "broken.jpg": "failed"}
    for name in ("a.jpg", "b.png"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    assert not (out / "broken.jpg").exists()


@pytest.mark.parametrize("where", ["same", "inside", "above", "masks-inside"])
def test_refuses_outputs_overlapping_in(data, weights, tmp_path, where):
    before = digest(data)
    out = {"same": data, "inside": data / "train" / "seg", "above": data.parent, "masks-inside": tmp_path / "o"}[where]
    extra = ["--masks", data / "masks2"] if where == "masks-inside" else []
    result = invoke(data, out, *options(weights, *extra))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "input" in lines[0] and str(data) in lines[0], result.stderr
    assert digest(data) == before
    assert not (data / "train" / "seg").exists() and not (tmp_path / "o").exists()


def bad_weights(kind: str, weights: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    elif kind == "classes":
        state = torch.load(weights, weights_only=True)
        state["classifier.4.weight"], state["classifier.4.bias"] = state["classifier.4.weight"][:2], state["classifier.4.bias"][:2]
        torch.save(state, path)
    return path


@pytest.mark.parametrize(("kind", "model", "message"), [
    ("missing", "mobilenet", "weights file not found"),
    ("garbage", "mobilenet", "not a PyTorch weights file"),
    ("classes", "mobilenet", "21 VOC labels"),
    ("mobilenet", "resnet50", "is --model right?"),
])
def test_bad_weights_are_one_line_errors(data, weights, tmp_path, kind, model, message):
    path = weights if kind == "mobilenet" else bad_weights(kind, weights, tmp_path)
    result = invoke(data, tmp_path / "out", "--model", model, "--weights", path, "--short-side", SIZE)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_every_model_choice_has_a_torchvision_builder():
    assert tuple(deeplab.MODELS) == SEGMENT_MODELS
    for model in SEGMENT_MODELS:
        builder, weights = deeplab.deeplab_builder(model)
        assert callable(builder) and weights.DEFAULT.url.endswith(".pth")


def test_weights_with_or_without_the_aux_head_give_the_same_masks(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    assert any(k.startswith("aux_classifier.") for k in state)
    plain = tmp_path / "no_aux.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("aux_classifier.")}, plain)
    batch = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    cpu = torch.device("cpu")
    with_aux = deeplab.person_scores(deeplab.load_deeplab("mobilenet", weights), batch, cpu)
    without = deeplab.person_scores(deeplab.load_deeplab("mobilenet", plain), batch, cpu)
    np.testing.assert_array_equal(with_aux, without)


def test_a_failed_download_names_the_weights_option(data, tmp_path, monkeypatch):
    from urllib.error import URLError

    import torch.hub

    def offline(*args, **kwargs):
        raise URLError("no network in this test")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty cache: it must download
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    result = invoke(data, tmp_path / "out", "--model", "mobilenet")
    assert result.exit_code == 2
    error = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and "--weights FILE" in error[0] and "download.pytorch.org" in error[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_two_images_that_would_share_a_mask_are_refused_up_front(weights, tmp_path):
    folder = tmp_path / "photos" / "p1"
    folder.mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 255, (70, 50, 3), dtype=np.uint8)
    for name in ("a.jpg", "a.png", "b.jpg"):
        cv2.imwrite(str(folder / name), image)
    out, masks = tmp_path / "out", tmp_path / "masks"
    result = invoke(tmp_path / "photos", out, *options(weights, "--masks", masks, "--workers", 0))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "p1/a.jpg" in lines[0] and "p1/a.png" in lines[0], result.stderr
    assert not masks.exists() and not (out / "p1").exists()  # nothing written

    plain = invoke(tmp_path / "photos", out, *options(weights, "--workers", 0))  # without masks: no clash
    assert plain.exit_code == 0, plain.output
    assert sorted(p.name for p in (out / "p1").iterdir()) == ["a.jpg", "a.png", "b.jpg"]


# --- the device pipeline (CUDA on a GPU server; the same torch ops run here on the CPU) ----------

@pytest.mark.parametrize("fill", FILLS)
def test_batch_composite_on_a_device_matches_the_opencv_composite(data, fill):
    # 4x the drawn size: the blur fill's 1/16 thumbnail then holds OpenCV's whole 13-pixel kernel
    pairs = [(cv2.resize(image, None, fx=4, fy=4), cv2.resize(mask, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST))
             for image, mask in true_pairs(data, count=4)]
    images = torch.from_numpy(np.stack([image for image, _ in pairs]))
    masks = torch.from_numpy(np.stack([mask for _, mask in pairs]))
    result = maskmath.composite_batch(images, masks, fill, radius=2).numpy()
    for (image, mask), got in zip(pairs, result):
        expected = maskmath.composite(image, maskmath.soften(mask, 2), fill).astype(int)
        difference = np.abs(got.astype(int) - expected)
        assert difference.max() <= 3 and difference.mean() < 0.5, (fill, difference.max(), difference.mean())


@pytest.mark.slow
def test_device_pipeline_writes_what_the_cpu_pipeline_writes_and_resumes(data, weights, segmented, tmp_path):
    _, out_cpu, masks_cpu, _ = segmented
    out, masks = tmp_path / "out", tmp_path / "masks"
    summary = segment.run(data, out, model="mobilenet", weights=weights, masks=masks, short_side=SIZE, batch_size=4,
                          workers=1, device="cpu", on_device=True, show_progress=False)
    table, expected = report(out), report(out_cpu)
    assert table["path"].tolist() == expected["path"].tolist()
    assert summary.done == (table["status"] == "done").sum() > 0
    assert (table["status"] == expected["status"]).mean() >= 0.9
    agree, pixels = [], []
    for rel in table.query("status == 'done'")["path"]:
        mask_rel = maskmath.mask_path(Path("."), Path(rel))
        mine, theirs = cv2.imread(str(masks / mask_rel), 0), cv2.imread(str(masks_cpu / mask_rel), 0)
        assert mine.shape == theirs.shape and set(np.unique(mine)) <= {0, 255}
        agree.append((mine == theirs).mean())
        image, cpu_image = cv2.imread(str(out / rel)).astype(int), cv2.imread(str(out_cpu / rel)).astype(int)
        assert image.shape == cpu_image.shape
        pixels.append(np.abs(image - cpu_image).mean())
    assert np.mean(agree) > 0.97  # the device resizes bilinearly; the CPU path with OpenCV
    assert np.mean(pixels) < 3  # same composite up to those edge pixels and JPEG rounding
    assert (out / "train" / "train.csv").read_bytes() == (data / "train" / "train.csv").read_bytes()

    encoded = segment.run(data / "train", tmp_path / "jpeg", model="mobilenet", weights=weights, short_side=SIZE,
                          batch_size=4, workers=0, device="cpu", on_device=True, jpeg_on_device=True, show_progress=False)
    assert encoded.done > 0
    for rel in report(tmp_path / "jpeg").query("status == 'done'")["path"]:  # torchvision's encoder, not OpenCV's
        mine, theirs = cv2.imread(str(tmp_path / "jpeg" / rel)).astype(int), cv2.imread(str(out / "train" / rel)).astype(int)
        assert np.abs(mine - theirs).mean() < 3

    before = tree(out)
    again = segment.run(data, out, model="mobilenet", weights=weights, masks=masks, short_side=SIZE, batch_size=4,
                        workers=0, device="cpu", on_device=True, show_progress=False)
    assert again.skipped == len(table) and again.done == 0
    assert tree(out) == before


# --- bad input ----------------------------------------------------------------------------------

BAD_CALLS = [
    bad("segment into another dataset", ["segment", "X/eval", "other/eval", *SEGMENT], other_dataset),
    bad("segment into the dataset", ["segment", "X", "X/seg", "--device", "cpu"]),
    bad("segment --masks into the dataset", ["segment", "X/eval", "seg", "--masks", "X/eval/masks", "--device", "cpu"]),
    bad("segment a.jpg and a.png --masks", ["segment", "M", "seg", "--masks", "mk", *SEGMENT], same_stem_png),
    bad("segment OUT/images a link out of OUT", ["segment", "X/eval", "seg", "--overwrite", *SEGMENT],
        out_images_link_out),
    bad("segment --short-side 1000000",
        ["segment", "X/eval", "seg", *SEGMENT[:SHORT_SIDE], "1000000", *SEGMENT[SHORT_SIDE + 1:]], absent=["seg"]),
    bad("segment a looping link in IN", ["segment", "X/eval", "seg", *SEGMENT], looping_link, absent=["seg"]),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


@pytest.mark.parametrize("argv, option", [
    (["segment", "X/eval", "seg", "--threshold", "1.5"], "--threshold"),
    (["segment", "X/eval", "seg", "--batch-size", "0"], "--batch-size"),
    (["segment", "X/eval", "seg", "--short-side", "8"], "--short-side"),
    (["segment", "X/eval", "seg", "--workers", "-1"], "--workers"),
    (["segment", "X/eval", "seg", "--workers", "1000000"], "--workers"),
], ids=["--threshold 1.5", "--batch-size 0", "--short-side 8", "--workers -1", "--workers 1000000"])
def test_an_option_out_of_its_range_is_one_line_before_anything_is_written(world, argv, option, monkeypatch, capsys):
    assert_refused_while_parsing(world, argv, option, monkeypatch, capsys)
    assert not (world / "seg").exists()


@pytest.mark.slow
def test_a_full_disk_names_the_output_not_the_info_csv_it_copies(world, deeplab):
    argv = ["segment", "X/eval", "out/seg", *SEGMENT]
    assert_full_disk_names_the_output(world, [a.replace("{deeplab}", str(deeplab)) for a in argv])


def test_a_locked_output_folder_is_refused_naming_the_process_holding_it(cli, world):
    from maskkit.contract.files import folder_lock

    with folder_lock(world / "seg", "segment"):
        result = cli("segment", "X/eval", "seg", "--device", "cpu")
    assert_one_line_error(result, "maskkit segment: error: ", f"process {os.getpid()}")
    assert not (world / "seg").exists()  # the lock's folder goes when the run that made it ends


def test_a_latin1_file_name_is_segmented(cli, world, deeplab):
    name = latin1_folder(world)
    result = cli("segment", "odd", "segout", *[a.replace("{deeplab}", str(deeplab)) for a in SEGMENT])
    assert result.exit_code == 0, result.stderr
    assert (world / "segout" / name).is_file()
