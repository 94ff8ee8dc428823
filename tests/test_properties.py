"""Property-based tests (hypothesis) of the mixture's invariants, checked against SciPy."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from conftest import assert_fast_step_equals_autograd, make_mixture, random_mixture_params
from mdnkit.mixture import GaussianMixture

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@st.composite
def mixtures(draw, cov=None):
    """Random float64 mixture parameters: (logits, loc, scale-or-tril, covariance type)."""
    cov = cov or draw(st.sampled_from(["diagonal", "spherical", "full"]))
    batch = draw(batch_shapes)
    k = draw(st.integers(1, 4))
    d = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    params = random_mixture_params(
        batch,
        k,
        d,
        cov,
        seed=seed,
        logit_scale=3.0,
        loc_scale=3.0,
        scale_low=0.05,
        scale_spread=2.0,
        tril_low=0.2,
    )
    return (*params, cov)


build = make_mixture


@SETTINGS
@given(mixtures(), st.integers(0, 2), st.integers(0, 1000))
def test_shapes_and_weights(params, n_sample_dims, seed):
    logits, loc, s, cov = params
    m = build(logits, loc, s, cov)
    batch = logits.shape[:-1]
    d = loc.shape[-1]
    assert m.batch_shape == batch and m.event_shape == (d,)
    torch.testing.assert_close(m.weights.sum(-1), torch.ones(batch, dtype=torch.float64))
    sample_shape = (2,) * n_sample_dims
    x = m.sample(sample_shape, generator=seed)
    assert x.shape == sample_shape + batch + (d,)
    lp = m.log_prob(x)
    assert lp.shape == sample_shape + batch and torch.isfinite(lp).all()
    assert m.mean.shape == batch + (d,) and m.covariance_matrix.shape == batch + (d, d)


@SETTINGS
@given(mixtures(), st.floats(-50, 50))
def test_log_prob_invariant_to_shifting_logits(params, c):
    logits, loc, s, cov = params
    y = loc[..., 0, :] + 0.3
    a = build(logits, loc, s, cov).log_prob(y)
    b = build(logits + c, loc, s, cov).log_prob(y)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(mixtures(), st.randoms(use_true_random=False))
def test_log_prob_invariant_to_permuting_components(params, rnd):
    logits, loc, s, cov = params
    k = logits.shape[-1]
    perm = list(range(k))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    y = loc.mean(-2) + 0.1
    a = build(logits, loc, s, cov).log_prob(y)
    b = build(
        logits[..., p], loc[..., p, :], s.index_select(len(logits.shape) - 1, p), cov
    ).log_prob(y)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(mixtures(), st.integers(1, 4))
def test_identical_components_equal_a_single_gaussian(params, k):
    logits, loc, s, cov = params
    batch = logits.shape[:-1]
    one = (loc[..., :1, :], s[..., :1, :, :] if cov == "full" else s[..., :1, :])
    loc_k = one[0].expand(*batch, k, *one[0].shape[-1:])
    s_k = one[1].expand(*batch, k, *one[1].shape[len(batch) + 1 :])
    # Any weights at all: the mixture of identical components is that component.
    w = torch.randn(k, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    logits_k = w.expand(*batch, k)
    y = loc[..., 0, :] + 0.7
    got = build(logits_k, loc_k, s_k, cov).log_prob(y)
    # SciPy reference: the single Gaussian N(mu_1, Sigma_1).
    mu = one[0][..., 0, :].numpy()
    if cov == "full":
        tril = one[1][..., 0, :, :].numpy()
        covm = tril @ np.swapaxes(tril, -1, -2)
    else:
        sd = np.broadcast_to(one[1][..., 0, :].numpy(), mu.shape)
        covm = sd[..., :, None] * np.eye(mu.shape[-1]) * sd[..., None, :]
    yy = y.numpy()
    want = np.array(
        [
            stats.multivariate_normal(mu[i], covm[i]).logpdf(yy[i])
            for i in np.ndindex(*mu.shape[:-1])
        ]
    ).reshape(mu.shape[:-1])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(mixtures(cov="diagonal"))
def test_spherical_equals_diagonal_with_equal_scales(params):
    logits, loc, s, _ = params
    s1 = s[..., :1]
    y = loc[..., -1, :] - 0.2
    a = GaussianMixture(logits, loc, s1).log_prob(y)
    b = GaussianMixture(logits, loc, s1.expand_as(loc).clone()).log_prob(y)
    c = GaussianMixture(logits, loc, scale_tril=torch.diag_embed(s1.expand_as(loc))).log_prob(y)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(mixtures(), st.integers(0, 100))
def test_log_prob_matches_scipy_logsumexp(params, seed):
    logits, loc, s, cov = params
    m = build(logits, loc, s, cov)
    y = m.sample(generator=seed)
    got = m.log_prob(y).numpy()
    covs = m.component_covariance.numpy()
    lw = logits.numpy() - special.logsumexp(logits.numpy(), -1, keepdims=True)
    want = np.empty(logits.shape[:-1])
    for i in np.ndindex(*logits.shape[:-1]):
        comp = [
            stats.multivariate_normal(loc[i][k].numpy(), covs[i][k]).logpdf(y[i].numpy())
            for k in range(logits.shape[-1])
        ]
        want[i] = special.logsumexp(lw[i] + np.array(comp))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(mixtures(), st.lists(st.floats(0.001, 0.999), min_size=1, max_size=3))
def test_cdf_monotone_and_icdf_inverts(params, qs):
    logits, loc, s, cov = params
    m = build(logits, loc, s, cov).marginal(0)
    q = torch.tensor(sorted(qs), dtype=torch.float64)
    x = m.quantile(q)  # (Q, *batch, 1)
    assert (x[1:] >= x[:-1] - 1e-9).all()
    torch.testing.assert_close(
        m.cdf(x), q.reshape(-1, *(1,) * len(m.batch_shape)).expand(x.shape[:-1]), atol=1e-8, rtol=0
    )


@SETTINGS
@given(
    n=st.integers(1, 9),
    d_in=st.integers(1, 3),
    hidden=st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
    d=st.integers(1, 3),
    k=st.integers(1, 4),
    activation=st.sampled_from(
        ["tanh", "relu", "sigmoid", "elu", "silu", "gelu", "softplus", "leaky_relu"]
    ),
    covariance=st.sampled_from(["diagonal", "spherical"]),
    transform=st.sampled_from(["softplus", "exp", "elu"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fast_training_step_equals_autograd(
    n, d_in, hidden, d, k, activation, covariance, transform, seed
):
    """fit's autograd-free step: the same loss and gradients as autograd through the
    distribution, for any architecture and batch size (float64)."""
    from mdnkit.models import MDN

    torch.manual_seed(seed % 10_000)
    g = torch.Generator().manual_seed(seed)
    m = MDN(
        d_in,
        d,
        hidden=hidden,
        activation=activation,
        num_components=k,
        covariance=covariance,
        scale_transform=transform,
    ).double()
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64) * 2
    y = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 1
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    assert_fast_step_equals_autograd(m, x, y, rtol=1e-7, atol=1e-10)
