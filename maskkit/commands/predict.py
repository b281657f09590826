"""`maskkit predict MODEL... [IMAGES...]`: the prediction CSV (docs/formats.md) of one or more models.

MODEL is a run folder (a folder with config.json; its best.pt) or an `.onnx` file from `maskkit
export`; the leading arguments that are models are the models, the rest are images: DATA/eval, a
folder (recursive), DATA/train or a manifest CSV (keyed by their paths as `split` writes them, so
`score` takes the manifest as truth), image files, globs (expanded here when the shell did not) or
`-` (paths on stdin, one per line, read verbatim: only the line ending is removed). Several models
give the mean of their probabilities, in one pass over the images (engine/inference.py, shared with
`val`), each model's rows refused unless they are probabilities. `p*` are the 18 class probabilities (a
multi-output model's are p_mask x p_gender x p_age), `ans` their argmax. With `--calibration
calib.json` (`maskkit calibrate`, fitted on one recipe) `p*` are the calibrated probabilities.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from maskkit.contract.decision import Decision
from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console, examples, is_image
from maskkit.contract.layout import load_eval, read_train
from maskkit.contract.manifest import check_images_exist, read_manifest
from maskkit.contract.paths import as_text, shown
from maskkit.contract.predictions import prediction_frame, prediction_header, write_predictions
from maskkit.contract.streams import read_input
from maskkit.engine.devices import default_workers, resolve_device
from maskkit.engine.inference import ensemble_probs, onnx_member, torch_member

DEFAULT_DATA = "data/eval"
MODEL_FIX = "the first arguments are run folders (with config.json) or .onnx files from maskkit export"


# --- what the arguments name ---------------------------------------------------------------

def is_model(arg: str) -> bool:
    """A run folder (holds config.json) or an .onnx file name."""
    path = Path(arg)
    return arg.lower().endswith(".onnx") or (path.is_dir() and (path / "config.json").is_file())


def split_arguments(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(models, image arguments): the leading models, then the rest (default DATA/eval)."""
    args = [str(a) for a in args]
    for arg in args:
        try:
            os.stat(arg)
        except OSError as exc:  # a missing path is told later, by what the argument was meant to be
            if exc.errno == errno.ENAMETOOLONG:
                raise MaskkitError(f"{shown(arg)}: file name too long ({len(arg)} characters); "
                                   "name a model, image, folder or manifest") from None
    count = next((i for i, a in enumerate(args) if not is_model(a)), len(args))
    models, rest = args[:count], args[count:]
    if not models:
        first = args[0] if args else "MODEL"
        state = "not found" if args and not Path(first).exists() and first != "-" else "not a model"
        raise MaskkitError(f"{shown(first)}: {state}; {MODEL_FIX}")
    late = [a for a in rest if is_model(a)]
    if late:
        raise MaskkitError(f"{shown(late[0])}: a model after the images; put every run folder or .onnx file first")
    return models, rest or [DEFAULT_DATA]


