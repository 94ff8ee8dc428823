"""Tests of mdnkit.estimator.MDNRegressor: scikit-learn's estimator checks, pipelines, grid
search, pickling, the predictive distribution against closed forms and SciPy, the ensemble,
``num_components="auto"``, the training budget and discrete targets."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from mdnkit import MDN, io
from mdnkit.ensemble import MDNEnsemble
from mdnkit.estimator import (
    AUTO_COMPONENTS,
    DiscreteTargetWarning,
    MDNRegressor,
    TrainingBudget,
    target_resolution,
    training_budget,
)


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


@pytest.mark.filterwarnings("ignore::mdnkit.estimator.DiscreteTargetWarning")
@parametrize_with_checks(
    [
        MDNRegressor(
            hidden=(4,), num_components=2, n_estimators=2, epochs=3, patience=None, random_state=0
        )
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_learned_attributes_and_history(fitted):
    reg, X, _ = fitted
    assert reg.n_features_in_ == 2 and reg.n_outputs_ == 1
    assert len(reg.history_.train_nll) >= 1
    assert reg.model_.config()["num_components"] == 2 and reg.num_components_ == 2
    assert isinstance(reg.model_, MDNEnsemble) and reg.model_.n_members == 5
    assert reg.target_resolution_ is None  # a continuous target
    assert set(reg.components_scores_) == {2}


def test_default_prediction_is_the_equal_weight_mixture_of_the_members(fitted):
    reg, _, _ = fitted
    Xq, yq = _linear(30, 7)
    mix = reg.predict_distribution(Xq)
    assert mix.num_components == 5 * 2
    # SciPy: the mean of the five members' own mixture densities (each member an MDN alone)
    dens = np.zeros(30)
    for m in range(5):
        with torch.no_grad():
            mm = reg.model_.member(m)(torch.as_tensor(Xq, dtype=torch.float32))
        w, mu, sd = (t.double().numpy() for t in (mm.weights, mm.loc[..., 0], mm.scale[..., 0]))
        dens += (w * stats.norm.pdf(yq[:, None], mu, sd)).sum(1) / 5
    assert reg.score(Xq, yq) == pytest.approx(np.log(dens).mean(), rel=1e-5)


def test_one_estimator_is_a_single_mdn():
    X, y = _linear(300, 3)
    reg = MDNRegressor(hidden=(8,), num_components=2, n_estimators=1, epochs=5, random_state=0)
    reg.fit(X, y)
    assert type(reg.model_) is MDN and reg.predict_distribution(X[:4]).num_components == 2


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


def test_training_budget_sizes_batches_epochs_and_patience_from_the_rows():
    # about 32 batches an epoch (32 to 128 rows); 5 000 steps or 10^6 rows; patience 1 000
    # steps or 200 000 rows, at least 20 epochs
    assert training_budget(250) == TrainingBudget(epochs=625, batch_size=32, patience=125)
    assert training_budget(2000) == TrainingBudget(epochs=152, batch_size=62, patience=31)
    assert training_budget(100_000) == TrainingBudget(epochs=7, batch_size=128, patience=20)
    assert training_budget(8000) == TrainingBudget(epochs=80, batch_size=128, patience=20)
    assert training_budget(250, epochs=7, batch_size=10, patience=None) == (7, 10, None)
    assert training_budget(250, batch_size=50) == (1000, 50, 200)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        training_budget(250, epochs=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        training_budget(250, batch_size="big")


def test_target_resolution_finds_grids_with_few_values():
    rng = np.random.default_rng(0)
    assert target_resolution(rng.integers(0, 10, 400)) == 1.0
    assert target_resolution(np.round(rng.normal(size=400) * 2) / 2) == 0.5  # halves
    assert target_resolution(rng.integers(0, 5, 400) * 0.1 + 3) == pytest.approx(0.1)
    assert target_resolution(rng.normal(size=400)) is None  # continuous
    # a grid with about as many values as rows (measurements rounded to 0.01): continuous
    assert target_resolution(np.round(rng.uniform(420, 495, 800), 2)) is None
    assert target_resolution(np.full(50, 3.0)) is None  # one value: nothing to resolve
    assert target_resolution(np.r_[rng.integers(0, 4, 200), 0.37]) is None  # off the grid


def _counts(n: int, seed: int, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An integer target: round(mu(x) + N(0, noise^2)), mu(x) = 3 + 1.5 x0 + 0.8 sin(2 x1)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, 2))
    mu = 3 + 1.5 * X[:, 0] + 0.8 * np.sin(2 * X[:, 1])
    return X, np.round(mu + noise * rng.normal(size=n)), mu


def _binned_nll(reg: MDNRegressor, X: np.ndarray, y: np.ndarray, h: float = 1.0) -> float:
    """-mean log P(y - h/2 < Y < y + h/2) under the predictive mixture, by SciPy's normal CDF."""
    m = reg.predict_distribution(X)
    w, mu, sd = (t.double().numpy() for t in (m.weights, m.loc[..., 0], m.scale[..., 0]))
    hi = stats.norm.cdf((y[:, None] + h / 2 - mu) / sd)
    lo = stats.norm.cdf((y[:, None] - h / 2 - mu) / sd)
    return float(-np.log((w * (hi - lo)).sum(1)).mean())


def test_discrete_target_warns_once_and_its_nll_stays_near_the_binned_nll():
    X, y, _ = _counts(1500, 0)
    Xt, yt, mut = _counts(20000, 1)
    kw = {"hidden": (32,), "n_estimators": 1, "epochs": 150, "random_state": 0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = MDNRegressor(**kw).fit(X, y)
    found = [w for w in caught if issubclass(w.category, DiscreteTargetWarning)]
    assert len(found) == 1 and "resolution 1" in str(found[0].message)
    assert reg.target_resolution_ == [1.0]
    # the floor is half the resolution, in the target's units
    floor = reg.model_.head.min_scale * float(reg.model_.y_std)
    assert floor == pytest.approx(0.5, rel=1e-5)
    nll, binned = -reg.score(Xt, yt), _binned_nll(reg, Xt, yt)
    # the true probability-mass entropy, exactly: no model's binned NLL is below it
    p = stats.norm.cdf((yt + 0.5 - mut) / 0.3) - stats.norm.cdf((yt - 0.5 - mut) / 0.3)
    entropy = float(-np.log(p).mean())
    assert binned > entropy - 0.02  # 20 000 points: Monte Carlo error about 0.005
    assert abs(nll - binned) < 0.1  # the stated margin (docs: RESOLUTION_FLOOR)
    # without the floor the same fit puts spikes on the integers: a "density NLL" far below
    # anything a probability mass allows, while the binned NLL gets worse
    spiky = MDNRegressor(target_resolution=None, **kw).fit(X, y)
    assert -spiky.score(Xt, yt) < entropy - 0.3


def test_num_components_auto_keeps_the_best_validation_nll():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 2, size=800)
    y = np.where(rng.random(800) < 0.5, x, -x) + 0.05 * rng.normal(size=800)
    reg = MDNRegressor(
        hidden=(16,), num_components="auto", n_estimators=2, epochs=25, random_state=0
    ).fit(x[:, None], y)
    scores = reg.components_scores_
    assert set(scores) == set(AUTO_COMPONENTS)
    assert reg.num_components_ == min(scores, key=scores.get) >= 2
    assert scores[reg.num_components_] < scores[1] - 0.5  # two branches: one Gaussian loses
    assert reg.model_.num_components == reg.num_components_
    with pytest.raises(ValueError, match="validation_split > 0"):
        MDNRegressor(num_components="auto", validation_split=0.0).fit(x[:, None], y)
