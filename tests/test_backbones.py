""""Any timm model": one small model of each family builds with random weights, trains one step with
the default recipe's heads (multi + DLDL age), optimiser and EMA, and exports to ONNX that agrees with
torch; a backbone that cannot take the input size is refused with one line before training."""

from __future__ import annotations

import pytest
import torch

from helpers import one_thread
from maskkit.contract.errors import MaskkitError
from maskkit.contract.labels import NUM_CLASSES, TASKS
from maskkit.engine.build import build_optimisation, build_training_model
from maskkit.engine.loop import OnDevice, train_step
from maskkit.engine.loss import MaskLoss
from maskkit.contract.labels import age_to_target
from maskkit.engine.models import build_model, check_backbone
from maskkit.options import TrainOptions

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SIZE = (64, 48)  # (H, W): not square, as faces are
# One small model per family. mobilenetv3/v4, ghostnet and hgnetv2 pool and then widen (timm's
# head_hidden_size differs from num_features); vit and swin are fixed-size models built for SIZE.
FAMILIES = {
    "resnet": "test_resnet",
    "efficientnet": "test_efficientnet",
    "mobilenetv3": "mobilenetv3_small_050",
    "mobilenetv4": "mobilenetv4_conv_small_035",
    "ghostnet": "ghostnet_050",
    "hgnetv2": "hgnetv2_b0",
    "convnext": "test_convnext",
    "regnet": "regnetx_002",
    "vit": "test_vit",
    "swin": "swin_tiny_patch4_window7_224",
}


def _batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    targets = {task: torch.randint(0, k, (n,), generator=gen) for task, k in TASKS.items()}
    targets["label"] = targets["mask"] * 6 + targets["gender"] * 3 + targets["age"]
    targets["age_years"] = age_to_target(torch.randint(18, 80, (n,), generator=gen).float())
    return torch.randn(n, 3, *SIZE, generator=gen), targets


def _train_one_step(options: TrainOptions) -> torch.nn.Module:
    """The model training builds from `options` (the true defaults but backbone, size, no download),
    after one step of the defaults' loss, optimiser, EMA; returns the EMA model, as best.pt holds."""
    cpu = torch.device("cpu")
    model = build_training_model(options, options.img_size, cpu, resumed=False)
    opt = build_optimisation(model, options, steps=1, device=cpu, amp_dtype=None)
    images, targets = _batch()
    model.train()
    loss = train_step(model, images, targets, MaskLoss.from_options(options), opt, OnDevice(cpu))
    assert torch.isfinite(loss)
    opt.ema.update(model, step=1)
    return opt.ema.module.eval()


def _exported_difference(model: torch.nn.Module, path) -> float:
    from maskkit.engine.export import OnnxModel, ProbabilityNet, check_images, largest_difference, preprocessing, \
        write_onnx

    config = {"img_size": list(SIZE), "crop": [1.0, 1.0], "mean": [0.5] * 3, "std": [0.25] * 3,
              "backbone": "b", "heads": "multi"}
    net = ProbabilityNet(model, config["mean"], config["std"]).eval()
    write_onnx(net, preprocessing(config), path)
    return largest_difference(net, OnnxModel(path, "cpu", threads=1), check_images(SIZE, n=3))


SLOW_FAMILIES = {"swin", "ghostnet", "hgnetv2", "regnet"}  # over ~1.5 s a step on one CPU thread


@pytest.mark.parametrize("backbone", [pytest.param(b, marks=pytest.mark.slow) if name in SLOW_FAMILIES else b
                                      for name, b in FAMILIES.items()], ids=FAMILIES.keys())