def is_file(path: str) -> bool:
    """Path.is_file for any text a user may pipe in: a NUL byte or a name too long is no file."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def stdin_paths(stream=None) -> list[str]:
    """Image paths listed on standard input (or `stream`), one per line, each read verbatim: only the
    line ending (LF or CRLF) is removed, bytes that are not UTF-8 kept as the OS spells the name
    (os.fsdecode); empty lines are skipped. Each must be a file."""
    data = read_input("-") if stream is None else stream.read()
    if isinstance(data, str):
        data = os.fsencode(data)
    lines = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    paths = [os.fsdecode(line) for line in lines if line]
    missing = [p for p in paths if not is_file(p)]
    if missing:
        raise MaskkitError(f"-: {len(missing)} of {len(paths)} listed images not found "
                           f"({examples([shown(p, 60) for p in missing])}); stdin lists one image path per line")
    if not paths:
        raise MaskkitError("-: no image paths on stdin (list one path per line, e.g. find DIR -name '*.jpg' |)")
    return paths


def expanded(arg: str) -> list[str]:
    """The image files a pattern matches (sorted; `**` recursive), each file once however many names
    reach it (a link to its own folder makes `**` repeat every file below it); an error when none does."""
    found = sorted(p for p in glob.glob(arg, recursive=True) if Path(p).is_file() and is_image(Path(p)))
    if not found:
        raise MaskkitError(f"{shown(arg)}: no image matches this pattern (.jpg, .jpeg, .png, .bmp, .webp files)")
    first: dict[Path, str] = {}
    for path in sorted(found, key=lambda p: (p.count(os.sep), p)):  # the shortest name of each file wins
        first.setdefault(Path(path).resolve(), path)
    kept = set(first.values())
    return [p for p in found if p in kept]


def is_train_folder(path: Path) -> bool:
    """DATA/train of the competition layout (train.csv and images/), not an eval folder."""
    return path.is_dir() and (path / "train.csv").is_file() and not (path / "info.csv").is_file()


def is_manifest(arg: str) -> bool:
    return arg.lower().endswith(".csv") and Path(arg).is_file()


def labelled_paths(arg: str) -> list[str]:
    """The images of DATA/train (as `split` lists them) or of a manifest CSV: its `path` column."""
    if is_manifest(arg):
        manifest = read_manifest(arg)
        check_images_exist(manifest, arg)
        return manifest["path"].tolist()
    images, quirks = read_train(arg)
    quirks.report()
    return images["path"].tolist()


def argument_images(arg: str, stdin=None) -> pd.DataFrame:
    """ImageID, path of one image argument, ImageID = the path as given or found (as CSV text:
    contract.paths.as_text)."""
    path = Path(arg)
    if arg == "-":
        paths = stdin_paths(stdin)
    elif is_train_folder(path) or is_manifest(arg):
        paths = labelled_paths(arg)
    elif path.is_dir():
        paths = load_eval(path)["path"].tolist()
    elif path.is_file():
        if not is_image(path):
            raise MaskkitError(f"{shown(arg)}: not an image (.jpg, .jpeg, .png, .bmp, .webp) nor a manifest CSV; "
                               "pass images, folders, DATA/train, a manifest, globs or - (paths on stdin)")
        paths = [arg]
    elif glob.has_magic(arg):
        paths = expanded(arg)
    else:
        raise MaskkitError(f"{shown(arg)}: not found; pass DATA/eval, a folder, image files, globs or - "
                           "(paths on stdin)")
    return pd.DataFrame({"ImageID": [as_text(p) for p in paths], "path": paths})


def resolve_images(args: Sequence[str], stdin=None) -> pd.DataFrame:
    """ImageID, path of every image the arguments name, in argument order.

    One folder alone keeps the competition's keys (info.csv's ImageIDs, or paths relative to the
    folder); otherwise each row is keyed by its path as given (files, stdin lines, a manifest's
    `path`) or found (under a folder, DATA/train as `split` writes it, by a glob). An image named
    twice is predicted once."""
    if list(args).count("-") > 1:
        raise MaskkitError("-: standard input given twice; list every path in one stream")
    if len(args) == 1 and Path(args[0]).is_dir() and not is_train_folder(Path(args[0])):
        return load_eval(args[0])
    table = pd.concat([argument_images(str(a), stdin) for a in args], ignore_index=True)
    repeated = table["ImageID"].duplicated()
    if repeated.any():
        console.print(f"note: {int(repeated.sum())} images named twice ({examples(table.loc[repeated, 'ImageID'].tolist())}); "
                      "each is predicted once")
        table = table[~repeated].reset_index(drop=True)
    return table


def calibration_for_predict(path: str | Path) -> Decision:
    """calib.json, refused when it was fitted on several recipes (its weights are a vote's: `vote --soft`)."""
    decision = Decision.read(path)
    if len(decision.recipes) > 1:
        raise MaskkitError(f"{path}: fitted on the soft vote of {len(decision.recipes)} recipes; apply it with "
                           "maskkit vote --soft --calibration on their predictions, or calibrate on one recipe "
                           "for predict")
    return decision


def run(models: str | Path | Sequence[str | Path], data: str | Path | Sequence[str | Path] = (), tta: str = "none",
        out: str | Path | None = None, batch_size: int = 64, device: str = "auto", workers: int | None = None,
        show_progress: bool | None = None, names: bool = False, stdin=None,
        calibration: str | Path | None = None) -> pd.DataFrame:
    """Predict the images `data` names (default DATA/eval) with the mean of `models`; write the CSV.

    `models` may also hold the image arguments after the models (the command line passes one list).
    `tta` is one of options.TTA_MODES (the command line checks it); torch's threads are the caller's.
    `calibration`: a calib.json whose decision is applied to the probabilities."""
    decision = calibration_for_predict(calibration) if calibration is not None else None
    models, data = ([x] if isinstance(x, (str, Path)) else list(x) for x in (models, data))
    models, image_args = split_arguments([str(a) for a in [*models, *data]])
    images = resolve_images(image_args, stdin)
    header = prediction_header(names)
    inputs = Inputs.of(*models, images["path"].tolist(),  # run folders are inputs: nothing is written inside
                       [a for a in image_args if Path(a).is_dir() or is_manifest(a)], calibration)
    inputs.check(out, header=header)
    torch_device = resolve_device(device)
    members = [onnx_member(m, torch_device) if m.lower().endswith(".onnx") else torch_member(m, torch_device)
               for m in models]
    workers = default_workers(torch_device) if workers is None else workers
    probs = ensemble_probs(members, images["path"].tolist(), tta, batch_size, workers, torch_device, show_progress)
    if decision is not None:
        probs = decision.apply(probs)
    frame = prediction_frame(images["ImageID"].tolist(), probs, names=names)
    write_predictions(frame, out, inputs=inputs)
    if out is not None and str(out) != "-":
        which = members[0].name if len(members) == 1 else f"the mean of {len(members)} models"
        console.print(f"{len(frame)} predictions of {which} written to {out}")
    return frame
