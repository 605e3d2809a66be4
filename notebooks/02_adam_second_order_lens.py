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
# (ch-adam-lens)=
# # Adam as a diagonal second-order method
#
# **Question.** The paper's starting point is to read Adam {cite:p}`kingma2015adam` as an
# approximate second-order method {cite:p}`clarke24a`. In what sense is it one? Which curvature
# does it use, what role does its constant $\epsilon$ play, and why is the learning rate $\eta$
# then the piece that has to be tuned by hand, and the piece AdamQLR replaces?
#
# The notation is that of the {doc}`notation` page.

# %% tags=["parameters"]
profile = "quick"

# %%
import math

import numpy as np
import pandas as pd
import torch
from myst_nb import glue

from adamqlr import AdamQLR
from adamqlr.algorithm import adam_direction
from adamqlr.curvature import ggn_quadratic
from adamqlr.lens.adam import (
    AdamLensConfig,
    adam_lens_run,
    adam_moments,
    rescaled_updates,
    unit_groups,
)
from adamqlr.lens.bootstrap import bootstrap_correlations
from adamqlr.lens.diagonals import (
    enumerate_squared_batch_gradient,
    expected_squared_batch_gradient,
    ggn_diagonal,
    gradient_moments,
)
from adamqlr.lens.training import batch_stream, fashion_mnist_setup
from adamqlr.losses import CrossEntropyLoss
from adamqlr.plots import set_theme
from adamqlr.plots.derivations import plot_adam_lens
from adamqlr.plots.tables import format_table
from adamqlr.results.provenance import computation_text
from adamqlr.testing import flat_params, per_example_grads

set_theme()
config = AdamLensConfig.for_profile(profile)
task, data, _ = fashion_mnist_setup(profile)
loss = CrossEntropyLoss()
print(f"profile {profile!r}: {config}")
print(f"{data.meta['dataset']}: {len(data.train)} training images")

# %% [markdown]
# ## Adam's step as a damped Newton step
#
# Adam keeps exponential moving averages of the mini-batch gradient $g_t$ and of its elementwise
# square, corrects their bias towards zero, and divides one by the square root of the other:
#
# $$
# \begin{aligned}
# m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
# \hat m_t &= m_t / (1 - \beta_1^t), \\
# v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t \odot g_t, &
# \hat v_t &= v_t / (1 - \beta_2^t), \\
# \theta_t &= \theta_{t-1} - \eta\; \hat m_t \oslash \left(\sqrt{\hat v_t} + \epsilon\right).
# \end{aligned}
# $$ (eq-al-adam)
#
# A damped Newton step, with a curvature matrix $C$ and a damping $\lambda$, is
#
# $$
# \theta_t = \theta_{t-1} - \left(C + \lambda I\right)^{-1} g_t .
# $$ (eq-al-newton)
#
# Writing the elementwise division in {eq}`eq-al-adam` as a diagonal matrix puts Adam in the same
# form,
#
# $$
# \theta_t = \theta_{t-1} - \eta \left(\operatorname{diag}\big(\sqrt{\hat v_t}\big)
#   + \epsilon I\right)^{-1} \hat m_t ,
# $$ (eq-al-lens)
#
# with three differences from {eq}`eq-al-newton`: the curvature is the diagonal matrix
# $C_\text{Adam} = \operatorname{diag}(\sqrt{\hat v_t})$; the damping is $\epsilon$, a constant
# ($10^{-8}$) that is never adapted; and the gradient is replaced by its moving average $\hat m_t$,
# then scaled by $\eta$. AdamQLR keeps the direction $d_t = \hat m_t \oslash (\sqrt{\hat v_t} +
# \epsilon)$ and replaces $\eta$ (see {ref}`ch-step-size`).
#
# The first check reads $\hat m$ and $\hat v$ out of `torch.optim.Adam`'s state and confirms that
# the step it took is {eq}`eq-al-lens`, on real Fashion-MNIST batches in float64. The direction is
# computed by `adamqlr.algorithm.adam_direction`, the library's one definition of $d_t$, against
# which the `AdamQLR` optimiser is tested.

