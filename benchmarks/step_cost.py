"""Per-step cost of AdamQLR against ``torch.optim.Adam``, beside the floor it cannot beat.

Usage::

    python benchmarks/step_cost.py                        # every case, 1 torch thread, CPU
    python benchmarks/step_cost.py --cases mlp-50,energy-588 --json
    python benchmarks/step_cost.py --device cuda          # ResNet-18 at batch 256 by default
    python benchmarks/step_cost.py --kfac                 # add K-FAC (benchmarks/kfac_cost.py)

Cases (:data:`CASES`): ``mlp-3200`` and ``mlp-50``, the paper's Fashion-MNIST MLP 784-50-10 with
cross-entropy at batch 3200 (untuned AdamQLR's) and 50 (the tuned optimisers'); ``energy-588``,
the UCI Energy MLP 8-50-1 with squared error on its full batch of 588 rows; ``resnet18``, the
official ResNet-18 variant at batch 32 (CPU) or 256 (CUDA). Inputs are random with the real
shapes. One torch thread by default (``--threads``).

What is measured, side by side in one run (every round runs every variant in turn, in a
rotating order, on the same batches; medians over the rounds after warm-up rounds):

* ``adam``: ``zero_grad`` + forward + loss + backward + ``torch.optim.Adam.step``, run as
  ``torch.optim`` runs it (its step wrapper labels every step for the profiler with
  ``record_function``, ~35 us on a CPU; AdamQLR's and K-FAC's steps make that label only while
  a profiler records, :mod:`adamqlr._step_hooks`);
* ``adamqlr-fisher`` / ``adamqlr-hessian``: one ``AdamQLR.step`` (it does its own forward and
  backward); the Hessian variant uses ``nonpositive_curvature="absolute"`` so that every step does
  the full work (a rejected step would skip the trial forward and look cheaper);
* the pieces of the floors: ``fb`` (forward + loss + backward), ``fb:layerwise`` (the same gradient
  without an autograd graph: the layers' backward kernels run on the forward's activations, as
  AdamQLR's Fisher step does for a sequential MLP whose loss has a closed-form gradient),
  ``forward`` (forward + loss, no graph: the trial pass), every correct JVP we have for the model
  (``jvp:layerwise`` hand-written for Sequential MLPs, ``jvp:layerwise-tangent`` its tangent half
  alone, given the activations of a forward pass already made, ``jvp:func`` = ``torch.func.jvp``,
  ``jvp:forward_ad`` = ``torch.autograd.forward_ad``, ``jvp:linearize`` = ``torch.func.linearize``
  redone every step), and every way we have to get the gradient *and* ``H d`` together:
  ``fb+hvp:graph`` (forward, backward with ``create_graph``, one more backward through that graph
  along ``d``: what AdamQLR does), ``g+hvp:func`` (``jvp`` of ``grad``: its primal output is the
  gradient) and ``g+hvp:forward_ad`` (forward-mode over an autograd backward).

Floors (each piece at the cheapest cost measured for the model):

* Fisher: ``(cheaper of fb and fb:layerwise) + (cheapest JVP) + forward``: one gradient pass,
  one curvature product, one trial pass. (AdamQLR's Fisher step on a sequential MLP evaluates
  the trial pass's first layer by linearity, so it can go below this floor when that layer
  dominates.)
* Hessian: ``(cheapest of the gradient-and-HVP variants) + forward``. Each of those variants
  already contains a forward and a backward pass; adding ``fb`` to them, as an earlier version
  of this benchmark did, counted the gradient pass twice.

Beside each floor, ``floor + update`` adds what Adam's own step costs on top of ``fb``
(``adam - fb``): the passes over the parameters that any Adam-direction optimiser makes.

Targets (ratios measured side by side, medians of at least three runs): AdamQLR-Fisher at most
1.5x Adam at batch 50 and on ``energy-588``, at most 1.1x its floor at batch 3200; AdamQLR-Hessian
at most 1.1x ``floor + update``, the honest floor of a step that must also update Adam's moments
(on small models those passes over the parameters are a fifth of a step, so the bare floor, which
leaves them out, cannot be met by any Adam-direction optimiser).

Steps in a row (``--burst``, default 10): each round runs each variant that many times in a
row, on successive batches, and keeps the time per call, so that every step but the first of a
turn follows the variant's own previous step, as the steps of a training loop do. With
``--burst 1`` each step follows another variant's work instead and starts with caches that hold
that variant's tensors and code; on small models this slows the variants made of many small
operations (``torch.optim.Adam`` among them) more than AdamQLR's step, so the ratios to Adam
come out lower than in the steady state of consecutive steps. A training run's own clock gives
other ratios again (it also times drawing each batch and the loop's bookkeeping, on the real
data; chapter 12 of the book compares the two). ``--save`` keeps the burst in the provenance.

``--ops`` counts the aten operators one step of ``adam`` and of each AdamQLR variant issues
(nested ones included, from ``torch.profiler``): a diagnostic of dispatch overhead, which is most
of a step's cost on small models.

``--json`` prints ``{case: {variant: {"ratio": time / adam, ...}}}``; the AdamQLR variants (and
any variant a section gives a floor) also carry ``"floor"`` (floor / adam), ``"over_floor"``,
``"floor_via"`` and, with ``--ops``, ``"aten_ops"``.

Sections: :data:`SECTIONS` lists modules that add variants to every case (``--kfac`` appends
``kfac_cost``, the K-FAC benchmark beside this file, if it exists). A section module provides
``variants(case: Case) -> dict[str, StepFn]`` and may provide
``floors(case: Case, medians: dict[str, float]) -> dict[str, tuple[float, str]]`` (variant ->
floor in seconds and how it is made). A section's variants are timed in interleaved rounds of
their own, beside ``adam`` and ``fb`` (its rows' ratios are to that Adam, and its ``update``
piece is that ``adam - fb``): timed in the main rounds, K-FAC's factorisations slowed every
other variant's next call, Adam's and the floor pieces' more than AdamQLR's step (by 5-20 %
at batch 50), so the main table moved with the sections asked for.

A variant with a ``reset()`` method (e.g. a :class:`Stateful`) is reset every
``--reset-every`` rounds, outside the timing: trained for hundreds of rounds on a few random
batches, a model would memorise them and drift into regimes (a loss near zero, overflowing
steps, rejected steps that skip work) that no real run spends its time in.

Peak memory (``--memory``): on CUDA, ``torch.cuda.max_memory_allocated`` over one step (after a
warm-up step), absolute. On CPU, the tensors alive at the start of the step (parameters,
gradients, optimiser state, the batch) plus the peak of the running sum of the CPU allocator's
allocation and free events recorded by ``torch.profiler`` (``profile_memory=True``) during the
second of two profiled steps. Both count tensor storage only.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, linearize

from adamqlr import AdamQLR
from adamqlr.curvature import (
    copied_buffers,
    layerwise_backward,
    layerwise_forward,
    layerwise_jvp,
    layerwise_plan,
    layerwise_tangent,
)
from adamqlr.losses import Loss, get_loss

# The timing rounds, shared with kfac_cost.py, live beside this file (also when it is loaded by
# its path, as the tests do).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleaved import time_rounds  # noqa: E402

StepFn = Callable[[Tensor, Tensor], object]

#: Modules (beside this file) that add variants to every case; ``--kfac`` appends ``kfac_cost``.
SECTIONS: list[str] = []


# ------------------------------------------------------------------------------------ models
def make_mlp(sizes: tuple[int, ...], generator: torch.Generator) -> tuple[nn.Module, str]:
    """The tasks' MLP (``adamqlr.tasks._common.MLP``), Haiku-initialised."""
    try:
        from adamqlr.tasks._common import MLP

        return MLP(sizes, generator), "adamqlr.tasks._common.MLP"
    except ImportError:  # pragma: no cover - the tasks are part of the package
        torch.manual_seed(int(generator.initial_seed()))
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
        return nn.Sequential(*layers), "local nn.Sequential MLP"


