"""Tests of :class:`mdnkit.mixture.GaussianMixture` against independent references.

References: SciPy (``norm``, ``multivariate_normal``, ``logsumexp``, ``quad``, ``brentq``,
``minimize``, ``kstest``), closed forms written here in NumPy, and Monte Carlo with stated
tolerances (5 standard errors).  Gradients: ``torch.autograd.gradcheck``/``gradgradcheck`` in
float64, and the hand-written backward against autograd through a plain implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special, stats

from conftest import make_mixture, random_mixture_params
from mdnkit import kernels
from mdnkit.mixture import GaussianMixture

COV_TYPES = ("diagonal", "spherical", "full")


# ----------------------------------------------------------------------------- helpers
def covariances(loc, s, cov):
    """Component covariance matrices (..., K, D, D) in NumPy, from the raw parameters."""
    loc = np.asarray(loc)
    s = np.asarray(s)
    d = loc.shape[-1]
    if cov == "full":
        return s @ np.swapaxes(s, -1, -2)
    sd = np.broadcast_to(s, loc.shape)
    return sd[..., :, None] * np.eye(d) * sd[..., None, :]


def scipy_log_prob(logits, loc, s, cov, y):
    """log p(y) with SciPy, looping over every batch element (batch shapes already broadcast)."""
    logits, loc = np.asarray(logits, np.float64), np.asarray(loc, np.float64)
    covs = covariances(loc, np.asarray(s, np.float64), cov)
    y = np.asarray(y, np.float64)
    batch = np.broadcast_shapes(logits.shape[:-1], y.shape[:-1])
    logits = np.broadcast_to(logits, batch + logits.shape[-1:])
    loc = np.broadcast_to(loc, batch + loc.shape[-2:])
    covs = np.broadcast_to(covs, batch + covs.shape[-3:])
    y = np.broadcast_to(y, batch + y.shape[-1:])
    out = np.empty(batch)
    for idx in np.ndindex(*batch):
        lw = logits[idx] - special.logsumexp(logits[idx])
        comp = [
            stats.multivariate_normal(loc[idx][k], covs[idx][k]).logpdf(y[idx])
            for k in range(logits.shape[-1])
        ]
        out[idx] = special.logsumexp(lw + np.array(comp))
    return out


# ----------------------------------------------------------------------------- log_prob
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize(
    "batch, yshape",
    [((), ()), ((4,), (4,)), ((2, 3), (2, 3)), ((3,), (5, 3)), ((2, 1), (2, 4)), ((), (6,))],
)
def test_log_prob_matches_scipy(cov, batch, yshape):
    k, d = 3, 2
    logits, loc, s = random_mixture_params(batch, k, d, cov, seed=len(batch) + len(yshape))
    m = make_mixture(logits, loc, s, cov)
    y = torch.randn(*yshape, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    got = m.log_prob(y)
    want = scipy_log_prob(logits, loc, s, cov, y)
    assert got.shape == want.shape == torch.broadcast_shapes(yshape, batch)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_log_prob_1d_matches_scipy_norm(cov):
    """D=1 (spherical and diagonal coincide) against scipy.stats.norm directly."""
    logits, loc, s = random_mixture_params((5,), 4, 1, cov, seed=3)
    y = torch.linspace(-4, 4, 5, dtype=torch.float64).unsqueeze(-1)
    got = make_mixture(logits, loc, s, cov).log_prob(y).numpy()
    sig = s.reshape(5, 4).numpy() if cov != "full" else s.reshape(5, 4).abs().numpy()
    lw = logits.numpy() - special.logsumexp(logits.numpy(), -1, keepdims=True)
    want = special.logsumexp(lw + stats.norm.logpdf(y.numpy(), loc[..., 0].numpy(), sig), -1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_component_log_prob_and_posterior(cov):
    logits, loc, s = random_mixture_params((3,), 4, 2, cov, seed=5)
    m = make_mixture(logits, loc, s, cov)
    y = torch.randn(3, 2, dtype=torch.float64)
    covs = covariances(loc, s, cov)
    comp = np.array(
        [
            [stats.multivariate_normal(loc[i, k], covs[i, k]).logpdf(y[i]) for k in range(4)]
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(m.component_log_prob(y).numpy(), comp, rtol=1e-10)
    lw = logits.numpy() - special.logsumexp(logits.numpy(), -1, keepdims=True)
    post = np.exp(lw + comp - special.logsumexp(lw + comp, -1, keepdims=True))
    np.testing.assert_allclose(m.posterior(y).numpy(), post, rtol=1e-10, atol=1e-14)


def test_half_precision_parameters_give_float32():
    for dt in (torch.float16, torch.bfloat16):
        logits, loc, s = random_mixture_params((8,), 3, 2, "diagonal", dtype=torch.float32)
        m = GaussianMixture(logits.to(dt), loc.to(dt), s.to(dt))
        lp = m.log_prob(torch.zeros(8, 2, dtype=dt))
        assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
        ref = GaussianMixture(logits.to(dt).float(), loc.to(dt).float(), s.to(dt).float())
        torch.testing.assert_close(lp, ref.log_prob(torch.zeros(8, 2)))


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize(
    "batch, yshape", [((3,), (3,)), ((3,), (2, 3)), ((2, 1), (2, 3)), ((), (4,))]
)
def test_gradcheck_and_gradgradcheck(cov, batch, yshape):
    logits, loc, s = random_mixture_params(batch, 3, 2, cov, seed=11, requires_grad=True)
    y = torch.randn(*yshape, 2, dtype=torch.float64, requires_grad=True)

    def f(a, b, c, yy):
        return make_mixture(a, b, c, cov).log_prob(yy)

    assert torch.autograd.gradcheck(f, (logits, loc, s, y))
    assert torch.autograd.gradgradcheck(f, (logits, loc, s, y))


def _plain_log_prob(logits, loc, scale, y):
    """An independent diagonal-mixture log density with plain autograd (no custom Function)."""
    lw = torch.log_softmax(logits, -1)
    z = (y.unsqueeze(-2) - loc) / scale
    comp = -0.5 * z.square() - scale.log() - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(lw + comp.sum(-1), -1)


@pytest.mark.parametrize("spherical", [False, True])
def test_custom_backward_matches_plain_autograd_float32(spherical):
    n, k, d = 64, 5, 3
    cov = "spherical" if spherical else "diagonal"
    logits, loc, scale = random_mixture_params(
        (n,), k, d, cov, dtype=torch.float32, seed=2, requires_grad=True, scale_low=0.2
    )
    g = torch.Generator().manual_seed(2)
    y = torch.randn(4, n, d, generator=g).requires_grad_()  # sample dims in front
    w = torch.randn(4, n, generator=g)
    (GaussianMixture(logits, loc, scale).log_prob(y) * w).sum().backward()
    g1 = [t.grad.clone() for t in (logits, loc, scale, y)]
    for t in (logits, loc, scale, y):
        t.grad = None
    (_plain_log_prob(logits, loc, scale.expand(n, k, d), y) * w).sum().backward()
    for a, b in zip(g1, (logits.grad, loc.grad, scale.grad, y.grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_extreme_values_float32_finite(cov):
    """Scales 1e-6..1e4, |y - mu|/sigma up to 1e4, logits +-1e3: finite loss and gradients."""
    n, k, d = 6, 3, 2
    scales = torch.tensor([1e-6, 1e-3, 1.0, 1e2, 1e4, 1e-6])
    logits = torch.tensor([[1e3, -1e3, 0.0]] * n).requires_grad_()
    loc = torch.zeros(n, k, d).requires_grad_()
    sig = scales[:, None, None].expand(n, k, d).clone()
    if cov == "full":
        s = torch.diag_embed(sig).requires_grad_()
    elif cov == "spherical":
        s = sig[..., :1].clone().requires_grad_()
    else:
        s = sig.requires_grad_()
    y = (scales * torch.tensor([1e4, 1e4, 1e4, 1.0, 0.0, 1e-2]))[:, None].expand(n, d).clone()
    y.requires_grad_()
    lp = make_mixture(logits, loc, s, cov).log_prob(y)
    loss = -lp.mean()
    loss.backward()
    assert torch.isfinite(lp).all(), lp
    for t in (logits, loc, s, y):
        assert torch.isfinite(t.grad).all(), t.grad
    # The 1e4-sigma residual of the first row, in closed form (one component carries all weight).
    want = -0.5 * d * 1e8 - d * math.log(1e-6) - 0.5 * d * math.log(2 * math.pi)
    assert lp[0].item() == pytest.approx(want, rel=1e-5)


def test_half_precision_loss_and_gradients_finite():
    params = random_mixture_params((16,), 4, 2, "diagonal", dtype=torch.float32, scale_low=0.01)
    y = torch.randn(16, 2, generator=torch.Generator().manual_seed(1)) * 50
    for dt in (torch.float16, torch.bfloat16):
        logits, loc, scale = (t.to(dt).requires_grad_() for t in params)
        lp = GaussianMixture(logits, loc, scale).log_prob(y.to(dt))
        assert lp.dtype == torch.float32
        (-lp.mean()).backward()
        for t in (logits, loc, scale):
            assert t.grad.dtype == dt and torch.isfinite(t.grad.float()).all()


# ----------------------------------------------------------------------------- moments
@pytest.mark.parametrize("cov", COV_TYPES)
def test_moments_closed_form_and_monte_carlo(cov):
    logits, loc, s = random_mixture_params((2,), 3, 2, cov, seed=7)
    m = make_mixture(logits, loc, s, cov)
    w = special.softmax(logits.numpy(), -1)
    mu = loc.numpy()
    covs = covariances(loc, s, cov)
    mean = (w[..., None] * mu).sum(-2)
    dev = mu - mean[:, None]
    total = (w[..., None, None] * (covs + dev[..., :, None] * dev[..., None, :])).sum(-3)
    np.testing.assert_allclose(m.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(m.covariance_matrix.numpy(), total, rtol=1e-12)
    np.testing.assert_allclose(m.variance.numpy(), np.diagonal(total, 0, -2, -1), rtol=1e-12)
    np.testing.assert_allclose(m.weights.numpy(), w, rtol=1e-12)
    np.testing.assert_allclose(m.weights.sum(-1).numpy(), 1.0, rtol=1e-12)
    # Monte Carlo: sample mean within 5 standard errors, sample covariance within 5 SE too.
    n = 200_000
    x = m.sample((n,), generator=123).numpy()
    se = np.sqrt(np.diagonal(total, 0, -2, -1) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se)
    emp_cov = np.einsum("nbi,nbj->bij", x - x.mean(0), x - x.mean(0)) / (n - 1)
    # SE of a covariance entry: sqrt(Var[(x_i - m_i)(x_j - m_j)] / n), estimated from the draws.
    prod = (x - x.mean(0))[..., :, None] * (x - x.mean(0))[..., None, :]
    se_cov = prod.std(0) / np.sqrt(n)
    assert np.all(np.abs(emp_cov - total) < 5 * se_cov + 1e-12)


# ----------------------------------------------------------------------------- 1-D cdf / icdf
def _ref_cdf(w, mu, sig, y):
    """Mixture CDF written independently with scipy.stats.norm."""
    return float(np.sum(w * stats.norm.cdf(y, mu, sig)))


def test_cdf_against_quad_and_icdf_against_brentq():
    logits = torch.tensor([0.3, -1.0, 1.2, 0.0], dtype=torch.float64)
    loc = torch.tensor([[-3.0], [0.5], [2.0], [7.0]], dtype=torch.float64)
    scale = torch.tensor([[0.5], [2.0], [0.3], [1.5]], dtype=torch.float64)
    m = GaussianMixture(logits, loc, scale)
    w = special.softmax(logits.numpy())
    mu, sig = loc[:, 0].numpy(), scale[:, 0].numpy()

    def pdf(t):
        return float(np.sum(w * stats.norm.pdf(t, mu, sig)))

    ys = np.array([-6.0, -3.1, 0.0, 1.9, 2.2, 5.0, 10.0])
    got = m.cdf(torch.tensor(ys).unsqueeze(-1)).numpy()
    for y, c in zip(ys, got):
        ref, _ = integrate.quad(pdf, -np.inf, y, points=None, limit=200, epsabs=1e-12)
        assert c == pytest.approx(ref, abs=1e-8)
    qs = np.array([1e-6, 0.01, 0.2, 0.5, 0.77, 0.99, 1 - 1e-6])
    got_q = m.icdf(torch.tensor(qs)).numpy()[:, 0]
    for q, x in zip(qs, got_q):
        ref = optimize.brentq(lambda t, q=q: _ref_cdf(w, mu, sig, t) - q, -50, 50, xtol=1e-13)
        assert x == pytest.approx(ref, abs=1e-6)
    assert m.icdf(torch.tensor(0.0)).item() == -math.inf
    assert m.icdf(torch.tensor(1.0)).item() == math.inf


def test_icdf_regression_dominant_component():
    """A rejected Newton step at a converged point used to jump to the bracket's middle."""
    logits = torch.tensor([4.6230, -0.8803, -6.5364], dtype=torch.float64)
    loc = torch.tensor([[1.7053], [-3.2536], [-4.1958]], dtype=torch.float64)
    scale = torch.tensor([[0.4072], [0.7522], [1.2127]], dtype=torch.float64)
    m = GaussianMixture(logits, loc, scale)
    w = special.softmax(logits.numpy())
    mu, sig = loc[:, 0].numpy(), scale[:, 0].numpy()
    for q in np.linspace(0.01, 0.99, 25):
        ref = optimize.brentq(lambda t, q=q: _ref_cdf(w, mu, sig, t) - q, -50, 50, xtol=1e-13)
        assert m.icdf(torch.tensor(q)).item() == pytest.approx(ref, abs=1e-6)


