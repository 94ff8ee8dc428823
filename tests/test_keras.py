"""Tests for the Keras 3 front, ``mdnkit.keras``.

References are independent of the code under test: SciPy (``norm.logpdf``, ``logsumexp``,
``softmax``), closed-form mixture moments, NumPy re-implementations of the dense heads, and
Monte Carlo estimates with tolerances stated in standard errors. The non-default Keras backend
(JAX when this process runs torch) is exercised in a subprocess, since Keras fixes its backend
per process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import scipy.special as scipy_special  # noqa: E402
import scipy.stats as scipy_stats  # noqa: E402
import torch  # noqa: E402

from mdnkit import GaussianMixture  # noqa: E402
from mdnkit import keras as mdn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()


# --------------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------------


def ref_nll(y: np.ndarray, params: np.ndarray, d: int, k: int) -> np.ndarray:
    """Per-sample mixture NLL with SciPy, float64; ``params (..., P)``, ``y (..., D)``."""
    params = np.asarray(params, dtype=np.float64)
    lead = params.shape[:-1]
    mu = params[..., : k * d].reshape(lead + (k, d))
    sig = params[..., k * d : 2 * k * d].reshape(lead + (k, d))
    logits = params[..., 2 * k * d :]
    y = np.asarray(y, dtype=np.float64).reshape(lead + (1, d))
    log_w = logits - scipy_special.logsumexp(logits, axis=-1, keepdims=True)
    log_comp = scipy_stats.norm.logpdf(y, loc=mu, scale=sig).sum(axis=-1)
    return -scipy_special.logsumexp(log_w + log_comp, axis=-1)


def random_params(rng: np.random.Generator, lead: tuple[int, ...], d: int, k: int) -> np.ndarray:
    mu = 2.0 * rng.standard_normal(lead + (k * d,))
    sig = np.exp(0.5 * rng.standard_normal(lead + (k * d,)))
    logits = rng.standard_normal(lead + (k,))
    return np.concatenate([mu, sig, logits], axis=-1).astype(np.float32)


def mixture_moments(params: np.ndarray, d: int, k: int, temp: float = 1.0, sigma_temp: float = 1.0):
    """Closed-form mean and per-dimension variance of one tempered mixture row."""
    mu = params[: k * d].reshape(k, d).astype(np.float64)
    sig = params[k * d : 2 * k * d].reshape(k, d).astype(np.float64)
    w = scipy_special.softmax(params[2 * k * d :].astype(np.float64) / temp)
    mean = w @ mu
    var = w @ (sigma_temp * sig**2 + mu**2) - mean**2
    return mean, var


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def course_sequential(n_mixes: int = 5) -> keras.Sequential:
    """The course's 510-parameter model (Keras 3 spells ``batch_input_shape`` as ``Input``)."""
    model = keras.Sequential()
    model.add(keras.Input(shape=(1,)))
    model.add(keras.layers.Dense(15, activation="relu"))
    model.add(keras.layers.Dense(15, activation="relu"))
    model.add(mdn.MDN(1, n_mixes))
    model.compile(loss=mdn.get_mixture_loss_func(1, n_mixes), optimizer="rmsprop")
    return model


