"""Per-step cost of K-FAC against ``torch.optim.Adam``, beside the floor of a K-FAC step.

Usage::

    python benchmarks/kfac_cost.py                    # the three cases, 1 torch thread
    python benchmarks/kfac_cost.py --json             # case -> variant -> ratios, as JSON
    python benchmarks/kfac_cost.py --cases mlp-50 --repeats 60 --threads 2

Cases (:data:`CASES`): the paper's Fashion-MNIST MLP 784-50-10 (cross-entropy) at batch 3200 and
at batch 50, and the UCI Energy MLP 8-50-1 (squared error) at batch 588, its full batch. The
networks are ``adamqlr.tasks._common.MLP`` on random data.

What is measured, side by side in one run (every round runs every variant in turn, in a rotating
order, ``--burst`` calls in a row on successive batches, as ``step_cost.py`` does; medians over
the rounds after warm-up rounds):

* ``adam``: ``zero_grad`` + forward + loss + backward + ``torch.optim.Adam.step``;
* ``kfac-adaptive``: one :meth:`adamqlr.kfac.KFAC.step` with the paper's settings (kfac-jax's
  adaptive learning rate, momentum and damping; inverses, here Cholesky factors, every step);
* ``kfac-unadaptive``: the same with fixed learning rate, momentum and damping;
* the pieces of the floor of a K-FAC step, each written here at the best cost we know:

  - ``fb+stats``: forward + loss + backward (the gradient) and the factor statistics: a second
    backward through the same graph for the output gradients at sampled targets (asked only for
    the layer outputs) and the Gram matrices ``A`` and ``G`` of every layer;
  - ``cholesky``: one Cholesky factorisation per damped factor, the damped factor formed anew
    (the damping changes from step to step);
  - ``solves``: the two (triangular-pair) solves per layer, ``G^{-1} [W, b] A^{-1}``;
  - ``tangents`` and ``forward`` (adaptive only): the curvature products of the step's two
    vectors from the gradient pass's activations, and the trial forward pass.

``floor = fb+stats + cholesky + solves`` is what any K-FAC step with inverses refreshed every
step must pay; ``floor (adaptive) = floor + tangents + forward`` adds what the adaptive
heuristics need. ``fb`` (forward + loss + backward alone) is printed to show how the floor splits.

:func:`kfac_variants` and :func:`report_kfac` are importable (``benchmarks/step_cost.py`` can
show these rows beside its own).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from adamqlr.kfac import KFAC, sample_targets
from adamqlr.kfac.blocks import pi_damped_factors
from adamqlr.kfac.linalg import homogeneous_gram, kronecker_solve, symmetric_gram
from adamqlr.kfac.quadratic import output_bilinear
from adamqlr.kfac.tangents import forward_with_tape, output_tangents, sequential_plan
from adamqlr.losses import Loss, get_loss
from adamqlr.tasks._common import MLP

# The timing rounds, shared with step_cost.py, live beside this file.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleaved import time_rounds  # noqa: E402

StepFn = Callable[[Tensor, Tensor], object]

#: name -> (layer sizes, batch, loss)
CASES: dict[str, tuple[tuple[int, ...], int, str]] = {
    "mlp-3200": ((784, 50, 10), 3200, "cross_entropy"),
    "mlp-50": ((784, 50, 10), 50, "cross_entropy"),
    "energy-588": ((8, 50, 1), 588, "squared_error"),
}
FLOOR_PIECES = ("fb+stats", "cholesky", "solves")
ADAPTIVE_PIECES = ("tangents", "forward")


@dataclass
class Case:
    """A model, its loss and a few batches."""

    name: str
    model: nn.Module
    loss: Loss
    batches: list[tuple[Tensor, Tensor]]


def make_case(name: str, n_batches: int = 4) -> Case:
    """Build case ``name`` of :data:`CASES` (seeded)."""
    if name not in CASES:
        raise ValueError(f"unknown case {name!r}; expected one of {sorted(CASES)}")
    sizes, batch, loss_name = CASES[name]
    gen = torch.Generator().manual_seed(0)
    model = MLP(sizes, gen)
    with torch.no_grad():  # move away from the zero-initialised biases
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.01, generator=gen)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(batch, sizes[0], generator=gen)
        if loss_name == "cross_entropy":
            y = torch.randint(0, sizes[-1], (batch,), generator=gen)
        else:
            y = torch.randn(batch, sizes[-1], generator=gen)
        batches.append((x, y))
    return Case(name, model.train(), get_loss(loss_name), batches)


# ---------------------------------------------------------------------------------- variants
def kfac_variants(case: Case, include_adam: bool = True) -> dict[str, StepFn]:
    """Return ``name -> step(x, y)`` for Adam, both K-FACs and the floor pieces.

    Every variant owns a copy of the model. The floor pieces need a sequential network of dense
    layers (:func:`adamqlr.kfac.tangents.sequential_plan`).
    """
    out: dict[str, StepFn] = {}
    loss = case.loss
    if include_adam:
        model = copy.deepcopy(case.model)
        adam = torch.optim.Adam(model.parameters(), lr=1e-3)

        def adam_step(x: Tensor, y: Tensor, model=model, adam=adam) -> None:
            adam.zero_grad()
            loss.value(model(x), y).backward()
            adam.step()

        out["adam"] = adam_step
    out["kfac-adaptive"] = KFAC(copy.deepcopy(case.model), loss, "adaptive").step
    out["kfac-unadaptive"] = KFAC(
        copy.deepcopy(case.model), loss, "unadaptive", lr=1e-3, momentum=0.9
    ).step
    out.update(_floor_pieces(case))
    return out


def _floor_pieces(case: Case) -> dict[str, StepFn]:
    model = copy.deepcopy(case.model)
    loss = case.loss
    plan = sequential_plan(model)
    if plan is None:
        raise ValueError(f"case {case.name!r}: the floor pieces need a sequential dense network")
    linears = [m for m in plan if isinstance(m, nn.Linear)]
    params = list(model.parameters())

    def gradient_and_statistics(x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
        edges, inputs = [], []

        def on_linear(layer: nn.Module, h: Tensor, z: Tensor) -> None:
            inputs.append(h.detach())
            edges.append(get_gradient_edge(z))

        outputs, _ = forward_with_tape(plan, x, on_linear)
        value = loss.value(outputs, y)
        torch.autograd.grad(value, params, retain_graph=True)
        drawn = sample_targets(loss, outputs, y)
        summed = loss.value(outputs, drawn) * outputs.shape[0]
        dys = torch.autograd.grad(summed, edges)
        return [
            (homogeneous_gram(h), symmetric_gram(dy)) for h, dy in zip(inputs, dys, strict=True)
        ]

    # Factors and gradients of the right sizes, made once outside the timed region.
    x0, y0 = case.batches[0]
    factors = gradient_and_statistics(x0, y0)
    damped = [pi_damped_factors(a, g, 1.0) for a, g in factors]
    chols = [(torch.linalg.cholesky(a), torch.linalg.cholesky(g)) for a, g in damped]
    mats = [torch.cat([m.weight, m.bias.unsqueeze(1)], 1).detach().clone() for m in linears]

    def cholesky(x: Tensor, y: Tensor) -> None:
        # The damping changes every step, so each step forms its damped factors anew (one
        # scaled copy of the factor plus the diagonal) before factorising them.
        for a, g in factors:
            a_d, g_d = pi_damped_factors(a, g, 1.0)
            torch.linalg.cholesky_ex(a_d)
            torch.linalg.cholesky_ex(g_d)

    def solves(x: Tensor, y: Tensor) -> None:
        for (a_chol, g_chol), mat in zip(chols, mats, strict=True):
            kronecker_solve(g_chol, a_chol, mat)

    def fb(x: Tensor, y: Tensor) -> None:
        for p in params:
            p.grad = None
        loss.value(model(x), y).backward()

    # The adaptive step's curvature products: two vectors through the gradient pass's tape.
    names = {id(p): n for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    vectors = [
        {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
        for _ in range(2)
    ]
    with torch.no_grad():
        tapes = {id(x): forward_with_tape(plan, x) for x, _ in case.batches}

    def tangents(x: Tensor, y: Tensor) -> None:
        outputs, tape = tapes[id(x)]
        u = output_tangents(plan, tape, names, vectors)
        for i in range(2):
            for j in range(i, 2):
                float(output_bilinear(loss, outputs, u[i], u[j], y))

    def forward(x: Tensor, y: Tensor) -> None:
        with torch.no_grad():
            float(loss.value(model(x), y))

    return {
        "fb": fb,
        "fb+stats": gradient_and_statistics,
        "cholesky": cholesky,
        "solves": solves,
        "tangents": tangents,
        "forward": forward,
    }


# --------------------------------------------------------------------------------- measuring
def time_variants(
    case: Case, fns: dict[str, StepFn], warmup: int, repeats: int, burst: int = 10
) -> dict[str, list[float]]:
    """Interleaved timing (:func:`interleaved.time_rounds`): each round runs every variant's
    burst of ``burst`` calls in a row on successive batches; the time per call of each round."""
    return time_rounds(case.batches, fns, warmup, repeats, burst=burst)


def report_kfac(case: Case, times: dict[str, list[float]], echo: bool = True) -> dict:
    """Return (and print) ``variant -> {"ms", "ratio", "floor_ratio"}`` for one case.

    ``ratio`` is the median time over Adam's; ``floor_ratio`` is the median time over the floor
    (the adaptive K-FAC's over the adaptive floor); the floors appear as variants too.
    """
    med = {k: statistics.median(v) for k, v in times.items()}
    adam = med["adam"]
    floor = sum(med[k] for k in FLOOR_PIECES)
    floor_adaptive = floor + sum(med[k] for k in ADAPTIVE_PIECES)
    rows: dict[str, dict[str, float]] = {}
    for name, t in med.items():
        rows[name] = {"ms": t * 1e3, "ratio": t / adam}
    rows["kfac-adaptive"]["floor_ratio"] = med["kfac-adaptive"] / floor_adaptive
    rows["kfac-unadaptive"]["floor_ratio"] = med["kfac-unadaptive"] / floor
    rows["floor"] = {"ms": floor * 1e3, "ratio": floor / adam}
    rows["floor (adaptive)"] = {"ms": floor_adaptive * 1e3, "ratio": floor_adaptive / adam}
    if echo:
        x = case.batches[0][0]
        n_params = sum(p.numel() for p in case.model.parameters())
        print(
            f"\n=== {case.name}: batch {x.shape[0]}, {n_params:,} parameters, "
            f"{len(times['adam'])} rounds"
        )
        print(f"{'variant':18s} {'median ms':>10s} {'x Adam':>7s} {'x floor':>8s}")
        for name, row in rows.items():
            floor_txt = f"{row['floor_ratio']:8.2f}" if "floor_ratio" in row else " " * 8
            print(f"{name:18s} {row['ms']:10.3f} {row['ratio']:7.2f} {floor_txt}")
    return rows


# ------------------------------------------------------- the section interface of step_cost
def _piece(name: str) -> str:
    """Name a floor piece inside ``step_cost``'s table (which has its own ``forward``)."""
    return f"kfac:{name}"


def variants(case: Case) -> dict[str, StepFn]:
    """Return both K-FACs and their floor pieces for a ``step_cost`` case (which times Adam)."""
    out = kfac_variants(case, include_adam=False)
    return {(_piece(k) if k in FLOOR_PIECES + ADAPTIVE_PIECES else k): fn for k, fn in out.items()}


def floors(case: Case, medians: dict[str, float]) -> dict[str, tuple[float, str]]:
    """Return ``variant -> (floor seconds, how)`` for the two K-FACs of a ``step_cost`` case."""
    floor = sum(medians[_piece(k)] for k in FLOOR_PIECES)
    adaptive = floor + sum(medians[_piece(k)] for k in ADAPTIVE_PIECES)
    return {
        "kfac-unadaptive": (floor, " + ".join(FLOOR_PIECES)),
        "kfac-adaptive": (adaptive, " + ".join(FLOOR_PIECES + ADAPTIVE_PIECES)),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print tables or (``--json``) one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma list of " + str(list(CASES))
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument(
        "--burst", type=int, default=10, help="calls of a variant in a row per round (default 10)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print case -> variant -> ratios")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1 or args.burst < 1:
        parser.error("--repeats, --burst and --threads must be >= 1 and --warmup >= 0")
    names = [c for c in args.cases.split(",") if c]
    for name in names:
        if name not in CASES:
            parser.error(f"unknown case {name!r}; expected some of {sorted(CASES)}")
    torch.set_num_threads(args.threads)
    if not args.json:
        print(
            f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads"
        )
    result = {}
    for name in names:
        case = make_case(name)
        times = time_variants(case, kfac_variants(case), args.warmup, args.repeats, args.burst)
        result[name] = report_kfac(case, times, echo=not args.json)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
