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
# (ch-step-size)=
# # The step size from a damped quadratic model
#
# **Question.** AdamQLR drops Adam's learning rate and chooses how far to move along Adam's
# direction $d$ at every step. Where does its formula come from, what does it predict, and how
# well does the model behind it describe the real loss of a network on a real mini-batch?
#
# The notation is that of the {doc}`notation` page; the chapter {ref}`ch-adam-lens` explains why a step size
# with the right units is needed at all.

# %% tags=["parameters"]
profile = "quick"

# %%
import copy

import numpy as np
import pandas as pd
import torch
from myst_nb import glue

from adamqlr import AdamQLR
from adamqlr.heuristics import predicted_change, reduction_ratio, step_size
from adamqlr.lens.line import StepSizeConfig, probe_step, step_size_study
from adamqlr.plots import set_theme
from adamqlr.plots.derivations import plot_line_models
from adamqlr.plots.tables import format_table
from adamqlr.results.provenance import computation_text

set_theme()
config = StepSizeConfig.for_profile(profile)
print(f"profile {profile!r}: {config}")

# %% [markdown]
# ## The model and its minimiser
#
# At the parameters $\theta$, with the mini-batch loss $f$, its gradient $g$, a curvature matrix
# $C$ and a damping $\lambda \ge 0$, the damped quadratic model of the loss after a step $\delta$
# is
#
# $$
# M(\delta) = f + g^\top \delta + \tfrac12\, \delta^\top (C + \lambda I)\, \delta .
# $$ (eq-ss-model)
#
# K-FAC {cite:p}`martens2015kfac` minimises such a model over a two-dimensional subspace; AdamQLR
# restricts it to Adam's direction, $\delta = -\alpha d$, which leaves a parabola in the step
# size,
#
# $$
# m(\alpha) = M(-\alpha d) = f - \alpha\, g^\top d + \tfrac12\, \alpha^2
#   \left(d^\top C d + \lambda \lVert d \rVert^2\right).
# $$ (eq-ss-line)
#
# When its curvature $d^\top C d + \lambda \lVert d \rVert^2$ is positive, setting
# $m'(\alpha) = 0$ gives the step size
#
# $$
# \alpha^* = \frac{g^\top d}{d^\top C d + \lambda \lVert d \rVert^2} ,
# $$ (eq-alpha-star)
#
# and the decrease the model predicts for it,
#
# $$
# m(\alpha^*) - f = -\frac{(g^\top d)^2}{2\left(d^\top C d + \lambda \lVert d \rVert^2\right)}
#   = -\tfrac12\, \alpha^*\, g^\top d \;\le\; 0 .
# $$ (eq-ss-decrease)
#
# Three remarks. (i) The linear term uses the raw mini-batch gradient $g$, not Adam's momentum
# $\hat m$; momentum enters only through $d$. (ii) If $g^\top d < 0$ (momentum pointing against
# the current gradient), $\alpha^* < 0$ and the step goes along $+d$; {eq}`eq-ss-decrease` still
# promises a decrease. (iii) The damping only enlarges the denominator: $\lambda$ shortens the step
# without changing its direction, which the chapter {ref}`ch-damping` reads as a trust region.
#
# How good can the model be? Expanding the loss along the line to second order,
#
# $$
# f(\theta - \alpha d) = f - \alpha\, g^\top d + \tfrac12\, \alpha^2\, d^\top H d + O(\alpha^3),
# $$ (eq-ss-taylor)
#
# so with $C = H$ and $\lambda = 0$ the model is the Taylor expansion; with the GGN it differs by
# the residual term $d^\top R d$ of {eq}`eq-cp-hessian-split`.
#
# ## Two real steps
#
# The experiment trains the Fashion-MNIST MLP with untuned AdamQLR (GGN curvature, batch
# {glue:text}`ss_batch`, float64) and stops just before two steps, the first one and step
# {glue:text}`ss_late`. At each it forms $g$ and $d$ from the optimiser's state with the formulas of
# {eq}`eq-al-adam` as `adamqlr.algorithm` writes them (not by calling the optimiser), computes $d^\top G d$ and $d^\top H d$ with
# the matrix-free products of the chapter {ref}`ch-curvature-products`, and evaluates the true loss along the
# line. Then the optimiser takes the step on the same batch.