def test_each_family_trains_a_step_with_the_default_heads_and_exports(backbone, tmp_path):
    options = TrainOptions(backbone=backbone, pretrained=False, img_size=SIZE, device="cpu")
    assert (options.heads, options.age_head, options.ema) == ("multi", "dldl", True)  # what users get
    with one_thread():
        torch.manual_seed(0)
        model = _train_one_step(options)
        with torch.no_grad():
            outputs = model(torch.randn(2, 3, *SIZE))
        assert {k: tuple(v.shape) for k, v in outputs.items()} == {
            "mask": (2, 3), "gender": (2, 2), "age": (2, 3), "age_dist": (2, 101), "age_years": (2,)}
        assert _exported_difference(model, tmp_path / "m.onnx") <= 1e-4


def test_a_single_head_with_dldl_age_trains_and_exports(tmp_path):
    options = TrainOptions(backbone="mobilenetv3_small_050", heads="single", pretrained=False, img_size=SIZE,
                           device="cpu")
    with one_thread():
        torch.manual_seed(0)
        model = _train_one_step(options)
        assert model(torch.randn(2, 3, *SIZE))["class"].shape == (2, NUM_CLASSES)
        assert _exported_difference(model, tmp_path / "m.onnx") <= 1e-4


@pytest.mark.parametrize("backbone", ["mobilenetv3_small_050", "ghostnet_050", "hgnetv2_b0"])
def test_heads_take_the_width_the_backbone_outputs(backbone):
    model = build_model(backbone, heads="multi", age_head="dldl")
    with torch.no_grad():
        features = model.backbone.eval()(torch.zeros(1, 3, *SIZE))
    assert model.backbone.num_features != features.shape[1]  # the case that broke: heads of num_features
    assert {head.in_features for head in model.heads.values()} == {features.shape[1]}
    assert check_backbone(backbone, SIZE) == features.shape[1]


@pytest.mark.parametrize("backbone, size, reason", [
    ("nest_tiny", (64, 48), "square"),  # fixed-size family that takes square inputs only
    ("dla34", (64, 48), "cannot take a 48x64 input"),  # its upsampled levels do not meet at this size
    ("test_vit", (50, 40), "cannot take a 40x50 input"),  # not a multiple of the patch size
])
def test_a_backbone_that_cannot_take_the_size_is_refused_in_one_line(backbone, size, reason):
    for check in (lambda: check_backbone(backbone, size),
                  lambda: build_model(backbone, heads="multi", age_head="dldl", img_size=size, probe=True)):
        with pytest.raises(MaskkitError, match=reason) as err:
            check()
        message = str(err.value)
        assert message.startswith(f"--backbone {backbone}") and "--input-size" in message and "\n" not in message


def _train_args(manifest_path, tmp_path, backbone: str) -> list:
    return ["train", manifest_path, "--backbone", backbone, "--no-pretrained", "--input-size", "40x48", "--epochs", "1",
            "--batch-size", "16", "--workers", "0", "--threads", "1", "--device", "cpu", "--cache", "ram",
            "--runs-dir", tmp_path / "runs", "--name", "r"]


@pytest.mark.slow
def test_train_runs_a_backbone_whose_pooled_features_are_wider(manifest_path, tmp_path, cli):
    """The issue's case: mobilenetv3 failed at step 1 (heads of num_features 288, features 1024)."""
    result = cli(*_train_args(manifest_path, tmp_path, "mobilenetv3_small_050"))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "runs" / "r" / "best.pt").is_file()


def test_train_refuses_a_backbone_that_cannot_take_the_size_in_one_line_and_leaves_no_run(manifest_path, tmp_path,
                                                                                           cli):
    result = cli(*_train_args(manifest_path, tmp_path, "nest_tiny"))
    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--backbone nest_tiny" in result.stderr and "square" in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before the run folder (and the image cache) is made


def test_a_pretrained_backbone_that_cannot_take_the_size_says_so_not_download(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")  # .invalid never resolves
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MaskkitError, match="square") as err:
        build_model("nest_tiny", pretrained=True, img_size=SIZE)
    assert "download" not in str(err.value)
    with pytest.raises(MaskkitError, match="--no-pretrained"):  # a size it takes: the download is what fails
        build_model("nest_tiny", pretrained=True, img_size=(64, 64))
