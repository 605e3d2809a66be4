"""The damping and step-size rules of :class:`adamqlr.AdamQLR` and :class:`adamqlr.SGDQLR`.

The optimisers take two options that pick a cell of the factorial study (direction x step-size
rule x damping, :mod:`adamqlr.studies.factorial`):

``damping_mode`` (:data:`DAMPING_MODES`)
    ``"adaptive"`` (the default, the paper's AdamQLR): lambda starts at ``initial_damping`` and
    the Levenberg-Marquardt rule adapts it from the reduction ratio ``rho`` every
    ``damping_interval`` steps, which costs one more forward pass (the trial loss) on those steps.
    ``"fixed"``: lambda stays ``initial_damping`` for the whole run, also after a rejected step;
    no trial loss and no ``rho`` are computed (``StepStats.rho`` and ``trial_loss`` are NaN), so a
    step costs what an undamped one does. ``"none"``: lambda = 0, no trial loss, no ``rho``
    (the old ``undamped=True``, which stays as an alias).

``step_rule`` (:data:`STEP_RULES`)
    ``"alpha"`` (the default, the paper's): ``theta <- theta - alpha d`` with ``alpha`` the
    minimiser of the damped quadratic model along the direction ``d``
    (:func:`adamqlr.heuristics.propose_step`). ``"alpha-momentum"``: K-FAC's joint choice of a
    learning rate and a momentum, on any direction: with ``v1 = -d`` and ``v2`` the previous
    update, the step ``a v1 + b v2`` minimises the damped quadratic model on the plane of the two
    (:func:`adamqlr.heuristics.propose_plane_step`); at the first step (no previous update) it is
    exactly the ``"alpha"`` rule.
"""

from __future__ import annotations

__all__ = ["DAMPING_MODES", "STEP_RULES", "damping_mode", "step_rule"]

#: The damping rules, see the module docstring.
DAMPING_MODES: tuple[str, ...] = ("adaptive", "fixed", "none")
#: The step-size rules, see the module docstring.
STEP_RULES: tuple[str, ...] = ("alpha", "alpha-momentum")


def damping_mode(mode: str | None, undamped: bool) -> str:
    """Return the damping rule that ``damping_mode`` and the legacy ``undamped`` flag select.

    Args:
        mode: One of :data:`DAMPING_MODES`, or ``None`` (``"none"`` if ``undamped`` else
            ``"adaptive"``).
        undamped: The legacy flag: ``True`` means ``"none"``.

    Raises:
        ValueError: Naming the value, for an unknown mode or ``undamped=True`` with a mode other
            than ``"none"``.
    """
    if mode is None:
        return "none" if undamped else "adaptive"
    if mode not in DAMPING_MODES:
        raise ValueError(f"invalid damping_mode: {mode!r} (expected one of {DAMPING_MODES})")
    if undamped and mode != "none":
        raise ValueError(
            f"invalid damping_mode: {mode!r} with undamped=True (undamped=True is "
            "damping_mode='none'; pass one of them)"
        )
    return mode


def step_rule(rule: str) -> str:
    """Return ``rule`` if it is one of :data:`STEP_RULES`.

    Raises:
        ValueError: Naming the value otherwise.
    """
    if rule not in STEP_RULES:
        raise ValueError(f"invalid step_rule: {rule!r} (expected one of {STEP_RULES})")
    return rule