def inverted_sine(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(-10.5, 10.5, (n, 1))
    x = 7.0 * np.sin(0.75 * y) + 0.5 * y + rng.standard_normal((n, 1))
    return x.astype("float32"), y.astype("float32")


# --------------------------------------------------------------------------------------------
# the layer and the course snippets
# --------------------------------------------------------------------------------------------


def test_course_sequential_model_has_510_params_and_trains():
    keras.utils.set_random_seed(1)
    model = course_sequential()
    assert model.count_params() == 510
    x, y = inverted_sine(600)
    history = model.fit(x, y, batch_size=64, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    # model.evaluate is the mean per-sample NLL of its own predictions (SciPy reference)
    params = model.predict(x, verbose=0)
    assert params.shape == (600, 15)
    assert np.all(params[:, 5:10] > 0)
    expected = ref_nll(y, params, 1, 5).mean()
    assert model.evaluate(x, y, verbose=0) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_course_functional_api_snippet_runs_and_matches_layer_layout():
    n_hidden, n_mixes = 15, 5
    inputs = keras.layers.Input(shape=(1,), name="inputs")
    hidden1 = keras.layers.Dense(n_hidden, activation="relu", name="hidden1")(inputs)
    hidden2 = keras.layers.Dense(n_hidden, activation="relu", name="hidden2")(hidden1)
    mdn_mus = keras.layers.Dense(n_mixes, name="mdn_mus")(hidden2)
    mdn_sigmas = keras.layers.Dense(
        n_mixes, activation=mdn.elu_plus_one_plus_epsilon, name="mdn_sigmas"
    )(hidden2)
    mdn_pi = keras.layers.Dense(n_mixes, name="mdn_pi")(hidden2)
    mdn_out = keras.layers.Concatenate(name="mdn_outputs")([mdn_mus, mdn_sigmas, mdn_pi])
    model = keras.Model(inputs=inputs, outputs=mdn_out)
    model.compile(loss=mdn.get_mixture_loss_func(1, n_mixes), optimizer="rmsprop")
    assert model.count_params() == 510
    x, y = inverted_sine(256, seed=3)
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))

    # the same weights in a Sequential with mdn.MDN give the same outputs: same layout
    seq = course_sequential()
    seq.set_weights(model.get_weights())
    np.testing.assert_allclose(seq.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_mdn_layer_computes_the_classic_heads():
    d, k, f = 2, 3, 4
    layer = mdn.MDN(d, k)
    rng = np.random.default_rng(0)
    h = rng.standard_normal((7, f)).astype("float32")
    out = numpy(layer(h))
    w_mu, b_mu, w_s, b_s, w_pi, b_pi = (numpy(w) for w in layer.weights)
    assert [w.shape for w in (w_mu, w_s, w_pi)] == [(f, k * d), (f, k * d), (f, k)]
    pre_s = h @ w_s + b_s
    elu = np.where(pre_s > 0, pre_s, np.expm1(np.minimum(pre_s, 0)))
    expected = np.concatenate(
        [h @ w_mu + b_mu, elu + 1 + keras.backend.epsilon(), h @ w_pi + b_pi], -1
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert layer.count_params() == (f + 1) * (2 * k * d + k)


@pytest.mark.parametrize(
    "input_shape",
    [(None, 4), (8, 4), (None, 6, 4), (2, 5, 3, 4)],
)
def test_compute_output_shape_any_rank(input_shape):
    layer = mdn.MDN(2, 3)
    assert layer.compute_output_shape(input_shape) == input_shape[:-1] + (15,)
    concrete = tuple(2 if s is None else s for s in input_shape)
    out = layer(np.zeros(concrete, dtype="float32"))
    assert tuple(out.shape) == concrete[:-1] + (15,)


def test_time_distributed_and_direct_rank3_give_same_output():
    inputs = keras.Input((6, 4))
    td = keras.Model(inputs, keras.layers.TimeDistributed(mdn.MDN(1, 2))(inputs))
    assert td.output_shape == (None, 6, 6)
    direct = keras.Model(inputs, mdn.MDN(1, 2)(inputs))
    assert direct.output_shape == (None, 6, 6)
    direct.set_weights(td.get_weights())
    x = np.random.default_rng(0).standard_normal((3, 6, 4)).astype("float32")
    np.testing.assert_allclose(numpy(td(x)), numpy(direct(x)), atol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_mdn_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="positive integer"):
        mdn.MDN(bad, 3)
    with pytest.raises(ValueError, match="positive integer"):
        mdn.get_mixture_loss_func(1, bad)


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("d", "k", "lead"), [(1, 5, (64,)), (3, 4, (32,)), (2, 3, (4, 9))])
def test_loss_per_sample_matches_scipy(d, k, lead):
    rng = np.random.default_rng(d * 10 + k)
    params = random_params(rng, lead, d, k)
    y = (2.0 * rng.standard_normal(lead + (d,))).astype("float32")
    loss = mdn.get_mixture_loss_func(d, k)
    per_sample = numpy(loss.call(y, params))
    assert per_sample.shape == lead
    expected = ref_nll(y, params, d, k)
    np.testing.assert_allclose(per_sample, expected, rtol=1e-5, atol=1e-5)
    assert float(loss(y, params)) == pytest.approx(expected.mean(), rel=1e-5)


def test_loss_includes_normalising_constants():
    # one standard normal component, y = 0: NLL = 0.5 * log(2 pi) exactly; D = 3: three times
    loss1 = mdn.get_mixture_loss_func(1, 1)
    assert float(loss1(np.zeros((1, 1)), np.array([[0.0, 1.0, 0.0]]))) == pytest.approx(
        0.5 * np.log(2 * np.pi), rel=1e-6
    )
    loss3 = mdn.get_mixture_loss_func(3, 2)
    params = np.array([[0, 0, 0, 9, 9, 9, 1, 1, 1, 1, 1, 1, 0.0, -1e4]])
    assert float(loss3(np.zeros((1, 3)), params)) == pytest.approx(
        1.5 * np.log(2 * np.pi), rel=1e-6
    )


def test_loss_accepts_flat_targets_for_one_dimension():
    rng = np.random.default_rng(5)
    params = random_params(rng, (16,), 1, 3)
    y = rng.standard_normal(16).astype("float32")
    loss = mdn.get_mixture_loss_func(1, 3)
    np.testing.assert_allclose(numpy(loss.call(y, params)), numpy(loss.call(y[:, None], params)))


def test_loss_float16_inputs_computed_in_float32():
    rng = np.random.default_rng(2)
    params16 = random_params(rng, (64,), 2, 3).astype(np.float16)
    y16 = (3.0 * rng.standard_normal((64, 2))).astype(np.float16)
    # one far outlier: (y - mu)^2 / sigma^2 > 65504 overflows in float16, not in float32
    params16[0, :6] = 0.0
    params16[0, 6:12] = 1.0
    y16[0] = 300.0
    loss = mdn.get_mixture_loss_func(2, 3)
    out = loss.call(keras.ops.convert_to_tensor(y16), keras.ops.convert_to_tensor(params16))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    expected = ref_nll(y16.astype(np.float64), params16.astype(np.float64), 2, 3)
    assert np.isfinite(numpy(out)).all()
    assert expected[0] > 9e4
    np.testing.assert_allclose(numpy(out), expected, rtol=1e-5)
    reduced = loss(y16, params16)
    assert keras.backend.standardize_dtype(reduced.dtype) == "float32"
    assert float(reduced) == pytest.approx(expected.mean(), rel=1e-5)
    # a float16 dtype request is widened
    assert mdn.MixtureNLL(2, 3, dtype="float16").dtype == "float32"


def test_loss_is_stable_for_extreme_values():
    loss = mdn.get_mixture_loss_func(1, 2)
    params = np.array([[0.0, 1e3, 1e-6, 1.0, 80.0, -80.0], [0.0, 0.0, 1e-6, 1e-6, 0.0, 0.0]])
    y = np.array([[0.0], [0.0]])
    out = numpy(loss.call(y, params))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref_nll(y, params, 1, 2), rtol=1e-5)


