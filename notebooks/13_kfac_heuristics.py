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
# (ch-kfac-heuristics)=
# # K-FAC's own heuristics
#
# **Question.** AdamQLR takes two heuristics from K-FAC {cite:p}`martens2015kfac`: a step size
# from a damped quadratic model, and Levenberg-Marquardt damping. K-FAC as the paper runs it, with
# kfac-jax {cite:p}`botev2022kfacjax`, does more than that on top of its Kronecker-factored
# curvature. It averages the curvature over steps. It damps the curvature blocks in a factored
# way, with an adjustment called $\pi$. It chooses a learning rate *and* a momentum from a
# two-dimensional quadratic model. And it measures the reduction ratio against the model
# *without* its damping term, unlike AdamQLR. What exactly does each of these do, which
# identities do they satisfy, and what do they amount to on a small network?
#
# The notation is that of the {doc}`notation` page and of the chapters {ref}`ch-step-size` and
# {ref}`ch-damping`. Every identity is checked against the library's K-FAC
# (`adamqlr.kfac.KFAC`) on a network small enough to hold every matrix it avoids.

# %% tags=["parameters"]
profile = "quick"

# %%
import math

import numpy as np
import pandas as pd
import torch
from myst_nb import glue

from adamqlr.kfac import pi_damped_factors
from adamqlr.lens.kfac_heuristics import (
    KFACHeuristicsConfig,
    cross_term_trace,
    damping_eigenvalues,
    kfac_heuristics_study,
    kfac_quadratic_run,
    landscape,
    pi_adjustment,
)
from adamqlr.plots import set_theme
from adamqlr.plots.kfac_heuristics import plot_kfac_traces, plot_pi_damping, plot_quadratic_plane

set_theme()
torch.set_num_threads(1)
config = KFACHeuristicsConfig.for_profile(profile)
print(f"profile {profile!r}: {config}")

# %% [markdown]
# ## One K-FAC step
#
# Write $g$ for the mini-batch gradient, $v$ for the previous update (the "velocity", zero at
# the first step) and $\lambda$ for the damping. One step of K-FAC, in kfac-jax's order, is:
#
# 1. update the moving averages of the curvature factors with this batch's statistics;
# 2. precondition the gradient with the damped, factored curvature:
#    $\Delta = \tilde F^{-1} g$;
# 3. choose the update $\delta = w_1 \Delta + w_2 v$ by minimising a damped quadratic model of the
#    loss over $w = (w_1, w_2)$; the learning rate is $-w_1$ and the momentum $w_2$;
# 4. apply it, evaluate the loss on the same batch, and adapt $\lambda$ from the reduction ratio.
#
# AdamQLR replaces step 2 by Adam's direction, step 3 by a one-dimensional model (no momentum
# coefficient), and computes step 4's ratio differently. The sections below take the four steps
# in turn. The runs train the tiny classifier of the chapter {ref}`ch-curvature-products`
# (Fashion-MNIST images average-pooled to $4 \times 4$ pixels, a 16-8-10 ReLU network with 226
# parameters, float64) with adaptive K-FAC at the paper's settings ($\lambda_0 = 1$, factor
# $0.9$, moving-average decay $0.95$, everything every step). Each seed runs twice from the same
# weights and batches: with the factor statistics K-FAC samples (the paper's setting) and with
# their exact expectation. At every step the chapter's code recomputes what the library did,
# with dense matrices and without the library's K-FAC code.

# %%
study = kfac_heuristics_study(config, profile)
trace = study.trace
sampled = trace[trace["estimation"] == "sampled"]
exact = trace[trace["estimation"] == "exact"]
print(f"{len(trace)} steps audited: {len(config.seeds)} seeds x 2 estimations x {config.steps}")

# %% [markdown]
# ## The curvature and its moving average
#
# For a dense layer with inputs $a$ (a 1 appended for the bias) and pre-activations $s$, K-FAC
# approximates the layer's block of the Fisher by a Kronecker product,
#
# $$
# F_\ell \approx A \otimes G, \qquad
# A = \frac1N \sum_n a_n a_n^\top, \qquad
# G = \frac1N \sum_n \mathbb{E}_{y \sim p(\cdot \mid x_n)}\!\left[
#   \frac{\partial \ell_n}{\partial s_n} \frac{\partial \ell_n}{\partial s_n}^{\!\top} \right]
#   = \frac1N \sum_n J_n^\top H_n J_n ,
# $$ (eq-kh-kron)
#
# with $J_n = \partial z_n / \partial s_n$ and $H_n$ the output Hessian of example $n$
# ({eq}`eq-cp-canonical`). K-FAC estimates $G$ with one target per example drawn from the
# model's predictive distribution. Neither factor is used as it comes from one batch: with
# $S_t$ the statistic of step $t$ and the decay $\beta = 0.95$, the curvature of step $t$ is the
# *normalised* moving average
#
# $$
# \bar F_t = \frac{\sum_{k=0}^{t-1} \beta^k S_{t-k}}{\sum_{k=0}^{t-1} \beta^k}
#   = \frac{\beta\, w_{t-1} \bar F_{t-1} + S_t}{w_t}, \qquad
#   w_t = \beta w_{t-1} + 1 = \frac{1 - \beta^t}{1 - \beta} .
# $$ (eq-kh-ema)
#
# The normalisation plays the role of Adam's bias correction: the first step uses $S_1$ itself,
# not $0.05\, S_1$. Asymptotically the current batch has weight $1 - \beta = 1/20$, and a batch's
# weight halves every $\ln 2 / \ln(1/\beta) \approx 13.5$ steps.
#
# The check computes $A$ and $G$ of every batch densely ({eq}`eq-kh-kron`, per-example Jacobians
# and output Hessians from `torch.func`), averages them by {eq}`eq-kh-ema` and compares the
# result with the factors the library used. With exact statistics they must agree to rounding.
# With sampled ones the difference is the sampling noise that is left after averaging.

