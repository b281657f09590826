"""`maskkit cam`: Grad-CAM looks where the decision is made, ViTs at non-square sizes, every head,
the summary's numbers, mask lookup, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from hostile import (CAM, CAM_EVAL, IMAGE, RUN, absolute_id, assert_refused_while_parsing, bad, climbing_id,
                     info_image_id, latin1_folder, manifest_climbing, run_bad)
from maskkit.commands import cam
from maskkit.engine import gradcam
from maskkit.engine.heads import TASK_HEADS
from maskkit.contract.labels import GENDERS, MASKS, NUM_CLASSES, decode
from maskkit.data.loader import decode_image
from maskkit.data.presets import eval_transform, work_size
from maskkit.engine.models import build_model, class_probs, head_task_probs

MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def make_run(folder: Path, backbone: str, heads: str, img_size, model=None) -> Path:
    """A run folder as `maskkit train` writes it (config.json + best.pt), here with given or random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    if model is None:
        torch.manual_seed(0)
        model = build_model(backbone, heads=heads, img_size=img_size)
    torch.save({"model": model.state_dict(), "epoch": 1, "val_f1": 0.0}, folder / "best.pt")
    config = {"format": 2, "options": {"backbone": backbone, "heads": heads, "age_weight": 0.0,
                                       "img_size": list(img_size)}, "mean": MEAN, "std": STD}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def drawn_masks(tmp_path_factory) -> Path:
    """A tiny drawn dataset with person masks (DATA/train, DATA/eval, DATA/masks)."""
    from maskkit.commands import synth
    from maskkit.options import Size

    root = tmp_path_factory.mktemp("cam") / "data"
    synth.run(root, persons=2, eval_persons=1, size=Size(width=48, height=64), seed=5, masks=True)
    return root


@pytest.fixture(scope="module")
def eff_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "eff", "test_efficientnet", "multi", (64, 48))


# --- 1. the CAM concentrates where the class is decided ------------------------------------------

IMG = (96, 96)
SIDE = 24
COLOURS = {0: (230, 40, 40), 6: (40, 40, 230)}  # class 0: red square, class 6: blue square


