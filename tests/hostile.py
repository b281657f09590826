"""Bad calls by a hostile user (no tests here: each tests/test_<command>.py holds its own rows).

A row is one bad call: the files it needs are made by its setup in a fresh copy of a small world
(conftest's `world`: a drawn dataset X with masks, runs/base a trained run, p.csv and q.csv its
predictions, folds.csv a manifest), every file of the world is hashed, the command runs in-process,
and `run_bad` checks the exit code, the one-line error, that every input is byte-identical, that no
run folder appeared and that the row's `absent` paths do not exist. MASKKIT_HOSTILE_LOG=FILE logs
each call as a JSON line (benchmarks/hostile.md is made from it, before and after a fix).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import pandas as pd
import pytest

from helpers import assert_one_line_error, tiny, train_flags

RUN = "runs/base"
TINY_FLAGS = train_flags(tiny(img_size=(32, 32), batch_size=8, epochs=1))
CAM = (RUN, "X/train", "--limit", "2", "--device", "cpu")
CAM_EVAL = ["cam", RUN, "X/eval", "--limit", "2", "--device", "cpu", "--out-dir", "camout"]
PREDICT = ["predict", RUN, "X/eval", "--device", "cpu", "--workers", "0", "-o", "out.csv"]
IMAGE = "{image}"  # replaced by a training image of the world
SEGMENT = ["--weights", "{deeplab}", "--model", "mobilenet", "--short-side", "16", "--workers", "0", "--device", "cpu"]
SHORT_SIDE = SEGMENT.index("--short-side") + 1
SYNTH_TINY = ["--persons", "2", "--eval-persons", "1", "--size", "32x32"]
MARKER = "pwned"  # the file a planted checkpoint would create when loaded
ABSOLUTE_NAME = "/maskkit-hostile-escaped"


class Bad(NamedTuple):
    setup: Callable[[Path], None] | None
    argv: list[str]
    code: int
    absent: tuple[str, ...]


def bad(name: str, argv, setup=None, *, code: int = 2, absent=()):
    """One row of a BAD_CALLS table: `pytest.param(Bad(...), id=name)`."""
    return pytest.param(Bad(setup, list(argv), code, tuple(absent)), id=name)


def run_bad(cli, world: Path, request, row: Bad) -> None:
    """Run one bad call in `world` and check it: exit `row.code`, one error line naming the command (the
    last on stderr), no traceback, every file of the world unchanged, no new run folder, none of `row.absent`."""
    argv = row.argv
    ro = weights = None
    if any("{ro}" in a for a in argv):
        ro = request.getfixturevalue("read_only")
        if ro is None:
            pytest.skip("no read-only folder available here")
    if "{deeplab}" in argv:
        weights = request.getfixturevalue("deeplab")
    if row.setup is not None:
        row.setup(world)
    argv = [a.replace("{image}", first_image(world)).replace("{ro}", str(ro)).replace("{deeplab}", str(weights))
            for a in argv]
    runs_before = sorted(p.name for p in (world / "runs").iterdir())
    before = tree_hashes(world)
    result = cli(*argv)
    after = tree_hashes(world)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    _log(argv, result, changed)
    assert_one_line_error(result, f"maskkit {argv[0]}: error: ", code=row.code, after_messages=True)
    assert changed == []
    assert sorted(p.name for p in (world / "runs").iterdir()) == runs_before  # no run folder, not even half of one
    assert [p for p in row.absent if (world / p).exists()] == []


def _log(argv: list[str], result, changed: list[str]) -> None:
    if os.environ.get("MASKKIT_HOSTILE_LOG"):
        lines = (result.stderr or "").strip().splitlines()
        with open(os.environ["MASKKIT_HOSTILE_LOG"], "a") as log:
            log.write(json.dumps({"argv": argv, "exit": result.exit_code, "changed": len(changed),
                                  "traceback": result.exception is not None and not isinstance(result.exception, SystemExit),
                                  "last": lines[-1] if lines else repr(result.exception)}) + "\n")


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".maskkit.lock"}


def first_person(root: Path) -> str:
    return sorted(p.name for p in (root / "X" / "train" / "images").iterdir())[0]


def first_image(root: Path) -> str:
    return f"X/train/images/{first_person(root)}/mask1.jpg"


# --- checks run through the console entry point or a subprocess -------------------------------------

def assert_refused_while_parsing(world: Path, argv: list[str], option: str, monkeypatch, capsys) -> None:
    """`maskkit ARGV` through maskkit.cli.main in this process: exit 2, one line naming `option`, no usage
    box, and nothing written (no run folder `runs/s` either)."""
    from maskkit.cli import main

    before = tree_hashes(world)
    monkeypatch.setattr(sys, "argv", ["maskkit", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"maskkit {argv[0]}: error: ") and option in lines[0], lines
    assert tree_hashes(world) == before and not (world / "runs" / "s").exists()


def run_with_file_limit(argv: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    """`python -m maskkit ARGV` where no file may grow past `limit` bytes (EFBIG, like a full disk)."""
    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "maskkit", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, preexec_fn=limit_files, timeout=300)


def assert_full_disk_leaves_no_file(world: Path, argv: list[str]) -> None:
    """A disk that fills while `argv` writes out/...: exit 1, one line naming out/, no file left there."""
    result = run_with_file_limit(argv, world, 2000)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and last.startswith(f"maskkit {argv[0]}: error: out/")
    assert "free some space" in last or "too large" in last
    assert not (world / "out").exists() or list((world / "out").iterdir()) == []


def assert_full_disk_names_the_output(world: Path, argv: list[str]) -> None:
    """shutil puts the *source* on the error: the line must name out/..., not the input copied."""
    before = tree_hashes(world / "X")
    result = run_with_file_limit(argv, world, 100)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and last.startswith(f"maskkit {argv[0]}: error: out/"), last
    assert "folds.csv:" not in last and "X/eval" not in last
    assert tree_hashes(world / "X") == before


def latin1_folder(world: Path) -> str:
    """odd/caf\\xe9.jpg: a name a zip archive from cp949 or Windows leaves, a surrogate-escaped str in Python."""
    folder = world / "odd"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")
    shutil.copyfile(world / first_image(world), folder / name)
    return name


# --- bad inputs made in the world (each returns nothing; the files become inputs) -------------------

def manifest_with(root: Path, change) -> None:
    manifest = pd.read_csv(root / "folds.csv", dtype={"person": str})
    change(manifest).to_csv(root / "bad.csv", index=False)


def empty_path_row(root: Path) -> None:
    manifest_with(root, lambda m: m.assign(path=[""] + m["path"].tolist()[1:]))


def duplicated_rows(root: Path) -> None:
    manifest_with(root, lambda m: pd.concat([m, m], ignore_index=True))


def mixed_gender(root: Path) -> None:
    def flip(m):
        first = m.index[m["person"] == m["person"].iloc[0]][0]
        m.loc[first, "gender"] = "female" if m.loc[first, "gender"] == "male" else "male"
        return m
    manifest_with(root, flip)


def manifest_climbing(root: Path) -> None:
    manifest_with(root, lambda m: m.assign(path=["X/../" + m["path"].iloc[0]] + m["path"].tolist()[1:]))


def junk_images(root: Path) -> None:
    """bad.csv: folds.csv's rows on a copy of X/train whose images are all unreadable."""
    shutil.copytree(root / "X" / "train", root / "U" / "train")
    for image in (root / "U" / "train" / "images").rglob("*.jpg"):
        image.write_bytes(b"not an image")
    manifest_with(root, lambda m: m.assign(path=m["path"].str.replace("X/train/", "U/train/", regex=False)))


