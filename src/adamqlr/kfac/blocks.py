"""K-FAC's curvature blocks: which approximation each layer gets, and how its statistics are made.

The Fisher of the *mean* loss over ``M`` loss terms (examples, or token positions),
``F = (1/M) sum_m J_m^T H_m J_m``, is approximated block-diagonally, one block per layer, as
kfac-jax does by default:

* :class:`KroneckerBlock` for ``nn.Linear`` and ``nn.Conv2d`` (``groups == 1``, numeric zero
  padding): ``F_layer ~ A (x) G`` with

  - ``A = (1/R) sum_r a_r a_r^T``, the second moment of the layer inputs over its ``R`` rows (an
    example for a dense layer on ``(N, in)`` inputs; an example and a spatial location -- a patch --
    for a convolution; every leading index for a dense layer on ``(N, T, in)`` inputs), with a
    homogeneous coordinate 1 appended when the layer has a bias, so the bias shares the block;
  - ``G = (1/M) sum_r dy_r dy_r^T``, the second moment of the gradients of the *summed* loss with
    respect to the layer's pre-activation outputs, for targets drawn from the model
    (:data:`ESTIMATIONS`).

  This is the KFC convention of Grosse & Martens (2016) and curvlinops' "expand" K-FAC; for a
  convolution it equals kfac-jax's ``num_locations * A' (x) G'`` with both factors normalised per
  location.
* :class:`ScaleShiftBlock` for the scale and shift of ``BatchNorm``, ``LayerNorm`` and ``GroupNorm``
  (kfac-jax's ``ScaleAndShiftDiagonal``): a diagonal block, ``diag = (1/M) sum_n d_n^2`` with
  ``d_n`` the gradient of example ``n``'s summed loss terms with respect to the scale
  (``sum xhat * dy`` over the non-channel positions of that example) or shift (``sum dy``).
* :class:`NaiveDiagonalBlock` for every other trainable parameter (kfac-jax's ``NaiveDiagonal``):
  ``diag = (sum_n g_n)^2 / M``, the square of the summed-loss gradient over the batch.

For sampled targets the cross terms between examples have mean zero, so each diagonal statistic
is an unbiased estimate of the diagonal of ``F``; for per-example losses ``M`` is the batch size
and every statistic is kfac-jax's.

Damping: a Kronecker block is inverted with factored Tikhonov damping and the pi-adjustment
(Martens & Grosse 2015, section 6.3; kfac-jax ``pi_adjusted_kronecker_factors``); a diagonal
block as ``g / (diag + lambda)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamqlr.kfac.linalg import (
    cholesky_or_none,
    homogeneous_gram,
    kronecker_solve,
    symmetric_gram,
)

__all__ = [
    "ESTIMATIONS",
    "Block",
    "KroneckerBlock",
    "NaiveDiagonalBlock",
    "ScaleShiftBlock",
    "build_blocks",
    "pi_damped_factors",
    "psd_inverse",
]

#: How the output-gradient statistics are estimated: ``"sampled"`` (kfac-jax's
#: ``fisher_gradients``: one target per loss term drawn from the model's predictive distribution),
#: ``"exact"`` (the exact expectation through a square root of the output Hessian; one backward
#: pass per output dimension; for tests and small outputs) or ``"empirical"`` (the true targets:
#: the empirical Fisher).
ESTIMATIONS: tuple[str, ...] = ("sampled", "exact", "empirical")

_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def pi_damped_factors(a: Tensor, g: Tensor, damping: float) -> tuple[Tensor, Tensor]:
    """Return ``(A + pi sqrt(lambda) I, G + sqrt(lambda)/pi I)``, the pi-adjusted damped factors.

    ``pi = sqrt((tr A / dim A) / (tr G / dim G))`` makes the damping split in proportion to the
    factors' average eigenvalues, so ``A_d (x) G_d`` approximates ``A (x) G + lambda I``. When
    either factor has zero trace both damped factors are ``sqrt(lambda) I`` (kfac-jax's special
    case).

    Args:
        a: The input factor ``A`` (symmetric PSD).
        g: The output-gradient factor ``G`` (symmetric PSD).
        damping: ``lambda >= 0``.

    Returns:
        The damped pair ``(A_d, G_d)`` (new tensors; the inputs are unchanged).
    """
    return _damp_in_place(a.clone(), g.clone(), damping)


def _damp_in_place(a: Tensor, g: Tensor, damping: float) -> tuple[Tensor, Tensor]:
    """:func:`pi_damped_factors`, adding the damping to the diagonals of ``a`` and ``g``."""
    root = math.sqrt(damping)
    norm_a = float(torch.diagonal(a).mean())
    norm_g = float(torch.diagonal(g).mean())
    if not (norm_a > 0.0 and norm_g > 0.0):
        return (
            root * torch.eye(a.shape[0], dtype=a.dtype, device=a.device),
            root * torch.eye(g.shape[0], dtype=g.dtype, device=g.device),
        )
    pi = math.sqrt(norm_a / norm_g)
    a.diagonal().add_(pi * root)
    g.diagonal().add_(root / pi)
    return a, g


def psd_inverse(m: Tensor) -> Tensor:
    """Invert a symmetric positive-definite matrix by Cholesky (eigendecomposition as a fallback).

    The fallback clips eigenvalues below ``1e-12 * max`` (or a tiny absolute value), so a nearly
    singular factor gives a large but finite inverse instead of NaN. When the eigendecomposition
    itself fails (LAPACK's "failed to converge", met by a diverging K-FAC whose factors' entries
    approach the dtype's largest value), it is tried once more in float64; if that fails too,
    the inverse is all NaN, which the optimiser refuses like any non-finite step (the step is
    skipped and the damping raised) instead of the run stopping with an exception.
    """
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) == 0:  # cholesky_solve against I: about twice as fast as cholesky_inverse on CPU
        return torch.cholesky_solve(torch.eye(m.shape[0], dtype=m.dtype, device=m.device), chol)
    try:
        evals, evecs = torch.linalg.eigh(m)
    except torch.linalg.LinAlgError:
        try:
            evals, evecs = torch.linalg.eigh(m.double())
        except torch.linalg.LinAlgError:
            return torch.full_like(m, math.nan)
    floor = max(float(evals.max()) * 1e-12, torch.finfo(evals.dtype).tiny)
    return ((evecs / evals.clamp_min(floor)) @ evecs.T).to(m.dtype)


class Block(ABC):
    """One block of the block-diagonal curvature: the parameters it covers and its statistics.

    During a recorded forward pass a block sees the module's inputs (:meth:`record_input`); during
    the backward pass of the sampled loss it sees the gradients of that *summed* loss with respect
    to the module's outputs (:meth:`record_output_grad`) or parameters
    (:meth:`record_param_grads`). :meth:`batch_statistics` then returns this batch's statistics,
    normalised by the number of loss terms.

    Attributes:
        name: The module's name in the model (for a naive diagonal block, the parameter's name).
        params: ``(name, parameter)`` pairs covered by the block, in a fixed order.
    """

    kind: str = "block"

    def __init__(self, name: str, params: list[tuple[str, Tensor]]) -> None:
        self.name = name
        self.params = params
        self._sums: dict[str, Tensor] = {}

    # --------------------------------------------------------------------- recording
    def reset(self) -> None:
        """Forget the statistics of the previous batch."""
        self._sums = {}

    def _add(self, key: str, value: Tensor) -> None:
        if key in self._sums:
            self._sums[key] = self._sums[key] + value
        else:
            self._sums[key] = value

    def hook_module(self) -> nn.Module | None:
        """Return the module whose forward pass this block observes (``None``: parameters only)."""
        return None

    def record_input(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
        """Record what the block needs from one call of the module; return a token for the call.

        The token is handed back to :meth:`record_output_grad` with that call's output gradient,
        so a module called several times in one forward pass pairs each gradient with its input.
        """
        return 0

    def record_output_grad(self, grad: Tensor, token: int) -> None:  # noqa: B027
        """Record the gradient of the summed loss w.r.t. one call's output (default: nothing)."""

    def record_param_grads(self, grads: list[Tensor | None]) -> None:  # noqa: B027
        """Record the gradient of the summed loss w.r.t. the block's parameters (default: none)."""

    @property
    def wants_param_grads(self) -> bool:
        """Whether :meth:`record_param_grads` must be fed."""
        return False

    def batch_statistics(self, num_terms: int) -> dict[str, Tensor] | None:
        """Return this batch's statistics normalised by ``num_terms`` (``None``: not observed).

        The default divides every recorded sum by ``num_terms`` (the diagonal blocks).
        """
        if not self._sums:
            return None
        return {k: v / num_terms for k, v in self._sums.items()}

    # --------------------------------------------------------------------- preconditioning
    def inverse(
        self, factors: dict[str, Tensor], damping: float, *, owned: bool = False
    ) -> dict[str, Tensor]:
        """Return what :meth:`precondition` needs for the damped inverse of the block.

        The default is nothing: a diagonal block divides by its damped diagonal directly.
        ``owned=True`` says that ``factors`` are scratch tensors the block may overwrite.
        """
        return {}

    @abstractmethod
    def precondition(
        self,
        grads: list[Tensor],
        factors: dict[str, Tensor],
        inverses: dict[str, Tensor] | None,
        damping: float,
    ) -> list[Tensor]:
        """Return ``(F_block + lambda I)^{-1} g`` (approximately) for the block's gradients."""


