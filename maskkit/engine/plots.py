"""The pictures of a run folder: curves.png (losses and F1 per epoch) and confusion.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from maskkit.contract.labels import NUM_CLASSES
from maskkit.contract.runfolder import CONFUSION, CURVES, METRICS, VAL_PREDS
from maskkit.data.images import write_figure


def plot_run(run_dir: Path) -> None:
    """curves.png (losses and F1 per epoch) and confusion.png (best epoch, rows = true class)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics_path, preds_path = run_dir / METRICS, run_dir / VAL_PREDS
    if metrics_path.is_file():
        metrics = pd.read_csv(metrics_path)
        fig = Figure(figsize=(10, 4), layout="constrained")
        FigureCanvasAgg(fig)
        loss_ax, f1_ax = fig.subplots(1, 2)
        for column in ("train_loss", "val_loss"):
            loss_ax.plot(metrics["epoch"], metrics[column], marker="o", label=column)
        loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
        loss_ax.legend()
        for column in ("val_f1", "f1_mask", "f1_gender", "f1_age"):
            f1_ax.plot(metrics["epoch"], metrics[column], marker="o", label=column)
        f1_ax.set(xlabel="epoch", ylabel="macro F1", title="validation", ylim=(0, 1))
        f1_ax.legend()
        write_figure(run_dir / CURVES, fig)
    if preds_path.is_file():
        preds = pd.read_csv(preds_path)
        draw_confusion(preds["label"], preds["ans"], run_dir / CONFUSION,
                       f"{run_dir.name}: best epoch, validation fold")


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
