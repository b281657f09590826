"""`maskkit export RUN model.onnx`: a run's network as ONNX, with the preprocessing beside it.

The graph takes uint8 NCHW RGB pixels (dynamic batch) and returns the 18 class probabilities; the
resize, crop and class table are in the ONNX metadata (`maskkit`) and in `model.onnx.json`
(docs/formats.md, "ONNX export"). The export checks itself: the same images through torch and
onnxruntime must agree within 1e-4, else nothing is left behind and the exit code is 1. Nothing
is written inside the run folder, and the sidecar, a name the user did not type, is never a link.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import torch

from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.files import Inputs, atomic_path, console, write_bytes
from maskkit.data.loader import ImageDataset
from maskkit.data.presets import eval_transform
from maskkit.engine.export import (TOLERANCE, OnnxModel, ProbabilityNet, check_images, largest_difference,
                                   onnx_modules, preprocessing, sidecar_path, write_onnx)
from maskkit.engine.models import load_run

ONNX_MAGIC = b"\x08"  # an ONNX file starts with ModelProto field 1 (ir_version)


def check_sidecar(path: Path) -> None:
    """The sidecar's name is derived, not typed: a link or anything but a plain file there is refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise MaskkitError(f"{path}: cannot check the sidecar's place: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a plain file"
        raise MaskkitError(f"{path}: is {what}; export writes the sidecar there and follows no link: "
                           "remove it, or choose another model name")


def drawn_images(paths: list[str], config: dict, limit: int = 8) -> torch.Tensor | None:
    """Up to `limit` real images as uint8 model inputs (the check's second half), None without any."""
    if not paths:
        return None
    size, crop = tuple(config["img_size"]), tuple(config["crop"])
    dataset = ImageDataset(paths[:limit], None, size, eval_transform(size, config["mean"], config["std"], crop,
                                                                       normalize=False), crop=crop, on_error="raise")
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def run(run_dir: str | Path, out: str | Path, images: list[str] | None = None) -> dict:
    """Export RUN's best.pt to `out` (.onnx) and its sidecar; returns the preprocessing record.

    `images`: image files to include in the torch/onnxruntime check (besides seeded random pixels)."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise MaskkitError(f"{out}: name the model file *.onnx (e.g. {out.with_suffix('.onnx').name})")
    onnx_modules()  # a missing extra is reported before any work
    inputs = Inputs.of(run_dir, images)  # the run folder is an input: nothing is written inside it
    inputs.check(out, magic=ONNX_MAGIC)
    check_sidecar(sidecar_path(out))
    inputs.check(sidecar_path(out), magic=b"{")
    model, config = load_run(run_dir, "cpu")
    meta = preprocessing(config, Path(run_dir).resolve().name)
    net = ProbabilityNet(model, config["mean"], config["std"]).eval()
    batch = check_images(tuple(config["img_size"]))
    real = drawn_images(list(images or []), config)
    if real is not None:
        batch = torch.cat([batch, real])
    with atomic_path(out) as tmp:
        write_onnx(net, meta, tmp)
        difference = largest_difference(net, OnnxModel(tmp, "cpu", sidecar=False), batch)
        if not difference <= TOLERANCE:
            raise RunFailure(f"{out}: not written: onnxruntime's probabilities differ from torch's by "
                             f"{difference:.2e} (> {TOLERANCE:g}) on {len(batch)} check images")
        meta = {**meta, "check": {"images": len(batch), "max_abs_difference": difference}}
        check_sidecar(sidecar_path(out))  # again: the check took a while, and a link may have come
        write_bytes(sidecar_path(out), (json.dumps(meta, indent=2) + "\n").encode())
    console.print(f"{out} written ({Path(run_dir).name}: uint8 NCHW RGB {meta['input']['height']}x"
                  f"{meta['input']['width']} in, 18 probabilities out; torch vs onnxruntime "
                  f"max |dp| {difference:.1e}); preprocessing in {sidecar_path(out)}")
    return meta
