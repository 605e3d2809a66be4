"""Per-step cost of AdamQLR against ``torch.optim.Adam``, beside the floor it cannot beat.

Usage::

    python benchmarks/step_cost.py                      # CPU: MLP at batch 3200, ResNet-18 at 32
    python benchmarks/step_cost.py --device cuda        # GPU: ResNet-18 at batch 256 by default
    python benchmarks/step_cost.py --models mlp --repeats 50

What is measured, side by side in one run (every round runs every variant once, in a rotating
order, on the same batch; medians over the rounds after warm-up rounds):

* ``adam``: ``zero_grad`` + forward + loss + backward + ``torch.optim.Adam.step``;
* ``adamqlr-fisher`` / ``adamqlr-hessian``: one ``AdamQLR.step`` (it does its own forward and
  backward); the Hessian variant uses ``nonpositive_curvature="absolute"`` so that every step does
  the full work (a rejected step would skip the trial forward and look cheaper);
* the pieces of the floor: ``fb`` (forward + loss + backward), ``forward`` (forward + loss, no
  graph: the trial pass), and every correct JVP / HVP we have for the model
  (``jvp:layerwise`` hand-written for Sequential MLPs, ``jvp:layerwise-tangent`` its tangent
  half alone, given the activations of a forward pass already made, which is what AdamQLR's
  Fisher step pays for such a model, ``jvp:func`` = ``torch.func.jvp``,
  ``jvp:forward_ad`` = ``torch.autograd.forward_ad``, ``jvp:linearize`` = ``torch.func.linearize``
  redone every step, as the parameters change; ``hvp:func`` = ``jvp(grad)``,
  ``hvp:forward_ad`` = forward-mode over an autograd backward, ``hvp:double_backward`` = forward,
  backward with ``create_graph`` and a second backward).

The floor of an AdamQLR step is ``fb + (cheapest JVP or HVP) + forward``: one gradient pass, one
curvature product, one trial pass, each at the best cost we can reach for that model. Beside it,
``floor + update`` adds what Adam's own step costs on top of ``fb`` (``adam - fb``): the passes
over the parameters that any Adam-direction optimiser makes. It is negligible for the MLP and
not for ResNet-18 at a small batch, where the 11M parameters weigh as much as the activations.
(AdamQLR's Hessian takes ``H d`` through the gradient pass's own graph, which can beat a floor
built from a stand-alone HVP.)

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over one step (after a warm-up step),
absolute. On CPU, the tensors alive at the start of the step (parameters, gradients, optimiser
state, the batch) plus the peak of the running sum of the CPU allocator's allocation and free
events recorded by ``torch.profiler`` (``profile_memory=True``) during the second of two profiled
steps (so that frees of tensors made in the first are seen). Both count tensor storage only, not
the allocator's caches or the interpreter.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, linearize

from adamqlr import AdamQLR
from adamqlr.curvature import (
    copied_buffers,
    layerwise_forward,
    layerwise_jvp,
    layerwise_plan,
    layerwise_tangent,
)

StepFn = Callable[[Tensor, Tensor], object]


# ------------------------------------------------------------------------------------ models
def make_mlp(generator: torch.Generator) -> tuple[nn.Module, str]:
    """The paper's Fashion-MNIST MLP, 784-50-10 with ReLU (the tasks room's class if present)."""
    try:
        from adamqlr.tasks._common import MLP

        return MLP((784, 50, 10), generator), "adamqlr.tasks._common.MLP"
    except ImportError:  # pragma: no cover - the tasks room is part of the package
        torch.manual_seed(int(generator.initial_seed()))
        net = nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))
        return net, "local nn.Sequential MLP (adamqlr.tasks._common not importable)"


def make_resnet18(generator: torch.Generator) -> tuple[nn.Module, str]:
    """The official variant (Haiku v1 ResNet-18) from ``adamqlr.tasks.images``, else a stand-in."""
    try:
        from adamqlr.tasks.images import ResNet18

        return ResNet18(10, generator), "adamqlr.tasks.images.ResNet18 (Haiku v1)"
    except ImportError:
        return _LocalResNet18(), "LOCAL FALLBACK ResNet-18 (benchmarks only, not the task's model)"


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b0 = nn.BatchNorm2d(cout)
        self.c1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.b0(self.c0(x)))
        return F.relu(self.b1(self.c1(out)) + self.short(x))


class _LocalResNet18(nn.Module):
    """A ResNet-18 with the ImageNet stem, used only if the tasks room's model is missing."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(512, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