def _constant_mdn_model(params_row: np.ndarray, d: int, k: int) -> keras.Model:
    """Input -> MDN whose output is the same mixture for every input (zero kernels)."""
    model = keras.Sequential([keras.Input((1,)), mdn.MDN(d, k)])
    mu, sig, logits = mdn.split_mixture_params(params_row, d, k)
    pre_sigma = sig - 1.0 - keras.backend.epsilon()  # inverse of ELU + 1 + eps for sig > 1
    assert np.all(pre_sigma > 0)
    weights = [np.zeros((1, k * d)), mu, np.zeros((1, k * d)), pre_sigma, np.zeros((1, k)), logits]
    model.set_weights([w.astype("float32") for w in weights])
    model.compile(loss=mdn.get_mixture_loss_func(d, k), optimizer="sgd")
    return model


def test_sample_weight_gives_weighted_mean_of_per_sample_nll():
    # a fixed mixture; 16 targets near its main mode (NLL about 0.5 .. 3), 16 far away
    # (NLL in the hundreds): weighting only the near ones must give their mean NLL.
    row = np.array([0.0, 4.0, 1.05, 1.5, 2.0, -1.0])  # D=1, K=2
    model = _constant_mdn_model(row, 1, 2)
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(0, 0.3, 16), rng.normal(60, 1, 16)])[:, None].astype("float32")
    x = np.zeros((32, 1), dtype="float32")
    w = np.r_[np.ones(16), np.zeros(16)].astype("float32")
    per_sample = ref_nll(y, np.tile(row, (32, 1)), 1, 2)
    assert per_sample[:16].max() < 3 and per_sample[16:].min() > 100
    got = model.evaluate(x, y, sample_weight=w, batch_size=32, verbose=0)
    assert got == pytest.approx(per_sample[:16].mean(), rel=1e-5)
    # unequal weights: sum w l / sum w
    w2 = rng.uniform(0.1, 3.0, 32).astype("float32")
    got2 = model.evaluate(x, y, sample_weight=w2, batch_size=32, verbose=0)
    assert got2 == pytest.approx((w2 * per_sample).sum() / w2.sum(), rel=1e-5)
    # and directly through the loss object
    direct = mdn.get_mixture_loss_func(1, 2)(y, numpy(model(x)), sample_weight=w)
    assert float(direct) == pytest.approx(per_sample[:16].mean(), rel=1e-5)


def test_masked_sequence_loss_averages_unmasked_steps_only():
    d, k, t = 1, 2, 5
    inputs = keras.Input((t, 3))
    h = keras.layers.Masking(mask_value=0.0)(inputs)
    out = keras.layers.TimeDistributed(mdn.MDN(d, k))(h)
    model = keras.Model(inputs, out)
    model.compile(loss=mdn.get_mixture_loss_func(d, k), optimizer="sgd")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, t, 3)).astype("float32")
    x[0, 3:] = 0.0  # padded steps
    x[2, 1:] = 0.0
    mask = np.any(x != 0, axis=-1)
    y = rng.standard_normal((4, t, d)).astype("float32")
    y[~mask] = 1e3  # garbage targets at padded steps would dominate if counted
    per_step = ref_nll(y, numpy(model(x)), d, k)
    assert per_step.shape == (4, t)
    got = model.evaluate(x, y, batch_size=4, verbose=0)
    assert got == pytest.approx(per_step[mask].mean(), rel=1e-5)
    # per-sequence weights (B,) weight every step of their sequence
    sw = np.array([1.0, 0.0, 2.0, 1.0], dtype="float32")
    got_w = model.evaluate(x, y, sample_weight=sw, batch_size=4, verbose=0)
    step_w = sw[:, None] * mask
    assert got_w == pytest.approx((step_w * per_step).sum() / step_w.sum(), rel=1e-5)


