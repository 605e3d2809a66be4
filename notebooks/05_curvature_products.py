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
# (ch-curvature-products)=
# # Curvature products without matrices
#
# **Question.** Every AdamQLR step needs one number, the curvature $d^\top C d$ of the loss along
# Adam's direction $d$. The matrix $C$ has $P^2$ entries: for the 39,760 parameters of the paper's
# Fashion-MNIST network that is 1.6 billion numbers, recomputed for every mini-batch. How is
# $d^\top C d$ obtained without $C$, which matrix should $C$ be (the Hessian, the generalised
# Gauss-Newton matrix, the Fisher, the empirical Fisher), and what does the product cost?
#
# The notation is that of the {doc}`notation` page: $f$ is the mean loss over a mini-batch of $N$
# examples, $z_n(\theta)$ the network's outputs for example $n$, $\ell_n = \ell(z_n, y_n)$ its loss.

# %% tags=["parameters"]
profile = "quick"

# %%
import re

import numpy as np
import pandas as pd
import torch
from myst_nb import glue

from adamqlr.curvature import ggn_quadratic, hessian_quadratic
from adamqlr.lens.products import (
    FORWARD,
    FORWARD_BACKWARD,
    GGN_FUNC,
    GGN_LAYERWISE,
    GRAD_AND_HESSIAN,
    HESSIAN_FOR,
    cost_study,
    tiny_problems,
)
from adamqlr.plots import set_theme
from adamqlr.plots.derivations import plot_curvature_matrices, plot_product_costs
from adamqlr.plots.tables import format_table
from adamqlr.results.provenance import computation_text
from adamqlr.studies.benchmarks import load_step_cost
from adamqlr.testing import (
    dense_empirical_fisher,
    dense_fisher,
    dense_ggn,
    dense_hessian,
    dense_residual_term,
    flat_params,
)

set_theme()
_ = torch.manual_seed(0)  # the generator it returns is not for the page

# %% [markdown]
# ## Two curvature matrices and what separates them
#
# Differentiate $f(\theta) = \frac1N \sum_n \ell(z_n(\theta), y_n)$ twice with the chain rule.
# With $J_n = \partial z_n / \partial \theta$ and $H_n = \partial^2 \ell_n / \partial z_n^2$ (the
# output Hessian $H_L$ of the notation page, one block per example),
#
# $$
# H = \underbrace{\frac1N \sum_n J_n^\top H_n J_n}_{G}
#   \;+\; \underbrace{\frac1N \sum_n \sum_k \frac{\partial \ell_n}{\partial z_{nk}}\,
#   \nabla^2_\theta z_{nk}}_{R} .
# $$ (eq-cp-hessian-split)
#
# The first term is the generalised Gauss-Newton matrix (GGN) {cite:p}`schraudolph2002fast`. It
# is positive semi-definite whenever the loss is convex in the outputs, as both of the paper's
# losses are. The second term $R$ weights the network's own curvature by the output residuals
# $\partial \ell_n / \partial z_n$: it can have either sign, and it vanishes when the model is
# linear in $\theta$ or fits the batch exactly.
#
# ## The GGN is the Fisher for the paper's losses
#
# Read $\ell$ as a negative log-likelihood, $\ell(z, y) = -\log p(y \mid z)$. The Fisher
# information matrix averages the outer product of the gradient under the model's *own*
# predictions {cite:p}`amari1998natural`:
#
# $$
# F = \frac1N \sum_n \mathbb{E}_{y \sim p(\cdot \mid z_n)}
#     \left[\nabla_\theta \ell(z_n, y)\, \nabla_\theta \ell(z_n, y)^\top\right]
#   = \frac1N \sum_n J_n^\top\, \mathbb{E}_{y}\!\left[\nabla_z \ell\, \nabla_z \ell^\top\right] J_n .
# $$ (eq-cp-fisher)
#
# When $z$ is the natural parameter of an exponential family,
# $p(y \mid z) = h(y) \exp(z^\top T(y) - A(z))$, the loss is $\ell = A(z) - z^\top T(y) + \text{const}$,
# so $\nabla_z \ell = \mathbb{E}[T] - T(y)$ and
#
# $$
# \mathbb{E}_y\!\left[\nabla_z \ell\, \nabla_z \ell^\top\right] = \operatorname{Cov}[T(y)]
#   = \nabla^2 A(z) = \frac{\partial^2 \ell}{\partial z^2} = H_n ,
# $$ (eq-cp-canonical)
#
# independent of $y$. Put into {eq}`eq-cp-fisher`, this gives $F = G$
# {cite:p}`martens2020new`. Both of the paper's losses are of this kind: half the squared error is
# a unit-variance Gaussian with $T(y) = y$, $A(z) = \tfrac12\lVert z\rVert^2$, and softmax
# cross-entropy is a categorical distribution with $T(y) = e_y$, $A(z) = \log \sum_k e^{z_k}$:
#
# $$
# H_n^{\text{squared error}} = I, \qquad
# H_n^{\text{cross-entropy}} = \operatorname{diag}(p_n) - p_n p_n^\top, \quad p_n = \operatorname{softmax}(z_n).
# $$ (eq-cp-output-hessians)
#
# This is why the paper can call its default curvature "Fisher" and compute it as a GGN. The
# *empirical* Fisher replaces the model's predictions by the observed targets,
#
# $$
# F_\text{emp} = \frac1N \sum_n \nabla_\theta \ell(z_n, y_n)\, \nabla_\theta \ell(z_n, y_n)^\top ,
# $$ (eq-cp-empirical)
#
# and is a different matrix, which can be a poor curvature estimate
# {cite:p}`kunstner2019limitations`. It matters for this book because Adam's $\hat v$ estimates
# (a version of) its diagonal ({ref}`ch-adam-lens`).
#
# ## Checking the identities on two tiny networks
#
# The package builds all four matrices densely for networks small enough to hold them, each by
# its own route: $H$ with `torch.func.hessian`; $G$ from the Jacobian of all outputs and the
# Hessian of the loss in the outputs, both by automatic differentiation; $F$ from per-example
# gradients, with the expectation in {eq}`eq-cp-fisher` summed *exactly* (over all classes,
# weighted by $p_n$, for cross-entropy; over symmetric sigma points, exact for second moments, for
# the Gaussian); $R$ as the Hessian of $\sum_n w_n^\top z_n(\theta)$ with the residuals
# $w_n = \partial f / \partial z_n$ held fixed; and $F_\text{emp}$ from per-example gradients. The
# two problems use real data: a batch of 32 Fashion-MNIST images average-pooled to $4 \times 4$
# pixels with a 16-8-10 ReLU network and cross-entropy, and 32 rows of UCI Energy with an 8-6-1
# ReLU network and half the squared error.

