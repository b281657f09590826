"""One image cache per machine against one per process: resident memory (PSS) and build time.

Two scenarios, each with today's private cache (`loader.build_cache`: every process decodes its
own copy into its own memory, as train did before issue 20) and the shared cache of
`maskkit.engine.build.build_cache_of_manifest` with `--cache ram` (/dev/shm) and `--cache disk`:

  torchrun    `torchrun --nproc_per_node 2` (gloo on the CPU): two DDP ranks of one run
  two folds   two plain processes started together, fold 0 and fold 1 of the same manifest

Each process decodes the whole manifest (the default decoding threads, one per core) or maps the
shared file, reads every pixel once, waits for the other at a barrier, then reads its PSS from
/proc/self/smaps_rollup (shared pages count once there, split between the processes that map
them). `cache pages' PSS` = the growth, summed over both processes, of the PSS kind the cache's
pages are counted in (Pss_Anon for private arrays, Pss_Shmem for /dev/shm, Pss_File for a file);
`all PSS growth` = the same for all of PSS (decoder scratch memory included); `build s` = wall
time until the later process has its cache; `decode CPU s` = CPU time of both in that step.
`reopen s`: a third process opening the finished shared cache (a later fold run).

Run from the repository root:  python benchmarks/cache.py [--persons 60] [--size 128x128]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("private", "ram", "disk")


def pss_bytes() -> dict[str, int]:
    """Proportional set size of this process (shared pages divided among the processes mapping
    them), in all and by kind: Pss_Anon (private arrays), Pss_Shmem (tmpfs), Pss_File (mapped files)."""
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                fields[name] = int(rest.split()[0]) * 1024
    if "Pss" not in fields:
        raise RuntimeError("no Pss in /proc/self/smaps_rollup (Linux >= 4.14 needed)")
    return fields


def file_barrier(folder: Path, name: str, rank: int, world: int) -> None:
    """Wait until `world` processes have reached the barrier `name` (files in `folder`)."""
    (folder / f"{name}.{rank}").touch()
    while len(list(folder.glob(f"{name}.*"))) < world:
        time.sleep(0.01)


def worker(args: argparse.Namespace) -> None:
    """One process of a scenario: build or map the cache, touch it, measure, write a JSON line."""
    import numpy as np
    import torch.distributed as dist

    from maskkit.contract.manifest import read_manifest
    from maskkit.data.loader import build_cache
    from maskkit.data.presets import DEFAULT_CROP, work_size
    from maskkit.engine import build
    from maskkit.options import TrainOptions

    torchrun = "RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if torchrun else (args.fold, 2)
    if torchrun:
        dist.init_process_group("gloo")
    sync_dir = Path(args.sync)

    def barrier(name: str) -> None:
        dist.barrier() if torchrun else file_barrier(sync_dir, name, rank, world)

    manifest = read_manifest(args.manifest)
    img_size = tuple(int(v) for v in args.size.split("x"))
    config = {"img_size": img_size, "crop": DEFAULT_CROP}
    before = pss_bytes()
    barrier("start")
    wall, cpu = time.perf_counter(), time.process_time()
    if args.worker == "private":
        images, _ = build_cache(manifest["path"].tolist(), work_size(img_size, DEFAULT_CROP), show_progress=False)
    else:
        options = TrainOptions(cache=args.worker, fold=rank if not torchrun else 0)
        images, _ = build.build_cache_of_manifest(options, config, manifest)
    checksum = int(np.asarray(images).sum(dtype=np.int64))  # every page read once
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    barrier("built")
    after = pss_bytes()
    barrier("measured")
    result = {"rank": rank, "pss_before": before, "pss_after": after, "seconds": seconds, "cpu": cpu_seconds,
              "checksum": checksum, "bytes": int(images.nbytes)}
    (sync_dir / f"result.{rank}.json").write_text(json.dumps(result))
    if torchrun:
        dist.destroy_process_group()


def launch(scenario: str, mode: str, manifest: Path, size: str, env: dict, work: Path) -> list[dict]:
    """Start the scenario's two processes together; their JSON lines."""
    sync = Path(tempfile.mkdtemp(dir=work))
    me = [str(Path(__file__).resolve()), "--worker", mode, "--manifest", str(manifest), "--size", size,
          "--sync", str(sync)]
    if scenario == "torchrun":
        commands = [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *me]]
    else:
        commands = [[sys.executable, *me, "--fold", str(fold)] for fold in (0, 1)]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
                 for c in commands]
    for process in processes:
        _, err = process.communicate(timeout=300)
        if process.returncode:
            raise RuntimeError(f"{scenario} {mode}: exit {process.returncode}: {err.strip().splitlines()[-1:]}")
    return [json.loads(path.read_text()) for path in sorted(sync.glob("result.*.json"))]


