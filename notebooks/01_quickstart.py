# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (adamqlr)
#     language: python
#     name: adamqlr
# ---

# %% [markdown]
# # Quickstart: training with AdamQLR
#
# This page trains a small network with AdamQLR and looks at what the optimiser does at every
# step: the loss, the step size $\alpha$ it chooses, and its {term}`damping` $\lambda$. It is the
# shortest path from `pip install` to a working training loop, and a preview of the quantities
# the later chapters derive.
#
# ## One step of AdamQLR
#
# AdamQLR {cite:p}`clarke24a` keeps Adam's update direction
# $d = \hat m / (\sqrt{\hat v} + \epsilon)$ {cite:p}`kingma2015adam` but throws away Adam's
# learning rate. Instead it chooses how far to move along $d$ with two heuristics from K-FAC
# {cite:p}`martens2015kfac`. At the parameters $\theta$, with the mini-batch loss $f$, its
# gradient $g$ and a {term}`curvature matrix` $C$ (by default the
# {term}`generalised Gauss-Newton matrix <GGN>`), the {term}`quadratic model` of the loss is
#
# $$
# M(\delta) = f(\theta) + g^\top \delta + \tfrac12\, \delta^\top (C + \lambda I)\, \delta .
# $$ (eq-quickstart-model)
#
# Moving along the direction, $\delta = -\alpha d$, the model is smallest at the step size
#
# $$
# \alpha = \frac{g^\top d}{d^\top C d + \lambda \lVert d \rVert^2} ,
# $$ (eq-quickstart-alpha)
#
# which costs one Jacobian-vector product per step, because only the scalar $d^\top C d$ is
# needed. After the step, one more forward pass on the same mini-batch gives the
# {term}`reduction ratio`, the actual change of the loss over the change the model predicted,
#
# $$
# \rho = \frac{f(\theta - \alpha d) - f(\theta)}{M(-\alpha d) - M(0)} ,
# $$ (eq-quickstart-rho)
#
# and the {term}`Levenberg-Marquardt <Levenberg-Marquardt damping>` rule adapts the damping:
#
# $$
# \lambda \leftarrow \begin{cases}
#   \omega_\mathrm{dec}\, \lambda & \text{if } \rho > 3/4 \text{ (the model was trustworthy)},\\
#   \omega_\mathrm{inc}\, \lambda & \text{if } \rho < 1/4 \text{ (it was not)},\\
#   \lambda & \text{otherwise.}
# \end{cases}
# $$ (eq-quickstart-damping)
#
# The untuned defaults are $\lambda_0 = 10^{-3}$, $\omega_\mathrm{dec} = 1/2$,
# $\omega_\mathrm{inc} = 2$, with $\lambda$ kept above $10^{-8}$. The notation is collected on the
# {doc}`notation` page.
#
# ## Parameters
#
# The cell below is the notebook's `parameters` cell: the book's runner sets `profile` to `smoke`
# (seconds, for the tests), `quick` (this page; well under a minute on a laptop CPU) or `paper`
# (a longer run; this toy problem has no counterpart in the paper).

# %% tags=["parameters"]
profile = "quick"
seed = 0

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from myst_nb import glue

from adamqlr import AdamQLR
from adamqlr.book.demo import accuracy, mlp, spirals
from adamqlr.plots import plot_traces, set_theme
from adamqlr.plots.tables import format_table
from adamqlr.results.provenance import computation_text

set_theme()
# The network is tiny: one thread is fastest, and it does not slow down when other processes
# share the CPU (with several threads, waiting for each other then dominates).
torch.set_num_threads(1)

SETTINGS = {
    "smoke": {"n_train": 300, "steps": 25, "batch_size": 100},
    "quick": {"n_train": 4000, "steps": 1000, "batch_size": 256},
    "paper": {"n_train": 20000, "steps": 3000, "batch_size": 256},
}
if profile not in SETTINGS:
    raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(SETTINGS)}")
settings = SETTINGS[profile]
settings

# %% [markdown]
# ## A small problem: three interleaved spirals
#
# The data are synthetic: points on three spiral arms in the plane, each arm one class, with
# noise on the angle (`adamqlr.book.demo.spirals`). No straight line separates the arms; a
# perceptron with two hidden layers of 64 tanh units can. A held-out set drawn with another seed
# measures generalisation.