def test_loss_rejects_wrong_sizes():
    loss = mdn.get_mixture_loss_func(2, 3)
    with pytest.raises(ValueError, match=r"2\*3\*2 \+ 3 = 15.*found shape \(4, 14\)"):
        loss(np.zeros((4, 2)), np.ones((4, 14)))
    with pytest.raises(ValueError, match=r"y_true must hold output_dim=2.*found shape \(4, 3\)"):
        loss(np.zeros((4, 3)), np.ones((4, 15)))
    # the same errors are AssertionErrors too, what keras-mdn-layer code catches
    with pytest.raises(AssertionError) as err:
        loss(np.zeros((4, 2)), np.ones((4, 14)))
    assert type(err.value) is mdn.MDNShapeError and isinstance(err.value, ValueError)
    with pytest.raises(mdn.MDNShapeError):
        loss(np.zeros((4, 3)), np.ones((4, 15)))


def test_loss_config_round_trip():
    loss = mdn.get_mixture_loss_func(2, 7)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, mdn.MixtureNLL)
    assert (clone.output_dim, clone.num_mixes, clone.reduction) == (2, 7, "mean_with_sample_weight")


# --------------------------------------------------------------------------------------------
# save / load and classic compatibility
# --------------------------------------------------------------------------------------------


def test_save_and_load_compiled_model_without_custom_objects(tmp_path):
    keras.utils.set_random_seed(2)
    model = course_sequential()
    model.compile(
        loss=mdn.get_mixture_loss_func(1, 5),
        optimizer="rmsprop",
        metrics=[mdn.get_mixture_mse_accuracy(1, 5, seed=7)],
    )
    x, y = inverted_sine(128, seed=9)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "course.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert isinstance(loaded.layers[-1], mdn.MDN)
    assert isinstance(loaded.loss, mdn.MixtureNLL)
    assert (loaded.loss.output_dim, loaded.loss.num_mixes) == (1, 5)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    ev = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert ev["loss"] == pytest.approx(
        ref_nll(y, model.predict(x, verbose=0), 1, 5).mean(), rel=1e-5
    )
    assert np.isfinite(ev["mse_func"])
    # training continues from the loaded, compiled model
    assert np.isfinite(loaded.fit(x, y, epochs=1, verbose=0).history["loss"][0])


def test_functional_model_with_elu_activation_loads_without_custom_objects(tmp_path):
    inputs = keras.Input((3,))
    sig = keras.layers.Dense(2, activation=mdn.elu_plus_one_plus_epsilon)(inputs)
    model = keras.Model(inputs, sig)
    model.save(tmp_path / "f.keras")
    loaded = keras.models.load_model(tmp_path / "f.keras")
    x = np.random.default_rng(1).standard_normal((5, 3)).astype("float32") * 5
    np.testing.assert_allclose(numpy(loaded(x)), numpy(model(x)), atol=1e-6)
    assert numpy(loaded(x)).min() > 0


def test_weights_from_keras_mdn_layer_load_and_losses_agree(tmp_path):
    classic = pytest.importorskip("keras_mdn_layer")
    keras.utils.set_random_seed(3)
    old = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(15, activation="relu"), classic.MDN(2, 4)]
    )
    old.save_weights(tmp_path / "classic.weights.h5")
    new = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(15, activation="relu"), mdn.MDN(2, 4)]
    )
    new.load_weights(tmp_path / "classic.weights.h5")
    x = np.linspace(-3, 3, 50, dtype="float32")[:, None]
    pred = numpy(new(x))
    np.testing.assert_allclose(pred, numpy(old(x)), atol=1e-6)
    # unweighted, the mean of our per-sample loss is the classic scalar loss
    y = np.random.default_rng(0).standard_normal((50, 2)).astype("float32")
    ours = float(mdn.get_mixture_loss_func(2, 4)(y, pred))
    theirs = float(classic.get_mixture_loss_func(2, 4)(y, pred))
    assert ours == pytest.approx(theirs, rel=1e-5)


# --------------------------------------------------------------------------------------------
# in-graph sampling and the metric
# --------------------------------------------------------------------------------------------


def test_sampling_fun_is_seeded_and_matches_mixture_moments():
    d, k = 2, 3
    row = random_params(np.random.default_rng(11), (), d, k)
    batch = np.tile(row, (40_000, 1))
    draw_a = numpy(mdn.get_mixture_sampling_fun(d, k, seed=5)(batch))
    draw_b = numpy(mdn.get_mixture_sampling_fun(d, k, seed=5)(batch))
    np.testing.assert_array_equal(draw_a, draw_b)
    assert draw_a.shape == (40_000, d)
    mean, var = mixture_moments(row, d, k)
    se = np.sqrt(var / len(batch))
    assert np.all(np.abs(draw_a.mean(0) - mean) < 5 * se)  # 5 standard errors
    np.testing.assert_allclose(draw_a.var(0), var, rtol=0.05)
    # a second call of the same function advances its seed
    fun = mdn.get_mixture_sampling_fun(d, k, seed=5)
    assert not np.array_equal(numpy(fun(batch[:10])), numpy(fun(batch[:10])))