# %%
study = step_size_study(config, profile)
first, late = sorted(study.probes)
glue("ss_batch", int(study.batches[first][0].shape[0]), display=False)
glue("ss_late", int(late), display=False)
rows = []
for step, probe in study.probes.items():
    rows.append(
        {
            "step": step,
            "f": probe.f0,
            "g^T d": probe.grad_dot_dir,
            "||d||^2": probe.sq_norm,
            "d^T G d": probe.q_ggn,
            "d^T H d": probe.q_hessian,
            "lambda": probe.damping,
            "alpha* (eq-alpha-star)": probe.alpha_star("ggn", probe.damping),
            "alpha taken by AdamQLR": study.stats[step]["lr"],
        }
    )
table = pd.DataFrame(rows).set_index("step")
format_table(table, headers={
    "f": "$f$", "g^T d": r"$g^\top d$", "||d||^2": r"$\|d\|^2$", "d^T G d": r"$d^\top G d$",
    "d^T H d": r"$d^\top H d$", "lambda": r"$\lambda$",
    "alpha* (eq-alpha-star)": r"$\alpha^*$ computed here",
    "alpha taken by AdamQLR": r"$\alpha$ taken by AdamQLR",
})  # fmt: skip

# %% [markdown]
# The checks: the step AdamQLR took is {eq}`eq-alpha-star` with the curvature and the damping it
# had; the library's `step_size` and `predicted_change` are {eq}`eq-alpha-star` and
# {eq}`eq-ss-decrease`; $m'(\alpha^*) = 0$ by automatic differentiation; and a central finite
# difference of the true loss along the line reproduces the slope $-g^\top d$ of
# {eq}`eq-ss-taylor`.

# %%
for step, probe in study.probes.items():
    stats = study.stats[step]
    lam = stats["damping_used"]
    assert lam == probe.damping
    a_star = probe.alpha_star("ggn", lam)
    assert np.isclose(stats["lr"], a_star, rtol=1e-10), "AdamQLR takes eq-alpha-star"
    assert np.isclose(stats["curvature"], probe.q_ggn, rtol=1e-10)
    assert np.isclose(stats["grad_dot_dir"], probe.grad_dot_dir, rtol=1e-10)
    lib = step_size(probe.grad_dot_dir, probe.q_ggn, lam, probe.sq_norm)
    assert np.isclose(lib, a_star, rtol=1e-12)
    decrease = -(probe.grad_dot_dir**2) / (2 * (probe.q_ggn + lam * probe.sq_norm))
    assert np.isclose(decrease, -0.5 * a_star * probe.grad_dot_dir, rtol=1e-12)
    assert np.isclose(
        predicted_change(a_star, probe.grad_dot_dir, probe.q_ggn, lam, probe.sq_norm), decrease
    ), "eq-ss-decrease"
    assert np.isclose(stats["predicted_change"], decrease, rtol=1e-10)
    alpha = torch.tensor(a_star, dtype=torch.float64, requires_grad=True)
    m = torch.as_tensor(probe.f0) - alpha * probe.grad_dot_dir + 0.5 * alpha**2 * (
        probe.q_ggn + lam * probe.sq_norm
    )
    (slope,) = torch.autograd.grad(m, alpha)
    assert abs(slope.item()) < 1e-10 * abs(probe.grad_dot_dir), "m'(alpha*) = 0"
    assert np.isclose(probe.fd_slope, -probe.grad_dot_dir, rtol=1e-3), "eq-ss-taylor, slope"
print("eq-alpha-star, eq-ss-decrease and the slope of eq-ss-taylor hold at steps", sorted(study.probes))

# %% [markdown]
# The curvature term of {eq}`eq-ss-taylor` needs more care on this network. Its ReLUs make the
# loss along any line *piecewise* smooth: automatic differentiation returns the curvature between
# the kinks (ReLU's second derivative is zero almost everywhere), while a finite difference over
# $[-h, h]$ also sees the kinks that fall inside, and with thousands of units per batch some
# always do. The table shows the two side by side. On a smooth copy of the same network (tanh in
# place of ReLU, same weights, a fresh AdamQLR) the finite differences match $d^\top H d$ to the
# precision of the difference, which is the identity itself.