@dataclass
class Case:
    name: str
    model: nn.Module
    source: str
    batches: list[tuple[Tensor, Tensor]]


def make_case(name: str, batch: int, device: torch.device, n_batches: int = 4) -> Case:
    gen = torch.Generator().manual_seed(0)
    if name == "mlp":
        model, source = make_mlp(gen)
        shape = (784,)
    elif name == "resnet18":
        model, source = make_resnet18(gen)
        shape = (3, 32, 32)
    else:
        raise ValueError(f"unknown model {name!r}; expected 'mlp' or 'resnet18'")
    with torch.no_grad():  # move away from the zero-initialised logits layer
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.01, generator=gen)
    batches = [
        (torch.randn(batch, *shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
        for _ in range(n_batches)
    ]
    model = model.to(device).train()
    return Case(name, model, source, [(x.to(device), y.to(device)) for x, y in batches])


# ---------------------------------------------------------------------------------- variants
def _params(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def _direction(model: nn.Module) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        n: torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
        for n, p in model.named_parameters()
    }


def variants(case: Case, linearize_ok: bool = True) -> dict[str, StepFn]:
    """Return ``name -> step(x, y)``; every variant owns a copy of the model."""
    out: dict[str, StepFn] = {}

    model = copy.deepcopy(case.model)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)

    def adam_step(x: Tensor, y: Tensor, model=model, adam=adam) -> None:
        adam.zero_grad()
        F.cross_entropy(model(x), y).backward()
        adam.step()

    out["adam"] = adam_step
    for curvature in ("fisher", "hessian"):
        m = copy.deepcopy(case.model)
        opt = AdamQLR(m, "cross_entropy", curvature, nonpositive_curvature="absolute")
        out[f"adamqlr-{curvature}"] = opt.step

    fb_model = copy.deepcopy(case.model)

    def fb(x: Tensor, y: Tensor, model=fb_model) -> None:
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(x), y).backward()

    def forward(x: Tensor, y: Tensor, model=fb_model) -> None:
        with torch.no_grad():
            out_ = functional_call(model, (_params(model), copied_buffers(model)), (x,))
            F.cross_entropy(out_, y)

    out["fb"] = fb
    out["forward"] = forward

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
        return F.cross_entropy(outputs_of(*values, x=x), y)

    def hvp_func(x: Tensor, y: Tensor):
        return jvp(
            lambda v: grad(loss_of)(v, x, y),
            (tuple(params.values()),),
            (tuple(direction.values()),),
        )[1]

    def hvp_forward_ad(x: Tensor, y: Tensor):
        with fwAD.dual_level():
            leaves = [params[n].clone().requires_grad_(True) for n in names]
            duals = [fwAD.make_dual(p, direction[n]) for p, n in zip(leaves, names, strict=True)]
            loss = loss_of(tuple(duals), x, y)
            gs = torch.autograd.grad(loss, duals)
            return [fwAD.unpack_dual(g).tangent for g in gs]

    def hvp_double_backward(x: Tensor, y: Tensor):
        leaves = [params[n].clone().requires_grad_(True) for n in names]
        gs = torch.autograd.grad(loss_of(tuple(leaves), x, y), leaves, create_graph=True)
        return torch.autograd.grad(gs, leaves, grad_outputs=list(direction.values()))

    out["hvp:func"] = hvp_func
    out["hvp:forward_ad"] = hvp_forward_ad
    out["hvp:double_backward"] = hvp_double_backward
    return out


