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
# (ch-runtime)=
# # The cost of a step, and what it does to the runtime axis
#
# **Question.** Every comparison in the paper {cite:p}`clarke24a` is drawn against wall-clock
# time, so an optimiser is only as good as its progress per step *divided by its cost per step*.
# AdamQLR pays for its step size with a curvature product and an extra forward pass. How much
# does one step cost against Adam's, on which hardware, at which batch size, and how does that
# cost move the curves of {ref}`ch-untuned-vs-tuned`?
#
# The paper has no dedicated overhead benchmark; its runtime evidence is the x-axis of every
# figure and the steps and times of its tables. Its first version put the overhead at "only one
# additional forward pass", which a reviewer disputed {cite:p}`clarke2023openreview`.

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
from adamqlr.plots.experiments import draw_runs, plot_evaluations, plot_step_costs
from adamqlr.plots.tables import format_table
from adamqlr.studies import notebook_records
from adamqlr.studies.analysis import provenance_text, relative_cost, step_costs
from adamqlr.studies.benchmarks import load_step_cost

set_theme()
pd.set_option("display.precision", 3)

# reads: results/fashion-mnist/*/*/manifest.json
# reads: results/cifar-10/*/*/manifest.json
data = notebook_records("runtime", profile, compute=compute)
study = data.study
print(f"study {study.name!r}, profile {study.profile!r}: {len(study.arms)} arms")
print(provenance_text(data.all_records()))

# %% [markdown]
# ## What one step does
#
# In units of one forward pass $c_f$ and one forward-plus-backward pass $c_{fb}$, the steps of
# the optimisers compared are
#
# $$
# c_\mathrm{Adam} \approx c_{fb}, \qquad
# c_\mathrm{AdamQLR,F} \approx c_{fb} + c_\mathrm{JVP} + c_f, \qquad
# c_\mathrm{AdamQLR,H} \approx c_{fb} + c_\mathrm{HVP} + c_f ,
# $$ (eq-rt-cost)
#
# where $c_\mathrm{JVP}$ is one forward-mode Jacobian-vector product through the network (for
# $d^\top F d$), $c_\mathrm{HVP}$ one Hessian-vector product (forward-over-reverse, for
# $d^\top H d$), and $c_f$ the forward pass on the same batch that gives the reduction ratio. A
# JVP costs roughly one to two forward passes, an HVP roughly a forward-plus-backward more, so the
# Fisher step should cost about two to three Adam steps when the network's passes dominate; for a
# network this small, the fixed per-step cost of Python and of launching many small operations can
# dominate instead. K-FAC adds the Kronecker factors' statistics (here a sampled backward pass),
# their inverses every step, and its own two-dimensional quadratic model.
#
# Two measurements answer the question. The **step-cost benchmark** (`benchmarks/step_cost.py`)
# times Adam and AdamQLR with either curvature side by side, each in turn for several steps in a
# row on the same batches (so that a step follows the optimiser's own previous step, as in a
# training loop, and finds the caches as that step left them), together with the pieces of
# {eq}`eq-rt-cost` (the forward-plus-backward pass, the JVP, the HVP, the trial forward); K-FAC
# is timed the same way in rounds of its own beside Adam, since its factorisations, run between
# the other variants' turns, would slow each one's next step. It keeps the medians of several
# runs: whatever load the machine carries hits every variant of a round alike, so its ratios are
# the book's one source for what a step costs. The **runtime study** times
# each optimiser for a fixed number of steps at several batch sizes, with evaluation only at the
# start and the end (outside the clock), and reads the time of every step from the records'
# clock: that is what the runtime axis of the other chapters is made of, load included.
#
# ## The step, measured side by side

# %% tags=["hide-input"]
# reads: results/benchmarks/step_cost-cpu.json
bench = load_step_cost()
variants = {
    "adamqlr-fisher": "AdamQLR (Fisher)",
    "adamqlr-hessian": "AdamQLR (Hessian)",
    "kfac-adaptive": "K-FAC",
    "kfac-unadaptive": "K-FAC (Unadaptive)",
}
cases = {"mlp-50": "784-50-10, batch 50", "mlp-3200": "784-50-10, batch 3200",
         "energy-588": "8-50-1, batch 588"}  # fmt: skip
