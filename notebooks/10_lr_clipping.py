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
# (ch-lr-clipping)=
# # Clipping the step size
#
# **Question.** In the first versions of the paper (arXiv v1/v2, "Adam through a Second-Order
# Lens"), AdamQLR clipped its step size to $[-\alpha_\mathrm{max}, \alpha_\mathrm{max}]$; the
# untuned setting used $\alpha_\mathrm{max} = 0.1$, the tuned one searched
# $\alpha_\mathrm{max}$ over $[10^{-4}, 10]$, and a sensitivity study varied it. In the
# camera-ready code {cite:p}`clarke24a` the clip is gone from both main variants: the clearest
# documented change between the versions. A reviewer of the first version called the clip a
# heuristic that K-FAC does not have, which made the comparison unfair
# {cite:p}`clarke2023openreview`. What does the clip do, and was dropping it harmless?

# %% tags=["parameters"]
# "quick": read the committed quick-profile run records; "paper": read paper-profile records,
# or stop with the list of missing runs and the command that makes them; "smoke" (the tests):
# read the quick records as they are, never compute. compute=True makes missing runs instead.
profile = "quick"
compute = False

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from adamqlr.plots import set_theme
from adamqlr.plots.experiments import plot_comparison, plot_final_vs_value, plot_sensitivity
from adamqlr.plots.tables import format_table
from adamqlr.studies import notebook_records
from adamqlr.studies.analysis import (
    divergence_rates,
    final_table,
    provenance_text,
    sensitivity_table,
)
from adamqlr.studies.core import arm_task
from adamqlr.studies.verdicts import compare, judge, span, times

set_theme()
pd.set_option("display.precision", 4)

# reads: results/uci-energy/adamqlr-untuned/*/manifest.json
# reads: results/uci-protein/adamqlr-untuned/*/manifest.json
# reads: results/fashion-mnist/adamqlr-untuned/*/manifest.json
# reads: results/fashion-mnist/adamqlr/*/manifest.json
data = notebook_records("lr-clipping", profile, compute=compute)
study = data.study
print(f"study {study.name!r}, profile {study.profile!r}: {len(study.arms)} arms")
print(provenance_text(data.all_records()))

# %% [markdown]
# ## The clip
#
# The clip is applied to the minimiser of the damped quadratic model, before the step is taken
# and before the model change that enters the reduction ratio is computed:
#
# $$
# \alpha = \operatorname{clip}\!\left(\frac{g^\top d}{d^\top F d + \lambda \lVert d\rVert^2},\;
# -\alpha_\mathrm{max},\; \alpha_\mathrm{max}\right), \qquad
# M(-\alpha d) - M(0) = \tfrac12 \alpha^2 \big(d^\top F d + \lambda \lVert d\rVert^2\big)
#   - \alpha\, g^\top d .
# $$ (eq-lc-clip)
#
# A clipped step is shorter than the model's minimiser, so the model change is still negative and
# the reduction ratio stays meaningful; when it is well predicted the damping falls, which would
# lengthen the unclipped step but not the clipped one. So a binding clip acts as a fixed learning
# rate $\alpha_\mathrm{max}$ on Adam's direction (Adam's own update at learning rate
# $\alpha_\mathrm{max}$, up to $\epsilon$), and the quadratic model only ever *shortens* steps.
# The study runs untuned AdamQLR with and without $\alpha_\mathrm{max} = 0.1$ (the v2 untuned
# value) on three tasks, and sweeps $\alpha_\mathrm{max}$ around the tuned AdamQLR of
# {ref}`ch-untuned-vs-tuned` on Fashion-MNIST, as v2's sensitivity study did.

# %% [markdown]
# ## How often would the clip bind?
#
# The unclipped runs record every step size the quadratic model chose. The share of steps with
# $|\alpha| > 0.1$ is the share that the v2 untuned clip would have changed:

# %% tags=["hide-input"]
unclipped = {a.id: a for a in study.arms if a.group == "" and "clipped" not in a.id}
binding = {}
for arm_id, arm in unclipped.items():
    steps = np.concatenate(
        [r.metrics.loc[r.metrics["step"] >= 1, "lr"].abs().to_numpy() for r in data.records[arm_id]]
    )
    title = data.records[arm_id][0].provenance.get("task_title")
    binding[title] = {
        "steps": len(steps),
        "|alpha| > 0.1 (share)": float(np.mean(steps > 0.1)),
        "median |alpha|": float(np.median(steps)),
        "90th percentile |alpha|": float(np.quantile(steps, 0.9)),
    }
binding = pd.DataFrame(binding).T
for title, row in binding.iterrows():
    glue(f"lc_bind_{title.lower().replace(' ', '_').replace('-', '_')}",
         float(row["|alpha| > 0.1 (share)"]), display=False)
format_table(binding.rename(columns={
    "|alpha| > 0.1 (share)": r"$|\alpha| > 0.1$ (share)",
    "median |alpha|": r"median $|\alpha|$",
    "90th percentile |alpha|": r"90th percentile of $|\alpha|$",
}))

# %% [markdown]
# ## Untuned, with and without the clip

