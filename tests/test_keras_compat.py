"""Side-by-side checks: ``mdnkit.keras`` against keras-mdn-layer 1.0.0, on the same inputs.

Code written for keras-mdn-layer must run unchanged on ``mdnkit.keras``. Every public name of
the reference package is called here next to ours and compared on shapes, dtypes, values
(losses to 1e-5), distributions (two-sample tests with the tolerance stated at each check,
since the random streams differ) and exception types. Each deliberate difference is pinned
by a test named ``test_difference_*`` and listed in docs/keras.md; if the reference changes,
those tests say so.

The reference is imported as ``keras_mdn_layer`` (its 1.0.0 wheel's name), or ``mdn`` where an
older layout is installed. Keras fixes its backend per process: this file follows
tests/test_keras.py (``torch`` unless ``KERAS_BACKEND`` says otherwise) and is backend-agnostic
(``KERAS_BACKEND=jax pytest tests/test_keras_compat.py`` runs it on JAX).
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import scipy.stats as scipy_stats  # noqa: E402

from mdnkit import keras as mdn  # noqa: E402


def _import_reference():
    for name in ("keras_mdn_layer", "mdn"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "get_mixture_loss_func") and hasattr(module, "MDN"):
            return module
    pytest.skip("keras-mdn-layer 1.0.0 is not installed", allow_module_level=True)


classic = _import_reference()

#: the public functions and classes of keras-mdn-layer 1.0.0
CLASSIC_NAMES = {
    "MDN",
    "elu_plus_one_plus_epsilon",
    "get_mixture_loss_func",
    "get_mixture_sampling_fun",
    "get_mixture_mse_accuracy",
    "split_mixture_params",
    "softmax",
    "sample_from_categorical",
    "sample_from_output",
}


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def dtype_of(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def native(dtype: str) -> str:
    """The dtype a NumPy array of ``dtype`` becomes on this backend (JAX: float32 unless x64)."""
    return dtype_of(keras.ops.convert_to_tensor(np.zeros(1, dtype)))


def random_params(rng: np.random.Generator, lead: tuple[int, ...], d: int, k: int) -> np.ndarray:
    mu = 2.0 * rng.standard_normal(lead + (k * d,))
    sig = np.exp(0.5 * rng.standard_normal(lead + (k * d,)))
    logits = rng.standard_normal(lead + (k,))
    return np.concatenate([mu, sig, logits], axis=-1).astype(np.float32)


def assert_same_distribution(a: np.ndarray, b: np.ndarray) -> None:
    """Two samples (n, D) from the same law: per dimension, the means agree to 5 standard
    errors of their difference and a two-sample Kolmogorov-Smirnov test has p > 1e-4."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    se = np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    assert np.all(np.abs(a.mean(0) - b.mean(0)) <= 5 * se + 1e-12)
    for j in range(a.shape[1]):
        assert scipy_stats.ks_2samp(a[:, j], b[:, j]).pvalue > 1e-4


# --------------------------------------------------------------------------------------------
# the public surface
# --------------------------------------------------------------------------------------------


def test_every_classic_public_name_exists_with_a_compatible_signature():
    public = {
        name
        for name, obj in vars(classic).items()
        if not name.startswith("_")
        and callable(obj)
        and getattr(obj, "__module__", None) == classic.__name__
    }
    assert public == CLASSIC_NAMES  # a new reference name needs a check here
    for name in sorted(public):
        assert name in mdn.__all__, name
        theirs, ours = getattr(classic, name), getattr(mdn, name)
        if inspect.isclass(theirs):
            theirs, ours = theirs.__init__, ours.__init__
        t_params = list(inspect.signature(theirs).parameters.values())
        o_params = list(inspect.signature(ours).parameters.values())
        # every classic argument, positionally and by keyword, with the same default
        for t, o in zip(t_params, o_params, strict=False):
            assert (t.name, t.kind, t.default) == (o.name, o.kind, o.default), name
        assert len(o_params) >= len(t_params), name
        # anything we add is optional
        for o in o_params[len(t_params) :]:
            assert o.default is not inspect.Parameter.empty or o.kind in (
                inspect.Parameter.VAR_KEYWORD,
                inspect.Parameter.VAR_POSITIONAL,
            ), (name, o.name)


