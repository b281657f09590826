"""`maskkit segment` throughput against (a) a one-image-at-a-time loop with the same weights and
(b) the model's forward pass alone (same batch size, same tensors, no I/O), on one machine.

Random weights (speed does not depend on them) with the person bias raised so that every image
takes the costly path: full-size mask, composite, JPEG encode, write. Drawn images at the
competition's 384x512. Run from the repository root:

    python benchmarks/segment.py                                    # CPU: mobilenet, --size 256
    python benchmarks/segment.py --model resnet50 --size 520 --batch-size 32 --images 512   # a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import torch

from maskkit.commands import segment
from maskkit.data.masks import to_working
from maskkit.engine import deeplab, segmentation
from maskkit.engine.devices import resolve_device
from maskkit.commands import synth
from maskkit.options import Size


def make_weights(model: str, path: Path) -> None:
    builder, _ = deeplab.deeplab_builder(model)
    torch.manual_seed(0)
    net = builder(weights=None, weights_backbone=None, num_classes=deeplab.NUM_CLASSES, aux_loss=False)
    with torch.no_grad():
        net.classifier[4].bias[deeplab.PERSON] = 20.0  # "person" everywhere: every image is composited
    torch.save(net.state_dict(), path)


def forward_only(net, device, batches: list[torch.Tensor]) -> float:
    """Seconds for the forward passes alone over pre-decoded, pre-resized batches."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        deeplab.person_scores(net, batch, device)  # ends with .cpu(): synchronised
    return time.perf_counter() - start


def plain_forward(net, device, batches: list[torch.Tensor]) -> float:
    """Seconds for torchvision's own forward (logits upsampled to the input) + person softmax."""
    start = time.perf_counter()
    mean = torch.tensor(deeplab.MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(deeplab.STD, device=device).view(1, 3, 1, 1) * 255
    with torch.inference_mode():
        for batch in batches:
            x = (batch.to(device).permute(0, 3, 1, 2).float() - mean) / std
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                out = net(x)["out"]
            out.float().softmax(dim=1)[:, deeplab.PERSON].cpu()
    return time.perf_counter() - start


class Timed:
    """Wraps the pipelines' person_scores to sum the time the pipeline spends in the forward pass."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.original = segmentation.person_scores

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.original(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def one_at_a_time(net, device, paths: list[Path], root: Path, out: Path, size: int) -> float:
    """Seconds for decode -> forward (batch of 1) -> mask, composite, write, image after image."""
    style = segmentation.Style()
    start = time.perf_counter()
    for path in paths:
        image = cv2.imread(str(path))
        work = torch.from_numpy(to_working(image, size))[None]
        score = deeplab.person_scores(net, work, device)[0]
        rel = path.relative_to(root)
        segmentation.finish(segmentation.Job(rel.as_posix(), path, out / rel, None), image, score, style)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet", choices=list(deeplab.MODELS))
    parser.add_argument("--size", type=int, default=256, help="working resolution (shorter side)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=96, help="about this many images (7 per person)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth.run(tmp / "data", persons=max(1, args.images // 7), eval_persons=0, size=Size(width=384, height=512), seed=0, show_progress=False)
        src = tmp / "data" / "train"
        weights = tmp / "weights.pt"
        make_weights(args.model, weights)
        net = deeplab.prepare(deeplab.load_deeplab(args.model, weights), device)
        paths = [src / rel for rel in segment.scan(src).images]
        count = len(paths)

        works = [torch.from_numpy(to_working(cv2.imread(str(p)), args.size)) for p in paths]
        batches = [torch.stack(works[i:i + args.batch_size]) for i in range(0, count, args.batch_size)]
        if device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
        forward_only(net, device, batches[:2])  # warm-up (cudnn, allocator, oneDNN)

        fwd, plain, single, pipe, busy = [], [], [], [], []
        for repeat in range(args.repeats):
            fwd.append(forward_only(net, device, batches))
            plain.append(plain_forward(net, device, batches))
            single.append(one_at_a_time(net, device, paths, src, tmp / f"single{repeat}", args.size))
            timed = segmentation.person_scores = Timed()
            try:
                summary = segment.run(src, tmp / "out", model=args.model, weights=weights, batch_size=args.batch_size,
                                      device=args.device, short_side=args.size, workers=args.workers, overwrite=True,
                                      show_progress=False)
            finally:
                segmentation.person_scores = timed.original
            assert summary.done == count, summary
            pipe.append(summary.seconds)
            busy.append(timed.seconds / summary.seconds)

    rate = {name: count / min(times) for name, times in
            (("forward", fwd), ("plain", plain), ("single", single), ("pipeline", pipe))}
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"{count} images 384x512 -> DeepLabV3 {args.model} at shorter side {args.size}, batch {args.batch_size}, "
          f"device {device} (torch threads {threads}), best of {args.repeats}:")
    print(f"  forward pass only (same tensors, no I/O):  {rate['forward']:7.1f} img/s   "
          f"(torchvision's model(x) with its full-size upsampling + softmax: {rate['plain']:.1f} img/s)")
    print(f"  one image at a time (decode..write):       {rate['single']:7.1f} img/s   "
          f"{rate['single'] / rate['forward']:.2f}x forward")
    print(f"  maskkit segment pipeline:                  {rate['pipeline']:7.1f} img/s   "
          f"{rate['pipeline'] / rate['forward']:.2f}x forward, {rate['pipeline'] / rate['single']:.2f}x one-at-a-time")
    print(f"  share of the pipeline's wall time inside the forward pass: {max(busy):.0%} "
          f"(runs: {', '.join(f'{b:.0%}' for b in busy)})")


if __name__ == "__main__":
    main()