# %%
kinks = pd.DataFrame(
    {
        "d^T H d (autodiff)": [p.q_hessian for p in study.probes.values()],
        "finite difference": [p.fd_curvature for p in study.probes.values()],
    },
    index=pd.Index(list(study.probes), name="step"),
)
kinks["relative gap"] = kinks["finite difference"] / kinks["d^T H d (autodiff)"] - 1
glue("ss_kink_gap", float(kinks["relative gap"].abs().max()), display=False)
smooth = copy.deepcopy(study.optimizer.model)
relus = [i for i, layer in enumerate(smooth) if isinstance(layer, torch.nn.ReLU)]
for i in relus:
    smooth[i] = torch.nn.Tanh()
smooth_opt = AdamQLR(smooth, loss="cross_entropy")
for step in range(3):
    x, t = study.batches[first]
    probe = probe_step(smooth_opt, x, t)
    assert np.isclose(probe.fd_slope, -probe.grad_dot_dir, rtol=1e-5), "eq-ss-taylor, slope"
    assert np.isclose(probe.fd_curvature, probe.q_hessian, rtol=1e-4), "eq-ss-taylor, curvature"
    smooth_opt.step(x, t)
print("smooth network: finite differences = -g^T d and d^T H d at 3 steps")
format_table(kinks, headers={"d^T H d (autodiff)": r"$d^\top H d$ (autodiff)"})

# %% tags=["hide-input"]
figure_rows = {}
for step, probe in study.probes.items():
    unit = probe.q_ggn / probe.sq_norm
    figure_rows[f"step {step}"] = (
        probe,
        {
            r"$\lambda = 0$": 0.0,
            rf"$\lambda_t = {probe.damping:.0e}$": probe.damping,
            r"$\lambda = d^\top G d / \|d\|^2$": unit,
            r"$\lambda = 9\, d^\top G d / \|d\|^2$": 9 * unit,
        },
    )
early, later = study.probes[first], study.probes[late]
a_early = early.alpha_star("ggn", early.damping)
true_early = float(study.stats[first]["trial_loss"])  # the loss after the step taken
pred_early = float(early.model(np.array([a_early]), "ggn", early.damping)[0]) - early.f0
glue("ss_pred_early", pred_early, display=False)
glue("ss_true_early", true_early - early.f0, display=False)
a_late = later.alpha_star("ggn", later.damping)
true_late = float(study.stats[late]["trial_loss"])  # the loss after the step taken
pred_late = float(later.model(np.array([a_late]), "ggn", later.damping)[0]) - later.f0
glue("ss_pred_late", pred_late, display=False)
glue("ss_true_late", true_late - later.f0, display=False)
glue("ss_ratio_hg_late", later.q_hessian / later.q_ggn, display=False)


def damping_verdict(step: int, probe) -> tuple[float, str]:
    """rho of the step AdamQLR took, and what its Levenberg-Marquardt rule did with it."""
    stats = study.stats[step]
    assert np.isclose(stats["loss"], probe.f0, rtol=1e-12)
    rho = reduction_ratio(stats["trial_loss"] - stats["loss"], stats["predicted_change"])
    assert np.isclose(rho, stats["rho"], rtol=1e-12)
    rule = study.optimizer.damping_rule
    lam, new = stats["damping_used"], rule.update(stats["damping_used"], rho)
    assert new == stats["damping"], "the rule applied is the library's"
    if new > lam:
        verdict = (
            f"below the rule's lower threshold {rule.low:g}: the model promised more than the "
            f"loss delivered, and the rule raises the damping by a factor {new / lam:g}"
        )
    elif new < lam:
        verdict = (
            f"above the rule's upper threshold {rule.high:g}: the model is trusted, and the rule "
            f"lowers the damping by a factor {new / lam:g}"
        )
    elif rho > rule.high:
        verdict = (
            f"above the rule's upper threshold {rule.high:g}, but the damping is already at its "
            f"lower bound {rule.lower:g} and stays there"
        )
    elif rho < rule.low:
        verdict = (
            f"below the rule's lower threshold {rule.low:g}, but the damping is already at its "
            f"upper bound {rule.upper:g} and stays there"
        )
    else:
        verdict = (
            f"between the rule's thresholds {rule.low:g} and {rule.high:g}: the rule leaves the "
            "damping unchanged"
        )
    return rho, verdict