def make_resnet18(generator: torch.Generator) -> tuple[nn.Module, str]:
    """The official variant (Haiku v1 ResNet-18) from ``adamqlr.tasks.images``."""
    from adamqlr.tasks.images import ResNet18

    return ResNet18(10, generator), "adamqlr.tasks.images.ResNet18 (Haiku v1)"


@dataclass
class Case:
    """One benchmark case: a model, its loss and a few batches."""

    name: str
    model: nn.Module
    loss: Loss
    source: str
    batches: list[tuple[Tensor, Tensor]]


#: name -> (model, input shape, loss, classes (0: regression), CPU batch, CUDA batch)
CASES: dict[str, tuple[str, tuple[int, ...], str, int, int, int]] = {
    "mlp-3200": ("784-50-10", (784,), "cross_entropy", 10, 3200, 3200),
    "mlp-50": ("784-50-10", (784,), "cross_entropy", 10, 50, 50),
    "energy-588": ("8-50-1", (8,), "squared_error", 0, 588, 588),
    "resnet18": ("resnet18", (3, 32, 32), "cross_entropy", 10, 32, 256),
}


def make_case(name: str, device: torch.device, batch: int | None = None, n: int = 4) -> Case:
    """Build case ``name`` (see :data:`CASES`) on ``device``."""
    if name not in CASES:
        raise ValueError(f"unknown case {name!r}; expected one of {sorted(CASES)}")
    arch, shape, loss_name, classes, cpu_batch, cuda_batch = CASES[name]
    batch = batch or (cuda_batch if device.type == "cuda" else cpu_batch)
    gen = torch.Generator().manual_seed(0)
    if arch == "resnet18":
        model, source = make_resnet18(gen)
    else:
        model, source = make_mlp(tuple(int(s) for s in arch.split("-")), gen)
    with torch.no_grad():  # move away from the zero-initialised biases and logits layer
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.01, generator=gen)
    outputs = classes or int(arch.split("-")[-1])
    batches = []
    for _ in range(n):
        x = torch.randn(batch, *shape, generator=gen)
        if classes:
            y = torch.randint(0, classes, (batch,), generator=gen)
        else:
            y = torch.randn(batch, outputs, generator=gen)
        batches.append((x.to(device), y.to(device)))
    return Case(name, model.to(device).train(), get_loss(loss_name), source, batches)


