"""`maskkit crop`: face crops that mirror IN, the person fallback, resuming, and never touching IN.

Drawn faces are cartoons, on which a real detector finds some faces and misses others, so the
mechanics are proven with a stand-in detector injected through engine/faces' interface (it finds
a face exactly where the test says); one run of the real default detector checks only that its
output is well formed, and train and predict run on that output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import FAST, assert_one_line_error, train_flags
from hostile import assert_refused_while_parsing, bad, other_dataset, run_bad
from maskkit.commands import crop, synth
from maskkit.contract.boxes import BOXES, HOWS, JOURNAL, read_boxes
from maskkit.contract.layout import load_eval, load_train
from maskkit.data.faceboxes import ASPECTS, fit
from maskkit.data.images import read_image
from maskkit.engine.faces import FRAMINGS, Face, find_face
from maskkit.options import Size

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class Stub:
    """A detector that finds one face, in the middle third of the frame, on the photos `finds` accepts."""

    name = "stub"

    def __init__(self, finds=lambda image: True) -> None:
        self.finds = finds

    def __call__(self, image: np.ndarray) -> list[Face]:
        if not self.finds(image):
            return []
        height, width = image.shape[:2]
        return [Face(width / 3, height / 3, width / 3, height / 3, 0.9)]


def marked(image: np.ndarray) -> bool:
    """The photos the test marked with a magenta square (the detector sees them framed and resized)."""
    b, g, r = (image[:, :, c].astype(int) for c in range(3))
    return bool(((b > 200) & (g < 60) & (r > 200)).sum() >= 20)


def mark(path: Path) -> None:
    import cv2

    image = cv2.imread(str(path))
    image[:12, :12] = (255, 0, 255)  # survives JPEG and the detectors' working resize
    cv2.imwrite(str(path), image)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """6 drawn persons (and 2 on eval); the `normal` photos of all but the last person are marked."""
    root = tmp_path_factory.mktemp("crop") / "data"
    synth.run(root, persons=6, eval_persons=2, size=Size(width=48, height=64), seed=2, show_progress=False)
    for folder in sorted((root / "train" / "images").iterdir())[:-1]:
        mark(folder / "normal.jpg")
    return root


def cut(data: Path, out: Path, **options) -> crop.Summary:
    options = {"detector": Stub(marked), "device": "cpu", "workers": 0, "show_progress": False, **options}
    return crop.run(data, out, **options)


def test_the_mirror_holds_every_image_cut_square_the_csvs_and_a_row_per_image(data, tmp_path):
    out = tmp_path / "out"
    summary = cut(data, out)
    images = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg"))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == images
    for name in ("train/train.csv", "eval/info.csv", "eval/truth.csv"):
        assert (out / name).read_bytes() == (data / name).read_bytes()
    boxes = read_boxes(out / BOXES)
    assert sorted(boxes["path"]) == images and set(boxes["how"]) <= set(HOWS)
    for row in boxes.itertuples():
        cropped = read_image(out / row.path)
        assert cropped.shape[:2] == (row.h, row.w) and row.w == row.h  # --aspect square
        assert 0 <= row.x and row.x + row.w <= row.width and 0 <= row.y and row.y + row.h <= row.height
    assert summary.done == len(images) and summary.skipped == 0 and not (out / JOURNAL).exists()
    assert len(load_train(out / "train", report=False)) == len(load_train(data / "train", report=False))
    assert load_eval(out / "eval")["ImageID"].tolist() == load_eval(data / "eval")["ImageID"].tolist()


def test_a_person_whose_normal_face_is_found_gives_its_box_to_its_other_photos(data, tmp_path):
    out = tmp_path / "out"
    summary = cut(data, out, margin=0.0)
    boxes = read_boxes(out / BOXES).set_index("path")
    persons = sorted(p.name for p in (data / "train" / "images").iterdir())
    for person in persons[:-1]:
        rows = boxes[boxes.index.str.startswith(f"train/images/{person}/")]
        normal = f"train/images/{person}/normal.jpg"
        assert rows.loc[normal, "how"] == "detector"
        others = rows.drop(normal)
        assert (others["how"] == "person").all() and (others["source"] == normal).all()
        for column in ("face_x", "face_y", "face_w", "face_h", "x", "y", "w", "h"):
            assert (others[column] == rows.loc[normal, column]).all()  # same size photos: the same box
    last = boxes[boxes.index.str.startswith(f"train/images/{persons[-1]}/")]
    assert (last["how"] == "centre").all()  # nobody's face found: the centre crop
    assert (boxes[boxes.index.str.startswith("eval/")]["how"] == "centre").all()  # eval: the detector alone
    assert summary.hows == {"detector": len(persons) - 1, "person": 6 * (len(persons) - 1),
                            "centre": 7 + len(load_eval(data / "eval"))}


def test_a_rerun_does_nothing_and_overwrite_redoes_every_image(data, tmp_path):
    out = tmp_path / "out"
    cut(data, out)
    before = tree(out)
    again = cut(data, out)
    assert again.done == 0 and again.skipped == again.total and tree(out) == before
    redo = cut(data, out, margin=0.0, overwrite=True)
    assert redo.done == redo.total and tree(out) != before


class Killed(Exception):
    """Stands for kill -9 in the middle of a run (nothing after it runs, the journal stays)."""


def test_a_killed_run_resumes_and_ends_with_the_same_files(data, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    cut(data, whole, workers=1, batch_size=5)  # detected in a worker process: the same files
    out, writes, write = tmp_path / "out", [0], crop.write_image

    def dying(*args, **kwargs):
        if writes[0] == 10:
            raise Killed()
        writes[0] += 1
        write(*args, **kwargs)

    monkeypatch.setattr(crop, "write_image", dying)
    with pytest.raises(Killed):
        cut(data, out)
    monkeypatch.setattr(crop, "write_image", write)
    assert (out / JOURNAL).is_file() and not (out / BOXES).exists()
    (out / "eval" / ".half.jpg.tmp4242.jpg").write_bytes(b"\xff\xd8")  # as a kill mid-write leaves
    resumed = cut(data, out)
    assert resumed.skipped == 10 and resumed.done == resumed.total - 10
    assert tree(out) == tree(whole)


def test_a_box_is_made_the_aspect_asked_for_inside_the_frame():
    for box in [(10, 10, 30, 50), (-20, 40, 80, 20), (0, 0, 500, 500), (350, 480, 60, 60)]:
        for aspect, ratio in ASPECTS.items():
            x, y, w, h = fit(box, ratio, (384, 512))
            assert 0 <= x and x + w <= 384 and 0 <= y and y + h <= 512, (box, aspect)
            assert abs(w / h - ratio) < 0.02, (box, aspect, w, h)


@pytest.mark.slow
def test_the_default_detector_writes_well_formed_boxes_and_train_and_predict_run_on_out(data, tmp_path, cli):
    out = tmp_path / "face"
    result = cli("crop", data, out, "--device", "cpu", "--workers", 0, "--aspect", "3:4")
    assert result.exit_code == 0, result.stderr
    boxes = read_boxes(out / BOXES)
    assert len(boxes) == len(list(data.rglob("*.jpg"))) and set(boxes["how"]) <= {"detector", "person", "centre"}
    found = boxes[boxes["how"] != "centre"]
    assert (found[["face_w", "face_h"]] > 0).all().all() and found["score"].between(0, 1).all()
    assert ((boxes["w"] / boxes["h"] - 0.75).abs() < 0.05).all()
    assert f"crop: {len(boxes)} images" in result.stderr

    runs, manifest = tmp_path / "runs", tmp_path / "m.csv"
    assert cli("split", out / "train", "--folds", 2, "-o", manifest).exit_code == 0
    trained = cli("train", manifest, "--fold", 0, *train_flags({**FAST, "epochs": 1}), "--runs-dir", runs, "--name", "r")
    assert trained.exit_code == 0, trained.stderr
    predicted = cli("predict", runs / "r", out / "eval", "--device", "cpu", "--workers", 0)
    assert predicted.exit_code == 0, predicted.stderr
    assert len(predicted.stdout.strip().splitlines()) == len(load_eval(out / "eval")) + 1


@pytest.mark.parametrize("detector, weights, needle", [
    ("yunet", None, "face_detection_yunet"), ("yunet", "gone.onnx", "face_detection_yunet"),
    ("dlib", "gone.dat", "mmod_human_face_detector.dat"),
])
def test_a_missing_detector_file_names_the_download(data, tmp_path, cli, detector, weights, needle):
    extra = ["--weights", tmp_path / weights] if weights else []
    result = cli("crop", data, tmp_path / "out", "--detector", detector, *extra, "--device", "cpu")
    assert_one_line_error(result, "maskkit crop: error: ", "--weights", needle)
    assert not (tmp_path / "out").exists()


# --- bad input ----------------------------------------------------------------------------------

CROP = ["--device", "cpu", "--workers", "0"]

BAD_CALLS = [
    bad("crop into the dataset", ["crop", "X", "X/face", *CROP], absent=["X/face"]),
    bad("crop into IN itself", ["crop", "X/eval", "X/eval", *CROP]),
    bad("crop into another dataset", ["crop", "X/eval", "other/eval", *CROP], other_dataset),
    bad("crop a missing folder", ["crop", "nothing", "face", *CROP], absent=["face"]),
    bad("crop --weights missing", ["crop", "X/eval", "face", "--detector", "dlib", "--weights", "no.dat", *CROP],
        absent=["face"]),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


@pytest.mark.parametrize("argv, option", [
    (["crop", "X/eval", "face", "--margin", "5"], "--margin"),
    (["crop", "X/eval", "face", "--aspect", "16:9"], "--aspect"),
    (["crop", "X/eval", "face", "--detector", "sift"], "--detector"),
], ids=["--margin 5", "--aspect 16:9", "--detector sift"])
def test_an_option_out_of_its_range_is_one_line_before_anything_is_written(world, argv, option, monkeypatch, capsys):
    assert_refused_while_parsing(world, argv, option, monkeypatch, capsys)
    assert not (world / "face").exists()


def test_a_face_missed_in_the_first_framing_is_found_in_the_next_and_mapped_back_to_the_photo():
    """find_face tries FRAMINGS in turn: a detector that only answers its second call still gives the
    face, in the photo's own pixels (that framing's border and scale undone)."""
    calls = []

    def second_time_lucky(work: np.ndarray) -> list[Face]:
        calls.append(work.shape[:2])
        if len(calls) < 2:
            return []
        height, width = work.shape[:2]  # the photo sits in the middle of the grey frame
        return [Face(width * 0.4, height * 0.4, width * 0.2, height * 0.2, 0.9)]

    photo = np.zeros((200, 100, 3), np.uint8)
    face = find_face(second_time_lucky, photo)
    border, side = FRAMINGS[1]
    assert len(calls) == 2 and max(calls[1]) == side
    pad = round(border * 200)
    framed = 200 + 2 * pad
    assert face is not None and face.score == 0.9
    assert face.y == pytest.approx(framed * 0.4 - pad, abs=2) and face.h == pytest.approx(framed * 0.2, abs=2)


def test_no_framing_finds_a_face_so_find_face_says_none_after_trying_each():
    calls = []
    assert find_face(lambda work: calls.append(1) or [], np.zeros((64, 64, 3), np.uint8)) is None
    assert len(calls) == len(FRAMINGS)
