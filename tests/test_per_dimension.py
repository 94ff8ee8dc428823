"""Tests of :class:`mdnkit.per_dimension.PerDimensionMixture` against independent references.

References: SciPy (``norm`` pdfs and log-pdfs summed with weights, ``logsumexp``, ``kstest``,
``brentq``), closed forms written here in NumPy, ``torch.distributions``' MixtureSameFamily, and
Monte Carlo with stated tolerances (5 standard errors).
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, special, stats
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import mdnkit
import mdnkit.per_dimension as per_dimension
from mdnkit import GaussianMixture, PerDimensionMixture


# ----------------------------------------------------------------------------- helpers
def random_params(batch, d, k, dtype=torch.float64, seed=0):
    """Random (logits, loc, scale), each of shape ``batch + (d, k)``."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, d, k, generator=g, dtype=dtype) * 1.5
    loc = torch.randn(*batch, d, k, generator=g, dtype=dtype) * 2.0
    scale = torch.rand(*batch, d, k, generator=g, dtype=dtype) + 0.3
    return logits, loc, scale


def np_weights(logits, temperature=1.0):
    """softmax(logits / T) over the last axis, in NumPy."""
    return special.softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


def scipy_log_prob(logits, loc, scale, y):
    """sum_d log sum_k w_dk N(y_d | mu_dk, s_dk), with pdfs from scipy.stats.norm."""
    w = np_weights(logits)
    pdf = stats.norm.pdf(np.asarray(y)[..., None], np.asarray(loc), np.asarray(scale))
    return np.log((w * pdf).sum(-1)).sum(-1)


def scipy_log_prob_tail(logits, loc, scale, y):
    """The same in log space (norm.logpdf + logsumexp), for values far in the tails."""
    with np.errstate(divide="ignore"):  # log of a zero weight is -inf
        logw = np.log(np_weights(logits))
    lp = stats.norm.logpdf(np.asarray(y)[..., None], np.asarray(loc), np.asarray(scale))
    return special.logsumexp(logw + lp, axis=-1).sum(-1)


def np_cdf_1d(w, mu, sd):
    """The CDF of one 1-D mixture (weights, means, sds as 1-D arrays), as a function."""
    return lambda x: (w * stats.norm.cdf((np.asarray(x)[..., None] - mu) / sd)).sum(-1)


# ----------------------------------------------------------------------------- densities
def test_log_prob_matches_scipy():
    logits, loc, scale = random_params((3, 4), 3, 4)
    y = torch.randn(6, 3, 4, 3, dtype=torch.float64) * 2.5
    m = PerDimensionMixture(logits, loc, scale)
    got = m.log_prob(y)
    assert got.shape == (6, 3, 4)
    ref = scipy_log_prob(logits, loc, scale, y)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_log_prob_far_tail_matches_scipy_in_log_space():
    logits, loc, scale = random_params((5,), 4, 3)
    y = torch.full((5, 4), 60.0, dtype=torch.float64)
    got = PerDimensionMixture(logits, loc, scale).log_prob(y)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), scipy_log_prob_tail(logits, loc, scale, y), rtol=1e-12)


def test_log_prob_with_graph_matches_without_and_has_gradients():
    logits, loc, scale = random_params((4,), 3, 2)
    y = torch.randn(4, 3, dtype=torch.float64)
    plain = PerDimensionMixture(logits, loc, scale).log_prob(y)
    params = [t.clone().requires_grad_() for t in (logits, loc, scale)]
    graph = PerDimensionMixture(*params).log_prob(y)
    torch.testing.assert_close(graph.detach(), plain, rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(
        lambda a, b, c: PerDimensionMixture(a, b, c).log_prob(y), params
    )


def test_log_prob_matches_torch_mixture_same_family_float32():
    logits, loc, scale = random_params((2000,), 32, 5, dtype=torch.float32)
    y = torch.randn(2000, 32) * 2.0
    ref = Independent(MixtureSameFamily(Categorical(logits=logits), Normal(loc, scale)), 1)
    got = PerDimensionMixture(logits, loc, scale).log_prob(y)
    torch.testing.assert_close(got, ref.log_prob(y), rtol=1e-5, atol=1e-5)


def test_log_prob_with_zero_weight_components_and_extreme_values():
    logits, loc, scale = random_params((3,), 2, 3)
    logits[..., 1] = -math.inf
    m = PerDimensionMixture(logits, loc, scale)
    y = torch.tensor([[0.0, 1.0], [1e3, -1e3], [2.0, 2.0]], dtype=torch.float64)
    got = m.log_prob(y)
    ref = scipy_log_prob_tail(logits, loc, scale, y)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)