# %%
model64 = task.make_model(0, profile).double()
adam = torch.optim.Adam(model64.parameters(), lr=1e-3)
batches64 = batch_stream(data.train, 50, seed=1, dtype=torch.float64)
for step in range(1, 6):
    x, t = next(batches64)
    before = flat_params(model64).vector.clone()
    adam.zero_grad()
    loss.value(model64(x), t).backward()
    adam.step()
    moments = adam_moments(adam)
    taken = flat_params(model64).vector - before
    predicted = -1e-3 * adam_direction(moments["m_hat"], moments["v_hat"], eps=1e-8)  # eq-al-lens
    assert torch.allclose(taken, predicted, rtol=1e-9, atol=1e-15), step
print("torch.optim.Adam's steps are eq-al-lens")

# %% [markdown]
# ## What $\hat v$ estimates
#
# $\hat v_t$ averages squared *mini-batch* gradients. Let the training set have $N$ examples with
# per-example gradients $g_n$, mean $\bar g$ and second moment
# $\operatorname{diag} F_\text{emp} = \frac1N \sum_n g_n \odot g_n$, the diagonal of the empirical
# Fisher {eq}`eq-cp-empirical`. The gradient of a batch $\mathcal{B}$ of $B$ distinct examples,
# drawn uniformly, is a sample mean, and the variance of a sample mean drawn without replacement
# from a finite population gives, elementwise,
#
# $$
# \mathbb{E}_\mathcal{B}\left[g_\mathcal{B} \odot g_\mathcal{B}\right]
#   = \bar g \odot \bar g + \frac{N - B}{B (N - 1)}
#     \left(\operatorname{diag} F_\text{emp} - \bar g \odot \bar g\right)
#   \;\approx\; \bar g \odot \bar g + \frac{1}{B}\operatorname{diag} F_\text{emp}
#   \quad (N \gg B).
# $$ (eq-al-expectation)
#
# So, at fixed parameters, $\hat v$ estimates the squared mean gradient plus $1/B$ times the
# diagonal of the empirical Fisher; when the gradient noise dominates the mean (most of training),
# $\hat v \approx \operatorname{diag} F_\text{emp} / B$. Adam's "curvature" is thus the square root
# of a scaled diagonal of the *empirical* Fisher, which is neither the Fisher nor the GGN
# {cite:p}`kunstner2019limitations` ({ref}`ch-curvature-products`). The check enumerates every one of
# the $\binom{10}{3} = 120$ batches of 3 from 10 real examples and compares the average of
# $g_\mathcal{B} \odot g_\mathcal{B}$ with {eq}`eq-al-expectation`.

# %%
pool_x, pool_y = data.train.inputs[:10].double(), data.train.targets[:10]
per_example = per_example_grads(model64, pool_x, pool_y, loss)
mean, second = per_example.mean(0), per_example.pow(2).mean(0)
exact = enumerate_squared_batch_gradient(per_example, 3)
formula = expected_squared_batch_gradient(mean, second, n=10, batch_size=3)
assert torch.allclose(exact, formula, rtol=1e-10, atol=1e-20), "eq-al-expectation"
print("eq-al-expectation holds over all", math.comb(10, 3), "batches")

# %% [markdown]
# ## Adam's $\hat v$ beside the exact diagonals during training
#
# Now train the paper's Fashion-MNIST network (784-50-10, 39,760 parameters) with Adam at its
# untuned settings ($\eta = 10^{-3}$, $B = 50$), and at a few steps compare $\hat v_t$, coordinate
# by coordinate, with three exact quantities at the current parameters, computed over a reference
# set of training images: the expectation {eq}`eq-al-expectation`, the diagonal of the empirical
# Fisher, and the diagonal of the GGN $G$ (the Fisher, {eq}`eq-cp-fisher`). The package computes
# the diagonals layer by layer from per-example back-propagated vectors, and both routes are
# checked below against `torch.func` per-example gradients and against the library's
# matrix-free $e_i^\top G e_i$.

# %%
ref_x, ref_y = data.train.inputs[:64].double(), data.train.targets[:64]
for method_pair in [("layerwise", "generic")]:
    fast = gradient_moments(model64, ref_x, ref_y, loss, method="layerwise")
    slow = gradient_moments(model64, ref_x, ref_y, loss, method="generic")
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-18) for a, b in zip(fast, slow))
    g_fast = ggn_diagonal(model64, ref_x, loss, method="layerwise")
    g_slow = ggn_diagonal(model64, ref_x, loss, method="generic")
    assert torch.allclose(g_fast, g_slow, rtol=1e-9, atol=1e-18)
