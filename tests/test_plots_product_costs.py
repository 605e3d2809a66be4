"""The product-cost figure lays out whatever the timings: a wide spread measured on a busy
machine must not push a label beyond the axes (constrained layout then collapsed the axes and
warned, which the strict book build refuses)."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from adamqlr.lens.products import ProductCost  # noqa: E402
from adamqlr.plots.derivations import plot_product_costs  # noqa: E402


def _cost(name: str, seconds: float, spread: float) -> ProductCost:
    return ProductCost(name, seconds, spread, seconds / 1e-3, 5)


def test_a_huge_spread_keeps_every_label_inside_the_axes_without_a_layout_warning():
    costs = [
        _cost("forward", 1e-3, 1e-5),
        _cost("gradient", 2e-3, 2e-5),
        _cost("GGN product", 3e-3, 0.4),  # a 400x spread: one repeat hit a busy machine
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_product_costs(costs)
        fig.canvas.draw()
    ax = fig.axes[0]
    right = ax.get_xlim()[1]
    assert all(t.get_position()[0] < right for t in ax.texts)
    width = ax.get_position().width
    assert width > 0.3, f"the axes collapsed to {width:.2f} of the figure"
    plt.close(fig)