# %%
problems = tiny_problems(profile)
dense = {}
rows = []
for pr in problems:
    args = (pr.model, pr.inputs, pr.targets, pr.loss)
    G, R = dense_ggn(*args), dense_residual_term(*args)
    H = dense_hessian(*args, method="func")  # torch.func.hessian: exact without batch norm
    F, F_emp = dense_fisher(pr.model, pr.inputs, pr.loss), dense_empirical_fisher(*args)
    dense[pr.name] = dict(G=G, H=H, R=R, F=F, F_emp=F_emp)
    scale = G.abs().max()
    assert torch.allclose(H, G + R, atol=1e-10 * scale), "eq-cp-hessian-split"
    assert torch.allclose(F, G, atol=1e-10 * scale), "eq-cp-fisher with eq-cp-canonical"
    assert torch.allclose(G, G.T) and torch.linalg.eigvalsh(G).min() > -1e-10 * scale, "G >= 0"
    emp_gap = float((F_emp - F).norm() / F.norm())
    assert emp_gap > 0.1, "the empirical Fisher is a different matrix"
    rows.append(
        {
            "problem": pr.name,
            "P": pr.num_params,
            "max |H - (G + R)|": float((H - G - R).abs().max()),
            "max |F - G|": float((F - G).abs().max()),
            "min eig G": float(torch.linalg.eigvalsh(G).min()),
            "min eig H": float(torch.linalg.eigvalsh(H).min()),
            "||F_emp - F|| / ||F||": emp_gap,
        }
    )
identities = pd.DataFrame(rows).set_index("problem")
format_table(identities, headers={
    "P": "$P$", "max |H - (G + R)|": r"$\max |H - (G + R)|$", "max |F - G|": r"$\max |F - G|$",
    "min eig G": "smallest eigenvalue of $G$", "min eig H": "smallest eigenvalue of $H$",
    "||F_emp - F|| / ||F||": r"$\|F_\text{emp} - F\| / \|F\|$",
})  # fmt: skip

# %%
ce = problems[0]
fp = flat_params(ce.model)
boundaries = np.cumsum(fp.sizes)[:-1]
m = dense[ce.name]
glue("cp_emp_gap", float(identities["||F_emp - F|| / ||F||"].iloc[0]), display=False)
glue("cp_min_eig_h", float(identities["min eig H"].iloc[0]), display=False)
glue("cp_tiny_p", ce.num_params, display=False)
glue(
    "cp_matrices_made",
    computation_text(f"dense matrices of the {ce.num_params}-parameter network", profile),
    display=False,
)