fp = flat_params(model64)
params = fp.unflatten(fp.vector)
rng = np.random.default_rng(0)
for i in rng.choice(fp.vector.numel(), size=5, replace=False):
    e_i = torch.zeros_like(fp.vector)
    e_i[i] = 1.0
    q = ggn_quadratic(model64, params, fp.unflatten(e_i), ref_x, ref_y, loss).item()
    assert np.isclose(q, g_fast[i].item(), rtol=1e-9, atol=1e-18), i
print("layer-wise diagonals = torch.func per-example diagonals = e_i^T G e_i")

# %%
result = adam_lens_run(config, profile)
summary = result.summary()
# The table's headers as formulas (the columns keep their plain names for the code below).
SYMBOLS = {
    "E[g_B^2]": r"$\mathbb{E}[g_\mathcal{B}^2]$",
    "diag F_emp": r"$\operatorname{diag} F_\text{emp}$",
    "diag G": r"$\operatorname{diag} G$",
}
format_table(summary, headers={
    **{f"corr(log v_hat, log {name})": rf"corr. of $\log \hat v$ with $\log {symbol[1:]}"
       for name, symbol in SYMBOLS.items()},
    "median v_hat / E[g_B^2]": r"median $\hat v / \mathbb{E}[g_\mathcal{B}^2]$",
    "median B v_hat / diag F_emp": r"median $B \hat v / \operatorname{diag} F_\text{emp}$",
})  # fmt: skip

# %%
last = summary.iloc[-1]
glue("al_corr_expected", float(last["corr(log v_hat, log E[g_B^2])"]), display=False)
glue("al_corr_femp", float(last["corr(log v_hat, log diag F_emp)"]), display=False)
glue("al_corr_ggn", float(last["corr(log v_hat, log diag G)"]), display=False)
glue("al_ratio_expected", float(last["median v_hat / E[g_B^2]"]), display=False)
glue("al_ratio_femp", float(last["median B v_hat / diag F_emp"]), display=False)
glue("al_last_step", int(summary.index[-1]), display=False)
glue("al_reference", int(result.meta["reference examples"]), display=False)
diag_last = result.diagonals[result.diagonals["step"] == summary.index[-1]]
noise_share = float(np.median(diag_last["f_emp"] / config.batch_size / diag_last["expected_sq"]))
glue("al_noise_share", noise_share, display=False)
tiny = float((np.sqrt(diag_last["v_hat"]) < config.eps).mean())
glue("al_tiny_share", tiny, display=False)

# %% [markdown]
# How much of the difference between the three correlations is signal? The cell below puts
# bootstrap intervals (95%, percentile) on the last checkpoint's correlations in two ways:
# resampling coordinates as if they were independent, and resampling whole *units* (a cluster
# bootstrap; a coordinate's unit is the neuron its weight or bias feeds, so the 784 weights into one
# hidden unit, which share its back-propagated error, move together). Every resample is shared by
# the three correlations, so the paired differences get intervals too.

# %% tags=["hide-input"]
names = {"E[g_B^2]": "expected_sq", "diag F_emp": "f_emp", "diag G": "ggn"}
cols = ["v_hat", *names.values()]
positive = (diag_last[cols] > 0).all(axis=1).to_numpy()
logs = np.log10(diag_last.loc[positive, cols].to_numpy())
units = unit_groups(model64)
assert len(units) == len(diag_last) == fp.vector.numel()
others = {label: logs[:, k + 1] for k, label in enumerate(names)}
boot = {}
for how, groups in (("coordinates", None), ("units", units[positive])):
    corr, diff = bootstrap_correlations(logs[:, 0], others, resamples=1000, seed=0, groups=groups)
    boot[how] = (corr, diff)
    # the point estimates are the table's
    assert np.allclose(corr["corr"], [last[f"corr(log v_hat, log {n})"] for n in names])
intervals = pd.concat(
    {how: c.rename(columns={"corr": "corr(log v_hat, log X)"}) for how, (c, _) in boot.items()},
    names=["resampled", "X"],
)
differences = pd.concat({how: diff for how, (_, diff) in boot.items()}, names=["resampled", None])
corr_units = boot["units"][0]
glue("al_n_units", int(len(np.unique(units))), display=False)
for label, key in (("E[g_B^2]", "expected"), ("diag F_emp", "femp"), ("diag G", "ggn")):
    for how in ("coordinates", "units"):
        row = boot[how][0].loc[label]
        glue(f"al_ci_{key}_{how}", f"[{row['low']:.2f}, {row['high']:.2f}]", display=False)