# %%
spiral = {"classes": 3, "turns": 1.25, "noise": 0.2}
x_train, y_train = spirals(settings["n_train"], seed=seed, **spiral)
x_test, y_test = spirals(2000, seed=seed + 1, **spiral)
x_train.shape, x_test.shape

# %% [markdown]
# ## Training
#
# AdamQLR is a `torch.optim.Optimizer`, but its `step` takes the mini-batch: it needs the data
# to evaluate the curvature term and the reduction ratio, so it does the forward and backward
# passes itself and returns a record of what it did (a `StepStats`). For comparison, the same
# network, initialisation and mini-batches are also trained with Adam at PyTorch's default
# learning rate $10^{-3}$. That learning rate is not tuned here, so the comparison shows only how
# far AdamQLR's automatic choice is from Adam's default, not which optimiser is better; the
# experiment chapters compare tuned optimisers.

# %%
def train(label: str) -> tuple[pd.DataFrame, torch.nn.Module]:
    """Train a fresh network with the named optimiser; return one row per step, and the network."""
    model = mlp([2, 64, 64, 3], seed=seed)
    if label == "AdamQLR":
        optimiser = AdamQLR(model, loss="cross_entropy")  # the paper's untuned defaults
    else:
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = torch.Generator().manual_seed(seed)  # same mini-batches for every optimiser
    rows = []
    for _ in range(settings["steps"]):
        index = torch.randint(0, len(x_train), (settings["batch_size"],), generator=batches)
        inputs, targets = x_train[index], y_train[index]
        if isinstance(optimiser, AdamQLR):
            rows.append(optimiser.step(inputs, targets).as_dict())
        else:
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            optimiser.step()
            rows.append({"loss": loss.item(), "lr": 1e-3, "damping": math.nan, "rho": math.nan})
    frame = pd.DataFrame(rows)
    frame.insert(0, "iteration", np.arange(len(frame)))
    frame.insert(0, "optimiser", label)
    return frame, model


runs, models = {}, {}
for label in ("AdamQLR", "Adam (lr 1e-3)"):
    runs[label], models[label] = train(label)
history = pd.concat(runs.values(), ignore_index=True)

# %% [markdown]
# ## What the optimiser did
#
# {numref}`fig-quickstart-traces` shows, for every step, the loss on the mini-batch before the
# step, the step size $\alpha$ of {eq}`eq-quickstart-alpha`, the damping $\lambda$ after the
# update {eq}`eq-quickstart-damping`, and the reduction ratio $\rho$ of
# {eq}`eq-quickstart-rho`. Adam's step size is its constant learning rate, and it has no damping
# and no reduction ratio.

# %% mystnb={"figure": {"name": "fig-quickstart-traces", "caption": "Training traces on the spirals problem (synthetic data): AdamQLR with the paper's untuned hyperparameters, and Adam with learning rate $10^{-3}$, from the same initialisation on the same mini-batches. Top: mini-batch loss, and the size of the step $|\\alpha|$ (black triangles mark steps with $\\alpha < 0$); bottom: damping $\\lambda$ and reduction ratio $\\rho$ (shaded: $1/4 \\le \\rho \\le 3/4$, where the damping is left unchanged; the axis is cut to the central 96 % of the values). Made by: {glue:text}`qs_made`."}}
glue(
    "qs_made",
    computation_text(
        f"one AdamQLR run and one Adam run of {settings['steps']} steps (batch size "
        f"{settings['batch_size']}) on {settings['n_train']} spiral points, seed {seed}",
        profile,
    ),
    display=False,
)
plot_traces(history, hue="optimiser")
plt.show()

# %% [markdown]
# The numbers behind the figure: the loss averaged over the last 50 steps, the accuracy on the
# training and held-out points, the median step size, how often the reduction ratio fell in each
# band of {eq}`eq-quickstart-damping`, and the first step at which the damping reached its floor
# $10^{-8}$.