# %%
ema_exact = float(exact["ema_error"].max())
assert ema_exact < 1e-12, ema_exact
sampled_noise = sampled.groupby("seed")["ema_error"].last()
half_life = math.log(2) / math.log(1 / 0.95)
glue("kh_ema_exact", ema_exact, display=False)
glue("kh_ema_sampled", float(sampled_noise.median()), display=False)
glue("kh_half_life", half_life, display=False)
print(f"eq-kh-ema holds to {ema_exact:.1e}; sampled factors after {config.steps} steps differ "
      f"from the exact average by {sampled_noise.median():.1%} (median over seeds)")

# %% [markdown]
# ## Factored Tikhonov damping and $\pi$
#
# Damping the block as a second-order method would, $A \otimes G + \lambda I$, destroys the
# Kronecker structure that makes the block cheap to invert. K-FAC damps the two factors instead,
# with a split $\pi > 0$ {cite:p}`martens2015kfac`:
#
# $$
# (A + \pi \sqrt{\lambda}\, I) \otimes (G + \tfrac{\sqrt{\lambda}}{\pi}\, I)
#   = A \otimes G + \lambda I + E(\pi), \qquad
#   E(\pi) = \frac{\sqrt\lambda}{\pi}\, A \otimes I + \pi \sqrt\lambda\; I \otimes G .
# $$ (eq-kh-factored)
#
# The direction is then a pair of small solves,
# $\Delta_W = (G + \tfrac{\sqrt{\lambda}}{\pi} I)^{-1} g_W (A + \pi\sqrt{\lambda} I)^{-1}$ for the
# gradient $g_W$ of the layer's weights and bias written as a matrix. The extra term $E(\pi)$ is
# positive semi-definite, so factored damping damps *more* than $\lambda I$. Its trace,
# $\operatorname{tr} E(\pi) = \sqrt\lambda\,(\operatorname{tr} A \dim G / \pi + \pi \dim A
# \operatorname{tr} G)$, is smallest at
#
# $$
# \pi^* = \sqrt{\frac{\operatorname{tr} A / \dim A}{\operatorname{tr} G / \dim G}}, \qquad
# \operatorname{tr} E(\pi^*) = 2 \sqrt{\lambda\, \operatorname{tr} A \operatorname{tr} G \dim A
#   \dim G} ,
# $$ (eq-kh-pi)
#
# which is kfac-jax's choice: the damping is split in proportion to the factors' average
# eigenvalues. Both damped matrices share the eigenvectors $u_i \otimes w_j$ of $A \otimes G$
# (eigenvalues $a_i$ of $A$, $g_j$ of $G$), and
#
# $$
# (a_i + \pi\sqrt\lambda)(g_j + \sqrt\lambda / \pi)
#   = a_i g_j + \lambda + \sqrt\lambda\,(a_i / \pi + \pi g_j) \;\ge\; a_i g_j + \lambda ,
# $$ (eq-kh-eig)
#
# so along every eigenvector the factored damping shortens the step at least as much as the exact
# damping. The ratio is close to 1 where $a_i g_j \gg \lambda$ and grows like
# $1 + \pi g_j / \sqrt\lambda$ along directions where $a_i \approx 0$.
#
# The checks: the library's damped factors are {eq}`eq-kh-factored` with {eq}`eq-kh-pi`; a scan
# over $\pi$ finds the minimum of $\operatorname{tr} E$ at $\pi^*$; {eq}`eq-kh-eig` holds for every
# eigenpair; and on every step the library's update is $w_1 \Delta + w_2 v$ with $\Delta$ from a
# *dense* solve with the Kronecker product of the damped factors (the matrix the library never
# forms).

