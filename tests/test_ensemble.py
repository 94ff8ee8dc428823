"""Tests of mdnkit.ensemble: the batched ensemble of MDNs, its mixture, its fast training step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mdnkit import GaussianMixture
from mdnkit.ensemble import MDNEnsemble, combine
from mdnkit.training import fit


def _data(n: int = 240, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.cat([x[:, :1] ** 2, x[:, 1:2] - x[:, 2:3]], 1)
    return x, y + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _prepared(**kw) -> MDNEnsemble:
    x, y = _data()
    torch.manual_seed(0)
    out = kw.pop("out", 2)
    e = MDNEnsemble(3, out, **kw).double()
    return e.prepare(x, y[:, :out])


def _flat_grads(e: MDNEnsemble, loss: torch.Tensor) -> torch.Tensor:
    order = [p for wb in zip(e.weights, e.biases) for p in wb]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, order)])


@pytest.mark.parametrize("activation", ["tanh", "relu", "silu", "elu"])
@pytest.mark.parametrize("covariance", ["diagonal", "spherical"])
@pytest.mark.parametrize("hidden", [(), (7,), (6, 5)])
def test_fast_step_matches_autograd_and_the_members_own_losses(activation, covariance, hidden):
    e = _prepared(
        n_members=3, hidden=hidden, activation=activation, num_components=4, covariance=covariance
    )
    x, y = _data()
    e.train()
    loss = e.loss(x, y)
    # the members' mean NLL, each member's loss computed by MDN.loss alone
    with torch.no_grad():
        members = torch.stack([e.member(m).loss(x, y) for m in range(3)]).mean()
    assert loss.item() == pytest.approx(members.item(), rel=1e-12)
    grads = _flat_grads(e, loss)
    step = e.fast_step(x, y)
    assert step is not None
    with step.attached():
        xs, zs = step.prepare(x, y)
        fast = step(xs, zs)
        flat = step.flat.grad.clone()
    assert fast.item() == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(flat, grads, rtol=1e-9, atol=1e-12)
    # released: every parameter has its own storage again
    assert all(p.grad is None for p in e.parameters())


def test_prediction_is_the_equal_weight_mixture_of_the_members():
    e = _prepared(n_members=4, hidden=(8,), num_components=3, out=1).eval()
    x, y = _data(50, seed=1)
    torch.set_grad_enabled(False)
    try:
        mix, members = e(x), [e.member(m)(x) for m in range(4)]
    finally:
        torch.set_grad_enabled(True)
    assert isinstance(mix, GaussianMixture) and mix.num_components == 12
    assert float(mix.weights.sum(-1).sub(1).abs().max()) < 1e-12
    # SciPy: the mean over members of each member's mixture density
    dens = np.zeros(50)
    for m in range(4):
        mm = members[m]
        w, loc, sd = mm.weights.numpy(), mm.loc[..., 0].numpy(), mm.scale[..., 0].numpy()
        dens += (w * stats.norm.pdf(y[:, :1].numpy(), loc, sd)).sum(1) / 4
    np.testing.assert_allclose(mix.log_prob(y[:, :1]).numpy(), np.log(dens), rtol=1e-10)
    # in evaluation mode the loss is the ensemble's NLL
    assert e.nll(x, y[:, :1]) == pytest.approx(-np.log(dens).mean(), rel=1e-10)


def test_full_covariance_members_combine_into_a_full_mixture():
    e = _prepared(n_members=2, hidden=(5,), num_components=2, covariance="full").eval()
    x, y = _data(20, seed=2)
    with torch.no_grad():
        mix = e(x)
    assert mix.covariance_type == "full" and mix.scale_tril.shape == (20, 4, 2, 2)
    with torch.no_grad():
        lps = torch.stack([e.member(m)(x).log_prob(y) for m in range(2)])
    ref = torch.logsumexp(lps, 0) - math.log(2)
    torch.testing.assert_close(mix.log_prob(y), ref)
    assert e.fast_step(x, y) is None  # full covariances train with autograd


def test_combine_weights_and_shapes():
    logits = torch.tensor([[[0.0, math.log(3.0)]], [[0.0, 0.0]]])  # M=2, batch 1, K=2
    loc = torch.arange(4.0).reshape(2, 1, 2, 1)
    m = combine(logits, loc, torch.ones(2, 1, 2, 1))
    np.testing.assert_allclose(m.weights[0].numpy(), [0.125, 0.375, 0.25, 0.25], rtol=1e-6)
    np.testing.assert_allclose(m.loc[0, :, 0].numpy(), [0.0, 1.0, 2.0, 3.0])


def test_fit_trains_every_member_and_keeps_the_best_ensemble():
    x, y = _data(400)
    torch.manual_seed(0)
    e = MDNEnsemble(3, 2, n_members=3, hidden=(16,), num_components=2)
    first = [w.detach().clone() for w in e.weights]
    h = fit(e, x.float(), y.float(), epochs=30, lr=1e-2, seed=0, progress=False)
    assert h.monitor == "val_nll" and h.best_epoch >= 0
    assert all(not torch.equal(a, b) for a, b in zip(first, e.weights))
    # members start from different weights and stay different
    assert not torch.allclose(e.weights[0][0], e.weights[0][1])
    # the kept weights score the recorded best validation NLL (the ensemble's, in eval mode)
    before = e.nll(x.float(), y.float())
    assert math.isfinite(before) and before < h.train_nll[0]


def test_dropout_trains_with_autograd():
    x, y = _data(200)
    torch.manual_seed(0)
    e = MDNEnsemble(3, 2, n_members=2, hidden=(8,), num_components=2, dropout=0.2)
    assert e.fast_step(x.float(), y.float()) is None
    h = fit(e, x.float(), y.float(), epochs=3, seed=0, progress=False)
    assert len(h) == 3 and all(math.isfinite(v) for v in h.val_nll)


def test_member_round_trip_config_and_errors():
    e = _prepared(n_members=3, hidden=(4,), num_components=2)
    net = e.member(1)
    with torch.no_grad():
        net.head.proj.bias.add_(1.0)
    e.set_member(2, net)
    torch.testing.assert_close(e.biases[-1][2], e.biases[-1][1] + 1.0)
    again = MDNEnsemble(**e.config())
    assert again.config() == e.config()
    assert [tuple(w.shape) for w in again.weights] == [(3, 4, 3), (3, 10, 4)]
    with pytest.raises(ValueError, match=r"m must be in \[0, 3\)"):
        e.member(3)
    with pytest.raises(ValueError, match="n_members must be a positive integer"):
        MDNEnsemble(3, 1, n_members=0)
    with pytest.raises(ValueError, match=r"in_features=3"):
        e(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="targets of shape"):
        e.loss(torch.zeros(4, 3), torch.zeros(4, 3))
