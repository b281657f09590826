"""Grad-CAM on a maskkit model: one head's scores as a tensor model, the layer to explain per backbone
family (CNNs and ViTs), and one batch explained with pytorch-grad-cam."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timm.models.efficientnet import EfficientNet
from torch import nn

from maskkit.contract.errors import RunFailure

CAM_CLASSES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}  # the --method choices


class HeadModel(nn.Module):
    """MaskModel -> one head's scores, since pytorch-grad-cam needs a model returning a tensor. The model's
    task-head kind gives them (engine/heads.py `scores`): a multi-output model its own head, and for
    'class' the joint log-probability log p_mask + log p_gender + log p_age; a single 18-way model its
    logits for 'class' and, for mask/gender/age, the log of the marginal probability."""

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.task_heads.scores(self.model(x), self.head)


class TokenGrid:
    """Reshape ViT tokens (B, prefix + gh*gw, C) into a feature map (B, C, gh, gw)."""

    def __init__(self, grid: tuple[int, int], prefix: int) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        self.prefix = int(prefix)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.prefix:, :]
        gh, gw = self.grid
        if patches.shape[1] != gh * gw:
            raise RunFailure(
                f"ViT gave {patches.shape[1]} patch tokens, expected {gh}x{gw} for its input size "
                "(the run's img_size does not match the model's patch grid)"
            )
        return patches.reshape(patches.shape[0], gh, gw, patches.shape[2]).permute(0, 3, 1, 2)


def nhwc_to_nchw(features: torch.Tensor) -> torch.Tensor:
    return features.permute(0, 3, 1, 2)


def target_layer(backbone: nn.Module, img_size: tuple[int, int]) -> tuple[nn.Module, Callable | None]:
    """The layer to explain and how to turn its output into (B, C, h, w), by backbone family.

    ViTs: the last block's norm1, tokens reshaped on the patch grid of `img_size` (minus the prefix
    tokens). EfficientNets: bn2 (the head conv's activated output that the classifier pools). Other
    timm CNNs: the module of the last stage in `feature_info`.
    """
    patch_embed = getattr(backbone, "patch_embed", None)
    blocks = getattr(backbone, "blocks", None)
    if patch_embed is not None and blocks is not None and hasattr(blocks[-1], "norm1") \
            and hasattr(backbone, "num_prefix_tokens"):
        if getattr(backbone, "dynamic_img_size", False) and hasattr(patch_embed, "dynamic_feat_size"):
            grid = patch_embed.dynamic_feat_size(tuple(img_size))
        else:
            grid = patch_embed.grid_size
        return blocks[-1].norm1, TokenGrid(grid, backbone.num_prefix_tokens)
    if isinstance(backbone, EfficientNet) and hasattr(backbone, "bn2"):
        return backbone.bn2, None
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise RunFailure(f"{type(backbone).__name__}: no Grad-CAM target layer known for this backbone "
                         "(it has no timm feature_info)")
    layer = backbone.get_submodule(info[-1]["module"])
    reshape = nhwc_to_nchw if getattr(backbone, "output_fmt", "NCHW") == "NHWC" else None
    return layer, reshape


def make_cam(method: str, model: nn.Module, layer: nn.Module, reshape: Callable | None):
    """A pytorch-grad-cam object (use it as a context manager so its hooks are released)."""
    return CAM_CLASSES[method](model=model, target_layers=[layer], reshape_transform=reshape)


def explain(cam, x: torch.Tensor, target: str | int, truths: Sequence[int | None]):
    """CAMs (B, H, W) in [0, 1], predictions and probabilities for one batch and one head."""
    if target == "pred":
        targets = None
    elif target == "true":
        targets = [ClassifierOutputTarget(t) for t in truths]
    else:
        targets = [ClassifierOutputTarget(target)] * len(x)
    try:
        cams = cam(input_tensor=x, targets=targets)
    except IndexError as exc:  # pytorch-grad-cam's __exit__ would swallow an IndexError
        raise RunFailure(f"Grad-CAM failed: {exc}") from None
    with torch.no_grad():
        probs = torch.softmax(cam.outputs.detach().float(), 1).cpu().numpy()
    return cams, probs