# %%
lam = study.final_damping
for name, (a, g) in study.factors.items():
    pi = pi_adjustment(a, g)
    a_d, g_d = pi_damped_factors(a, g, lam)
    eye_a, eye_g = torch.eye(a.shape[0], dtype=a.dtype), torch.eye(g.shape[0], dtype=g.dtype)
    assert torch.allclose(a_d, a + pi * math.sqrt(lam) * eye_a, rtol=1e-12, atol=0)
    assert torch.allclose(g_d, g + math.sqrt(lam) / pi * eye_g, rtol=1e-12, atol=0)
    kron = torch.kron(a_d, g_d)
    extra = math.sqrt(lam) / pi * torch.kron(a, eye_g) + pi * math.sqrt(lam) * torch.kron(eye_a, g)
    assert torch.allclose(kron, torch.kron(a, g) + lam * torch.eye(kron.shape[0], dtype=kron.dtype) + extra,
                          rtol=1e-10, atol=1e-14), "eq-kh-factored"  # fmt: skip
    scan = np.logspace(-2, 2, 4001) * pi
    traces = [cross_term_trace(a, g, lam, p) for p in scan]
    assert abs(scan[int(np.argmin(traces))] / pi - 1) < 3e-3, "eq-kh-pi: the minimiser"
    formula = 2 * math.sqrt(lam * float(torch.trace(a) * torch.trace(g)) * a.shape[0] * g.shape[0])
    assert math.isclose(float(torch.trace(extra)), formula, rel_tol=1e-10), "eq-kh-pi: the minimum"
    for lam_check in (1e-6, 1e-3, 1.0):
        exact_eig, factored_eig = damping_eigenvalues(a, g, lam_check, pi)
        assert (factored_eig >= exact_eig * (1 - 1e-12)).all(), "eq-kh-eig"
update_error = float(trace["update_error"].max())
assert update_error < 1e-9, update_error
glue("kh_update_error", update_error, display=False)
print(f"eq-kh-factored, eq-kh-pi and eq-kh-eig hold; the library's update is w1 Delta + w2 v "
      f"with Delta from the dense solve, to {update_error:.1e} on all {len(trace)} steps")

# %%
lam_final = study.final_damping
extra_final = {
    name: cross_term_trace(a, g, lam_final, pi_adjustment(a, g)) / (lam_final * a.shape[0] * g.shape[0])
    for name, (a, g) in study.factors.items()
}
glue("kh_lambda_final", lam_final, display=False)
glue("kh_extra_final_min", min(extra_final.values()), display=False)
glue("kh_extra_final_max", max(extra_final.values()), display=False)
pi_columns = [c for c in trace.columns if c.startswith("pi_")]
glue("kh_pi_low", float(sampled[pi_columns].min().min()), display=False)
glue("kh_pi_high", float(sampled[pi_columns].max().max()), display=False)

# %% mystnb={"figure": {"caption": "Factored damping on the two layers of the tiny classifier, with the factors K-FAC had after its last step (first seed, sampled statistics). Left: the trace of the extra damping $E(\\pi)$ of {eq}`eq-kh-factored` per parameter, in units of $\\lambda$, at the run's final damping, against $\\pi$ relative to $\\pi^*$ of {eq}`eq-kh-pi` (dots). Right: the largest (thick) and median (thin) ratio of a factored-damping eigenvalue to the exact $a_i g_j + \\lambda$ ({eq}`eq-kh-eig`), against $\\lambda$, with $\\pi^*$ (solid) and $\\pi = 1$ (dashed); the dotted line is the final damping.", "name": "fig-kh-pi"}}
fig = plot_pi_damping(study.factors, study.final_damping)

# %% [markdown]
# ## Learning rate and momentum from a two-dimensional model
#
# With $V = [\Delta, v]$ and the exact curvature $C$ of the mini-batch (the GGN, which is the
# Fisher for the paper's losses), kfac-jax chooses $w$ by minimising the damped quadratic model
# of the loss change over the plane spanned by the direction and the previous update,
#
# $$
# Q_\lambda(w) = \tfrac12\, w^\top (\mathcal{A} + \lambda \mathcal{D})\, w + w^\top b, \qquad
# \mathcal{A} = V^\top C V, \quad \mathcal{D} = V^\top V, \quad b = V^\top g .
# $$ (eq-kh-model)
#
# Note the two dampings: the preconditioner's is factored, {eq}`eq-kh-factored`, but the model's
# is the exact $\lambda \lVert \delta \rVert^2 = \lambda\, w^\top \mathcal{D} w$. With
# $m = \mathcal{A} + \lambda \mathcal{D}$ (symmetric, positive definite when $\Delta$ and $v$ are
# not parallel), Cramer's rule gives the minimiser in closed form:
#
# $$
# w_1 = \frac{m_{12} b_2 - m_{22} b_1}{m_{11} m_{22} - m_{12}^2}, \qquad
# w_2 = \frac{m_{12} b_1 - m_{11} b_2}{m_{11} m_{22} - m_{12}^2}, \qquad
# Q_\lambda(w) = \tfrac12\, w^\top b = -\tfrac12\, b^\top m^{-1} b .
# $$ (eq-kh-solve)
#
# Only $\mathcal{A}$ costs anything beyond inner products: two Jacobian-vector products
# ({ref}`ch-curvature-products`). At the first step $v = 0$, the plane is a line, and kfac-jax
# sets $w_2 = 0$ and
#
# $$
# w_1 = -\frac{g^\top \Delta}{\Delta^\top C \Delta + \lambda \lVert \Delta \rVert^2} ,
# $$ (eq-kh-line)
#
# which is AdamQLR's {eq}`eq-alpha-star` with Adam's direction replaced by $\Delta$ (and
# $\alpha = -w_1$). What does the second coordinate buy? Minimising first over $w_2$ and comparing
# with the line $w_2 = 0$ (a Schur complement),
#
# $$
# Q_\lambda(w_1^\text{line}, 0) - Q_\lambda(w)
#   = \frac{\left(b_2 - m_{12} b_1 / m_{11}\right)^2}{2\left(m_{22} - m_{12}^2 / m_{11}\right)}
#   \;\ge\; 0 :
# $$ (eq-kh-gain)
#
# momentum helps the model exactly when the gradient has a component along $v$ that the line
# along $\Delta$ has not already used. Nothing constrains the sign or the size of $w_2$; in
# particular it is not the fixed $0.9$ of K-FAC (Unadaptive).
#
# The checks recompute $\mathcal{A}$ from per-example Jacobians and output Hessians, $\Delta$ from
# the dense solve, and then $w$ by {eq}`eq-kh-solve` from the stored entries, against the
# library's learning rate and momentum on every step.