def test_icdf_batched_and_quantile_and_interval():
    logits, loc, s = random_mixture_params((4, 3), 5, 1, "diagonal", seed=9)
    m = GaussianMixture(logits, loc, s)
    q = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = m.icdf(q)
    assert x.shape == (4, 3, 1)
    torch.testing.assert_close(m.cdf(x), q, atol=1e-9, rtol=0)
    qs = m.quantile([0.1, 0.5, 0.9])
    assert qs.shape == (3, 4, 3, 1)
    assert (qs[0] < qs[1]).all() and (qs[1] < qs[2]).all()
    lo, hi = m.interval(0.8)
    torch.testing.assert_close(m.cdf(hi) - m.cdf(lo), torch.full((4, 3), 0.8, dtype=torch.float64))
    with pytest.raises(ValueError, match="probabilities"):
        m.icdf(torch.tensor(1.5))
    with pytest.raises(ValueError, match="1-D"):
        GaussianMixture(*random_mixture_params((), 2, 2, "diagonal")).cdf(torch.zeros(2))


def test_samples_1d_follow_exact_cdf_kstest():
    logits = torch.tensor([0.0, 1.0, -0.5])
    loc = torch.tensor([[-2.0], [1.0], [4.0]])
    scale = torch.tensor([[0.5], [1.0], [0.7]])
    m = GaussianMixture(logits, loc, scale)
    x = m.sample((20_000,), generator=0)[:, 0].double().numpy()
    w = special.softmax(logits.double().numpy())
    mu, sig = loc[:, 0].double().numpy(), scale[:, 0].double().numpy()

    def cdf(t):
        return (w * stats.norm.cdf(np.asarray(t)[:, None], mu, sig)).sum(-1)

    assert stats.kstest(x, cdf).pvalue > 1e-3
    # And the tempered distribution that sample() draws from, checked the same way.
    t, st = 2.0, 0.5
    xt = (
        m.sample((20_000,), temperature=t, sigma_temperature=st, generator=1)[:, 0].double().numpy()
    )
    wt = special.softmax(logits.double().numpy() / t)

    def cdf_t(v):
        return (wt * stats.norm.cdf(np.asarray(v)[:, None], mu, sig * math.sqrt(st))).sum(-1)

    assert stats.kstest(xt, cdf_t).pvalue > 1e-3
    mt = m.with_temperature(t, st)
    np.testing.assert_allclose(mt.cdf(torch.tensor([[0.3]])).numpy(), cdf_t([0.3]), rtol=1e-5)