def test_shape_error_is_both_value_error_and_assertion_error():
    assert issubclass(mdn.MDNShapeError, ValueError)
    assert issubclass(mdn.MDNShapeError, AssertionError)
    assert "MDNShapeError" in mdn.__all__
    with pytest.raises(AssertionError) as theirs:
        classic.split_mixture_params(np.zeros(14), 1, 5)
    with pytest.raises(AssertionError) as ours:
        mdn.split_mixture_params(np.zeros(14), 1, 5)
    # the classic sentence, then what was expected and what was found
    assert str(ours.value).startswith(str(theirs.value))
    assert "= 15" in str(ours.value) and "found shape (14,)" in str(ours.value)


# --------------------------------------------------------------------------------------------
# the layer and its activation
# --------------------------------------------------------------------------------------------


def test_layer_weights_outputs_and_shapes_match():
    keras.utils.set_random_seed(1)
    old, new = classic.MDN(2, 3), mdn.MDN(2, 3)
    x = np.random.default_rng(0).standard_normal((8, 5)).astype("float32")
    old.build((None, 5))
    new.build((None, 5))
    assert [w.shape for w in new.get_weights()] == [w.shape for w in old.get_weights()]
    assert [w.path.split("/")[-2] for w in new.weights] == [
        w.path.split("/")[-2] for w in old.weights
    ]
    assert (new.output_dim, new.num_mix) == (old.output_dim, old.num_mix) == (2, 3)
    new.set_weights(old.get_weights())
    out_old, out_new = numpy(old(x)), numpy(new(x))
    assert out_new.shape == out_old.shape == (8, 15)
    assert out_new.dtype == out_old.dtype == np.float32
    np.testing.assert_array_equal(out_new, out_old)
    assert new.compute_output_shape((None, 5)) == old.compute_output_shape((None, 5))
    assert new.count_params() == old.count_params() == 6 * 15
    # rank 3 through the layer itself: the same (B, T, P) on both
    x3 = np.random.default_rng(1).standard_normal((2, 4, 5)).astype("float32")
    np.testing.assert_array_equal(numpy(new(x3)), numpy(old(x3)))


def test_layer_config_round_trips_and_crosses_over():
    old, new = classic.MDN(2, 3, name="head"), mdn.MDN(2, 3, name="head")
    c_old, c_new = old.get_config(), new.get_config()
    assert c_new == c_old  # same keys and values, so saved configs read both ways
    for cls in (classic.MDN, mdn.MDN):
        for config in (c_old, c_new):
            layer = cls.from_config(config)
            assert (layer.output_dim, layer.num_mix, layer.name) == (2, 3, "head")


def test_difference_compute_output_shape_for_sequences():
    old, new = classic.MDN(1, 5), mdn.MDN(1, 5)
    assert old.compute_output_shape((None, 4, 7)) == (None, 15)  # drops the time axis
    assert new.compute_output_shape((None, 4, 7)) == (None, 4, 15)