for name, step, probe in (("early", first, early), ("late", late, later)):
    rho, verdict = damping_verdict(step, probe)
    glue(f"ss_rho_{name}", rho, display=False)
    glue(f"ss_verdict_{name}", verdict, display=False)
    print(f"step {step}: rho = {rho:.3f}; {verdict}")
# where the true loss along the line is lowest: the grid's lowest point, refined by the parabola
# through it and its two neighbours
i_min = int(np.argmin(early.losses))
assert 0 < i_min < len(early.alphas) - 1, "the true line minimum lies inside the probed range"
curve = np.polyfit(early.alphas[i_min - 1 : i_min + 2], early.losses[i_min - 1 : i_min + 2], 2)
line_min = float(-curve[1] / (2 * curve[0]) / a_early)
grid_step = float(early.alphas[1] - early.alphas[0]) / a_early
glue("ss_line_min_early", line_min, display=False)
glue("ss_grid_step", grid_step, display=False)
if abs(line_min - 1.0) <= 0.01:
    line_verdict = "the model's minimiser sits on the true line minimum, within 1%"
elif line_min > 1.0:
    line_verdict = f"the model's minimiser stops {1 - 1 / line_min:.0%} short of it"
else:
    line_verdict = f"the model's minimiser overshoots it by {1 / line_min - 1:.0%}"
glue("ss_line_verdict_early", line_verdict, display=False)
print(f"step {first}: true line minimum at {line_min:.3f} alpha* (grid step {grid_step:.3f}); "
      f"{line_verdict}")  # fmt: skip

# %% mystnb={"figure": {"caption": "The mini-batch loss along AdamQLR's direction (black) and the damped quadratic models {eq}`eq-ss-line` for four dampings, with the GGN (left) and the Hessian (right), at the first step (top) and after a short warm-up (bottom); dots and dotted lines mark each model's minimiser {eq}`eq-alpha-star`. The damping values are the one AdamQLR used ($\\lambda_t$), none, and the values that double or multiply by ten the model's curvature along $d$. Untuned AdamQLR on the Fashion-MNIST MLP, float64. Made by: {glue:text}`ss_made`.", "name": "fig-ss-models"}}
made = (
    f"untuned AdamQLR on Fashion-MNIST at batch size {config.batch_size}, probed at steps "
    f"{first} and {late}, seed {config.seed}"
)
glue("ss_made", computation_text(made, profile), display=False)
fig = plot_line_models(figure_rows)