# --------------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(
    case: Case, fns: dict[str, StepFn], device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Interleaved timing: each round runs every variant once on the round's batch."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        x, y = case.batches[r % len(case.batches)]
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            fns[name](x, y)
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


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
    if which == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(x: Tensor, y: Tensor) -> None:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    else:
        opt = AdamQLR(model, "cross_entropy", which.split("-")[1], nonpositive_curvature="absolute")
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
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    ]
    events.sort()
    running = 0
    base = None
    peak = 0
    for t, nbytes in events:
        if base is None and t >= mark_ns:
            base = running
            peak = running
        running += nbytes
        if base is not None:
            peak = max(peak, running)
    if base is None:
        return live
    return live + (peak - base)


# ---------------------------------------------------------------------------------- reporting
def _median(values: list[float]) -> float:
    return statistics.median(values)


def report(case: Case, times: dict[str, list[float]], memory: dict[str, int], device) -> None:
    med = {k: _median(v) for k, v in times.items()}
    fb, adam = med["fb"], med["adam"]
    batch = case.batches[0][0].shape[0]
    n_params = sum(p.numel() for p in case.model.parameters())
    print(f"\n=== {case.name}: batch {batch}, {n_params:,} parameters, {device}; {case.source}")
    rounds = len(times["fb"])
    print(f"{'variant':22s} {'median ms':>10s} {'x fb':>7s} {'x Adam':>7s}  (of {rounds} rounds)")
    for name, t in med.items():
        print(f"{name:22s} {t * 1e3:10.2f} {t / fb:7.2f} {t / adam:7.2f}")
    jvps = {k: v for k, v in med.items() if k.startswith("jvp:")}
    hvps = {k: v for k, v in med.items() if k.startswith("hvp:")}
    best_jvp = min(jvps, key=jvps.get)
    best_hvp = min(hvps, key=hvps.get)
    floors = {
        "fisher": (fb + jvps[best_jvp] + med["forward"], best_jvp),
        "hessian": (fb + hvps[best_hvp] + med["forward"], best_hvp),
    }
    update = max(adam - fb, 0.0)
    print(
        f"\n{'':18s} {'ratio to Adam':>13s} {'floor':>7s} {'/ floor':>8s} "
        f"{'floor+update':>13s} {'/ (f+u)':>8s} {'peak mem / Adam':>16s}"
    )
    for curvature, (floor, via) in floors.items():
        ratio = med[f"adamqlr-{curvature}"] / adam
        mem = memory.get(f"adamqlr-{curvature}", math.nan) / memory.get("adam", math.nan)
        full = (floor + update) / adam
        print(
            f"{'AdamQLR-' + curvature:18s} {ratio:13.2f} {floor / adam:7.2f} "
            f"{ratio / (floor / adam):8.2f} {full:13.2f} {ratio / full:8.2f} {mem:16.2f}"
            f"   floor = fb + {via} + forward"
        )
    if memory:
        print("peak memory (MiB): " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in memory.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--models", default="mlp,resnet18", help="comma list of mlp, resnet18")
    parser.add_argument("--mlp-batch", type=int, default=3200)
    parser.add_argument(
        "--resnet-batch", type=int, default=None, help="default 32 on CPU, 256 on CUDA"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds (default 30 for the MLP, 10 for ResNet-18)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    print(
        "memory method: "
        + (
            "torch.cuda.max_memory_allocated over one step (absolute)"
            if device.type == "cuda"
            else "tensors alive at step start + peak of torch.profiler(profile_memory=True) "
            "allocation events during the step"
        )
    )
    for name in args.models.split(","):
        batch = (
            args.mlp_batch
            if name == "mlp"
            else (args.resnet_batch or (256 if device.type == "cuda" else 32))
        )
        repeats = args.repeats or (30 if name == "mlp" else 10)
        case = make_case(name, batch, device)
        fns = variants(case)
        times = time_variants(case, fns, device, args.warmup, repeats)
        memory = (
            {}
            if args.no_memory
            else {
                k: peak_memory(case, k, device)
                for k in ("adam", "adamqlr-fisher", "adamqlr-hessian")
            }
        )
        report(case, times, memory, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
