"""The `maskkit` command line: parses options and calls one module per subcommand.

Logic lives in the subcommand modules; this file only names the options (each declared once, in
maskkit/cli_options.py, from the vocabulary of maskkit/options.py), turns errors into one-line
messages with the exit codes of docs/formats.md, and sets torch's threads once per command.
The subcommand modules (and torch) are imported inside the commands so that `--help` is fast.
Over 400 lines: one declaration block per subcommand (eighteen of them), nothing else.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import List, Optional

# Set before torch is imported (lazily, by the subcommands): OpenMP threads that wait passively
# leave the cores to other processes instead of spinning (a shared machine otherwise collapses).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from maskkit import __version__  # noqa: E402
from maskkit import cli_options as o  # noqa: E402
from maskkit.contract.errors import MaskkitError, Terminated  # noqa: E402
from maskkit.contract.streams import StdoutGone, guard_descriptors, say, settle_streams  # noqa: E402
from maskkit.options import DEFAULT_DETECTOR, SEED, Size  # noqa: E402

app = typer.Typer(
    name="maskkit",
    help="Toolkit for mask / gender / age face-classification competitions (18 classes, macro F1).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@contextlib.contextmanager
def reported(command: str, threads: Optional[int] | bool = False) -> Iterator[None]:
    """Run one command: torch's threads set from --threads (unless `threads` is False: the command has
    no such option); MaskkitError -> one line on stderr and its exit code; Ctrl-C -> exit 130."""
    try:
        if threads is not False:
            from maskkit.engine.devices import use_threads

            use_threads(threads)
        yield
    except MaskkitError as exc:
        say(f"maskkit {command}: error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        say(f"maskkit {command}: interrupted" + (" (SIGTERM)" if isinstance(exc, Terminated) else ""))
        raise typer.Exit(Terminated.exit_code if isinstance(exc, Terminated) else 130) from None


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"maskkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Toolkit for mask / gender / age face-classification competitions (18 classes, macro F1).

    Subcommands read and write plain files so they chain in a shell:
    synth -> split -> train -> predict -> vote (see the README for the whole pipeline).
    """


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to create (OUT/train, OUT/eval, OUT/masks); must be empty or absent."),
    persons: int = typer.Option(60, "--persons", help="Training persons (7 images each), at most 100000."),
    eval_persons: int = typer.Option(20, "--eval-persons", help="Evaluation persons (7 images each, hex names, shuffled), "
                                     "at most 100000."),
    size: str = typer.Option("384x512", "--size", help="Image size WIDTHxHEIGHT (the real data is 384x512)."),
    seed: o.Seed = SEED,
    noise: float = typer.Option(0.0, "--noise", help="Label errors: flip the gender of this fraction of persons and "
                                "swap incorrect_mask/normal of another such fraction (listed in train/injected_errors.csv)."),
    shortcut: float = typer.Option(0.0, "--shortcut", help="0..1: chance that a train person's background is chosen "
                                   "by gender x age group (eval backgrounds stay random)."),
    with_masks: bool = typer.Option(False, "--with-masks", help="Also write each image's true person mask under OUT/masks/."),
    overwrite: o.SynthOverwrite = False,
) -> None:
    """Draw a synthetic dataset in the competition layout (faces with masks, gender and age).

    Example: maskkit synth data --persons 200 --eval-persons 60 --size 192x256 --seed 1 --noise 0.05
    """
    from maskkit.commands import synth as synth_module

    with reported("synth"):
        synth_module.run(out, persons=persons, eval_persons=eval_persons, size=Size.parse(size, "--size"),
                                seed=seed, noise=noise, shortcut=shortcut, masks=with_masks, overwrite=overwrite)


@app.command()
def split(
    data: Path = typer.Argument(Path("data/train"), help="DATA/train of the competition layout (or DATA)."),
    folds: int = typer.Option(5, "--folds", "-k", help="Number of folds (>= 2)."),
    seed: o.Seed = SEED,
    fixes: o.Fixes = None,
    out: o.Out = None,
    extra: o.Extra = None,
) -> None:
    """Split persons into stratified folds and write the manifest CSV (path,person,...,label,fold).

    A gender x age stratum with fewer persons than folds is named in a warning (some folds then
    lack it); persons never share folds. --fixes may be repeated: the files apply in the order given.
    --extra persons (maskkit import) get fold -1: they train in every fold and never validate.
    Example: maskkit split data/train --folds 5 --fixes known --fixes my_fixes.csv > folds.csv
    Example: maskkit split data/train --extra utk60/train -o folds.csv
    """
    from maskkit.commands import split as split_module

    with reported("split"):
        split_module.run(data, folds=folds, seed=seed, fixes=fixes or [], out=out, extra=extra)