# %% [markdown]
# ## What the figure shows
#
# At the first step ({numref}`fig-ss-models`, top) Adam's direction is nearly the sign of the
# gradient ({ref}`ex-al-first-step`). With the damping AdamQLR used, the model predicts a change
# of {glue:text}`ss_pred_early:.3f` at its minimiser and the loss actually changes by
# {glue:text}`ss_true_early:.3f`: the reduction ratio (chapter {ref}`ch-damping`) is
# $\rho = ${glue:text}`ss_rho_early:.2f` (the loss delivers that fraction of the promised
# decrease), {glue:text}`ss_verdict_early`. Along the line, the true loss is lowest at
# {glue:text}`ss_line_min_early:.2f` $\alpha^*$ (a parabola through the lowest three points of the
# probe's grid, spacing {glue:text}`ss_grid_step:.2f` $\alpha^*$):
# {glue:text}`ss_line_verdict_early`.
# The damping is there for the steps where the model is a poor guide to the step length, and $\rho$
# is how the optimiser tells them apart. A few steps later (bottom) the model fits the loss
# closely around its minimiser (predicted {glue:text}`ss_pred_late:.4f`, actual
# {glue:text}`ss_true_late:.4f`; $\rho = ${glue:text}`ss_rho_late:.2f`,
# {glue:text}`ss_verdict_late`), and the GGN and the Hessian agree along $d$
# ($d^\top H d / d^\top G d = ${glue:text}`ss_ratio_hg_late:.3f`), even though the two matrices
# differ ({ref}`ch-curvature-products`).
#
# ## What it means for AdamQLR
#
# * The step size is the exact minimiser of a one-dimensional model, so it costs only the scalar
#   $d^\top C d$ (one Jacobian-vector product) and carries the units Adam's $\eta$ lacks
#   (see {eq}`eq-al-invariance`).
# * The model is only as good as its curvature and its locality. Along Adam's direction on this
#   network, the GGN model is accurate after a few steps, so the undamped step is close to an exact
#   line search on the mini-batch. For ReLU networks "the Hessian" is the curvature between
#   kinks; at the scale of one step the kinks add curvature it does not see (up to
#   {glue:text}`ss_kink_gap:.0%` over $[-h, h]$ here), one more reason the model is only
#   trusted through $\rho$. Wherever the loss is far from quadratic along $d$ the model can
#   promise more or less than the loss delivers; $\rho$ measures which, and the damping
#   corrects the step length accordingly.
# * The line search is on the *mini-batch*: $\alpha^*$ is the best step for the batch it was
#   computed on, which is not the best step for the expected loss. This is a limitation the
#   paper's untuned results inherit at small batch sizes.
#
# **Agreement with the paper.** The formula {eq}`eq-alpha-star`, the raw gradient in the linear
# term, the absence of a sign constraint and of any separate learning rate are exactly what the
# authors' code does {cite:p}`clarke2024code` (its `learning_rate_from_fisher`); how the paper's
# body derives and presents it is not restated here ({doc}`sources`). The measurements in
# {numref}`fig-ss-models` are ours.
#
# ## Exercises
#
# ```{exercise}
# :label: ex-ss-quadratic
# Let $f(\theta) = \tfrac12 \theta^\top A \theta - b^\top \theta$ with $A$ symmetric positive
# definite, and let AdamQLR use $C = H = A$ with $\lambda = 0$. Show that $\alpha^*$ is the exact
# minimiser of $f$ along $d$ for *any* direction $d$. What happens when $A$ has a negative
# eigenvalue and $d$ points along its eigenvector?
# ```
#
# ```{solution} ex-ss-quadratic
# :class: dropdown
# $f(\theta - \alpha d) = f(\theta) - \alpha (A\theta - b)^\top d + \tfrac12 \alpha^2 d^\top A d$
# exactly, with $g = A\theta - b$: the model {eq}`eq-ss-line` *is* the function on the line, so its
# minimiser is the exact line minimiser. If $d$ is an eigenvector with eigenvalue $\mu < 0$, the
# parabola opens downwards, $d^\top C d + \lambda\lVert d\rVert^2 = (\mu + \lambda)\lVert d\rVert^2
# < 0$ for $\lambda < -\mu$, and {eq}`eq-alpha-star` gives a *maximiser*. The official code takes
# that step anyway; `adamqlr` rejects it and raises $\lambda$ above $-\mu$ (see
# {ref}`ch-rosenbrock`, where the Hessian of the Rosenbrock function does exactly this).
# ```
#
# ```{exercise}
# :label: ex-ss-amplification
# The paper's sensitivity study multiplies the step size by an "update amplification" $k$, taking
# $\alpha = k\,\alpha^*$. Show that the model then predicts the change $k(2 - k)$ times that of
# {eq}`eq-ss-decrease`. Which $k$ still promise a decrease, and what does $k = 2$ predict?
# ```
#
# ```{solution} ex-ss-amplification
# :class: dropdown
# Write $Q = d^\top C d + \lambda \lVert d\rVert^2$, so $\alpha^* = g^\top d / Q$. Then
# $m(k\alpha^*) - f = -k \alpha^* g^\top d + \tfrac12 k^2 \alpha^{*2} Q
# = -k \frac{(g^\top d)^2}{Q} + \tfrac12 k^2 \frac{(g^\top d)^2}{Q} = k(2 - k) \cdot
# \left(-\frac{(g^\top d)^2}{2Q}\right)$.
# Every $0 < k < 2$ promises a decrease, largest at $k = 1$; $k = 2$ lands on the far side of the
# parabola at the height of the start and predicts no change, and $k > 2$ predicts an increase.
# The factor is symmetric about $k = 1$: $k = 1/2$ and $k = 3/2$ promise the same decrease
# ($3/4$ of the optimum).
# ```