def test_elu_plus_one_plus_epsilon_matches():
    x = np.linspace(-20, 20, 101).astype("float32")
    theirs, ours = classic.elu_plus_one_plus_epsilon(x), mdn.elu_plus_one_plus_epsilon(x)
    assert dtype_of(ours) == dtype_of(theirs) == "float32"
    np.testing.assert_array_equal(numpy(ours), numpy(theirs))


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("d", "k", "lead"), [(1, 5, (32,)), (2, 3, (16,)), (3, 2, (4, 6))])
def test_loss_values_and_shapes_match(d, k, lead):
    rng = np.random.default_rng(d * 10 + k)
    params = random_params(rng, lead, d, k)
    y = rng.standard_normal(lead + (d,)).astype("float32")
    theirs = classic.get_mixture_loss_func(d, k)(y, params)
    loss = mdn.get_mixture_loss_func(d, k)
    ours = loss(y, params)
    assert tuple(ours.shape) == tuple(theirs.shape) == ()
    assert dtype_of(ours) == dtype_of(theirs) == "float32"
    np.testing.assert_allclose(numpy(ours), numpy(theirs), rtol=1e-5, atol=1e-5)
    # per sample: our Loss.call against the reference's own log-density
    mu, sig, logits = classic._split_mdn_params(params, d, k)
    per_sample = -numpy(classic._mdn_log_prob(y, mu, sig, logits, d, k))
    np.testing.assert_allclose(
        numpy(loss.call(y, params)).reshape(-1), per_sample, rtol=1e-5, atol=1e-5
    )
    if d == 1:  # flat targets (B,) for one output dimension, as the course passes them
        flat = y.reshape(-1)
        np.testing.assert_allclose(
            numpy(loss(flat, params)),
            numpy(classic.get_mixture_loss_func(d, k)(flat, params)),
            rtol=1e-5,
            atol=1e-5,
        )


def test_difference_loss_dtype_for_float64_inputs():
    rng = np.random.default_rng(0)
    params = random_params(rng, (16,), 1, 5).astype("float64")
    y = rng.standard_normal((16, 1))
    theirs = classic.get_mixture_loss_func(1, 5)(y, params)
    ours = mdn.get_mixture_loss_func(1, 5)(y, params)
    assert dtype_of(theirs) == native("float64")  # float32 on JAX without x64
    assert dtype_of(ours) == keras.backend.floatx() == "float32"  # a keras Loss: its dtype
    np.testing.assert_allclose(numpy(ours), numpy(theirs), rtol=1e-5)
    wide = mdn.MixtureNLL(1, 5, dtype="float64")(y, params)
    assert dtype_of(wide) == native("float64")
    np.testing.assert_allclose(
        numpy(wide), numpy(theirs), rtol=1e-12 if native("float64") == "float64" else 1e-5
    )


def test_wrong_sizes_in_graph_functions():
    # 56 numbers cannot be rows of 15: the reference fails in the backend's reshape; ours
    # says what it expected
    reshape_error = {"torch": RuntimeError, "jax": TypeError}.get(
        keras.backend.backend(), Exception
    )
    bad, y = np.zeros((4, 14), "float32"), np.zeros((4, 1), "float32")
    for theirs, ours in [
        (
            lambda: classic.get_mixture_loss_func(1, 5)(y, bad),
            lambda: mdn.get_mixture_loss_func(1, 5)(y, bad),
        ),
        (
            lambda: classic.get_mixture_sampling_fun(1, 5)(bad),
            lambda: mdn.get_mixture_sampling_fun(1, 5, seed=0)(bad),
        ),
        (
            lambda: classic.get_mixture_mse_accuracy(1, 5)(y, bad),
            lambda: mdn.get_mixture_mse_accuracy(1, 5, seed=0)(y, bad),
        ),
    ]:
        with pytest.raises(reshape_error):
            theirs()
        with pytest.raises(mdn.MDNShapeError, match=r"= 15 .*found shape \(4, 14\)"):
            ours()
    # 60 numbers are 4 rows of 15: the reference silently samples 4 rows from 5
    bad = np.ones((5, 12), "float32")
    assert tuple(classic.get_mixture_sampling_fun(1, 5)(bad).shape) == (4, 1)
    with pytest.raises(AssertionError):
        mdn.get_mixture_sampling_fun(1, 5, seed=0)(bad)
    # targets of the wrong size
    with pytest.raises(AssertionError, match=r"y_true must hold output_dim=2"):
        mdn.get_mixture_loss_func(2, 3)(np.zeros((4, 3)), np.ones((4, 15), "float32"))