# ---------------------------------------------------------------------------------- variants
def _params(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def _direction(model: nn.Module) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        n: torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
        for n, p in model.named_parameters()
    }


class Stateful:
    """A training variant with state: ``reset()`` restores the initial model and optimiser.

    Training on a few random batches for hundreds of rounds would drift into regimes no real
    run spends its time in (memorised batches, a loss near zero, overflowing steps), so the
    timing loop resets stateful variants every ``--reset-every`` rounds, outside the timing.
    """

    def __init__(self, case: Case, make: Callable[[nn.Module], StepFn]) -> None:
        self.case, self.make = case, make
        self.reset()

    def reset(self) -> None:
        """Start again from the case's initial model."""
        self.model = copy.deepcopy(self.case.model)
        self.fn = self.make(self.model)

    def __call__(self, x: Tensor, y: Tensor) -> object:
        return self.fn(x, y)


def adamqlr(case: Case, curvature: str) -> Stateful:
    """The AdamQLR variant of the benchmark (every step does the full work)."""
    return Stateful(
        case,
        lambda model: AdamQLR(model, case.loss, curvature, nonpositive_curvature="absolute").step,
    )


def adam(case: Case) -> Stateful:
    """One ``torch.optim.Adam`` step: zero_grad, forward, loss, backward, step."""
    loss = case.loss

    def make(model: nn.Module) -> StepFn:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(x: Tensor, y: Tensor) -> None:
            opt.zero_grad()
            loss.value(model(x), y).backward()
            opt.step()

        return step

    return Stateful(case, make)