# ----------------------------------------------------------------------------- temperatures
def test_temperature_zero_is_greedy_and_never_nan():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    loc = torch.tensor([[[1.0], [2.0], [3.0]], [[-1.0], [-2.0], [-3.0]]])
    scale = torch.ones(2, 3, 1)
    m = GaussianMixture(logits, loc, scale)
    x = m.sample((50,), temperature=0.0, sigma_temperature=0.0, generator=0)
    assert torch.equal(x, torch.tensor([[2.0], [-1.0]]).expand(50, 2, 1))
    # T=0 with noise: every draw comes from the argmax component.
    x = m.sample((2000,), temperature=0.0, generator=1)
    assert torch.isfinite(x).all()
    assert abs(x[:, 0].mean().item() - 2.0) < 5 / math.sqrt(2000)
    # sigma_temperature=0 returns component means exactly.
    x = m.sample((200,), sigma_temperature=0.0, generator=2)
    assert set(x[:, 0, 0].tolist()) <= {1.0, 2.0, 3.0}
    # Per-batch temperature tensors, one of them zero.
    x = m.sample((300,), temperature=torch.tensor([0.0, 1.0]), sigma_temperature=0.0, generator=3)
    assert (x[:, 0, 0] == 2.0).all() and set(x[:, 1, 0].tolist()) <= {-1.0, -2.0, -3.0}
    assert len(set(x[:, 1, 0].tolist())) > 1
    mt = m.with_temperature(0.0)
    np.testing.assert_allclose(mt.weights.numpy(), [[0, 1, 0], [1, 0, 0]])


def test_large_temperature_gives_uniform_component_frequencies():
    logits = torch.tensor([5.0, 0.0, -5.0, 1.0])
    loc = torch.arange(4.0).unsqueeze(-1) * 10
    m = GaussianMixture(logits, loc, torch.ones(4, 1))
    n = 40_000
    for t in (1e6, math.inf):
        x = m.sample((n,), temperature=t, sigma_temperature=0.0, generator=5)[:, 0]
        counts = torch.bincount((x / 10).long(), minlength=4).numpy()
        assert stats.chisquare(counts).pvalue > 1e-3
    # Temperature 1: the frequencies follow softmax(logits) (chi-square goodness of fit).
    x = m.sample((n,), sigma_temperature=0.0, generator=6)[:, 0]
    counts = torch.bincount((x / 10).long(), minlength=4).numpy()
    expected = special.softmax(logits.double().numpy()) * n
    keep = expected > 5
    assert (
        stats.chisquare(
            counts[keep], expected[keep] * counts[keep].sum() / expected[keep].sum()
        ).pvalue
        > 1e-3
    )


@pytest.mark.parametrize("cov", COV_TYPES)
def test_sigma_temperature_scales_variance(cov):
    logits, loc, s = random_mixture_params((), 1, 2, cov, seed=4)
    m = make_mixture(logits, loc, s, cov)
    n = 100_000
    for st in (0.25, 4.0):
        x = m.sample((n,), sigma_temperature=st, generator=8).numpy()
        want = st * covariances(loc, s, cov)[0]
        emp = np.cov(x.T)
        # Var of a sample variance of a Gaussian: 2 sigma^4 / n; 5 standard errors.
        se = np.sqrt((want**2 + np.outer(np.diag(want), np.diag(want))) / n)
        assert np.all(np.abs(emp - want) < 5 * se)


