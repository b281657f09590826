"""`maskkit cam`: Grad-CAM overlays of a trained run, a contact sheet, and "does it look at the person?".

The model sees exactly what `predict` sees (the run's decode + eval transform); the overlay is drawn on
the same resized image, and a person mask goes through the same geometry (nearest interpolation), so
`--summary` can say how much of the CAM mass falls on the person rather than on the background.
Outputs: OUT/<head>/<image's relative path>.png, OUT/cam.csv (one row per image and head),
OUT/sheet.png (or --sheet), and with --summary a per-class CSV on stdout (or -o).

The model side (one head as a tensor model, per-backbone target layers, a batch explained) is
engine/gradcam.py. Why over 400 lines: input collection (files, folders, datasets, manifests, masks),
overlays, the contact sheet and the summary are all this command's parts; splitting them would make
modules that only cam imports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam.utils.image import show_cam_on_image
from rich.table import Table
from torch import nn

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import Inputs, console, is_image, write_csv
from maskkit.contract.labels import AGE_GROUPS, GENDERS, MASKS, NUM_CLASSES, class_name, decode
from maskkit.contract.layout import load_eval, load_folder, load_train
from maskkit.contract.paths import as_text
from maskkit.contract.manifest import read_manifest
from maskkit.contract.runfolder import BEST, CONFIG, require
from maskkit.data.images import contact_sheet, image_magic, read_image, write_image
from maskkit.data.loader import decode_image, image_size
from maskkit.data.presets import finish, geometry, work_size
from maskkit.engine.devices import resolve_device
from maskkit.engine.gradcam import HeadModel, explain, make_cam, target_layer
from maskkit.engine.models import load_run
from maskkit.contract.progress import progress_bar

HEADS = ("class", "mask", "gender", "age")
HEAD_CLASSES = {
    "class": tuple(class_name(k) for k in range(NUM_CLASSES)),
    "mask": MASKS,
    "gender": GENDERS,
    "age": AGE_GROUPS,
}
SUMMARY_COLUMNS = ["head", "by", "class", "name", "images", "cam_inside", "cam_background", "person_area", "lift"]
SHEET_MAX = 256  # tiles on one contact sheet; use --limit to choose which images
TILE_HEIGHT = 160  # sheet tiles are scaled to this height
TILE_MIN_WIDTH = 200  # room for a caption like "pred incorrect/female/30-59 0.93"
MASKS_FROM = "`maskkit segment --masks` or `maskkit synth --with-masks`"  # where person masks come from


@dataclass(frozen=True)
class Item:
    """One input image: where it is, its output name under OUT/<head>/, its true class (if known)."""

    path: Path
    rel: PurePosixPath
    label: int | None = None
    mask: Path | None = None


# --- inputs --------------------------------------------------------------------------------------


def safe_rel(path: Path) -> PurePosixPath:
    """A path's parts without its anchor, '.' and '..', so it can be mirrored under OUT."""
    parts = [p for p in Path(path).parts if p not in ("", ".", "..") and p != Path(path).anchor]
    return PurePosixPath(*parts) if parts else PurePosixPath(Path(path).name or "image")


def _folder_items(folder: Path) -> list[Item]:
    """Images of a folder: a train dataset (with labels), an eval dataset, or any image folder."""
    base = PurePosixPath(folder.resolve().name or "root")
    if (folder / "train.csv").is_file() or (folder / "train" / "train.csv").is_file():
        table = load_train(folder)
        labels = table["label"].tolist()
    elif (folder / "info.csv").is_file() or (folder / "eval" / "info.csv").is_file():
        table = load_eval(folder)
        labels = [None] * len(table)
    else:
        table = load_folder(folder)
        labels = [None] * len(table)
    return [Item(Path(p), base / Path(p).relative_to(folder).as_posix(), None if lab is None else int(lab))
            for p, lab in zip(table["path"], labels)]


def _manifest_items(csv_path: Path) -> list[Item]:
    """Rows of a manifest CSV (read with the contract's checks): images with known labels."""
    table = read_manifest(csv_path)
    missing = [p for p in table["path"] if not Path(p).is_file()]
    if missing:
        raise MaskkitError(f"{csv_path}: image not found: {missing[0]} (paths are read from where you run the command)")
    return [Item(Path(p), safe_rel(Path(p)), int(lab)) for p, lab in zip(table["path"], table["label"])]