def variants(case: Case, linearize_ok: bool = True) -> dict[str, StepFn]:
    """Return ``name -> step(x, y)``; every variant owns a copy of the model."""
    out: dict[str, StepFn] = {"adam": adam(case)}
    for curvature in ("fisher", "hessian"):
        out[f"adamqlr-{curvature}"] = adamqlr(case, curvature)
    loss = case.loss

    fb_model = copy.deepcopy(case.model)

    def fb(x: Tensor, y: Tensor, model=fb_model) -> None:
        for p in model.parameters():
            p.grad = None
        loss.value(model(x), y).backward()

    def forward(x: Tensor, y: Tensor, model=fb_model) -> None:
        with torch.no_grad():
            out_ = functional_call(model, (_params(model), copied_buffers(model)), (x,))
            loss.value(out_, y)

    out["fb"] = fb
    out["forward"] = forward
    fb_plan = layerwise_plan(fb_model)
    if fb_plan is not None and loss.has_closed_form_gradient():

        def fb_layerwise(x: Tensor, y: Tensor, model=fb_model, plan=fb_plan) -> None:
            for p in model.parameters():
                p.grad = None
            with torch.no_grad():
                outputs, tape = layerwise_forward(plan, x)
                _, grad_outputs = loss.value_and_output_gradient(outputs, y)
                for p, g in layerwise_backward(plan, tape, grad_outputs):
                    p.grad = g

        out["fb:layerwise"] = fb_layerwise

    jm = copy.deepcopy(case.model)
    params, direction = _params(jm), _direction(jm)
    names = list(params)
    plan = layerwise_plan(jm)

    def outputs_of(*values: Tensor, x: Tensor) -> Tensor:
        return functional_call(
            jm, (dict(zip(names, values, strict=True)), copied_buffers(jm)), (x,)
        )

    if plan is not None:
        out["jvp:layerwise"] = lambda x, y: layerwise_jvp(plan, params, direction, x)
        # What AdamQLR pays: tangents only, the primal values being kept from the gradient pass
        # (the tapes are made outside the timed region, as the gradient pass makes them).
        with torch.no_grad():
            tapes = {id(x): layerwise_forward(plan, x)[1] for x, _ in case.batches}
        out["jvp:layerwise-tangent"] = lambda x, y: layerwise_tangent(
            plan, tapes[id(x)], params, direction
        )

    def jvp_func(x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return jvp(
                lambda *v: outputs_of(*v, x=x), tuple(params.values()), tuple(direction.values())
            )[1]

    def jvp_forward_ad(x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad(), fwAD.dual_level():
            duals = {n: fwAD.make_dual(params[n], direction[n]) for n in names}
            z = functional_call(jm, (duals, copied_buffers(jm)), (x,))
            return fwAD.unpack_dual(z).tangent

    def jvp_linearize(x: Tensor, y: Tensor) -> Tensor:
        # The parameters change every step, so the linearisation is redone every step.
        with torch.no_grad():
            _, jvp_fn = linearize(lambda *v: outputs_of(*v, x=x), *params.values())
            return jvp_fn(*direction.values())

    out["jvp:func"] = jvp_func
    out["jvp:forward_ad"] = jvp_forward_ad
    if linearize_ok:
        out["jvp:linearize"] = jvp_linearize

    def loss_of(values: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Tensor:
        return loss.value(outputs_of(*values, x=x), y)

    def g_hvp_func(x: Tensor, y: Tensor):
        # jvp of grad: the primal output is the gradient, the tangent H d
        return jvp(
            lambda v: grad(loss_of)(v, x, y),
            (tuple(params.values()),),
            (tuple(direction.values()),),
        )

    def g_hvp_forward_ad(x: Tensor, y: Tensor):
        with fwAD.dual_level():
            leaves = [params[n].clone().requires_grad_(True) for n in names]
            duals = [fwAD.make_dual(p, direction[n]) for p, n in zip(leaves, names, strict=True)]
            gs = torch.autograd.grad(loss_of(tuple(duals), x, y), duals)
            return [fwAD.unpack_dual(g) for g in gs]

    graph_model = copy.deepcopy(case.model)
    graph_params = list(graph_model.parameters())
    graph_direction = list(_direction(graph_model).values())

    def fb_hvp_graph(x: Tensor, y: Tensor):
        # forward, backward keeping the graph, one more backward through it along d
        gs = torch.autograd.grad(loss.value(graph_model(x), y), graph_params, create_graph=True)
        return torch.autograd.grad(gs, graph_params, grad_outputs=graph_direction)

    out["fb+hvp:graph"] = fb_hvp_graph
    out["g+hvp:func"] = g_hvp_func
    out["g+hvp:forward_ad"] = g_hvp_forward_ad
    return out


# --------------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(
    case: Case,
    fns: dict[str, StepFn],
    device: torch.device,
    warmup: int,
    repeats: int,
    reset_every: int = 25,
    burst: int = 1,
) -> dict[str, list[float]]:
    """Interleaved timing of ``case``'s batches (:func:`interleaved.time_rounds`).

    Each round runs every variant's burst of ``burst`` calls in a row; returns, per variant, the
    time per call of each timed round. Variants with a ``reset()`` method are reset every
    ``reset_every`` calls.
    """
    return time_rounds(
        case.batches, fns, warmup, repeats, burst=burst, reset_every=reset_every,
        sync=(lambda: _sync(device)) if device.type == "cuda" else None,
    )  # fmt: skip


def aten_ops(fn: StepFn, case: Case) -> int:
    """The number of aten operators one call of ``fn`` issues (nested ones included)."""
    from torch.profiler import profile

    x, y = case.batches[0]
    fn(x, y)
    with profile() as prof:
        fn(x, y)
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def peak_memory(case: Case, which: str, device: torch.device) -> int:
    """Peak bytes of live tensors during one step of ``adam`` or ``adamqlr-<curvature>``."""
    model = copy.deepcopy(case.model)
    loss = case.loss
    if which == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(x: Tensor, y: Tensor) -> None:
            opt.zero_grad()
            loss.value(model(x), y).backward()
            opt.step()
    else:
        opt = AdamQLR(model, loss, which.split("-")[1], nonpositive_curvature="absolute")
        step = opt.step  # type: ignore[assignment]
    x, y = case.batches[0]
    step(x, y)  # state exists from here on
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(x, y)
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device))

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(x, y)
        live = _tensor_bytes(
            [
                *model.parameters(),
                *(p.grad for p in model.parameters()),
                *(v for s in opt.state.values() if isinstance(s, dict) for v in s.values()),
                x,
                y,
            ]
        )
        mark_ns = time.time_ns()  # the profiler stamps events in wall-clock nanoseconds
        step(x, y)
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    running, base, peak = 0, None, 0
    for t, nbytes in events:
        if base is None and t >= mark_ns:
            base = peak = running
        running += nbytes
        if base is not None:
            peak = max(peak, running)
    return live if base is None else live + (peak - base)


