"""The derivation chapters' computations (:mod:`adamqlr.lens`) against independent oracles."""

import math
import os

import numpy as np
import pytest
import torch
from _models import mlp, problem
from torch import nn

from adamqlr import AdamQLR
from adamqlr.experiment.loop import evaluate
from adamqlr.lens.adam import (
    AdamLensConfig,
    Rescaled,
    adam_lens_run,
    adam_moments,
    rescaled_updates,
)
from adamqlr.lens.damping import DampingConfig, damping_study, quadratic_rho_run
from adamqlr.lens.diagonals import (
    enumerate_squared_batch_gradient,
    expected_squared_batch_gradient,
    ggn_diagonal,
    gradient_moments,
    output_hessian_factor,
)
from adamqlr.lens.line import (
    LineProbe,
    StepSizeConfig,
    adam_direction,
    probe_step,
    step_size_study,
)
from adamqlr.lens.products import (
    FORWARD,
    FORWARD_BACKWARD,
    GGN_FUNC,
    GGN_LAYERWISE,
    GRAD_AND_HESSIAN,
    HESSIAN_FOR,
    pooled_images,
    time_products,
    tiny_problems,
)
from adamqlr.lens.training import batch_stream, record_steps
from adamqlr.lens.trajectories import (
    RosenbrockConfig,
    rosenbrock_study,
    run_trajectory,
    tune_learning_rate,
)
from adamqlr.losses import CrossEntropyLoss, SquaredErrorLoss
from adamqlr.tasks.base import Split
from adamqlr.testing import (
    dense_empirical_fisher,
    dense_fisher,
    dense_ggn,
    dense_hessian,
    dense_residual_term,
    flat_params,
    per_example_grads,
)

F64 = torch.float64


KINDS = ["cross_entropy", "squared_error"]


# ------------------------------------------------------------------------------ products
def test_time_products_reports_four_operations_relative_to_the_forward_pass():
    model, x, y, loss = problem("cross_entropy", n=32)
    costs = time_products(model, x, y, loss, repeats=3, warmup=1)
    assert [c.operation for c in costs] == [
        FORWARD,
        FORWARD_BACKWARD,
        GGN_LAYERWISE,
        GGN_FUNC,
        HESSIAN_FOR,
        GRAD_AND_HESSIAN,
    ]
    assert costs[0].relative == 1.0
    assert all(c.seconds > 0 and c.spread >= 0 for c in costs)
    with pytest.raises(ValueError, match="repeats"):
        time_products(model, x, y, loss, repeats=0)


# ----------------------------------------------------------------------------- diagonals
@pytest.mark.parametrize("kind", KINDS)
def test_diagonals_match_the_dense_matrices(kind):
    model, x, y, loss = problem(kind, n=9)
    mean, second = gradient_moments(model, x, y, loss, chunk_size=4)
    f_emp = dense_empirical_fisher(model, x, y, loss)
    grads = per_example_grads(model, x, y, loss)
    assert torch.allclose(second, torch.diagonal(f_emp))
    assert torch.allclose(mean, grads.mean(0))
    assert torch.allclose(
        ggn_diagonal(model, x, loss, chunk_size=4), torch.diagonal(dense_ggn(model, x, y, loss))
    )


def test_output_hessian_factor_reproduces_the_softmax_hessian():
    z = torch.randn(5, 4, dtype=F64)
    a = output_hessian_factor(CrossEntropyLoss(), z)
    p = torch.softmax(z, -1)
    assert torch.allclose(
        a @ a.transpose(1, 2), torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    )
    assert torch.equal(output_hessian_factor(SquaredErrorLoss(), z)[0], torch.eye(4, dtype=F64))
    with pytest.raises(ValueError, match="expected \\(N, K\\)"):
        output_hessian_factor(CrossEntropyLoss(), torch.zeros(2, 3, 4))


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
def test_expected_squared_batch_gradient_equals_the_enumeration(batch_size):
    model, x, y, loss = problem("cross_entropy", n=7)
    grads = per_example_grads(model, x, y, loss)
    mean, second = grads.mean(0), grads.pow(2).mean(0)
    exact = enumerate_squared_batch_gradient(grads, batch_size)
    assert torch.allclose(expected_squared_batch_gradient(mean, second, 7, batch_size), exact)
    if batch_size == 1:
        assert torch.allclose(exact, second)
    with pytest.raises(ValueError, match="batch_size"):
        expected_squared_batch_gradient(mean, second, 7, 8)
    with pytest.raises(ValueError, match="at most 100,000"):
        enumerate_squared_batch_gradient(torch.zeros(40, 1), 10)