def test_component_log_prob_and_posterior():
    logits, loc, scale = random_params((2,), 3, 4)
    y = torch.randn(2, 3, dtype=torch.float64)
    m = PerDimensionMixture(logits, loc, scale)
    ref = stats.norm.logpdf(y.numpy()[..., None], loc.numpy(), scale.numpy())
    np.testing.assert_allclose(m.component_log_prob(y).numpy(), ref, rtol=1e-12)
    joint = np_weights(logits) * np.exp(ref)
    np.testing.assert_allclose(
        m.posterior(y).numpy(), joint / joint.sum(-1, keepdims=True), rtol=1e-10
    )


def test_log_prob_equals_the_joint_gaussian_mixture():
    logits, loc, scale = random_params((2, 3), 3, 2)
    m = PerDimensionMixture(logits, loc, scale)
    g = m.to_gaussian_mixture()
    assert isinstance(g, GaussianMixture)
    assert g.num_components == 8 and g.batch_shape == (2, 3) and g.event_shape == (3,)
    y = torch.randn(5, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(g.log_prob(y), m.log_prob(y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.mean, m.mean)
    torch.testing.assert_close(g.variance, m.variance)


def test_to_gaussian_mixture_refuses_a_huge_joint():
    m = PerDimensionMixture(*random_params((), 32, 5))
    with pytest.raises(ValueError, match=r"5\*\*32 = .* more than max_components=4096"):
        m.to_gaussian_mixture()
    with pytest.raises(ValueError, match="max_components"):
        PerDimensionMixture(*random_params((), 2, 2)).to_gaussian_mixture(max_components=0)
    assert PerDimensionMixture(*random_params((), 2, 2)).to_gaussian_mixture(4).num_components == 4


@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), max_size=2),
    d=st.integers(1, 4),
    k=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_log_prob_property_against_scipy(batch, d, k, seed):
    logits, loc, scale = random_params(tuple(batch), d, k, seed=seed)
    y = torch.randn(*batch, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = PerDimensionMixture(logits, loc, scale).log_prob(y)
    assert got.shape == tuple(batch)
    ref = scipy_log_prob_tail(logits, loc, scale, y)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- cdf and quantiles
def test_cdf_matches_scipy_per_dimension():
    logits, loc, scale = random_params((4,), 3, 3)
    y = torch.randn(7, 4, 3, dtype=torch.float64) * 3
    got = PerDimensionMixture(logits, loc, scale).cdf(y)
    assert got.shape == (7, 4, 3)
    w = np_weights(logits)
    ref = (w * stats.norm.cdf(y.numpy()[..., None], loc.numpy(), scale.numpy())).sum(-1)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-14)


def test_icdf_matches_brentq_on_the_scipy_cdf():
    logits, loc, scale = random_params((2,), 3, 3, seed=3)
    m = PerDimensionMixture(logits, loc, scale)
    q = torch.tensor([[0.01, 0.5, 0.9], [0.3, 0.999, 0.2]], dtype=torch.float64)
    got = m.icdf(q)
    assert got.shape == (2, 3)
    w = np_weights(logits)
    for b in range(2):
        for d in range(3):
            f = np_cdf_1d(w[b, d], loc[b, d].numpy(), scale[b, d].numpy())
            root = optimize.brentq(lambda x, b=b, d=d, f=f: f(x) - q[b, d].item(), -50, 50)
            assert got[b, d].item() == pytest.approx(root, abs=1e-7)
    edge = m.icdf(torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))
    assert edge[:, 0].eq(-math.inf).all() and edge[:, 1].eq(math.inf).all()
    quant = m.quantile([0.1, 0.5])
    assert quant.shape == (2, 2, 3)
    torch.testing.assert_close(
        m.cdf(quant),
        torch.tensor([0.1, 0.5]).double()[:, None, None].expand(2, 2, 3),
        rtol=1e-8,
        atol=1e-8,
    )


