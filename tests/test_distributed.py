"""Data-parallel AdamQLR: two gloo processes on the CPU take the same steps as one process.

Each rank steps on its half of every global mini-batch. After 20 steps the parameters must be
bitwise equal across ranks (the step's scalars are averaged, so every rank takes the same alpha,
rho and lambda) and equal, to 1e-6 in float64, to one process stepping on the whole batches.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from adamqlr import AdamQLR
from adamqlr.distributed import process_group, unwrap

WORLD = 2
STEPS = 20
SCENARIOS = {
    # name: (curvature, loss, wrap in DDP)
    "fisher-ce": ("fisher", "cross_entropy", False),
    "hessian-ce": ("hessian", "cross_entropy", False),
    "fisher-mse-ddp": ("fisher", "squared_error", True),
    "fisher-ce-plane": ("fisher", "cross_entropy", False),  # step_rule="alpha-momentum"
    "hessian-ce-plane": ("hessian", "cross_entropy", False),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _batches(loss: str) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        x = torch.randn(16, 4, generator=g, dtype=torch.float64)
        if loss == "cross_entropy":  # learnable labels: the weights stay moderate
            y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        else:
            y = x[:, :3] * x[:, 3:] + 0.1 * torch.randn(16, 3, generator=g, dtype=torch.float64)
        out.append((x, y))
    return out


def _train(
    model: nn.Module, curvature: str, loss: str, rank: int | None, rule: str = "alpha"
) -> dict[str, Tensor]:
    opt = AdamQLR(model, loss, curvature, step_rule=rule)
    for x, y in _batches(loss):
        if rank is not None:  # this rank's half of the global batch
            x, y = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        opt.step(x, y)
    return {n: p.detach().clone() for n, p in unwrap(model).named_parameters()}


def _rule(scenario: str) -> str:
    return "alpha-momentum" if scenario.endswith("-plane") else "alpha"


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        assert process_group("auto") is not None
        results = {}
        for name, (curvature, loss, ddp) in SCENARIOS.items():
            model = _model()
            if ddp:
                model = nn.parallel.DistributedDataParallel(model)
            results[name] = _train(model, curvature, loss, rank, _rule(name))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, dict[str, Tensor]]]:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "store")
        mp.spawn(_worker, args=(init_file, tmp), nprocs=WORLD, join=True)
        return [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_ranks_stay_bitwise_equal(ranks, scenario: str) -> None:
    first = ranks[0][scenario]
    for other in ranks[1:]:
        for name, value in first.items():
            assert torch.equal(value, other[scenario][name]), name
    start = dict(_model().named_parameters())
    assert any(not torch.equal(first[n], start[n]) for n in first)  # they did move


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_two_ranks_equal_one_process_on_the_whole_batch(ranks, scenario: str) -> None:
    curvature, loss, _ = SCENARIOS[scenario]
    single = _train(_model(), curvature, loss, None, _rule(scenario))
    for name, value in ranks[0][scenario].items():
        torch.testing.assert_close(value, single[name], rtol=0, atol=1e-6)


def test_without_a_process_group_the_step_is_local() -> None:
    assert not dist.is_initialized()
    assert process_group("auto") is None
    assert process_group(False) is None
    with pytest.raises(ValueError, match="not initialised"):
        AdamQLR(_model(), distributed=True)
    with pytest.raises(ValueError, match="invalid distributed"):
        AdamQLR(_model(), distributed="always")