class KroneckerBlock(Block):
    """A Kronecker-factored block ``A (x) G`` for an ``nn.Linear`` or ``nn.Conv2d`` layer."""

    kind = "kronecker"

    def __init__(self, name: str, module: nn.Linear | nn.Conv2d, params: list[tuple[str, Tensor]]):
        super().__init__(name, params)
        self.module = module
        self.has_bias = module.bias is not None and any(p is module.bias for _, p in params)
        self._rows = 0

    @staticmethod
    def supports(module: nn.Module) -> bool:
        """Whether ``module`` gets a Kronecker block (else its parameters get a naive diagonal)."""
        if isinstance(module, nn.Linear):
            return True
        if isinstance(module, nn.Conv2d):
            return (
                module.groups == 1
                and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)
            )
        return False

    def hook_module(self) -> nn.Module:  # noqa: D102
        return self.module

    def _patches(self, x: Tensor, out_shape: tuple[int, ...]) -> Tensor:
        """Rows of the layer's input: ``(R, in)`` (the bias's column of ones is implicit).

        A convolution that pads its input itself before calling ``conv2d`` (TensorFlow/Haiku
        "SAME" padding, as the tasks' ResNet-18 does) is handled by inferring the missing padding
        from the output size and splitting it as TensorFlow does (any odd row or column at the
        end); the patch count is then checked against the output.
        """
        m = self.module
        if isinstance(m, nn.Conv2d):
            if x.dim() == 3:  # unbatched input (C, H, W)
                x = x.unsqueeze(0)
            pads = []
            padding = cast(tuple[int, ...], m.padding)  # numbers: "same" is not supported here
            for axis in (1, 0):  # F.pad order: last dimension (width) first
                size, out = x.shape[2 + axis], out_shape[-2 + axis]
                k, s, d, p = m.kernel_size[axis], m.stride[axis], m.dilation[axis], padding[axis]
                extra = max(0, (out - 1) * s + d * (k - 1) + 1 - size - 2 * p)
                pads += [extra // 2, extra - extra // 2]
            if any(pads):
                x = F.pad(x, pads)
            cols = F.unfold(x, m.kernel_size, m.dilation, padding, m.stride)  # (N, C*k*k, L)
            if cols.shape[-1] != out_shape[-1] * out_shape[-2]:
                raise ValueError(
                    f"K-FAC: cannot infer the patches of convolution {self.name!r}: "
                    f"{cols.shape[-1]} patches for an output of {tuple(out_shape[-2:])}"
                )
            return cols.transpose(1, 2).reshape(-1, cols.shape[1])
        return x.reshape(-1, x.shape[-1])

    def record_input(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:  # noqa: D102
        self.record_rows(self._patches(inputs[0].detach(), tuple(output.shape)))
        return 0

    def record_rows(self, rows: Tensor) -> None:
        """Add the input rows ``(R, in)`` of one call to ``A``'s sum (with the bias coordinate)."""
        self._add("A", homogeneous_gram(rows) if self.has_bias else symmetric_gram(rows))
        self._rows += rows.shape[0]

    def record_output_grad(self, grad: Tensor, token: int) -> None:  # noqa: D102
        dy = grad.detach()
        if isinstance(self.module, nn.Conv2d):
            dy = dy.movedim(-3, -1)  # channels last
        self._add("G", symmetric_gram(dy.reshape(-1, dy.shape[-1])))

    def reset(self) -> None:  # noqa: D102
        super().reset()
        self._rows = 0

    def batch_statistics(self, num_terms: int) -> dict[str, Tensor] | None:  # noqa: D102
        if "A" not in self._sums or "G" not in self._sums:
            return None
        return {"A": self._sums["A"] / self._rows, "G": self._sums["G"] / num_terms}

    def _as_matrix(self, grads: list[Tensor]) -> Tensor:
        """Stack the weight (as ``out x in``) and bias (as a last column) of the block."""
        by_param = {id(p): g for (_, p), g in zip(self.params, grads, strict=True)}
        weight = by_param[id(self.module.weight)].reshape(self.module.weight.shape[0], -1)
        if self.has_bias:
            return torch.cat([weight, by_param[id(self.module.bias)].unsqueeze(1)], dim=1)
        return weight

    def _from_matrix(self, mat: Tensor) -> list[Tensor]:
        out = []
        for _, p in self.params:
            if p is self.module.weight:
                out.append(mat[:, : mat.shape[1] - int(self.has_bias)].reshape(p.shape))
            else:
                out.append(mat[:, -1].reshape(p.shape))
        return out

    def inverse(
        self, factors: dict[str, Tensor], damping: float, *, owned: bool = False
    ) -> dict[str, Tensor]:
        """Factorise the pi-damped factors: their lower Cholesky factors (``A_chol``, ``G_chol``).

        Only triangular solves follow (:meth:`precondition`); no inverse is formed. A damped
        factor that is not numerically positive definite gets an explicit eigenvalue-clipped
        inverse instead (``A_inv`` / ``G_inv``). With ``owned=True`` the damping is added to the
        given factors in place.
        """
        damp = _damp_in_place if owned else pi_damped_factors
        out = {}
        for key, mat in zip(("A", "G"), damp(factors["A"], factors["G"], damping), strict=True):
            chol = cholesky_or_none(mat)
            if chol is not None:
                out[key + "_chol"] = chol
            else:
                out[key + "_inv"] = psd_inverse(mat)
        return out

    @staticmethod
    def _solve(inverses: dict[str, Tensor], key: str, rhs: Tensor) -> Tensor:
        """Return ``F_key^{-1} rhs`` for a damped factor ``F_key`` (``rhs`` has its rows)."""
        if key + "_chol" in inverses:
            return torch.cholesky_solve(rhs, inverses[key + "_chol"].to(rhs.dtype))
        return inverses[key + "_inv"].to(rhs.dtype) @ rhs

    def precondition(  # noqa: D102
        self,
        grads: list[Tensor],
        factors: dict[str, Tensor],
        inverses: dict[str, Tensor] | None,
        damping: float,
    ) -> list[Tensor]:
        if inverses is None:
            inverses = self.inverse(factors, damping)
        mat = self._as_matrix(grads)
        if "G_chol" in inverses and "A_chol" in inverses:  # G_d^{-1} [W, b] A_d^{-1}
            g_chol, a_chol = inverses["G_chol"], inverses["A_chol"]
            return self._from_matrix(
                kronecker_solve(g_chol.to(mat.dtype), a_chol.to(mat.dtype), mat)
            )
        mat = self._solve(inverses, "G", mat)  # G_d^{-1} [W, b]
        mat = self._solve(inverses, "A", mat.T).T  # ... A_d^{-1} (both factors symmetric)
        return self._from_matrix(mat)

    def dense(self, factors: dict[str, Tensor]) -> Tensor:
        """Return the block ``A (x) G`` as a dense matrix over ``vec([W, b])`` (for tests).

        The order is column-major over the ``out x (in [+1])`` matrix ``[W, b]``, i.e. the bias
        entries come last.
        """
        return torch.kron(factors["A"], factors["G"])


class ScaleShiftBlock(Block):
    """A diagonal block for the scale and shift of a normalisation layer."""

    kind = "scale_shift"

    def __init__(self, name: str, module: nn.Module, params: list[tuple[str, Tensor]]) -> None:
        super().__init__(name, params)
        self.module = module
        self._xhat: list[Tensor] = []

    @staticmethod
    def supports(module: nn.Module) -> bool:
        """Whether ``module`` is a normalisation layer with an affine scale."""
        return isinstance(module, _NORM_LAYERS) and getattr(module, "weight", None) is not None

    def hook_module(self) -> nn.Module:  # noqa: D102
        return self.module

    def _normalised(self, x: Tensor) -> Tensor:
        m = self.module
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            batch_stats = m.training or m.running_mean is None
            return F.batch_norm(
                x,
                None if batch_stats else m.running_mean,
                None if batch_stats else m.running_var,
                None,
                None,
                batch_stats,
                0.0,
                m.eps,
            )
        if isinstance(m, nn.LayerNorm):
            return F.layer_norm(x, m.normalized_shape, None, None, m.eps)
        group = cast(nn.GroupNorm, m)
        return F.group_norm(x, group.num_groups, None, None, group.eps)

    def _param_dims(self, dy: Tensor) -> tuple[int, ...]:
        """Dimensions of ``dy`` summed over to get one example's parameter gradient."""
        if isinstance(self.module, nn.LayerNorm):
            last = len(self.module.normalized_shape)
            return tuple(range(1, dy.dim() - last))
        return tuple(range(2, dy.dim()))

    def reset(self) -> None:  # noqa: D102
        super().reset()
        self._xhat = []

    def record_input(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:  # noqa: D102
        with torch.no_grad():
            self._xhat.append(self._normalised(inputs[0].detach()))
        return len(self._xhat) - 1

    def record_output_grad(self, grad: Tensor, token: int) -> None:  # noqa: D102
        dy = grad.detach()
        xhat = self._xhat[token]
        dims = self._param_dims(dy)
        for pname, _ in self.params:
            local = pname.rsplit(".", 1)[-1]
            per_example = (dy * xhat) if local == "weight" else dy
            if dims:
                per_example = per_example.sum(dim=dims)
            self._add(local, per_example.pow(2).sum(0))

    def precondition(  # noqa: D102
        self,
        grads: list[Tensor],
        factors: dict[str, Tensor],
        inverses: dict[str, Tensor] | None,
        damping: float,
    ) -> list[Tensor]:
        out = []
        for (pname, p), g in zip(self.params, grads, strict=True):
            diag = factors[pname.rsplit(".", 1)[-1]].reshape(p.shape)
            out.append(g / (diag.to(g.dtype) + damping))
        return out


class NaiveDiagonalBlock(Block):
    """A diagonal block ``(sum_n g_n)^2 / M`` for a parameter no structured block covers."""

    kind = "naive_diagonal"

    @property
    def wants_param_grads(self) -> bool:  # noqa: D102
        return True

    def record_param_grads(self, grads: list[Tensor | None]) -> None:  # noqa: D102
        for (pname, p), g in zip(self.params, grads, strict=True):
            self._add(pname, (torch.zeros_like(p) if g is None else g.detach()).pow(2))

    def precondition(  # noqa: D102
        self,
        grads: list[Tensor],
        factors: dict[str, Tensor],
        inverses: dict[str, Tensor] | None,
        damping: float,
    ) -> list[Tensor]:
        return [
            g / (factors[pname].to(g.dtype) + damping)
            for (pname, _), g in zip(self.params, grads, strict=True)
        ]


def build_blocks(model: nn.Module, params: Sequence[tuple[str, Tensor]]) -> list[Block]:
    """Assign every parameter in ``params`` to exactly one block.

    ``nn.Linear`` and supported ``nn.Conv2d`` layers whose parameters are all optimised (and used by
    no other module) get a :class:`KroneckerBlock`; normalisation layers a :class:`ScaleShiftBlock`;
    every remaining parameter its own :class:`NaiveDiagonalBlock`.

    Args:
        model: The network.
        params: ``(name, parameter)`` pairs to optimise, named as in ``model.named_parameters()``.

    Returns:
        The blocks, in module order, followed by the naive diagonal blocks.
    """
    wanted = {id(p): name for name, p in params}
    owners: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    blocks: list[Block] = []
    claimed: set[int] = set()
    for mod_name, module in model.named_modules():
        own = [
            (wanted[id(p)], p)
            for p in module.parameters(recurse=False)
            if id(p) in wanted and id(p) not in claimed and owners[id(p)] == 1
        ]
        if not own:
            continue
        if KroneckerBlock.supports(module) and any(p is module.weight for _, p in own):
            block: Block = KroneckerBlock(mod_name, module, own)
        elif ScaleShiftBlock.supports(module):
            block = ScaleShiftBlock(mod_name, module, own)
        else:
            continue
        blocks.append(block)
        claimed.update(id(p) for _, p in own)
    for name, p in params:
        if id(p) not in claimed:
            blocks.append(NaiveDiagonalBlock(name, [(name, p)]))
            claimed.add(id(p))
    return blocks
