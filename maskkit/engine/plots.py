"""The pictures of a run folder: curves.png (losses and F1 per epoch), confusion.png and
train_batch.jpg (the first augmented training batch with its labels)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.contract.labels import NUM_CLASSES
from maskkit.contract.runfolder import CONFUSION, CURVES, METRICS, VAL_PREDS
from maskkit.data.images import contact_sheet, write_figure, write_image

BATCH_TILES, BATCH_COLUMNS = 16, 4  # train_batch.jpg: at most 16 images, 4 a row (as ultralytics plots)
TILE_HEIGHT = 160  # pixels: small inputs are enlarged (nearest) so their label stays readable


def plot_run(run_dir: Path) -> None:
    """curves.png and, when the run validates, confusion.png (best epoch, rows = true class)."""
    metrics_path, preds_path = run_dir / METRICS, run_dir / VAL_PREDS
    if metrics_path.is_file():
        draw_curves(pd.read_csv(metrics_path), run_dir / CURVES)
    if preds_path.is_file():
        preds = pd.read_csv(preds_path)
        draw_confusion(preds["label"], preds["ans"], run_dir / CONFUSION,
                       f"{run_dir.name}: best epoch, validation fold")


def draw_curves(metrics: pd.DataFrame, path: Path) -> None:
    """Losses and the learning rate per epoch, and the validation F1s with the best epoch marked;
    a run without validation (`--fold all`) gets no validation panel and no best epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    validated = metrics["val_f1"].notna().any()
    fig = Figure(figsize=(10 if validated else 5.5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if validated else 1, squeeze=False)[0]
    loss_ax = axes[0]
    for column in ("train_loss", "val_loss") if validated else ("train_loss",):
        loss_ax.plot(metrics["epoch"], metrics[column], marker="o", label=column)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss and learning rate")
    lr_ax = loss_ax.twinx()
    lr_ax.plot(metrics["epoch"], metrics["lr"], color="gray", linestyle="--", label="lr (right)")
    lr_ax.set_ylabel("learning rate")
    lines = loss_ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    loss_ax.legend(lines, [line.get_label() for line in lines])
    if validated:
        f1_ax = axes[1]
        for column in ("val_f1", "f1_mask", "f1_gender", "f1_age"):
            f1_ax.plot(metrics["epoch"], metrics[column], marker="o", label=column)
        best = metrics.loc[metrics["val_f1"].idxmax()]  # the first of equal ones, as training selects
        f1_ax.axvline(best["epoch"], color="black", linestyle=":",
                      label=f"best epoch {int(best['epoch'])} ({best['val_f1']:.3f})")
        f1_ax.set(xlabel="epoch", ylabel="macro F1", title="validation", ylim=(0, 1))
        f1_ax.legend()
    write_figure(path, fig)


def draw_confusion(true, pred, path: Path, title: str) -> None:
    """18x18 confusion matrix PNG (rows = true class, shade = share of the row, numbers = counts)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    from maskkit.contract.labels import class_name

    matrix = confusion_matrix(true, pred, labels=range(NUM_CLASSES))
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(11, 10), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    names = [f"{i} {class_name(i)}" for i in range(NUM_CLASSES)]
    ax.set_xticks(range(NUM_CLASSES), names, rotation=90, fontsize=7)
    ax.set_yticks(range(NUM_CLASSES), names, fontsize=7)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    write_figure(path, fig)


def draw_train_batch(images: np.ndarray, labels: Sequence[int], path: Path) -> None:
    """train_batch.jpg: the first BATCH_TILES images of a batch ((B, H, W, 3) uint8 RGB, as the model
    sees them after augmentation), each enlarged to at least TILE_HEIGHT pixels (nearest, so the
    pixels stay the model's) with its training class written on it, in a grid; an atomic write."""
    import cv2

    from maskkit.contract.labels import class_name

    tiles = []
    for image, label in zip(images[:BATCH_TILES], labels):
        factor = max(1, -(-TILE_HEIGHT // image.shape[0]))
        tile = cv2.resize(np.ascontiguousarray(image), None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
        text = f"{int(label)} {class_name(int(label))}"
        (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)
        scale = min(0.5, (tile.shape[1] - 4) / width)
        box_h = int((height + base) * scale) + 4
        cv2.rectangle(tile, (0, 0), (int(width * scale) + 4, box_h), (0, 0, 0), thickness=-1)
        cv2.putText(tile, text, (2, box_h - int(base * scale) - 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    write_image(path, contact_sheet(tiles, columns=BATCH_COLUMNS), rgb=True)
