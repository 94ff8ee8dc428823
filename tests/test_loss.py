"""Tests of :func:`mdnkit.loss.mdn_loss`: mean NLL against SciPy, weights, padding masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from mdnkit import MDNHead
from mdnkit.loss import mdn_loss
from mdnkit.mixture import GaussianMixture


def _params(n=12, k=3, d=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=dtype).requires_grad_()
    loc = torch.randn(n, k, d, generator=g, dtype=dtype).requires_grad_()
    scale = (torch.rand(n, k, d, generator=g, dtype=dtype) + 0.3).requires_grad_()
    y = torch.randn(n, d, generator=g, dtype=dtype)
    return logits, loc, scale, y


def _scipy_nll(logits, loc, scale, y):
    lw = logits.detach().numpy() - special.logsumexp(logits.detach().numpy(), -1, keepdims=True)
    comp = stats.norm.logpdf(
        y.numpy()[:, None, :], loc.detach().numpy(), scale.detach().numpy()
    ).sum(-1)
    return -special.logsumexp(lw + comp, -1)


def test_mean_sum_none_against_scipy():
    logits, loc, scale, y = _params()
    m = GaussianMixture(logits, loc, scale)
    ref = _scipy_nll(logits, loc, scale, y)
    assert mdn_loss(m, y).item() == pytest.approx(ref.mean(), rel=1e-12)
    assert mdn_loss(m, y, reduction="sum").item() == pytest.approx(ref.sum(), rel=1e-12)
    np.testing.assert_allclose(mdn_loss(m, y, reduction="none").detach().numpy(), ref, rtol=1e-12)


def test_weighted_mean_and_zero_one_weights():
    logits, loc, scale, y = _params()
    m = GaussianMixture(logits, loc, scale)
    ref = _scipy_nll(logits, loc, scale, y)
    w = torch.rand(12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert mdn_loss(m, y, weight=w).item() == pytest.approx(
        (w.numpy() * ref).sum() / w.sum().item(), rel=1e-12
    )
    keep = torch.arange(12) % 3 != 0
    assert mdn_loss(m, y, weight=keep).item() == pytest.approx(ref[keep.numpy()].mean(), rel=1e-12)
    assert mdn_loss(m, y, weight=keep.double()).item() == pytest.approx(
        ref[keep.numpy()].mean(), rel=1e-12
    )
    np.testing.assert_allclose(
        mdn_loss(m, y, weight=w, reduction="none").detach().numpy(), w.numpy() * ref, rtol=1e-12
    )


def test_masked_nan_padding_finite_loss_zero_gradient():
    logits, loc, scale, y = _params(n=10)
    mask = torch.arange(10) < 6
    # Padding rows hold garbage: NaN targets, and parameters far from anything sensible.
    y = y.clone()
    y[~mask] = math.nan
    with torch.no_grad():
        loc[~mask] = 1e30
        scale[~mask] = 1e-30
    m = GaussianMixture(logits, loc, scale, validate_args=False)
    loss = mdn_loss(m, y, weight=mask)
    assert torch.isfinite(loss)
    loss.backward()
    for t in (logits, loc, scale):
        assert torch.isfinite(t.grad).all()
        assert (t.grad[~mask] == 0).all()
        assert t.grad[mask].abs().sum() > 0
    ref = _scipy_nll(logits[:6], loc[:6], scale[:6], y[:6])
    assert loss.item() == pytest.approx(ref.mean(), rel=1e-12)


def test_sequence_padding_mask_with_time_dims():
    head = MDNHead(4, 2, 3)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 7, 4, generator=g)
    y = torch.randn(3, 7, 2, generator=g)
    lengths = torch.tensor([7, 4, 2])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    y_pad = torch.where(mask[..., None], y, torch.full_like(y, math.nan))
    loss = mdn_loss(head(h), y_pad, weight=mask)
    loss.backward()
    assert torch.isfinite(head.proj.weight.grad).all()
    want = torch.cat(
        [-head(h[i, : lengths[i]]).log_prob(y[i, : lengths[i]]) for i in range(3)]
    ).mean()
    torch.testing.assert_close(loss, want)


def test_half_precision_loss_is_float32():
    for dt in (torch.float16, torch.bfloat16):
        logits, loc, scale, y = _params(dtype=torch.float32)
        m = GaussianMixture(logits.detach().to(dt), loc.detach().to(dt), scale.detach().to(dt))
        loss = mdn_loss(m, y.to(dt), weight=torch.ones(12, dtype=dt))
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert mdn_loss(m, y.to(dt)).dtype == torch.float32


def test_errors():
    logits, loc, scale, y = _params()
    m = GaussianMixture(logits, loc, scale)
    with pytest.raises(TypeError, match="GaussianMixture"):
        mdn_loss(torch.distributions.Normal(0.0, 1.0), y)
    with pytest.raises(ValueError, match="reduction"):
        mdn_loss(m, y, reduction="max")
    with pytest.raises(ValueError, match="does not broadcast"):
        mdn_loss(m, y, weight=torch.ones(5))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        mdn_loss(m, torch.zeros(12, 3))
