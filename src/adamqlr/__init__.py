"""AdamQLR: Adam's direction with K-FAC's step-size and damping heuristics, in PyTorch.

The companion library to Clarke & Hernandez-Lobato, "Studying K-FAC Heuristics by Viewing Adam
through a Second-Order Lens" (ICML 2024). The optimisers are ``torch.optim.Optimizer`` subclasses::

    from adamqlr import AdamQLR
    opt = AdamQLR(model, loss="cross_entropy", curvature="fisher")
    stats = opt.step(inputs, targets)

The baselines of the paper are here too: :class:`SGDQLR` (the same heuristics on the gradient),
:class:`KFAC` (``adamqlr.kfac``) and :class:`BaydinSGD` (``adamqlr.baydin``).
"""

import warnings

from adamqlr.baydin import BaydinSGD
from adamqlr.kfac import KFAC
from adamqlr.losses import CrossEntropyLoss, Loss, SquaredErrorLoss, get_loss
from adamqlr.optim import SGDQLR, AdamQLR, NonFiniteStepError, StallError, StepStats

# torch >= 2.14 warns, from inside its own forward-mode decompositions, that torch.jit.script is
# deprecated. It is not ours to act on, and on stderr it would fail the book's strict build.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

__version__ = "0.1.0"

#: Bumped whenever what a step computes changes (a formula, a default, a rule), so that stored run
#: records made by an older algorithm are reported as stale instead of being silently reused. A
#: change of floating-point evaluation order alone does not bump it; every record also stores the
#: exact commit that made it.
ALGORITHM_VERSION = 1

__all__ = [
    "ALGORITHM_VERSION",
    "AdamQLR",
    "BaydinSGD",
    "CrossEntropyLoss",
    "KFAC",
    "Loss",
    "NonFiniteStepError",
    "SGDQLR",
    "SquaredErrorLoss",
    "StallError",
    "StepStats",
    "__version__",
    "get_loss",
]
