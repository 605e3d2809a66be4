"""K-FAC for PyTorch: Kronecker-factored curvature with kfac-jax's heuristics, or without them.

:class:`KFAC` is the paper's K-FAC baseline. ``mode="adaptive"`` reproduces kfac-jax's adaptive
learning rate, momentum and damping (the paper's "K-FAC"); ``mode="unadaptive"`` fixes all three
("K-FAC (Unadaptive)"); ``step_rule`` and ``damping_update`` combine the step-size rule (constant,
1-D quadratic-model minimiser, or 2-D learning rate and momentum) and the damping (fixed or
adaptive) freely, for the factorial study of which heuristic does the work. The damping rule is
the same :class:`adamqlr.heuristics.LevenbergMarquardt` that AdamQLR uses, so the paper's partial
ablation of K-FAC runs on shared code.

Modules: :mod:`~adamqlr.kfac.blocks` (which layer gets which curvature block, and its statistics),
:mod:`~adamqlr.kfac.quadratic` (the two-dimensional quadratic model for the learning rate and
momentum), :mod:`~adamqlr.kfac.optimizer` (the optimiser).
"""

from adamqlr.kfac.blocks import (
    ESTIMATIONS,
    Block,
    KroneckerBlock,
    NaiveDiagonalBlock,
    ScaleShiftBlock,
    build_blocks,
    pi_damped_factors,
    psd_inverse,
)
from adamqlr.kfac.optimizer import (
    DAMPING_UPDATES,
    DEFAULT_KFAC_DAMPING,
    KFAC,
    MODES,
    NO_DAMPING,
    STEP_RULES,
    KFACStepStats,
    sample_targets,
)
from adamqlr.kfac.quadratic import (
    QuadraticSolution,
    curvature_gram,
    output_bilinear,
    output_jvp,
    solve_quadratic_model,
)

__all__ = [
    "DAMPING_UPDATES",
    "DEFAULT_KFAC_DAMPING",
    "ESTIMATIONS",
    "KFAC",
    "MODES",
    "NO_DAMPING",
    "Block",
    "KFACStepStats",
    "KroneckerBlock",
    "NaiveDiagonalBlock",
    "QuadraticSolution",
    "STEP_RULES",
    "ScaleShiftBlock",
    "build_blocks",
    "curvature_gram",
    "output_bilinear",
    "output_jvp",
    "pi_damped_factors",
    "psd_inverse",
    "sample_targets",
    "solve_quadratic_model",
]