def overlap(corr, a, b):
    return corr.loc[a, "low"] <= corr.loc[b, "high"] and corr.loc[b, "low"] <= corr.loc[a, "high"]


def ggn_verdict(corr):
    """Whether the GGN's interval overlaps the empirical Fisher's and the expectation's."""
    if overlap(corr, "diag G", "diag F_emp") or overlap(corr, "diag G", "E[g_B^2]"):
        return "overlaps the other two: taken one at a time, the intervals do not separate them"
    side = "above" if corr.loc["diag G", "corr"] > corr.loc["diag F_emp", "corr"] else "below"
    return f"lies wholly {side} both of the other two"


glue("al_verdict_coordinates", ggn_verdict(boot["coordinates"][0]), display=False)
glue("al_verdict_units", ggn_verdict(corr_units), display=False)
pair = differences.loc["units"].set_index(["first", "second"]).loc[("diag F_emp", "diag G")]
low, high = -pair["high"], -pair["low"]  # corr(G) - corr(F_emp)
glue("al_diff_ggn_femp_units", f"[{low:.3f}, {high:.3f}]", display=False)
if low > 0 or high < 0:
    paired = (
        f"which excludes zero: on the same resamples the GGN's diagonal correlates with Adam's "
        f"second moment {'better' if low > 0 else 'worse'} than the empirical Fisher's, by "
        f"{-pair['difference']:.2f}, a small difference beside the correlations themselves"
    )
else:
    paired = "which includes zero: the data do not separate the two"
glue("al_paired_verdict", paired, display=False)
print("paired, units:", paired)
print("coordinates:", ggn_verdict(boot["coordinates"][0]))
print("units:", ggn_verdict(corr_units))
format_table(
    intervals.rename(index=SYMBOLS),
    intervals={"corr(log v_hat, log X)": ("low", "high")},
    headers={"corr(log v_hat, log X)": r"corr. of $\log \hat v$ with $\log X$ [95 % interval]"},
)

# %% mystnb={"figure": {"caption": "Adam's $\\hat v$ on the Fashion-MNIST MLP (Adam, $\\eta = 10^{-3}$, $B = 50$), one point per parameter (hexagons count them, log colour scale), against the expected squared mini-batch gradient {eq}`eq-al-expectation`, the diagonal of the empirical Fisher (dashed: $\\hat v = \\mathrm{diag}\\,F_\\mathrm{emp}/B$) and the diagonal of the GGN, all exact at the current parameters over {glue:text}`al_reference` training images. Top: early in training; bottom: the last checkpoint. Made by: {glue:text}`al_made`.", "name": "fig-al-diagonals"}}
made = (
    f"one Adam run on Fashion-MNIST ({config.steps} steps, batch size {config.batch_size}, "
    f"learning rate {config.lr:g}, seed {config.seed}), diagonals over {config.reference_size} "
    f"training examples at steps {', '.join(map(str, config.checkpoints))}"
)
glue("al_made", computation_text(made, profile), display=False)
fig = plot_adam_lens(result.diagonals, batch_size=config.batch_size)