# %%
def step_sq_norm(rows: pd.DataFrame) -> pd.Series:
    """``||delta||^2 = w^T D w`` from the stored entries of ``D``."""
    w1, w2 = rows["w1"], rows["w2"]
    return rows["D11"] * w1**2 + 2 * rows["D12"] * w1 * w2 + rows["D22"] * w2**2


lam_t = trace["damping_used"]
m11 = trace["A11"] + lam_t * trace["D11"]
m12 = trace["A12"] + lam_t * trace["D12"]
m22 = trace["A22"] + lam_t * trace["D22"]
det = m11 * m22 - m12**2
moving = trace["D22"] > 0
w1 = np.where(moving, (m12 * trace["b2"] - m22 * trace["b1"]) / det, -trace["b1"] / m11)
w2 = np.where(moving, (m12 * trace["b1"] - m11 * trace["b2"]) / det, 0.0)
assert np.allclose(-trace["lr"], w1, rtol=1e-9, atol=0), "eq-kh-solve: learning rate"
assert np.allclose(trace["momentum"], w2, rtol=1e-9, atol=1e-12), "eq-kh-solve: momentum"
assert (trace.loc[trace["iteration"] == 1, "momentum"] == 0).all(), "eq-kh-line: first step"
first = trace[trace["iteration"] == 1]
assert np.allclose(first["lr"], first["b1"] / (first["A11"] + first["damping_used"] * first["D11"]),
                   rtol=1e-9), "eq-kh-line"  # fmt: skip
assert np.allclose(trace["quad_damped"], 0.5 * (w1 * trace["b1"] + w2 * trace["b2"]), rtol=1e-8)
later = trace[moving]
gain = (later["b2"] - m12[moving] * later["b1"] / m11[moving]) ** 2 / (
    2 * (m22[moving] - m12[moving] ** 2 / m11[moving])
)
assert np.allclose(later["quad_line"] - later["quad_damped"], gain, rtol=1e-6, atol=1e-14), "eq-kh-gain"
print(f"eq-kh-solve, eq-kh-line and eq-kh-gain hold on all {len(trace)} steps")

# %%
mom = sampled["momentum"][sampled["iteration"] > 1]
glue("kh_mom_median", float(mom.median()), display=False)
glue("kh_mom_q05", float(mom.quantile(0.05)), display=False)
glue("kh_mom_q95", float(mom.quantile(0.95)), display=False)
glue("kh_mom_negative", float((mom < 0).mean()), display=False)
late = sampled[sampled["iteration"] > 1]
gain_predicted = ((late["quad_line"] - late["quad_damped"]) / late["quad_damped"].abs()).median()
gain_actual = ((late["change_line"] - late["change"]) / late["change"].abs()).median()
glue("kh_gain_predicted", float(gain_predicted), display=False)
glue("kh_gain_actual", float(gain_actual), display=False)
glue("kh_plane_better", float((late["change"] < late["change_line"]).mean()), display=False)
pd.DataFrame(
    {
        "momentum w2 (median)": [mom.median()],
        "momentum w2 (5%..95%)": [f"{mom.quantile(0.05):.2f} .. {mom.quantile(0.95):.2f}"],
        "steps with w2 < 0": [f"{(mom < 0).mean():.0%}"],
        "model gain of the plane over the line (median)": [f"{gain_predicted:.1%}"],
        "actual gain on the batch (median)": [f"{gain_actual:.1%}"],
    },
    index=["sampled statistics, steps 2.."],
).T

# %%
planes = []
for step, snap in sorted(study.snapshots.items()):
    lr_star = -snap.solution.w1
    grid = landscape(
        study.model, study.loss, snap, np.linspace(0.0, 2.5 * lr_star, 41), np.linspace(-1.0, 1.0, 41)
    )
    planes.append((snap, grid))
steps_shown = sorted(study.snapshots)
glue("kh_plane_early", steps_shown[0], display=False)
glue("kh_plane_late", steps_shown[-1], display=False)
glue("kh_plane_late_momentum", study.snapshots[steps_shown[-1]].solution.w2, display=False)
glue("kh_cos_max", float(trace["cos_dv"].abs().max()), display=False)

