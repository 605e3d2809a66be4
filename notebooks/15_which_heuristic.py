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
# (ch-which-heuristic)=
# # Which heuristic does the work?
#
# **Question.** A second-order optimiser such as K-FAC {cite:p}`martens2015kfac` is three things
# at once: a *direction* (the gradient preconditioned by a curvature model), a *step-size rule*
# (a learning rate, and in K-FAC a momentum, chosen from a damped quadratic model), and a
# *damping* rule (Levenberg-Marquardt, driven by how well the model predicted the last step). The
# paper {cite:p}`clarke24a` asks how much of the optimiser's success comes from the heuristics
# rather than from the curvature, and answers in part: AdamQLR puts K-FAC's step-size and damping
# heuristics on Adam's direction, and K-FAC (Unadaptive) takes them away from K-FAC. This chapter
# crosses every piece with every other and asks, task by task, which factor moves the final loss
# most.

# %% tags=["parameters"]
# "quick": read the committed quick-profile run records; "paper": read each task's
# paper-profile records once they are complete, its quick ones until then (the page says which); "smoke" (the tests):
# read the quick records as they are, never compute. compute=True makes missing runs instead.
profile = "quick"
compute = False

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from adamqlr.plots import set_theme
from adamqlr.plots.factorial import plot_interactions
from adamqlr.plots.tables import format_table
from adamqlr.studies import get_study, notebook_records_by_task
from adamqlr.tasks import get_task
from adamqlr.studies.analysis import provenance_text, tuning_summary
from adamqlr.studies.effects import capped_finals, factorial_effects
from adamqlr.studies.factorial import CELLS, EXCLUDED, EXTRA_CELLS, cell
from adamqlr.studies.verdicts import compare, edge_choices, judge, span, times, verdict_table

set_theme()
pd.set_option("display.precision", 4)

# reads: results/uci-energy/*/*/manifest.json
# reads: results/uci-protein/*/*/manifest.json
# reads: results/fashion-mnist/*/*/manifest.json
# reads: results/tuning/*/*/trials-*.jsonl.gz
parts = notebook_records_by_task(
    "factorial", profile, compute=compute, fallback="quick", skip_incomplete=True
)
tasks = list(parts)
titles = {t: parts[t].task_titles()[t] for t in tasks}
# under paper, the tasks whose records are complete under neither profile (the quick design runs
# Fashion-MNIST only): named on the page, not drawn
waiting = (
    [t for t in get_study("factorial", "paper").tasks() if t not in parts]
    if profile == "paper" else []
)  # fmt: skip
all_records = [r for part in parts.values() for r in part.all_records()]
for t, part in parts.items():
    print(f"{titles[t]}: profile {part.study.profile!r}, {len(part.study.arms)} arms")
print(provenance_text(all_records))


def arm_of(task, c):
    """The study arm of cell ``c`` on ``task`` (in that task's records)."""
    return parts[task].study.arm(f"{task}/factorial/{c.key}")


def runs_of(task, c):
    """The repeats of cell ``c`` on ``task``."""
    return parts[task].records[arm_of(task, c).id]

# %% [markdown]
# ## Three factors
#
# Write $g$ for the mini-batch gradient, $d$ for the direction (pointing uphill, like $g$),
# $C$ for the curvature matrix (the Fisher, which is the generalised Gauss-Newton matrix for these
# losses) and $\Delta_{t-1}$ for the previous update. The factors and their levels are:
#
# - **direction** $d$: the gradient itself (SGD); Adam's $\hat m / (\sqrt{\hat v} + \epsilon)$
#   {cite:p}`kingma2015adam`; K-FAC's $\tilde F^{-1} g$ with the Kronecker-factored curvature
#   (damped inside its factors, {ref}`ch-kfac-heuristics`);
# - **step-size rule**: a *constant* learning rate $\eta$ (and, for K-FAC, momentum $\mu$), tuned;
#   $\alpha$: the minimiser of the damped quadratic model along $d$, AdamQLR's rule
#   ({ref}`ch-step-size`),
#
#   $$
#   \alpha^\star = \frac{g^\top d}{d^\top C d + \lambda \lVert d \rVert^2}, \qquad
#   \Delta = -\alpha^\star d ;
#   $$ (eq-wh-alpha)
#
#   $\alpha$-mom: K-FAC's joint choice of a step along $-d$ and along the previous update, from the
#   same model on the plane they span,
#
#   $$
#   \begin{pmatrix} a \\ b \end{pmatrix} = -G^{-1}
#   \begin{pmatrix} g^\top v_1 \\ g^\top v_2 \end{pmatrix}, \quad
#   G_{ij} = v_i^\top (C + \lambda I) v_j, \quad v_1 = -d,\; v_2 = \Delta_{t-1}, \qquad
#   \Delta = a v_1 + b v_2 ;
#   $$ (eq-wh-alpha-mom)
# - **damping** $\lambda$: none; *fixed* at a tuned value; *adaptive*, the Levenberg-Marquardt
#   rule derived in {ref}`the damping chapter <ch-damping>` (lower $\lambda$ when the reduction
#   ratio $\rho$ says the model was accurate, raise it when not). For the K-FAC direction, $\lambda$ also damps the curvature
#   blocks that make the direction, so "none" there means the smallest damping the factors allow.
#
# Every combination that makes sense is one registered optimiser. The paper's own optimisers are
# cells of the design: SGD Minimal, Adam, AdamQLR (Adam, $\alpha$, adaptive), AdamQLR (Undamped),
# K-FAC ($\alpha$-mom, adaptive) and K-FAC (Unadaptive) (constant, fixed).