def fixes_age(age: str):
    def make(root: Path) -> None:
        person = first_person(root).split("_")[0]
        (root / "fixes.csv").write_text(f"target,column,old,new,reason\n{person},age,,{age},hostile\n")
    return make


def fixes_climbing(root: Path) -> None:
    (root / "fixes.csv").write_text(f"target,column,old,new,reason\n../{first_person(root)}/mask1,mask,,wear,hostile\n")


def train_csv_age(age: str):
    def make(root: Path) -> None:
        path = root / "X" / "train" / "train.csv"
        lines = path.read_text().splitlines()
        fields = lines[1].split(",")
        fields[3] = age
        lines[1] = ",".join(fields)
        path.write_text("\n".join(lines) + "\n")
    return make


def soft_sum_three(root: Path) -> None:
    preds = pd.read_csv(root / "q.csv", dtype={"ImageID": str})
    probs = [f"p{i}" for i in range(18)]
    preds[probs] = preds[probs] * 3
    preds.to_csv(root / "q.csv", index=False)


def empty_prob_cell(root: Path) -> None:
    text = (root / "q.csv").read_text().splitlines()
    cells = text[1].split(",")
    cells[5] = ""
    text[1] = ",".join(cells)
    (root / "q.csv").write_text("\n".join(text) + "\n")