def draw_square(rng: np.random.Generator, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise at the run's working size with a coloured square inside the centre crop; the square's
    colour is the class, so the square is the only place that decides it."""
    h, w = work_size(IMG)
    top, left = (h - IMG[0]) // 2, (w - IMG[1]) // 2
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y = int(rng.integers(top + 2, top + IMG[0] - 2 - SIDE))
    x = int(rng.integers(left + 2, left + IMG[1] - 2 - SIDE))
    img[y:y + SIDE, x:x + SIDE] = COLOURS[label]
    mask[y:y + SIDE, x:x + SIDE] = 255
    return img, mask


def train_square_model(steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model("test_efficientnet", heads="single", img_size=IMG)
    transform = eval_transform(IMG, MEAN, STD)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        labels = rng.choice(list(COLOURS), 16)
        x = torch.stack([transform(image=draw_square(rng, int(k))[0])["image"] for k in labels])
        loss = torch.nn.functional.cross_entropy(model(x)["class"], torch.as_tensor(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.mark.slow
def test_cam_mass_concentrates_on_the_region_that_decides_the_class(tmp_path, cli):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(8):
        label = list(COLOURS)[i % 2]
        img, mask = draw_square(rng, label)
        image_path = tmp_path / "squares" / "images" / f"sq{i:02d}.png"
        mask_path = tmp_path / "masks" / "images" / f"sq{i:02d}.png"
        for path, array in ((image_path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR)), (mask_path, mask)):
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), array)
        mask_class, gender, age = (int(v) for v in decode(label))
        rows.append({"path": str(image_path), "person": f"sq{i:02d}", "gender": GENDERS[gender],
                     "age": (20, 45, 70)[age], "mask": MASKS[mask_class], "label": label, "fold": 0})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)

    trained = make_run(tmp_path / "trained", "test_efficientnet", "single", IMG, train_square_model(30))
    untrained = make_run(tmp_path / "untrained", "test_efficientnet", "single", IMG)
    lifts = {}
    for run in (trained, untrained):
        out = tmp_path / f"cam_{run.name}"
        result = cli("cam", run, manifest, "--out-dir", out, "--target", "true", "--summary", "--masks",
                     tmp_path / "masks", "-o", out / "summary.csv")
        assert result.exit_code == 0, result.output
        summary = pd.read_csv(out / "summary.csv", dtype={"class": str})
        overall = summary[summary["class"] == "all"].iloc[0]
        # The mask went through the run's crop and resize: its area is the square's share of the input.
        assert overall["person_area"] == pytest.approx(SIDE * SIDE / (IMG[0] * IMG[1]), abs=1e-6)
        assert set(summary["by"]) == {"label"} and overall["images"] == 8
        lifts[run.name] = overall["lift"]
        if run is trained:
            images = pd.read_csv(out / "cam.csv")
            assert (images["pred"] == images["label"]).mean() >= 0.9  # it did learn the colours
    # A uniform CAM scores lift 1; the trained model's CAM sits on the square.
    assert lifts["trained"] > 2.0
    assert lifts["trained"] > 1.5 * lifts["untrained"]


# --- 2. ViTs at non-square sizes -----------------------------------------------------------------


def test_vit_at_a_non_square_size_gives_cams_of_the_input_shape(tmp_path, cli, drawn_masks):
    run = make_run(tmp_path / "vit", "test_vit", "single", (64, 96))  # 4 x 6 patches of 16
    out = tmp_path / "out"
    sheet = tmp_path / "sheets" / "vit.png"
    result = cli("cam", run, drawn_masks / "eval", "--out-dir", out, "--limit", "3", "--method", "gradcam++",
                 "--sheet", sheet)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "cam.csv")
    assert len(table) == 3
    for overlay in table["overlay"]:
        assert read_rgb(Path(overlay)).shape == (64, 96, 3)
    assert read_rgb(sheet).shape[0] > 64 and not (out / "sheet.png").exists()


def test_vit_tokens_are_laid_out_on_the_patch_grid_row_by_row():
    model = build_model("test_vit", img_size=(64, 96))
    layer, reshape = gradcam.target_layer(model.backbone, (64, 96))
    assert layer is model.backbone.blocks[-1].norm1
    assert reshape.grid == (4, 6) and reshape.prefix == model.backbone.num_prefix_tokens
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    model(torch.zeros(2, 3, 64, 96))
    handle.remove()
    tokens = seen["tokens"].detach().clone()
    tokens[:, reshape.prefix:, 0] = torch.arange(24, dtype=tokens.dtype)  # patch index in channel 0
    grid = reshape(tokens)
    assert grid.shape == (2, tokens.shape[2], 4, 6)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    assert torch.equal(grid[0, 0], (rows * 6 + cols).to(grid.dtype))


def test_cnn_target_layers_follow_the_backbone_family():
    eff = build_model("test_efficientnet").backbone
    assert gradcam.target_layer(eff, (64, 64)) == (eff.bn2, None)  # the features the classifier pools
    res = build_model("test_resnet").backbone
    assert gradcam.target_layer(res, (64, 64)) == (res.layer4, None)
    convnext = build_model("test_convnext").backbone
    assert gradcam.target_layer(convnext, (64, 64))[0] is convnext.stages[-1]


def test_images_keep_their_relative_paths_and_never_share_an_output(tmp_path):
    folder = tmp_path / "shots"
    (folder / "a").mkdir(parents=True)
    for name in ("a/x.jpg", "a/x.png", "y.jpg"):
        cv2.imwrite(str(folder / name), np.zeros((8, 8, 3), np.uint8))
    items = cam.collect_images([folder, folder / "y.jpg", tmp_path / "shots" / "a" / "x.jpg"])
    rels = [item.rel.as_posix() for item in items]
    assert rels == ["shots/a/x.png", "shots/a/x~2.png", "shots/y.png"]  # same image twice: kept once


# --- 3. the summary's numbers --------------------------------------------------------------------


def test_mass_inside_is_the_share_of_cam_mass_under_the_mask():
    heat = np.zeros((4, 8))
    heat[:, :4] = 1.0  # left half hot
    heat[:, 4:] = 0.25  # right half warm
    mask = np.zeros((4, 8), np.uint8)
    mask[:, :2] = 1  # left quarter
    # left quarter holds 8 of the total 16 + 4 = 20 units of mass
    assert cam.mass_inside(heat, mask) == pytest.approx(8 / 20)
    assert cam.mass_inside(heat, np.ones_like(mask)) == pytest.approx(1.0)
    assert np.isnan(cam.mass_inside(np.zeros((4, 8)), mask))


def test_summary_averages_images_per_class_and_overall():
    rows = pd.DataFrame({
        "head": ["class"] * 4 + ["mask"] * 2,
        "label": pd.array([3, 3, 5, 5, 0, 2], dtype="Int64"),
        "pred": [3, 1, 5, 5, 0, 0],
        "cam_inside": [0.2, 0.4, 0.9, float("nan"), 0.5, 0.7],
        "person_area": [0.5, 0.5, 0.3, 0.3, 0.5, 0.5],
    })
    summary = cam.summarize(rows).set_index(["head", "class"])
    assert summary.loc[("class", "3"), "images"] == 2
    assert summary.loc[("class", "3"), "cam_inside"] == pytest.approx(0.3)
    assert summary.loc[("class", "3"), "cam_background"] == pytest.approx(0.7)
    assert summary.loc[("class", "3"), "lift"] == pytest.approx(0.3 / 0.5)
    assert summary.loc[("class", "5"), "images"] == 1  # the all-zero CAM is left out
    assert summary.loc[("class", "all"), "cam_inside"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    assert summary.loc[("class", "all"), "person_area"] == pytest.approx((0.5 + 0.5 + 0.3) / 3)
    assert summary.loc[("mask", "2"), "name"] == "not_wear"
    assert set(summary["by"]) == {"label"}
    # Without labels, classes are the predicted ones.
    unlabeled = cam.summarize(rows.assign(label=pd.array([None] * 6, dtype="Int64")))
    assert set(unlabeled["by"]) == {"pred"}
    assert unlabeled.set_index(["head", "class"]).loc[("class", "1"), "cam_inside"] == pytest.approx(0.4)


def test_summary_cli_on_drawn_masks_matches_the_per_image_table(tmp_path, cli, drawn_masks, eff_run):
    out = tmp_path / "out"
    result = cli("cam", eff_run, drawn_masks / "train", "--out-dir", out, "--summary", "--masks",
                 drawn_masks / "masks", "--head", "mask")
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(pd.io.common.StringIO(result.stdout), dtype={"class": str})
    images = pd.read_csv(out / "cam.csv")
    assert len(images) == 14 and images["cam_inside"].between(0, 1).all()
    assert images["person_area"].between(0.05, 0.95).all()  # a person, not an empty or full mask
    overall = summary[summary["class"] == "all"].iloc[0]
    assert overall["cam_inside"] == pytest.approx(images["cam_inside"].mean(), abs=1e-5)
    assert summary[summary["class"] != "all"]["images"].sum() == 14


def test_masks_are_found_by_the_longest_trailing_path(tmp_path):
    image = tmp_path / "x" / "data" / "train" / "images" / "P" / "mask1.jpg"
    for rel in ("M1/train/images/P/mask1.png", "M2/images/P/mask1.png", "M3/P/mask1.png"):
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_bytes(b"")
    assert cam.find_mask(image, tmp_path / "M1") == tmp_path / "M1/train/images/P/mask1.png"
    assert cam.find_mask(image, tmp_path / "M2") == tmp_path / "M2/images/P/mask1.png"
    assert cam.find_mask(image, tmp_path / "M3") == tmp_path / "M3/P/mask1.png"
    (tmp_path / "M1/P").mkdir()
    (tmp_path / "M1/P/mask1.png").write_bytes(b"")
    assert cam.find_mask(image, tmp_path / "M1") == tmp_path / "M1/train/images/P/mask1.png"  # longest wins


# --- 4. multi-output models: any head -------------------------------------------------------------


def test_head_scores_are_the_models_heads_or_their_marginals():
    torch.manual_seed(0)
    multi = {"mask": torch.randn(5, 3), "gender": torch.randn(5, 2), "age": torch.randn(5, 3)}
    for head in ("mask", "gender", "age"):
        assert torch.equal(TASK_HEADS["multi"].scores(multi, head), multi[head])
    assert torch.allclose(TASK_HEADS["multi"].scores(multi, "class").exp(), class_probs(multi), atol=1e-6)
    single = {"class": torch.randn(5, NUM_CLASSES)}
    assert torch.equal(TASK_HEADS["single"].scores(single, "class"), single["class"])
    marginals = head_task_probs(single)
    for head in ("mask", "gender", "age"):
        assert torch.allclose(TASK_HEADS["single"].scores(single, head).exp(), marginals[head], atol=1e-6)


def test_the_cam_model_asks_the_models_head_kind():
    model = build_model("test_resnet", heads="single", age_head="dldl").eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        marginal = gradcam.HeadModel(model, "age")(x).exp()
        assert torch.allclose(marginal, head_task_probs(model(x))["age"], atol=1e-6)


def test_every_head_of_a_multi_output_model_can_be_the_target(tmp_path, cli, drawn_masks, eff_run):
    out = tmp_path / "out"
    result = cli("cam", eff_run, drawn_masks / "train", "--out-dir", out, "--head", "all", "--target", "1",
                 "--limit", "4")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "cam.csv")
    assert sorted(table["head"].unique()) == sorted(cam.HEADS) and len(table) == 16
    assert (table["target"] == 1).all()

    # The CAM sees what predict sees: same decode, same eval transform, same probabilities.
    from maskkit.engine.models import load_run

    model, config = load_run(eff_run)
    transform = eval_transform(config["img_size"], MEAN, STD)
    first = table["image"].iloc[0]
    x = transform(image=decode_image(first, work_size(config["img_size"])))["image"][None]
    with torch.no_grad():
        outputs = model(x)
    expected = {"class": class_probs(outputs)[0], **{k: v[0] for k, v in head_task_probs(outputs).items()}}
    for row in table[table["image"] == first].itertuples():
        assert row.target_prob == pytest.approx(float(expected[row.head][1]), rel=1e-4)
        assert row.pred == int(expected[row.head].argmax())
        assert read_rgb(Path(row.overlay)).shape == (64, 48, 3)
    pictures = {row.head: read_rgb(Path(row.overlay)) for row in table[table["image"] == first].itertuples()}
    assert not np.array_equal(pictures["mask"], pictures["gender"])  # each head has its own CAM


def test_target_true_uses_the_train_labels(tmp_path, cli, drawn_masks, eff_run):
    out = tmp_path / "out"
    result = cli("cam", eff_run, drawn_masks / "train", "--out-dir", out, "--head", "gender,age", "--target", "true")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "cam.csv")
    from maskkit.contract.layout import load_train

    truth = load_train(drawn_masks / "train", report=False).set_index("path")["label"]
    _, gender, age = decode(truth.loc[table["image"]].to_numpy())
    expected = np.where(table["head"] == "gender", gender, age)
    assert np.array_equal(table["target"].to_numpy(), expected)
    assert np.array_equal(table["label"].to_numpy(), expected)


def test_cam_hooks_are_released_after_use(eff_run):
    from maskkit.engine.models import load_run

    model, _ = load_run(eff_run)
    layer, reshape = gradcam.target_layer(model.backbone, (64, 48))
    with gradcam.make_cam("gradcam", gradcam.HeadModel(model, "age"), layer, reshape) as explainer:
        heat, probs = gradcam.explain(explainer, torch.randn(2, 3, 64, 48), 2, [None, None])
    assert heat.shape == (2, 64, 48) and probs.shape == (2, 3)
    assert not layer._forward_hooks


# --- 5. errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["no best.pt", "image missing", "unreadable image", "no mask", "mask shape",
                                  "true unknown", "target too big", "eigencam target", "summary without masks",
                                  "bad head"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, cli, drawn_masks, eff_run, case):
    out = tmp_path / "out"
    run, images, extra, named = eff_run, [drawn_masks / "eval"], [], None
    if case == "no best.pt":
        run = tmp_path / "run"
        run.mkdir()
        (run / "config.json").write_text((eff_run / "config.json").read_text())
        named = "best.pt"
    elif case == "image missing":
        images, named = [tmp_path / "nope.jpg"], "nope.jpg"
    elif case == "unreadable image":
        (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
        images, named = [drawn_masks / "eval", tmp_path / "broken.jpg"], "broken.jpg"
    elif case == "mask shape":
        (tmp_path / "img").mkdir()
        (tmp_path / "masks" / "img").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "img" / "p.png"), np.zeros((16, 8, 3), np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / "img" / "p.png"), np.zeros((8, 16), np.uint8))
        images, extra, named = [tmp_path / "img"], ["--summary", "--masks", tmp_path / "masks"], "mask is 16x8"
    elif case == "eigencam target":
        extra, named = ["--method", "eigencam", "--target", "1"], "eigencam"
    elif case == "no mask":
        masks = tmp_path / "masks"
        masks.mkdir()
        extra, named = ["--summary", "--masks", masks], "no person mask"
    elif case == "true unknown":
        extra, named = ["--target", "true"], "--target true"
    elif case == "target too big":
        extra, named = ["--head", "gender", "--target", "2"], "gender head has classes 0..1"
    elif case == "summary without masks":
        extra, named = ["--summary"], "--masks"
    else:
        extra, named = ["--head", "hair"], "--head"
    result = cli("cam", run, *images, "--out-dir", out, *extra)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("maskkit cam: error:") and "\n" not in message and named in message
    assert result.stdout == ""
    assert not out.exists()


def test_out_names_the_summary_csv_and_out_dir_the_overlays(tmp_path, cli, drawn_masks, eff_run):
    overlays, summary = tmp_path / "overlays", tmp_path / "summary.csv"
    result = cli("cam", eff_run, drawn_masks / "eval", "--limit", 2, "--out-dir", overlays, "--summary",
                 "--masks", drawn_masks / "masks", "-o", summary)
    assert result.exit_code == 0, result.output
    assert (overlays / "cam.csv").is_file() and (overlays / "sheet.png").is_file()
    assert result.stdout == "" and pd.read_csv(summary)["images"].iloc[-1] == 2


def test_long_sheet_captions_keep_the_person_folder_and_the_file_name():
    name = "000123_female_Asian_45/incorrect_mask"
    short = cam.shorten(name, 20)
    assert len(short) == 20 and short.startswith("000123_f") and short.endswith("ct_mask") and "~" in short
    assert cam.shorten(name, len(name)) == name


# --- bad input ----------------------------------------------------------------------------------

BAD_CALLS = [
    bad("cam --sheet image", ["cam", *CAM, "--sheet", IMAGE]),
    bad("cam -o train.csv", ["cam", *CAM, "--summary", "--masks", "X/masks", "-o", "X/train/train.csv"]),
    bad("cam -o a CSV of another kind", ["cam", *CAM, "--summary", "--masks", "X/masks", "-o", "p.csv"]),
    bad("cam --out-dir a file", ["cam", *CAM, "--out-dir", "p.csv"]),
    bad("cam --out-dir the dataset", ["cam", *CAM, "--out-dir", "X/train"]),
    bad("cam --out-dir the images folder", ["cam", *CAM, "--out-dir", "X/train/images"]),
    bad("cam --out-dir inside the run folder", [*CAM_EVAL[:-1], f"{RUN}/cam"], absent=[f"{RUN}/cam"]),
    bad("cam ImageID ../../../victim", CAM_EVAL, info_image_id(climbing_id), absent=["camout"]),
    bad("cam ImageID absolute", CAM_EVAL, info_image_id(absolute_id), absent=["camout"]),
    bad("cam manifest path with ..", ["cam", RUN, "bad.csv", "--limit", "2", "--device", "cpu", "--out-dir", "camout"],
        manifest_climbing, absent=["camout"]),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


def test_threads_beyond_the_cores_is_one_line_before_anything_is_written(world, monkeypatch, capsys):
    assert_refused_while_parsing(world, ["cam", RUN, "X/eval", "--threads", "100000"], "--threads", monkeypatch, capsys)


def test_a_latin1_file_name_gets_its_overlay_and_sheet(cli, world):
    latin1_folder(world)
    result = cli("cam", RUN, "odd", "--device", "cpu", "--out-dir", "camout")
    assert result.exit_code == 0, result.stderr
    assert len(list((world / "camout").rglob("*.png"))) >= 2  # the overlay and the sheet
