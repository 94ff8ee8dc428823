"""Tests of mdnkit.estimator.MDNRegressor: scikit-learn's estimator checks, pipelines, grid
search, pickling, and the predictive distribution against closed forms and SciPy."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from scipy import optimize, stats
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from mdnkit import io
from mdnkit.estimator import MDNRegressor


def _linear(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y = 2 x0 - x1 + 3 + N(0, 0.5^2): a Gaussian whose entropy is 0.5 log(2 pi e 0.25)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = 2 * X[:, 0] - X[:, 1] + 3 + 0.5 * rng.normal(size=n)
    return X, y


@pytest.fixture(scope="module")
def fitted() -> tuple[MDNRegressor, np.ndarray, np.ndarray]:
    X, y = _linear(1500, 0)
    reg = MDNRegressor(hidden=(16,), num_components=2, epochs=40, lr=1e-2, random_state=0)
    return reg.fit(X, y), X, y


@parametrize_with_checks(
    [MDNRegressor(hidden=(4,), num_components=2, epochs=3, patience=None, random_state=0)]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_learned_attributes_and_history(fitted):
    reg, X, _ = fitted
    assert reg.n_features_in_ == 2 and reg.n_outputs_ == 1
    assert len(reg.history_.train_nll) >= 1
    assert reg.model_.config()["num_components"] == 2


def test_score_is_the_mean_log_likelihood_near_the_true_entropy(fitted):
    reg, _, _ = fitted
    Xt, yt = _linear(4000, 1)
    best = -0.5 * math.log(2 * math.pi * math.e * 0.25)  # -0.726 nats
    score = reg.score(Xt, yt)
    assert best - 0.1 < score < best + 0.05
    mix = reg.predict_distribution(Xt)
    assert score == pytest.approx(float(mix.log_prob(mix.loc.new_tensor(yt[:, None])).mean()))


def test_point_predictions_and_interval_coverage(fitted):
    reg, _, _ = fitted
    Xt, yt = _linear(4000, 2)
    truth = 2 * Xt[:, 0] - Xt[:, 1] + 3
    for kind in ("mean", "median", "mode"):
        pred = reg.predict(Xt, kind=kind)
        assert pred.shape == (4000,)
        assert np.sqrt(np.mean((pred - truth) ** 2)) < 0.15
    lo, hi = reg.predict_interval(Xt, coverage=0.9)
    covered = np.mean((yt >= lo) & (yt <= hi))
    # Monte Carlo: the standard error of a 0.9 coverage on 4000 points is 0.005
    assert 0.87 < covered < 0.93
    np.testing.assert_allclose(np.median(hi - lo), 2 * 1.6449 * 0.5, rtol=0.1)


def test_median_and_quantiles_match_a_scipy_root_of_the_mixture_cdf(fitted):
    reg, _, _ = fitted
    Xq = np.array([[0.3, -1.0], [1.5, 2.0]])
    mix = reg.predict_distribution(Xq)
    w = mix.weights.double().numpy()
    mu = mix.loc[..., 0].double().numpy()
    sd = mix.scale[..., 0].double().numpy()
    qs = reg.predict_quantiles(Xq, [0.1, 0.5, 0.95])
    assert qs.shape == (2, 3)
    for i in range(2):
        for j, q in enumerate([0.1, 0.5, 0.95]):
            ref = optimize.brentq(
                lambda t, i=i, q=q: (w[i] * stats.norm.cdf(t, mu[i], sd[i])).sum() - q, -100, 100
            )
            assert qs[i, j] == pytest.approx(ref, abs=1e-4)
    np.testing.assert_allclose(reg.predict(Xq, kind="median"), qs[:, 1], atol=1e-5)


def test_sampling_is_seeded_and_matches_the_predictive_moments(fitted):
    reg, _, _ = fitted
    Xq = np.array([[0.0, 0.0], [1.0, -1.0]])
    s1 = reg.sample(Xq, n_samples=4000, random_state=3)
    s2 = reg.sample(Xq, n_samples=4000, random_state=3)
    assert s1.shape == (2, 4000) and np.array_equal(s1, s2)
    mix = reg.predict_distribution(Xq)
    mean = mix.mean[:, 0].double().numpy()
    sd = mix.variance[:, 0].sqrt().double().numpy()
    # Monte Carlo mean: 5 standard errors
    assert np.all(np.abs(s1.mean(1) - mean) < 5 * sd / np.sqrt(4000))
    greedy = reg.sample(Xq, n_samples=3, temperature=0.0, sigma_temperature=0.0)
    top = mix.loc[np.arange(2), mix.weights.argmax(-1), 0].double().numpy()
    np.testing.assert_allclose(greedy, np.repeat(top[:, None], 3, 1), rtol=1e-6)


def test_multi_output_shapes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    Y = np.stack([X[:, 0], X[:, 1] * 2], axis=1) + 0.1 * rng.normal(size=(200, 2))
    reg = MDNRegressor(hidden=(8,), num_components=2, epochs=3, random_state=0).fit(X, Y)
    assert reg.n_outputs_ == 2
    assert reg.predict(X[:5]).shape == (5, 2)
    assert reg.predict(X[:5], kind="median").shape == (5, 2)
    assert reg.predict_quantiles(X[:5], [0.1, 0.9]).shape == (5, 2, 2)
    lo, hi = reg.predict_interval(X[:5])
    assert lo.shape == hi.shape == (5, 2) and np.all(lo < hi)
    assert reg.sample(X[:5], n_samples=7, random_state=0).shape == (5, 7, 2)
    assert np.isfinite(reg.score(X, Y))


def test_pipeline_and_grid_search_prefer_two_components_for_two_branches():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 2, size=600)
    y = np.where(rng.random(600) < 0.5, x, -x) + 0.05 * rng.normal(size=600)
    pipe = make_pipeline(
        StandardScaler(), MDNRegressor(hidden=(16,), epochs=15, lr=1e-2, random_state=0)
    )
    search = GridSearchCV(pipe, {"mdnregressor__num_components": [1, 2]}, cv=2)
    search.fit(x[:, None], y)
    assert search.best_params_ == {"mdnregressor__num_components": 2}
    scores = search.cv_results_["mean_test_score"]
    assert scores[1] > scores[0] + 0.5  # a bimodal fit beats a single Gaussian by far


def test_clone_and_pickle(fitted):
    reg, X, _ = fitted
    c = clone(reg)
    assert c.get_params() == reg.get_params() and not hasattr(c, "model_")
    again = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(again.predict(X[:20]), reg.predict(X[:20]))


def test_model_file_round_trip(fitted, tmp_path):
    reg, X, y = fitted
    path = io.save(reg, tmp_path / "reg.mdn", metadata={"target": "y"})
    loaded = io.load(path)
    assert isinstance(loaded, MDNRegressor) and loaded.get_params() == reg.get_params()
    np.testing.assert_array_equal(loaded.predict(X[:20]), reg.predict(X[:20]))
    assert loaded.score(X, y) == reg.score(X, y)
    assert loaded.history_.best_epoch == reg.history_.best_epoch
    assert io.load_metadata(path) == {"target": "y"}


def test_same_random_state_same_model():
    X, y = _linear(200, 0)
    a = MDNRegressor(hidden=(8,), epochs=3, random_state=5).fit(X, y).predict(X)
    b = MDNRegressor(hidden=(8,), epochs=3, random_state=5).fit(X, y).predict(X)
    np.testing.assert_array_equal(a, b)


def test_errors():
    with pytest.raises(NotFittedError):
        MDNRegressor().predict(np.zeros((2, 2)))
    with pytest.raises(NotFittedError):
        io.save(MDNRegressor(), "never.mdn")
    X, y = _linear(50, 0)
    reg = MDNRegressor(hidden=(4,), epochs=1, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="kind"):
        reg.predict(X, kind="average")
    with pytest.raises(ValueError, match="q must"):
        reg.predict_quantiles(X, [0.5, 1.5])
    with pytest.raises(ValueError, match="coverage"):
        reg.predict_interval(X, coverage=1.2)
    with pytest.raises(ValueError, match="n_samples"):
        reg.sample(X, n_samples=0)
    with pytest.raises(ValueError, match="features"):
        reg.predict(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="activation"):
        MDNRegressor(activation="nope", epochs=1).fit(X, y)