@app.command("import")
def import_faces(
    src: o.ImportSource,
    out: o.ImportOut,
    ages: o.ImportAges = None,
    limit: o.ImportLimit = None,
    seed: o.Seed = SEED,
) -> None:
    """Turn age- and gender-labelled face photos into extra persons with the seven shots (masks drawn).

    Each photo becomes one person (id x + its sha1, never a competition id): mask1..mask5 and
    incorrect_mask drawn on it in synth's mask styles, normal the photo itself. Give OUT/train to
    split --extra.
    Example: maskkit import UTKFace utk60 --ages 60-120 --limit 500 && maskkit split data/train --extra utk60/train -o folds.csv
    """
    from maskkit.commands import import_faces as import_module

    with reported("import"):
        import_module.run(src, out, ages=ages, limit=limit, seed=seed)


def train(ctx: typer.Context, source: Path, config: Optional[Path], print_config: bool, runs_dir: Path,
          name: Optional[str], overwrite: bool, resume: Optional[Path], **flags: object) -> None:
    """Train one fold into runs/NAME/ (config, metrics, best.pt, last.pt, val_preds.csv, plots).

    --fold all trains the full-data model: every person, --epochs fixed, no validation.
    Example: maskkit train folds.csv --fold 0   (the defaults: effb2, multi heads + DLDL age, strong aug, EMA)
    """
    from maskkit.contract.recipe import check_new_run, run_place, train_options, write_recipe

    with reported("train"):  # threads: set by train from its options (a resumed run may keep its own)
        typed = {name for name in ctx.params if ctx.get_parameter_source(name).name == "COMMANDLINE"}
        options, chosen = train_options(ctx.params, typed, config)
        if print_config:
            options.check()
            write_recipe(options.to_dict())
            return
        runs_dir, name = run_place(ctx.params, typed, config)
        if resume is None:
            check_new_run(source, options)  # before torch and timm: a typo costs no 5 s of imports
        from maskkit.commands import train as train_module

        if resume is not None:  # what is not typed is not compared with the resumed run
            source, runs_dir = (value if key in typed else None for key, value in (("source", source), ("runs_dir", runs_dir)))
        train_module.run(source, options, runs_dir=runs_dir, name=name, overwrite=overwrite, resume=resume,
                           given=chosen if resume is not None else None)


# train's parameters: the run's own, then one per TrainOptions field (declared there, with its flag and help).
train.__signature__ = inspect.Signature([
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
    *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
      for name, annotation, default in o.TRAIN_RUN_PARAMETERS),
    *o.option_parameters(),
])
app.command()(train)


TUNE_REFUSED = ("source", "name", "resume", "overwrite", "print_config", "runs_dir")  # the study decides these


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tune(
    ctx: typer.Context,
    manifest: Optional[Path] = typer.Argument(None, help="Manifest CSV from `maskkit split` (not needed with --best). "
                                             "Any `maskkit train` option after it fixes that option for every trial."),
    study: o.Study = None, space: o.SearchSpace = None, objective: o.Objective = "fold", folds: o.TuneFolds = 5,
    trials: o.Trials = 20, pruner: o.Pruner = "median", storage: o.Storage = None,
    runs_dir: o.RunsDir = Path("runs"), best: o.Best = False, out: o.TuneOut = None,
) -> None:
    """Search train's options on Optuna: every trial a run folder under RUNS_DIR/tune-STUDY/; re-run to continue.

    Train options given here (or by --config) are fixed: the search space frees only the others.
    Start as many workers on one study as there are GPUs (CUDA_VISIBLE_DEVICES=k maskkit tune ... &).
    Example: maskkit tune folds.csv --study s1 --trials 40 --backbone lite0 --input-size 192x192 --epochs 6 --device cuda
    Then: maskkit tune --study s1 --best > best.yaml && maskkit train folds.csv --config best.yaml
    """
    from maskkit.commands import train as train_module
    from maskkit.commands import tune as tune_module
    from maskkit.contract.recipe import train_options

    with reported("tune"):
        if not study:
            raise MaskkitError("--study NAME is required (the study to run or to read with --best)")
        settings = tune_module.Study(study, runs_dir, storage, objective, folds, trials, pruner)
        if best:
            tune_module.best(settings, out)
            return
        if manifest is None:
            raise MaskkitError("give the MANIFEST to tune on (maskkit tune folds.csv --study NAME ...)")
        train_ctx = typer.main.get_command(app).commands["train"].make_context("maskkit tune", list(ctx.args))
        typed = {n for n in train_ctx.params if train_ctx.get_parameter_source(n).name == "COMMANDLINE"}
        refused = sorted(typed & set(TUNE_REFUSED))
        if refused:
            raise MaskkitError(f"--{refused[0].replace('_', '-')}: not a train option tune passes on (the study names "
                               "and places its trials)" if refused[0] != "source" else
                               f"{train_ctx.params['source']}: one MANIFEST only, before the train options")
        config = train_ctx.params["config"]
        fixed, chosen = train_options(train_ctx.params, typed, config)
        try:
            tune_module.run(manifest, settings, fixed, space, train=train_module.run, fixed_fields=frozenset(chosen),
                            fixed_by="the command line" + (f" and {config}" if config is not None else ""))
        except tune_module.StudyInterrupted as exc:
            say(f"maskkit tune: {exc}")
            raise typer.Exit(130) from None


