"""torchvision's DeepLabV3 for segment: loading (download or a local file) and the person margin.

The weights are COCO images with the 21 Pascal VOC labels; class 15 is person. The margin is
person logit - logsumexp(other logits), so sigmoid(margin) is the softmax person probability.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import segmentation

from maskkit.contract.errors import MaskkitError
from maskkit.contract.files import examples
from maskkit.data.masks import working_size
from maskkit.engine.models import read_state_dict

# torchvision builder and weights enum per --model (options.SEGMENT_MODELS).
MODELS = {
    "resnet50": ("deeplabv3_resnet50", "DeepLabV3_ResNet50_Weights"),
    "resnet101": ("deeplabv3_resnet101", "DeepLabV3_ResNet101_Weights"),
    "mobilenet": ("deeplabv3_mobilenet_v3_large", "DeepLabV3_MobileNet_V3_Large_Weights"),
}
NUM_CLASSES = 21
PERSON = 15  # index of "person" among the VOC labels
MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation of the torchvision weights' transforms
STD = (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT_S = 60


def deeplab_builder(model: str):
    """(builder, weights enum) of torchvision for a --model name."""
    builder, weights = MODELS[model]
    return getattr(segmentation, builder), getattr(segmentation, weights)


def error_line(exc: BaseException) -> str:
    """The line of a torch error worth showing: its size mismatch, else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(exc).__name__)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub downloads without a timeout; a firewalled server would otherwise hang forever."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(model: str) -> nn.Module:
    builder, weights_enum = deeplab_builder(model)
    weights = weights_enum.DEFAULT
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return builder(weights=weights, weights_backbone=None)
    except (URLError, OSError, RuntimeError) as exc:  # no network, timeout, bad hash or truncated file
        reason = str(getattr(exc, "reason", "") or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise MaskkitError(
            f"{weights.url}: could not download the DeepLabV3 {model} weights ({reason}); "
            f"on an offline machine fetch that file elsewhere and pass it with --weights FILE (or put it at {cached})"
        ) from None


def _check_head(path: Path, state: dict[str, torch.Tensor]) -> None:
    head = state.get("classifier.4.weight")
    if head is None:
        raise MaskkitError(f"{path}: not a DeepLabV3 state dict (no classifier.4.weight); pass torchvision DeepLabV3 weights")
    if head.shape[0] != NUM_CLASSES:
        raise MaskkitError(
            f"{path}: the head has {head.shape[0]} classes, not the {NUM_CLASSES} VOC labels whose class "
            f"{PERSON} is person; pass torchvision's COCO_WITH_VOC_LABELS weights"
        )


def _from_file(model: str, path: Path) -> nn.Module:
    builder, _ = deeplab_builder(model)
    state = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}  # DataParallel/DDP saves
    _check_head(path, state)
    aux = any(k.startswith("aux_classifier.") for k in state)
    net = builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=aux)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise MaskkitError(f"{path}: does not fit DeepLabV3 {model} ({error_line(exc)}); is --model right?") from None
    if result.missing_keys or result.unexpected_keys:
        keys = result.missing_keys + result.unexpected_keys
        raise MaskkitError(
            f"{path}: does not fit DeepLabV3 {model} ({len(result.missing_keys)} missing and "
            f"{len(result.unexpected_keys)} unexpected keys, e.g. {examples(keys, 2)}); is --model right?"
        )
    return net


def load_deeplab(model: str = "resnet50", weights: str | Path | None = None) -> nn.Module:
    """DeepLabV3 in eval mode from a local state dict, or torchvision's download when weights is None."""
    net = _download(model) if weights is None else _from_file(model, Path(weights))
    net.aux_classifier = None  # the auxiliary head only helps training; skipping it saves time
    return net.eval().requires_grad_(False)


def prepare(net: nn.Module, device: torch.device) -> nn.Module:
    """Move the model to the device; channels_last on CUDA (faster convolutions with AMP)."""
    net = net.to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """Float RGB (B, 3, H, W) 0..255 -> the weights' input."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1) * 255
    return (x - mean) / std


def _margin(net: nn.Module, x: torch.Tensor, amp: bool) -> torch.Tensor:
    """Person margin (B, h', w') at the head's resolution: DeepLabV3.forward minus its F.interpolate."""
    with torch.autocast(x.device.type, enabled=amp and x.device.type == "cuda"):
        logits = net.classifier(net.backbone(x)["out"])
    logits = logits.float()
    others = torch.cat([logits[:, :PERSON], logits[:, PERSON + 1:]], dim=1).logsumexp(dim=1)
    return logits[:, PERSON] - others


def person_scores(net: nn.Module, batch: torch.Tensor, device: torch.device, amp: bool = True) -> np.ndarray:
    """Person margin (B, h', w') float32 at the head's resolution for RGB uint8 images (B, h, w, 3).

    The model's forward without its final 21-channel upsampling to (h, w): the margin is resized
    once, straight to each image's full size, which saves that upsampling, the full-size softmax
    and the device-to-host copy.
    """
    with torch.inference_mode():
        x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW
        return _margin(net, _normalise(x.float()), amp).cpu().numpy()


def person_margins(net: nn.Module, images: torch.Tensor, size: int, amp: bool = True) -> torch.Tensor:
    """Person margin (B, H, W) float32 at full size for BGR uint8 images (B, H, W, 3) on the model's device.

    The device pipeline's `person_scores`: the resize to the working size (bilinear, antialiased
    when shrinking, rounded to integers like the CPU path's uint8 image) and the margin's resize to
    full size both happen on the device, so the host sees only the images and the binary masks.
    """
    height, width = images.shape[1:3]
    x = images.permute(0, 3, 1, 2).flip(1).float()  # BGR -> RGB, (B, 3, H, W)
    x = F.interpolate(x, size=working_size(height, width, size), mode="bilinear", antialias=True,
                      align_corners=False).round_().clamp_(0, 255)
    x = _normalise(x).contiguous(memory_format=torch.channels_last)
    margin = _margin(net, x, amp)[:, None]
    return F.interpolate(margin, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
