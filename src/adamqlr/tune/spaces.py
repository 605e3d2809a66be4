"""The paper's hyperparameter search spaces, one per optimiser.

From the authors' code (`hyperparameter_optimisation.py: construct_search_space`); the one table
that both ``adamqlr tune`` and the studies' tuned arms (:mod:`adamqlr.studies`) draw from.


Each entry maps a hyperparameter of the optimiser's registry entry
(:mod:`adamqlr.experiment.optimisers`) to a distribution. A :class:`OneMinus` dimension is drawn as
``1 - x`` with ``x`` log-uniform, as the official code's ``"1-"`` keys (momentum: ``1 - mu`` in
LogU[1e-4, 0.3]). Every task except Rosenbrock also tunes the batch size over
{50, ..., 3200}; Penn Treebank over {5, ..., 200}, and there any learning-rate range is widened to
LogU[1e-4, 1e2] (Baydin SGD's initial learning rate excepted, as in the official code).

Not reproduced: the official Penn Treebank search also draws the subsequence length from
{10, ..., 100}; our experiment specs do not expose it yet, so it stays at the task's default.

Untuned configurations (``*-untuned``) have no search space: ``adamqlr tune`` runs only their
repeats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "BATCH_SIZES",
    "PTB_BATCH_SIZES",
    "SPACES",
    "UNTUNED",
    "Choice",
    "Dimension",
    "draw",
    "LogUniform",
    "OneMinus",
    "is_untuned",
    "search_space",
]


@dataclass(frozen=True)
class LogUniform:
    """A log-uniform distribution on ``[low, high]``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (0 < self.low < self.high < math.inf):
            raise ValueError(
                f"invalid LogUniform({self.low!r}, {self.high!r}): need 0 < low < high"
            )

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the support."""
        return self.low <= value <= self.high


@dataclass(frozen=True)
class OneMinus:
    """``1 - x`` with ``x`` log-uniform on ``[low, high]`` (e.g. momentum from ``1 - mu``)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (0 < self.low < self.high <= 1):
            raise ValueError(
                f"invalid OneMinus({self.low!r}, {self.high!r}): need 0 < low < high <= 1"
            )

    def contains(self, value: float) -> bool:
        """Whether ``value`` (the hyperparameter, not ``x``) lies in the support."""
        return self.low <= 1.0 - value <= self.high


@dataclass(frozen=True)
class Choice:
    """A uniform choice among ``values``."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("invalid Choice(): no values")

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices."""
        return value in self.values


Dimension = LogUniform | OneMinus | Choice

#: Batch sizes tuned on every task but Rosenbrock and Penn Treebank.
BATCH_SIZES: tuple[int, ...] = (50, 100, 200, 400, 800, 1600, 3200)
#: Batch sizes tuned on Penn Treebank.
PTB_BATCH_SIZES: tuple[int, ...] = (5, 10, 20, 35, 50, 100, 200)

_QLR_DAMPED = {
    "initial_damping": LogUniform(1e-8, 1.0),
    "damping_decrease": LogUniform(0.5, 1.0),
    "damping_increase": LogUniform(1.0, 4.0),  # independent of the decrease factor, as in the code
}

_KFAC_CONSTANT_STEP: dict[str, Dimension] = {
    "lr": LogUniform(1e-6, 1.0),
    "momentum": OneMinus(1e-4, 0.3),
}
# The factorial's K-FAC cells (``kfac-<rule>-<damping>``, :data:`adamqlr.baselines.KFAC_CELLS`):
# the constant rule tunes the learning rate and momentum as ``kfac-unadaptive`` does; fixed and
# adaptive damping tune lambda (lambda_0) over LogU[1e-8, 1] as ``kfac-unadaptive`` and ``kfac``
# do (kfac-jax's decay factor is not tuned); "none" (lambda at the 1e-8 floor) tunes nothing but
# the rule's own parameters, so the 1-D and 2-D rules' "none" cells tune only the batch size.
# ``kfac-const-fixed`` has ``kfac-unadaptive``'s space, ``kfac-alpha-mom-adaptive`` ``kfac``'s.
_KFAC_CELL_SPACES: dict[str, dict[str, Dimension]] = {
    f"kfac-{rule}-{damping}": {
        **(_KFAC_CONSTANT_STEP if rule == "const" else {}),
        **({} if damping == "none" else {"initial_damping": LogUniform(1e-8, 1.0)}),
    }
    for rule in ("const", "alpha", "alpha-mom")
    for damping in ("none", "fixed", "adaptive")
}