def test_sampling_fun_sequences_shape():
    params = random_params(np.random.default_rng(0), (3, 4), 2, 2)
    out = numpy(mdn.get_mixture_sampling_fun(2, 2, seed=1)(params))
    assert out.shape == (3, 4, 2)
    assert np.isfinite(out).all()


def test_mse_accuracy_metric_value():
    # one component with sigma s, target at its mean: E[mse] = s^2 (per dimension)
    d, s = 2, 0.5
    params = np.tile(np.array([1.0, -1.0, s, s, 0.0]), (20_000, 1)).astype("float32")
    y = np.tile(np.array([1.0, -1.0]), (20_000, 1)).astype("float32")
    metric = mdn.get_mixture_mse_accuracy(d, 1, seed=0)
    metric.update_state(y, params)
    # mean of chi^2_2 / 2 * s^2: sd of one term s^2, so 5 SE = 5 s^2 / sqrt(n)
    assert float(metric.result()) == pytest.approx(s**2, abs=5 * s**2 / np.sqrt(20_000))
    metric.reset_state()
    assert float(metric.result()) == 0.0
    clone = mdn.MixtureMSEAccuracy.from_config(metric.get_config())
    assert (clone.output_dim, clone.num_mixes, clone.seed) == (2, 1, 0)


def test_mse_accuracy_called_returns_one_value_per_sample():
    # as the classic function: acc(y_true, y_pred) -> (batch,), no running mean kept
    d, s, n = 2, 0.5, 20_000
    params = np.tile(np.array([1.0, -1.0, s, s, 0.0]), (n, 1)).astype("float32")
    y = np.tile(np.array([1.0, -1.0]), (n, 1)).astype("float32")
    acc = mdn.get_mixture_mse_accuracy(d, 1, seed=0)
    values = numpy(acc(y, params))
    assert values.shape == (n,) and values.dtype == np.float32
    # each value is s^2 chi^2_2 / 2 (exponential with mean s^2): 5 standard errors
    assert values.mean() == pytest.approx(s**2, abs=5 * s**2 / np.sqrt(n))
    assert scipy_stats.kstest(values / s**2, scipy_stats.expon.cdf).pvalue > 1e-4
    assert float(acc.result()) == 0.0
    assert not np.array_equal(values[:10], numpy(acc(y[:10], params[:10])))  # seed advances
    # one known value per sample: a point mass (sigma ~ 0) at 0 against targets 0 and 3
    point = np.array([[0.0, 1e-6, 0.0]] * 2, dtype="float32")
    got = numpy(mdn.get_mixture_mse_accuracy(1, 1, seed=0)(np.array([[0.0], [3.0]]), point))
    np.testing.assert_allclose(got, [0.0, 9.0], atol=1e-4)
    seq = numpy(acc(np.zeros((3, 4, 2)), np.tile(params[:1], (3, 4, 1))))
    assert seq.shape == (3, 4)


# --------------------------------------------------------------------------------------------
# NumPy sampling
# --------------------------------------------------------------------------------------------


def test_split_mixture_params_rows_and_batches():
    params = np.arange(15.0)
    mus, sigs, logits = mdn.split_mixture_params(params, 2, 3)
    assert mus.tolist() == list(range(6)) and sigs.tolist() == list(range(6, 12))
    assert logits.tolist() == [12.0, 13.0, 14.0]
    m2, s2, l2 = mdn.split_mixture_params(np.stack([params, params]), 2, 3)
    assert m2.shape == (2, 6) and s2.shape == (2, 6) and l2.shape == (2, 3)
    with pytest.raises(ValueError, match=r"= 15 .*found shape \(14,\)"):
        mdn.split_mixture_params(np.arange(14.0), 2, 3)
    with pytest.raises(AssertionError, match="needs to match the mixture configuration"):
        mdn.split_mixture_params(np.arange(14.0), 2, 3)
    # slices of the input's own type, as the classic function: lists stay lists
    assert mdn.split_mixture_params(list(range(9)), 1, 3) == ([0, 1, 2], [3, 4, 5], [6, 7, 8])
    m3, _, _ = mdn.split_mixture_params([[0.0] * 9] * 2, 1, 3)  # nested lists: an array
    assert isinstance(m3, np.ndarray) and m3.shape == (2, 3)


