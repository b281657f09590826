"""The model side of `maskkit export` and of `predict MODEL.onnx` (docs/formats.md, "ONNX export").

`ProbabilityNet` is what is exported: uint8 NCHW RGB pixels (0..255) in, the run's normalisation
inside the graph, the 18 class probabilities out (a multi-head model's p_mask x p_gender x p_age,
as `predict`). What stays outside the graph (resize, centre crop, input size, channel order, class
table) is `preprocessing(config)`, stored as the ONNX metadata entry `maskkit` and in the sidecar
JSON. `OnnxModel` runs such a file with onnxruntime.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskkit import __version__
from maskkit.contract.errors import MaskkitError, RunFailure
from maskkit.contract.labels import NUM_CLASSES, class_name
from maskkit.engine.models import class_probs

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
    """An exported model: `meta` (the preprocessing record) and `probs(uint8 NCHW batch)`."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MaskkitError(f"{self.path}: ONNX model not found (write one with maskkit export RUN {self.path})")
        self.session = session(self.path, device, threads)
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            self.meta = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            self.meta = None
        if not isinstance(self.meta, dict) or self.meta.get("format") != EXPORT_FORMAT:
            raise MaskkitError(f"{self.path}: no maskkit metadata of format {EXPORT_FORMAT}; "
                               "predict reads models written by maskkit export")

    @property
    def img_size(self) -> tuple[int, int]:
        return int(self.meta["input"]["height"]), int(self.meta["input"]["width"])

    @property
    def crop(self) -> tuple[float, float]:
        return tuple(float(v) for v in self.meta["crop"])

    def probs(self, images: np.ndarray) -> np.ndarray:
        """(B, 18) float64 probabilities of a uint8 (B, 3, H, W) RGB batch."""
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.uint8)})[0]
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