# %% tags=["hide-input"]
design = pd.DataFrame(
    [{"direction": c.direction, "step-size rule": c.rule, "damping": c.damping,
      "optimiser": c.optimiser, "in the paper": c.paper or "–"} for c in CELLS]
)  # fmt: skip
excluded = pd.DataFrame(
    [{"direction": d, "step-size rule": r, "damping": p, "why it is left out": why}
     for (d, r, p), why in EXCLUDED.items()]
)  # fmt: skip
glue("wh_cells", len(CELLS), display=False)
glue("wh_excluded", len(EXCLUDED), display=False)
format_table(design.set_index(["direction", "step-size rule", "damping"]))

# %% [markdown]
# The {glue:text}`wh_cells` cells above are the design; {glue:text}`wh_excluded` combinations are
# left out because they would duplicate another cell:

# %% tags=["hide-input"]
format_table(excluded.set_index(["direction", "step-size rule", "damping"]))

# %% [markdown]
# ## An equal budget for every cell
#
# A heuristic that needs careful tuning should not be credited with what the tuning found, nor
# should a cell lose because its search was smaller. Every cell is therefore tuned the same way:
# the same number of configurations drawn from its search space (batch size and whatever the
# cell's rules leave free: the learning rate and momentum of a constant rule, the fixed
# $\lambda$, the initial $\lambda$ and stepping factors of the adaptive rule), successive halving
# with reduction factor 4 on fractions of the epoch budget, the choice by final validation loss,
# then repeats with fresh seeds.

# %% tags=["hide-input"]
def scale_text(task):
    """Profile, budget, search size and repeats of one task's records, in words."""
    study = parts[task].study
    searches = [a.search for a in study.arms if a.search is not None]
    repeats = max(len(a.seeds) for a in study.arms)
    epochs = runs_of(task, CELLS[0])[0].spec.settings().epochs
    return (
        f"{titles[task]}: profile {study.profile}, {epochs:g} epochs, every cell tuned by a random "
        f"search of {searches[0].n_trials} configurations with successive halving, then "
        f"{repeats} repeats"
    )


glue(
    "wh_scale",
    "; ".join(scale_text(t) for t in tasks)
    + (f"; not yet drawn, their paper campaign under way: "
       f"{' and '.join(get_task(t).title for t in waiting)}" if waiting else ""),  # fmt: skip
    display=False,
)
glue("wh_runs", provenance_text(all_records), display=False)
summaries = {
    titles[t]: tuning_summary(parts[t], [a.id for a in parts[t].study.arms]) for t in tasks
}
edges = edge_choices({k: v for part in parts.values() for k, v in part.plans.items()})
glue(
    "wh_edges",
    f"{len(edges)} tuned choices lie at an edge of their search space"
    + (": " + "; ".join(e.text() for e in edges[:8]) + ("; …" if len(edges) > 8 else "")
       if edges else ""),
    display=False,
)  # fmt: skip
format_table(pd.concat(summaries, names=["task", "cell"])[
    ["configurations", "trial runs", "choice", "chosen rung", "chosen objective"]
])  # fmt: skip

