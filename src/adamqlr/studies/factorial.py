"""The factorial design of "Which heuristic does the work?": direction × step-size rule × damping.

The paper asks how much of a second-order optimiser's success comes from its heuristics rather
than its curvature model, and answers it in part: AdamQLR puts K-FAC's heuristics on Adam's
direction, and K-FAC (Unadaptive) takes them away from K-FAC. The factorial crosses every piece
with every other:

* **direction** ``d``: the gradient (SGD), Adam's ``m_hat / (sqrt(v_hat) + eps)``, or K-FAC's
  preconditioned gradient;
* **step-size rule**: a tuned constant learning rate (with a tuned momentum for K-FAC, as the
  paper's K-FAC (Unadaptive)); ``alpha``: the minimiser ``alpha* = g^T d / (d^T C d + lambda
  ||d||^2)`` of the damped quadratic model along ``d`` (AdamQLR's rule); ``alpha-mom``: K-FAC's
  joint choice of learning rate and momentum from the damped quadratic model on the plane of ``d``
  and the previous update;
* **damping** ``lambda``: none; fixed (a tuned constant); adaptive (the Levenberg-Marquardt rule
  driven by the reduction ratio ``rho``).

Each cell is one registered optimiser (:data:`CELLS`). Cells that make no sense are named in
:data:`EXCLUDED` with the reason, not silently dropped. :data:`EXTRA_CELLS` are rows beyond the
balanced design (they enter no main effect or interaction): AdamQLR with its reduction ratio
measured on the next mini-batch instead of the step's own (``rho_data="next"``,
:mod:`adamqlr.heldout`), compared with the AdamQLR cell.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CELLS", "DAMPINGS", "DIRECTIONS", "EXCLUDED", "EXTRA_CELLS", "RULES", "Cell", "cell"]

#: The directions, in the order the chapter draws them.
DIRECTIONS: tuple[str, ...] = ("SGD", "Adam", "K-FAC")
#: The step-size rules.
RULES: tuple[str, ...] = ("constant", "alpha", "alpha-mom")
#: The damping rules.
DAMPINGS: tuple[str, ...] = ("none", "fixed", "adaptive")

_RULE_WORDS = {"constant": "tuned lr", "alpha": "α*", "alpha-mom": "α*, μ*"}
_DAMPING_WORDS = {"none": "no damping", "fixed": "fixed λ", "adaptive": "adaptive λ"}
_VARIANT_WORDS = {"heldout-rho": "held-out ρ"}


@dataclass(frozen=True)
class Cell:
    """One cell of the factorial: a direction, a step-size rule and a damping rule.

    Attributes:
        direction: One of :data:`DIRECTIONS`.
        rule: One of :data:`RULES`.
        damping: One of :data:`DAMPINGS`.
        optimiser: The registry name of the optimiser that is this cell.
        paper: The paper's name for the cell when it has one (e.g. ``"AdamQLR"``), else ``""``.
        variant: ``""`` for a cell of the balanced design; for an extra row (:data:`EXTRA_CELLS`)
            what it changes in the cell of the same factors, e.g. ``"heldout-rho"``.
    """

    direction: str
    rule: str
    damping: str
    optimiser: str
    paper: str = ""
    variant: str = ""

    @property
    def label(self) -> str:
        """The cell's name on figures, e.g. ``"Adam · α* · adaptive λ"``."""
        label = f"{self.direction} · {_RULE_WORDS[self.rule]} · {_DAMPING_WORDS[self.damping]}"
        return f"{label} · {_VARIANT_WORDS[self.variant]}" if self.variant else label

    @property
    def key(self) -> str:
        """A short identifier, e.g. ``"adam/alpha/adaptive"``."""
        key = f"{self.direction.lower()}/{self.rule}/{self.damping}"
        return f"{key}/{self.variant}" if self.variant else key


def _quadratic_cells(direction: str, prefix: str, paper: dict[str, str]) -> list[Cell]:
    return [
        Cell(
            direction,
            rule,
            damping,
            f"{prefix}-{rule}-{damping}",
            paper.get(f"{rule}/{damping}", ""),
        )
        for rule in ("alpha", "alpha-mom")
        for damping in DAMPINGS
    ]


#: Every cell that makes sense, one registered optimiser each.
CELLS: tuple[Cell, ...] = (
    Cell("SGD", "constant", "none", "sgd", "SGD Minimal"),
    *_quadratic_cells("SGD", "sgd", {"alpha/adaptive": "SGDQLR"}),
    Cell("Adam", "constant", "none", "adam", "Adam"),
    *_quadratic_cells(
        "Adam", "adam", {"alpha/adaptive": "AdamQLR", "alpha/none": "AdamQLR (Undamped)"}
    ),
    *(
        Cell(
            "K-FAC",
            rule,
            damping,
            f"kfac-{'const' if rule == 'constant' else rule}-{damping}",
            {"constant/fixed": "K-FAC (Unadaptive)", "alpha-mom/adaptive": "K-FAC"}.get(
                f"{rule}/{damping}", ""
            ),
        )
        for rule in RULES
        for damping in DAMPINGS
    ),
)

#: Rows beyond the balanced design, each beside the cell of the same factors.
EXTRA_CELLS: tuple[Cell, ...] = (
    Cell("Adam", "alpha", "adaptive", "adamqlr-heldout", variant="heldout-rho"),
)

#: The combinations left out, with the reason.
EXCLUDED: dict[tuple[str, str, str], str] = {
    (direction, "constant", damping): (
        f"a constant learning rate on the {direction} direction never uses λ: the damping enters "
        "only the quadratic model that the constant rule does not build, so a fixed or adaptive "
        "λ would change nothing (the cell equals the undamped one)"
    )
    for direction in ("SGD", "Adam")
    for damping in ("fixed", "adaptive")
}


def cell(direction: str, rule: str, damping: str) -> Cell:
    """Return the cell of the factorial with these factors.

    Raises:
        ValueError: For an unknown factor, or a combination in :data:`EXCLUDED` (the message
            says why it is left out).
    """
    for name, value, options in (
        ("direction", direction, DIRECTIONS),
        ("rule", rule, RULES),
        ("damping", damping, DAMPINGS),
    ):
        if value not in options:
            raise ValueError(f"invalid {name} {value!r}; expected one of {list(options)}")
    if (direction, rule, damping) in EXCLUDED:
        raise ValueError(
            f"no cell ({direction}, {rule}, {damping}): {EXCLUDED[(direction, rule, damping)]}"
        )
    for c in CELLS:
        if (c.direction, c.rule, c.damping) == (direction, rule, damping):
            return c
    raise AssertionError("unreachable: every combination is a cell or excluded")
