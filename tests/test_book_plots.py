"""The book's plotting pieces (theme, traces) and the quickstart's toy problem."""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from adamqlr import AdamQLR
from adamqlr.book.demo import accuracy, mlp, spirals
from adamqlr.plots import palette, plot_traces, set_theme, traces_frame


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _stats(steps: int = 12):
    x, y = spirals(120, seed=0)
    model = mlp([2, 8, 3], seed=0)
    opt = AdamQLR(model, loss="cross_entropy")
    return [opt.step(x, y) for _ in range(steps)]


def test_traces_from_step_stats() -> None:
    stats = _stats()
    frame = traces_frame(stats)
    assert list(frame["iteration"]) == list(range(len(stats)))
    assert frame["damping"].iloc[-1] == stats[-1].damping
    fig = plot_traces(stats)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in axes] == [
        "mini-batch loss",
        r"step size $|\alpha|$",
        r"damping $\lambda$",
        r"reduction ratio $\rho$",
    ]
    assert axes[0].get_yscale() == "log" and axes[2].get_yscale() == "log"
    assert axes[3].get_yscale() == "linear"
    low, high = axes[3].get_ylim()
    assert low <= 0.0 and high >= 1.0  # the band 1/4..3/4 is always in view


def test_negative_steps_rejections_and_runs() -> None:
    rows = [
        {"loss": 1.0, "lr": 0.1, "damping": 1e-3, "rho": 0.9, "accepted": True, "run": "a"},
        {"loss": 0.8, "lr": -0.05, "damping": 5e-4, "rho": 0.1, "accepted": True, "run": "a"},
        {"loss": 0.8, "lr": 0.0, "damping": 1e-3, "rho": math.nan, "accepted": False, "run": "a"},
        {
            "loss": 1.0,
            "lr": 1e-3,
            "damping": math.nan,
            "rho": math.nan,
            "accepted": True,
            "run": "b",
        },
    ]
    frame = pd.DataFrame(rows)
    frame["iteration"] = [0, 1, 2, 0]
    fig = plot_traces(frame, hue="run")
    loss_ax, lr_ax = fig.axes[0], fig.axes[1]
    markers = [c for c in lr_ax.collections if len(c.get_offsets())]
    assert any(list(c.get_offsets()[:, 0]) == [1.0] for c in markers)  # the negative step
    assert any(list(c.get_offsets()[:, 0]) == [2.0] for c in loss_ax.collections)  # rejected
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantities": ["speed"]}, "'speed'"),
        ({"quantities": []}, "at least one"),
        ({"hue": "optimiser"}, "'optimiser'"),
        ({"ncols": 0}, "ncols"),
    ],
)
def test_plot_traces_rejects_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        plot_traces([{"loss": 1.0, "lr": 0.1, "damping": 1e-3, "rho": 1.0}], **kwargs)


def test_traces_frame_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no steps"):
        traces_frame([])
    with pytest.raises(ValueError, match=r"stats\[1\]"):
        traces_frame([{"loss": 1.0}, 3.0])
    with pytest.raises(ValueError, match="no column 'rho'"):
        plot_traces([{"loss": 1.0, "lr": 0.1, "damping": 1e-3}])


def test_theme_and_palette_are_stable() -> None:
    set_theme()
    assert matplotlib.rcParams["figure.constrained_layout.use"]
    first = palette(["Adam", "AdamQLR", "my variant"])
    again = palette(["my variant", "AdamQLR"])
    assert again["my variant"] == first["my variant"] and again["AdamQLR"] == first["AdamQLR"]
    assert len(set(first.values())) == 3
    many = palette([f"run {i}" for i in range(30)])
    assert len(set(many.values())) > 20
    with pytest.raises(ValueError, match="'huge'"):
        set_theme("huge")


def test_spirals_are_deterministic_balanced_and_checked() -> None:
    x, y = spirals(301, classes=3, seed=4)
    x2, y2 = spirals(301, classes=3, seed=4)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (301, 2) and x.dtype == torch.float32
    assert sorted(torch.bincount(y).tolist()) == [100, 100, 101]
    assert float(x.norm(dim=1).max()) <= 1.0 + 1e-6
    assert not torch.equal(spirals(301, seed=5)[0], x)
    state = torch.get_rng_state()
    mlp([2, 4, 3], seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    for kwargs, message in [
        ({"n": 2}, "invalid n"),
        ({"n": 10, "classes": 1}, "invalid classes"),
        ({"n": 10, "noise": -1.0}, "invalid noise"),
        ({"n": 10, "turns": 0.0}, "invalid turns"),
    ]:
        with pytest.raises(ValueError, match=message):
            spirals(**kwargs)
    with pytest.raises(ValueError, match="invalid sizes"):
        mlp([2])


def test_a_small_mlp_learns_the_spirals() -> None:
    torch.manual_seed(0)
    x, y = spirals(600, seed=0)
    model = mlp([2, 32, 32, 3], seed=0)
    opt = AdamQLR(model, loss="cross_entropy")
    before = accuracy(model, x, y)
    for _ in range(150):
        opt.step(x, y)
    assert accuracy(model, x, y) > max(0.8, before + 0.3)