# ---------------------------------------------------------------------------------- analysis
def floors(medians: dict[str, float]) -> dict[str, tuple[float, str]]:
    """Return ``variant -> (floor seconds, how)`` for the two AdamQLR variants."""
    jvps = {k: v for k, v in medians.items() if k.startswith("jvp:")}
    ghvps = {k: v for k, v in medians.items() if "hvp:" in k}
    fbs = {k: v for k, v in medians.items() if k == "fb" or k.startswith("fb:")}
    best_jvp = min(jvps, key=jvps.__getitem__)
    best_hvp = min(ghvps, key=ghvps.__getitem__)
    best_fb = min(fbs, key=fbs.__getitem__)
    return {
        "adamqlr-fisher": (
            fbs[best_fb] + jvps[best_jvp] + medians["forward"],
            f"{best_fb} + {best_jvp} + forward",
        ),
        "adamqlr-hessian": (ghvps[best_hvp] + medians["forward"], f"{best_hvp} + forward"),
    }


def table(
    medians: dict[str, float],
    case_floors: dict[str, tuple[float, str]],
    ops: dict[str, int],
) -> dict[str, dict[str, object]]:
    """Return ``variant -> {"ratio", ...}`` relative to Adam (see the module docstring)."""
    base = medians["adam"]
    update = max(base - medians.get("fb", base), 0.0)  # Adam's passes over the parameters
    out: dict[str, dict[str, object]] = {}
    for name, t in medians.items():
        row: dict[str, object] = {"ms": t * 1e3, "ratio": t / base}
        if name in case_floors:
            floor, via = case_floors[name]
            row |= {
                "floor": floor / base,
                "over_floor": t / floor,
                "floor_update": (floor + update) / base,
                "over_floor_update": t / (floor + update),
                "floor_via": via,
            }
        if name in ops:
            row["aten_ops"] = ops[name]
        out[name] = row
    return out