# --------------------------------------------------------------------------------------------
# in-graph sampling and the accuracy function
# --------------------------------------------------------------------------------------------


def test_sampling_fun_shapes_dtypes_and_distribution():
    d, k, n = 2, 3, 20_000
    rng = np.random.default_rng(5)
    for dtype in ("float32", "float64"):
        params = random_params(rng, (7,), d, k).astype(dtype)
        theirs = classic.get_mixture_sampling_fun(d, k)(params)
        ours = mdn.get_mixture_sampling_fun(d, k, seed=0)(params)
        assert tuple(ours.shape) == tuple(theirs.shape) == (7, d)
        assert dtype_of(ours) == dtype_of(theirs) == native(dtype)
    row = random_params(rng, (), d, k)
    batch = np.tile(row, (n, 1))
    keras.utils.set_random_seed(0)
    theirs = numpy(classic.get_mixture_sampling_fun(d, k)(batch))
    ours = numpy(mdn.get_mixture_sampling_fun(d, k, seed=0)(batch))
    assert_same_distribution(ours, theirs)


def test_difference_sampling_fun_keeps_the_time_axis():
    params = random_params(np.random.default_rng(0), (3, 4), 2, 2)
    assert tuple(classic.get_mixture_sampling_fun(2, 2)(params).shape) == (12, 2)
    assert tuple(mdn.get_mixture_sampling_fun(2, 2, seed=0)(params).shape) == (3, 4, 2)


def test_accuracy_returns_one_value_per_sample_like_the_reference():
    d, s, n = 2, 0.5, 20_000
    row = np.array([1.0, -1.0, s, s, 0.0])  # one component, target at its mean
    params = np.tile(row, (n, 1)).astype("float32")
    y = np.tile(np.array([1.0, -1.0]), (n, 1)).astype("float32")
    for dtype in ("float32", "float64"):
        p, t = params[:6].astype(dtype), y[:6].astype(dtype)
        theirs = classic.get_mixture_mse_accuracy(d, 1)(t, p)
        ours = mdn.get_mixture_mse_accuracy(d, 1, seed=0)(t, p)
        assert tuple(ours.shape) == tuple(theirs.shape) == (6,)
        assert dtype_of(ours) == dtype_of(theirs) == native(dtype)
    keras.utils.set_random_seed(0)
    theirs = numpy(classic.get_mixture_mse_accuracy(d, 1)(y, params))
    acc = mdn.get_mixture_mse_accuracy(d, 1, seed=0)
    ours = numpy(acc(y, params))
    # each value is s^2 chi^2_2 / 2: the same law on both sides
    assert_same_distribution(ours[:, None], theirs[:, None])
    assert ours.mean() == pytest.approx(s**2, abs=5 * s**2 / np.sqrt(n))
    assert float(acc.result()) == 0.0  # calling it is a pure function: no running mean


def test_accuracy_in_compile_gives_the_reference_history_key():
    x = np.linspace(-1, 1, 64, dtype="float32")[:, None]
    y = np.zeros((64, 1), "float32")

    def evaluate(module, acc):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((1,)), module.MDN(1, 2)])
        model.compile(loss=module.get_mixture_loss_func(1, 2), metrics=[acc])
        return model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)

    ours = evaluate(mdn, mdn.get_mixture_mse_accuracy(1, 2, seed=0))
    assert set(ours) == {"loss", "mse_func"} and np.isfinite(ours["mse_func"])
    if keras.backend.backend() == "jax":  # difference: the unseeded reference cannot be traced
        with pytest.raises(ValueError, match="seeded random ops"):
            evaluate(classic, classic.get_mixture_mse_accuracy(1, 2))
        return
    theirs = evaluate(classic, classic.get_mixture_mse_accuracy(1, 2))
    assert set(theirs) == set(ours)
    assert theirs["loss"] == pytest.approx(ours["loss"], rel=1e-5)


