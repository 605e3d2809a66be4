"""AdamQLR on attention models: both curvatures, with the user doing nothing special.

torch's fused attention kernels (the CPU flash kernel behind ``scaled_dot_product_attention``, the
``nn.MultiheadAttention`` / ``nn.TransformerEncoder`` fast path) have no forward-mode derivative
and no double backward; the optimiser runs its passes with the math kernel and the fast path off
(:func:`adamqlr.backends.curvature_safe_attention`) and puts the user's settings back.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from adamqlr import AdamQLR
from adamqlr.backends import check_model, curvature_safe_attention
from adamqlr.curvature import ggn_quadratic, hessian_quadratic
from adamqlr.losses import get_loss

CURVATURES = ("fisher", "hessian")


class SDPAModel(nn.Module):
    """One head of attention written with ``F.scaled_dot_product_attention``, then a classifier."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)
        return self.head(h.mean(1))


class MHAModel(nn.Module):
    """A bare ``nn.MultiheadAttention`` (batch first, self-attention) and a classifier."""

    def __init__(self, dim: int = 8, classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, dropout=dropout, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.attn(x, x, x, need_weights=False)
        return self.head(h.mean(1))


class EncoderModel(nn.Module):
    """``nn.TransformerEncoder`` of two layers and a classifier on the mean token."""

    def __init__(self, dim: int = 8, classes: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            dim, 2, dim_feedforward=16, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).mean(1))


def _batch(seed: int = 0, n: int = 16, t: int = 5, dim: int = 8) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, dim, generator=g)
    y = (x[:, 0, 0] > 0).long() + (x[:, -1, 1] > 0).long()
    return x, y


MODELS = {
    "sdpa": lambda: SDPAModel(),
    "mha": lambda: MHAModel(),
    "mha-dropout": lambda: MHAModel(dropout=0.1),
    "encoder": lambda: EncoderModel(),
    "encoder-dropout0": lambda: EncoderModel(dropout=0.0),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("curvature", CURVATURES)
def test_attention_models_train(kind: str, curvature: str, mode: str) -> None:
    torch.manual_seed(0)
    model = MODELS[kind]()
    model.train(mode == "train")
    x, y = _batch()
    opt = AdamQLR(model, "cross_entropy", curvature)
    with torch.no_grad():
        before = F.cross_entropy(model.eval()(x), y).item()
    model.train(mode == "train")
    with warnings.catch_warnings():
        # the Hessian may be indefinite along d: such a step is refused (a warning), not an error
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = [opt.step(x, y) for _ in range(8)]
    assert {s.reason for s in stats} <= {"", "nonpositive_curvature"}, [s.reason for s in stats]
    accepted = [s for s in stats if s.accepted]
    assert len(accepted) >= 4
    assert all(math.isfinite(s.curvature) and math.isfinite(s.rho) for s in accepted)
    with torch.no_grad():
        after = F.cross_entropy(model.eval()(x), y).item()
    assert math.isfinite(after)
    if curvature == "fisher":  # (the untuned Hessian variant may overshoot on its first steps)
        assert all(s.curvature >= 0 for s in stats)
        assert after < before


def test_user_attention_settings_are_restored() -> None:
    model, (x, y) = EncoderModel(), _batch()
    opt = AdamQLR(model, "cross_entropy", "hessian")
    torch.backends.mha.set_fastpath_enabled(True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        before = torch.nn.attention._cur_sdpa_kernel_backends()
        opt.step(x, y)
        assert torch.nn.attention._cur_sdpa_kernel_backends() == before
        assert torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        opt.step(x, y)
        assert not torch.backends.mha.get_fastpath_enabled()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def test_context_restores_after_an_exception() -> None:
    torch.backends.mha.set_fastpath_enabled(True)
    before = torch.nn.attention._cur_sdpa_kernel_backends()
    with pytest.raises(KeyError), curvature_safe_attention():
        assert torch.nn.attention._cur_sdpa_kernel_backends() == [SDPBackend.MATH]
        assert not torch.backends.mha.get_fastpath_enabled()
        raise KeyError("boom")
    assert torch.nn.attention._cur_sdpa_kernel_backends() == before
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.mark.parametrize("kind", ["sdpa", "mha"])
def test_attention_step_curvature_matches_functional_reference(kind: str) -> None:
    """The step's ``d^T C d`` equals the functional reference, evaluated with the math kernel."""
    torch.manual_seed(0)
    model = MODELS[kind]().double().eval()
    x, y = _batch()
    x = x.double()
    loss = get_loss("cross_entropy")
    for curvature, reference in (("fisher", ggn_quadratic), ("hessian", hessian_quadratic)):
        opt = AdamQLR(model, loss, curvature, initial_damping=1.0)
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        stats = opt.step(x, y)
        # the first direction of Adam is g / (|g| + eps'), with the gradient at the old params
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        direction = {n: g / (g.abs() + 1e-8) for n, g in grads.items()}
        with curvature_safe_attention():
            expected = reference(model, params, direction, x, y, loss)
        assert stats.curvature == pytest.approx(float(expected), rel=1e-9)
        with torch.no_grad():  # put the parameters back for the other curvature
            for n, p in model.named_parameters():
                p.copy_(params[n])


def test_compiled_model_is_refused_with_the_fix() -> None:
    model = MHAModel()
    compiled = torch.compile(model)
    with pytest.raises(ValueError, match=r"torch\.compile.*_orig_mod"):
        AdamQLR(compiled)
    with pytest.raises(ValueError, match="uncompiled"):
        check_model(compiled)
    check_model(model)  # the plain module is fine