# -------------------------------------------------------------------------- trajectories
def reference_adamqlr_rosenbrock(steps: int) -> np.ndarray:
    """AdamQLR (GGN, untuned) on f/4 written out with numpy, for comparison."""
    x, y, lam = 1.0, -1.0, 1e-3
    m, v = np.zeros(2), np.zeros(2)
    path = [(x, y)]
    for k in range(1, steps + 1):
        jac = np.array([[-1.0, 0.0], [-20.0 * x, 10.0]])
        r = np.array([1.0 - x, 10.0 * (y - x * x)])
        g, ggn = 0.5 * jac.T @ r, 0.5 * jac.T @ jac
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        d = (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.999**k)) + 1e-8)
        q = d @ ggn @ d + lam * (d @ d)
        alpha = (g @ d) / q
        f0 = ((1 - x) ** 2 + 100 * (y - x * x) ** 2) / 4
        x, y = x - alpha * d[0], y - alpha * d[1]
        f1 = ((1 - x) ** 2 + 100 * (y - x * x) ** 2) / 4
        rho = (f1 - f0) / (-alpha * (g @ d) + 0.5 * alpha**2 * q)
        lam = max(lam * (0.5 if rho > 0.75 else 2.0 if rho < 0.25 else 1.0), 1e-8)
        path.append((x, y))
    return np.array(path)


def test_adamqlr_ggn_trajectory_matches_a_reference_and_records_traces():
    t = run_trajectory("adamqlr", curvature="fisher", label="QLR")
    assert t.steps == 200 and t.x[0] == 1.0 and t.y[0] == -1.0
    ref = reference_adamqlr_rosenbrock(60)  # later steps amplify rounding (alpha spikes)
    assert np.allclose(t.x[:61], ref[:, 0], atol=1e-8) and np.allclose(
        t.y[:61], ref[:, 1], atol=1e-8
    )
    assert t.final_loss < 1e-3 and t.accepted.all()
    assert np.all(t.damping >= 1e-8) and np.isfinite(t.rho).all()
    frame = t.frame()
    assert len(frame) == 201 and math.isnan(frame.loc[0, "lr"])


def test_gradient_descent_matches_the_update_by_hand():
    t = run_trajectory("gd", lr=1e-3, steps=3)
    x, y = 1.0, -1.0
    for i in range(3):
        gx = 0.5 * (-(1 - x) - 2 * 100 * x * (y - x * x))  # gradient of f/4
        gy = 0.5 * 100 * (y - x * x)
        x, y = x - 1e-3 * gx, y - 1e-3 * gy
        assert t.x[i + 1] == pytest.approx(x) and t.y[i + 1] == pytest.approx(y)


def test_divergent_runs_stop_and_tuning_ranks_them_last():
    t = run_trajectory("gd", lr=1.0, steps=50)
    assert not np.isfinite(t.loss[-1])
    table = tune_learning_rate("gd", [1e-3, 1.0], steps=20)
    assert table.loc[0, "lr"] == 1e-3 and math.isinf(table.loc[1, "final_loss"])
    with pytest.raises(ValueError, match="unknown optimizer"):
        run_trajectory("lbfgs")
    with pytest.raises(ValueError, match="invalid lr"):
        run_trajectory("adam")
    with pytest.raises(ValueError, match="no learning rate"):
        tune_learning_rate("adamqlr", [1.0])
    with pytest.raises(ValueError, match="no learning rate"):
        tune_learning_rate("kfac", [1.0])


def test_rosenbrock_study_smoke():
    study = rosenbrock_study(RosenbrockConfig(steps=60, lrs=(1e-3, 1e-2), momenta=(0.9,)))
    assert list(study.trajectories) == [
        "GD",
        "GD + momentum",
        "Adam",
        "AdamQLR (Untuned, GGN)",
        "AdamQLR (Untuned, Hessian)",
        "K-FAC (Untuned)",
    ]
    summary = study.summary().set_index("optimiser")
    assert summary.loc["AdamQLR (Untuned, GGN)", "rejected steps"] == 0
    assert len(study.frame()) == 6 * 61
    assert RosenbrockConfig.for_profile("smoke").steps == 200
    with pytest.raises(ValueError, match="unknown profile"):
        RosenbrockConfig.for_profile("huge")


# ------------------------------------------------------------------ layer-wise diagonals
@pytest.mark.parametrize("kind", KINDS)
def test_layerwise_diagonals_equal_the_generic_ones(kind):
    model, x, y, loss = problem(kind, n=11)
    fast = gradient_moments(model, x, y, loss, method="layerwise")
    slow = gradient_moments(model, x, y, loss, method="generic")
    for a, b in zip(fast, slow, strict=True):
        assert torch.allclose(a, b)
    assert torch.allclose(
        ggn_diagonal(model, x, loss, method="layerwise"),
        ggn_diagonal(model, x, loss, method="generic"),
    )