rows = bench.table[bench.table["variant"].isin(list(variants))].copy()
rows["optimiser"] = rows["variant"].map(variants)
rows["case"] = rows["case"].map(cases)
bench_table = rows.pivot(index="optimiser", columns="case", values=["ratio", "over_floor"])
bench_table = bench_table.rename(columns={"ratio": "× Adam", "over_floor": "× floor"}, level=0)
glue("rt_bench", bench.text(), display=False)
for key, variant in (("fisher", "adamqlr-fisher"), ("hessian", "adamqlr-hessian"),
                     ("kfac", "kfac-adaptive")):  # fmt: skip
    for case in cases:
        glue(f"rt_b_{key}_{case.replace('-', '_')}", bench.ratio(case, variant), display=False)
format_table(bench_table.loc[list(variants.values()), :])

# %% [markdown]
# Each entry is the median step time over Adam's (forward, backward and `torch.optim.Adam`'s
# update, run as `torch.optim` runs it: its step wrapper labels every step for the profiler, a
# cost that shows on small models; AdamQLR's and K-FAC's steps make that label only while a
# profiler records) on the same batch, and over the step's *floor*: the sum of the pieces it cannot avoid,
# timed alone (for the Fisher step: the forward-plus-backward pass, the layer-wise JVP and the
# trial forward; for the Hessian: the gradient-and-HVP pass and the trial forward; for K-FAC: the
# factor statistics, the Cholesky factorisations, the solves and, when adaptive, its tangents and
# trial forward). Source: {glue:text}`rt_bench`. The rest of this chapter reads the clocks of
# real runs, and compares them with these ratios.
#
# ## The step, as the runs' clocks saw it

# %% tags=["hide-input"]
costs = step_costs(data.all_records())
costs["label"] = costs["optimiser"].map({a.base.optimiser: a.label for a in study.arms})
relative = relative_cost(costs, reference="adam")
glue("rt_runs", provenance_text(data.all_records()), display=False)
tasks = list(relative["task"].unique())
format_table(
    relative.drop(columns="optimiser"),  # the label names the optimiser
    intervals={"median_s": ("low_s", "high_s"), "ratio": ("ratio_low", "ratio_high")},
    headers={"label": "optimiser", "median_s": "median step time (s) [fastest, slowest run]",
             "ratio": "× Adam's [fastest, slowest run]"},
)  # fmt: skip

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Time per optimisation step against batch size (left; for each run the median over its steps after the first, then the median over the runs; bars: the smallest to the largest run) and relative to Adam's at the same batch size (right), on the Fashion-MNIST MLP 784-50-10. Runs: {glue:text}`rt_runs`.", "name": "fig-rt-cost"}}
main = tasks[0]
plot_step_costs(relative[relative["task"] == main])
plt.show()

# %% tags=["hide-input"]
def ratios(optimiser: str) -> pd.Series:
    rows = relative[(relative["task"] == main) & (relative["optimiser"] == optimiser)]
    return rows.set_index("batch_size")["ratio"].sort_index()


for key, optimiser in (("fisher", "adamqlr-untuned"), ("hessian", "adamqlr-untuned-hessian"),
                       ("kfac", "kfac-untuned")):  # fmt: skip
    r = ratios(optimiser)
    glue(f"rt_{key}_small", float(r.iloc[0]), display=False)
    glue(f"rt_{key}_large", float(r.iloc[-1]), display=False)
batches = sorted(relative.loc[relative["task"] == main, "batch_size"].unique())
glue("rt_batch_small", int(batches[0]), display=False)
glue("rt_batch_large", int(batches[-1]), display=False)
# Adam's step at batch 50 by the runs' clocks and in the benchmark (the same network)
at_50 = relative[(relative["task"] == main) & (relative["batch_size"] == 50)]
glue("rt_adam_run_ms", 1e3 * float(at_50.set_index("optimiser").loc["adam", "median_s"]),
     display=False)  # fmt: skip