@app.command()
def predict(
    sources: o.PredictSources,
    tta: o.TtaMode = "none", out: o.Out = None, names: o.Names = False, batch_size: o.BatchSize = 64,
    device: o.Device = "auto", workers: o.Workers = None, threads: o.Threads = None,
    calibration: o.Calibration = None,
) -> None:
    """Write the prediction CSV (ImageID,ans,p0..p17) of one or more models for any images.

    Rows of DATA/eval or of one folder keep the competition's keys; other images are keyed by path.

    Example: maskkit predict runs/effb2-f0 runs/effb2-f1 data/eval --tta flip -o preds/effb2.csv

    Example: find shots -name '*.jpg' | maskkit predict model.onnx - --names
    """
    from maskkit.commands import predict as predict_module

    with reported("predict", threads):
        predict_module.run(sources, tta=tta, out=out, batch_size=batch_size, device=device, workers=workers,
                           names=names, calibration=calibration)


@app.command()
def val(
    run: o.ExportRun, manifest: o.ValManifest = None,
    tta: o.TtaMode = "none", out: o.ValOut = None, batch_size: o.BatchSize = 64, device: o.Device = "auto",
    workers: o.Workers = None, threads: o.Threads = None, no_header: o.NoHeader = False, quiet: o.Quiet = False,
) -> None:
    """Re-score a run's best.pt on its validation fold (or on a labelled MANIFEST): the row `score` prints.

    -o writes the predictions keyed like val_preds.csv (ImageID = path, ans, p0..p17, person, label).

    Example: maskkit val runs/effb2-f0 --tta flip -o runs/effb2-f0/val_flip.csv

    Example: maskkit val runs/effb2-all other/train > other_scores.csv
    """
    from maskkit.commands import val as val_module

    with reported("val", threads):
        val_module.run(run, manifest, tta=tta, out=out, batch_size=batch_size, device=device, workers=workers,
                       quiet=quiet, header=not no_header)


@app.command()
def export(run: o.ExportRun, model: o.OnnxOut, check_images: o.CheckImages = None, threads: o.Threads = None) -> None:
    """Export a run's network to ONNX: uint8 NCHW RGB in, 18 class probabilities out, dynamic batch.

    Resize, crop and class table: in the ONNX metadata and in FILE.onnx.json.

    Torch and onnxruntime must agree within 1e-4 on the check images, else nothing is written (exit 1).

    Example: maskkit export runs/effb2-f0 effb2-f0.onnx && maskkit predict effb2-f0.onnx data/eval
    """
    from maskkit.commands import export as export_module

    with reported("export", threads):
        export_module.run(run, model, images=[str(p) for p in check_images or []])