# %% mystnb={"figure": {"caption": "The curvature matrices of the 16-8-10 network on 32 pooled Fashion-MNIST images ({glue:text}`cp_tiny_p` parameters; thin lines separate the weight and bias tensors). $G = F$ {eq}`eq-cp-fisher`, the Hessian $H$, their difference $R$ {eq}`eq-cp-hessian-split`, and the empirical Fisher's difference from $F$ {eq}`eq-cp-empirical`. Each panel has its own symmetric colour scale (99th percentile of its absolute entries). Made by: {glue:text}`cp_matrices_made`.", "name": "fig-cp-matrices"}}
fig = plot_curvature_matrices(
    {
        "$G = F$": m["G"].numpy(),
        "$H$": m["H"].numpy(),
        "$R = H - G$": m["R"].numpy(),
        r"$F_\mathrm{emp} - F$": (m["F_emp"] - m["F"]).numpy(),
    },
    boundaries=boundaries,
)

# %% [markdown]
# The identities hold to rounding, and {numref}`fig-cp-matrices` shows what separates the
# matrices. $R$ is concentrated in the blocks that couple the two layers' weights, where the
# network is bilinear in its parameters; it makes the Hessian indefinite (its smallest eigenvalue
# here is {glue:text}`cp_min_eig_h:.2f`). The empirical Fisher differs from the Fisher by
# {glue:text}`cp_emp_gap:.0%` in Frobenius norm at this initialisation, where the model's
# predictions and the labels disagree most.
#
# ## Products in one pass
#
# AdamQLR never needs $C$, only $q = d^\top C d$. For the GGN, the product factorises through the
# outputs: with $u_n = J_n d$,
#
# $$
# d^\top G d = \frac1N \sum_n u_n^\top H_n u_n ,
# $$ (eq-cp-jvp)
#
# and all the $u_n$ come from **one** forward-mode Jacobian-vector product (JVP) through the
# network, which carries the tangent $d$ along with the forward pass. The output Hessians are
# known in closed form from {eq}`eq-cp-output-hessians`; for cross-entropy
#
# $$
# u^\top \left(\operatorname{diag}(p) - p p^\top\right) u = \sum_k p_k u_k^2 - \Big(\sum_k p_k u_k\Big)^2 .
# $$ (eq-cp-ce-quadratic)
#
# For the Hessian, Pearlmutter's trick {cite:p}`pearlmutter1994fast` differentiates the gradient
# along $d$:
#
# $$
# H d = \frac{\partial}{\partial \varepsilon} \nabla f(\theta + \varepsilon d) \Big|_{\varepsilon = 0},
# \qquad d^\top H d = d^\top (H d),
# $$ (eq-cp-hvp)
#
# a forward-mode derivative of the reverse-mode gradient ("forward-over-reverse"). The library's
# `ggn_quadratic` and `hessian_quadratic` implement {eq}`eq-cp-jvp` and {eq}`eq-cp-hvp` with
# `torch.func`. The check compares them with the dense matrices along random directions and along
# the first step of Adam, $d = g \oslash (\lvert g \rvert + \epsilon)$.

# %%
checked = 0
for pr in problems:
    G, H = dense[pr.name]["G"], dense[pr.name]["H"]
    fp = flat_params(pr.model)
    params = fp.unflatten(fp.vector)
    pr.model.zero_grad()
    pr.loss.value(pr.model(pr.inputs), pr.targets).backward()
    g = torch.cat([p.grad.reshape(-1) for p in pr.model.parameters()])
    directions = [torch.randn(fp.vector.numel(), dtype=torch.float64) for _ in range(5)]
    directions.append(g / (g.abs() + 1e-8))
    for v in directions:
        d = fp.unflatten(v)
        q_ggn = ggn_quadratic(pr.model, params, d, pr.inputs, pr.targets, pr.loss).item()
        q_hess = hessian_quadratic(pr.model, params, d, pr.inputs, pr.targets, pr.loss).item()
        assert np.isclose(q_ggn, float(v @ G @ v), rtol=1e-9, atol=1e-12), "eq-cp-jvp"
        assert np.isclose(q_hess, float(v @ H @ v), rtol=1e-9, atol=1e-12), "eq-cp-hvp"
        checked += 1
print(f"{checked} directions: the matrix-free products equal d^T G d and d^T H d")