def report(case: Case, rows: dict[str, dict[str, object]], memory: dict[str, int], rounds: int,
           device: torch.device) -> None:  # fmt: skip
    """Print one case's table."""
    batch = case.batches[0][0].shape[0]
    n_params = sum(p.numel() for p in case.model.parameters())
    print(f"\n=== {case.name}: batch {batch}, {n_params:,} parameters, {device}; {case.source}")
    print(f"{'variant':22s} {'median ms':>10s} {'x Adam':>7s}  (of {rounds} rounds)")
    for name, row in rows.items():
        print(f"{name:22s} {row['ms']:10.3f} {row['ratio']:7.2f}")
    adam_fb = float(rows["adam"]["ms"]) - float(rows["fb"]["ms"])
    update = max(adam_fb, 0.0) / float(rows["adam"]["ms"])
    print(
        f"\n{'':18s} {'ratio to Adam':>13s} {'floor':>7s} {'/ floor':>8s} "
        f"{'floor+update':>13s} {'/ (f+u)':>8s} {'aten ops':>9s} {'mem / Adam':>11s}"
    )
    for name, row in rows.items():
        if "floor" not in row:
            continue
        ratio, floor = float(row["ratio"]), float(row["floor"])
        full = floor + update
        mem = memory.get(name, math.nan) / memory.get("adam", math.nan) if memory else math.nan
        ops = row.get("aten_ops", "")
        print(
            f"{name:18s} {ratio:13.2f} {floor:7.2f} {ratio / floor:8.2f} {full:13.2f} "
            f"{ratio / full:8.2f} {ops!s:>9s} {mem:11.2f}   floor = {row['floor_via']}"
        )
    if "aten_ops" in rows.get("adam", {}):
        print(f"aten ops of one Adam step: {rows['adam']['aten_ops']}")
    if memory:
        print("peak memory (MiB): " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in memory.items()))


def _sections(names: list[str]) -> list[object]:
    # the folder beside this file is on sys.path already (see the import of interleaved)
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            print(f"section {name!r}: benchmarks/{name}.py not found, skipped", file=sys.stderr)
    return modules