def test_softmax_matches_scipy_and_handles_zero_temperature():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4)) * 10
    for t in (0.1, 1.0, 3.0):
        np.testing.assert_allclose(
            mdn.softmax(w, t=t), scipy_special.softmax(w / t, axis=-1), rtol=1e-12
        )
    np.testing.assert_array_equal(mdn.softmax([1.0, 3.0, 2.0], t=0), [0.0, 1.0, 0.0])
    tiny = mdn.softmax([1.0, 3.0, 2.0], t=1e-300)
    np.testing.assert_array_equal(tiny, [0.0, 1.0, 0.0])
    assert np.isfinite(mdn.softmax([1e308, -1e308], t=1e-3)).all()
    with pytest.raises(ValueError, match="t must be >= 0"):
        mdn.softmax([1.0, 2.0], t=-1)
    # the classic dtype, that of np.array(w) / t: float inputs keep theirs
    assert mdn.softmax(np.float32([1, 2])).dtype == np.float32
    assert mdn.softmax(np.float32([1, 2]), t=0).dtype == np.float32
    assert mdn.softmax([1, 2]).dtype == np.float64


def test_sample_from_categorical_frequencies():
    p = np.array([0.1, 0.0, 0.6, 0.3])
    draws = mdn.sample_from_categorical(np.tile(p, (50_000, 1)), seed=0)
    assert draws.shape == (50_000,)
    freq = np.bincount(draws, minlength=4) / 50_000
    assert freq[1] == 0.0
    np.testing.assert_allclose(freq, p, atol=5 * np.sqrt(0.25 / 50_000))
    assert isinstance(mdn.sample_from_categorical(p, seed=1), int)
    # sampling that cannot succeed gives -1, as the classic function
    assert mdn.sample_from_categorical(np.zeros(3), seed=0) == -1
    assert mdn.sample_from_categorical(np.array([[np.nan, 1.0], p[:2]]), seed=0).tolist() == [-1, 0]


@pytest.mark.parametrize(("d", "k"), [(1, 5), (2, 3)])
def test_sample_from_output_shapes(d, k):
    rng = np.random.default_rng(0)
    p = 2 * k * d + k
    assert mdn.sample_from_output(random_params(rng, (), d, k), d, k).shape == (d,)
    assert mdn.sample_from_output(random_params(rng, (7,), d, k), d, k).shape == (7, d)
    assert mdn.sample_from_output(random_params(rng, (4, 6), d, k), d, k).shape == (4, 6, d)
    preds = random_params(rng, (9,), d, k)
    applied = np.apply_along_axis(mdn.sample_from_output, 1, preds, d, k, temp=1.0)
    assert applied.shape == (9, d) and np.isfinite(applied).all()
    with pytest.raises(ValueError, match=rf"= {p} .*found shape \(3, {p + 1}\)"):
        mdn.sample_from_output(np.zeros((3, p + 1)), d, k)
    with pytest.raises(AssertionError, match=rf"= {p} .*found shape \({p - 1},\)"):
        mdn.sample_from_output(np.zeros(p - 1), d, k)


@pytest.mark.parametrize(("temp", "sigma_temp"), [(1.0, 1.0), (0.5, 0.25), (2.0, 2.0)])
def test_sample_from_output_matches_tempered_mixture_moments(temp, sigma_temp):
    d, k, n = 2, 3, 200_000
    row = random_params(np.random.default_rng(42), (), d, k)
    draws = mdn.sample_from_output(
        np.tile(row, (n, 1)), d, k, temp=temp, sigma_temp=sigma_temp, seed=1
    )
    mean, var = mixture_moments(row, d, k, temp=temp, sigma_temp=sigma_temp)
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * np.sqrt(var / n))  # 5 standard errors
    np.testing.assert_allclose(draws.var(0), var, rtol=0.03)


def test_sample_from_output_temperature_semantics():
    d, k = 1, 3
    row = np.array([-5.0, 0.0, 5.0, 0.1, 0.2, 0.3, 0.0, 1.0, 0.5])
    # temp divides the logits: component frequencies follow softmax(logits / temp)
    n = 60_000
    draws = mdn.sample_from_output(np.tile(row, (n, 1)), d, k, temp=2.0, sigma_temp=0.0, seed=3)
    freq = np.array([(draws[:, 0] == m).mean() for m in (-5.0, 0.0, 5.0)])
    np.testing.assert_allclose(
        freq, scipy_special.softmax(row[6:] / 2.0), atol=5 * np.sqrt(0.25 / n)
    )
    # temp = 0 is greedy, sigma_temp = 0 returns the mean: exactly mu of the argmax
    assert mdn.sample_from_output(row, d, k, temp=0, sigma_temp=0).tolist() == [0.0]
    # temp = 0 with noise: greedy component, std sigma * sqrt(sigma_temp)
    greedy = mdn.sample_from_output(np.tile(row, (n, 1)), d, k, temp=0.0, sigma_temp=4.0, seed=0)
    assert abs(greedy.mean()) < 5 * 0.4 / np.sqrt(n)
    assert greedy.std() == pytest.approx(0.2 * 2.0, rel=0.02)
    # extreme logits and tiny temperature: never NaN
    wild = np.array([0.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1e30, -1e30, 1e30])
    assert np.isfinite(mdn.sample_from_output(np.tile(wild, (100, 1)), d, k, temp=1e-300)).all()
    with pytest.raises(ValueError, match="temp must be >= 0"):
        mdn.sample_from_output(row, d, k, temp=-0.1)
    with pytest.raises(ValueError, match="sigma_temp must be finite and >= 0"):
        mdn.sample_from_output(row, d, k, sigma_temp=float("nan"))