# %% mystnb={"figure": {"caption": "The plane of learning rate $-w_1$ and momentum $w_2$ at two steps of the first seed's run (sampled statistics): filled contours of the actual change of the mini-batch loss, black lines of the damped model {eq}`eq-kh-model` at the same levels. The star is the step K-FAC took ({eq}`eq-kh-solve`), the circle the minimiser along $\\Delta$ alone ({eq}`eq-kh-line`), the diamond the undamped model's minimiser (where it lies inside the window) and the cross the lowest loss on the 41 x 41 grid.", "name": "fig-kh-plane"}}
fig = plot_quadratic_plane(planes)

# %% [markdown]
# ## The reduction ratio without the damping term
#
# After the step, K-FAC evaluates the loss on the same batch and compares the change with a
# prediction. kfac-jax's default, which the paper's runs keep, predicts it with the *undamped*
# model: at the minimiser $w$ of {eq}`eq-kh-model`,
#
# $$
# Q_0(w) = \tfrac12\, w^\top \mathcal{A} w + w^\top b
#   = Q_\lambda(w) - \tfrac12\, \lambda \lVert \delta \rVert^2 , \qquad
# \rho_\text{K-FAC} = \frac{f(\theta + \delta) - f(\theta)}{Q_0(w)} ,
# $$ (eq-kh-undamped)
#
# whereas AdamQLR divides by the damped change ({eq}`eq-dm-rho`). For the same step the two
# ratios differ by a factor that depends only on the model:
#
# $$
# \frac{\rho_\text{AdamQLR}}{\rho_\text{K-FAC}} = \frac{Q_0(w)}{Q_\lambda(w)}
#   = 1 + \frac{\lambda \lVert \delta \rVert^2}{-2\, Q_\lambda(w)} \;\ge\; 1 .
# $$ (eq-kh-rho)
#
# The undamped model promises the larger decrease, so kfac-jax's $\rho$ is the smaller, more
# pessimistic one. The rule is then that of {eq}`eq-dm-update` with kfac-jax's factors:
#
# $$
# \lambda \leftarrow \begin{cases}
#   0.9\, \lambda & \rho > 3/4, \\
#   \lambda / 0.9 & \rho < 1/4, \\
#   \lambda & \text{otherwise},
# \end{cases}
# \qquad \text{then } \lambda \leftarrow \max(\lambda, 10^{-8}),
# $$ (eq-kh-lm)
#
# applied every step, with a NaN $\rho$ read as $-100$. A factor of $0.9$ is gentle: doubling
# $\lambda$ takes $\ln 2 / \ln(1/0.9) \approx 6.6$ bad steps, where AdamQLR's untuned rule takes one.
#
# **On an exact quadratic the convention decides everything.** If the loss is quadratic with
# Hessian $C$, the actual change *is* $Q_0(w)$ and $\rho_\text{K-FAC} = 1$ at every step, for
# every $\lambda$ and every direction; the damping then shrinks by $0.9$ per step and reaches the
# floor after $\lceil \ln(10^{-8}) / \ln 0.9 \rceil = 175$ steps from $\lambda_0 = 1$. AdamQLR's
# convention would report $\rho = Q_0 / Q_\lambda \in (1, 2)$ instead (compare
# {eq}`eq-dm-quadratic`). The check runs adaptive K-FAC on linear least squares (UCI Energy, the
# full training set, float64), where the GGN is the Hessian.

# %%
quad = kfac_quadratic_run(profile, steps=config.quadratic_steps)
resolved = quad[quad["quad_undamped"].abs() > 1e-9 * quad["loss"]]
assert len(resolved) >= min(20, len(quad)), len(resolved)
assert np.allclose(resolved["rho"], 1.0, atol=1e-6), "rho = 1 on an exact quadratic"
expected = np.maximum(0.9 ** quad["iteration"].to_numpy(), 1e-8)
assert np.allclose(quad["damping"], expected, rtol=1e-9), "lambda_t = 0.9^t"
assert ((resolved["rho_damped"] > 1) & (resolved["rho_damped"] < 2)).all()
floor_steps = math.ceil(math.log(1e-8) / math.log(0.9))
assert floor_steps == 175
glue("kh_quad_rho_dev", float((resolved["rho"] - 1).abs().max()), display=False)
glue("kh_quad_resolved", len(resolved), display=False)
glue("kh_quad_rhoA_low", float(resolved["rho_damped"].min()), display=False)
glue("kh_quad_rhoA_high", float(resolved["rho_damped"].max()), display=False)
quad[["iteration", "loss", "lr", "momentum", "damping_used", "rho", "rho_damped"]].head(8)

# %% [markdown]
# On the classifier the same quantities are checked on every step: the library's model change is
# $Q_0(w)$ recomputed from the dense matrices, {eq}`eq-kh-undamped` relates the two models, the
# library's $\rho$ is the ratio of a separately computed trial loss to $Q_0$, and the damping
# followed {eq}`eq-kh-lm`.