def reopen_seconds(mode: str, manifest: Path, size: str, env: dict, work: Path) -> float:
    """Seconds a later process takes to open the finished shared cache (one process, `fold` 0)."""
    sync = Path(tempfile.mkdtemp(dir=work))
    for name in ("start", "built", "measured"):  # the barriers' other process: none this time
        (sync / f"{name}.1").touch()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--manifest",
                    str(manifest), "--size", size, "--sync", str(sync), "--fold", "0"],
                   capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=True)
    return json.loads((sync / "result.0.json").read_text())["seconds"]


def draw(work: Path, persons: int) -> Path:
    from maskkit.commands import synth
    from maskkit.options import Size
    from maskkit.contract.errors import MaskkitError
    from maskkit.contract.layout import load_train
    from maskkit.contract.manifest import MANIFEST_COLUMNS, write_manifest
    from maskkit.data.folds import make_manifest

    synth.run(work / "data", persons=persons, eval_persons=0, size=Size(width=128, height=128), seed=0, show_progress=False)
    images = load_train(work / "data" / "train", report=False)
    try:
        folds = make_manifest(images, 4, 42)
    except MaskkitError:  # too few persons per stratum for 4 folds (a tiny dry run): dealt round-robin
        order = {person: i % 4 for i, person in enumerate(sorted(images["person"].unique()))}
        folds = images.assign(fold=images["person"].map(order))[list(MANIFEST_COLUMNS)].reset_index(drop=True)
    manifest = work / "folds.csv"
    write_manifest(folds, manifest)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=60, help="drawn persons, 7 images each (default 60)")
    parser.add_argument("--size", default="128x128", help="model input HxW (the cache is a little larger)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--sync", help=argparse.SUPPRESS)
    parser.add_argument("--fold", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = draw(work, args.persons)
        ram_root = Path(tempfile.mkdtemp(prefix="maskkit-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else tmp))
        base_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        rows = []
        try:
            for scenario in ("torchrun", "two folds"):
                for mode in MODES:
                    env = {**base_env, "MASKKIT_RAM_CACHE_DIR": str(ram_root / scenario / "ram"),
                           "MASKKIT_CACHE_DIR": str(work / "disk" / scenario)}
                    lines = launch(scenario, mode, manifest, args.size, env, work)
                    assert len({line["checksum"] for line in lines}) == 1, "the processes saw different pixels"
                    reopen = reopen_seconds(mode, manifest, args.size, env, work) if mode != "private" else None
                    rows.append((scenario, mode, lines, reopen))
                    print(f"{scenario} {mode}: {lines}", file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(ram_root, ignore_errors=True)
    print(table(rows, args))
    print(f"\n{time.perf_counter() - started:.0f} s in all", file=sys.stderr)


KIND = {"private": "Pss_Anon", "ram": "Pss_Shmem", "disk": "Pss_File"}  # where each cache's pages show


def table(rows: list, args: argparse.Namespace) -> str:
    mib = 2**20
    images = rows[0][2][0]["bytes"] / mib
    out = [f"{args.persons * 7} drawn 128x128 JPEGs, input {args.size}: a cache of {images:.1f} MiB", "",
           "| scenario | cache | cache pages' PSS, 2 processes (MiB) | all PSS growth (MiB) | build s (wall) "
           "| decode CPU s | reopen s |", "|---|---|---:|---:|---:|---:|---:|"]
    for scenario, mode, lines, reopen in rows:
        kind = KIND[mode]
        cache_pss = sum(line["pss_after"].get(kind, 0) - line["pss_before"].get(kind, 0) for line in lines) / mib
        growth = sum(line["pss_after"]["Pss"] - line["pss_before"]["Pss"] for line in lines) / mib
        wall = max(line["seconds"] for line in lines)
        cpu = sum(line["cpu"] for line in lines)
        name = "private (today)" if mode == "private" else f"shared --cache {mode}"
        out.append(f"| {scenario} | {name} | {cache_pss:.1f} ({kind}) | {growth:.1f} | {wall:.2f} | {cpu:.2f} | "
                   f"{'' if reopen is None else f'{reopen:.3f}'} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