def run_case(
    name: str, device: torch.device, args: argparse.Namespace, sections: list[object]
) -> tuple[Case, dict[str, dict[str, object]], dict[str, int], int]:
    """Time one case; return it, its table, its memory and the number of rounds."""
    case = make_case(name, device, args.batch)
    fns = variants(case, linearize_ok=not name.startswith("resnet"))
    small = case.batches[0][0].shape[0] <= 1000 and not name.startswith("resnet")
    calls = 300 if small else 10 if name.startswith("resnet") else 30
    repeats = args.repeats or max(3, calls // args.burst)  # about as many calls at any burst

    def timed(group: dict[str, StepFn]) -> dict[str, float]:
        times = time_variants(
            case, group, device, args.warmup, repeats, args.reset_every, args.burst
        )
        return {k: statistics.median(v) for k, v in times.items()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rejected steps are part of the work
        medians = timed(fns)
        rows = table(medians, floors(medians), {})
        # Each section in rounds of its own, beside Adam and fb (its reference and its update
        # piece): a section's heavy variants (K-FAC's factorisations) in the main rounds would
        # slow every other variant's next call, Adam's and the floor pieces' more than AdamQLR's
        # step, and so move the main table with the sections asked for.
        for section in sections:
            extra = section.variants(case)  # type: ignore[attr-defined]
            own = timed({"adam": fns["adam"], "fb": fns["fb"]} | extra)
            own_floors = section.floors(case, own) if hasattr(section, "floors") else {}
            rows |= {k: r for k, r in table(own, own_floors, {}).items() if k in extra}
        if args.ops:
            for k in ("adam", "adamqlr-fisher", "adamqlr-hessian"):
                fn = adam(case) if k == "adam" else adamqlr(case, k.split("-")[1])
                rows[k]["aten_ops"] = aten_ops(fn, case)
    memory = {}
    if args.memory:
        memory = {
            k: peak_memory(case, k, device) for k in ("adam", "adamqlr-fisher", "adamqlr-hessian")
        }
    return case, rows, memory, repeats


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {list(CASES)}")
    parser.add_argument("--batch", type=int, default=None, help="override every case's batch")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds (default 300 small, 30, 10 ResNet, each divided by --burst)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=10,
        help="calls of a variant in a row per round (default 10; 1: each after another variant)",
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--reset-every",
        type=int,
        default=25,
        help="reset the training variants every this many calls (0: never)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--ops", action="store_true", help="also count aten ops per step")
    parser.add_argument("--json", action="store_true", help="print the table as JSON only")
    parser.add_argument("--kfac", action="store_true", help="add the K-FAC section (kfac_cost)")
    parser.add_argument(
        "--runs", type=int, default=1, help="measure everything this many times (default 1)"
    )
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        help="write the medians over --runs, every run and the provenance to this JSON file",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"invalid --runs {args.runs} (expected >= 1)")
    if args.burst < 1:
        parser.error(f"invalid --burst {args.burst} (expected >= 1)")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    torch.set_num_threads(args.threads)
    names = [c for c in args.cases.split(",") if c]
    for c in names:
        if c not in CASES:
            parser.error(f"unknown case {c!r}; expected some of {list(CASES)}")
    sections = _sections(SECTIONS + (["kfac_cost"] if args.kfac else []))
    if not args.json:
        print(
            f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, device {device}, {args.burst} steps in a row"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        )
    runs = []
    for _ in range(args.runs):
        results = {}
        for name in names:
            case, rows, memory, rounds = run_case(name, device, args, sections)
            results[name] = rows
            if not args.json:
                report(case, rows, memory, rounds, device)
        runs.append(results)
    summary = summarise(runs)
    if args.json:
        print(json.dumps(runs[0] if args.runs == 1 else summary, indent=1))
    if args.save is not None:
        save(args.save, summary, runs, args, device)
    return 0


def summarise(runs: list[dict[str, dict[str, dict[str, object]]]]) -> dict[str, object]:
    """Return ``{case: {variant: {field: median over runs, "ratio_range": [lo, hi]}}}``."""
    out: dict[str, dict[str, dict[str, object]]] = {}
    for case in runs[0]:
        out[case] = {}
        for variant, first in runs[0][case].items():
            rows = [r[case][variant] for r in runs if variant in r.get(case, {})]
            row: dict[str, object] = {}
            for field, value in first.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    row[field] = statistics.median(float(r[field]) for r in rows)  # type: ignore[arg-type]
                else:
                    row[field] = value
            ratios = [float(r["ratio"]) for r in rows]  # type: ignore[arg-type]
            row["ratio_range"] = [min(ratios), max(ratios)]
            row["runs"] = len(rows)
            out[case][variant] = row
    return out  # type: ignore[return-value]


def save(path: Path, summary: dict[str, object], runs: list[object], args: argparse.Namespace,
         device: torch.device) -> None:  # fmt: skip
    """Write the benchmark's medians, every run and where they came from, atomically."""
    from adamqlr.results.atomic import atomic_write_json
    from adamqlr.results.provenance import device_name, git_state

    provenance = {
        "benchmark": "step_cost",
        "argv": sys.argv,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_state(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        # the model: ratios move between machines (one that waits less on memory does the
        # optimiser's extra small kernels relatively faster)
        "device_name": device_name(str(device)),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "runs": len(runs),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "burst": args.burst,
    }
    atomic_write_json(path, {"provenance": provenance, "median": summary, "runs": runs})


if __name__ == "__main__":
    sys.exit(main())