def collect_images(inputs: Sequence[Path], out: Path | None = None) -> list[Item]:
    """Every image named by IMAGES (files, folders, datasets, manifest CSVs), each once, in order.

    Files under OUT are skipped (so a re-run does not explain its own overlays); two different images
    that would get the same output name get '~2', '~3' appended.
    """
    items: list[Item] = []
    for entry in inputs:
        entry = Path(entry)
        if entry.is_dir():
            items.extend(_folder_items(entry))
        elif entry.is_file() and entry.suffix.lower() == ".csv":
            items.extend(_manifest_items(entry))
        elif entry.is_file() and is_image(entry):
            items.append(Item(entry, safe_rel(entry)))
        elif entry.exists():
            raise MaskkitError(f"{entry}: not an image, folder or manifest CSV (pass .jpg/.jpeg/.png files or folders)")
        else:
            raise MaskkitError(f"{entry}: image not found (pass image files, folders, DATA/train or DATA/eval)")
    out_abs = Path(os.path.abspath(out)) if out is not None else None
    seen: set[str] = set()
    names: dict[PurePosixPath, int] = {}
    unique = []
    for item in items:
        key = os.path.abspath(item.path)
        if key in seen or (out_abs is not None and Path(key).is_relative_to(out_abs)):
            continue
        seen.add(key)
        rel = item.rel.with_suffix(".png")
        count = names.get(rel, 0) + 1
        names[rel] = count
        if count > 1:
            rel = rel.with_name(f"{rel.stem}~{count}.png")
        unique.append(Item(item.path, rel, item.label, item.mask))
    if not unique:
        raise MaskkitError(f"{' '.join(map(str, inputs))}: no images to explain (pass images outside --out)")
    return unique


def spread(n: int, limit: int | None) -> list[int]:
    """Indices of `limit` items spread evenly over `n` (all when limit is None or >= n)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


def mask_candidates(image: Path, masks_dir: Path) -> list[Path]:
    """Where an image's mask may be, longest trailing part of the image path first (the brief's rule)."""
    parts = Path(os.path.abspath(image)).with_suffix(".png").parts[1:]
    return [masks_dir.joinpath(*parts[i:]) for i in range(len(parts))]


def find_mask(image: Path, masks_dir: Path) -> Path:
    """The person mask of an image under MASKS, or a one-line error naming the image."""
    candidates = mask_candidates(image, masks_dir)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MaskkitError(
        f"{image}: no person mask under {masks_dir} (looked for {candidates[-1]} and longer paths ending in it; "
        f"make masks with {MASKS_FROM})"
    )


def parse_target(text: str) -> str | int:
    """'pred', 'true' or a class index of the chosen head."""
    text = str(text).strip().lower()
    if text in ("pred", "true"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise MaskkitError(f"--target {text!r}: expected pred, true or a class index like 2") from None
    if value < 0:
        raise MaskkitError(f"--target {text!r}: a class index is 0 or more")
    return value


def parse_heads(text: str) -> tuple[str, ...]:
    """'class', 'mask,age' or 'all' -> heads in a fixed order."""
    names = [h.strip().lower() for h in str(text).split(",") if h.strip()]
    if names == ["all"]:
        return HEADS
    bad = [h for h in names if h not in HEADS]
    if bad or not names:
        raise MaskkitError(f"--head {text!r}: expected one or more of {', '.join(HEADS)} (comma-separated) or all")
    return tuple(h for h in HEADS if h in names)


# --- preprocessing -------------------------------------------------------------------------------


def read_mask(path: Path, shape_hw: tuple[int, int]) -> np.ndarray:
    """A binary person mask (uint8 0/1) brought to the decoded image's size (nearest), as its image was."""
    mask = read_image(path, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise MaskkitError(f"{path}: not a readable PNG mask (remake it with `maskkit segment --masks`)")
    if mask.shape != tuple(shape_hw):
        mask = cv2.resize(mask, (shape_hw[1], shape_hw[0]), interpolation=cv2.INTER_NEAREST)
    return (mask > 127).astype(np.uint8)


def check_files(items: Sequence[Item]) -> None:
    """Every image (and mask) readable from its header, each mask shaped like its image: checked
    before anything is written."""
    for item in items:
        wh = image_size_or_error(image_size, item.path, "not a readable image; remove or replace it")
        if item.mask is None:
            continue
        mw, mh = image_size_or_error(image_size, item.mask, "not a readable PNG mask; remake it")
        if abs(mw / mh - wh[0] / wh[1]) > 0.02 * wh[0] / wh[1]:
            raise MaskkitError(f"{item.mask}: mask is {mw}x{mh} but its image {item.path} is {wh[0]}x{wh[1]} "
                               "(pass the masks made for these images)")


def image_size_or_error(reader: Callable, path: Path, problem: str) -> tuple[int, int]:
    try:
        return reader(path)
    except Exception:  # PIL raises several types for a file that is not an image
        raise MaskkitError(f"{path}: {problem}") from None


# --- numbers -------------------------------------------------------------------------------------


def mass_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the CAM's mass that lies inside the mask (NaN for an all-zero CAM)."""
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0, None)
    total = cam.sum()
    if total <= 0:
        return float("nan")
    return float(cam[np.asarray(mask) > 0].sum() / total)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per head, per class and overall: mean share of CAM mass on the person, on the background,
    the person's mean area (what a CAM spread evenly would score) and lift = inside / area.

    Classes are the true ones (`by` = label) where every image has a label, else the predicted ones (pred).
    Each image counts once (mean of per-image shares); images with an all-zero CAM are left out.
    """
    out = []
    for head, group in rows.groupby("head", sort=False):
        group = group[group["cam_inside"].notna()]
        known = group["label"].notna().all() and len(group) > 0
        by = "label" if known else "pred"
        classes = group["label" if known else "pred"].astype(int)
        names = HEAD_CLASSES[head]
        parts = [(str(k), names[k], group[classes == k]) for k in sorted(classes.unique())]
        parts.append(("all", "all", group))
        for key, name, part in parts:
            inside, area = part["cam_inside"].mean(), part["person_area"].mean()
            out.append({"head": head, "by": by, "class": key, "name": name, "images": len(part),
                        "cam_inside": inside, "cam_background": 1 - inside, "person_area": area,
                        "lift": inside / area if area > 0 else float("nan")})
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


# --- pictures ------------------------------------------------------------------------------------


def overlay(rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The CAM as a heat map over the image (RGB uint8)."""
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, np.clip(cam, 0, 1), use_rgb=True)