def nan_prob_cell(root: Path) -> None:
    preds = pd.read_csv(root / "q.csv", dtype={"ImageID": str})
    preds.loc[0, "p3"] = float("nan")
    preds.loc[1, "p4"] = float("inf")
    preds.to_csv(root / "q.csv", index=False)


def header_only_info(root: Path) -> None:
    shutil.copytree(root / "X" / "eval", root / "E")
    (root / "E" / "info.csv").write_text("ImageID,ans\n")


def header_only_preds(root: Path) -> None:
    (root / "empty.csv").write_text("ImageID,ans\n")


def hard_link_q(root: Path) -> None:
    os.link(root / "q.csv", root / "h.csv")


def metrics_epoch_x(root: Path) -> None:
    metrics = root / RUN / "metrics.csv"
    lines = metrics.read_text().splitlines()
    lines[1] = "x" + lines[1][lines[1].index(","):]
    metrics.write_text("\n".join(lines) + "\n")


def config_a_list(root: Path) -> None:
    (root / RUN / "config.json").write_text(json.dumps([1, 2, 3]))


def config_field(key: str, value):
    """runs/base/config.json with one field replaced (img_size and `options.KEY` in its "options")."""
    def make(root: Path) -> None:
        path = root / RUN / "config.json"
        config = json.loads(path.read_text())
        in_options = key == "img_size" or key.startswith("options.")
        (config["options"] if in_options else config)[key.removeprefix("options.")] = value
        path.write_text(json.dumps(config))
    return make


def source_changed(root: Path) -> None:
    """runs/base started from folds.csv (as config.json says), which has changed since."""
    config = json.loads((root / RUN / "config.json").read_text())
    config["source"] = "folds.csv"
    (root / RUN / "config.json").write_text(json.dumps(config, indent=2))


def recipe(text: str, name: str = "r.yaml"):
    def make(root: Path) -> None:
        (root / name).write_text(text)
    return make


