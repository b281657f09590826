"""`maskkit runs`: one table of training runs (best first), from their config.json and metrics.csv.

Runs whose recipe is the same (the training options apart from the fold and the machine settings
of options.MACHINE_OPTIONS, on the same manifest) form one recipe: their val_preds.csv are pooled
into one out-of-fold prediction of every validated image, and its macro F1 (`oof_f1`, with per-task
F1) is the number to compare recipes by; one fold's validation is too small to rank them.
`--oof-out` writes that pooled prediction (for stacking and for tuning vote weights).

A run is done, running (its folder's lock is held) or unfinished (killed, failed or pruned before its
last epoch, and not stopped by --patience): finished runs rank first, then the best val macro F1.
Recipes rank finished first, then by the folds their OOF pools (`oof_folds`: a 1-fold "OOF" is one
fold's validation), then by oof_f1.
A rich table on stderr when stdout is a terminal (plus one row per recipe); CSV on stdout when piped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.segment import Segments
from rich.table import Table

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import LOCK_FILE, Inputs, console, examples, process_alive, write_csv
from maskkit.contract.oof import OOF_COLUMNS, pooled_predictions
from maskkit.contract.runfolder import CONFIG, best_row, read_config, read_metrics
from maskkit.engine.metrics import scores
from maskkit.options import MACHINE_OPTIONS, RUN_STATUSES, RUNS_COLUMNS, TrainOptions

COLUMNS = RUNS_COLUMNS
SHOWN = ("name", "status", "fold", "epochs", "best_epoch", "val_f1", "oof_folds", "oof_f1")  # the terminal's default
INTEGERS = ("best_epoch", "batch_size", "old_age", "oof_folds", "oof_images")
RECIPE_COLUMNS = ("recipe", "status", "runs", "folds", "oof_folds", "oof_images", "oof_f1", "oof_accuracy",
                  "oof_f1_mask", "oof_f1_gender", "oof_f1_age", "backbone", "heads", "loss", "lr", "epochs",
                  "input_size", "seed")
RECIPE_SHOWN = ("recipe", "status", "runs", "folds", "oof_folds", "oof_images", "oof_f1")
NOT_RECIPE = ("fold", *MACHINE_OPTIONS)  # what a run may change without changing its recipe
LEFT = ("name", "status", "backbone", "heads", "aug", "loss", "recipe", "path", "folds", "input_size", "epochs")
FOLDING = ("name", "recipe", "path")  # the terminal table folds these onto more lines; it never cuts a cell
FOLD_WIDTH = 20  # a folding column keeps at least this width (or its content's); beyond, the table overflows


def runs_below(folder: Path, depth: int = 2) -> list[Path]:
    """Run folders (holding config.json) at `folder` or up to `depth` levels below it."""
    if (folder / CONFIG).is_file():
        return [folder]
    if depth == 0:
        return []
    return [run for child in sorted(folder.iterdir()) if child.is_dir() for run in runs_below(child, depth - 1)]


def find_runs(folders: Sequence[str | Path]) -> list[Path]:
    """The run folders named, or found one or two levels below the folders named (runs/NAME,
    runs/tune-NAME/trial-K); the rest (stray folders, files) is skipped with one note on stderr."""
    found, skipped = [], []
    for folder in map(Path, folders):
        if not folder.exists():
            raise MaskkitError(f"{folder}: run folder not found (give run folders, or the folder that holds them)")
        below = runs_below(folder) if folder.is_dir() else []
        if not below:
            skipped.append(str(folder))
        elif folder.is_dir() and below != [folder]:  # a parent: its own stray folders are skipped too
            skipped += [str(c) for c in sorted(folder.iterdir()) if c.is_dir() and not runs_below(c, 1)]
        found += [run for run in below if run not in found]
    if skipped and found:
        console.print(f"runs: skipped {len(skipped)} without config.json (not run folders): {examples(skipped)}",
                      markup=False, highlight=False)
    if not found:
        raise MaskkitError(f"{examples([str(f) for f in folders])}: holds no run folders (no config.json one or two "
                           "levels down); train one with maskkit train")
    return found


def loss_name(options: dict) -> str:
    """A short name of the objective: ce, focal2, +f1w0.5, +ls0.1, +balanced, +cutmix0.5, +vcutmix0.5, +mixup0.3,
    +drop57-59, +skip57-59, +ema."""
    parts = [f"focal{options['focal']:g}" if options.get("focal") else "ce"]
    if options.get("f1_loss"):
        parts.append(f"f1w{options['f1_loss']:g}")
    if options.get("label_smoothing"):
        parts.append(f"ls{options['label_smoothing']:g}")
    if options.get("balanced"):
        parts.append("balanced")
    if options.get("cutmix"):
        parts.append(f"{'v' if options.get('cutmix_mode') == 'vertical' else ''}cutmix{options['cutmix']:g}")
    if options.get("mixup"):
        parts.append(f"mixup{options['mixup']:g}")
    if options.get("drop_ages"):
        parts.append(f"{'skip' if options.get('drop_ages_mode') == 'skip' else 'drop'}{options['drop_ages']}")
    if options.get("ema"):
        parts.append("ema")
    return "+".join(parts)


def lock_held(run_dir: Path) -> bool:
    """Whether a live process holds the run folder's lock (contract.files.folder_lock: train, a tune
    trial). A killed run leaves its lock file behind: its pid is gone (or the lock is free)."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    if not (holder and holder[0].isdigit() and process_alive(int(holder[0]))):
        os.close(fd)
        return False
    try:  # a live pid that is not the holder (reused): the lock is free
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the shared lock just taken
    return False