_SPACES: dict[str, dict[str, Dimension]] = {
    "sgd": {"lr": LogUniform(1e-6, 1e-1)},
    "sgd-full": {
        "lr": LogUniform(1e-6, 1e-1),
        "momentum": OneMinus(1e-4, 0.3),
        "weight_decay": LogUniform(1e-10, 1.0),
    },
    "adam": {"lr": LogUniform(1e-6, 1.0)},
    "adam-tuned-eps": {"lr": LogUniform(1e-6, 1.0), "eps": LogUniform(1e-8, 1.0)},
    "adamqlr": dict(_QLR_DAMPED),
    "adamqlr-hessian": dict(_QLR_DAMPED),
    "adamqlr-heldout": dict(_QLR_DAMPED),  # rho on the next mini-batch: the same search
    "adamqlr-undamped": {},  # only the batch size (7 values), though 200 samples are still drawn
    "sgdqlr": dict(_QLR_DAMPED),
    "kfac": {"initial_damping": LogUniform(1e-8, 1.0)},
    "kfac-unadaptive": {
        "lr": LogUniform(1e-6, 1.0),
        "momentum": OneMinus(1e-4, 0.3),
        "initial_damping": LogUniform(1e-8, 1.0),
    },
    **_KFAC_CELL_SPACES,
    "baydin-sgd": {"lr": LogUniform(1e-6, 1.0), "hypergrad_lr": LogUniform(1e-6, 1.0)},
}
# The factorial's SGD and Adam cells (``<direction>-<rule>-<damping>``, the registry's
# ``adamqlr.experiment.optimisers``): "none" tunes only the batch size, "fixed" the constant
# lambda, "adaptive" lambda_0 and both factors as ``adamqlr`` does.
_CELL_SPACES: dict[str, dict[str, Dimension]] = {
    "none": {},
    "fixed": {"initial_damping": LogUniform(1e-8, 1.0)},
    "adaptive": dict(_QLR_DAMPED),
}
_SPACES |= {
    f"{direction}-{rule}-{damping}": dict(space)
    for direction in ("sgd", "adam")
    for rule in ("alpha", "alpha-mom")
    for damping, space in _CELL_SPACES.items()
}

#: Read-only: optimiser name -> {hyperparameter: dimension} (batch size not included).
SPACES: Mapping[str, Mapping[str, Dimension]] = MappingProxyType(
    {k: MappingProxyType(v) for k, v in _SPACES.items()}
)

#: Configurations that are run as given, never tuned (their repeats only).
UNTUNED: frozenset[str] = frozenset(
    {
        "adam-untuned",
        "adamqlr-untuned",
        "adamqlr-untuned-hessian",
        "adamqlr-untuned-heldout",
        "kfac-untuned",
    }
)

#: Learning-rate keys whose range is widened on Penn Treebank, per optimiser (all by default).
_PTB_NOT_WIDENED = {"baydin-sgd": {"lr"}}


def is_untuned(optimiser: str) -> bool:
    """Whether ``optimiser`` is an untuned configuration (no search, only repeats)."""
    return optimiser in UNTUNED


def search_space(optimiser: str, task: str) -> dict[str, Dimension]:
    """Return the search space of ``optimiser`` on ``task``, batch size included (``batch_size``).

    Args:
        optimiser: A registry name with a search space (:data:`SPACES`) or an untuned one.
        task: The task name (Rosenbrock has no batch size; Penn Treebank has its own ranges).

    Returns:
        ``{name: dimension}``; empty for untuned configurations.

    Raises:
        ValueError: If the optimiser has no search space.
    """
    if is_untuned(optimiser):
        return {}
    if optimiser not in SPACES:
        raise ValueError(
            f"no search space for optimiser {optimiser!r}; tunable: {sorted(SPACES)}, untuned: "
            f"{sorted(UNTUNED)}"
        )
    space: dict[str, Dimension] = dict(SPACES[optimiser])
    if task == "penn-treebank":
        keep = _PTB_NOT_WIDENED.get(optimiser, set())
        for key, dim in space.items():
            if key == "lr" and key not in keep and isinstance(dim, LogUniform):
                space[key] = LogUniform(1e-4, 1e2)
        space["batch_size"] = Choice(PTB_BATCH_SIZES)
    elif task != "rosenbrock":
        space["batch_size"] = Choice(BATCH_SIZES)
    return space


def draw(
    space: Mapping[str, Dimension], seed: int, number: int, stream: str = ""
) -> dict[str, Any]:
    """Draw configuration ``number`` of a seeded random search over ``space``, reproducibly.

    Each dimension's uniform variate comes from SHA-256 of ``"stream:seed:number:name"``, so the
    draw of configuration ``k`` depends only on the stream (e.g. ``"task/optimiser"``, so that two
    searches draw independently), the seed, ``k`` and the dimension's name: not on how
    many configurations are drawn, in which order, or by which process. A :class:`LogUniform` is
    ``exp`` of a uniform on ``[log low, log high]``; a :class:`OneMinus` is ``1 -`` such a draw;
    a :class:`Choice` is one of its values, each with the same probability.

    Returns:
        ``{name: value}`` for every dimension (``batch_size`` included when in ``space``).
    """
    import hashlib

    out: dict[str, Any] = {}
    for name, dim in space.items():
        digest = hashlib.sha256(f"{stream}:{int(seed)}:{int(number)}:{name}".encode()).digest()
        u = (int.from_bytes(digest[:8], "little") >> 11) / float(1 << 53)  # in [0, 1)
        if isinstance(dim, Choice):
            out[name] = dim.values[min(int(u * len(dim.values)), len(dim.values) - 1)]
            continue
        lo, hi = math.log(dim.low), math.log(dim.high)
        x = float(f"{math.exp(lo + u * (hi - lo)):.10g}")
        x = min(max(x, dim.low), dim.high)
        out[name] = float(f"{1.0 - x:.10g}") if isinstance(dim, OneMinus) else x
    return out