# %% [markdown]
# ## What a product costs
#
# Forming $G$ densely would take $P$ JVPs (or $NK$ vector-Jacobian products), and $H$ would take
# $P$ Hessian-vector products: for the Fashion-MNIST network, 39,760 passes per step. The products
# {eq}`eq-cp-jvp` and {eq}`eq-cp-hvp` take one. The cell below times them on the paper's
# Fashion-MNIST network (784-50-10, float32) at the untuned AdamQLR batch size, in units of one
# forward pass, beside a forward+backward pass (what a gradient, and so an Adam step, costs). The
# GGN product is timed twice: with the library's hand-written layer-wise JVP (used automatically
# for plain MLPs) and with the generic `torch.func.jvp`. The Hessian product is timed as
# forward-over-reverse {eq}`eq-cp-hvp`, and in the form `AdamQLR` itself uses, where the gradient
# pass keeps its graph and one more backward pass through it gives $Hd$ (reverse over reverse;
# this one includes the gradient).

# %%
costs, setting = cost_study(profile)
cost_table = pd.DataFrame(
    [{"operation": c.operation, "median (ms)": 1e3 * c.seconds, "relative to forward": c.relative}
     for c in costs]
).set_index("operation")
by_name = {c.operation: c.seconds for c in costs}
fb, forward = by_name[FORWARD_BACKWARD], by_name[FORWARD]
ggn_cost = by_name.get(GGN_LAYERWISE, by_name[GGN_FUNC])
glue("cp_jvp_fb", ggn_cost / fb, display=False)
glue("cp_jvp_func_fb", by_name[GGN_FUNC] / fb, display=False)
glue("cp_hvp_fb", by_name[HESSIAN_FOR] / fb, display=False)
glue("cp_rr_fb", by_name[GRAD_AND_HESSIAN] / fb, display=False)
glue("cp_step_ratio", (fb + ggn_cost + forward) / fb, display=False)
glue("cp_step_ratio_hessian", (by_name[GRAD_AND_HESSIAN] + forward) / fb, display=False)
glue("cp_setting", ", ".join(f"{k} {v}" for k, v in setting.items()), display=False)
# reads: results/benchmarks/step_cost-cpu.json
bench = load_step_cost()
glue("cp_bench_fisher", bench.ratio("mlp-3200", "adamqlr-fisher"), display=False)
glue("cp_bench_hessian", bench.ratio("mlp-3200", "adamqlr-hessian"), display=False)
glue("cp_bench", bench.text(), display=False)
glue(
    "cp_costs_made",
    computation_text(f"{len(costs)} operations timed, " + ", ".join(
        f"{k} {v}" for k, v in setting.items()), profile),
    display=False,
)
print(setting)
# "d^T G d (layer-wise JVP)" -> "$d^\top G d$ (layer-wise JVP)": the operations as formulas
format_table(cost_table.rename(index=lambda op: re.sub(r"d\^T (\w) d", r"$d^\\top \1 d$", op)))

# %% mystnb={"figure": {"caption": "Measured cost of one call, in units of one forward pass (median over repeats; bars show half the interquartile range), on the Fashion-MNIST MLP 784-50-10: {glue:text}`cp_setting`. The curvature products are {eq}`eq-cp-jvp` (two implementations) and {eq}`eq-cp-hvp` along a random direction; the last bar is the gradient and the Hessian term together, as AdamQLR computes them. Made by: {glue:text}`cp_costs_made`.", "name": "fig-cp-cost"}}
fig = plot_product_costs(costs)

