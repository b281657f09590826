"""The model side of `maskkit export` and of `predict MODEL.onnx` (docs/formats.md, "ONNX export").

`ProbabilityNet` is what is exported: uint8 NCHW RGB pixels (0..255) in, the run's normalisation
inside the graph, the 18 class probabilities out (a multi-head model's p_mask x p_gender x p_age,
as `predict`). What stays outside the graph (resize, centre crop, input size, channel order, class
table) is `preprocessing(config)`, stored as the ONNX metadata entry `maskkit` and in the sidecar
JSON. `read_record` is the one typed reader of that record (metadata and sidecar alike), and
`OnnxModel` runs such a file with onnxruntime, its graph's input and output checked against it.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskkit import __version__
from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.labels import NUM_CLASSES, class_name
from maskkit.contract.paths import shown
from maskkit.engine.models import class_probs
from maskkit.options import INPUT_SIDE_RANGE

EXPORT_FORMAT = 1
METADATA_KEY = "maskkit"
INPUT_NAME, OUTPUT_NAME = "images", "probs"
OPSET = 17
TOLERANCE = 1e-4  # largest |p_torch - p_onnxruntime| an export may show
ONNX_EXTRA = "install the optional extra: pip install 'maskkit[onnx]' (onnx, onnxruntime)"


class ProbabilityNet(nn.Module):
    """uint8 (B, 3, H, W) RGB -> (B, 18) class probabilities: normalisation, the model, class_probs."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer("scale_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.scale_mean) / self.scale_std
        return class_probs(self.model(x))


def preprocessing(config: Mapping, run_name: str = "") -> dict:
    """The sidecar / metadata record of an exported run: everything a deployer does before the graph."""
    height, width = (int(v) for v in config["img_size"])
    crop_h, crop_w = (float(v) for v in config["crop"])
    return {
        "format": EXPORT_FORMAT,
        "maskkit": __version__,
        "run": run_name,
        "backbone": config["backbone"],
        "heads": config["heads"],
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                  "range": [0, 255], "height": height, "width": width},
        "resize": {"height": int(round(height / crop_h)), "width": int(round(width / crop_w)),
                   "interpolation": "area"},
        "crop": [crop_h, crop_w],
        "mean": [float(v) for v in config["mean"]],
        "std": [float(v) for v in config["std"]],
        "output": {"name": OUTPUT_NAME, "classes": [class_name(i) for i in range(NUM_CLASSES)]},
    }


def sidecar_path(model: str | Path) -> Path:
    """model.onnx -> model.onnx.json."""
    model = Path(model)
    return model.with_name(model.name + ".json")


def _is_text(value) -> bool:
    return isinstance(value, str)


def _is_number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _side(value) -> bool:
    return type(value) is int and INPUT_SIDE_RANGE[0] <= value <= INPUT_SIDE_RANGE[1]


def _numbers(count: int, test: Callable) -> Callable:
    return lambda value: isinstance(value, list) and len(value) == count and all(_is_number(v) and test(v)
                                                                                 for v in value)


LOW, HIGH = INPUT_SIDE_RANGE
# (key, test, what the value must be): every field of the record; `predict` uses input.height/width and
# crop, the rest tells a deployer what to do, so a wrong value there is refused as well.
RECORD_FIELDS: tuple[tuple[str, Callable, str], ...] = (
    ("format", lambda v: type(v) is int and v == EXPORT_FORMAT, f"{EXPORT_FORMAT}"),
    ("maskkit", _is_text, "a version string"),
    ("run", _is_text, "the run folder's name"),
    ("backbone", _is_text, "a backbone name"),
    ("heads", _is_text, "the run's heads"),
    ("input.name", lambda v: v == INPUT_NAME, f'"{INPUT_NAME}"'),
    ("input.dtype", lambda v: v == "uint8", '"uint8"'),
    ("input.layout", lambda v: v == "NCHW", '"NCHW"'),
    ("input.channels", lambda v: v == "RGB", '"RGB"'),
    ("input.range", lambda v: v == [0, 255] and all(type(x) is int for x in v), "[0, 255]"),
    ("input.height", _side, f"a whole number of pixels in {LOW}..{HIGH}"),
    ("input.width", _side, f"a whole number of pixels in {LOW}..{HIGH}"),
    ("resize.height", lambda v: type(v) is int and v >= 1, "a whole number of pixels"),
    ("resize.width", lambda v: type(v) is int and v >= 1, "a whole number of pixels"),
    ("resize.interpolation", lambda v: v == "area", '"area"'),
    ("crop", _numbers(2, lambda v: 0 < v <= 1), "two fractions in (0, 1] (height, width)"),
    ("mean", _numbers(3, lambda v: True), "three numbers"),
    ("std", _numbers(3, lambda v: v > 0), "three numbers above 0"),
    ("output.name", lambda v: v == OUTPUT_NAME, f'"{OUTPUT_NAME}"'),
    ("output.classes", lambda v: v == [class_name(i) for i in range(NUM_CLASSES)],
     f"the {NUM_CLASSES} class names mask/gender/age in class order"),
)
CHECK_FIELDS = (  # the sidecar's own part: what the export measured
    ("check.images", lambda v: type(v) is int and v >= 1, "a number of images"),
    ("check.max_abs_difference", lambda v: _is_number(v) and 0 <= v <= TOLERANCE, f"a number in 0..{TOLERANCE:g}"),
)
MISSING = object()