@app.command()
def runs(
    folders: Optional[List[Path]] = typer.Argument(
        None, help="Run folders, or folders that hold them one or two levels down (runs/, "
        "runs/tune-NAME/); default: runs/. Folders without config.json are skipped with a note."),
    columns: o.RunsColumns = None,
    oof_out: Optional[Path] = typer.Option(
        None, "--oof-out", help="Write the recipe's pooled out-of-fold predictions here (ImageID,ans,p0..p17,"
        "person,label,fold), for stacking and vote weights; several recipes need --recipe."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Only this recipe (its id, e.g. effb2#d8d18c, or the hash)."),
) -> None:
    """Compare runs: status, best epoch, val macro F1 and the pooled out-of-fold F1 of each recipe (its fold runs).

    Runs rank finished first (status: done, running, unfinished), then by val macro F1.

    Recipes rank finished first, then by oof_folds (a 1-fold "OOF" is one fold's validation), then by oof_f1.

    Example: maskkit runs runs > runs.csv; maskkit runs runs --recipe effb2#d8d18c --oof-out oof.csv
    """
    from maskkit.commands import runs as runs_module

    with reported("runs"):
        runs_module.run(folders or None, columns=columns, oof_out=oof_out, recipe=recipe)


@app.command()
def demo(
    out: Path = typer.Argument(Path("demo"), help="Working folder (re-running reuses what is there)."),
    epochs: int = typer.Option(4, "--epochs", help="Training epochs."),
    device: o.Device = "auto",
    threads: o.Threads = None,
) -> None:
    """Draw a small dataset, split it, train lite0, predict, vote, and score against the drawn truth.

    Example: maskkit demo
    """
    from maskkit.commands import demo as demo_module

    with reported("demo", threads):
        demo_module.run(out, app=app, epochs=epochs, device=device, threads=threads)


@app.command()
def vote(
    files: List[Path] = typer.Argument(..., help="Prediction CSVs (ImageID,ans[,p0..p17]); best model first."),
    soft: bool = typer.Option(False, "--soft", help="Average p0..p17 instead of counting ans."),
    file_weights: Optional[str] = typer.Option(None, "--file-weights", help="One vote weight per file, e.g. 2,1,1."),
    info: Optional[Path] = typer.Option(None, "--info", help="info.csv whose ImageID order the output follows."),
    probs: bool = typer.Option(False, "--probs", help="With --soft: also write the averaged p0..p17."),
    out: o.Out = None,
    calibration: o.Calibration = None,
) -> None:
    """Hard or soft vote of prediction CSVs; ties go to the earliest input.

    Example: maskkit vote preds/effb2.csv preds/vit.csv preds/r34.csv > submission.csv
    """
    from maskkit.commands import vote as vote_module

    with reported("vote"):
        vote_module.run(files, soft=soft, weights=file_weights, info=info, probs=probs, out=out,
                        calibration=calibration)


@app.command()
def calibrate(files: o.OofFiles, biases: o.CalibrateBiases = False, out: o.CalibrateOut = None) -> None:
    """Fit the decision that maximises out-of-fold macro F1 (age-group biases; vote weights of several recipes).

    Prints the OOF F1 of each task before and after; writes calib.json for predict/vote --calibration.

    Example: maskkit calibrate oof/effb2.csv oof/vit.csv -o calib.json
    """
    from maskkit.commands import calibrate as calibrate_module

    with reported("calibrate"):
        calibrate_module.run(files, out=out, biases=biases)


def spread_values(args: List[str], flag: str, takes_value: set) -> List[str]:
    """`flag a b c` -> `flag a flag b flag c`: the paths after `flag`, up to the next option, each its
    own value (click gives an option one value). When no argument is left for the command's
    positional, the last spread path is it (`--oof r0 r1 DATA`, as `--oof r0 DATA` always read)."""
    out, spread, positional, i, more = [], [], 0, 0, False
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional += len(args) - i - 1
            out += args[i:]
            break
        if more and (arg == "-" or not arg.startswith("-")):
            spread.append(len(out))
            out += [flag, arg]
            i += 1
            continue
        more = arg == flag or arg.startswith(flag + "=")
        step = 2 if arg == flag or arg in takes_value else 1
        positional += step == 1 and not more and (arg == "-" or not arg.startswith("-"))
        out += args[i:i + step]
        i += step
    if not positional and spread:
        del out[spread[-1]]
    return out


class SpreadOof(typer.core.TyperCommand):
    """audit's --oof takes one or more paths (`--oof runs/f{0,1,2,3,4}`), or one per --oof."""

    def parse_args(self, ctx, args):
        takes_value = {name for param in self.params if not getattr(param, "is_flag", True)
                       for name in getattr(param, "opts", [])}
        return super().parse_args(ctx, spread_values(list(args), "--oof", takes_value))


@app.command(cls=SpreadOof)
def audit(
    data: Path = typer.Argument(..., help="DATA/train (or DATA) of the competition layout."),
    oof: Optional[List[Path]] = typer.Option(
        None, "--oof", help="One or more run folders (each reads RUN/val_preds.csv) or val_preds CSVs: "
        "--oof runs/f0 runs/f1 ... (runs/f{0,1,2,3,4}) or --oof once per path. Give every fold, and add other "
        "models' or seeds' folds as well: their evidence is pooled into P(label wrong)."),
    manifest: Optional[Path] = typer.Option(
        None, "--manifest", help="Judge this manifest's labels (e.g. after split --fixes) instead of train.csv's."),
    fixes_out: Optional[Path] = typer.Option(
        None, "--fixes-out", help="Write the gender and mask-swap suggestions as a fixes CSV for `split --fixes` (needs --oof or --expert)."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Draw a contact sheet of the top suspects (PNG)."),
    top: Optional[int] = typer.Option(
        None, "--top", min=1, help="A review budget: list (and write with --fixes-out, draw with --sheet) the N "
        "likeliest label errors, whatever their P(label wrong), instead of those from --min-score on. The summary "
        "line says how many errors the evidence expects."),
    min_score: Optional[float] = typer.Option(
        None, "--min-score",
        help="List gender and mask suspects from this P(label wrong) on, 0..1 (default 0.4, measured in "
             "benchmarks/realfaces_audit.py)."),
    out: o.Out = None,
    expert: o.AuditExpert = None,
) -> None:
    """Rank suspect files and labels: structural checks, plus label checks from out-of-fold predictions.

    Example: maskkit audit data/train --oof runs/f0 runs/f1 runs/f2 runs/f3 runs/f4 --fixes-out fixes.csv --sheet audit.png
    Review budget: maskkit audit data/train --oof runs/lite0-f{0,1,2,3,4} --top 40 --sheet audit.png
    """
    from maskkit.commands import audit as audit_module

    with reported("audit"):
        audit_module.run(data, oof=oof or [], manifest=manifest, fixes_out=fixes_out, sheet=sheet, out=out,
                         min_score=min_score, top=top, expert=expert)


@app.command()
def expert(data: o.ExpertData, out: o.ExpertOut = None, workers: o.ExpertWorkers = None) -> None:
    """An outside face model's opinion of each person's gender and age, for `audit --expert`.

    Example: maskkit expert data/train -o opinions.csv --workers 2
    """
    from maskkit.commands import expert as expert_module

    with reported("expert"):
        expert_module.run(data, out=out, workers=workers)


@app.command()
def segment(
    src: Path = typer.Argument(..., metavar="IN", help="Dataset root, DATA/train, DATA/eval or any folder of images (never modified)."),
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder: IN's tree with the backgrounds replaced and the other files copied."),
    model: o.SegmentModel = "resnet50",
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local DeepLabV3 weights file (offline servers); default: download torchvision's COCO-with-VOC-labels weights."),
    fill: o.Fill = "black",
    masks: o.Masks = None,
    batch_size: o.BatchSize = 8,
    device: o.Device = "auto",
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="Person probability from which a pixel is person."),
    short_side: int = typer.Option(520, "--short-side", min=16, help="Working resolution: the shorter side in pixels, 16..4096 (masks are resized back)."),
    workers: o.Workers = None,
    threads: o.Threads = None,
    overwrite: o.Overwrite = False,
) -> None:
    """Replace image backgrounds with DeepLabV3's person mask; OUT mirrors IN. Resumes when re-run.

    Example: maskkit segment data data_seg --fill gray --masks data_masks --weights deeplabv3_resnet50_coco.pth
    """
    from maskkit.commands import segment as segment_module

    with reported("segment", threads):
        segment_module.run(
            src, out, model=model, weights=weights, fill=fill, masks=masks, batch_size=batch_size,
            device=device, threshold=threshold, short_side=short_side, workers=workers, overwrite=overwrite,
        )


@app.command()
def crop(
    src: Path = typer.Argument(..., metavar="IN", help="Dataset root, DATA/train, DATA/eval or any folder of images (never modified)."),
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder: IN's tree with every image cut to its face, the other files copied, crop_boxes.csv."),
    detector: o.FaceDetector = DEFAULT_DETECTOR,
    weights: Optional[Path] = typer.Option(None, "--weights", help="Detector weights file: YuNet's ONNX for --detector yunet, dlib's mmod_human_face_detector.dat (its CNN) for dlib, a cascade XML for haar."),
    margin: o.CropMargin = 0.4,
    aspect: o.CropAspect = "square",
    batch_size: o.BatchSize = 16,
    device: o.Device = "auto",
    workers: o.Workers = None,
    threads: o.Threads = None,
    overwrite: o.Overwrite = False,
) -> None:
    """Cut every image to its face (else the person's face on its other photos, else the centre crop); OUT mirrors IN. Resumes when re-run.

    Example: maskkit crop data data_face --margin 0.4 --aspect square
    """
    from maskkit.commands import crop as crop_module

    with reported("crop", threads):
        crop_module.run(src, out, detector=detector, weights=weights, margin=margin, aspect=aspect,
                        batch_size=batch_size, device=device, workers=workers, overwrite=overwrite)


@app.command()
def cam(
    run: o.RunFolder,
    images: List[Path] = typer.Argument(..., help="Images, folders (searched recursively), DATA/train, DATA/eval "
                                        "or a manifest CSV (train data and manifests give true labels)."),
    out_dir: Path = typer.Option(Path("cam"), "--out-dir", help="Folder for OUT_DIR/<head>/<image path>.png, cam.csv, sheet.png."),
    head: o.CamHead = "class",
    target: str = typer.Option("pred", "--target", help="Explain the predicted class (pred), the true one (true) "
                               "or class K of the head."),
    method: o.CamMethod = "gradcam",
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Contact sheet PNG (default: OUT_DIR/sheet.png)."),
    summary: bool = typer.Option(False, "--summary", help="CSV of the CAM mass on the person vs the background, "
                                 "per class and overall (needs --masks)."),
    masks: o.Masks = None,
    out: o.Out = None,
    limit: Optional[int] = typer.Option(None, "--limit", help="Explain only N images, spread evenly over the input."),
    batch_size: o.BatchSize = 16,
    device: o.Device = "auto",
    threads: o.Threads = None,
) -> None:
    """Grad-CAM overlays of a run's decisions, a contact sheet, and how much it looks at the background.

    Example: maskkit cam runs/effb2 data/train --limit 64 --summary --masks data/masks -o cam_summary.csv
    """
    from maskkit.commands import cam as cam_module

    with reported("cam", threads):
        cam_module.run(run, images, out_dir=out_dir, head=head, target=target, method=method, sheet=sheet,
                       summary=summary, masks=masks, out=out, batch_size=batch_size,
                       device=device, limit=limit)


@app.command()
def score(
    submission: Path = typer.Argument(..., help="Prediction CSV (ImageID,ans), e.g. from `maskkit vote`."),
    truth: Path = typer.Argument(..., help="Truth CSV (ImageID,ans) of the same images, e.g. DATA/eval/truth.csv, "
                                 "or a manifest CSV (path,label)."),
    confusion: Optional[Path] = typer.Option(None, "--confusion", help="Also draw the 18x18 confusion matrix here (PNG)."),
    no_header: o.NoHeader = False,
    quiet: o.Quiet = False,
    out: o.Out = None,
) -> None:
    """Score a submission: macro F1 over the 18 classes, accuracy and each task's F1 (one CSV row).

    The truth may be a manifest (its path,label), e.g. for `maskkit predict RUN folds.csv`.

    Example: maskkit score a.csv data/eval/truth.csv > scores.csv; maskkit score b.csv data/eval/truth.csv --no-header >> scores.csv

    Example: for f in preds/*.csv; do maskkit score $f data/eval/truth.csv --quiet --no-header; done >> scores.csv
    """
    from maskkit.commands import score as score_module

    with reported("score"):
        score_module.run(submission, truth, out=out, confusion=confusion, quiet=quiet, header=not no_header)


def main() -> None:
    """The `maskkit` entry point: a bad option value is one line and exit 2, not a usage box; a
    reader of stdout that went away (`| head`) ends the command quietly with exit 141."""
    guard_descriptors()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = _invoke()
    except StdoutGone:
        code = StdoutGone.exit_code
    settle_streams()
    sys.exit(code)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _invoke() -> int:
    """Run the app; return its exit code."""
    try:
        code = app(prog_name="maskkit", standalone_mode=False)
    except typer.Abort:  # Ctrl-C while click itself was running
        say("maskkit: interrupted")
        return 130
    except typer.TyperException as exc:  # click's UsageError, BadParameter, NoSuchOption... (typer vendors click)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `maskkit` or a bare group: show the help
            with contextlib.suppress(OSError, ValueError):
                exc.show()
            return exc.exit_code
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "maskkit"
        say(f"{where}: error: {exc.format_message()} (see {where} --help)")
        return getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