# %% [markdown]
# ## What it means for AdamQLR
#
# * **Which matrix.** For the paper's losses the GGN *is* the Fisher {eq}`eq-cp-canonical`, and it
#   is positive semi-definite, so the quadratic model along $d$ always has a minimiser once
#   $\lambda > 0$. The Hessian adds $R$ {eq}`eq-cp-hessian-split`, which makes it indefinite even
#   on a 226-parameter network; the chapter {ref}`ch-rosenbrock` shows where that bites. The
#   empirical Fisher is a third matrix, not an approximation of either.
# * **What it costs.** In this measurement ({numref}`fig-cp-cost`), one GGN product costs
#   {glue:text}`cp_jvp_fb:.2f` forward+backward passes with the hand-written JVP
#   ({glue:text}`cp_jvp_func_fb:.2f` with `torch.func.jvp`), and one Hessian product
#   {glue:text}`cp_hvp_fb:.2f` as forward-over-reverse; the gradient and the Hessian term together,
#   reverse over reverse, cost {glue:text}`cp_rr_fb:.2f`. The pieces of an AdamQLR step
#   (gradient, one GGN product, and one forward pass for $\rho$) therefore add up to about
#   {glue:text}`cp_step_ratio:.1f` forward+backward passes, and about
#   {glue:text}`cp_step_ratio_hessian:.1f` with the Hessian. Whole steps, timed side by side
#   against `torch.optim.Adam` on the same network and batch size by the step-cost benchmark
#   ({ref}`ch-runtime`, the book's one source for a step's cost), cost
#   {glue:text}`cp_bench_fisher:.2f` and {glue:text}`cp_bench_hessian:.2f` Adam steps
#   ({glue:text}`cp_bench`). The whole step costs less than its pieces timed alone because the
#   step shares work between them: its JVP reuses the activations of the gradient pass instead of
#   running the network forward again, its trial forward reuses the first layer's product by
#   linearity, and (for these sequential MLPs and the losses of {eq}`eq-cp-output-hessians`) its
#   gradient pass runs each layer's backward on the activations the forward kept, starting from
#   the loss's closed-form gradient ($\nabla_z \ell = p - e_y$ for cross-entropy,
#   {ref}`ex-cp-categorical`), without recording an autograd graph: the same numbers as
#   `loss.backward()`. These are single-thread CPU timings on a small network; the ratios depend
#   on the hardware and on how well the framework's forward mode is optimised, which is why the
#   library carries its own JVP for the common case.
#
# **Agreement with the paper.** The authors' code computes the Fisher exactly as {eq}`eq-cp-jvp`
# (one `jax.jvp` and the closed forms {eq}`eq-cp-output-hessians`) and the Hessian as
# {eq}`eq-cp-hvp`, and our implementation follows it; we checked both against dense matrices
# above. The code sums the squared-error curvature over output dimensions while the loss averages
# over them, a mismatch that never arises in the paper's single-output regression tasks; our
# losses derive both from one reduction. The first version of the paper put the overhead at
# "only one additional forward pass", which a reviewer disputed {cite:p}`clarke2023openreview`;
# the measurement above is ours, and the experiment chapters compare optimisers
# against wall-clock time, which includes it.
#
# ## Exercises
#
# ```{exercise}
# :label: ex-cp-categorical
# Let $y$ be drawn from the categorical distribution $p = \operatorname{softmax}(z)$ and
# $\ell = -\log p_y$. Show that $\nabla_z \ell = p - e_y$ and that
# $\mathbb{E}_y[(p - e_y)(p - e_y)^\top] = \operatorname{diag}(p) - p p^\top = \nabla_z^2 \ell$,
# the cross-entropy case of {eq}`eq-cp-canonical`.
# ```
#
# ```{solution} ex-cp-categorical
# :class: dropdown
# $\ell = \log \sum_j e^{z_j} - z_y$, so $\partial \ell / \partial z_k = p_k - [k = y]$, i.e.
# $\nabla_z \ell = p - e_y$. Then
# $\mathbb{E}_y[(p - e_y)(p - e_y)^\top] = p p^\top - p\,\mathbb{E}[e_y]^\top - \mathbb{E}[e_y] p^\top +
# \mathbb{E}[e_y e_y^\top] = p p^\top - 2 p p^\top + \operatorname{diag}(p)$, because
# $\mathbb{E}[e_y] = p$ and $e_y e_y^\top$ has a single one at $(y, y)$. Differentiating
# $\nabla_z \ell = p - e_y$ once more gives $\partial p_k / \partial z_j = p_k([k = j] - p_j)$,
# the same matrix, with no $y$ left in it.
# ```
#
# ```{exercise}
# :label: ex-cp-linear
# For a linear model $z_n = W x_n$ with half the squared error, show that $R = 0$ in
# {eq}`eq-cp-hessian-split`, so $G = H$, and that AdamQLR's undamped step size then minimises the
# loss exactly along $d$. Check it numerically with `adamqlr.curvature` on a linear layer.
# ```
#
# ```{solution} ex-cp-linear
# :class: dropdown
# Each output $z_{nk} = w_k^\top x_n$ is linear in the parameters, so $\nabla^2_\theta z_{nk} = 0$
# and $R = 0$. The loss is then exactly quadratic in $\theta$,
# $f(\theta - \alpha d) = f - \alpha g^\top d + \tfrac12 \alpha^2 d^\top H d$, which is the model
# {eq}`eq-ss-line` with $C = H = G$ and $\lambda = 0$; its minimiser
# $\alpha = g^\top d / d^\top G d$ is the exact line-search step. Numerically: with
# `model = torch.nn.Linear(8, 1).double()`, `ggn_quadratic` and `hessian_quadratic` agree for any
# direction, and evaluating the loss at $\theta - \alpha d$ for $\alpha$ slightly above and below
# shows the minimum.
# ```
