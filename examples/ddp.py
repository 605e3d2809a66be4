"""AdamQLR on two CPU processes: every rank steps on its share of each batch, all stay identical.

Run it with ``python examples/ddp.py`` (two gloo processes on this machine), or under
``torchrun --nproc-per-node 2 examples/ddp.py`` (which sets the rank and world size itself).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from adamqlr import AdamQLR


def train(rank: int, world: int, steps: int) -> None:
    """Train one rank: its chunk of every global batch, then check that all ranks agree."""
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
    )
    opt = AdamQLR(model, "cross_entropy")  # distributed="auto": averages over the ranks
    data = torch.Generator().manual_seed(1)  # the same global batches on every rank
    for step in range(steps):
        x = torch.randn(64, 8, generator=data)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        stats = opt.step(x.chunk(world)[rank], y.chunk(world)[rank])
        if rank == 0 and (step + 1) % 10 == 0:
            print(f"step {step + 1}: loss {stats.loss:.4f}, step size {stats.lr:.3g}")
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if not all(torch.equal(gathered[0], g) for g in gathered):
        raise RuntimeError("the ranks' parameters differ")
    if rank == 0:
        print(f"{world} ranks, {steps} steps: parameters identical on every rank")


def _spawned(rank: int, world: int, steps: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train(rank, world, steps)
    finally:
        dist.destroy_process_group()


def main() -> None:
    """Spawn the ranks (or join the ones torchrun started) and train."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--world", type=int, default=2, help="processes to spawn (default 2)")
    args = parser.parse_args()
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group("gloo")
        try:
            train(dist.get_rank(), dist.get_world_size(), args.steps)
        finally:
            dist.destroy_process_group()
        return
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "store")
        mp.spawn(_spawned, args=(args.world, args.steps, init_file), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
