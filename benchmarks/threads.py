"""Two trainings at once on one machine: img/s of each against one alone (issue: a shared machine
must not collapse training).

Each training is a separate process running the same training steps as `maskkit train` on the CPU
(lite0, multi heads, 128x128 inputs, batch 16, AdamW) on tensors already in memory, so only the
compute counts. Three thread policies, each measured alone and as two processes started together:

  torch default   torch's own thread count (all cores) and OpenMP's default waiting policy
                  (what maskkit did before --threads)
  maskkit         what `maskkit train` does now: OMP_WAIT_POLICY=PASSIVE and `use_threads()`
                  (the cores other processes leave free, from the load average)
  --threads 1     one thread per training

The table gives each policy's img/s per process alone and in pairs, and the pair/alone ratio
(1.0 = no slowdown per process; 0.5 = the pair shares the machine fairly; far below 0.5 = collapse).
Run it on an otherwise idle machine, from the repository root:

  python benchmarks/threads.py [--steps 30] [--batch 16] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

MAX_SECONDS = 90  # a collapsed pair stops early; img/s is over the steps it finished

POLICIES = {
    "torch default": {"env": {}, "threads": "torch"},
    "maskkit": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}, "threads": "maskkit"},
    "--threads 1": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}, "threads": "1"},
}


def worker(threads: str, steps: int, batch: int, size: int) -> None:
    """One training process: warm up, then time `steps` training steps; print img/s as JSON."""
    import torch

    from maskkit.engine.devices import use_threads
    from maskkit.engine.loss import MaskLoss
    from maskkit.engine.models import build_model
    from maskkit.options import TrainOptions

    if threads == "maskkit":
        count = use_threads(None)
    elif threads != "torch":
        count = use_threads(int(threads))
    else:
        count = torch.get_num_threads()
    torch.manual_seed(0)
    model = build_model("lite0", heads="multi", age_head="mse", img_size=(size, size))
    loss_fn = MaskLoss.from_options(TrainOptions(heads="multi", age_weight=0.1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, size, size)
    targets = {"label": torch.randint(0, 18, (batch,)), "mask": torch.randint(0, 3, (batch,)),
               "gender": torch.randint(0, 2, (batch,)), "age": torch.randint(0, 3, (batch,)),
               "age_years": torch.rand(batch)}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), targets).backward()
        optimizer.step()

    model.train()
    for _ in range(3):
        step()
    start, done = time.perf_counter(), 0
    while done < steps and (done == 0 or time.perf_counter() - start < MAX_SECONDS):
        step()
        done += 1
    seconds = time.perf_counter() - start
    print(json.dumps({"img_s": done * batch / seconds, "threads": count, "steps": done}))


def launch(policy: dict, copies: int, args) -> list[dict]:
    env = {**os.environ, **policy["env"]}
    if not policy["env"]:
        env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    command = [sys.executable, __file__, "--worker", policy["threads"], "--steps", str(args.steps),
               "--batch", str(args.batch), "--size", str(args.size)]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.steps, args.batch, args.size)
        return
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start", file=sys.stderr)
    print("| policy | threads alone / in a pair | img/s alone | img/s each, two at once | pair / alone |")
    print("|---|---|---:|---:|---:|")
    for name, policy in POLICIES.items():
        alone = launch(policy, 1, args)[0]
        time.sleep(2)
        pair = launch(policy, 2, args)
        time.sleep(2)
        each = sum(r["img_s"] for r in pair) / 2
        print(f"| {name} | {alone['threads']} / {', '.join(str(r['threads']) for r in pair)} | "
              f"{alone['img_s']:.1f} | {each:.1f} | {each / alone['img_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