# %%
sq_step = step_sq_norm(trace)
assert np.allclose(trace["quad_change"], trace["quad_undamped"], rtol=1e-9), "the library's Q_0"
assert np.allclose(trace["quad_undamped"], trace["quad_damped"] - 0.5 * lam_t * sq_step,
                   rtol=1e-8, atol=1e-14), "eq-kh-undamped"  # fmt: skip
assert np.allclose(trace["trial_loss"], trace["trial_loss_own"], rtol=1e-12)
assert np.allclose(trace["rho"], (trace["trial_loss_own"] - trace["loss_own"]) / trace["quad_undamped"],
                   rtol=1e-8, atol=1e-12), "eq-kh-undamped: rho"  # fmt: skip
ratio = trace["rho_damped"] / trace["rho_undamped"]
assert np.allclose(ratio, 1 + lam_t * sq_step / (-2 * trace["quad_damped"]), rtol=1e-8), "eq-kh-rho"
assert (ratio >= 1 - 1e-12).all()
rule = np.where(trace["rho"] > 0.75, 0.9 * lam_t, np.where(trace["rho"] < 0.25, lam_t / 0.9, lam_t))
assert np.allclose(trace["damping"], np.maximum(rule, 1e-8), rtol=1e-12), "eq-kh-lm"
print(f"eq-kh-undamped, eq-kh-rho and eq-kh-lm hold on all {len(trace)} steps")


# %%
def decision(rho: pd.Series) -> np.ndarray:
    return np.where(rho > 0.75, "decrease", np.where(rho < 0.25, "increase", "keep"))


kfac_decision = decision(sampled["rho_undamped"])
adamqlr_decision = decision(sampled["rho_damped"])
differ = float((kfac_decision != adamqlr_decision).mean())
early = sampled[sampled["iteration"] <= 10]
glue("kh_decisions_differ", differ, display=False)
glue("kh_ratio_early", float((early["rho_damped"] / early["rho_undamped"]).median()), display=False)
glue("kh_ratio_all", float((sampled["rho_damped"] / sampled["rho_undamped"]).median()), display=False)
glue("kh_high_rho", float((sampled["rho_undamped"] > 0.75).mean()), display=False)
glue("kh_low_rho", float((sampled["rho_undamped"] < 0.25).mean()), display=False)
final_damping = sampled.groupby("seed")["damping"].last()
glue("kh_final_damping_low", float(final_damping.min()), display=False)
glue("kh_final_damping_high", float(final_damping.max()), display=False)
glue("kh_steps", config.steps, display=False)
glue("kh_seeds", len(config.seeds), display=False)
pd.crosstab(
    pd.Series(kfac_decision, name="kfac-jax's rho (undamped)"),
    pd.Series(adamqlr_decision, name="AdamQLR's rho (damped)"),
)

# %% mystnb={"figure": {"caption": "Adaptive K-FAC on the tiny classifier with sampled statistics, one line per seed (the first darker): mini-batch loss, learning rate $-w_1$ and momentum $w_2$ from {eq}`eq-kh-solve`, damping, the reduction ratio of the first seed in kfac-jax's convention and in AdamQLR's ({eq}`eq-kh-rho`, the band $1/4 \\le \\rho \\le 3/4$ shaded) and $\\pi^*$ of each layer ({eq}`eq-kh-pi`). Batch size 128 from 4,096 pooled training images, float64, the paper's kfac-jax settings.", "name": "fig-kh-traces"}}
fig = plot_kfac_traces(sampled)

