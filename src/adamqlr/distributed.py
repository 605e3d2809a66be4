"""Data-parallel AdamQLR over ``torch.distributed``: every rank takes the same step.

Each rank steps on its own shard of the global mini-batch. For the ranks to stay identical, the
quantities the step is made of must be those of the *global* batch, so the optimiser averages
over the process group, with ``all_reduce``:

* the gradient (one coalesced collective per dtype and device) -- whether or not the model was
  wrapped in ``DistributedDataParallel`` (a DDP wrapper is unwrapped, :func:`unwrap`: the
  optimiser runs the module's forward itself, differentiates it twice and must control which
  pass communicates, so DDP's own gradient hooks are bypassed);
* the loss ``f0``, the curvature ``d^T C d`` and the trial loss ``f1``.

With the averaged gradient, the direction (Adam's moments), ``g^T d`` and ``||d||^2`` are the
same on every rank by construction, so the step size, ``rho`` and the damping are too, and the
parameters stay bitwise equal. When every rank holds the same number of examples (and, for
cross-entropy with ``ignore_index``, the same number of counted positions), the mean of the
ranks' mean losses, gradients and curvatures is exactly the global batch's, so the run equals a
single process stepping on the concatenated batch (up to the order of floating-point sums).
With unequal shards each rank's mean is weighted equally.

Not averaged: batch norm's batch statistics and running statistics (each rank normalises with its
own shard and keeps its own running statistics, as DDP with ``broadcast_buffers=False``; with
batch norm the run is therefore not that of one process on the whole batch) and the dropout masks
(each rank draws its own, as in DDP). The parameters must start equal on every rank (e.g. the same
seed, or ``DistributedDataParallel``'s broadcast at construction), and every rank must call
``step`` equally often (each step makes collective calls for the gradient, the loss, the
curvature, the trial loss). With ``distributed="auto"`` any initialised process group of more
than one rank is used: pass ``distributed=False`` when the ranks train different models.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from adamqlr.curvature import CurvatureEngine

__all__ = ["DistributedEngine", "process_group", "unwrap"]

#: What the ``distributed`` argument of :class:`adamqlr.AdamQLR` accepts.
DISTRIBUTED_CHOICES = ("auto", True, False)


def unwrap(model: nn.Module) -> nn.Module:
    """Return the module inside ``DistributedDataParallel`` or ``DataParallel``, else ``model``."""
    wrappers: tuple[type, ...] = (nn.DataParallel,)
    if dist.is_available():
        wrappers += (nn.parallel.DistributedDataParallel,)
    while isinstance(model, wrappers):
        model = cast(nn.Module, model.module)
    return model


def process_group(distributed: bool | str | Any) -> Any | None:
    """Return the process group whose ranks average the step, or ``None`` for a local step.

    Args:
        distributed: ``"auto"`` (the default group when ``torch.distributed`` is initialised with
            more than one rank, else ``None``), ``True`` (the default group; it must be
            initialised), ``False`` (``None``), or a ``ProcessGroup``.

    Raises:
        ValueError: For any other value, or ``True`` without an initialised process group.
    """
    if isinstance(distributed, bool):
        if not distributed:
            return None
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "invalid distributed: True, but torch.distributed is not initialised (call "
                "torch.distributed.init_process_group first, or pass distributed='auto')"
            )
        return dist.group.WORLD
    if isinstance(distributed, str):
        if distributed != "auto":
            raise ValueError(
                f"invalid distributed: {distributed!r} (expected 'auto', True, False or a "
                "ProcessGroup)"
            )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return dist.group.WORLD
        return None
    if dist.is_available() and isinstance(distributed, dist.ProcessGroup):
        return distributed
    raise ValueError(
        f"invalid distributed: {distributed!r} (expected 'auto', True, False or a ProcessGroup)"
    )


def _average(t: Tensor, group: Any) -> Tensor:
    """Return the mean of ``t`` over ``group`` (a new tensor; float64 for scalars)."""
    out = t.detach().to(torch.float64) if t.dim() == 0 else t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out.div_(dist.get_world_size(group))


def average_gradients(params: list[Tensor], group: Any) -> None:
    """Replace each ``.grad`` by its mean over ``group``: one collective per dtype and device.

    Every rank must hold gradients for the same parameters (a parameter that received none on
    one rank receives zeros here on that rank, if any other rank has one).
    """
    size = dist.get_world_size(group)
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    dist.all_reduce(has, op=dist.ReduceOp.MAX, group=group)
    buckets: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for p, any_rank in zip(params, has.tolist(), strict=True):
        if not any_rank:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for ps in buckets.values():
        flat = torch.cat([cast(Tensor, p.grad).reshape(-1) for p in ps])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat.div_(size)
        offset = 0
        for p in ps:
            grad = cast(Tensor, p.grad)  # set above
            n = grad.numel()
            grad.copy_(flat[offset : offset + n].view_as(grad))
            offset += n


class DistributedEngine:
    """A :class:`adamqlr.curvature.CurvatureEngine` whose results are averaged over a group.

    :meth:`gradient_pass` averages the gradient and the loss, :meth:`along` the curvature and
    :meth:`trial_loss` the trial loss; everything else is the wrapped engine's.

    Args:
        engine: The local engine.
        group: The process group (from :func:`process_group`).
    """

    def __init__(self, engine: CurvatureEngine, group: Any) -> None:
        self.engine = engine
        self.group = group

    def gradient_pass(
        self, inputs: Any, targets: Tensor, params: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """See :meth:`adamqlr.curvature.CurvatureEngine.gradient_pass`; averaged."""
        value, outputs = self.engine.gradient_pass(inputs, targets, params)
        average_gradients(params, self.group)
        return _average(value, self.group), outputs

    def along(self, names: list[str], params: list[Tensor], directions: list[Tensor]) -> Tensor:
        """See :meth:`adamqlr.curvature.CurvatureEngine.along`; averaged."""
        return _average(self.engine.along(names, params, directions), self.group)

    def along_pair(
        self, names: list[str], params: list[Tensor], first: list[Tensor], second: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """See :meth:`adamqlr.curvature.CurvatureEngine.along_pair`; each averaged."""
        uu, uv, vv = self.engine.along_pair(names, params, first, second)
        return _average(uu, self.group), _average(uv, self.group), _average(vv, self.group)

    def trial_loss(self, names: list[str], values: list[Tensor], **kwargs: Any) -> Tensor:
        """See :meth:`adamqlr.curvature.CurvatureEngine.trial_loss`; averaged."""
        return _average(self.engine.trial_loss(names, values, **kwargs), self.group)

    def release(self) -> None:
        """Drop everything the wrapped engine kept."""
        self.engine.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def __repr__(self) -> str:
        return f"DistributedEngine({self.engine!r}, world_size={dist.get_world_size(self.group)})"