def test_difference_accuracy_keeps_the_time_axis():
    params = random_params(np.random.default_rng(0), (3, 4), 1, 2)
    y = np.zeros((3, 4, 1), "float32")
    assert tuple(classic.get_mixture_mse_accuracy(1, 2)(y, params).shape) == (12,)
    assert tuple(mdn.get_mixture_mse_accuracy(1, 2, seed=0)(y, params).shape) == (3, 4)


# --------------------------------------------------------------------------------------------
# the NumPy helpers
# --------------------------------------------------------------------------------------------


def test_split_mixture_params_matches_for_arrays_lists_and_tuples():
    arr = np.arange(15.0, dtype="float32")
    for params in (arr, list(range(15)), tuple(range(15)), list(arr)):
        theirs = classic.split_mixture_params(params, 2, 3)
        ours = mdn.split_mixture_params(params, 2, 3)
        for t, o in zip(theirs, ours, strict=True):
            assert type(o) is type(t)
            np.testing.assert_array_equal(np.asarray(o), np.asarray(t))
            if isinstance(t, np.ndarray):
                assert o.dtype == t.dtype and np.shares_memory(o, arr) == np.shares_memory(t, arr)
    for bad in (np.zeros(14), [0.0] * 16):
        with pytest.raises(AssertionError):
            classic.split_mixture_params(bad, 2, 3)
        with pytest.raises(AssertionError, match=r"= 15 .*found shape"):
            mdn.split_mixture_params(bad, 2, 3)


def test_difference_split_mixture_params_on_a_batch():
    batch = np.arange(30.0).reshape(2, 15)
    with pytest.raises(AssertionError):  # the reference checks len(), the batch size
        classic.split_mixture_params(batch, 2, 3)
    mus, sigs, logits = mdn.split_mixture_params(batch, 2, 3)
    assert (mus.shape, sigs.shape, logits.shape) == ((2, 6), (2, 6), (2, 3))


@pytest.mark.parametrize("t", [0.25, 1.0, 4.0])
def test_softmax_values_and_dtypes_match(t):
    w64 = np.random.default_rng(0).standard_normal(6) * 3
    for w, rtol in ((w64, 1e-12), (w64.astype("float32"), 1e-6), (list(w64), 1e-12)):
        theirs, ours = classic.softmax(w, t=t), mdn.softmax(w, t=t)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        np.testing.assert_allclose(ours, theirs, rtol=rtol)
    ints = [1, 3, 2]
    assert mdn.softmax(ints, t).dtype == classic.softmax(ints, t).dtype == np.float64
    np.testing.assert_allclose(mdn.softmax(ints, t), classic.softmax(ints, t), rtol=1e-12)