# %% [markdown]
# ## What the figures show
#
# **The damping runs down and stays down.** kfac-jax's $\rho$ exceeds $3/4$ on
# {glue:text}`kh_high_rho:.0%` of the steps and falls below $1/4$ on
# {glue:text}`kh_low_rho:.0%` ({numref}`fig-kh-traces`), so {eq}`eq-kh-lm` multiplies $\lambda$
# by $0.9$ almost every step: after {glue:text}`kh_steps` steps it is between
# {glue:text}`kh_final_damping_low:.1e` and {glue:text}`kh_final_damping_high:.1e`, close to the
# floor. The convention of {eq}`eq-kh-rho` matters only while $\lambda \lVert\delta\rVert^2$ is
# comparable to the predicted decrease: over the first ten steps AdamQLR's $\rho$ would have been
# {glue:text}`kh_ratio_early:.2f` times kfac-jax's (median), over the whole runs
# {glue:text}`kh_ratio_all:.3f` times. Both conventions lead to the same damping decision on all
# but {glue:text}`kh_decisions_differ:.1%` of the steps. On the exact quadratic, kfac-jax's
# $\rho$ is 1 to within {glue:text}`kh_quad_rho_dev:.1e` on the
# {glue:text}`kh_quad_resolved` steps whose change is above rounding, while AdamQLR's convention
# reads between {glue:text}`kh_quad_rhoA_low:.2f` and {glue:text}`kh_quad_rhoA_high:.2f`.
#
# **The damping that remains is in the preconditioner.** Once $\lambda$ is tiny, the model's
# damping term $\lambda\lVert\delta\rVert^2$ is negligible, but the factored damping is not: its
# extra term {eq}`eq-kh-factored` scales like $\sqrt\lambda$, not $\lambda$. At the final
# $\lambda = ${glue:text}`kh_lambda_final:.1e` it adds
# {glue:text}`kh_extra_final_min:.0f` to {glue:text}`kh_extra_final_max:.0f` times $\lambda$ per
# parameter ({numref}`fig-kh-pi`, left), and along the directions where a factor is nearly
# singular it multiplies the curvature by orders of magnitude (right). Without $\pi$, the factors'
# very different scales ($\pi^*$ ranges from {glue:text}`kh_pi_low:.1f` to
# {glue:text}`kh_pi_high:.1f` during the runs) would make that excess larger still.
#
# **The momentum is small and of either sign.** The plane solve gives a median momentum of
# {glue:text}`kh_mom_median:.2f` (5% to 95%: {glue:text}`kh_mom_q05:.2f` to
# {glue:text}`kh_mom_q95:.2f`), negative on {glue:text}`kh_mom_negative:.0%` of the steps: nothing
# like a fixed $0.9$. By {eq}`eq-kh-gain` the model expects the plane to beat the line along
# $\Delta$ by a median {glue:text}`kh_gain_predicted:.1%` of the decrease; on the batch the
# actual gain is {glue:text}`kh_gain_actual:.1%`, and the plane's step is the better one on
# {glue:text}`kh_plane_better:.0%` of the steps. {numref}`fig-kh-plane` shows the plane at step
# {glue:text}`kh_plane_early`, where the damping is still large and the damped model keeps the
# step well inside the region where the batch loss keeps falling, and at step
# {glue:text}`kh_plane_late`, where the model fits the loss closely and its minimiser sits near the
# best point of the plane (there, at a momentum of {glue:text}`kh_plane_late_momentum:.2f`).
#
# **The curvature average.** With exact statistics, the library's factors are the moving average
# {eq}`eq-kh-ema` to {glue:text}`kh_ema_exact:.0e`. With the paper's sampled statistics they
# still differ from the exact average by {glue:text}`kh_ema_sampled:.0%` (relative Frobenius
# error of the worse factor, median over seeds, at the last step): averaging with a half-life of
# {glue:text}`kh_half_life:.1f` steps removes much, but not all, of the sampling noise.
#
# ## What it means for AdamQLR
#
# * Every identity of the chapter holds on every audited step of the library's K-FAC, to rounding:
#   the moving average {eq}`eq-kh-ema`, the $\pi$-damped direction {eq}`eq-kh-factored`
#   (updates to {glue:text}`kh_update_error:.0e`), the closed-form learning rate and momentum
#   {eq}`eq-kh-solve` and the reduction ratio and damping rule {eq}`eq-kh-undamped`,
#   {eq}`eq-kh-lm`.
# * AdamQLR's one-dimensional model is K-FAC's plane restricted to $w_2 = 0$
#   ({eq}`eq-kh-line`). On this network the momentum coefficient the plane adds is small and
#   buys about {glue:text}`kh_gain_actual:.1%` of the decrease per step: dropping it, as AdamQLR
#   does, costs little. What separates the two optimisers is the direction and the damping inside
#   the preconditioner, not the momentum.
# * K-FAC's Levenberg-Marquardt rule, with factor $0.9$ and the undamped $\rho$, acts here as a
#   slow schedule from $\lambda_0 = 1$ to the floor. The $\rho$ convention changes the decision
#   on {glue:text}`kh_decisions_differ:.1%` of the steps, so on this problem AdamQLR's choice to
#   include the damping term does not matter. Where the model overpromises, the undamped
#   convention raises the damping sooner.
# * The damping that K-FAC keeps after $\lambda$ has fallen is the factored one, of order
#   $\sqrt\lambda$: a stabiliser that AdamQLR, whose direction is Adam's, has no counterpart for.
#
# **Agreement with the paper.** The settings are those of the paper's K-FAC, which runs kfac-jax
# 0.0.3 with adaptive learning rate, momentum and damping, $\lambda_0 = 1$ (untuned),
# moving-average decay $0.95$, damping adaptation and inverses every step, the damping factor
# $0.9$ and the undamped model change in $\rho$ (kfac-jax's defaults, left unchanged by the
# authors' code at its camera-ready commit). The paper contrasts K-FAC with K-FAC (Unadaptive),
# which fixes all three; this chapter takes the adaptive heuristics apart instead. The original
# K-FAC paper adapts $\lambda$ every few steps and keeps a separate damping strength for the
# factored curvature {cite:p}`martens2015kfac`; kfac-jax, and so the paper, ties the two. The
# measurements are ours, on a tiny network and one batch size; the experiment chapters compare
# the optimisers at scale.
#
# ## Exercises
#
# ```{exercise}
# :label: ex-kh-invariance
# The product $A \otimes G$ does not change if $A$ is replaced by $cA$ and $G$ by $G / c$ for any
# $c > 0$. Show that the $\pi^*$-damped product $(A + \pi^*\sqrt\lambda I) \otimes
# (G + \sqrt\lambda / \pi^* I)$ does not change either, and that with $\pi = 1$ it does. Why does
# this matter for K-FAC?
# ```
#
# ```{solution} ex-kh-invariance
# :class: dropdown
# By {eq}`eq-kh-pi`, $\pi^*(cA, G/c) = \sqrt{c \cdot c}\;\pi^*(A, G) = c\,\pi^*$. Then
# $cA + c\pi^*\sqrt\lambda I = c\,(A + \pi^*\sqrt\lambda I)$ and
# $G/c + \sqrt\lambda/(c\pi^*) I = (G + \sqrt\lambda/\pi^* I)/c$, and the factors $c$ and $1/c$
# cancel in the Kronecker product. With $\pi = 1$ the damped product is
# $A \otimes G + \lambda I + \sqrt\lambda\,(c\, A \otimes I + I \otimes G / c)$, which depends on
# $c$. The split between $A$ and $G$ is arbitrary (a different normalisation of the loss, or of
# the layer's inputs, moves a constant from one factor to the other), so without $\pi$ the
# damping, and with it the direction, would depend on a convention rather than on the curvature.
# ```
#
# ```{exercise}
# :label: ex-kh-ema
# Using {eq}`eq-kh-ema` with $\beta = 0.95$: what weight does the newest batch get at steps 1, 2,
# 10 and in the limit? After how many steps do the statistics of the first 10 batches make up less
# than 10% of $\bar F_t$?
# ```
#
# ```{solution} ex-kh-ema
# :class: dropdown
# The newest batch has weight $1 / w_t = (1 - \beta) / (1 - \beta^t)$: $1$ at step 1,
# $1/1.95 \approx 0.51$ at step 2, $0.05 / (1 - 0.95^{10}) \approx 0.124$ at step 10, and $0.05$ in
# the limit. The first 10 batches together carry
# $\sum_{k=t-10}^{t-1}\beta^k / w_t = \beta^{t-10}(1 - \beta^{10}) / (1 - \beta^t)$. This falls
# below $0.1$ when $0.95^{t-10} \cdot 0.401 < 0.1\,(1 - 0.95^t)$, which first holds at
# $t = 40$. The average forgets slowly: a bad early curvature estimate is felt for tens of steps.
# ```
#
# ```{exercise}
# :label: ex-kh-rho
# Use {eq}`eq-kh-rho` to show that if $\rho_\text{K-FAC} \ge 1/4$ then $\rho_\text{AdamQLR} \ge
# 1/4$ (for the same step): kfac-jax's convention never keeps or lowers the damping where
# AdamQLR's would raise it. Then show that on the first step, with $v = 0$ and no curvature along
# $\Delta$ ($\Delta^\top C \Delta = 0$), $\rho_\text{AdamQLR} = 2\,\rho_\text{K-FAC}$.
# ```
#
# ```{solution} ex-kh-rho
# :class: dropdown
# The factor $Q_0 / Q_\lambda$ is at least 1 and both models are negative at the minimiser (a
# descent step), so $\rho_\text{AdamQLR} = (Q_0 / Q_\lambda)\, \rho_\text{K-FAC}$ has the same sign
# and a larger magnitude; if $\rho_\text{K-FAC} \ge 1/4 > 0$ then $\rho_\text{AdamQLR} \ge
# \rho_\text{K-FAC} \ge 1/4$. (For a negative $\rho$ the order flips, but both are below $1/4$ and
# both raise the damping.) With $v = 0$ and $\Delta^\top C\Delta = 0$, {eq}`eq-kh-line` gives
# $w_1 = -g^\top\Delta / (\lambda\lVert\Delta\rVert^2)$, so $Q_\lambda = -\tfrac12 (g^\top
# \Delta)^2 / (\lambda \lVert \Delta\rVert^2)$ and $Q_0 = w_1 g^\top\Delta = 2 Q_\lambda$: the
# undamped model predicts twice the decrease, and the ratio is exactly 2.
# ```
#
# ```{exercise}
# :label: ex-kh-parallel
# What happens to {eq}`eq-kh-solve` when the previous update is parallel to the new direction,
# $v = c\,\Delta$? Which updates are still well defined, and what does the library do?
# ```
#
# ```{solution} ex-kh-parallel
# :class: dropdown
# Then $V = \Delta\,[1, c]$, so $\mathcal{A} = \Delta^\top C\Delta\,[1, c]^\top[1, c]$ and
# $\mathcal{D} = \lVert\Delta\rVert^2 [1, c]^\top[1, c]$ both have rank one, $m$ is singular and
# the determinant in {eq}`eq-kh-solve` vanishes. The model only depends on $w_1 + c\,w_2$, and
# every $w$ on the line $w_1 + c\,w_2 = w_1^\text{line}$ of {eq}`eq-kh-line` gives the same
# update, but Cramer's rule divides by zero. The library's K-FAC detects a singular system, skips
# the step with a warning and raises the damping as for a failed step. In floating point exact
# parallelism is rare: in the runs above the cosine between $\Delta$ and $v$ never exceeds
# {glue:text}`kh_cos_max:.2f` in absolute value.
# ```