adam_bench = bench.table.set_index(["case", "variant"]).loc[("mlp-50", "adam"), "ms"]
glue("rt_adam_bench_ms", float(adam_bench), display=False)
# How many of its steps the Fisher arm accepted at the smallest batch (a rejected step skips
# the trial pass and the update), and which of its runs stopped early.
small_runs = []
for r in data.all_records():
    settings = r.provenance.get("settings", {})
    if (settings.get("task"), settings.get("optimiser"), settings.get("batch_size")) == (
        main, "adamqlr-untuned", int(batches[0])
    ):
        steps = r.metrics[r.metrics["step"] >= 1]
        small_runs.append((float(steps["accepted"].mean()), int(steps["step"].max()),
                           str(r.provenance.get("stop_reason"))))  # fmt: skip
small_runs.sort(reverse=True)
shares = [f"{100 * share:.0f} %" for share, _, _ in small_runs]
accepted = " and ".join([", ".join(shares[:-1]), shares[-1]] if len(shares) > 1 else shares)
stopped = [(step, reason) for _, step, reason in small_runs if reason != "steps"]
glue("rt_fisher_accepted_small", accepted, display=False)
glue("rt_fisher_stopped_small",
     "".join(f"; one of them stopped at step {step} "
             f"({reason.replace('nonfinite', 'non-finite').replace('_', ' ')})"
             for step, reason in stopped) or "; none of them stopped early",
     display=False)  # fmt: skip

# Is the Hessian step resolved as dearer than the Fisher step? Only where the spread of its runs
# lies wholly above the spread of the Fisher runs at the same batch size.
rows = relative[relative["task"] == main].set_index(["optimiser", "batch_size"])
unresolved = [
    int(b)
    for b in batches
    if rows.loc[("adamqlr-untuned-hessian", b), "low_s"] <= rows.loc[("adamqlr-untuned", b), "high_s"]
]
if not unresolved:
    hessian_sentence = "A Hessian step costs more than a Fisher step at every batch size timed"
else:
    hessian_sentence = (
        "At batch size(s) " + ", ".join(map(str, unresolved)) + " the runs do not resolve "
        "whether a Hessian step costs more than a Fisher step: their spreads overlap"
    )
glue("rt_hessian_sentence", hessian_sentence, display=False)
spread = float((relative["high_s"] / relative["low_s"]).max())
glue("rt_spread", spread, display=False)
threads = sorted({int(r.provenance.get("torch_threads") or 0) for r in data.all_records()})
glue("rt_threads", ", ".join(map(str, threads)), display=False)

# %% [markdown]
# ## Per step or per second
#
# The same runs can be drawn against the step count or against time. Against steps, only the
# progress per step counts; against time, the cost per step stretches each curve. The next
# figure draws the Fashion-MNIST runs of {ref}`ch-untuned-vs-tuned` both ways.

# %% tags=["hide-input"]
# Until the paper-profile campaign of that chapter is complete on Fashion-MNIST, its quick
# records stand in (the caption names the profile).
main_runs = notebook_records(
    "untuned-vs-tuned", profile, compute=compute, fallback="quick", task="fashion-mnist"
)
fm = main_runs.by_label(task="fashion-mnist")
keep = ["AdamQLR (Untuned)", "AdamQLR", "Adam", "K-FAC (Untuned)"]
fm = {label: fm[label] for label in keep if label in fm}
glue("rt_main_runs", provenance_text([r for rs in fm.values() for r in rs]), display=False)

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Test loss on Fashion-MNIST of the runs of {numref}`fig-ut-losses` against the step (left: median over repeats at each evaluation, log scale) and against optimisation time (right: mean of 50 bootstrap medians, with band). Runs: {glue:text}`rt_main_runs`.", "name": "fig-rt-steps-time"}}
fig, axes = plt.subplots(1, 2, figsize=(8.8, 3.8))
plot_evaluations(axes[0], fm, "test_loss", x="step")
draw_runs(axes[1], fm, "test_loss")
fig.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", ncol=2)
plt.show()

# %% tags=["hide-input"]
per_step = pd.DataFrame(
    {
        label: {
            "steps": np.median([r.provenance["steps"] for r in rs]),
            "optimisation time (s)": np.median([r.provenance["optimisation_time_s"] for r in rs]),
            "ms per step": 1e3 * np.median(
                [r.provenance["optimisation_time_s"] / r.provenance["steps"] for r in rs]
            ),
            "batch size": rs[0].settings["batch_size"],
        }
        for label, rs in fm.items()
    }
).T
format_table(per_step)

