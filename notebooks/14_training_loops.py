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
# # How-to: AdamQLR in your own training loop
#
# The quickstart ({doc}`01_quickstart`) trains an MLP. This page answers the questions a PyTorch
# user asks next: does AdamQLR work on a transformer, on a CNN with batch norm, with a learning-rate
# schedule, with a loss of my own, on several processes? Each section is a complete, runnable
# example that this page executes; the {doc}`api` lists every argument.
#
# One thing differs from `torch.optim`: AdamQLR needs the batch, because it evaluates the loss
# again after proposing a step (the reduction ratio $\rho$ of {eq}`eq-quickstart-rho`) and the
# curvature along its direction. So the loop calls `opt.step(inputs, targets)` instead of
# `loss.backward(); opt.step()`: the step does its own forward and backward passes.

# %% tags=["parameters"]
profile = "quick"
seed = 0

# %%
import math

import torch
import torch.nn.functional as F
from myst_nb import glue
from torch import nn

import adamqlr
from adamqlr import AdamQLR

if profile not in ("smoke", "quick", "paper"):
    raise ValueError(f"unknown profile {profile!r}")
steps = {"smoke": 3, "quick": 30, "paper": 200}[profile]
torch.manual_seed(seed)
print(f"adamqlr {adamqlr.__version__}, torch {torch.__version__}, {steps} steps per example")


def drop(first: float, last: float) -> str:
    """How far the loss fell, as a sentence fragment."""
    return f"from {first:.3f} to {last:.3f}"


# %% [markdown]
# ## A small transformer
#
# A transformer encoder classifying short token sequences. Nothing is special on the user's side:
# AdamQLR runs its curvature products with PyTorch's math attention kernel and the multi-head
# attention fast path switched off (the fused kernels have no forward-mode derivative), and
# restores your settings after each step, in training and in evaluation mode alike.

# %%
vocab, length, classes, width = 12, 8, 3, 16
tokens = torch.randint(0, vocab, (256, length))
labels = tokens[:, 0] % classes  # the first token's class: position matters


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(0.02 * torch.randn(length, width))
        layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32, dropout=0.0,
                                           batch_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, num_layers=1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.position)
        return self.head(h.mean(dim=1))


model = TinyTransformer()
opt = AdamQLR(model, "cross_entropy")
history = [opt.step(tokens[i % 4 * 64 : (i % 4 + 1) * 64], labels[i % 4 * 64 : (i % 4 + 1) * 64])
           for i in range(steps)]  # fmt: skip
print(f"transformer: loss {drop(history[0].loss, history[-1].loss)}, last step size "
      f"{history[-1].lr:.3g}, damping {history[-1].damping:.3g}")  # fmt: skip
glue("tl_transformer", drop(history[0].loss, history[-1].loss), display=False)

# %% [markdown]
# The loss fell {glue:text}`tl_transformer` over the steps above. `torch.compile`d models are
# refused at construction with a message that says to pass the uncompiled module: the compiled
# graph cannot be differentiated in forward mode along AdamQLR's direction.
#
# ## A CNN with batch norm and dropout, a schedule and gradient clipping
#
# Every parameter group has an `lr` (default 1.0) that multiplies the step size AdamQLR chooses,
# so torch's schedulers work unchanged. `max_grad_norm` clips the gradient inside the step (calling
# `torch.nn.utils.clip_grad_norm_` before `step` would have no effect: the step computes its own
# gradient). Dropout masks are replayed for the trial forward pass, so $\rho$ compares like with
# like.

# %%
images = torch.randn(256, 1, 8, 8)
top, bottom = images[:, 0, :4].mean(dim=(1, 2)), images[:, 0, 4:].mean(dim=(1, 2))
digits = (top > 0).long() + 2 * (bottom > 0).long()
cnn = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
    nn.Dropout(0.1), nn.Flatten(), nn.Linear(8 * 4 * 4, 4),
)  # fmt: skip
opt = AdamQLR(cnn, "cross_entropy", max_grad_norm=10.0)
schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
history, factors = [], []
for i in range(steps):
    batch = slice(i % 4 * 64, (i % 4 + 1) * 64)
    factors.append(opt.param_groups[0]["lr"])
    history.append(opt.step(images[batch], digits[batch]))
    schedule.step()
print(f"CNN: loss {drop(history[0].loss, history[-1].loss)}; the schedule's factor went from "
      f"{factors[0]:.2f} to {factors[-1]:.3f}")  # fmt: skip
glue("tl_cnn", drop(history[0].loss, history[-1].loss), display=False)

# %% [markdown]
# The CNN's loss fell {glue:text}`tl_cnn`, with the cosine schedule scaling each step AdamQLR chose.
#
# ## A loss of your own, and models that return several outputs
#
# Any `torch.nn` loss module or function of `(outputs, targets)` works with the Gauss-Newton
# (`"fisher"`) curvature: AdamQLR computes the loss's exact Hessian with respect to the outputs by
# automatic differentiation (for `nn.MSELoss` and `nn.CrossEntropyLoss` it uses the closed forms).
# A model that returns a dict or a tuple names the output the loss reads with `output=`.

# %%
class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.Tanh())
        self.value = nn.Linear(32, 1)
        self.logits = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"value": self.value(h), "logits": self.logits(h)}


x = torch.randn(256, 4)
y = torch.sin(x.sum(dim=1, keepdim=True))
heads = TwoHeads()
opt = AdamQLR(heads, nn.HuberLoss(delta=0.5), output="value")
history = [opt.step(x, y) for _ in range(steps)]
print(f"Huber loss on a dict output: {drop(history[0].loss, history[-1].loss)}")
glue("tl_huber", drop(history[0].loss, history[-1].loss), display=False)

# %% [markdown]
# The Huber loss fell {glue:text}`tl_huber`.
#
# ## Mixed precision
#
# Under `torch.autocast` the scalar products of the step ($g^\top d$, $d^\top C d$,
# $\lVert d\rVert^2$) are accumulated in float32 or wider, and a loss change smaller than the
# rounding level of the precision it was computed in gives no reduction ratio (the damping is left
# alone, and `StepStats.loss_unresolved` says so), so rounding noise does not drive the damping.

# %%
model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
opt = AdamQLR(model, "squared_error")
with torch.autocast("cpu", dtype=torch.bfloat16):
    history = [opt.step(x, y) for _ in range(steps)]
unresolved = sum(s.loss_unresolved for s in history)
print(f"bfloat16 autocast: loss {drop(history[0].loss, history[-1].loss)}, "
      f"{unresolved} of {steps} steps below the rounding level")  # fmt: skip
glue("tl_bf16", drop(history[0].loss, history[-1].loss), display=False)

# %% [markdown]
# Under bfloat16 autocast the loss fell {glue:text}`tl_bf16`.
#
# ## Several processes
#
# When a `torch.distributed` process group is initialised, AdamQLR averages the gradient, the
# loss, the curvature product and the trial loss over the ranks (`distributed="auto"`, the
# default), so every rank takes the same step size and damping and the parameters stay identical;
# a model wrapped in `DistributedDataParallel` is unwrapped (its own gradient averaging is not
# needed). Every rank must call `step` as often as the others. The script below runs two CPU
# processes; the test suite runs it and checks that the ranks agree bit for bit.
#
# ```{literalinclude} ../examples/ddp.py
# :language: python
# ```
#
# ## What to read next
#
# {doc}`01_quickstart` plots what a step does; chapters {doc}`03_step_size` and
# {doc}`04_damping` derive the step size and the damping rule; {doc}`api` lists the arguments.