class _Planted:
    """An object whose unpickling runs a command: what a hostile last.pt holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def planted_last(root: Path) -> None:
    import torch

    torch.save({"model": _Planted(root / MARKER), "epoch": 1}, root / RUN / "last.pt")


def foreign_last(root: Path) -> None:
    """A last.pt of plain tensors and numbers, with every key, whose states fit no run."""
    import torch

    torch.save({key: {} for key in ("progress", "model", "optimizer", "scheduler", "scaler", "rng")}
               | {"epoch": 1, "ema": None}, root / RUN / "last.pt")


def nan_weight(root: Path) -> None:
    import torch

    best = torch.load(root / RUN / "best.pt", weights_only=True)
    name = next(k for k, v in best["model"].items() if v.is_floating_point())
    best["model"][name].view(-1)[0] = float("nan")
    torch.save(best, root / RUN / "best.pt")


def victim(root: Path) -> Path:
    """victim/precious.jpg (and the .png a cam overlay would replace) outside every dataset."""
    (root / "victim").mkdir()
    shutil.copyfile(root / first_image(root), root / "victim" / "precious.jpg")
    shutil.copyfile(root / first_image(root), root / "victim" / "precious.png")
    return root / "victim" / "precious.jpg"


def info_image_id(make_id):
    """X/eval/info.csv with its first ImageID replaced by make_id(root)."""
    def setup(root: Path) -> None:
        image_id = make_id(root)
        info = pd.read_csv(root / "X" / "eval" / "info.csv", dtype={"ImageID": str})
        info.loc[0, "ImageID"] = image_id
        info.to_csv(root / "X" / "eval" / "info.csv", index=False)
    return setup


def climbing_id(root: Path) -> str:
    victim(root)
    return "../../../victim/precious.jpg"  # from X/eval/images up to the world's root


def absolute_id(root: Path) -> str:
    return str(victim(root).resolve())


def link_out_of_eval(root: Path) -> str:
    target = victim(root)
    (root / "X" / "eval" / "images" / "link.jpg").symlink_to(target)
    return "link.jpg"


def other_dataset(root: Path) -> None:
    """Another eval set of the same layout, whose info.csv differs from X's."""
    shutil.copytree(root / "X" / "eval", root / "other" / "eval")
    info = root / "other" / "eval" / "info.csv"
    lines = info.read_text().splitlines()
    info.write_text("\n".join(lines[:1] + lines[:0:-1]) + "\n")


def same_stem_png(root: Path) -> None:
    """An eval set where a.jpg and a.png sit side by side (the real data mixes extensions)."""
    shutil.copytree(root / "X" / "eval", root / "M")
    first = sorted((root / "M" / "images").iterdir())[0]
    shutil.copyfile(first, first.with_suffix(".png"))


def looping_link(root: Path) -> None:
    os.symlink("loop.jpg", root / "X" / "eval" / "images" / "loop.jpg")


def out_images_link_out(root: Path) -> None:
    """OUT/images of a segment output (its report is there) replaced by a link to a folder outside
    OUT, which holds files of the same names."""
    shutil.copytree(root / "X" / "eval" / "images", root / "victim")
    (root / "seg").mkdir()
    (root / "seg" / "segment_report.csv").write_text("path,person_area,status\n")
    (root / "seg" / "images").symlink_to(root / "victim")


def strange_images(root: Path) -> None:
    """Five training images of one person made strange: 1x1, 2000x3, and GIF, BMP and WebP data named .jpg."""
    from PIL import Image

    folder = root / "X" / "train" / "images" / first_person(root)
    Image.new("RGB", (1, 1)).save(folder / "mask1.jpg", format="JPEG")
    Image.new("RGB", (2000, 3), "white").save(folder / "mask2.jpg", format="JPEG")
    face = Image.open(folder / "normal.jpg").convert("RGB")
    for name, kind in (("mask3.jpg", "GIF"), ("mask4.jpg", "BMP"), ("mask5.jpg", "WEBP")):
        face.save(folder / name, format=kind)


def notes_file(root: Path) -> None:
    (root / "notes.txt").write_text("my notes\n")


def a_file(root: Path) -> None:
    (root / "afile").write_text("not a folder\n")


def synth_lookalike(root: Path) -> None:
    """A copy of a drawn set, made to look real, with the user's own notes in it."""
    shutil.copytree(root / "X", root / "real")
    (root / "real" / "train" / "injected_errors.csv").unlink(missing_ok=True)
    (root / "real" / "eval" / "truth.csv").unlink(missing_ok=True)
    (root / "real" / "train" / "images" / first_person(root) / "notes.txt").write_text("x\n")