def tile(rgb: np.ndarray, lines: Sequence[str], colour: tuple[int, int, int]) -> np.ndarray:
    """An overlay scaled to the sheet's tile height with its caption lines underneath."""
    scale = TILE_HEIGHT / rgb.shape[0]
    size = (max(1, round(rgb.shape[1] * scale)), TILE_HEIGHT)
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    width = max(small.shape[1], TILE_MIN_WIDTH)
    band = np.full((14 * len(lines) + 4, width, 3), 24, np.uint8)
    chars = max(4, width // 6)
    for i, text in enumerate(lines):
        text = shorten(as_text(text), chars)  # putText crashes on a surrogate-escaped name
        cv2.putText(band, text, (3, 12 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    colour if i else (235, 235, 235), 1, cv2.LINE_AA)
    body = np.zeros((small.shape[0], width, 3), np.uint8)
    left = (width - small.shape[1]) // 2
    body[:, left: left + small.shape[1]] = small
    return np.vstack([body, band])


def shorten(text: str, chars: int) -> str:
    """`text` in at most `chars` characters, cut in the middle: the start (a person's folder) and the
    end (the file) stay readable."""
    if len(text) <= chars:
        return text
    tail = (chars - 1) // 2
    return text[: chars - 1 - tail] + "~" + text[len(text) - tail:]


def caption(item: Item, head: str, pred: int, prob: float, target: int, truth: int | None) -> tuple[list[str], tuple]:
    """Caption lines and colour (green right, red wrong, grey unknown) for one overlay."""
    names = HEAD_CLASSES[head]
    where = f"{item.rel.parent.name}/{item.rel.stem}".lstrip("/")
    lines = [where, ("" if head == "class" else f"{head}: ") + f"pred {names[pred]} {prob:.2f}",
             f"true {names[truth]}" if truth is not None else "true ?"]
    if target != pred:
        lines.append(f"cam for {names[target]}")
    colour = (150, 150, 150) if truth is None else ((90, 220, 90) if truth == pred else (240, 80, 80))
    return lines, colour


# --- the command ---------------------------------------------------------------------------------


def head_truth(label: int | None, head: str) -> int | None:
    """The true class of an image for one head (None when unknown)."""
    if label is None:
        return None
    mask, gender, age = (int(v) for v in decode(label))
    return {"class": int(label), "mask": mask, "gender": gender, "age": age}[head]


def prepare(items: Sequence[Item], geometry, tensorize, decode_hw: tuple[int, int]):
    """Decode a batch as predict does; return (resized RGB images, person masks or None, input tensor)."""
    images, masks, tensors = [], [], []
    for item in items:
        rgb = decode_image(item.path, decode_hw)  # UnreadableImage (exit 2) names the file
        if item.mask is not None:
            person = read_mask(item.mask, rgb.shape[:2])
            done = geometry(image=rgb, mask=person)
            masks.append(done["mask"])
        else:
            done = geometry(image=rgb)
            masks.append(None)
        images.append(done["image"])
        tensors.append(tensorize(image=done["image"])["image"])
    return images, masks, torch.stack(tensors)


@dataclass(frozen=True)
class Explainer:
    """A loaded run ready for Grad-CAM: the model, its target layer, and predict's preprocessing."""

    model: nn.Module
    layer: nn.Module
    reshape: Callable | None
    geometry: Callable
    tensorize: Callable
    decode_hw: tuple[int, int]
    device: torch.device


def load_explainer(run_dir: Path, device: torch.device) -> Explainer:
    model, config = load_run(run_dir, device)
    model.eval()
    model.requires_grad_(True)  # Grad-CAM needs gradients at the target layer
    img_size = tuple(int(v) for v in config["img_size"])
    crop = tuple(config["crop"])
    layer, reshape = target_layer(model.backbone, img_size)
    return Explainer(model, layer, reshape, geometry(img_size, crop), finish(config["mean"], config["std"]),
                     work_size(img_size, crop), device)


def check_options(heads: Sequence[str], goal: str | int, method: str, batch_size: int, limit: int | None,
                  summary: bool, masks: Path | None) -> None:
    """The option checks typer cannot do (the choices themselves it checks)."""
    if batch_size < 1:
        raise MaskkitError(f"--batch-size {batch_size}: expected 1 or more")
    if limit is not None and limit < 1:
        raise MaskkitError(f"--limit {limit}: expected 1 or more")
    if summary and masks is None:
        raise MaskkitError(f"--summary needs --masks DIR (person masks from {MASKS_FROM})")
    if masks is not None and not Path(masks).is_dir():
        raise MaskkitError(f"{masks}: mask folder not found (make it with {MASKS_FROM})")
    if method == "eigencam" and goal != "pred":
        raise MaskkitError(f"--target {goal}: --method eigencam explains no particular class "
                           "(leave --target at pred, or use gradcam)")
    if isinstance(goal, int):
        for h in heads:
            if goal >= len(HEAD_CLASSES[h]):
                raise MaskkitError(f"--target {goal}: the {h} head has classes 0..{len(HEAD_CLASSES[h]) - 1}")


def protected_inputs(run_dir: Path, images: Sequence[Path], masks: Path | None) -> Inputs:
    """What cam reads and must never overwrite: the run, the masks, datasets and named image files."""
    datasets = [p for p in map(Path, images) if p.is_dir() and any(
        (p / sub / name).is_file() for sub in ("", "train", "eval") for name in ("train.csv", "info.csv"))]
    return Inputs.of(run_dir, masks, datasets, [p for p in images if Path(p).is_file()])


def chosen_items(images: Sequence[Path], out: Path, goal: str | int, masks: Path | None,
                 limit: int | None) -> list[Item]:
    """The images to explain (spread over the input by --limit), with their masks, all checked readable."""
    items = collect_images(images, out)
    items = [items[i] for i in spread(len(items), limit)]
    if goal == "true":
        unknown = [it.path for it in items if it.label is None]
        if unknown:
            raise MaskkitError(f"{unknown[0]}: no known label for --target true (pass DATA/train or a manifest CSV, "
                               "or use --target pred)")
    if masks is not None:
        items = [Item(it.path, it.rel, it.label, find_mask(it.path, Path(masks))) for it in items]
    check_files(items)
    return items


def image_row(item: Item, head: str, goal: str | int, probs: np.ndarray, truth: int | None,
              cam_map: np.ndarray, person: np.ndarray | None, overlay_path: Path) -> dict:
    """One row of cam.csv: the explained class, the prediction, and the CAM mass on the person."""
    pred = int(probs.argmax())
    chosen = pred if goal == "pred" else (truth if goal == "true" else int(goal))
    return {"image": as_text(item.path), "overlay": as_text(overlay_path), "head": head, "target": chosen,
            "pred": pred, "prob": float(probs[pred]), "target_prob": float(probs[chosen]), "label": truth,
            "cam_inside": mass_inside(cam_map, person) if person is not None else float("nan"),
            "person_area": float(person.mean()) if person is not None else float("nan")}


def explain_batch(ex: Explainer, batch: Sequence[Item], first: int, heads: Sequence[str], goal: str | int,
                  method: str, out: Path, inputs: Inputs, tiles: list) -> list[dict]:
    """Every head's CAMs of one batch: overlays written, sheet tiles added (up to SHEET_MAX), rows returned."""
    rgbs, person, x = prepare(batch, ex.geometry, ex.tensorize, ex.decode_hw)
    x = x.to(ex.device)
    rows = []
    for h in heads:
        truths = [head_truth(it.label, h) for it in batch]
        with make_cam(method, HeadModel(ex.model, h), ex.layer, ex.reshape) as cam:
            cams, probs = explain(cam, x, goal, truths)
        for i, item in enumerate(batch):
            path = out / h / item.rel
            row = image_row(item, h, goal, probs[i], truths[i], cams[i], person[i], path)
            picture = overlay(rgbs[i], cams[i])
            write_image(path, picture, rgb=True, inputs=inputs)
            if len(tiles) < SHEET_MAX:
                lines, colour = caption(item, h, row["pred"], row["prob"], row["target"], truths[i])
                tiles.append((first + i, heads.index(h), tile(picture, lines, colour)))
            rows.append(row)
    return rows


def write_sheet(tiles: list, heads: Sequence[str], sheet: Path, inputs: Inputs) -> None:
    """The contact sheet: tiles in input order, an image's heads side by side."""
    per_row = len(heads) * max(1, 8 // len(heads))
    ordered = [t for _, _, t in sorted(tiles, key=lambda k: k[:2])]
    write_image(sheet, contact_sheet(ordered, columns=per_row), rgb=True, inputs=inputs)


def run(run_dir: Path, images: Sequence[Path], out_dir: Path = Path("cam"), head: str = "class",
        target: str = "pred", method: str = "gradcam", sheet: Path | None = None, summary: bool = False,
        masks: Path | None = None, out: Path | None = None, batch_size: int = 16,
        device: str | None = None, limit: int | None = None) -> pd.DataFrame:
    """Explain a run's decisions on IMAGES; returns the per-image table (also written to OUT_DIR/cam.csv; `out`: the
    --summary CSV).

    Everything the user can get wrong is checked before anything is computed or written.
    """
    out_dir = Path(out_dir)
    heads, goal = parse_heads(head), parse_target(target)
    check_options(heads, goal, method, batch_size, limit, summary, masks)
    require(run_dir, CONFIG, BEST)
    protected = protected_inputs(run_dir, images, masks)
    protected.check_folder(out_dir, "--out-dir")
    protected.check(sheet, magic=image_magic(sheet))
    protected.check(out, header=SUMMARY_COLUMNS)
    torch_device = resolve_device(device or "auto")
    items = chosen_items(images, out_dir, goal, masks, limit)
    inputs = Inputs(protected.files + tuple(it.path for it in items) + tuple(it.mask for it in items if it.mask),
                    protected.folders)

    ex = load_explainer(run_dir, torch_device)
    rows, tiles = [], []
    with progress_bar("cam", len(items), show=False if len(items) < 2 else None) as progress:
        for start in range(0, len(items), batch_size):
            batch = items[start: start + batch_size]
            rows.extend(explain_batch(ex, batch, start, heads, goal, method, out_dir, inputs, tiles))
            progress.advance(len(batch))

    table = pd.DataFrame(rows)
    table["label"] = table["label"].astype("Int64")
    write_csv(table, out_dir / "cam.csv", float_format="%.6g", inputs=inputs)
    sheet = Path(sheet) if sheet is not None else out_dir / "sheet.png"
    write_sheet(tiles, heads, sheet, inputs)
    shown = f" (first {SHEET_MAX} of {len(rows)}; use --limit)" if len(rows) > SHEET_MAX else ""
    console.print(f"maskkit cam: {len(items)} images x {len(heads)} head(s) -> {out_dir}/, sheet {sheet}{shown}")
    if summary:
        result = summarize(table)
        print_summary(result, table)
        write_csv(result, out, float_format="%.6g", inputs=inputs)
    return table


def print_summary(result: pd.DataFrame, table: pd.DataFrame) -> None:
    """A short table on stderr: where the CAM mass falls, per class (lift 1 = no preference)."""
    zero = int(table["cam_inside"].isna().sum())
    view = Table(title="CAM mass on the person vs the background (lift = on person / person area)",
                 title_justify="left")
    for name in ("head", "class", "images", "person", "backgr.", "area", "lift"):
        view.add_column(name, justify="left" if name in ("head", "class") else "right")
    for r in result.itertuples(index=False):
        key = r[2]
        label = "all" if key == "all" else f"{key} {r.name}" + (" (pred)" if r.by == "pred" else "")
        view.add_row(r.head, label, str(r.images), f"{r.cam_inside:.1%}", f"{r.cam_background:.1%}",
                     f"{r.person_area:.1%}", f"{r.lift:.2f}", style="bold" if key == "all" else None)
    console.print(view)
    if zero:
        console.print(f"{zero} CAM(s) were all zero and are left out of the summary")