def run_status(run_dir: Path, options: dict, metrics: pd.DataFrame, best: pd.Series | None) -> str:
    """running (lock held), done (every epoch asked, or stopped by --patience) or unfinished."""
    if lock_held(run_dir):
        return "running"
    done, planned = (int(metrics["epoch"].max()) if len(metrics) else 0), options.get("epochs")
    patience = options.get("patience") or 0
    stopped_early = bool(patience and best is not None and not pd.isna(best["val_f1"])
                         and done - int(best["epoch"]) >= patience)
    return "done" if planned is None or done >= planned or stopped_early else "unfinished"


def shown_names(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name, with as many parent folders as it takes to tell the runs apart
    (tune-s1/trial-0000 beside tune-s2/trial-0000)."""
    depth = [1] * len(paths)
    while True:
        names = ["/".join(p.parts[-d:]) for p, d in zip(paths, depth)]
        counts = Counter(names)
        clashing = [i for i, n in enumerate(names) if counts[n] > 1 and depth[i] < len(paths[i].parts)]
        if not clashing:
            return names
        for i in clashing:
            depth[i] += 1


def summarize(run_dir: Path, config: dict, name: str | None = None) -> dict:
    """One row: the run's options, status and best epoch's metrics (empty when no epoch finished)."""
    options = config.get("options", {})
    row = {
        "name": name or run_dir.name, "backbone": config["backbone"], "heads": config.get("heads"),
        "age_weight": config.get("age_weight", 0.0), "old_age": config.get("old_age", 60),
        "input_size": "x".join(str(v) for v in config["img_size"][::-1]), "aug": options.get("aug"),  # WIDTHxHEIGHT
        "loss": loss_name(options), "lr": options.get("lr"), "batch_size": options.get("batch_size"),
        "epochs": options.get("epochs"), "fold": config.get("fold"), "path": str(run_dir),
    }
    metrics = read_metrics(run_dir)
    best = best_row(metrics)
    row["status"] = run_status(run_dir, options, metrics, best)
    if best is not None:
        row["epochs"] = f"{len(metrics)}/{options.get('epochs', '?')}"
        row["best_epoch"] = int(best["epoch"])
        row.update({k: None if pd.isna(best[k]) else significant(best[k])
                    for k in ("val_f1", "f1_mask", "f1_gender", "f1_age")})
    return row


def significant(value: float) -> float:
    """A score to 4 significant digits (0.003512, 0.6641): enough to rank by, short to read."""
    return float(f"{float(value):.4g}")


def recipe_key(config: dict) -> str:
    """What a run learns apart from its fold: every option (absent ones at their defaults, so a run
    of an older maskkit keeps its recipe) but NOT_RECIPE, and the manifest's hash, as canonical JSON."""
    options = {**TrainOptions().to_dict(), **config.get("options", {})}
    options = {k: v for k, v in options.items() if k not in NOT_RECIPE}
    key = {"options": options, "manifest_sha256": config.get("manifest_sha256")}
    if config.get("aug_sha256"):  # --aug FILE.yaml: the pipeline's content, not its path, is the recipe
        key["aug_sha256"] = config["aug_sha256"]
    return json.dumps(key, sort_keys=True)


def recipe_id(key: str) -> str:
    """`BACKBONE#6hex`: the backbone and a short hash of the recipe key (no run name, no fold)."""
    return f"{json.loads(key)['options'].get('backbone')}#{hashlib.sha1(key.encode()).hexdigest()[:6]}"


def recipe_status(statuses: pd.Series) -> str:
    """A recipe is done when each of its runs is; running while one runs; else unfinished."""
    return next((s for s in ("running", "unfinished") if (statuses == s).any()), "done")


def ranked(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Done first (then running, then unfinished), then by `by`, largest first (empty last)."""
    rank = frame["status"].map({s: i for i, s in enumerate(RUN_STATUSES)}).rename("_rank")
    order = pd.concat([rank, frame[list(by)]], axis=1).sort_values(
        ["_rank", *by], ascending=[True, *[False] * len(by)], na_position="last", kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def recipes_table(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per recipe of a runs table (pooled out-of-fold scores; finished first, then most
    folds pooled, then best), and each recipe's pooled predictions by recipe id."""
    rows, pooled_by_recipe = [], {}
    for key, group in table.groupby("recipe_key", sort=False):
        pooled, folds = pooled_predictions([Path(p) for p in group["path"]])
        first, options = group.iloc[0], json.loads(key)["options"]
        pooled_by_recipe[first["recipe"]] = pooled
        row = {"recipe": first["recipe"], "status": recipe_status(group["status"]), "runs": len(group),
               "folds": ",".join(str(f) for f in sorted(folds, key=str)), "oof_folds": len(folds),
               "oof_images": len(pooled),
               **{k: first[k] for k in ("backbone", "heads", "loss", "lr", "input_size")},
               "epochs": options.get("epochs"), "seed": options.get("seed")}
        if len(pooled):
            row.update({f"oof_{k}": significant(v) for k, v in scores(pooled["label"], pooled["ans"]).items()})
            row["oof_f1"] = row.pop("oof_macro_f1")
        rows.append(row)
    recipes = ranked(pd.DataFrame(rows).reindex(columns=list(RECIPE_COLUMNS)), ["oof_folds", "oof_f1"])
    return recipes, pooled_by_recipe


def readable_runs(paths: Sequence[Path]) -> tuple[list[dict], list[dict]]:
    """(configs, summary rows) of the runs whose config.json and metrics.csv read; each broken run is
    skipped with its one-line reason, so it hides no other run."""
    kept = []
    for path in paths:
        try:
            kept.append((path, read_config(path)))
        except MaskkitError as exc:
            console.print(f"runs: skipped: {exc}", markup=False, highlight=False)
    rows, good = [], []  # good: (path, config) of each row
    for (path, config), name in zip(kept, shown_names([p for p, _ in kept])):
        try:
            rows.append(summarize(path, config, name))
            good.append((path, config))
        except MaskkitError as exc:
            console.print(f"runs: skipped: {exc}", markup=False, highlight=False)
    if not good:
        raise MaskkitError(f"{examples([str(p) for p in paths])}: no run could be read (see the lines above); "
                           "restore or remove the broken runs")
    return [c for _, c in good], rows


def runs_table(folders: Sequence[str | Path] | None = None, with_recipes: bool = False):
    """The table of runs: finished first, then best val macro F1 (runs without a finished epoch last).

    with_recipes: also return the recipes table and each recipe's pooled predictions."""
    configs, rows = readable_runs(find_runs(folders or ["runs"]))
    table = pd.DataFrame(rows)
    table["recipe_key"] = [recipe_key(c) for c in configs]
    table["recipe"] = table["recipe_key"].map(recipe_id)
    recipes, pooled = recipes_table(table)
    by_recipe = recipes.set_index("recipe")
    for column in ("oof_folds", "oof_images", "oof_f1", "oof_f1_mask", "oof_f1_gender", "oof_f1_age"):
        table[column] = table["recipe"].map(by_recipe[column])
    table = table.reindex(columns=list(COLUMNS))
    for column in INTEGERS:  # integers stay integers when a cell is empty (2, not 2.0)
        table[column] = pd.to_numeric(table[column], errors="coerce").round().astype("Int64")
    table = ranked(table, ["val_f1"])
    recipes = recipes.astype({"oof_folds": "Int64", "oof_images": "Int64", "runs": "Int64"})
    return (table, recipes, pooled) if with_recipes else table


def parse_columns(text: str | None) -> list[str] | None:
    """`--columns a,b,c` as column names of the runs table (None: the default)."""
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in COLUMNS]
    if unknown or not names:
        raise MaskkitError(f"--columns {text!r}: unknown column(s) {', '.join(unknown) or '(none given)'}; "
                           f"choose from {','.join(COLUMNS)}")
    return names


def choose_recipe(recipes: pd.DataFrame, recipe: str | None, why: str) -> str:
    """The recipe id `--recipe` names (the id or its hash after '#'); the only one when absent."""
    ids = recipes["recipe"].tolist()
    if recipe is None:
        if len(ids) > 1:
            raise MaskkitError(f"{why}: the runs hold {len(ids)} recipes ({examples(ids)}); choose one with "
                               "--recipe ID, or name only that recipe's run folders")
        return ids[0]
    matches = [r for r in ids if recipe in (r, r.split("#")[-1])]
    if not matches:
        raise MaskkitError(f"--recipe {recipe}: not a recipe of these runs ({examples(ids)})")
    return matches[0]


def cell(value: object) -> str:
    """A table cell: floats with 4 significant digits (0.0035, 0.1173, 5e-05), the rest as they are."""
    if pd.isna(value):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def column_widths(cells: dict[str, list[str]], room: int) -> dict[str, int]:
    """Each column as wide as its widest cell; beyond `room`, the widest folding column gives way,
    down to FOLD_WIDTH (or its header). The other columns are never narrowed: the table may overflow."""
    widths = {c: max([len(c), *map(len, values)]) for c, values in cells.items()}
    floors = {c: min(widths[c], max(FOLD_WIDTH, len(c))) for c in widths if c in FOLDING}
    excess = sum(widths.values()) - room
    while excess > 0:
        narrowable = [c for c in floors if widths[c] > floors[c]]
        if not narrowable:
            break
        widest = max(narrowable, key=widths.get)
        widths[widest] -= 1
        excess -= 1
    return widths


def show_table(title: str, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    """One rich table on stderr, every cell whole: the name, recipe and path fold onto more lines,
    and a table too wide for the terminal overflows it (the terminal wraps it) instead of cutting."""
    cells = {c: [cell(v) for v in frame[c]] for c in columns}
    widths = column_widths(cells, console.width - (3 * len(columns) + 1))  # borders and padding
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in LEFT else "right", width=widths[column],
                         no_wrap=column not in FOLDING, overflow="fold" if column in FOLDING else "ellipsis")
    for row in zip(*cells.values()):
        table.add_row(*row)
    width = sum(widths.values()) + 3 * len(columns) + 1
    console.print(Segments(console.render(table, console.options.update_width(max(width, console.width)))),
                  crop=False)


def print_tables(table: pd.DataFrame, recipes: pd.DataFrame, columns: Sequence[str]) -> None:
    """The rich tables on stderr: runs and recipes, finished first."""
    show_table(f"{len(table)} runs: finished first, then best val macro F1", table, columns)
    show_table(f"{len(recipes)} recipes: finished first, then most folds pooled (oof_folds), then best pooled "
               "out-of-fold macro F1", recipes, RECIPE_SHOWN)


def run(folders: Sequence[str | Path] | None = None, columns: str | None = None, oof_out: Path | None = None,
        recipe: str | None = None) -> pd.DataFrame:
    """Print the table (rich on a terminal, on stderr; CSV on stdout when piped) and, with
    `oof_out`, write the pooled out-of-fold predictions of one recipe."""
    if sys.stdout is None:  # `>&-`: the table (or --oof-out -) has nowhere to go; refused before any work
        raise MaskkitError("standard output is closed (>&-): the runs table goes there; redirect it "
                           "(> runs.csv) or leave it on the terminal")
    chosen = parse_columns(columns)
    table, recipes, pooled = runs_table(folders, with_recipes=True)
    if recipe is not None:
        wanted = choose_recipe(recipes, recipe, "--recipe")
        table, recipes = table[table["recipe"] == wanted], recipes[recipes["recipe"] == wanted]
    if oof_out is not None:
        wanted = choose_recipe(recipes, recipe, f"--oof-out {oof_out}")
        frame = pooled[wanted]
        if not len(frame):
            raise MaskkitError(f"--oof-out {oof_out}: recipe {wanted} has no fold run with val_preds.csv "
                               "(--fold all runs have no out-of-fold predictions)")
        write_csv(frame.reindex(columns=list(OOF_COLUMNS)), oof_out, inputs=Inputs.of(table["path"].tolist()))
        console.print(f"{oof_out}: {len(frame)} out-of-fold predictions of {wanted}", markup=False, highlight=False)
        if str(oof_out) == "-":  # stdout carries the predictions, not the table
            return table
    if sys.stdout.isatty():
        print_tables(table, recipes, chosen or list(SHOWN))
    else:
        write_csv(table[chosen] if chosen else table)
    return table
