"""Panel titles of the comparison figures wrap instead of running into their neighbours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from adamqlr.plots import set_theme  # noqa: E402
from adamqlr.plots.experiments import panel_title, plot_comparison  # noqa: E402


def test_short_titles_stay_on_one_line_long_ones_wrap() -> None:
    assert panel_title("UCI Energy", "test loss", 4.0) == "UCI Energy: test loss"
    long = panel_title("Fashion-MNIST, tuned on validation loss", "training loss (mini-batch)", 3.5)
    assert long.split("\n")[0] == "Fashion-MNIST, tuned on validation loss:"
    assert long.split("\n")[-1] == "training loss (mini-batch)"
    narrow = panel_title("Fashion-MNIST, tuned on validation loss", "test loss", 1.0)
    assert len(narrow.split("\n")) > 2
    with pytest.raises(ValueError, match="width must be positive, got 0"):
        panel_title("a", "b", 0)


def _run(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 10.0, 40)
    loss = np.exp(-t / 4) * (1 + 0.05 * rng.random(40))
    return pd.DataFrame({"step": np.arange(40), "time": t, "train_loss": loss, "test_loss": loss})


def test_no_two_panel_titles_overlap() -> None:
    set_theme()
    runs = {
        f"{task}, tuned on {what} loss": {"Adam": [_run(0), _run(1)], "AdamQLR": [_run(2)]}
        for task in ("UCI Energy", "Fashion-MNIST")
        for what in ("training", "validation")
    }
    fig = plot_comparison(runs, ("train_loss", "test_loss"), panel_size=(4.2, 2.6))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(boxes) == 8
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
        assert a.x0 >= 0 and a.x1 <= fig.bbox.width
    plt.close(fig)