def test_layerwise_method_needs_linear_layers_and_auto_falls_back():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3).double()
            self.gain = nn.Parameter(torch.tensor(1.5, dtype=F64))

        def forward(self, x):
            return self.gain * self.lin(x)

    model = Scaled()
    x, y = torch.randn(5, 4, dtype=F64), torch.randint(0, 3, (5,))
    loss = CrossEntropyLoss()
    with pytest.raises(ValueError, match="nn.Linear"):
        ggn_diagonal(model, x, loss, method="layerwise")
    auto = ggn_diagonal(model, x, loss)
    assert torch.allclose(auto, torch.diagonal(dense_ggn(model, x, y, loss)))
    with pytest.raises(ValueError, match="invalid method"):
        gradient_moments(model, x, y, loss, method="fast")


# ------------------------------------------------------------------------------ Adam lens
def test_adam_moments_reproduce_torch_adams_step():
    model, x, y, loss = problem("cross_entropy")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="not taken a step"):
        adam_moments(opt)
    for _ in range(3):
        before = flat_params(model).vector.clone()
        opt.zero_grad()
        loss.value(model(x), y).backward()
        opt.step()
        m = adam_moments(opt)
        assert torch.allclose(flat_params(model).vector - before, -0.01 * m["direction"])


def test_adamqlr_is_invariant_to_rescaling_and_adam_is_not():
    def make():
        return mlp((4, 5, 3), seed=3)

    _, x, y, loss = problem("cross_entropy", n=20)
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]

    def qlr(model, s):
        return AdamQLR(
            model,
            eps=1e-8 * s,
            initial_damping=1e-3 * s * s,
            damping_bounds=(1e-8 * s * s, math.inf),
        )

    direct, rescaled = rescaled_updates(make, qlr, batches, 7.0, loss)
    assert torch.allclose(direct, rescaled, atol=1e-12)
    direct, rescaled = rescaled_updates(
        make,
        lambda m, s: torch.optim.Adam(m.parameters(), lr=0.01, eps=1e-8 * s),
        batches[:1],
        7.0,
        loss,
    )
    assert torch.allclose(rescaled, 7.0 * direct)
    with pytest.raises(ValueError, match="invalid scale"):
        Rescaled(make(), 0.0)


def test_adam_lens_config_and_summary_columns():
    with pytest.raises(ValueError, match="checkpoints"):
        AdamLensConfig(steps=10, checkpoints=(20,))
    with pytest.raises(ValueError, match="unknown profile"):
        AdamLensConfig.for_profile("huge")
    assert (
        AdamLensConfig.for_profile("quick").checkpoints[-1]
        == AdamLensConfig.for_profile("quick").steps
    )


# ------------------------------------------------------------------------------- training
def test_batch_stream_covers_each_epoch_once_and_record_steps_logs_every_step():
    model, x, y, loss = problem("cross_entropy", n=12)
    split = Split(x, y)
    stream = batch_stream(split, 4, seed=0)
    seen = torch.cat([next(stream)[1] for _ in range(3)])
    assert sorted(seen.tolist()) == sorted(y.tolist())
    with pytest.raises(ValueError, match="batch_size"):
        next(batch_stream(split, 13, seed=0))
    opt = AdamQLR(model)
    frame = record_steps(opt, stream, 5, label="run", callback=lambda i, o: {"seen": i})
    assert list(frame["iteration"]) == [1, 2, 3, 4, 5] and (frame["label"] == "run").all()
    assert (frame["seen"] == frame["iteration"]).all() and {"lr", "damping", "rho"} <= set(frame)


def test_the_runner_evaluate_is_the_example_weighted_mean_the_damping_chapter_reports():
    """:func:`adamqlr.experiment.loop.evaluate` (the damping chapter's test loss) equals, bit for
    bit, the chunked example-weighted mean the chapter computed with its own loop before."""
    model, x, y, loss = problem("cross_entropy", n=12)
    model = model.float()
    split = Split(x.float(), y)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, 12, 5):
            xb, yb = split.inputs[start : start + 5], split.targets[start : start + 5]
            total += float(loss.value(model(xb), yb)) * len(xb)
            count += len(xb)
    ours = evaluate(model, split, loss, device=torch.device("cpu"), chunk=5, accuracy=False)
    assert ours["loss"] == total / count
    assert ours["loss"] != float(loss.value(model(split.inputs[:5]), split.targets[:5]))