# %% [markdown]
# {numref}`fig-al-diagonals` and the table show what {eq}`eq-al-expectation` predicts, with the
# noise of a running average on top. At step {glue:text}`al_last_step` the median of
# $\hat v / \mathbb{E}[g_\mathcal{B}^2]$ is {glue:text}`al_ratio_expected:.2f` and the median of
# $B \hat v / \operatorname{diag} F_\text{emp}$ is {glue:text}`al_ratio_femp:.2f`: $\hat v$ sits
# close to, and somewhat above, the diagonal of the empirical Fisher divided by the batch size (it
# still remembers the larger gradients of earlier steps, over about $1/(1 - \beta_2) = 1000$
# steps). The noise term $\operatorname{diag} F_\text{emp}/B$ makes up a median
# {glue:text}`al_noise_share:.0%` of $\mathbb{E}[g_\mathcal{B}^2]$. Coordinate by coordinate the
# correlation of $\log \hat v$ with the log of the expectation is {glue:text}`al_corr_expected:.2f`,
# with the empirical Fisher {glue:text}`al_corr_femp:.2f`, and with the GGN
# {glue:text}`al_corr_ggn:.2f`. The differences are small, and the bootstrap decides how much to
# read into them. Treating the coordinates as independent, the 95% intervals are
# {glue:text}`al_ci_expected_coordinates`, {glue:text}`al_ci_femp_coordinates` and
# {glue:text}`al_ci_ggn_coordinates`, and the GGN's {glue:text}`al_verdict_coordinates`. But the
# coordinates are not independent: resampling the {glue:text}`al_n_units` units instead widens
# the intervals to {glue:text}`al_ci_expected_units`, {glue:text}`al_ci_femp_units` and
# {glue:text}`al_ci_ggn_units`, and the GGN's interval {glue:text}`al_verdict_units`. Because the
# three correlations share $\hat v$ and every resample, their paired difference is measured more
# finely than each alone: the GGN's minus the empirical Fisher's has the interval
# {glue:text}`al_diff_ggn_femp_units` over units, {glue:text}`al_paired_verdict`. What matters
# more is the size: all three correlations are moderate, so $\hat v$ ranks
# the parameters roughly as the true curvature does, but it is a noisy estimate of a different
# matrix, on a different scale (the GGN has units of loss per parameter squared, $\hat v$ of a
# squared gradient). This is one network, one seed and one checkpoint.
#
# ## Why a square root
#
# If $\hat v$ estimates a diagonal Fisher, a Newton-like step would divide by it, $\hat m \oslash
# \hat v$; Adam divides by its square root. Units say why. With $\theta$ in some unit $[\theta]$
# and the loss in $[f]$, a gradient has units $[f]/[\theta]$, and so has $\sqrt{\hat v}$: the
# direction $d = \hat m \oslash (\sqrt{\hat v} + \epsilon)$ is a pure number in every coordinate.
# It is unchanged when the loss is multiplied by a constant $c > 0$ ($g \to c\,g$,
# $\hat v \to c^2 \hat v$) and when one coordinate's gradient is scaled by $s_i$ (a
# reparametrisation $\theta_i = s_i \phi_i$), as long as $\epsilon$ is negligible. Without the
# root, $\hat m \oslash \hat v$ has units $[\theta]/[f]$, the wrong ones for a step in
# $\theta$: multiplying the loss by $c$ would *shrink* the step by $c$, where a Newton step
# $(C + \lambda I)^{-1} g$ with a true curvature ($[f]/[\theta]^2$, scaling with $c$ like $g$) is
# unchanged. The empirical Fisher, a second moment of gradients, has units $([f]/[\theta])^2$;
# it is a curvature only where it happens to approximate the Fisher, which
# {cite:t}`kunstner2019limitations` show is rarer than often assumed: preconditioning with it can
# distort the step badly even on simple problems. The square root sidesteps the question of units
# by giving up on curvature altogether, at the price that $d$ carries none, and the step's
# scale must come from elsewhere (the next section).
#
# The square root also fixes how large $d$'s entries can be. Writing
# $\hat m_i / \sqrt{\hat v_i} = \operatorname{sign}(\hat m_i)\, \lvert \hat m_i \rvert /
# \sqrt{\hat v_i}$, with $\hat v_i$ about the mean squared gradient and $\hat m_i$ about its
# mean, the second factor is about $1 / \sqrt{1 + \sigma_i^2 / \mu_i^2}$ for a coordinate whose
# gradient has mean $\mu_i$ and variance $\sigma_i^2$. {cite:t}`balles2018dissecting` read Adam
# this way: a sign descent, damped per coordinate by the relative variance of its gradient. Where
# the noise is small Adam *is* sign descent, $d \approx \operatorname{sign}(g)$; its first step is
# exactly that ({ref}`ex-al-first-step`); where the noise dominates, as it does here for most
# coordinates (a median noise share of {glue:text}`al_noise_share:.0%` above), the entries of $d$ shrink
# towards zero in proportion to the gradient's signal-to-noise ratio. Neither reading is the
# Newton step {eq}`eq-al-newton` with $C = \operatorname{diag} F_\text{emp}$; {eq}`eq-al-lens` is
# the *form* of a damped Newton step, with a matrix in it that has the units of a gradient.
#
# ## Why the learning rate has to be tuned
#
# Units make the last point precise. Reparametrise the network as $\theta = s\,\phi$ for a
# constant $s > 0$: the function is the same, only the coordinates are stretched. In $\phi$, the
# gradient, the second moment and any curvature matrix become
#
# $$
# g_\phi = s\, g, \qquad \hat v_\phi = s^2\, \hat v, \qquad C_\phi = s^2\, C .
# $$ (eq-al-rescale)
#
# With $\epsilon_\phi = s\,\epsilon$, Adam's direction is unchanged, $d_\phi = d$, because it is a
# ratio of a gradient to the square root of a squared gradient: it has no units. Adam's update in
# $\theta$ is then $s\,(-\eta\, d)$, so the same $\eta$ moves the network $s$ times further: $\eta$
# must carry the units of $\theta$, and its right value depends on the parametrisation, the
# architecture and the data. A Newton step {eq}`eq-al-newton` has the right units by construction,
# $\theta$-step $= s\,(s^2 C)^{-1} s\, g = C^{-1} g$. So does AdamQLR's step size
# {eq}`eq-alpha-star`: with $\lambda_\phi = s^2 \lambda$,
#
# $$
# \alpha_\phi = \frac{g_\phi^\top d}{d^\top C_\phi\, d + \lambda_\phi \lVert d \rVert^2}
#   = \frac{s\, g^\top d}{s^2 \left(d^\top C d + \lambda \lVert d \rVert^2\right)}
#   = \frac{\alpha}{s},
# \qquad s\,\alpha_\phi\, d = \alpha\, d .
# $$ (eq-al-invariance)
#
# AdamQLR supplies the missing units from the curvature along $d$, every step. The check first
# confirms $d_\phi = d$ on the moments of the first check ($\hat m_\phi = s\, \hat m$,
# $\hat v_\phi = s^2\, \hat v$), then trains the same network directly and with $s = 10$ (with
# $\epsilon$ and the damping scaled as above): AdamQLR's updates agree to rounding over several
# steps, Adam's first update is exactly $s$ times larger.

