"""The book's figures: one seaborn theme (:mod:`adamqlr.plots.theme`) and the figure types.

- :func:`set_theme`, :func:`palette`: the look shared by every figure;
- :func:`plot_traces`: loss, step size, damping and reduction-ratio traces of a run.
"""

from adamqlr.plots.theme import palette, set_theme
from adamqlr.plots.traces import plot_traces, traces_frame

__all__ = ["palette", "plot_traces", "set_theme", "traces_frame"]
