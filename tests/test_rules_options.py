"""The grouped options: ``damping=`` (AdaptiveDamping, FixedDamping, None) and ``step_size=``.

Each object refuses a bad value by name; the grouped and the flat forms build the same optimiser
(bitwise the same trajectory, for every damping kind and both step rules); a flat keyword beside
an object must agree with it; the experiment registry builds the objects from its flat keys.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _models import classification, mlp
from torch import nn

from adamqlr import (
    SGDQLR,
    AdamQLR,
    AdaptiveDamping,
    FixedDamping,
    LevenbergMarquardt,
    StepSize,
)
from adamqlr.heuristics import DEFAULT_MAX_DAMPING
from adamqlr.rules import (
    DEFAULT_DAMPING,
    DEFAULT_STEP_SIZE,
    damping_from_flat,
    flat_view,
    grouped,
)

_NAN, _INF = math.nan, math.inf


# ------------------------------------------------------------------------------ validation
BAD_OBJECTS = [
    (lambda: AdaptiveDamping(initial=-1.0), r"AdaptiveDamping initial: -1\.0"),
    (lambda: AdaptiveDamping(initial=_NAN), r"AdaptiveDamping initial: nan"),
    (lambda: AdaptiveDamping(initial=_INF, rule=LevenbergMarquardt()), r"initial: inf"),
    (lambda: AdaptiveDamping(initial="1e-3"), r"AdaptiveDamping initial: '1e-3'"),
    (lambda: AdaptiveDamping(initial=1e-9), r"initial: 1e-09 \(expected within the rule"),
    (lambda: AdaptiveDamping(initial=2e8), r"initial: 200000000\.0 \(expected within"),
    (lambda: AdaptiveDamping(rule=(0.5, 2.0)), r"AdaptiveDamping rule: \(0\.5, 2\.0\)"),
    (lambda: AdaptiveDamping(interval=0), r"AdaptiveDamping interval: 0"),
    (lambda: AdaptiveDamping(interval=1.5), r"AdaptiveDamping interval: 1\.5"),
    (lambda: AdaptiveDamping(interval=True), r"AdaptiveDamping interval: True"),
    (lambda: AdaptiveDamping(in_rho="yes"), r"AdaptiveDamping in_rho: 'yes'"),
    (lambda: FixedDamping(-1.0), r"FixedDamping value: -1\.0"),
    (lambda: FixedDamping(_INF), r"FixedDamping value: inf"),
    (lambda: FixedDamping(_NAN), r"FixedDamping value: nan"),
    (lambda: FixedDamping("0.1"), r"FixedDamping value: '0\.1'"),
    (lambda: FixedDamping(0.1, in_rho=1), r"FixedDamping in_rho: 1"),
    (lambda: StepSize("beta"), r"StepSize rule: 'beta'"),
    (lambda: StepSize(clip=0.0), r"StepSize clip: 0\.0"),
    (lambda: StepSize(clip=-0.1), r"StepSize clip: -0\.1"),
    (lambda: StepSize(clip=_INF), r"StepSize clip: inf"),
    (lambda: StepSize(clip="0.1"), r"StepSize clip: '0\.1'"),
    (lambda: StepSize(amplification=0.0), r"StepSize amplification: 0\.0"),
    (lambda: StepSize(amplification=_NAN), r"StepSize amplification: nan"),
    (lambda: LevenbergMarquardt.tied(1.0), r"damping_decrease: 1\.0"),
    (lambda: LevenbergMarquardt.tied(0.0), r"damping_decrease: 0\.0"),
    (lambda: LevenbergMarquardt.tied("0.9"), r"damping_decrease: '0\.9'"),
    (lambda: LevenbergMarquardt(decrease="0.5"), r"damping_decrease: '0\.5'"),
    (lambda: LevenbergMarquardt(upper=_NAN), r"damping_bounds upper: nan"),
]


@pytest.mark.parametrize(("build", "match"), BAD_OBJECTS, ids=[m for _, m in BAD_OBJECTS])
def test_each_object_refuses_a_bad_value_by_name(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_the_objects_are_frozen_and_the_defaults_are_the_papers_untuned_setting():
    assert DEFAULT_DAMPING == AdaptiveDamping(
        1e-3, LevenbergMarquardt(0.5, 2.0, 1e-8, 1e8), 1, None
    )
    assert DEFAULT_DAMPING.rule.upper == DEFAULT_MAX_DAMPING
    assert DEFAULT_STEP_SIZE == StepSize("alpha", None, 1.0)
    with pytest.raises(AttributeError):
        DEFAULT_DAMPING.initial = 1.0  # type: ignore[misc]
    opt = AdamQLR(mlp())
    assert opt.damping_setting is DEFAULT_DAMPING and opt.step_size is DEFAULT_STEP_SIZE
    assert opt.damping_in_rho is True  # in_rho None: AdamQLR's convention, the paper's code
    assert AdamQLR(mlp(), damping=FixedDamping(0.1, in_rho=False)).damping_in_rho is False


def test_tied_derives_the_increase_from_the_decrease():
    rule = LevenbergMarquardt.tied(0.95, lower=1e-6, upper=10.0)
    assert rule.decrease == 0.95 and rule.increase == 1.0 / 0.95 != 1.0526
    assert (rule.lower, rule.upper, rule.low, rule.high) == (1e-6, 10.0, 0.25, 0.75)
    assert LevenbergMarquardt.tied(0.5) == LevenbergMarquardt(0.5, 2.0)
    assert rule.update(1.0, 0.0) == 1.0 / 0.95  # rho < 1/4: lambda / 0.95


# ------------------------------------------------------------------ flat and grouped: the same
def _trajectory(cls, steps: int = 6, **kwargs):
    model = mlp((5, 4, 3), nn.Tanh)
    opt = cls(model, "cross_entropy", **kwargs)
    stats = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rejected steps warn
        for k in range(steps):
            x, y = classification(model, seed=20 + k)
            stats.append(opt.step(x, y).as_dict())
    return [p.detach().clone() for p in model.parameters()], stats, opt


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


CASES = {
    "adaptive": (
        dict(
            initial_damping=0.3,
            damping_decrease=0.7,
            damping_increase=1.9,
            damping_bounds=(1e-6, math.inf),
            damping_interval=2,
            damping_in_rho=False,
        ),
        dict(damping=AdaptiveDamping(0.3, LevenbergMarquardt(0.7, 1.9, 1e-6), 2, False)),
    ),
    "adaptive-tied": (
        dict(initial_damping=1.0, damping_decrease=0.95, damping_increase=1.0 / 0.95),
        dict(damping=AdaptiveDamping(1.0, LevenbergMarquardt.tied(0.95, upper=1e8))),
    ),
    "fixed": (
        dict(damping_mode="fixed", initial_damping=0.05),
        dict(damping=FixedDamping(0.05)),
    ),
    "none": (dict(undamped=True), dict(damping=None)),
    "none-mode": (dict(damping_mode="none"), dict(damping=None)),
    "clip-amplify": (
        dict(lr_clip=0.05, amplification=1.5),
        dict(step_size=StepSize(clip=0.05, amplification=1.5)),
    ),
    "momentum-adaptive": (
        dict(step_rule="alpha-momentum", lr_clip=0.5, initial_damping=0.1),
        dict(step_size=StepSize("alpha-momentum", 0.5), damping=AdaptiveDamping(0.1)),
    ),
    "momentum-fixed": (
        dict(step_rule="alpha-momentum", damping_mode="fixed", initial_damping=0.1),
        dict(step_size=StepSize("alpha-momentum"), damping=FixedDamping(0.1)),
    ),
    "momentum-none": (
        dict(step_rule="alpha-momentum", undamped=True),
        dict(step_size=StepSize("alpha-momentum"), damping=None),
    ),
}


@pytest.mark.parametrize("cls", [AdamQLR, SGDQLR])
@pytest.mark.parametrize("case", sorted(CASES))
def test_grouped_and_flat_forms_give_the_same_trajectory_bitwise(cls, case):
    flat, grouped_kwargs = CASES[case]
    p_flat, s_flat, o_flat = _trajectory(cls, **flat)
    p_grp, s_grp, o_grp = _trajectory(cls, **grouped_kwargs)
    assert all(torch.equal(a, b) for a, b in zip(p_flat, p_grp, strict=True))
    for a, b in zip(s_flat, s_grp, strict=True):
        assert all(_same(a[k], b[k]) for k in a), (a, b)
    assert o_flat.damping_setting == o_grp.damping_setting
    assert o_flat.step_size == o_grp.step_size
    for name in ("damping_mode", "undamped", "initial_damping", "lr_clip", "amplification"):
        assert getattr(o_flat, name) == getattr(o_grp, name), name
    assert repr(o_flat) == repr(o_grp)
    # the state dicts agree, and one loads into the other
    sd_flat, sd_grp = o_flat.state_dict(), o_grp.state_dict()
    assert sd_flat["state"]["qlr"] == sd_grp["state"]["qlr"]
    o_grp.load_state_dict(sd_flat)
    assert o_grp.state["qlr"] == o_flat.state["qlr"]


def test_the_fixed_damping_rule_keeps_lambda_where_it_is():
    opt = AdamQLR(mlp(), damping=FixedDamping(0.05))
    assert opt.damping_mode == "fixed" and opt.damping == 0.05
    assert opt.damping_rule.update(0.05, 0.0) == opt.damping_rule.update(0.05, 1.0) == 0.05
    none = AdamQLR(mlp(), damping=None)
    assert none.undamped and none.damping == 0.0 and none.initial_damping == 0.0


def test_fixed_at_zero_is_allowed_and_flat_fixed_still_checks_the_bounds():
    assert AdamQLR(mlp(), damping=FixedDamping(0.0)).damping == 0.0
    with pytest.raises(ValueError, match=r"initial_damping: 1e-09 \(expected within"):
        AdamQLR(mlp(), damping_mode="fixed", initial_damping=1e-9)


# ------------------------------------------------------------------------------ conflicts
CONFLICTS = [
    (
        dict(damping=AdaptiveDamping(1.0), initial_damping=0.5),
        r"initial_damping: 0\.5 conflicts with damping=AdaptiveDamping\(initial=1\.0.*"
        r"initial_damping=1\.0",
    ),
    (  # an explicit default object is given too: only the default's identity means "not given"
        dict(damping=AdaptiveDamping(), damping_decrease=0.9),
        r"damping_decrease: 0\.9 conflicts with damping=AdaptiveDamping\(",
    ),
    (
        dict(damping=FixedDamping(0.1), damping_decrease=0.5),
        r"damping_decrease: 0\.5 given with damping=FixedDamping\(value=0\.1.*has no "
        "damping_decrease",
    ),
    (
        dict(damping=None, damping_mode="fixed"),
        r"damping_mode: 'fixed' conflicts with damping=None",
    ),
    (dict(damping=None, undamped=False), r"undamped: False conflicts with damping=None"),
    (dict(damping=None, initial_damping=0.0), r"initial_damping: 0\.0 given with damping=None"),
    (
        dict(damping=FixedDamping(0.1), undamped=True),
        r"undamped: True conflicts with damping=FixedDamping",
    ),
    (
        dict(damping=AdaptiveDamping(0.1), damping_bounds=(1e-8, math.inf)),
        r"damping_bounds: \(1e-08, inf\) conflicts with damping=AdaptiveDamping.*"
        r"damping_bounds=\(1e-08, 100000000\.0\)",
    ),
    (
        dict(step_size=StepSize(clip=0.1), lr_clip=0.2),
        r"lr_clip: 0\.2 conflicts with step_size=StepSize\(rule='alpha', clip=0\.1",
    ),
    (
        dict(step_size=StepSize("alpha-momentum"), step_rule="alpha"),
        r"step_rule: 'alpha' conflicts with step_size=StepSize\(rule='alpha-momentum'",
    ),
    (dict(damping=1e-3), r"invalid damping: 0\.001 \(expected AdaptiveDamping"),
    (dict(damping="adaptive"), r"invalid damping: 'adaptive'"),
    (dict(step_size="alpha"), r"invalid step_size: 'alpha' \(expected StepSize"),
    (dict(step_size=StepSize(), amplification=-1.0), r"amplification: -1\.0 conflicts"),
]


@pytest.mark.parametrize(("kwargs", "match"), CONFLICTS, ids=[m[:40] for _, m in CONFLICTS])
def test_an_object_and_a_conflicting_flat_keyword_are_refused_naming_both(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamQLR(mlp(), **kwargs)


def test_a_flat_keyword_that_agrees_with_the_object_is_accepted():
    damping = AdaptiveDamping(0.3, LevenbergMarquardt.tied(0.5, upper=1e8), 1, True)
    opt = AdamQLR(
        mlp(),
        damping=damping,
        initial_damping=0.3,
        damping_decrease=0.5,
        damping_bounds=[1e-8, 1e8],
        damping_mode="adaptive",
        undamped=False,
        step_size=StepSize(clip=0.1),
        lr_clip=0.1,
    )
    assert opt.damping_setting is damping and opt.lr_clip == 0.1
    assert AdamQLR(mlp(), damping=None, undamped=True, damping_mode="none").undamped
    assert AdamQLR(mlp(), damping=FixedDamping(0.1), damping_mode=None).damping_mode == "fixed"


def test_flat_keywords_refine_the_default_and_an_unknown_keyword_is_a_type_error():
    opt = AdamQLR(mlp(), damping_decrease=0.9)  # the rest of the default rule stays
    assert opt.damping_setting == AdaptiveDamping(1e-3, LevenbergMarquardt(0.9, 2.0, 1e-8, 1e8))
    with pytest.raises(TypeError, match="unexpected keyword argument 'damping'"):
        grouped(DEFAULT_DAMPING, DEFAULT_STEP_SIZE, {"damping": None})
    with pytest.raises(TypeError, match="SGDQLR.__init__.. got an unexpected keyword .*'lr'"):
        SGDQLR(mlp(), lr=0.1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "setting",
    [
        AdaptiveDamping(0.2, LevenbergMarquardt(0.6, 1.7, 1e-7, 5.0), 3, False),
        FixedDamping(0.4, in_rho=False),
        None,
    ],
)
def test_the_flat_view_of_a_damping_rebuilds_it(setting):
    assert damping_from_flat(flat_view(setting)) == setting


# ------------------------------------------------------------------------------- registry
def test_the_registry_builds_the_grouped_objects_from_its_flat_keys():
    from adamqlr.experiment.optimisers import _qlr_kwargs, get_optimiser

    for name in (
        "adamqlr",
        "adamqlr-untuned",
        "adamqlr-undamped",
        "sgdqlr",
        "adam-alpha-mom-fixed",
    ):
        h = dict(get_optimiser(name).defaults)
        kwargs = _qlr_kwargs(h)
        assert not {"initial_damping", "lr_clip", "undamped", "damping_mode"} & set(kwargs)
        mode = h.get("damping_mode") or ("none" if h["undamped"] else "adaptive")
        damping = kwargs["damping"]
        if mode == "none":
            assert damping is None
        elif mode == "fixed":
            assert damping == FixedDamping(h["initial_damping"])
        else:
            assert damping.initial == h["initial_damping"]
            assert damping.rule.increase == h["damping_increase"]  # 1.0526 stays as recorded
            assert damping.rule.upper == math.inf and damping.rule.lower == h["damping_min"]
        assert kwargs["step_size"].clip == h["lr_clip"]


# ---------------------------------------------------------------------------------- K-FAC
def _kfac_trajectory(steps: int = 4, **kwargs):
    from adamqlr import KFAC

    model = mlp((5, 4, 3), nn.Tanh)
    opt = KFAC(model, "cross_entropy", seed=0, **kwargs)
    stats = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in range(steps):
            x, y = classification(model, seed=30 + k)
            stats.append(opt.step(x, y).as_dict())
    return [p.detach().clone() for p in model.parameters()], stats, opt


KFAC_CASES = {
    "default": (dict(), dict(damping=AdaptiveDamping(1.0, LevenbergMarquardt.tied(0.9)))),
    "adaptive": (
        dict(
            initial_damping=0.3,
            damping_decay=0.8,
            damping_bounds=(1e-6, 50.0),
            damping_interval=2,
            damping_in_rho=True,
        ),
        dict(
            damping=AdaptiveDamping(
                0.3, LevenbergMarquardt.tied(0.8, lower=1e-6, upper=50.0), 2, True
            )
        ),
    ),
    "fixed": (
        dict(damping_update="fixed", initial_damping=0.2),
        dict(damping=FixedDamping(0.2)),
    ),
    "none": (
        dict(step_rule="alpha", damping_update="fixed", initial_damping=1e-8),
        dict(step_rule="alpha", damping=None),
    ),
    "unadaptive": (
        dict(mode="unadaptive", lr=0.1, momentum=0.5, initial_damping=0.1),
        dict(mode="unadaptive", lr=0.1, momentum=0.5, damping=FixedDamping(0.1)),
    ),
}


@pytest.mark.parametrize("case", sorted(KFAC_CASES))
def test_kfac_takes_the_same_damping_objects_bitwise(case):
    flat, grouped_kwargs = KFAC_CASES[case]
    p_flat, s_flat, o_flat = _kfac_trajectory(**flat)
    p_grp, s_grp, o_grp = _kfac_trajectory(**grouped_kwargs)
    assert all(torch.equal(a, b) for a, b in zip(p_flat, p_grp, strict=True))
    for a, b in zip(s_flat, s_grp, strict=True):
        assert all(_same(a[k], b[k]) for k in a), (a, b)
    for name in ("damping_update", "initial_damping", "damping_interval", "damping_in_rho"):
        assert getattr(o_flat, name) == getattr(o_grp, name), name
    if o_flat.damping_update == "adaptive":
        assert o_flat.damping_rule == o_grp.damping_rule


def test_kfac_takes_an_untied_rule_and_refuses_conflicts_by_name():
    from adamqlr import KFAC

    untied = AdaptiveDamping(1.0, LevenbergMarquardt(0.5, 3.0))
    assert KFAC(mlp(), damping=untied).damping_rule.increase == 3.0
    agreeing = AdaptiveDamping(1.0, LevenbergMarquardt.tied(0.9))
    assert KFAC(mlp(), damping=agreeing, damping_decay=0.9, mode="adaptive").damping == 1.0
    for kwargs, match in [
        (
            dict(damping=untied, damping_decay=0.5),
            r"damping_decay: 0\.5 given with damping=.*has no",
        ),
        (dict(damping=FixedDamping(0.1), initial_damping=0.2), r"initial_damping: 0\.2 conflicts"),
        (dict(damping=None, damping_update="adaptive"), r"damping_update: 'adaptive' conflicts"),
        (
            dict(damping=FixedDamping(0.1), mode="adaptive"),
            r"damping: FixedDamping.*mode='adaptive'",
        ),
        (dict(damping=agreeing, damping_in_rho=True), r"damping_in_rho: True conflicts"),
        (dict(damping=0.1), r"invalid damping: 0\.1"),
    ]:
        with pytest.raises(ValueError, match=match):
            KFAC(mlp(), **kwargs)
