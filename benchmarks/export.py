"""CPU images/s of an exported model in onnxruntime against torch eager (`maskkit export`'s graph).

For lite0 and resnet18 (random weights) at 128 and 256 px, the same `ProbabilityNet` (uint8 NCHW in,
normalisation inside, 18 probabilities out) runs in torch eager (inference mode) and, exported
with `engine.export.write_onnx`, in onnxruntime, both on `--threads` threads (default 1), batches of
`--batch` random images. Rounds interleave the two; each rate is the best round (wall time).

Run from the repository root: python benchmarks/export.py [--threads 1] [--batch 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from maskkit.engine.export import OnnxModel, ProbabilityNet, check_images, preprocessing, write_onnx
from maskkit.engine.models import build_model, model_defaults
from maskkit.options import FULL_CROP


def rate(step, images: int, seconds: float) -> float:
    """Images per second of `step()` (each call predicts `images`) over about `seconds`, after one warm-up."""
    step()
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * images / elapsed


def measure(backbone: str, size: int, batch: int, rounds: int, seconds: float, folder: Path) -> tuple[float, float]:
    """(torch img/s, onnxruntime img/s), the best of `rounds` interleaved rounds."""
    torch.manual_seed(0)
    stats = model_defaults(backbone)
    model = build_model(backbone, heads="single", pretrained=False, img_size=(size, size)).eval()
    net = ProbabilityNet(model, stats["mean"], stats["std"]).eval()
    config = {"img_size": [size, size], "crop": list(FULL_CROP), "backbone": backbone, "heads": "single", **stats}
    path = folder / f"{backbone}-{size}.onnx"
    write_onnx(net, preprocessing(config, path.stem), path)
    onnx_model = OnnxModel(path, "cpu", threads=torch.get_num_threads())
    images = check_images((size, size), n=batch)
    pixels = images.numpy()
    best_torch = best_onnx = 0.0
    with torch.inference_mode():
        for _ in range(rounds):
            best_torch = max(best_torch, rate(lambda: net(images), batch, seconds))
            best_onnx = max(best_onnx, rate(lambda: onnx_model.probs(pixels), batch, seconds))
    return best_torch, best_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="Length of one timed round.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, best of {args.rounds}\n")
    print("| model | px | torch eager img/s | onnxruntime img/s | onnxruntime vs torch |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for backbone in ("lite0", "resnet18"):
            for size in (128, 256):
                eager, onnx = measure(backbone, size, args.batch, args.rounds, args.seconds, Path(folder))
                print(f"| {backbone} | {size} | {eager:.1f} | {onnx:.1f} | {onnx / eager:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