def test_difference_softmax_zero_negative_temperature_and_batches():
    w = np.array([1.0, 3.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(classic.softmax(w, t=0)).all()
        reversed_ = classic.softmax(w, t=-1.0)
    np.testing.assert_array_equal(mdn.softmax(w, t=0), [0.0, 1.0, 0.0])
    assert reversed_.argmax() == 0  # a negative temperature favours the smallest logit
    with pytest.raises(ValueError, match="t must be >= 0"):
        mdn.softmax(w, t=-1.0)
    batch = np.array([[1.0, 2.0], [0.0, 0.0]])
    assert classic.softmax(batch).sum() == pytest.approx(1.0)  # the whole array sums to 1
    np.testing.assert_allclose(mdn.softmax(batch).sum(-1), [1.0, 1.0])  # each row does


def test_sample_from_categorical_matches():
    p = np.array([0.2, 0.0, 0.5, 0.3])
    n = 20_000
    np.random.seed(3)  # noqa: NPY002 - both draw from NumPy's global state
    theirs = np.array([classic.sample_from_categorical(p) for _ in range(n)])
    np.random.seed(3)  # noqa: NPY002
    first = mdn.sample_from_categorical(p)
    ours = mdn.sample_from_categorical(np.tile(p, (n, 1)))
    assert type(first) is type(classic.sample_from_categorical(p)) is int
    np.random.seed(3)  # noqa: NPY002 - same global seed, same draw
    assert mdn.sample_from_categorical(p) == first
    f_t, f_o = np.bincount(theirs, minlength=4) / n, np.bincount(ours, minlength=4) / n
    assert f_t[1] == f_o[1] == 0.0
    # frequencies: 5 standard errors of the difference of two proportions (at most 0.5)
    np.testing.assert_allclose(f_o, f_t, atol=5 * np.sqrt(2 * 0.25 / n))
    # sampling that cannot succeed: -1 on both
    for dist in (np.zeros(3), np.array([np.nan, 1.0])):
        assert mdn.sample_from_categorical(dist) == classic.sample_from_categorical(dist) == -1


@pytest.mark.parametrize(("d", "k", "temp", "sigma_temp"), [(1, 5, 1.0, 1.0), (2, 3, 0.5, 0.25)])
def test_sample_from_output_matches_row_by_row(d, k, temp, sigma_temp):
    n = 1500  # the reference draws row by row (about 0.1 ms a row)
    row = random_params(np.random.default_rng(d + k), (), d, k)
    kw = {"temp": temp, "sigma_temp": sigma_temp}
    for params in (row, row.astype("float64"), list(row)):
        theirs = classic.sample_from_output(params, d, k, **kw)
        ours = mdn.sample_from_output(params, d, k, **kw)
        assert ours.shape == theirs.shape == (d,)
        assert ours.dtype == theirs.dtype == np.float64
    np.random.seed(0)  # noqa: NPY002
    rows = np.tile(row, (n, 1))
    theirs = np.apply_along_axis(classic.sample_from_output, 1, rows, d, k, **kw)
    ours_rows = np.apply_along_axis(mdn.sample_from_output, 1, rows[:10], d, k, **kw)
    assert ours_rows.shape == (10, d) and theirs.shape == (n, d)
    ours = mdn.sample_from_output(rows, d, k, seed=1, **kw)
    assert_same_distribution(ours, theirs)
    # sigma_temp = 0 on one component: exactly its mean on both
    one = np.array([1.5] * d + [0.3] * d + [0.0], dtype="float32")
    assert (
        classic.sample_from_output(one, d, 1, sigma_temp=0.0).tolist()
        == mdn.sample_from_output(one, d, 1, sigma_temp=0.0).tolist()
        == [1.5] * d
    )
    with pytest.raises(AssertionError):
        classic.sample_from_output(row[:-1], d, k)
    with pytest.raises(AssertionError, match="found shape"):
        mdn.sample_from_output(row[:-1], d, k)


def test_difference_sample_from_output_batches_and_temperatures():
    row = np.array([-5.0, 0.0, 5.0, 0.1, 0.2, 0.3, 0.0, 1.0, 0.5])
    batch = np.tile(row, (4, 1))
    with pytest.raises(AssertionError):  # the reference checks len(), the batch size
        classic.sample_from_output(batch, 1, 3)
    assert mdn.sample_from_output(batch, 1, 3).shape == (4, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="same length"):  # NaN weights, index -1
            classic.sample_from_output(row, 1, 3, temp=0)
        assert np.isfinite(classic.sample_from_output(row, 1, 3, sigma_temp=-1.0)).all()
    assert mdn.sample_from_output(row, 1, 3, temp=0, sigma_temp=0).tolist() == [0.0]
    with pytest.raises(ValueError, match="sigma_temp must be finite and >= 0"):
        mdn.sample_from_output(row, 1, 3, sigma_temp=-1.0)