def _lookup(record: Mapping, key: str):
    value = record
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def _missing(record: Mapping, key: str) -> str:
    """The shortest part of `key` that `record` lacks: `input` when the whole object is gone."""
    parts = key.split(".")
    prefixes = (".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return next(prefix for prefix in prefixes if _lookup(record, prefix) is MISSING)


def read_record(record, source: str | Path, sidecar: bool = False) -> dict:
    """The preprocessing record of an export (the ONNX metadata, or with `sidecar` the .onnx.json with its
    `check`), every field of its type and range and `resize` the one `input` and `crop` give; else one
    line naming `source` and the key."""
    fix = "re-export the model with maskkit export RUN FILE.onnx"
    if not isinstance(record, Mapping):
        raise MaskkitError(f"{source}: not a maskkit export record (a JSON object); {fix}")
    for key, test, words in RECORD_FIELDS + (CHECK_FIELDS if sidecar else ()):
        value = _lookup(record, key)
        if value is MISSING:
            raise MaskkitError(f"{source}: {_missing(record, key)} is missing; {fix}")
        if not test(value):
            raise MaskkitError(f"{source}: {key} {shown(repr(value))} is not {words}; {fix}")
    for side, index in (("height", 0), ("width", 1)):
        expected = int(round(record["input"][side] / record["crop"][index]))
        if record["resize"][side] != expected:
            raise MaskkitError(f"{source}: resize.{side} {record['resize'][side]} is not input.{side} / crop "
                               f"({expected}); {fix}")
    return dict(record)


def read_sidecar(path: str | Path) -> dict | None:
    """FILE.onnx.json through `read_record` (None when there is none)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        record = json.loads(path.read_bytes())
    except OSError as exc:
        raise MaskkitError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, a bomb of brackets
        raise MaskkitError(f"{path}: not valid JSON; re-export the model with maskkit export RUN FILE.onnx, "
                           "or delete the sidecar") from None
    return read_record(record, path, sidecar=True)


def onnx_modules():
    """(onnx, onnxruntime), imported here because they are an optional extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise MaskkitError(f"ONNX needs onnx and onnxruntime: {ONNX_EXTRA}") from None
    return onnx, onnxruntime


def write_onnx(net: ProbabilityNet, meta: Mapping, path: Path) -> None:
    """Export `net` (dynamic batch) to `path` with `meta` as the metadata entry `maskkit`; an operation the
    exporter cannot write is a RunFailure naming it in one line (torch's own error dumps the graph)."""
    onnx, _ = onnx_modules()
    example = torch.zeros(2, 3, meta["input"]["height"], meta["input"]["width"], dtype=torch.uint8)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; it needs no onnxscript
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except Exception as exc:  # SymbolicValueError, UnsupportedOperatorError, tracer errors...
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise RunFailure(f"the {meta.get('backbone', 'run')} model cannot be exported to ONNX (opset {OPSET}): "
                             f"{reason}") from None
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(dict(meta), sort_keys=True)
    proto.doc_string = f"maskkit export of {meta.get('run') or 'a run'}: uint8 NCHW RGB in, 18 class probabilities out"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def session(path: str | Path, device: str = "cpu", threads: int | None = None):
    """An onnxruntime session for `path` (CUDA provider first when `device` is cuda and it is there)."""
    _, ort = onnx_modules()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise MaskkitError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:120]}); "
                           "write one with maskkit export") from None


