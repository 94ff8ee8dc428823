"""Tests for mdnkit.metrics against independent references (SciPy, closed forms, Monte Carlo)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from conftest import random_mixture_params
from mdnkit import GaussianMixture
from mdnkit.metrics import (
    ScoreSums,
    calibration_error,
    crps,
    energy_score,
    interval_coverage,
    nll,
    pit,
    rmse,
)


def _mixture_1d(seed: int = 0, batch: int = 4, k: int = 3) -> GaussianMixture:
    params = random_mixture_params(
        (batch,), k, 1, "diagonal", seed=seed, logit_scale=1.0, loc_scale=3.0
    )
    return GaussianMixture(*params)


def _scipy_cdf(w, mu, sd):
    return lambda t: float(np.sum(w * stats.norm.cdf(t, mu, sd)))


def test_crps_matches_numerical_integration():
    m = _mixture_1d(0)
    y = torch.tensor([[-1.0], [0.5], [4.0], [-6.0]], dtype=torch.float64)
    got = crps(m, y, reduction="none")[:, 0].numpy()
    for i in range(4):
        w = m.weights[i].numpy()
        mu = m.loc[i, :, 0].numpy()
        sd = m.scale[i, :, 0].numpy()
        cdf = _scipy_cdf(w, mu, sd)
        yi = float(y[i, 0])
        lo, hi = min(mu - 12 * sd.max()), max(mu + 12 * sd.max())
        left = integrate.quad(lambda t, c=cdf: c(t) ** 2, min(lo, yi - 1), yi, limit=200)[0]
        right = integrate.quad(lambda t, c=cdf: (1 - c(t)) ** 2, yi, max(hi, yi + 1), limit=200)[0]
        assert got[i] == pytest.approx(left + right, rel=1e-6, abs=1e-8)


def test_crps_single_gaussian_closed_form():
    # Gneiting & Raftery (2007): CRPS(N(mu, s^2), y) = s [z(2Phi(z)-1) + 2phi(z) - 1/sqrt(pi)]
    mu, s = 1.5, 2.0
    y = np.array([-3.0, 0.0, 1.5, 7.0])
    z = (y - mu) / s
    ref = s * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    m = GaussianMixture(torch.zeros(1), torch.tensor([[mu]]), torch.tensor([[s]]))
    got = crps(m, torch.tensor(y).reshape(-1, 1), reduction="none")[:, 0].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert float(crps(m, torch.tensor(y).reshape(-1, 1))) == pytest.approx(ref.mean(), rel=1e-6)


def test_crps_per_dimension_uses_marginals():
    g = torch.Generator().manual_seed(3)
    m = GaussianMixture(
        torch.randn(2, generator=g),
        torch.randn(2, 2, generator=g),
        torch.rand(2, 2, generator=g) + 0.5,
    )
    y = torch.tensor([0.3, -0.7])
    both = crps(m, y, reduction="none")
    for d in range(2):
        assert float(both[d]) == pytest.approx(float(crps(m.marginal(d), y[d : d + 1])), rel=1e-6)


def test_crps_broadcasts_and_matches_numerical_integration_for_many_components():
    # K = 6 (15 pairs k < l, the diagonal in closed form), y (3, 1, 1) against a batch of (4,):
    # every one of the 3 x 4 scores against the integral of (F(t) - 1{t >= y})^2
    m = GaussianMixture(*random_mixture_params((4,), 6, 1, "diagonal", seed=7, loc_scale=3.0))
    y = torch.tensor([-2.5, 0.2, 3.0], dtype=torch.float64).reshape(3, 1, 1)
    got = crps(m, y, reduction="none")
    assert got.shape == (3, 4, 1)
    for i in range(3):
        for b in range(4):
            w, mu, sd = m.weights[b].numpy(), m.loc[b, :, 0].numpy(), m.scale[b, :, 0].numpy()
            cdf, yi = _scipy_cdf(w, mu, sd), float(y[i, 0, 0])
            lo, hi = min(mu - 12 * sd), max(mu + 12 * sd)
            left = integrate.quad(lambda t, c=cdf: c(t) ** 2, min(lo, yi - 1), yi, limit=200)[0]
            right = integrate.quad(
                lambda t, c=cdf: (1 - c(t)) ** 2, yi, max(hi, yi + 1), limit=200
            )[0]
            assert float(got[i, b, 0]) == pytest.approx(left + right, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("cov", ["diagonal", "full"])
def test_score_sums_in_parts_equal_the_functions_on_all_the_data(cov):
    n = 1000
    logits, loc, scale = random_mixture_params((n,), 4, 2, cov, seed=11, loc_scale=1.0)
    m = GaussianMixture(logits, loc, **{"scale_tril" if cov == "full" else "scale": scale})
    y = m.sample(generator=3) * 1.3  # a little under-dispersed model: PIT off uniform
    sums = ScoreSums(coverage=0.8, bins=7)
    for a, b in ((0, 137), (137, 138), (138, 600), (600, n)):  # uneven parts, one of one row
        sums.add(m[a:b], y[a:b])
    got = sums.result()
    u = pit(m, y)
    assert got["rows"] == n
    assert got["nll"] == pytest.approx(float(nll(m, y)), rel=1e-12)
    assert got["crps"] == pytest.approx(float(crps(m, y)), rel=1e-12)
    assert got["rmse"] == pytest.approx(float(rmse(m, y)), rel=1e-12)
    assert got["calibration_error"] == calibration_error(u, bins=7)  # from counts: exactly
    assert got["coverage"] == float(interval_coverage(m, y, 0.8))
    assert 0.6 < got["coverage"] < 0.8 and got["calibration_error"] > 0.01  # not trivial


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crps_and_score_sums_on_cuda_equal_cpu():
    m = GaussianMixture(*random_mixture_params((300,), 5, 2, "diagonal", seed=2))
    y = m.sample(generator=0)
    gpu = GaussianMixture(m.logits.cuda(), m.loc.cuda(), m.scale.cuda())
    got = crps(gpu, y.cuda(), reduction="none")
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), crps(m, y, reduction="none"), rtol=1e-12, atol=1e-12)
    on_cpu, on_gpu = ScoreSums(), ScoreSums()
    on_cpu.add(m, y)
    on_gpu.add(gpu, y.cuda())
    a, b = on_cpu.result(), on_gpu.result()
    assert a["rows"] == b["rows"] == 300
    for key in ("nll", "crps", "rmse"):  # float32 arithmetic may round differently on the GPU
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    for key in ("coverage", "calibration_error"):  # a PIT value at a level may move one count
        assert b[key] == pytest.approx(a[key], abs=1.5 / 600), key


def test_score_sums_checks_its_settings_and_is_nan_when_empty():
    with pytest.raises(ValueError, match="coverage"):
        ScoreSums(coverage=1.0)
    with pytest.raises(ValueError, match="bins"):
        ScoreSums(bins=1)
    empty = ScoreSums().result()
    assert empty["rows"] == 0 and math.isnan(empty["nll"]) and math.isnan(empty["coverage"])


def test_energy_score_equals_crps_in_1d():
    m = _mixture_1d(1, batch=6)
    y = torch.linspace(-4, 4, 6, dtype=torch.float64).reshape(6, 1)
    es = energy_score(m, y, n_samples=40_000, generator=0, reduction="none")
    ref = crps(m, y, reduction="none")[:, 0]
    # MC standard error of each estimate is well below 0.02 for these scales (n = 40 000)
    np.testing.assert_allclose(es.numpy(), ref.numpy(), atol=0.03)


def test_energy_score_in_chunks_of_rows_equals_crps_in_1d(monkeypatch):
    import mdnkit.metrics as metrics

    monkeypatch.setattr(metrics, "_ENERGY_CHUNK", 50_000)  # two rows a chunk here
    m = _mixture_1d(3, batch=6)
    y = torch.linspace(-3, 3, 6, dtype=torch.float64).reshape(6, 1)
    es = energy_score(m, y, n_samples=20_000, generator=1, reduction="none")
    assert es.shape == (6,)
    ref = crps(m, y, reduction="none")[:, 0]
    np.testing.assert_allclose(es.numpy(), ref.numpy(), atol=0.04)
    # a y that broadcasts over the batch, and batch dims beyond the first
    m2 = GaussianMixture(
        m.logits.reshape(2, 3, -1), m.loc.reshape(2, 3, -1, 1), m.scale.reshape(2, 3, -1, 1)
    )
    es2 = energy_score(m2, torch.zeros(1), n_samples=20_000, generator=1, reduction="none")
    ref2 = crps(m2, torch.zeros(1), reduction="none")[..., 0]
    assert es2.shape == (2, 3)
    np.testing.assert_allclose(es2.numpy(), ref2.numpy(), atol=0.04)


def test_energy_score_reproducible_and_multivariate_reference():
    # Two independent N(0, 1) dims at y = 0: E||X|| = sqrt(pi/2), E||X - X'|| = sqrt(pi)
    m = GaussianMixture(torch.zeros(1), torch.zeros(1, 2), torch.ones(1, 2))
    ref = math.sqrt(math.pi / 2) - 0.5 * math.sqrt(math.pi)
    a = energy_score(m, torch.zeros(2), n_samples=100_000, generator=5)
    b = energy_score(m, torch.zeros(2), n_samples=100_000, generator=5)
    assert float(a) == float(b)
    assert float(a) == pytest.approx(ref, abs=0.01)


def test_nll_matches_scipy():
    m = _mixture_1d(2)
    y = torch.tensor([[0.0], [1.0], [2.0], [-2.0]], dtype=torch.float64)
    ref = []
    for i in range(4):
        w, mu, sd = m.weights[i].numpy(), m.loc[i, :, 0].numpy(), m.scale[i, :, 0].numpy()
        ref.append(-np.log(np.sum(w * stats.norm.pdf(float(y[i, 0]), mu, sd))))
    np.testing.assert_allclose(nll(m, y, reduction="none").numpy(), ref, rtol=1e-9)
    assert float(nll(m, y)) == pytest.approx(np.mean(ref), rel=1e-9)


def test_rmse_of_mean():
    m = _mixture_1d(4)
    y = torch.zeros(4, 1, dtype=torch.float64)
    mean = (m.weights * m.loc[..., 0]).sum(-1).numpy()
    assert float(rmse(m, y)) == pytest.approx(math.sqrt(np.mean(mean**2)), rel=1e-9)


def test_pit_uniform_for_data_from_the_model():
    g = torch.Generator().manual_seed(0)
    n = 2000
    m = GaussianMixture(
        torch.randn(n, 4, generator=g),
        3 * torch.randn(n, 4, 2, generator=g),
        0.2 + torch.rand(n, 4, 2, generator=g),
    )
    y = m.sample(generator=1)
    u = pit(m, y)
    assert u.shape == (n, 2)
    for d in range(2):
        assert stats.kstest(u[:, d].numpy(), "uniform").pvalue > 0.01
    assert calibration_error(u) < 0.03
    cov = float(interval_coverage(m, y, 0.9))
    assert cov == pytest.approx(0.9, abs=3 * math.sqrt(0.09 / (2 * n)) + 0.002)


def test_pit_detects_overconfidence():
    # Model says N(0, 0.5^2), data come from N(0, 1): PIT piles up at 0 and 1.
    n = 4000
    y = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    m = GaussianMixture(torch.zeros(n, 1), torch.zeros(n, 1, 1), torch.full((n, 1, 1), 0.5))
    u = pit(m, y)
    assert stats.kstest(u[:, 0].numpy(), "uniform").pvalue < 1e-6
    assert calibration_error(u) > 0.05
    # P(|Z| <= 1.645 * 0.5) for Z ~ N(0, 1)
    expected = 2 * stats.norm.cdf(stats.norm.ppf(0.95) * 0.5) - 1
    assert float(interval_coverage(m, y, 0.9)) == pytest.approx(expected, abs=0.025)


def test_calibration_error_closed_forms():
    assert calibration_error(np.full(100, 0.5), bins=10) == pytest.approx(2.5 / 9)
    u = (np.arange(1000) + 0.5) / 1000
    assert calibration_error(u, bins=10) < 1e-3
    assert calibration_error(np.zeros(10), bins=4) == pytest.approx((0.75 + 0.5 + 0.25) / 3)


def test_coverage_matches_scipy_quantiles():
    m = _mixture_1d(5)
    ys, expected = [], [True, True, False, False]
    for i in range(4):
        w, mu, sd = m.weights[i].numpy(), m.loc[i, :, 0].numpy(), m.scale[i, :, 0].numpy()
        cdf = _scipy_cdf(w, mu, sd)
        lo_q = optimize.brentq(lambda t, c=cdf: c(t) - 0.1, -50, 50, xtol=1e-12)
        hi_q = optimize.brentq(lambda t, c=cdf: c(t) - 0.9, -50, 50, xtol=1e-12)
        ys.append([lo_q + 1e-4, hi_q - 1e-4, lo_q - 1e-3, hi_q + 1e-3][i])
    y = torch.tensor(ys, dtype=torch.float64).reshape(4, 1)
    inside = interval_coverage(m, y, 0.8, reduction="none")[:, 0]
    assert inside.tolist() == expected


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: crps(m, torch.zeros(4, 2)), r"\(4, 1\)"),
        (lambda m: nll(m, torch.zeros(3, 1)), "broadcast"),
        (lambda m: crps(m, torch.zeros(4, 1), reduction="sum"), "reduction"),
        (lambda m: energy_score(m, torch.zeros(4, 1), n_samples=1), "n_samples"),
        (lambda m: interval_coverage(m, torch.zeros(4, 1), 1.5), "coverage"),
        (lambda m: calibration_error(np.array([0.2, 1.3])), r"\[0, 1\]"),
        (lambda m: calibration_error(np.array([0.2]), bins=1), "bins"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(_mixture_1d(0))


def test_not_a_mixture_raises_type_error():
    with pytest.raises(TypeError, match="GaussianMixture"):
        crps("nope", torch.zeros(1))