def test_zero_weight_components_are_never_sampled():
    logits = torch.tensor([[-math.inf, 0.0, -math.inf, 0.0, -math.inf]]).expand(1000, 5)
    loc = torch.arange(5.0).reshape(1, 5, 1).expand(1000, 5, 1)
    m = GaussianMixture(logits, loc, torch.ones(1000, 5, 1), validate_args=False)
    x = m.sample((20,), sigma_temperature=0.0, generator=0)
    assert set(x.unique().tolist()) == {1.0, 3.0}
    # Very unequal logits (weights underflow relative to the largest row) still sample right.
    logits = torch.tensor([[-200.0, -199.0], [200.0, 199.0]])
    m = GaussianMixture(logits, torch.tensor([[[0.0], [1.0]], [[0.0], [1.0]]]), torch.ones(2, 2, 1))
    x = m.sample((20_000,), sigma_temperature=0.0, generator=1)[..., 0]
    # Weight of the second component: e/(1+e) in the first row, 1/(1+e) in the second.
    for col, p1 in enumerate((math.e / (1 + math.e), 1 / (1 + math.e))):
        assert abs(x[:, col].mean().item() - p1) < 5 * math.sqrt(p1 * (1 - p1) / 20_000)


def test_seeds_reproduce_and_shapes():
    logits, loc, tril = random_mixture_params((3,), 4, 2, "full", dtype=torch.float32)
    m = GaussianMixture(logits, loc, scale_tril=tril)
    a = m.sample((5, 2), generator=42)
    b = m.sample((5, 2), generator=torch.Generator().manual_seed(42))
    c = m.sample((5, 2), generator=43)
    assert a.shape == (5, 2, 3, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(TypeError, match="generator"):
        m.sample(generator="seed")
    with pytest.raises(ValueError, match="temperature"):
        m.sample(temperature=-1.0)


# ----------------------------------------------------------------------------- mode, marginal
def test_mode_1d_against_dense_grid():
    logits = torch.tensor([[0.0, 0.2, -0.3], [1.0, 1.0, 1.0]], dtype=torch.float64)
    loc = torch.tensor([[[-2.0], [0.0], [3.0]], [[0.0], [0.4], [5.0]]], dtype=torch.float64)
    scale = torch.tensor([[[0.6], [0.5], [1.5]], [[1.0], [1.0], [0.2]]], dtype=torch.float64)
    m = GaussianMixture(logits, loc, scale)
    grid = torch.linspace(-6, 9, 300_001, dtype=torch.float64)
    lp = m.log_prob(grid[:, None, None])  # (G, 2)
    want = grid[lp.argmax(0)]
    np.testing.assert_allclose(m.mode[:, 0].numpy(), want.numpy(), atol=1e-4)


def test_mode_full_against_scipy_optimize():
    logits, loc, s = random_mixture_params((), 3, 2, "full", seed=21)
    m = GaussianMixture(logits, loc, scale_tril=s)
    w = special.softmax(logits.numpy())
    covs = covariances(loc, s, "full")

    def neg(y):
        return -sum(
            w[k] * stats.multivariate_normal(loc[k].numpy(), covs[k]).pdf(y) for k in range(3)
        )

    best = min(
        (
            optimize.minimize(
                neg, loc[k].numpy(), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14}
            )
            for k in range(3)
        ),
        key=lambda r: r.fun,
    )
    np.testing.assert_allclose(m.mode.numpy(), best.x, atol=1e-5)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_marginal_against_scipy(cov):
    logits, loc, s = random_mixture_params((2,), 3, 3, cov, seed=13)
    m = make_mixture(logits, loc, s, cov)
    covs = covariances(loc, s, cov)
    dims = [2, 0]
    mg = m.marginal(dims)
    y = torch.randn(2, 2, dtype=torch.float64)
    lw = logits.numpy() - special.logsumexp(logits.numpy(), -1, keepdims=True)
    want = np.array(
        [
            special.logsumexp(
                lw[i]
                + [
                    stats.multivariate_normal(
                        loc[i, k, dims].numpy(), covs[i, k][np.ix_(dims, dims)]
                    ).logpdf(y[i].numpy())
                    for k in range(3)
                ]
            )
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(mg.log_prob(y).numpy(), want, rtol=1e-10)
    m1 = m.marginal(1)
    assert m1.event_shape == (1,)
    np.testing.assert_allclose(m1.mean.numpy(), m.mean[..., 1:2].numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="dims"):
        m.marginal([0, 0])
    with pytest.raises(ValueError, match="dims"):
        m.marginal(3)


# ----------------------------------------------------------------------------- misc
def test_indexing_expand_and_repr():
    logits, loc, s = random_mixture_params((4, 3), 2, 2, "diagonal")
    m = GaussianMixture(logits, loc, s)
    y = torch.randn(4, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(m[1].log_prob(y[1]), m.log_prob(y)[1])
    torch.testing.assert_close(m[:, 2].log_prob(y[:, 2]), m.log_prob(y)[:, 2])
    e = m[0, 0].expand((5,))
    assert e.batch_shape == (5,)
    torch.testing.assert_close(e.log_prob(y[0, 0]), m.log_prob(y)[0, 0].expand(5))
    assert "K=2" in repr(m) and m.num_components == 2
    assert m.covariance_type == "diagonal"


def test_argument_checks():
    logits, loc, s = random_mixture_params((3,), 4, 2, "diagonal", dtype=torch.float32)
    with pytest.raises(ValueError, match="exactly one"):
        GaussianMixture(logits, loc)
    with pytest.raises(ValueError, match=r"K=5"):
        GaussianMixture(torch.zeros(3, 5), loc, s)
    with pytest.raises(ValueError, match=r"scale must have shape"):
        GaussianMixture(logits, loc, torch.ones(3, 4, 3))
    with pytest.raises(ValueError, match=r"scale_tril must have shape"):
        GaussianMixture(logits, loc, scale_tril=torch.ones(3, 4, 2))
    with pytest.raises(ValueError, match="do not broadcast"):
        GaussianMixture(torch.zeros(2, 4), loc, s)
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture(logits, loc, -s, validate_args=True)
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture(logits, loc, torch.zeros_like(s), validate_args=True)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(logits * math.nan, loc, s, validate_args=True)
    with pytest.raises(ValueError, match="loc"):
        GaussianMixture(logits, loc * math.nan, s, validate_args=True)
    with pytest.raises(ValueError, match="positive diagonal"):
        GaussianMixture(
            logits, loc, scale_tril=-torch.eye(2).expand(3, 4, 2, 2), validate_args=True
        )
    with pytest.raises(TypeError, match="torch.Tensor"):
        GaussianMixture(logits.numpy(), loc, s)
    m = GaussianMixture(logits, loc, s)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        m.log_prob(torch.zeros(3, 3))


def test_sampling_rows_with_very_different_logit_levels():
    """A row whose logits all lie far below another row's is still sampled from its own softmax
    (weights are normalised per row when a shared maximum would underflow them)."""
    logits = torch.tensor([[0.0, 0.0], [-200.0, -201.0], [-60.0, -61.0]])
    m = GaussianMixture(
        logits, torch.tensor([[[-5.0], [5.0]]]).expand(3, 2, 1), torch.full((3, 2, 1), 0.1)
    )
    n = 40_000
    draws = m.sample((n,), generator=3)[..., 0]  # (n, 3)
    p_first = 1.0 / (1.0 + math.exp(-1.0))  # softmax([a, a - 1])[0]
    for row, p in ((0, 0.5), (1, p_first), (2, p_first)):
        freq = float((draws[:, row] < 0).double().mean())
        se = math.sqrt(p * (1 - p) / n)
        assert abs(freq - p) < 5 * se, (row, freq, p)


def test_sampling_in_blocks_equals_one_block(monkeypatch):
    """Components are drawn in blocks of rows; block boundaries must not change the draws."""
    import mdnkit.mixture as mixture_module

    n, k = 5000, 7
    params = random_mixture_params((n,), k, 2, "diagonal", dtype=torch.float32, scale_low=0.1)
    m = make_mixture(*params, "diagonal")
    monkeypatch.setattr(mixture_module, "_SAMPLE_BLOCK_ELEMENTS", 1 << 30)
    whole = m.sample((3,), temperature=0.7, generator=5)
    monkeypatch.setattr(mixture_module, "_SAMPLE_BLOCK_ELEMENTS", 1)  # blocks of 1024 rows
    blocked = m.sample((3,), temperature=0.7, generator=5)
    assert torch.equal(whole, blocked)


def test_icdf_gradient_is_the_implicit_one():
    """icdf is differentiable: the gradient of the quantile matches finite differences
    (gradcheck), from one Newton step at the root rather than through the solver's iterations."""
    logits, loc, scale = random_mixture_params((3,), 4, 1, "diagonal", seed=1, requires_grad=True)
    q = torch.tensor([0.1, 0.5, 0.97], dtype=torch.float64)

    def quantiles(a, b, c):
        return GaussianMixture(a, b, c).icdf(q)

    assert torch.autograd.gradcheck(quantiles, (logits, loc, scale))


@pytest.mark.parametrize("kind", ["diagonal", "spherical", "full"])
def test_affine_is_the_change_of_variables(kind):
    """log p_Y(y) = log p_Z((y - shift) / s) - sum log s, and spherical stays spherical only
    under a common scale."""
    k, d = 3, 2
    params = random_mixture_params(
        (5,), k, d, kind, dtype=torch.float32, seed=4, scale_low=0.5, tril_low=0.5
    )
    m = make_mixture(*params, kind)
    shift, s = torch.tensor([1.5, -2.0]), torch.tensor([3.0, 0.25])
    y = torch.randn(5, d, generator=torch.Generator().manual_seed(4))
    expected = m.log_prob((y - shift) / s) - s.log().sum()
    torch.testing.assert_close(m.affine(shift, s).log_prob(y), expected, rtol=1e-5, atol=1e-5)
    if kind == "spherical":
        assert m.affine(shift, s[:1]).covariance_type == "spherical"
        assert m.affine(shift, s).covariance_type == "diagonal"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_sum_exp_pieces_hold_no_denormal_floats(dtype):
    """kernels.shifted_exp_sum: exact zeros below EXP_FLOOR, -inf for all -inf columns."""
    # columns: a spread row, an all -inf row, one with a single finite term
    a = torch.tensor(
        [
            [0.0, -math.inf, -math.inf],
            [-79.0, -math.inf, 3.0],
            [-85.0, -math.inf, -math.inf],
            [-95.0, -math.inf, -math.inf],  # e^-95: subnormal in float32
            [-720.0, -math.inf, -math.inf],  # e^-720: subnormal in float64
        ],
        dtype=dtype,
    )
    e, s, m = kernels.shifted_exp_sum(a)
    tiny = torch.finfo(dtype).tiny
    assert bool(((e == 0) | (e >= tiny)).all())  # no subnormal values anywhere
    assert (e[2:, 0] == 0).all() and (e[:, 1] == 0).all()
    lse = s.log() + m
    assert lse[1].item() == -math.inf
    assert lse[2].item() == 3.0
    ref = torch.logsumexp(a[:, 0].double(), 0)
    assert lse[0].item() == pytest.approx(ref.item(), rel=1e-15, abs=0)


def test_log_prob_of_far_apart_components_matches_scipy():
    # components hundreds of standard deviations apart: most terms underflow
    logits = torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)
    loc = torch.tensor([[-500.0], [0.0], [700.0]], dtype=torch.float64)
    scale = torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.float64)
    y = torch.tensor([[-501.0], [3.0], [350.0], [699.0]], dtype=torch.float64)
    m = GaussianMixture(logits, loc, scale)
    w = np.exp(logits.numpy() - special.logsumexp(logits.numpy()))
    ref = [
        special.logsumexp(np.log(w) + stats.norm.logpdf(v, loc[:, 0].numpy(), scale[:, 0].numpy()))
        for v in y[:, 0].numpy()
    ]
    np.testing.assert_allclose(m.log_prob(y).numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_component_draws_are_the_inverse_cdf_of_the_same_uniforms(dtype):
    # an independent inverse CDF from the same uniforms: count of cumulative weights below
    # (1 - u) * total, by searchsorted on a float64 cumsum
    n, k = 20_000, 7
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(n, k, generator=g) * 3).to(dtype)
    logits[:, 2] = -math.inf  # a component that must never be drawn
    m = GaussianMixture(logits, torch.zeros(n, k, 1, dtype=dtype), torch.ones(n, k, 1, dtype=dtype))
    idx = m._component_index(
        torch.Size([n]), torch.tensor(1.0, dtype=dtype), torch.Generator().manual_seed(5)
    )
    u = torch.rand(n, dtype=dtype, generator=torch.Generator().manual_seed(5)).double()
    w = torch.softmax(logits.double(), -1)
    cdf = w.cumsum(-1)
    ref = torch.searchsorted(cdf, ((1 - u) * cdf[:, -1]).unsqueeze(1), right=False).squeeze(1)
    assert int(idx.max()) <= k - 1 and not bool((idx == 2).any())
    mismatch = (idx != ref).double().mean().item()
    assert mismatch < 1e-3  # only draws within rounding of a boundary may differ


@pytest.mark.parametrize("cov", ["diagonal", "spherical", "full"])
def test_mode_of_a_batch_against_scipy_optimize_row_by_row(cov):
    # batch (4, 3): every row's starts converge at their own pace
    logits, loc, s = random_mixture_params((4, 3), 3, 2, cov, seed=5)
    m = make_mixture(logits, loc, s, cov)
    got = m.mode
    assert got.shape == (4, 3, 2)
    for i in range(4):
        for j in range(3):
            row = m[i, j]

            def neg(y, row=row):
                return -row.log_prob(torch.as_tensor(y, dtype=torch.float64)).item()

            best = min(
                (
                    optimize.minimize(
                        neg,
                        row.loc[c].numpy(),
                        method="Nelder-Mead",
                        options={"xatol": 1e-10, "fatol": 1e-14},
                    )
                    for c in range(3)
                ),
                key=lambda r: r.fun,
            )
            # compared by density: two modes may tie
            assert -neg(got[i, j].numpy()) == pytest.approx(-best.fun, abs=1e-8)


# ----------------------------------------------------------------------------- mode property
def test_mode_property_is_find_mode_with_its_defaults():
    logits, loc, s = random_mixture_params((3,), 4, 2, "diagonal", seed=8)
    m = make_mixture(logits, loc, s, "diagonal")
    assert isinstance(GaussianMixture.mode, property)  # as torch.distributions' mode
    got = m.mode
    assert got.shape == (3, 2)
    assert torch.equal(got, m.find_mode()) and torch.equal(got, m.find_mode(200, 1e-9))
    assert m.mode is got  # computed once
    # the options matter: one fixed-point step from the means is not yet the mode
    assert not torch.allclose(m.find_mode(max_iter=1), got, atol=1e-6)
    # and the mode is a stationary point of the density: the gradient of log p vanishes
    y = got.clone().requires_grad_()
    (grad,) = torch.autograd.grad(m.log_prob(y).sum(), y)
    assert grad.abs().max().item() < 1e-6


# ----------------------------------------------------------------------------- lazy values
@pytest.mark.parametrize("cov", COV_TYPES)
def test_derived_values_are_computed_once_and_views_stay_correct(cov):
    logits, loc, s = random_mixture_params((2, 3), 4, 2, cov, seed=12)
    m = make_mixture(logits, loc, s, cov)
    w = special.softmax(logits.numpy(), -1)
    for name in ("weights", "mean", "variance", "covariance_matrix", "component_variance"):
        assert getattr(m, name) is getattr(m, name), name  # cached, not recomputed
    assert torch.equal(m.probs, m.weights)
    np.testing.assert_allclose(m.weights.numpy(), w, rtol=1e-12)
    # derived distributions have their own values, not the parent's cached ones
    np.testing.assert_allclose(m[1].weights.numpy(), w[1], rtol=1e-12)
    np.testing.assert_allclose(m[:, 2].mean.numpy(), m.mean[:, 2].numpy(), rtol=1e-12)
    e = m[0, 1].expand((5,))
    assert e.weights.shape == (5, 4) and e.mean.shape == (5, 2)
    np.testing.assert_allclose(e.weights.numpy(), np.broadcast_to(w[0, 1], (5, 4)), rtol=1e-12)
    hot = m.with_temperature(2.0)
    np.testing.assert_allclose(hot.weights.numpy(), special.softmax(logits.numpy() / 2, -1))
    np.testing.assert_allclose(m.weights.numpy(), w, rtol=1e-12)  # the original is unchanged
    cov_np = covariances(loc, s, cov)
    np.testing.assert_allclose(m.component_covariance.numpy(), cov_np, rtol=1e-12)
    np.testing.assert_allclose(
        m.component_variance.numpy(), np.diagonal(cov_np, 0, -2, -1), rtol=1e-12
    )


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("n", [1, 3, 8, 9])
def test_unrolled_sums_match_numpy(n):
    t = torch.randn(4, n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    np.testing.assert_allclose(kernels.sum_dim1(t).numpy(), t.numpy().sum(1), rtol=1e-13)
    u = t.transpose(1, 2)  # (4, 5, n), a strided view
    np.testing.assert_allclose(kernels.sum_last(u).numpy(), u.numpy().sum(-1), rtol=1e-13)


def test_component_major_round_trip_and_broadcast_sums():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g)  # (*b, K, C)
    cm = kernels.to_component_major(t, torch.Size((2, 3)))
    assert cm.is_contiguous()
    np.testing.assert_array_equal(cm.numpy(), t.numpy().transpose(2, 3, 0, 1).reshape(4, 5, 6))
    back = kernels.from_component_major(cm, torch.Size((2, 3)), t.shape)
    assert torch.equal(back, t)
    # a tensor broadcast along the batch: its gradient is summed over the broadcast dims
    small = torch.randn(3, 4, 5, dtype=torch.float64, generator=g)  # batch (3,) -> (2, 3)
    cm = kernels.to_component_major(small, torch.Size((2, 3)))
    np.testing.assert_array_equal(
        cm.numpy(),
        np.broadcast_to(small.numpy(), (2, 3, 4, 5)).transpose(2, 3, 0, 1).reshape(4, 5, 6),
    )
    summed = kernels.from_component_major(cm, torch.Size((2, 3)), small.shape)
    np.testing.assert_allclose(summed.numpy(), 2 * small.numpy(), rtol=1e-15)


@pytest.mark.parametrize("cov", ["diagonal", "spherical"])
def test_diagonal_terms_match_scipy(cov):
    logits, loc, s = random_mixture_params((6,), 3, 2, cov, seed=14)
    y = torch.randn(6, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z, inv, c = kernels.diagonal_terms(loc, s, y)
    sig = np.broadcast_to(s.numpy(), loc.shape)
    np.testing.assert_allclose(z.numpy(), (y.numpy() - loc.numpy()) / sig, rtol=1e-13)
    np.testing.assert_allclose(inv.numpy(), 1 / s.numpy(), rtol=1e-15)
    ref = stats.norm.logpdf(y.numpy(), loc.numpy(), sig).sum(-1) + kernels.LOG_2PI  # D/2 log 2pi
    np.testing.assert_allclose(c.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("cov", ["diagonal", "spherical"])
def test_diagonal_mixture_lse_and_grad_match_scipy_and_closed_form(cov):
    """The shared kernel's value against scipy, its gradients against the closed forms
    (responsibilities and weights from scipy's softmax), with a per-row incoming gradient and
    with a number and ``out=`` buffers (the fast step's way)."""
    k, d, b = 4, 3, 7
    logits, loc, s = random_mixture_params((b,), k, d, cov, seed=15)
    logits[2, 1] = -math.inf  # a zero-weight component
    g = torch.Generator().manual_seed(2)
    y = torch.randn(b, d, dtype=torch.float64, generator=g) * 2
    lt = logits.t().contiguous()  # (K, B)
    inv = s.permute(1, 2, 0).reciprocal().contiguous()  # (K, C, B)
    z = (y.t() - loc.permute(1, 2, 0)) * inv  # (K, D, B)
    lse, pieces = kernels.diagonal_mixture_lse(lt, z, inv)
    sig = np.broadcast_to(s.numpy(), loc.shape)  # (B, K, D)
    comp = stats.norm.logpdf(y.numpy()[:, None, :], loc.numpy(), sig).sum(-1)  # (B, K)
    lw = logits.numpy() - special.logsumexp(logits.numpy(), -1, keepdims=True)
    want = special.logsumexp(lw + comp, -1) + 0.5 * d * math.log(2 * math.pi)
    np.testing.assert_allclose(lse.numpy(), want, rtol=1e-12)
    # closed-form gradients
    r = special.softmax(lw + comp, -1)  # (B, K)
    pi = special.softmax(logits.numpy(), -1)
    gr = torch.randn(b, dtype=torch.float64, generator=g)
    zz = (y.numpy()[:, None, :] - loc.numpy()) / sig  # (B, K, D)
    gn = gr.numpy()[:, None]
    want_logits = gn * (r - pi)
    want_loc = gn[..., None] * r[..., None] * zz / sig
    want_scale = gn[..., None] * r[..., None] * (zz**2 - 1) / sig
    if cov == "spherical":
        want_scale = want_scale.sum(-1, keepdims=True)
    d_logits, d_loc, d_scale = kernels.diagonal_mixture_grad(gr, z, inv, pieces)
    np.testing.assert_allclose(d_logits.t().numpy(), want_logits, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(d_loc.permute(2, 0, 1).numpy(), want_loc, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(d_scale.permute(2, 0, 1).numpy(), want_scale, rtol=1e-10, atol=1e-14)
    # a number as the incoming gradient, written into given buffers
    out = (torch.empty(k, b, dtype=torch.float64), torch.empty(k, d, b, dtype=torch.float64))
    got = kernels.diagonal_mixture_grad(-0.5, z, inv, pieces, out)
    assert got[0].data_ptr() == out[0].data_ptr() and got[1].data_ptr() == out[1].data_ptr()
    np.testing.assert_allclose(out[0].t().numpy(), -0.5 * (r - pi), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
        out[1].permute(2, 0, 1).numpy(), -0.5 * r[..., None] * zz / sig, rtol=1e-10, atol=1e-14
    )
    assert torch.isfinite(lse).all() and (d_loc[1, :, 2] == 0).all()


@pytest.mark.parametrize("cov", ["diagonal", "spherical"])
def test_diagonal_mixture_lse_finite_logits_matches_general_path_and_scipy(cov):
    """``finite_logits=True`` (the fast step's way: no guard for all -inf logit columns) gives
    the general path's value and gradients bit for bit, and scipy's value; the densities' guard
    stays: a column whose every component density underflows still gives -inf, not NaN."""
    k, d, b = 5, 3, 9
    logits, loc, s = random_mixture_params((b,), k, d, cov, seed=16)
    y = torch.randn(b, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 3
    y[4] = 1e160  # every component's |z|^2 overflows: density 0 in each
    lt = logits.t().contiguous()
    inv = s.permute(1, 2, 0).reciprocal().contiguous()
    z = (y.t() - loc.permute(1, 2, 0)) * inv
    fast, fast_pieces = kernels.diagonal_mixture_lse(lt, z, inv, finite_logits=True)
    general, pieces = kernels.diagonal_mixture_lse(lt, z, inv)
    assert torch.equal(fast, general) and fast[4].item() == -math.inf
    sig = np.broadcast_to(s.numpy(), loc.shape)
    comp = stats.norm.logpdf(y.numpy()[:, None, :], loc.numpy(), sig).sum(-1)
    lw = logits.numpy() - special.logsumexp(logits.numpy(), -1, keepdims=True)
    want = special.logsumexp(lw + comp, -1) + 0.5 * d * math.log(2 * math.pi)
    keep = np.arange(b) != 4
    np.testing.assert_allclose(fast.numpy()[keep], want[keep], rtol=1e-12)
    for got, ref in zip(
        kernels.diagonal_mixture_grad(1.0, z[..., keep], inv[..., keep], _cols(fast_pieces, keep)),
        kernels.diagonal_mixture_grad(1.0, z[..., keep], inv[..., keep], _cols(pieces, keep)),
    ):
        assert torch.equal(got, ref)


def _cols(pieces, keep):
    """The pieces of :func:`kernels.diagonal_mixture_lse` restricted to some columns."""
    return tuple(None if p is None else p[..., torch.from_numpy(keep)] for p in pieces)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [5, 70])
def test_cumsum_component_major_matches_numpy(dtype, k):
    p = torch.rand(9, 4, k, dtype=dtype, generator=torch.Generator().manual_seed(k))
    p[0, 0, 1] = 0.0
    got = kernels.cumsum_component_major(p)
    assert got.shape == (k, 36)
    want = np.cumsum(p.double().numpy().reshape(36, k), -1).T
    np.testing.assert_allclose(
        got.double().numpy(), want, rtol=1e-5 if dtype == torch.float32 else 1e-13
    )
    assert bool((got[1:] >= got[:-1]).all())  # exactly nondecreasing
    buf = torch.empty(36 * k + 3, dtype=dtype)
    torch.testing.assert_close(kernels.cumsum_component_major(p, buf), got)


def test_weights_cdf_is_the_cumulative_softmax():
    logits = torch.tensor(
        [[0.0, 1.0, -2.0], [-300.0, -301.0, -299.0], [5.0, -math.inf, 5.0]], dtype=torch.float64
    )
    cdf = kernels.weights_cdf(logits)  # (K, C), unnormalised
    want = np.cumsum(special.softmax(logits.numpy(), -1), -1).T
    np.testing.assert_allclose((cdf / cdf[-1]).numpy(), want, rtol=1e-12, atol=1e-300)
    assert cdf[1, 2] == cdf[0, 2]  # a zero weight adds exactly nothing


# ----------------------------------------------------------------------------- fast paths
def _reference_draws(logits, loc, scale, shape, seed, t=1.0, s=1.0):
    """Independent draws from the same generator stream as ``sample``: ``shape`` uniforms, then
    ``shape + (1,)`` normals; component by inverse CDF on a float64 softmax(logits / t)
    (searchsorted), value ``mu + sqrt(s) sigma eps``.  Returns (component, value)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, dtype=logits.dtype, generator=g).double()
    eps = torch.randn(*shape, 1, dtype=logits.dtype, generator=g).double()
    b = logits.shape[:-1]
    cdf = torch.softmax(logits.double() / t, -1).cumsum(-1).expand(*shape, logits.shape[-1])
    thr = ((1 - u) * cdf[..., -1]).unsqueeze(-1)
    idx = (
        torch.searchsorted(cdf.contiguous(), thr.contiguous())
        .squeeze(-1)
        .clamp(max=cdf.shape[-1] - 1)
    )
    mu = loc.double().expand(*shape, *loc.shape[len(b) :])[..., 0].gather(-1, idx[..., None])
    sig = scale.double().expand(*shape, *scale.shape[len(b) :])[..., 0].gather(-1, idx[..., None])
    return idx, mu + math.sqrt(s) * sig * eps


@pytest.mark.parametrize(
    "rows, draws, t, s",
    [
        (3000, (), 1.0, 1.0),  # one block, one draw a row: the shared shift, in place
        (3000, (), 0.6, 0.25),  # temperatures: logits / T folded into the exp2
        (70_000, (), 1.3, 1.0),  # several blocks
        (300, (), 1.0, 1.0),  # few rows: the row-major draw
        (900, (3,), 0.8, 2.0),  # several draws a row
    ],
)
def test_1d_draws_are_the_inverse_cdf_of_the_same_uniforms_and_normals(rows, draws, t, s):
    """Every sampling path for 1-D events (shared-shift exp2 weights, blocks, the flat ``take``
    of the chosen mean and scale) gives, draw for draw, the inverse CDF of the very uniforms
    and normals the generator yields, computed independently in float64."""
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(rows, 6, generator=g) * 2
    loc = torch.randn(rows, 6, 1, generator=g) * 3
    scale = torch.rand(rows, 6, 1, generator=g) + 0.2
    m = GaussianMixture(logits, loc, scale)
    x = m.sample(draws, temperature=t, sigma_temperature=s, generator=4)
    shape = torch.Size(draws) + (rows,)
    assert x.shape == shape + (1,)
    idx, ref = _reference_draws(logits, loc, scale, shape, 4, t, s)
    same = (x.double() - ref).abs() <= 1e-5 * (1 + ref.abs())
    # only a uniform within rounding of a cumulative weight may pick the neighbouring component
    assert float(same.double().mean()) > 1 - 1e-3


def test_1d_draws_of_views_broadcast_parameters_and_batch_dims():
    """The flat index of the 1-D path is the logical one: non-contiguous views (a head's
    slices), parameters broadcast over the batch and several batch dimensions all give the
    independent inverse-CDF draws."""
    g = torch.Generator().manual_seed(2)
    raw = torch.randn(4, 500, 3 * 5, generator=g)  # a head's output: logits | loc | raw scale
    logits, loc = raw[..., :5], raw[..., 5:10].unsqueeze(-1)
    scale = torch.nn.functional.softplus(raw[..., 10:]).unsqueeze(-1) + 0.1
    assert not loc.is_contiguous()
    for lg, lc, sc in ((logits, loc, scale), (logits, loc[:1, :1], scale[0, 0])):
        m = GaussianMixture(lg, lc, sc)
        x = m.sample(generator=9)
        shape = m.batch_shape
        _, ref = _reference_draws(lg, lc.expand(*shape, 5, 1), sc.expand(*shape, 5, 1), shape, 9)
        same = (x.double() - ref).abs() <= 1e-5 * (1 + ref.abs())
        assert x.shape == (4, 500, 1) and float(same.double().mean()) > 1 - 1e-3


def test_shifted_weights_only_where_one_shift_serves_every_row():
    rows = torch.tensor([[0.0, -10.0], [3.0, 1.0]])
    assert kernels.shared_shift(rows) == 3.0
    assert kernels.shared_shift(torch.tensor([[0.0, math.nan]])) is None
    assert kernels.shared_shift(torch.tensor([[-math.inf, -math.inf]])) is None
    # a row far below the shift (its total under e^-40), a row far above, a NaN: not served
    assert kernels.shifted_weights_cdf(rows, 3.0, 1.0 / 0.2) is not None  # row 0 at e^-15
    far = torch.tensor([[0.0, -1.0], [50.0, 49.0]])
    assert kernels.shifted_weights_cdf(far, 50.0, 1.0) is None  # row 0's total e^-50
    assert kernels.shifted_weights_cdf(far, 50.0, 0.7) is not None  # e^-35 at T = 1 / 0.7
    assert kernels.shifted_weights_cdf(rows, -50.0, 1.0) is None
    assert kernels.shifted_weights_cdf(torch.tensor([[0.0, math.nan]]), 0.0, 1.0) is None
    # masked components (-inf) weigh nothing; the weights are the softmax to rounding
    logits = torch.randn(50, 7, dtype=torch.float64) * 3
    logits[:, 4] = -math.inf
    top = kernels.shared_shift(logits)
    cdf = kernels.shifted_weights_cdf(logits, top, 1 / 1.5)
    want = np.cumsum(special.softmax(logits.numpy() / 1.5, -1), -1).T
    np.testing.assert_allclose((cdf / cdf[-1]).numpy(), want, rtol=1e-13)


@pytest.mark.parametrize(
    "which, value, message",
    [
        ("logits", math.nan, "logits contain NaN or \\+inf"),
        ("logits", math.inf, "logits contain NaN or \\+inf"),
        ("loc", math.nan, "loc contains NaN or inf"),
        ("loc", -math.inf, "loc contains NaN or inf"),
        ("scale", 0.0, "scale must be positive and finite"),
        ("scale", 1e-40, "scale must be positive and finite"),
        ("scale", math.inf, "scale must be positive and finite"),
        ("scale", math.nan, "scale must be positive and finite"),
        ("tril_off", math.nan, "scale_tril contains NaN or inf"),
        ("tril_diag", -1.0, "scale_tril must have a positive diagonal"),
    ],
)
def test_value_checks_name_each_bad_value(which, value, message):
    """The one-pass look at the parameters passes nothing that the detailed checks refuse."""
    logits, loc = torch.zeros(300, 3), torch.zeros(300, 3, 2)
    scale, tril = torch.ones(300, 3, 2), torch.eye(2).repeat(300, 3, 1, 1)
    target = {"logits": logits, "loc": loc, "scale": scale}.get(which)
    if target is not None:
        target.view(-1)[417] = value
        with pytest.raises(ValueError, match=message):
            GaussianMixture(logits, loc, scale, validate_args=True)
    else:
        tril[123, 1, 1 if which == "tril_diag" else 1, 0 if which == "tril_off" else 1] = value
        with pytest.raises(ValueError, match=message):
            GaussianMixture(logits, loc, scale_tril=tril, validate_args=True)


def test_value_checks_accept_good_values_whose_sums_overflow():
    """Finite parameters whose sum overflows, and masked (-inf) components, are good values:
    the quick look only sends them to the detailed checks."""
    big = torch.finfo(torch.float32).max
    logits = torch.tensor([[0.0, -math.inf, 1.0], [big, big, 0.0]])
    loc = torch.full((2, 3, 1), big)
    m = GaussianMixture(logits, loc, torch.full((2, 3, 1), big), validate_args=True)
    assert m.batch_shape == (2,)
    tril = torch.diag_embed(torch.full((2, 3, 2), big))
    GaussianMixture(logits, torch.zeros(2, 3, 2), scale_tril=tril, validate_args=True)