class OnnxModel:
    """An exported model: `meta` (the preprocessing record, checked) and `probs(uint8 NCHW batch)`.

    The record is read from the ONNX metadata; a sidecar FILE.onnx.json beside it must agree with it
    (`sidecar`: False for the export's own check of a temporary file), and the graph's input and
    output shapes must be the ones the record promises."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, sidecar: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MaskkitError(f"{self.path}: ONNX model not found (write one with maskkit export RUN {self.path})")
        self.session = session(self.path, device, threads)
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            meta = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
            raise MaskkitError(f"{self.path}: no maskkit metadata of format {EXPORT_FORMAT}; "
                               "predict reads models written by maskkit export")
        self.meta = read_record(meta, f"{self.path} (metadata {METADATA_KEY})")
        if sidecar:
            self._agrees(read_sidecar(sidecar_path(self.path)))
        self._check_graph()

    def _agrees(self, record: dict | None) -> None:
        """A sidecar that says anything else than the metadata misleads whoever deploys the model."""
        if record is None:
            return
        differ = [key for key, _, _ in RECORD_FIELDS if _lookup(record, key) != _lookup(self.meta, key)]
        if differ:
            key = differ[0]
            raise MaskkitError(f"{sidecar_path(self.path)}: {key} {shown(repr(_lookup(record, key)))} differs from the "
                               f"model's metadata ({shown(repr(_lookup(self.meta, key)))}); re-export the model with "
                               "maskkit export, or delete the sidecar")

    def _check_graph(self) -> None:
        """The graph takes `images` uint8 (B, 3, H, W) at the record's size and gives `probs` (B, 18)."""
        fix = "re-export the model with maskkit export"
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if list(inputs) != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise MaskkitError(f"{self.path}: the graph takes {shown(', '.join(inputs))} and gives "
                               f"{shown(', '.join(outputs))}, not {INPUT_NAME} -> {OUTPUT_NAME}; {fix}")
        given, output = inputs[INPUT_NAME], outputs[OUTPUT_NAME]
        expected = [3, *self.img_size]
        shape = list(given.shape)
        fixed = len(shape) == 4 and all(not isinstance(d, int) or d == e for d, e in zip(shape[1:], expected))
        if given.type != "tensor(uint8)" or not fixed:
            raise MaskkitError(f"{self.path}: the graph's input is {given.type} {shape}, but its record says uint8 "
                               f"(batch, 3, {self.img_size[0]}, {self.img_size[1]}) (input.height, input.width); "
                               f"{fix}")
        shape = list(output.shape)
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != NUM_CLASSES):
            raise MaskkitError(f"{self.path}: the graph's output {OUTPUT_NAME} is {shape}, not (batch, "
                               f"{NUM_CLASSES}) class probabilities; {fix}")

    @property
    def img_size(self) -> tuple[int, int]:
        return self.meta["input"]["height"], self.meta["input"]["width"]

    @property
    def crop(self) -> tuple[float, float]:
        return tuple(float(v) for v in self.meta["crop"])

    def probs(self, images: np.ndarray) -> np.ndarray:
        """(B, 18) float64 probabilities of a uint8 (B, 3, H, W) RGB batch (the rows not checked here:
        engine/inference.py refuses rows that are not probabilities, for every kind of model)."""
        try:
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.uint8)})[0]
        except Exception as exc:  # onnxruntime's own error types (a graph that fails on this batch)
            raise MaskkitError(f"{self.path}: onnxruntime failed on a batch of {len(images)} images "
                               f"({shown(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}); "
                               "re-export the model with maskkit export") from None
        if out.shape != (len(images), NUM_CLASSES):
            raise MaskkitError(f"{self.path}: the graph gave {list(out.shape)} values for {len(images)} images, "
                               f"not ({len(images)}, {NUM_CLASSES}) class probabilities; re-export the model with "
                               "maskkit export")
        return out.astype(np.float64)


def check_images(img_size, n: int = 8, seed: int = 0) -> torch.Tensor:
    """Seeded random uint8 images at the model's input size, for the export's self-check."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *img_size), dtype=torch.uint8, generator=generator)


@torch.no_grad()
def largest_difference(net: ProbabilityNet, model: OnnxModel, images: torch.Tensor) -> float:
    """max |p_torch - p_onnxruntime| over `images` (uint8 NCHW), both in float32 on the CPU."""
    expected = net(images).double().numpy()
    return float(np.abs(expected - model.probs(images.numpy())).max())