# %% [markdown]
# Scale: {glue:text}`wh_scale`. {glue:text}`wh_edges`.
#
# ## Every cell's result
#
# The table gives each cell's median test loss over its repeats at the end of the epoch budget,
# and at a matched optimisation time (the shortest of the cells' median run times on that task, so
# that every cell has run at least that long), each with a 95 % bootstrap interval (2000
# resamples). A run that diverged counts as no better than its starting loss, so that one
# blown-up run does not make a cell's median infinite.

# %% tags=["hide-input"]
def median_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Return the median of a cell's runs and its 95 % percentile-bootstrap interval."""
    boot = np.median(np.random.default_rng(0).choice(values, size=(2000, len(values))), axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return float(np.median(values)), float(low), float(high)


finals: dict[str, dict[tuple[str, str, str], np.ndarray]] = {}
at_time: dict[str, dict[tuple[str, str, str], np.ndarray]] = {}
matched: dict[str, float] = {}
rows = []
for t in tasks:
    finals[t], at_time[t] = {}, {}
    cell_runs = {c: runs_of(t, c) for c in CELLS}
    matched[t] = min(
        float(np.median([r.provenance["optimisation_time_s"] for r in runs]))
        for runs in cell_runs.values()
    )
    for c, records in cell_runs.items():
        epochs = float(records[0].spec.settings().epochs)
        key = (c.direction, c.rule, c.damping)
        finals[t][key] = capped_finals(records, "test_loss", at=epochs)
        at_time[t][key] = capped_finals(records, "test_loss", at=matched[t], axis="time")
        m, lo, hi = median_interval(finals[t][key])
        mt, lot, hit = median_interval(at_time[t][key])
        rows.append({"task": titles[t], "direction": c.direction, "rule": c.rule,
                     "damping": c.damping, "end: median": m, "end: CI low": lo,
                     "end: CI high": hi, "matched time: median": mt, "matched time: CI low": lot,
                     "matched time: CI high": hit, "runs": len(records)})  # fmt: skip
glue("wh_matched", "; ".join(f"{matched[t]:.3g} s on {titles[t]}" for t in tasks), display=False)
results = pd.DataFrame(rows).set_index(["task", "direction", "rule", "damping"])
format_table(results)

# %% [markdown]
# ## Main effects and interactions
#
# The design is balanced on the two quadratic-model rules ($\alpha$ and $\alpha$-mom), which every
# direction has with every damping: 18 cells per task. On those cells, the *range* of a factor is
# how many times higher the median final test loss of its worst level is than that of its best,
# averaged over the other two factors (on the log scale; {mod}`adamqlr.studies.effects`). The
# factor with the largest range is the one whose choice matters most. {numref}`fig-wh-interactions`
# draws the cells themselves: parallel lines mean that the damping's effect does not depend on the
# step-size rule.

# %%
FACTORS = ("direction", "rule", "damping")
effects = {}
effects_time = {}
range_rows = []
for t in tasks:
    balanced = {k: v for k, v in finals[t].items() if k[1] in ("alpha", "alpha-mom")}
    fx = factorial_effects(balanced, FACTORS)
    effects[t] = fx
    effects_time[t] = factorial_effects(
        {k: v for k, v in at_time[t].items() if k[1] in ("alpha", "alpha-mom")}, FACTORS
    )
    for factor, row in fx.ranges.iterrows():
        range_rows.append({"task": titles[t], "factor": factor, "worst / best": row["ratio"],
                           "CI low": row["low"], "CI high": row["high"], "best": row["best"],
                           "worst": row["worst"]})  # fmt: skip
ranges = pd.DataFrame(range_rows).set_index(["task", "factor"])
# how the largest range compares with each other factor's, by their 95 % intervals
AGAINST = {"supported": "clearly larger than", "inconclusive": "not distinguishable from",
           "not supported": "smaller than"}  # fmt: skip
sentences = []
for t, fx in effects.items():
    largest = fx.largest()
    others = [f for f in FACTORS if f != largest]
    verdicts = [fx.ordering(largest, other) for other in others]
    if len(set(verdicts)) == 1:
        against = f"{AGAINST[verdicts[0]]} the {others[0]}'s and the {others[1]}'s"
    else:
        pairs = zip(others, verdicts, strict=True)
        against = ", ".join(f"{AGAINST[v]} the {o}'s" for o, v in pairs)
    row = fx.ranges.loc[largest]
    sentences.append(
        f"on {titles[t]}, the {largest} has the largest range, {times(row['ratio'])} (95 % CI "
        f"{span(row['low'], row['high'])}; best level {row['best']}), {against} by their intervals"
    )
glue("wh_order", "; ".join(sentences), display=False)
time_sentences = []
for t, fx in effects_time.items():
    row = fx.ranges.loc[fx.largest()]
    time_sentences.append(
        f"on {titles[t]}, the {fx.largest()} ({times(row['ratio'])}, 95 % CI "
        f"{span(row['low'], row['high'])})"
    )
glue("wh_order_time", "; ".join(time_sentences), display=False)
format_table(ranges)

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Median final test loss of the 18 balanced cells per task (a row per task; panels: direction; x: damping; lines: step-size rule; bars: 95 % bootstrap intervals; log scale). Runs: {glue:text}`wh_runs`.", "name": "fig-wh-interactions"}}
# one figure, one row of panels per task; one legend below (every row has the same rules)
fig, grid = plt.subplots(len(tasks), 3, figsize=(8.7, 3.2 * len(tasks) + 0.5), squeeze=False,
                         sharey="row", layout="constrained")  # fmt: skip
for i, (row, t) in enumerate(zip(grid, tasks, strict=True)):
    panel_titles = [f"{titles[t]}: {d}" for d in effects[t].levels["direction"]]
    plot_interactions(effects[t], x="damping", lines="rule", panels="direction",
                      titles=panel_titles, axes=row, legend=i == 0)  # fmt: skip
plt.show()

# %% [markdown]
# ## The paper's partial answer
#
# The paper answers the question with two comparisons: AdamQLR against Adam (K-FAC's heuristics
# added to Adam's direction) and K-FAC against K-FAC (Unadaptive) (K-FAC's heuristics taken away
# from its direction). Both are cells of this design, tuned with the same budget:

# %%
paper_pairs = [
    (cell("Adam", "alpha", "adaptive"), cell("Adam", "constant", "none")),
    (cell("K-FAC", "alpha-mom", "adaptive"), cell("K-FAC", "constant", "fixed")),
]
paper_rows = []
for t in tasks:
    for a, b in paper_pairs:
        ra, rb = runs_of(t, a), runs_of(t, b)
        epochs = float(ra[0].spec.settings().epochs)
        c = compare(ra, rb, "test_loss", axis="epoch", at=epochs,
                    labels=(f"{a.paper} ({titles[t]})", f"{b.paper} ({titles[t]})"))  # fmt: skip
        paper_rows.append(judge(c, "lower"))
paper_table = verdict_table(paper_rows)
glue("wh_paper", "; ".join(v.text() for v in paper_rows), display=False)
format_table(paper_table)

# %% [markdown]
# (wh-heldout)=
# ## Beyond the paper: ρ on the next batch
#
# The adaptive damping trusts the quadratic model more (lowers $\lambda$) when the loss fell about
# as much as the model $M_t$ predicted. The paper measures both on the mini-batch $B_t$ the step
# was fitted to, and {ref}`the damping chapter <ch-damping>` finds that this ratio is optimistic:
# near 1 on the step's own batch, far lower on images the step has not seen. The option
# `rho_data="next"` of
# {class}`adamqlr.AdamQLR` ({mod}`adamqlr.heldout`) measures the actual change on the *next*
# mini-batch instead, data the step was not fitted to:
#
# $$
# \rho_t = \frac{L_{B_{t+1}}(\theta_{t+1}) - L_{B_{t+1}}(\theta_t)}{M_t(\delta_t)} .
# $$ (eq-wh-heldout-rho)
#
# **What it costs.** The next step's gradient pass evaluates $L_{B_{t+1}}(\theta_{t+1})$ anyway.
# $L_{B_{t+1}}(\theta_t)$ is one forward pass at the old parameters on the new batch, and it
# replaces the default's trial forward pass at the new parameters on the old batch: the same
# number of forward passes per step. The price is memory: the old parameters $\theta_t$ are kept
# from one step to the next, one parameter-sized buffer. The held-out $\rho_t$ arrives one step
# late, so it sets the damping of step $t+1$ (as the same-batch $\rho_t$ does by default) but
# cannot reject step $t$, which has already been taken.
#
# **What to expect.** The Levenberg-Marquardt thresholds rest on $\rho \to 1$ as the step
# shrinks. The held-out ratio does not tend to 1: for a small step $\delta_t = -\alpha_t d_t$ it
# tends to $g_{t+1}^\top d_t / g_t^\top d_t$, how far the next batch's gradient agrees with this
# batch's along $d_t$, which mini-batch noise can keep below the threshold however small the
# step. Where it does, $\lambda$ keeps rising until the steps stop changing the loss: a run that
# cannot diverge, but may also stop learning ({ref}`se-mechanism` draws it at every batch size).
#
# The option is one extra row of the design (Adam · $\alpha^\star$ · adaptive $\lambda$ ·
# held-out $\rho$), tuned with the same search budget as every cell and repeated with the same
# seeds; it enters no main effect. Beside the AdamQLR cell, task by task, at the end of the epoch
# budget and at matched optimisation time (the claim: the held-out row's median final test loss is
# no higher than AdamQLR's):

# %%
heldout_verdicts = []
heldout_words = []
for t in tasks:
    for extra in EXTRA_CELLS:
        base = cell(extra.direction, extra.rule, extra.damping)
        ra, rb = runs_of(t, extra), runs_of(t, base)
        labels = (f"{extra.label} ({titles[t]})", f"{base.label} ({titles[t]})")
        epochs = float(ra[0].spec.settings().epochs)
        by_epoch = judge(compare(ra, rb, "test_loss", axis="epoch", at=epochs, labels=labels),
                         "not higher")  # fmt: skip
        by_time = judge(compare(ra, rb, "test_loss", axis="time", labels=labels), "not higher")
        heldout_verdicts += [by_epoch, by_time]
        words = {"supported": "lower", "not supported": "higher",
                 "inconclusive": "not distinguishable"}  # fmt: skip
        e, m = by_epoch.comparison, by_time.comparison
        heldout_words.append(
            f"on {titles[t]}, {e.where} the held-out row's median test loss is "
            f"{e.interval_text()} AdamQLR's ({e.runs[0]} and {e.runs[1]} runs): "
            f"{words[by_epoch.outcome]}; {m.where} it is {m.interval_text()}: "
            f"{words[by_time.outcome]}"
        )
glue("wh_heldout", "; ".join(heldout_words), display=False)
format_table(verdict_table(heldout_verdicts))

# %% [markdown]
# The two rows' final test losses and what their searches chose (the held-out row's tuning may
# pick another batch size, which changes how noisy its $\rho$ is):

# %% tags=["hide-input"]
heldout_rows = []
TUNED_DAMPING = ("batch_size", "initial_damping", "damping_decrease", "damping_increase")
for t in tasks:
    for c in (cell("Adam", "alpha", "adaptive"), *EXTRA_CELLS):
        arm = arm_of(t, c)
        records = runs_of(t, c)
        epochs = float(records[0].spec.settings().epochs)
        m, lo, hi = median_interval(capped_finals(records, "test_loss", at=epochs))
        choice = parts[t].plans[arm.id].choice or {}
        heldout_rows.append({"task": titles[t], "row": c.label, "median": m, "CI low": lo,
                             "CI high": hi, "runs": len(records),
                             **{k: choice.get(k) for k in TUNED_DAMPING}})  # fmt: skip
format_table(pd.DataFrame(heldout_rows).set_index(["task", "row"]))

# %% [markdown]
# ## What the runs say
#
# These statements describe the records named in the captions ({glue:text}`wh_scale`).
#
# - **Which factor matters most.** Over the balanced cells, at the end of the epoch budget,
#   {glue:text}`wh_order`. At matched optimisation time ({glue:text}`wh_matched`), the factor
#   with the largest range is {glue:text}`wh_order_time`.
#
# **Against the paper.** The paper's own two comparisons, rerun as cells of this design:
# {glue:text}`wh_paper`. Where the direction's range is clearly the largest (its interval above
# the others'), the curvature model (or Adam's diagonal substitute for it) matters more than the
# heuristics wrapped around it; where the step-size rule's or the damping's is, the heuristics do
# the work; where the intervals overlap, these records rank the factors only by their point
# estimates, and more repeats would be needed to say which matters most.
#
# **Beyond the paper.** Measuring $\rho$ on the next mini-batch {eq}`eq-wh-heldout-rho` instead
# of the step's own: {glue:text}`wh_heldout`.