# %% tags=["hide-input"]
tasks = list(dict.fromkeys(arm_task(study, a) for a in study.arms if a.group in ("", "clipped")))
runs = {}
for task in tasks:
    arms = [a for a in study.select(task=task) if a.group in ("", "clipped")]
    title = data.records[arms[0].id][0].provenance.get("task_title", task)
    runs[title] = {a.label: data.records[a.id] for a in arms}
glue("lc_runs", provenance_text([r for g in runs.values() for rs in g.values() for r in rs]),
     display=False)
glue("lc_repeats", max(len(a.seeds) for a in study.arms), display=False)
glue("lc_profile", str(study.profile), display=False)

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Untuned AdamQLR without a clip (the camera-ready setting) and with the arXiv-v2 untuned clip $\\alpha_\\mathrm{max} = 0.1$ {eq}`eq-lc-clip`: mini-batch training loss (left) and test loss (right) against the step (the clip adds no work to a step, so time would only add the noise of the shared machine). Lines: mean of 50 bootstrap medians over {glue:text}`lc_repeats` repeats; bands: one bootstrap standard deviation. Runs: {glue:text}`lc_runs`.", "name": "fig-lc-untuned"}}
fig = plot_comparison(runs, ("train_loss", "test_loss"), time="step")
plt.show()

# %% tags=["hide-input"]
tables = {title: final_table(groups, ("train_loss", "test_loss")) for title, groups in runs.items()}
table = pd.concat(tables, names=["task", "optimiser"])
for title, t in tables.items():
    clipped = [lbl for lbl in t.index if "α_max" in lbl][0]
    plain = [lbl for lbl in t.index if "no clipping" in lbl][0]
    at = float(runs[title][plain][0].spec.settings().epochs)
    c = compare(runs[title][clipped], runs[title][plain], "test_loss", axis="epoch", at=at,
                labels=(clipped, plain))  # fmt: skip
    glue(f"lc_ratio_{title.lower().replace(' ', '_').replace('-', '_')}",
         f"{c.interval_text()}, {judge(c, 'lower').outcome}", display=False)  # fmt: skip
format_table(table)

# %% [markdown]
# ## Where the clip binds: small batches
#
# At the untuned batch size of 3200 the clip rarely binds. It binds where the mini-batch is small
# and the quadratic model is fitted to a noisy batch ({ref}`ch-sensitivity` shows the mechanism).
# The study therefore also runs untuned AdamQLR on Fashion-MNIST at small batch sizes, each with
# and without $\alpha_\mathrm{max} = 0.1$, over the same seeds. For each batch size the table
# gives how often the clip would bind without it, how many runs diverged (final training loss
# not finite or above $10^6$; 95 % Wilson interval), and the verdict on "the clip lowers the
# median final test loss" (95 % bootstrap interval of the ratio, clipped over unclipped, at the
# end of the epoch budget; a diverged run counts as an infinite loss).

# %%
by_batch = {}
for arm in sorted(study.select(group="clip_batch"), key=lambda a: (a.value, a.label)):
    clipped = "α_max" in arm.label
    by_batch.setdefault(int(arm.value), {})["clip" if clipped else "plain"] = arm
rates = divergence_rates(data, ["clip_batch"]).set_index("label")
bind_rows, batch_verdicts = {}, []
for batch, pair in by_batch.items():
    plain, clip = data.records[pair["plain"].id], data.records[pair["clip"].id]
    alphas = np.concatenate(
        [r.metrics.loc[r.metrics["step"] >= 1, "lr"].abs().dropna().to_numpy() for r in plain]
    )
    epochs = float(plain[0].spec.settings().epochs)
    c = compare(clip, plain, "test_loss", axis="epoch", at=epochs,
                labels=(pair["clip"].label, pair["plain"].label))  # fmt: skip
    verdict = judge(c, "lower")
    batch_verdicts.append(verdict)
    row = {"|alpha| > 0.1 without the clip (share)": float(np.mean(alphas > 0.1))}
    for key, arm in (("without", pair["plain"]), ("with", pair["clip"])):
        r = rates.loc[arm.label]
        row[f"diverged {key}"] = f"{r['diverged']}/{r['runs']} [{r['low']:.0%}, {r['high']:.0%}]"
    row["test loss ratio (with / without)"] = times(c.ratio)  # "< 1e-6×" against diverged runs
    row["95 % CI"] = span(c.low, c.high)
    row["verdict: the clip lowers it"] = verdict.outcome
    bind_rows[batch] = row
bind_table = pd.DataFrame(bind_rows).T
bind_table.index.name = "batch size"
glue("lc_batch_runs",
     provenance_text([r for pair in by_batch.values() for a in pair.values()
                      for r in data.records[a.id]]), display=False)  # fmt: skip
small = min(by_batch)
glue("lc_small_batch", small, display=False)
glue("lc_small_verdict", batch_verdicts[0].text(), display=False)
glue("lc_small_bind", float(bind_rows[small]["|alpha| > 0.1 without the clip (share)"]),
     display=False)
glue("lc_small_div", f"{bind_rows[small]['diverged without']} without the clip and "
     f"{bind_rows[small]['diverged with']} with it", display=False)  # fmt: skip