# ----------------------------------------------------------------------------- moments and mode
def test_mean_and_variance_closed_forms_in_numpy():
    logits, loc, scale = random_params((3, 2), 4, 5)
    m = PerDimensionMixture(logits, loc, scale)
    w, mu, sd = np_weights(logits), loc.numpy(), scale.numpy()
    mean = (w * mu).sum(-1)
    var = (w * (sd**2 + mu**2)).sum(-1) - mean**2
    np.testing.assert_allclose(m.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(m.variance.numpy(), var, rtol=1e-12)
    np.testing.assert_allclose(m.stddev.numpy(), np.sqrt(var), rtol=1e-12)


def test_mean_and_variance_against_monte_carlo():
    logits, loc, scale = random_params((2,), 3, 4, seed=5)
    m = PerDimensionMixture(logits, loc, scale)
    n = 200_000
    x = m.sample((n,), generator=1)
    var = m.variance
    # 5 standard errors: of the mean sqrt(var / n); of the variance sqrt((m4 - var^2) / n),
    # bounded here with the sample's own fourth central moment
    assert ((x.mean(0) - m.mean).abs() <= 5 * (var / n).sqrt()).all()
    m4 = ((x - x.mean(0)) ** 4).mean(0)
    assert ((x.var(0) - var).abs() <= 5 * ((m4 - var**2) / n).sqrt()).all()


def test_mode_is_the_per_dimension_maximum_of_the_density():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    loc = torch.tensor([[-3.0, 3.0], [0.0, 5.0]], dtype=torch.float64)
    scale = torch.tensor([[1.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
    m = PerDimensionMixture(logits, loc, scale)
    mode = m.mode
    assert mode.shape == (2,)
    grid = torch.linspace(-8, 8, 160_001, dtype=torch.float64)
    for d in range(2):
        values = grid[:, None].expand(-1, 2).clone()
        dens = m.marginal(d).log_prob(values[:, d : d + 1])
        assert mode[d].item() == pytest.approx(grid[dens.argmax()].item(), abs=2e-4)


# ----------------------------------------------------------------------------- sampling
def test_samples_follow_the_exact_cdf_kstest():
    logits, loc, scale = random_params((), 4, 3, seed=2)
    m = PerDimensionMixture(logits, loc, scale)
    x = m.sample((20_000,), generator=123).numpy()
    w = np_weights(logits)
    for d in range(4):
        cdf = np_cdf_1d(w[d], loc[d].numpy(), scale[d].numpy())
        assert stats.kstest(x[:, d], cdf).pvalue > 1e-3


@pytest.mark.parametrize("temperature, sigma_temperature", [(0.5, 2.0), (3.0, 0.25)])
def test_tempered_samples_follow_the_tempered_cdf(temperature, sigma_temperature):
    logits, loc, scale = random_params((), 3, 3, seed=4)
    m = PerDimensionMixture(logits, loc, scale)
    x = m.sample((20_000,), temperature, sigma_temperature, generator=7).numpy()
    w = np_weights(logits, temperature)
    sd = scale.numpy() * math.sqrt(sigma_temperature)
    tempered = m.with_temperature(temperature, sigma_temperature)
    for d in range(3):
        cdf = np_cdf_1d(w[d], loc[d].numpy(), sd[d])
        assert stats.kstest(x[:, d], cdf).pvalue > 1e-3
        grid = np.linspace(-6, 6, 13)
        col = torch.tensor(grid)[:, None].expand(-1, 3).contiguous()
        np.testing.assert_allclose(
            tempered.cdf(col)[:, d].numpy(), cdf(grid), rtol=1e-10, atol=1e-14
        )


def test_temperature_zero_picks_the_argmax_component():
    logits, loc, scale = random_params((5,), 3, 4)
    m = PerDimensionMixture(logits, loc, scale)
    best = np.take_along_axis(loc.numpy(), np_weights(logits).argmax(-1)[..., None], -1)[..., 0]
    x = m.sample((4,), temperature=0, sigma_temperature=0, generator=0)
    assert x.shape == (4, 5, 3)
    assert np.array_equal(x.numpy(), np.broadcast_to(best, (4, 5, 3)))
    # with noise: residuals standardised by the argmax component's scale are N(0, 1)
    sd = np.take_along_axis(scale.numpy(), np_weights(logits).argmax(-1)[..., None], -1)[..., 0]
    z = (m.sample((4000,), temperature=0, generator=1).numpy() - best) / sd
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-3


def test_sigma_temperature_zero_gives_exact_component_means():
    logits, loc, scale = random_params((6,), 2, 3)
    x = PerDimensionMixture(logits, loc, scale).sample((50,), sigma_temperature=0.0, generator=3)
    is_a_mean = (x.unsqueeze(-1) == loc).any(-1)
    assert is_a_mean.all()


def test_tensor_temperatures_per_batch_row():
    logits, loc, scale = random_params((3,), 2, 3)
    m = PerDimensionMixture(logits, loc, scale)
    t = torch.tensor([0.0, 1.0, math.inf])
    s = torch.tensor([0.0, 1.0, 0.0])
    x = m.sample((3000,), temperature=t, sigma_temperature=s, generator=0)
    assert not torch.isnan(x).any()
    best = loc[0].gather(-1, logits[0].argmax(-1, keepdim=True)).squeeze(-1)
    assert (x[:, 0] == best).all()
    # temperature inf: uniform over the components (counts within 5 standard errors)
    counts = (x[:, 2].unsqueeze(-1) == loc[2]).sum(0).double()
    assert (counts.sum(-1) == 3000).all()
    assert ((counts - 1000).abs() <= 5 * math.sqrt(3000 * (1 / 3) * (2 / 3))).all()
    tempered = m.with_temperature(torch.tensor([0.0, 1.0, math.inf]), 1.0)
    np.testing.assert_allclose(tempered.weights[2].numpy(), np.full((2, 3), 1 / 3))
    np.testing.assert_allclose(tempered.weights[0].numpy().max(-1), [1.0, 1.0])


def test_infinite_temperature_skips_zero_weight_components_and_never_nan():
    logits, loc, scale = random_params((), 3, 4)
    logits[:, 2] = -math.inf
    m = PerDimensionMixture(logits, loc, scale)
    for t in (0.0, 1e-30, 1.0, 1e30, math.inf):
        x = m.sample((2000,), temperature=t, sigma_temperature=0, generator=0)
        assert not torch.isnan(x).any()
        assert not (x == loc[:, 2]).any()
        assert not torch.isnan(m.with_temperature(t).log_prob(x)).any()


def test_seeds_reproduce_and_differ():
    m = PerDimensionMixture(*random_params((4,), 3, 2))
    a = m.sample((10,), generator=42)
    b = m.sample((10,), generator=42)
    c = m.sample((10,), generator=43)
    g = torch.Generator().manual_seed(42)
    assert torch.equal(a, b) and torch.equal(a, m.sample((10,), generator=g))
    assert not torch.equal(a, c)
    with pytest.raises(TypeError, match="generator"):
        m.sample(generator="42")


def test_with_temperature_sample_matches_sample_with_temperature():
    m = PerDimensionMixture(*random_params((5,), 3, 3))
    a = m.sample((7,), temperature=0.6, sigma_temperature=1.7, generator=9)
    b = m.with_temperature(0.6, 1.7).sample((7,), generator=9)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- shapes and views
def test_batch_shapes_broadcast():
    logits, loc, scale = random_params((5,), 3, 2)
    m = PerDimensionMixture(logits[:1], loc, scale[0])
    assert m.batch_shape == (5,) and m.event_shape == (3,)
    assert m.log_prob(torch.zeros(7, 1, 3, dtype=torch.float64)).shape == (7, 5)
    assert m.log_prob(torch.zeros(3, dtype=torch.float64)).shape == (5,)
    assert m.sample((2, 4)).shape == (2, 4, 5, 3)
    assert m.mean.shape == m.variance.shape == m.cdf(torch.zeros(3)).shape == (5, 3)
    ref = PerDimensionMixture(logits[:1].expand(5, 3, 2), loc, scale[0].expand(5, 3, 2))
    y = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(m.log_prob(y), ref.log_prob(y))


def test_expand_getitem_and_marginal():
    logits, loc, scale = random_params((4, 3), 5, 2)
    m = PerDimensionMixture(logits, loc, scale)
    y = torch.randn(4, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(m[1].log_prob(y[1]), m.log_prob(y)[1])
    torch.testing.assert_close(m[:, 2].mean, m.mean[:, 2])
    e = m[0, 0].expand((6,))
    assert e.batch_shape == (6,) and torch.equal(e.mean, m.mean[0, 0].expand(6, 5))
    mar = m.marginal([4, 0])
    assert mar.event_shape == (2,)
    ref = scipy_log_prob(
        logits[..., [4, 0], :], loc[..., [4, 0], :], scale[..., [4, 0], :], y[..., [4, 0]]
    )
    np.testing.assert_allclose(mar.log_prob(y[..., [4, 0]]).numpy(), ref, rtol=1e-12)
    # independence: the log-density is the sum of the marginals'
    parts = m.marginal([0, 1]).log_prob(y[..., :2]) + m.marginal([2, 3, 4]).log_prob(y[..., 2:])
    torch.testing.assert_close(parts, m.log_prob(y))
    for bad in ([], [5], [0, -5], [1, 1]):
        with pytest.raises(ValueError, match="dims must be distinct indices"):
            m.marginal(bad)
    with pytest.raises(IndexError, match="Ellipsis"):
        m[..., 0]


def test_univariate_view():
    logits, loc, scale = random_params((2,), 3, 4)
    u = PerDimensionMixture(logits, loc, scale).univariate()
    assert u.batch_shape == (2, 3) and u.event_shape == (1,) and u.num_components == 4
    y = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(
        u.log_prob(y.unsqueeze(-1)).sum(-1), PerDimensionMixture(logits, loc, scale).log_prob(y)
    )


def test_half_precision_parameters_are_computed_in_float32():
    logits, loc, scale = random_params((3,), 2, 2, dtype=torch.float16)
    m = PerDimensionMixture(logits, loc, scale)
    assert m.loc.dtype == torch.float32
    y = torch.zeros(3, 2, dtype=torch.float16)
    assert m.log_prob(y).dtype == torch.float32 and m.sample(generator=0).dtype == torch.float32


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "shapes, message",
    [
        (((3, 2), (3, 2), (3,)), r"scale must have shape \(\.\.\., D, K\), found shape \(3,\)"),
        (((3, 4), (3, 2), (3, 2)), r"expected logits of shape \(\.\.\., 3, 2\).*found \(3, 4\)"),
        (((3, 2), (3, 2), (2, 2)), r"expected scale of shape \(\.\.\., 3, 2\).*found \(2, 2\)"),
        (((2, 3, 2), (4, 3, 2), (3, 2)), r"do not broadcast: logits \(2,\), loc \(4,\)"),
        (((0, 2), (0, 2), (0, 2)), r"need D >= 1 dimensions and K >= 1 components"),
    ],
)
def test_shape_errors_name_expected_and_found(shapes, message):
    tensors = [torch.ones(s) for s in shapes]
    with pytest.raises(ValueError, match=message):
        PerDimensionMixture(*tensors)


def test_value_and_argument_errors():
    m = PerDimensionMixture(*random_params((2,), 3, 2))
    with pytest.raises(ValueError, match=r"event shape \(\.\.\., 3\).*found shape \(2, 4\)"):
        m.log_prob(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"found shape \(2, 4\)"):
        m.cdf(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="loc must be a torch.Tensor, found list"):
        PerDimensionMixture(torch.zeros(3, 2), [[0.0, 0.0]] * 3, torch.ones(3, 2))
    with pytest.raises(ValueError, match="temperature must be a number >= 0, found -1"):
        m.sample(temperature=-1)
    with pytest.raises(ValueError, match="sigma_temperature must be a finite number >= 0"):
        m.sample(sigma_temperature=math.inf)
    with pytest.raises(ValueError, match=r"broadcastable to batch_shape \(2,\).*shape \(3,\)"):
        m.sample(temperature=torch.ones(3))
    with pytest.raises(ValueError, match="temperature must hold numbers >= 0"):
        m.sample(temperature=torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="sigma_temperature must be > 0"):
        m.with_temperature(1.0, 0.0)
    with pytest.raises(ValueError, match="probabilities in"):
        m.icdf(torch.tensor(1.5))


def test_validate_args_checks_values():
    logits, loc, scale = random_params((), 2, 2)
    bad = scale.clone()
    bad[0, 1] = -0.5
    with pytest.raises(ValueError, match=r"scale must be positive and finite.*-0\.5"):
        PerDimensionMixture(logits, loc, bad, validate_args=True)
    with pytest.raises(ValueError, match="loc contains NaN"):
        PerDimensionMixture(logits, loc * math.nan, scale, validate_args=True)
    with pytest.raises(ValueError, match=r"logits contain NaN or \+inf"):
        PerDimensionMixture(logits + math.inf, loc, scale, validate_args=True)
    PerDimensionMixture(logits, loc, bad, validate_args=False)  # no value checks asked for


# ----------------------------------------------------------------------------- package
def test_exported_and_docstring_examples_run():
    assert mdnkit.PerDimensionMixture is PerDimensionMixture
    assert "PerDimensionMixture" in mdnkit.__all__
    result = doctest.testmod(
        per_dimension, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0 and result.failed == 0