def test_sample_from_output_seeding():
    params = random_params(np.random.default_rng(0), (50,), 2, 3)
    a = mdn.sample_from_output(params, 2, 3, seed=123)
    b = mdn.sample_from_output(params, 2, 3, seed=np.random.default_rng(123))
    np.testing.assert_array_equal(a, b)
    # seed=None follows NumPy's global state, as the classic function (small and large batches)
    for rows in (params, np.tile(params, (40, 1))):
        np.random.seed(7)  # noqa: NPY002
        c = mdn.sample_from_output(rows, 2, 3)
        np.random.seed(7)  # noqa: NPY002
        np.testing.assert_array_equal(c, mdn.sample_from_output(rows, 2, 3))
        assert not np.array_equal(c, mdn.sample_from_output(rows, 2, 3))
    assert not np.array_equal(a, mdn.sample_from_output(params, 2, 3, seed=124))


def test_sample_from_output_on_many_rows_draws_from_each_rows_mixture():
    # (its speed on 200 000 rows is measured in benchmarks/bench_keras.py)
    rng = np.random.default_rng(0)
    params = random_params(rng, (100_000,), 1, 5)
    mu, sig, logits = mdn.split_mixture_params(params.astype(np.float64), 1, 5)
    out = mdn.sample_from_output(params, 1, 5, seed=0)
    assert out.shape == (100_000, 1) and np.isfinite(out).all()
    # each row's draw through its own mixture's CDF is uniform (probability integral transform)
    w = scipy_special.softmax(logits, axis=-1)
    u = (w * scipy_stats.norm.cdf((out - mu) / sig)).sum(-1)
    assert scipy_stats.kstest(u, "uniform").pvalue > 1e-3


# --------------------------------------------------------------------------------------------
# parity with the PyTorch core
# --------------------------------------------------------------------------------------------


def test_loss_parity_with_torch_core():
    gaussian_mixture = GaussianMixture
    for d, k, lead in [(1, 5, (50,)), (3, 4, (6, 7))]:
        rng = np.random.default_rng(100 + d)
        params = random_params(rng, lead, d, k)
        y = (2 * rng.standard_normal(lead + (d,))).astype("float32")
        mu, sig, logits = mdn.split_mixture_params(params.astype(np.float64), d, k)
        dist = gaussian_mixture(
            torch.from_numpy(logits),
            torch.from_numpy(mu.reshape(lead + (k, d))),
            scale=torch.from_numpy(sig.reshape(lead + (k, d))),
        )
        core = -dist.log_prob(torch.from_numpy(y.astype(np.float64))).numpy()
        ours = numpy(mdn.get_mixture_loss_func(d, k).call(y, params))
        np.testing.assert_allclose(ours, core, rtol=1e-5, atol=1e-5)


def test_sampling_parity_with_torch_core_moments():
    gaussian_mixture = GaussianMixture
    d, k, n = 2, 4, 200_000
    row = random_params(np.random.default_rng(8), (), d, k).astype(np.float64)
    mu, sig, logits = mdn.split_mixture_params(row, d, k)
    dist = gaussian_mixture(
        torch.from_numpy(logits),
        torch.from_numpy(mu.reshape(k, d)),
        scale=torch.from_numpy(sig.reshape(k, d)),
    )
    mean, var = dist.mean.numpy(), dist.variance.numpy()
    draws = mdn.sample_from_output(np.tile(row, (n, 1)), d, k, seed=0)
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * np.sqrt(var / n))
    np.testing.assert_allclose(draws.var(0), var, rtol=0.03)


# --------------------------------------------------------------------------------------------
# the MDRNN example
# --------------------------------------------------------------------------------------------