# %%
scale = 10.0
make = lambda: task.make_model(0, profile).double()  # noqa: E731
stream = batch_stream(data.train, 50, seed=2, dtype=torch.float64)
few = [next(stream) for _ in range(3)]
m_hat, v_hat = moments["m_hat"], moments["v_hat"]
d_phi = adam_direction(scale * m_hat, scale**2 * v_hat, eps=1e-8 * scale)
d = adam_direction(m_hat, v_hat, eps=1e-8)
assert torch.allclose(d_phi, d, rtol=1e-12, atol=0), "d_phi = d (eq-al-rescale)"


def adamqlr_scaled(model, s):
    return AdamQLR(
        model, loss="cross_entropy", eps=1e-8 * s, initial_damping=1e-3 * s**2,
        damping_bounds=(1e-8 * s**2, math.inf),
    )


direct, rescaled = rescaled_updates(make, adamqlr_scaled, few, scale, loss)
assert torch.allclose(direct, rescaled, rtol=1e-8, atol=1e-14), "eq-al-invariance"
direct, rescaled = rescaled_updates(
    make, lambda m, s: torch.optim.Adam(m.parameters(), lr=1e-3, eps=1e-8 * s), few[:1], scale, loss
)
assert torch.allclose(rescaled, scale * direct, rtol=1e-8, atol=1e-14), "Adam scales with s"
print(f"AdamQLR: same updates under theta = {scale:g} phi; Adam: {scale:g} times larger")