format_table(bind_table.rename(columns={
    "|alpha| > 0.1 without the clip (share)": r"$|\alpha| > 0.1$ without the clip (share)",
}))  # fmt: skip

# %% [markdown]
# Runs: {glue:text}`lc_batch_runs`.

# %% [markdown]
# ## Sweeping $\alpha_\mathrm{max}$ around the tuned configuration

# %% tags=["hide-input"]
sweep = data.by_label(group="lr_clip")
values = {a.label: a.value for a in study.select(group="lr_clip")}
tuned_choice = data.plans[study.select(group="lr_clip")[0].id].choice
glue("lc_sweep_runs", provenance_text([r for rs in sweep.values() for r in rs]), display=False)
glue("lc_tuned", ", ".join(f"{k} = {v:g}" for k, v in tuned_choice.items()), display=False)
print("tuned AdamQLR configuration the sweep starts from:", tuned_choice)

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Sensitivity to the clip $\\alpha_\\mathrm{max}$ on Fashion-MNIST, starting from the tuned AdamQLR ({glue:text}`lc_tuned`). Left: test loss against optimisation time, one median curve per value (colour: $\\alpha_\\mathrm{max}$, log scale); right: final test loss against $\\alpha_\\mathrm{max}$ (median over repeats, bars: range). Runs: {glue:text}`lc_sweep_runs`.", "name": "fig-lc-sweep"}}
fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), width_ratios=(1.4, 1))
plot_sensitivity(sweep, values, "test_loss", ax=axes[0], colorbar_label=r"$\alpha_\mathrm{max}$")
sens = sensitivity_table(data, "lr_clip", "test_loss")
plot_final_vs_value(sens, ax=axes[1], xlabel=r"$\alpha_\mathrm{max}$", ylabel="final test loss")
plt.show()
best = sens.loc[sens["median"].idxmin()]
largest = sens.loc[sens["value"].idxmax()]
glue("lc_best_value", f"{best['value']:g}", display=False)
glue("lc_best_gain", float(best["median"] / largest["median"]), display=False)
glue("lc_largest_value", f"{largest['value']:g}", display=False)

# %% tags=["hide-input"]
format_table(
    sens.rename(columns={"diverged": "non-finite runs"}), diverged=["median", "min", "max"]
)

# %% [markdown]
# ## What the figures say
#
# These statements describe the records named in the captions, made under profile
# {glue:text}`lc_profile` ({glue:text}`lc_repeats` repeats per arm; `quick` is a reduced-scale
# stand-in with the tasks' quick budgets and 4 values of $\alpha_\mathrm{max}$ instead of 11).
#
# - **How often the clip binds.** With $\alpha_\mathrm{max} = 0.1$, the clip would change
#   {glue:text}`lc_bind_uci_energy:.1%` of the untuned steps on UCI Energy,
#   {glue:text}`lc_bind_uci_protein:.1%` on UCI Protein and
#   {glue:text}`lc_bind_fashion_mnist:.1%` on Fashion-MNIST (the table above gives the median and
#   90th percentile of $|\alpha|$). The quadratic model's step sizes are mostly an order of
#   magnitude below the v2 clip.
# - **Its effect on the untuned optimiser** follows: final test loss with the clip over without
#   it (median over repeats at the end of the epoch budget, 95 % bootstrap interval, and the
#   verdict on "the clip lowers it") is {glue:text}`lc_ratio_uci_energy` on UCI Energy,
#   {glue:text}`lc_ratio_uci_protein` on UCI Protein and {glue:text}`lc_ratio_fashion_mnist` on
#   Fashion-MNIST. A clip
#   that rarely binds changes only the rare long step (which can still move the end point of a
#   trajectory). The clip costs nothing, so {numref}`fig-lc-untuned` is drawn against the step;
#   against time, the records of the two arms differ by the load of the shared machine while
#   each ran (compare their `time_s` in the table).
# - **A clip that binds** ({numref}`fig-lc-sweep`): around the tuned configuration, the lowest
#   median final test loss is at $\alpha_\mathrm{max} =$ {glue:text}`lc_best_value`,
#   {glue:text}`lc_best_gain:.2f` times that of the largest value swept
#   ({glue:text}`lc_largest_value`, which leaves the steps unclipped). Small values turn AdamQLR
#   into Adam with a learning rate $\alpha_\mathrm{max}$ on most steps {eq}`eq-lc-clip`, which
#   is slow; a value near the typical step size trims only the longest steps.
#
# - **Where it binds.** At batch size {glue:text}`lc_small_batch`, the clip would change
#   {glue:text}`lc_small_bind:.1%` of the untuned steps, and {glue:text}`lc_small_div` runs
#   diverged. {glue:text}`lc_small_verdict`.
#
# **Against the paper.** The camera-ready paper dropped the clip from its main variants. At the
# untuned batch size our runs find the v2 clip nearly inert, so dropping it changes little there;
# at small batch sizes, where it binds, the table above says what it does. Whether the paper
# gives the reviewer's objection, this or another reason for the change, this book could not
# check ({doc}`sources`).