# ------------------------------------------------------------------- real data (mirror)
MIRROR = os.environ.get("ADAMQLR_DATA")
needs_data = pytest.mark.skipif(
    not MIRROR or not os.path.exists(os.path.join(MIRROR, "fashion-mnist")),
    reason="no data mirror (ADAMQLR_DATA)",
)


@needs_data
def test_tiny_problems_on_real_data_satisfy_the_identities():
    for pr in tiny_problems("smoke", batch_size=12):
        args = (pr.model, pr.inputs, pr.targets, pr.loss)
        g, h, r = dense_ggn(*args), dense_hessian(*args), dense_residual_term(*args)
        assert torch.allclose(h, g + r, atol=1e-12)
        assert torch.allclose(dense_fisher(pr.model, pr.inputs, pr.loss), g, atol=1e-12)
    with pytest.raises(ValueError, match="pooled"):
        pooled_images(torch.zeros(2, 30))


@needs_data
def test_adam_lens_run_smoke():
    config = AdamLensConfig(steps=6, checkpoints=(3, 6), reference_size=50)
    result = adam_lens_run(config, "smoke")
    assert set(result.diagonals["step"]) == {3, 6} and len(result.losses) == 6
    assert len(result.diagonals) == 2 * 39760
    summary = result.summary()
    assert list(summary.index) == [3, 6] and (summary["coordinates"] > 30_000).all()


# ------------------------------------------------------------------------------ step size
def test_probe_predicts_the_step_adamqlr_takes():
    model, x, y, loss = problem("cross_entropy", n=16)
    opt = AdamQLR(model)
    for _ in range(3):
        before = flat_params(model).vector.clone()
        probe = probe_step(opt, x, y)
        grads = {
            n: g
            for n, g in zip(
                dict(model.named_parameters()),
                torch.autograd.grad(loss.value(model(x), y), list(model.parameters())),
                strict=True,
            )
        }
        d = adam_direction(opt, grads)
        stats = opt.step(x, y)
        assert stats.lr == pytest.approx(probe.alpha_star("ggn", probe.damping), rel=1e-10)
        step = flat_params(model).vector - before
        assert torch.allclose(step, -stats.lr * torch.cat([v.reshape(-1) for v in d.values()]))
        assert probe.fd_slope == pytest.approx(-probe.grad_dot_dir, rel=1e-5)
        assert probe.fd_curvature == pytest.approx(probe.q_hessian, rel=1e-4)  # tanh: smooth


def test_line_probe_model_and_refusals():
    probe = LineProbe(
        1.0, 2.0, 4.0, 3.0, -5.0, 0.5, np.array([0.0, 1.0]), np.array([1.0, 0.5]), 1e-3, -2.0, 3.0
    )
    assert probe.alpha_star("ggn", 0.5) == pytest.approx(2.0 / 5.0)
    assert math.isnan(probe.alpha_star("hessian", 0.0))
    assert probe.model(np.array([1.0]), "ggn", 0.0)[0] == pytest.approx(1.0 - 2.0 + 1.5)
    assert set(probe.frame("ggn", {"l0": 0.0})["curve"]) == {"true loss", "l0"}
    with pytest.raises(ValueError, match="curvature kind"):
        probe.curvature("fisher")
    with pytest.raises(ValueError, match="unknown profile"):
        StepSizeConfig.for_profile("huge")
    with pytest.raises(ValueError, match="unknown profile"):
        DampingConfig.for_profile("huge")


@needs_data
def test_step_size_and_damping_studies_smoke():
    study = step_size_study(StepSizeConfig(batch_size=200, warm_steps=2), "smoke")
    assert sorted(study.probes) == [1, 3] and len(study.trace) == 3
    for step, probe in study.probes.items():
        assert study.stats[step]["lr"] == pytest.approx(probe.alpha_star("ggn", probe.damping))
    config = DampingConfig(
        regimes={"B = 100": (100, 3)}, policies=("adaptive (untuned)", "none (0)"), heldout_size=50
    )
    damping = damping_study(config, "smoke")
    assert len(damping.trace) == 6 and len(damping.final) == 2
    assert (damping.trace.loc[damping.trace["label"] == "none (0)", "damping"] == 0).all()
    assert damping.trace["rho_heldout"].notna().all()
    with pytest.raises(ValueError, match="invalid policies"):
        damping_study(DampingConfig(policies=("sometimes",)), "smoke")


@needs_data
def test_quadratic_rho_has_the_closed_form():
    quad = quadratic_rho_run("smoke", steps=10)
    lam, q, s = quad["damping_used"], quad["curvature"], quad["direction_sq_norm"]
    assert np.allclose(quad["rho"], (q + 2 * lam * s) / (q + lam * s), rtol=1e-6)
    assert np.allclose(quad["damping"], 0.5 * lam)