# %% [markdown]
# ## What it means for AdamQLR
#
# * Adam already has the *shape* of a damped Newton step {eq}`eq-al-lens`, with a cheap diagonal
#   curvature. What it lacks is the *scale*: its direction has no units, so $\eta$ must supply
#   them, and a good $\eta$ changes with the problem. AdamQLR keeps the shape and computes the
#   scale from the curvature along the direction {eq}`eq-al-invariance`, which is why its untuned
#   setting can work across problems at all.
# * The curvature inside Adam is the square root of a (moving, $1/B$-scaled) diagonal empirical
#   Fisher {eq}`eq-al-expectation`. Its ranking of the parameters agrees only loosely with the
#   GGN's ({numref}`fig-al-diagonals`), and AdamQLR does not correct that: it only rescales the
#   whole direction. Any error in Adam's *relative* scaling of the coordinates stays.
# * $\epsilon$ acts as a damping of $\operatorname{diag}(\sqrt{\hat v})$, but a fixed and tiny one:
#   at the last checkpoint {glue:text}`al_tiny_share:.1%` of the coordinates have
#   $\sqrt{\hat v} < \epsilon$. AdamQLR leaves $\epsilon$ alone and adds an adaptive damping
#   $\lambda$ on the *step size* instead ({ref}`ch-damping`).
#
# **Agreement with the paper.** The reading of Adam as a step preconditioned by
# $\operatorname{diag}(\sqrt{\hat v}) + \epsilon I$, with $\epsilon$ as a fixed damping and $\eta$ as
# the hand-tuned piece that AdamQLR replaces, is the paper's abstract's and the public reviews'
# account of it {cite:p}`clarke2023openreview`; how the paper's body justifies the square root is
# not something this book could check ({doc}`sources`).
# The identity {eq}`eq-al-expectation` and the measurements above are ours: they say that the
# "curvature" being square-rooted is an empirical-Fisher diagonal divided by the batch size, and
# that it correlates with the GGN's diagonal only moderately on this network.
#
# ## Exercises
#
# ```{exercise}
# :label: ex-al-variance
# Derive {eq}`eq-al-expectation`. Hint: write $g_\mathcal{B} = \frac1B \sum_n \xi_n g_n$ with
# indicators $\xi_n \in \{0, 1\}$, $\sum_n \xi_n = B$, and compute $\mathbb{E}[\xi_n]$ and
# $\mathbb{E}[\xi_n \xi_m]$ for $n \ne m$.
# ```
#
# ```{solution} ex-al-variance
# :class: dropdown
# $\mathbb{E}[\xi_n] = B/N$ and, for $n \neq m$, $\mathbb{E}[\xi_n \xi_m] = \frac{B (B - 1)}{N (N -
# 1)}$. Elementwise,
# $\mathbb{E}[g_\mathcal{B}^2] = \frac{1}{B^2}\big(\sum_n \mathbb{E}[\xi_n] g_n^2 + \sum_{n \neq m}
# \mathbb{E}[\xi_n \xi_m] g_n g_m\big)$. With $\sum_n g_n^2 = N \operatorname{diag}F_\text{emp}$ and
# $\sum_{n \ne m} g_n g_m = N^2 \bar g^2 - N \operatorname{diag}F_\text{emp}$ this is
# $\frac{1}{B}\operatorname{diag}F_\text{emp} + \frac{B - 1}{B (N - 1)}\,(N \bar g^2 -
# \operatorname{diag}F_\text{emp})$, which rearranges to
# $\bar g^2 + \frac{N - B}{B(N - 1)}(\operatorname{diag}F_\text{emp} - \bar g^2)$. For $B = 1$ it
# is $\operatorname{diag}F_\text{emp}$, for $B = N$ it is $\bar g^2$, as it must be.
# ```
#
# ```{exercise}
# :label: ex-al-first-step
# Show that Adam's first direction is $d_1 = g_1 \oslash (\lvert g_1 \rvert + \epsilon)$, nearly
# the sign of the gradient, whatever $\beta_1, \beta_2$. What step size does AdamQLR then choose,
# in terms of $\sigma = \operatorname{sign}(g_1)$?
# ```
#
# ```{solution} ex-al-first-step
# :class: dropdown
# With $m_0 = v_0 = 0$, $m_1 = (1 - \beta_1) g_1$ and $v_1 = (1 - \beta_2) g_1^2$, so the bias
# corrections give exactly $\hat m_1 = g_1$ and $\hat v_1 = g_1^2$, and
# $d_1 = g_1 / (\lvert g_1\rvert + \epsilon) \approx \sigma$ wherever $\lvert g_1 \rvert \gg
# \epsilon$. AdamQLR's step is then
# $\alpha_1 \approx \lVert g_1 \rVert_1 / (\sigma^\top C \sigma + \lambda_0 P)$ with $P$ the number
# of parameters: a sign-descent step whose length is set by the curvature along the sign vector.
# Adam's own first step moves every parameter by about $\eta$, whatever the curvature.
# ```