# %% [markdown]
# ## What the figures say
#
# Timings come from the machine named in the captions, with the torch thread count(s)
# {glue:text}`rt_threads`. For the records published here (both profiles) that is a shared
# 2-core CPU on which other jobs ran at the same time: a single slow step is absorbed by the
# per-run median, but a run made during a busy minute is slow throughout. GPU timings, where the
# balance between the network's passes and the fixed cost per operation is very different, come
# from the same study run on a GPU (`adamqlr study run runtime --profile paper --device cuda`).
#
# - **The clock.** Runs of one setting, made a few minutes apart, differ by up to
#   {glue:text}`rt_spread:.1f` times in their median time per step (the bars in
#   {numref}`fig-rt-cost`): the load of the shared machine, not the optimiser. Differences
#   smaller than that are not resolved by these runs.
# - **Fisher step.** Side by side, an AdamQLR step with the Fisher costs
#   {glue:text}`rt_b_fisher_mlp_50:.2f` Adam steps on the Fashion-MNIST network at batch 50 and
#   {glue:text}`rt_b_fisher_mlp_3200:.2f` at batch 3200 ({glue:text}`rt_b_fisher_energy_588:.2f` on
#   the UCI Energy network). The runs' clocks say {glue:text}`rt_fisher_small:.1f` at batch
#   size {glue:text}`rt_batch_small` and {glue:text}`rt_fisher_large:.1f` at
#   {glue:text}`rt_batch_large`. At batch size {glue:text}`rt_batch_small` that is not the price
#   of a working step: untuned AdamQLR diverges at that batch size ({ref}`ch-sensitivity`), and
#   its runs here accepted {glue:text}`rt_fisher_accepted_small` of their
#   steps{glue:text}`rt_fisher_stopped_small`; a rejected step skips the trial pass and the
#   update, so it costs less. Beyond that, a run's clock times more
#   than the step: drawing each batch and the training loop's bookkeeping (Adam's step takes
#   {glue:text}`rt_adam_run_ms:.2f` ms by the runs' clocks and {glue:text}`rt_adam_bench_ms:.2f`
#   ms in the benchmark), under whatever load the machine had, and, where a run is older than
#   the benchmark, the step as it was implemented at its commit (named in the caption of
#   {numref}`fig-rt-cost`). At small batches the fixed cost of
#   each operation weighs more and AdamQLR runs more operations per step; at large ones the
#   network's passes dominate, where {eq}`eq-rt-cost` expects two to three. Our library's
#   step on these MLPs brings it below that: the JVP reuses the gradient pass's activations, the
#   trial forward reuses the first layer's product by linearity, and the gradient pass itself
#   runs the layers' backward kernels on the forward's activations without recording an
#   autograd graph (the numbers of `loss.backward()`, without its bookkeeping).
# - **Hessian step.** {glue:text}`rt_b_hessian_mlp_50:.2f` and
#   {glue:text}`rt_b_hessian_mlp_3200:.2f` Adam steps side by side at the same two batch sizes
#   ({glue:text}`rt_hessian_small:.1f` and {glue:text}`rt_hessian_large:.1f` by the runs' clocks).
#   {glue:text}`rt_hessian_sentence`.
# - **K-FAC** ({glue:text}`rt_b_kfac_mlp_50:.1f` and {glue:text}`rt_b_kfac_mlp_3200:.1f` Adam steps
#   side by side; {glue:text}`rt_kfac_small:.1f` and {glue:text}`rt_kfac_large:.1f` by the runs'
#   clocks) inverts its Kronecker factors at every step here, as in the paper's configuration;
#   the 785 x 785 input factor of the first layer costs the same at every batch size, so it
#   weighs most at small batches.
# - **Steps against seconds.** In {numref}`fig-rt-steps-time`, an optimiser whose curve leads
#   against steps can fall behind against time, and the fixed epoch budget hides another effect:
#   a batch of 3200 gives 64 times fewer steps than a batch of 50, each far more expensive. What
#   the paper's runtime axis compares is the product of the two.
#
# **Against the paper.** The paper's runtime comparisons were made on GPUs shared by six runs
# for the small tasks, with a full evaluation after every step inside the clock
# {cite:p}`clarke2024code`; ours exclude evaluation from the clock. Absolute times are
# therefore not comparable with the paper's figures, and "one additional forward pass" counts
# work rather than time; the ratios above are what our implementation costs.
