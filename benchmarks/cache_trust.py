"""What the image cache's trust checks cost (issue 31): the content digests in the key and the pixel
digests checked on every mapping, as ratios of the cache's decode build, in one run on this machine.

Rows: `build` (decode every image into the shared cache: the first run on a manifest), `key` (the
content digest of every image file, paid by every run), `reopen` (key + header + the pixel digests of
the whole cache file, what a later run or another DDP rank pays instead of decoding), and `reopen,
no pixel check` (what reopening cost before, for the difference).

Run from the repository root:  python benchmarks/cache_trust.py [--persons 300] [--size 384x512] [--work 320x256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=300, help="drawn persons (7 images each)")
    parser.add_argument("--size", default="384x512", help="drawn image size WIDTHxHEIGHT (the competition's)")
    parser.add_argument("--work", default="256x320", help="working size WIDTHxHEIGHT the cache holds")
    args = parser.parse_args()

    from maskkit.commands import synth
    from maskkit.data import cache
    from maskkit.options import Size

    work = Size.parse(args.work, "--work")
    with tempfile.TemporaryDirectory() as tmp:
        synth.run(Path(tmp) / "data", persons=args.persons, eval_persons=0, size=Size.parse(args.size, "--size"),
                  show_progress=False)
        paths = sorted(str(p) for p in (Path(tmp) / "data" / "train" / "images").rglob("*.jpg"))
        folder = Path(tmp) / "cache"
        build = timed(lambda: cache.shared_cache(paths, work, folder=folder))
        key = min(timed(lambda: cache.cache_key(paths, work)) for _ in range(3))
        reopen = min(timed(lambda: cache.shared_cache(paths, work, folder=folder)) for _ in range(3))
        shape = (len(paths), work.height, work.width, 3)
        header = min(timed(lambda: cache._read_header(folder, cache.cache_key(paths, work), shape, check_pixels=False))
                     for _ in range(3))
    size_mb = len(paths) * work.height * work.width * 3 / 2**20
    print(f"{len(paths)} images, cache {size_mb:.0f} MiB at {work.text} (WxH)")
    print("| step | seconds | x build |")
    print("| --- | ---: | ---: |")
    for name, seconds in (("build (decode)", build), ("key (content digests)", key), ("reopen", reopen),
                          ("reopen, no pixel check", header)):
        print(f"| {name} | {seconds:.2f} | {seconds / build:.3f} |")


if __name__ == "__main__":
    main()
