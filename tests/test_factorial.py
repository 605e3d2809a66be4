"""The factorial design: every combination is a cell or excluded with a reason, never both."""

from __future__ import annotations

import itertools

import pytest

from adamqlr.studies.factorial import (
    CELLS,
    DAMPINGS,
    DIRECTIONS,
    EXCLUDED,
    EXTRA_CELLS,
    RULES,
    cell,
)


def test_every_combination_is_a_cell_or_excluded_exactly_once():
    combos = set(itertools.product(DIRECTIONS, RULES, DAMPINGS))
    cells = [(c.direction, c.rule, c.damping) for c in CELLS]
    assert len(cells) == len(set(cells))
    assert set(cells) | set(EXCLUDED) == combos
    assert not set(cells) & set(EXCLUDED)
    assert len(CELLS) == 23 and len(EXCLUDED) == 4


def test_cells_name_distinct_optimisers_and_the_papers_own_cells():
    names = [c.optimiser for c in CELLS]
    assert len(names) == len(set(names))
    paper = {c.paper: c.key for c in CELLS if c.paper}
    assert paper == {
        "SGD Minimal": "sgd/constant/none",
        "SGDQLR": "sgd/alpha/adaptive",
        "Adam": "adam/constant/none",
        "AdamQLR": "adam/alpha/adaptive",
        "AdamQLR (Undamped)": "adam/alpha/none",
        "K-FAC (Unadaptive)": "k-fac/constant/fixed",
        "K-FAC": "k-fac/alpha-mom/adaptive",
    }
    assert cell("Adam", "alpha", "adaptive").label == "Adam · α* · adaptive λ"


@pytest.mark.parametrize(
    "args, message",
    [
        (("Adam", "constant", "adaptive"), "never uses λ"),
        (("Lion", "alpha", "none"), "invalid direction 'Lion'"),
        (("SGD", "line-search", "none"), "invalid rule 'line-search'"),
        (("SGD", "alpha", "trust"), "invalid damping 'trust'"),
    ],
)
def test_cell_refuses_unknown_or_excluded_combinations(args, message):
    with pytest.raises(ValueError, match=message):
        cell(*args)


def test_the_study_tunes_every_cell_with_the_same_budget():
    from adamqlr.experiment.optimisers import get_optimiser
    from adamqlr.studies import get_study

    paper = get_study("factorial", "paper")
    assert len(paper.arms) == 3 * (len(CELLS) + len(EXTRA_CELLS))
    assert {a.search.n_trials for a in paper.arms} == {64}
    assert {len(a.seeds) for a in paper.arms} == {20}
    assert {a.base.task for a in paper.arms} == {"uci-energy", "uci-protein", "fashion-mnist"}
    for c in CELLS:
        get_optimiser(c.optimiser)  # every cell is a registered optimiser
        arm = paper.arm(f"fashion-mnist/factorial/{c.key}")
        assert arm.label == c.label and "batch_size" in arm.search.space
    quick = get_study("factorial", "quick")
    assert {a.search.n_trials for a in quick.arms} == {4}
    assert len(quick.arms) == len(CELLS) + len(EXTRA_CELLS)
    for c in EXTRA_CELLS:  # the extra rows: tuned with the same budget as every cell
        get_optimiser(c.optimiser)
        arm = paper.arm(f"uci-protein/factorial/{c.key}")
        assert arm.label == c.label and arm.search.n_trials == 64 and len(arm.seeds) == 20


def test_the_heldout_row_is_adamqlr_with_rho_on_the_next_batch_beside_its_cell():
    from adamqlr.experiment.optimisers import get_optimiser

    (row,) = EXTRA_CELLS
    base = cell(row.direction, row.rule, row.damping)
    assert base.paper == "AdamQLR" and row.key == "adam/alpha/adaptive/heldout-rho"
    assert row.label == "Adam · α* · adaptive λ · held-out ρ"
    assert row.key not in {c.key for c in CELLS} and row.optimiser not in {
        c.optimiser for c in CELLS
    }
    heldout, adamqlr = get_optimiser(row.optimiser), get_optimiser(base.optimiser)
    assert dict(heldout.defaults) == {**adamqlr.defaults, "rho_data": "next"}
