"""AdamQLR: Adam's direction with K-FAC's step-size and damping heuristics, in PyTorch.

The companion library to Clarke & Hernandez-Lobato, "Studying K-FAC Heuristics by Viewing Adam
through a Second-Order Lens" (ICML 2024). The optimisers are ``torch.optim.Optimizer`` subclasses::

    from adamqlr import AdamQLR
    opt = AdamQLR(model, loss="cross_entropy", curvature="fisher")
    stats = opt.step(inputs, targets)

Its options are grouped as the paper groups them: ``damping=`` an :class:`AdaptiveDamping`
(``lambda_0`` and a :class:`LevenbergMarquardt` rule), a :class:`FixedDamping` or ``None``, and
``step_size=`` a :class:`StepSize` (rule, clip, amplification).

The baselines of the paper are here too: :class:`SGDQLR` (the same heuristics on the gradient),
:class:`KFAC` (``adamqlr.kfac``) and :class:`BaydinSGD` (``adamqlr.baydin``).

How the package is built: rooms in layers
-----------------------------------------

Each top-level module or subpackage is a *room* with one job. Rooms sit in layers, listed below
from the bottom layer up; a room imports only from rooms listed above it (never from its own
layer, never from the package root, which only re-exports), and no modules import each other in
a circle.
``tests/test_import_graph.py`` checks all of it, function-level imports and modules loaded by
name included::

    leaves      version profiles _random _state _step_hooks _validation _checks
                backends outputs precision  kernels allowed; a model's output; mixed precision
    maths       losses                      losses with closed-form output Hessians
                curvature                   d^T C d along a direction, matrix-free
                heuristics distributed      step size, rho and damping; one step over ranks
                rules heldout               damping and step-size settings; held-out rho
                optim                       AdamQLR and SGDQLR (torch optimisers)
                algorithm kfac baydin       reference step; K-FAC; hypergradient SGD
                testing                     dense float64 oracles for tests and chapters
                steppers                    one training-loop interface for every optimiser
                baselines                   K-FAC and Baydin SGD as named configurations
    data        data                        checksummed files, mirror and cache
                tasks                       the paper's tasks: data, model, loss, budgets
    runs        results                     run records, written atomically, found by key
                experiment                  a spec, its training loop, run and load
                tune lens                   tuning studies; the derivation chapters' numbers
                studies                     the experiment chapters' named studies
    output      plots                       one theme and the paper's figure types
                book                        run the notebooks, build the book
                cli                         the adamqlr command

:mod:`adamqlr.profiles` names the three profiles (``smoke``, ``quick``, ``paper``) and
:mod:`adamqlr.version` the algorithm version that stamps every record.
"""

import warnings
from importlib import import_module
from typing import TYPE_CHECKING, Any

from adamqlr.version import ALGORITHM_VERSION, __version__

if TYPE_CHECKING:  # what the names below are, for type checkers and editors
    from adamqlr.baydin import BaydinSGD
    from adamqlr.heuristics import LevenbergMarquardt
    from adamqlr.kfac import KFAC
    from adamqlr.losses import CrossEntropyLoss, Loss, SquaredErrorLoss, get_loss
    from adamqlr.optim import SGDQLR, AdamQLR, NonFiniteStepError, StallError, StepStats
    from adamqlr.rules import AdaptiveDamping, FixedDamping, StepSize

#: The names the package root re-exports, and the module of each. They are imported on first use
#: (``from adamqlr import AdamQLR`` works as ever), so that ``import adamqlr.book`` or
#: ``adamqlr book status`` does not pay for importing torch (seconds) when it needs none.
_EXPORTS: dict[str, str] = {
    "BaydinSGD": "adamqlr.baydin",
    "LevenbergMarquardt": "adamqlr.heuristics",
    "KFAC": "adamqlr.kfac",
    "CrossEntropyLoss": "adamqlr.losses",
    "Loss": "adamqlr.losses",
    "SquaredErrorLoss": "adamqlr.losses",
    "get_loss": "adamqlr.losses",
    "SGDQLR": "adamqlr.optim",
    "AdamQLR": "adamqlr.optim",
    "NonFiniteStepError": "adamqlr.optim",
    "StallError": "adamqlr.optim",
    "StepStats": "adamqlr.optim",
    "AdaptiveDamping": "adamqlr.rules",
    "FixedDamping": "adamqlr.rules",
    "StepSize": "adamqlr.rules",
}

# torch >= 2.14 warns, from inside its own forward-mode decompositions, that torch.jit.script is
# deprecated. It is not ours to act on, and on stderr it would fail the book's strict build.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'adamqlr' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "ALGORITHM_VERSION",
    "AdamQLR",
    "AdaptiveDamping",
    "BaydinSGD",
    "CrossEntropyLoss",
    "FixedDamping",
    "KFAC",
    "LevenbergMarquardt",
    "Loss",
    "NonFiniteStepError",
    "SGDQLR",
    "SquaredErrorLoss",
    "StallError",
    "StepSize",
    "StepStats",
    "__version__",
    "get_loss",
]