def _load_example():
    spec = importlib.util.spec_from_file_location(
        "keras_mdrnn", ROOT / "examples" / "keras_mdrnn.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mdrnn_generation_model_reproduces_training_model_step_by_step():
    ex = _load_example()
    keras.utils.set_random_seed(0)
    x, y = ex.make_data(64, seq_len=12)
    model = ex.build_training_model(seq_len=12)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    generator = ex.build_generation_model(model)
    # every weight, the LSTMs' included, was copied
    assert len(generator.get_weights()) == len(model.get_weights())
    for a, b in zip(generator.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    seq = x[:1]
    full = model.predict(seq, verbose=0)[0]  # (T, P)
    ex.reset_states(generator)
    steps = np.stack([numpy(generator(seq[:, t : t + 1]))[0, 0] for t in range(seq.shape[1])])
    np.testing.assert_allclose(steps, full, atol=1e-5)
    # state matters: stepping without a reset continues the sequence and differs
    assert not np.allclose(numpy(generator(seq[:, :1]))[0, 0], full[0], atol=1e-4)
    out = ex.generate(generator, 10, temp=1.0, sigma_temp=0.5, seed=1)
    assert out.shape == (10, 1) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, ex.generate(generator, 10, temp=1.0, sigma_temp=0.5, seed=1))


# --------------------------------------------------------------------------------------------
# the other backends, in a subprocess each
# --------------------------------------------------------------------------------------------

_BACKEND_SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile, os
    import numpy as np
    import keras
    from mdnkit import keras as mdn

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = rng.uniform(-10.5, 10.5, (512, 1))
    x = (7 * np.sin(0.75 * y) + 0.5 * y + rng.standard_normal((512, 1))).astype("float32")
    y = y.astype("float32")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(15, activation="relu"),
                              keras.layers.Dense(15, activation="relu"), mdn.MDN(1, 5)])
    model.compile(loss=mdn.get_mixture_loss_func(1, 5), optimizer="rmsprop",
                  metrics=[mdn.get_mixture_mse_accuracy(1, 5, seed=1)])
    hist = model.fit(x, y, batch_size=64, epochs=2, verbose=0).history
    params = np.asarray(model.predict(x, verbose=0), dtype=np.float64)
    ev1 = model.evaluate(x, y, verbose=0, return_dict=True)
    ev2 = model.evaluate(x, y, verbose=0, return_dict=True)
    w = np.r_[np.ones(256), np.zeros(256)].astype("float32")
    evw = model.evaluate(x, y, sample_weight=w, batch_size=512, verbose=0, return_dict=True)["loss"]
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    draws = keras.ops.convert_to_numpy(mdn.get_mixture_sampling_fun(1, 5, seed=3)(params))
    draws2 = keras.ops.convert_to_numpy(mdn.get_mixture_sampling_fun(1, 5, seed=3)(params))
    json.dump({
        "backend": keras.backend.backend(),
        "count_params": model.count_params(),
        "loss": hist["loss"], "mse": hist["mse_func"],
        "params": params.tolist(), "y": y[:, 0].tolist(),
        "eval_loss": ev1["loss"], "eval_mse": [ev1["mse_func"], ev2["mse_func"]],
        "eval_weighted": evw,
        "loaded_loss": type(loaded.loss).__name__,
        "loaded_same": bool(np.allclose(loaded.predict(x, verbose=0), params, atol=1e-6)),
        "draws_equal": bool(np.array_equal(draws, draws2)),
        "rank3_shape": list(mdn.MDN(2, 3).compute_output_shape((None, 4, 8))),
    }, sys.stdout)
    """
)

_OTHER_BACKENDS = [b for b in ("torch", "jax", "tensorflow") if b != BACKEND]


@pytest.mark.parametrize("backend", _OTHER_BACKENDS)
def test_other_backend_in_subprocess(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", _BACKEND_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["backend"] == backend
    assert res["count_params"] == 510
    assert np.all(np.isfinite(res["loss"])) and np.all(np.isfinite(res["mse"]))
    params, y = np.array(res["params"]), np.array(res["y"])[:, None]
    per_sample = ref_nll(y, params, 1, 5)
    assert res["eval_loss"] == pytest.approx(per_sample.mean(), rel=1e-4)
    assert res["eval_weighted"] == pytest.approx(per_sample[:256].mean(), rel=1e-4)
    # the metric's seed advances between evaluations (its state is carried through jit)
    assert res["eval_mse"][0] != res["eval_mse"][1]
    assert res["loaded_loss"] == "MixtureNLL" and res["loaded_same"]
    assert res["draws_equal"]
    assert res["rank3_shape"] == [None, 4, 15]


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow present: Keras's default"
)
def test_import_picks_torch_when_no_backend_is_configured(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)  # no keras.json: Keras would default to TensorFlow
    code = "from mdnkit import keras as mdn; import keras; print(keras.backend.backend())"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "torch"


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow present: nothing fails"
)
def test_missing_backend_error_names_keras_backend_and_installed_backends():
    env = dict(os.environ, KERAS_BACKEND="tensorflow")  # named, but not installed
    code = "from mdnkit import keras"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: Keras could not import its backend: ")
    assert "KERAS_BACKEND=tensorflow needs 'tensorflow', which is not installed" in last
    installed = [b for b in ("torch", "jax") if importlib.util.find_spec(b) is not None]
    assert f"installed backends: {', '.join(installed)}." in last
    assert f"KERAS_BACKEND={installed[0]} python script.py" in last


def test_missing_backend_of_keras_json_is_named(tmp_path):
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)
    # jax made absent for this process (None in sys.modules: import fails, find_spec says None)
    code = "import sys; sys.modules['jax'] = None; from mdnkit import keras"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "the backend of keras.json ($KERAS_HOME or ~/.keras) needs 'jax'" in last
    assert "installed backends: torch" in last and "jax," not in last