# %%
def summary(frame: pd.DataFrame, model: torch.nn.Module) -> dict[str, float]:
    rho = frame["rho"].dropna()
    floor = frame.index[frame["damping"] <= 1e-8]
    return {
        "final loss (last 50 steps)": frame["loss"].tail(50).mean(),
        "train accuracy": accuracy(model, x_train, y_train),
        "held-out accuracy": accuracy(model, x_test, y_test),
        "median step size |alpha|": frame["lr"].abs().median(),
        "steps with alpha < 0": int((frame["lr"] < 0).sum()),
        "rho > 3/4 (share)": (rho > 0.75).mean() if len(rho) else math.nan,
        "rho < 1/4 (share)": (rho < 0.25).mean() if len(rho) else math.nan,
        "first step at damping floor": int(floor[0]) if len(floor) else math.nan,
    }


table = pd.DataFrame({label: summary(runs[label], models[label]) for label in runs})
format_table(table.rename(index={  # the symbols as formulas; numbers to 4 significant digits
    "median step size |alpha|": r"median step size $|\alpha|$",
    "steps with alpha < 0": r"steps with $\alpha < 0$",
    "rho > 3/4 (share)": r"$\rho > 3/4$ (share)",
    "rho < 1/4 (share)": r"$\rho < 1/4$ (share)",
}))  # fmt: skip

# %% [markdown]
# Where each network puts its class boundaries, over the held-out points, is shown in
# {numref}`fig-quickstart-regions`.

# %% mystnb={"figure": {"name": "fig-quickstart-regions", "caption": "Predicted class regions after training, with the held-out points (synthetic spirals data). Left: AdamQLR (untuned hyperparameters); right: Adam with learning rate $10^{-3}$. Made by: {glue:text}`qs_made`."}}
grid = torch.linspace(-1.25, 1.25, 200)
gx, gy = torch.meshgrid(grid, grid, indexing="xy")
points = torch.stack([gx.flatten(), gy.flatten()], dim=1)
colours = sns.color_palette("colorblind", n_colors=3)  # one colour per class
fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2), sharex=True, sharey=True)
for ax, (label, model) in zip(axes, models.items()):
    with torch.no_grad():
        regions = model(points).argmax(dim=1).reshape(gx.shape)
    ax.contourf(gx, gy, regions, levels=[-0.5, 0.5, 1.5, 2.5], colors=colours, alpha=0.3)
    ax.scatter(x_test[:, 0], x_test[:, 1], c=[colours[int(k)] for k in y_test], s=4)
    ax.set_title(label)
    ax.set_aspect("equal")
plt.show()

# %% [markdown]
# ## What the figures say
#
# - **The quadratic model is mostly trustworthy here, so the damping falls to its floor.** In
#   {numref}`fig-quickstart-traces` the reduction ratio $\rho$ is close to 1 on most steps: the
#   loss falls by about as much as the damped quadratic model {eq}`eq-quickstart-model` predicts.
#   The rule {eq}`eq-quickstart-damping` therefore halves $\lambda$ step after step, from
#   $10^{-3}$ to the floor $10^{-8}$ within the first few dozen steps (the table gives the step),
#   and after that the damping plays almost no part in {eq}`eq-quickstart-alpha`. The steps with
#   $\rho < 1/4$ push it up briefly, and it falls back. Whether the model is as trustworthy on
#   the paper's tasks is a question for the experiment chapters.
# - **The step size is chosen afresh at every step, and is often negative.** $|\alpha|$ ranges
#   over more than two orders of magnitude, and its median is an order of magnitude above Adam's
#   default learning rate. A negative $\alpha$ happens when Adam's momentum points against the
#   current mini-batch gradient ($g^\top d < 0$ in {eq}`eq-quickstart-alpha`): the step then goes
#   backwards along $d$, which is still downhill for the quadratic model.
# - **The loss is not monotone.** Steps with a tiny predicted change can give wild ratios, and a
#   step can overshoot, so that the mini-batch loss jumps before it recovers. On this problem, AdamQLR
#   with its untuned hyperparameters reaches a much lower loss than Adam at its *untuned* default
#   learning rate in the same number of steps, and its class regions in
#   {numref}`fig-quickstart-regions` follow the spiral arms. That says only that a step size
#   chosen automatically can beat an untuned learning rate on a toy problem; the experiment
#   chapters compare optimisers against tuned baselines and against wall-clock time, as the paper
#   does.
#
# To rerun this page yourself, see {doc}`rerun`.
