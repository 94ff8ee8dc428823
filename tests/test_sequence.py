"""Tests of mdnkit.sequence: the MDN-RNN's loss on padded batches, generation and ONNX export.

Every number is checked against an independent computation: SciPy densities built from the raw
network outputs, PyTorch's own nn.LSTM / nn.GRU full-sequence forward, the core GaussianMixture's
closed-form moments (Monte Carlo with a stated tolerance), never the code's own output.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from mdnkit.layout import DEFAULT_MIN_SCALE
from mdnkit.mixture import GaussianMixture
from mdnkit.sequence import MDNRNN, Sampling, StepGenerator, pad_sequences, windows

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and (
    importlib.util.find_spec("onnx") is not None
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small recurrent nets train many times faster on one thread than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(pen_states: int, lengths=(6, 3, 9), d: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    seqs = []
    for n in lengths:
        u = rng.normal(3.0, 2.0, size=(n, d)).astype(np.float32)
        if pen_states:
            u = np.concatenate([u, rng.integers(0, pen_states, (n, 1)).astype(np.float32)], 1)
        seqs.append(u)
    return seqs


def _model(pen_states=0, cell="lstm", covariance="diagonal", d=2, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("hidden_size", 12)
    kw.setdefault("num_layers", 2)
    return MDNRNN(
        d, cell=cell, covariance=covariance, pen_states=pen_states, num_components=3, **kw
    )


# ------------------------------------------------------------------------------------ helpers
def test_pad_sequences_and_windows():
    x, lengths = pad_sequences([np.ones((2, 3)), np.full((4, 3), 2.0)], value=-1.0)
    assert x.shape == (2, 4, 3) and lengths.tolist() == [2, 4]
    assert torch.all(x[0, 2:] == -1.0) and torch.all(x[1] == 2.0)
    stream = np.arange(20.0).reshape(10, 2)
    w = windows(stream, length=4, stride=3)
    assert w.shape == (3, 4, 2)
    np.testing.assert_array_equal(w[1], stream[3:7])
    wt = windows(torch.from_numpy(stream), 5)
    assert isinstance(wt, torch.Tensor) and wt.shape == (2, 5, 2)
    with pytest.raises(ValueError, match="same event dimension"):
        pad_sequences([np.ones((2, 3)), np.ones((2, 2))])
    with pytest.raises(ValueError, match="fewer than one window"):
        windows(stream, 11)
    with pytest.raises(TypeError, match="list of"):
        pad_sequences(np.ones((2, 3, 1)))


def test_bad_inputs_name_expected_and_found():
    m = _model(pen_states=2)
    x, lengths = pad_sequences(_data(2))
    with pytest.raises(ValueError, match=r"\(B, T, 3\).*found \(3, 9, 2\)"):
        m.loss(x[..., :2], lengths)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=9\]"):
        m.loss(x, torch.tensor([6, 3, 10]))
    bad = x.clone()
    bad[0, 0, 2] = 2.0  # pen state 2 with only 2 states
    with pytest.raises(ValueError, match="pen-state index in 0..1"):
        m.loss(bad, lengths)
    with pytest.raises(ValueError, match=r"pen_states must be one of \(0, 2, 3\), found 1"):
        MDNRNN(2, pen_states=1)
    with pytest.raises(ValueError, match="temperature must be"):
        m.generator(temperature=-1.0)
    g = m.generator(batch=2)
    with pytest.raises(ValueError, match=r"shape \(2, 3\) for a batch of 2.*found \(4,\)"):
        g.step(np.zeros(4, np.float32))


def test_head_settings_live_in_the_head():
    """The model reads K, covariance, scale transform and floor from its head (never a copy),
    writes them into its config, and a config from an older file keeps its own floor."""
    m = _model(covariance="spherical", scale_transform="elu")
    lay = m.head.layout
    assert (m.num_components, m.covariance, m.scale_transform, m.min_scale, m.event_dim) == (
        lay.num_components,
        lay.covariance,
        lay.scale_transform,
        lay.min_scale,
        lay.out_features,
    )
    assert m.min_scale == DEFAULT_MIN_SCALE == 1e-3
    stored = vars(m)
    for name in ("num_components", "covariance", "scale_transform", "min_scale", "event_dim"):
        assert name not in stored
    cfg = m.config()
    assert cfg["min_scale"] == DEFAULT_MIN_SCALE and MDNRNN(**cfg).config() == cfg
    old = MDNRNN(**{**cfg, "min_scale": 1e-4})  # a file written when the default was 1e-4
    assert old.head.min_scale == 1e-4 and old.config()["min_scale"] == 1e-4
    with pytest.raises(ValueError, match=r"cell must be one of \('lstm', 'gru'\), found 'rnn'"):
        MDNRNN(2, cell="rnn")
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, found 0"):
        MDNRNN(2, hidden_size=0)


def test_sampling_settings_are_one_checked_object():
    m = _model(pen_states=2)
    m.prepare(*pad_sequences(_data(2)))
    s = Sampling(temperature=0.7, sigma_temperature=0.5, pen_temperature=2.0, batch=3, generator=4)
    assert s.root_sigma == pytest.approx(math.sqrt(0.5))
    g = m.generator(
        batch=3, temperature=0.7, sigma_temperature=0.5, pen_temperature=2.0, generator=4
    )
    assert g.sampling == s and g.batch == 3
    # the same settings give the same events, whichever way they were passed
    a = StepGenerator.from_sampling(m, s).generate(8)
    b = StepGenerator(m, 3, 0.7, 0.5, 2.0, 4).generate(8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, m.generate(8, None, 0.7, 0.5, 2.0, 4, 3).numpy())
    for kw, pattern in (
        (dict(sigma_temperature=math.inf), "sigma_temperature must be a finite number >= 0"),
        (dict(pen_temperature=-0.5), "pen_temperature must be a number >= 0, found -0.5"),
        (dict(batch=0), "batch must be a positive integer, found 0"),
    ):
        with pytest.raises(ValueError, match=pattern):
            m.generator(**kw)
    with pytest.raises(TypeError, match="generator must be None, an int seed"):
        Sampling(generator="seed")
    assert m.generate(3, temperature=math.inf, generator=0).shape == (1, 3, 3)  # uniform choice


# ------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("pen_states", [0, 2, 3])
def test_loss_matches_scipy(pen_states):
    """Sum-NLL of the batch against SciPy densities built from PyTorch's nn.LSTM outputs."""
    m = _model(pen_states=pen_states, d=2)
    seqs = _data(pen_states)
    x, lengths = pad_sequences(seqs)
    m.prepare(x, lengths)
    shift, scale = m.shift.double().numpy(), m.scale.double().numpy()
    total = 0.0
    k, d = 3, 2
    for s in seqs:
        s = s.astype(np.float64)
        n = s.shape[0]
        # network inputs: start token, then the standardised events with a one-hot pen state
        inp = np.zeros((n, m.input_size))
        inp[0, -1] = 1.0
        inp[1:, :d] = (s[:-1, :d] - shift) / scale
        if pen_states:
            inp[np.arange(1, n), d + s[:-1, d].astype(int)] = 1.0
        with torch.no_grad():
            h, _ = m.rnn(torch.tensor(inp, dtype=torch.float32)[None])
            raw = m.head.proj(h)[0].double().numpy()
            pen = m.pen(h)[0].double().numpy() if pen_states else None
        for t in range(n):
            loc = raw[t, : k * d].reshape(k, d) * scale + shift
            sig = (np.logaddexp(0, raw[t, k * d : 2 * k * d]) + m.min_scale).reshape(k, d) * scale
            logw = special.log_softmax(raw[t, 2 * k * d :])
            comp = [
                stats.multivariate_normal(loc[j], np.diag(sig[j] ** 2)).logpdf(s[t, :d])
                for j in range(k)
            ]
            total -= special.logsumexp(logw + np.array(comp))
            if pen_states:
                total -= special.log_softmax(pen[t])[int(s[t, d])]
    events = sum(len(s) for s in seqs)
    got_sum = float(m.loss(x, lengths, reduction="sum").detach())
    got_mean = float(m.loss(x, lengths).detach())
    assert got_sum == pytest.approx(total, rel=1e-5, abs=1e-4)
    assert got_mean == pytest.approx(total / events, rel=1e-5, abs=1e-5)
    ev = m.evaluate(x, lengths, batch_size=2)
    assert ev["nll"] == pytest.approx(total / events, rel=1e-5)
    assert ev["events"] == events
    assert (ev["pen_nll"] > 0) == bool(pen_states)


def test_nll_is_in_data_units():
    """Scaling the continuous data by c (after prepare) adds D log c to the NLL per event."""
    seqs = _data(2)
    c = 37.0
    scaled = [np.concatenate([s[:, :2] * c, s[:, 2:]], 1) for s in seqs]
    a, b = _model(pen_states=2, seed=3), _model(pen_states=2, seed=3)
    x, lengths = pad_sequences(seqs)
    xs, _ = pad_sequences(scaled)
    a.prepare(x, lengths)
    b.prepare(xs, lengths)
    with torch.no_grad():
        assert float(b.loss(xs, lengths)) == pytest.approx(
            float(a.loss(x, lengths)) + 2 * math.log(c), abs=2e-4
        )


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_changes_neither_loss_nor_gradients(cell):
    m = _model(pen_states=2, cell=cell)
    x, lengths = pad_sequences(_data(2))
    m.prepare(x, lengths)
    x2 = x.clone()
    pad = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
    x2[pad] = torch.tensor([float("nan"), 1e6, 7.0])  # garbage, NaN and an invalid pen state
    losses, grads = [], []
    for xx in (x, x2):
        m.zero_grad()
        loss = m.loss(xx, lengths)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.isfinite(losses[1])
    assert torch.equal(losses[0], losses[1])
    assert torch.isfinite(grads[1]).all()
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_no_leakage_between_sequences():
    """The batch's per-event NLL equals each sequence scored alone."""
    m = _model(pen_states=3, cell="gru")
    seqs = _data(3, lengths=(5, 9, 1, 7))
    x, lengths = pad_sequences(seqs)
    m.prepare(x, lengths)
    with torch.no_grad():
        batch = m.loss(x, lengths, reduction="none")
        for i, s in enumerate(seqs):
            alone = m.loss(torch.from_numpy(s)[None], reduction="none")[0]
            torch.testing.assert_close(batch[i, : len(s)], alone, rtol=1e-5, atol=1e-5)
            assert torch.all(batch[i, len(s) :] == 0)


# ------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("covariance", ["diagonal", "spherical", "full"])
def test_stateful_step_equals_full_sequence_forward(cell, covariance):
    m = _model(pen_states=2, cell=cell, covariance=covariance, d=3)
    seqs = _data(2, lengths=(8,), d=3)
    x = torch.from_numpy(seqs[0])[None]
    m.prepare(x)
    with torch.no_grad():
        mix, pen, _ = m(x)
        # continuing from a returned state equals one long forward
        mix_a, pen_a, state = m(x[:, :3])
        mix_b, pen_b, _ = m(x[:, 3:], state)
    torch.testing.assert_close(torch.cat([mix_a.loc, mix_b.loc], 1), mix.loc)
    torch.testing.assert_close(torch.cat([pen_a, pen_b], 1), pen)
    g = m.generator(generator=0)
    g.predict(None)  # the start token
    for t in range(x.shape[1]):
        p = g.predict(x[0, t].numpy())
        np.testing.assert_allclose(p["logits"][0], mix.logits[0, t].numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(p["loc"][0], mix.loc[0, t].numpy(), atol=1e-5, rtol=1e-5)
        if covariance == "full":
            want = mix.scale_tril[0, t].numpy()
            np.testing.assert_allclose(p["scale_tril"][0], want, atol=1e-5, rtol=1e-5)
        else:
            want = mix.scale[0, t].expand(3, 3).numpy()
            np.testing.assert_allclose(p["scale"][0], want, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(p["pen_logits"][0], pen[0, t].numpy(), atol=1e-5, rtol=1e-5)
    h_ref = state[0] if cell == "lstm" else state
    assert g.state[0].shape == tuple(h_ref.shape)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_conditioned_per_dimension_step_equals_full_sequence_forward(cell):
    """The parity above with per-step inputs, a context that sets the initial state, a
    per-dimension mixture and both extra heads (tests/test_conditioning.py covers more)."""
    torch.manual_seed(1)
    m = MDNRNN(
        3, hidden_size=12, num_layers=2, cell=cell, num_components=3, pen_states=2,
        input_dim=2, context_dim=3, mixture="per_dimension", done=True, reward=True,
    )  # fmt: skip
    x = torch.from_numpy(_data(2, lengths=(8,), d=3)[0])
    x = torch.cat([x[:, :4], torch.randn(8, 1), (torch.rand(8, 1) > 0.5).float()], -1)[None]
    inputs, context = torch.randn(1, 8, 2), torch.randn(1, 3)
    m.prepare(x, None, inputs, context)
    with torch.no_grad():
        out = m(x, None, inputs, context)
    g = m.generator(generator=0, context=context[0].numpy())
    g.predict(None, np.zeros(2, np.float32))  # forward reads the start token with zero inputs
    for t in range(x.shape[1]):
        p = g.predict(x[0, t].numpy(), inputs[0, t].numpy())
        want = {
            "logits": out.mixture.logits,
            "loc": out.mixture.loc,
            "scale": out.mixture.scale,
            "pen_logits": out.pen_logits,
            "done_logits": out.done_logits,
            "reward_loc": out.reward.loc,
            "reward_scale": out.reward.scale,
        }
        for name, ref in want.items():
            np.testing.assert_allclose(p[name][0], ref[0, t].numpy(), atol=1e-5, rtol=1e-5)
    assert p["scale_tril"] is None and p["loc"].shape == (1, 3, 3)  # (B, D, K)


def test_loss_takes_a_batch_tuple_positionally():
    """fit calls model.loss(*batch): (x, lengths), (x, lengths, None, None) and keyword-only
    reduction all work; a positional reduction is refused."""
    m = _model(pen_states=2)
    x, lengths = pad_sequences(_data(2))
    m.prepare(x, lengths, None, None)
    with torch.no_grad():
        a = m.loss(*(x, lengths))
        b = m.loss(*(x, lengths, None, None))
        assert torch.equal(a, b)
        assert m.loss(x, lengths, reduction="none").shape == (3, 9)
    with pytest.raises(ValueError, match="expected no per-step inputs"):
        m.loss(x, lengths, "sum")


# ------------------------------------------------------------------------------------ generation
def test_generate_shapes_seeds_and_types():
    m = _model(pen_states=2)
    m.prepare(*pad_sequences(_data(2)))
    a = m.generate(15, generator=7, batch=3, temperature=0.8)
    assert a.shape == (3, 15, 3) and a.dtype == torch.float32
    assert torch.equal(a, m.generate(15, generator=7, batch=3, temperature=0.8))
    assert not torch.equal(a, m.generate(15, generator=8, batch=3, temperature=0.8))
    assert set(a[..., 2].unique().tolist()) <= {0.0, 1.0}
    # the step generator gives the same events with the same seed, numpy or tensor in and out
    for batch in (1, 3):
        ref = m.generate(10, generator=5, batch=batch)
        g = m.generator(batch=batch, generator=5)
        e = g.step()
        got = [e]
        for i in range(9):
            e = np.asarray(e)
            e = g.step(torch.from_numpy(e) if i % 2 else e)
            assert isinstance(e, torch.Tensor if i % 2 else np.ndarray)
            got.append(np.asarray(e))
        got = np.stack(got, -2).reshape(batch, 10, 3)
        np.testing.assert_array_equal(got, ref.numpy())
        g.reset()  # forgets the past (the random stream goes on)
        np.testing.assert_array_equal(
            g.predict(None)["loc"], m.generator(batch=batch).predict(None)["loc"]
        )
    # a primed generation continues the prime: same as stepping through it by hand
    prime = torch.from_numpy(_data(2, lengths=(4,))[0])
    out = m.generate(5, prime=prime, generator=2)
    g = m.generator(generator=2)
    g.predict(None)
    for row in prime[:-1]:
        g.predict(row.numpy())
    first = g.step(prime[-1].numpy())
    np.testing.assert_array_equal(out[0, 0].numpy(), first)


def test_temperature_zero_is_greedy():
    """T = S = pen T = 0: each event is the mean of the most likely component (checked against the
    full-sequence forward over the generated events), identical for every seed, never NaN."""
    m = _model(pen_states=2, cell="gru")
    m.prepare(*pad_sequences(_data(2)))
    kw = dict(temperature=0.0, sigma_temperature=0.0, pen_temperature=0.0)
    a = m.generate(12, generator=1, **kw)
    assert torch.equal(a, m.generate(12, generator=99, **kw))
    assert torch.isfinite(a).all()
    with torch.no_grad():
        mix, pen, _ = m(a)
        g = m.generator()
        first = g.predict(None)
    k0 = first["logits"][0].argmax()
    np.testing.assert_allclose(a[0, 0, :2].numpy(), first["loc"][0, k0], rtol=1e-5, atol=1e-5)
    k = mix.logits[0, :-1].argmax(-1)
    want = mix.loc[0, :-1].gather(-2, k[:, None, None].expand(-1, 1, 2)).squeeze(-2)
    torch.testing.assert_close(a[0, 1:, :2], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[0, 1:, 2], pen[0, :-1].argmax(-1).float())


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_sampling_matches_tempered_mixture_moments(covariance):
    """Monte Carlo: 20000 first events vs the closed-form mean/variance of the tempered mixture
    (core GaussianMixture.with_temperature); tolerance 5 standard errors."""
    m = _model(pen_states=2, covariance=covariance)
    m.prepare(*pad_sequences(_data(2)))
    n, t, s, pt = 20000, 0.6, 0.5, 1.7
    g = m.generator(batch=n, temperature=t, sigma_temperature=s, pen_temperature=pt, generator=0)
    e = g.step()
    p = m.generator(batch=1).predict(None)
    if covariance == "full":
        mix = GaussianMixture(
            torch.from_numpy(p["logits"][0]).double(),
            torch.from_numpy(p["loc"][0]).double(),
            scale_tril=torch.from_numpy(p["scale_tril"][0]).double(),
        )
    else:
        mix = GaussianMixture(
            torch.from_numpy(p["logits"][0]).double(),
            torch.from_numpy(p["loc"][0]).double(),
            torch.from_numpy(p["scale"][0]).double(),
        )
    tm = mix.with_temperature(t, s)
    mean, var = tm.mean.numpy(), tm.variance.numpy()
    se = np.sqrt(var / n)
    assert np.all(np.abs(e[:, :2].mean(0) - mean) < 5 * se)
    # variance of the sample variance ~ (m4 - var^2)/n; bound m4 by 10 var^2 for a mixture
    assert np.all(np.abs(e[:, :2].var(0) - var) < 5 * np.sqrt(10 * var**2 / n))
    probs = special.softmax(p["pen_logits"][0] / pt)
    freq = np.bincount(e[:, 2].astype(int), minlength=2) / n
    assert np.all(np.abs(freq - probs) < 5 * np.sqrt(probs * (1 - probs) / n))


# ------------------------------------------------------------------------------------ training
def test_training_learns_a_bimodal_sequence():
    """Zig-zag steps (keep direction w.p. 0.8, N(0, 0.05^2) noise): the NLL per event gets within
    0.35 nats of the true conditional entropy after a short training run."""
    rng = np.random.default_rng(0)
    n, length = 128, 25
    flips = rng.random((n, length)) < 0.2
    direction = rng.choice([-1.0, 1.0], (n, 1)) * np.cumprod(np.where(flips, -1.0, 1.0), 1)
    x = (0.5 * direction + 0.05 * rng.standard_normal((n, length)))[..., None].astype(np.float32)
    x = torch.from_numpy(x)
    best = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) + 0.5 * math.log(
        2 * math.pi * math.e * 0.05**2
    )
    torch.manual_seed(0)
    m = MDNRNN(1, hidden_size=16, num_layers=1, num_components=2).prepare(x)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = m.loss(x)
        loss.backward()
        opt.step()
    # events after the first: the first event's direction is a coin flip (log 2 more)
    per_event = m.loss(x, reduction="none").detach()[:, 1:].mean()
    assert float(per_event) < best + 0.35


def test_fit_integration():
    training = pytest.importorskip("mdnkit.training")
    x, lengths = pad_sequences(_data(2, lengths=(6, 3, 9, 4, 8, 5, 7, 2)))
    m = _model(pen_states=2)
    with torch.no_grad():
        before = float(m.prepare(x, lengths).loss(x, lengths))
    hist = training.fit(m, x, lengths, epochs=5, batch_size=4, validation_split=0.0, seed=0)
    assert len(hist.train_nll) >= 1
    with torch.no_grad():
        assert float(m.loss(x, lengths)) < before


def test_io_round_trip(tmp_path):
    io = pytest.importorskip("mdnkit.io")
    m = _model(pen_states=3, cell="gru", covariance="full", d=3)
    x, lengths = pad_sequences(_data(3, d=3))
    m.prepare(x, lengths)
    path = tmp_path / "rnn.mdn"
    io.save(m, path)
    m2 = io.load(path)
    assert isinstance(m2, MDNRNN) and m2.config() == m.config()
    torch.testing.assert_close(m2.scale, m.scale)
    with torch.no_grad():
        assert float(m2.loss(x, lengths)) == pytest.approx(float(m.loss(x, lengths)), rel=1e-6)


# ------------------------------------------------------------------------------------ ONNX
@pytest.mark.skipif(not HAS_ORT, reason="onnx / onnxruntime not installed")
@pytest.mark.parametrize(
    "cell,covariance,pen_states",
    [("lstm", "diagonal", 0), ("gru", "full", 2), ("lstm", "spherical", 3)],
)
def test_onnx_export_matches_pytorch(tmp_path, cell, covariance, pen_states):
    from mdnkit.sequence import OnnxGenerator, export_onnx

    m = _model(pen_states=pen_states, cell=cell, covariance=covariance, d=3)
    seqs = _data(pen_states, lengths=(6, 6), d=3)
    x, lengths = pad_sequences(seqs)
    m.prepare(x, lengths)
    path = tmp_path / "step.onnx"
    export_onnx(m, path)
    with torch.no_grad():
        mix, pen, _ = m(x)
    og = OnnxGenerator(path, batch=2, generator=4)
    og.predict(None)
    for t in range(6):
        p = og.predict(x[:, t].numpy())
        np.testing.assert_allclose(p["logits"], mix.logits[:, t].numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(p["loc"], mix.loc[:, t].numpy(), atol=1e-5, rtol=1e-5)
        if covariance == "full":
            np.testing.assert_allclose(
                p["scale_tril"], mix.scale_tril[:, t].numpy(), atol=1e-5, rtol=1e-5
            )
        else:
            want = mix.scale[:, t].expand(2, 3, 3).numpy()
            np.testing.assert_allclose(p["scale"], want, atol=1e-5, rtol=1e-5)
        if pen_states:
            np.testing.assert_allclose(p["pen_logits"], pen[:, t].numpy(), atol=1e-5, rtol=1e-5)
    # same seed, same events as the PyTorch model's generator (one stream and a batch)
    for batch in (1, 3):
        a = OnnxGenerator(path, batch=batch, temperature=0.7, generator=11).generate(25)
        b = m.generate(25, batch=batch, temperature=0.7, generator=11).numpy()
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    assert isinstance(m.generator(), StepGenerator)


def test_high_dimensional_events():
    """D = 64: the loss is finite, the step generator follows the forward, shapes hold."""
    torch.manual_seed(0)
    m = MDNRNN(64, hidden_size=16, num_layers=1, num_components=2)
    x = torch.randn(2, 5, 64) * 3.0
    m.prepare(x)
    with torch.no_grad():
        assert torch.isfinite(m.loss(x))
        mix, _, _ = m(x)
    g = m.generator()
    g.predict(None)
    p = g.predict(x[0, 0].numpy())
    np.testing.assert_allclose(p["loc"][0], mix.loc[0, 0].numpy(), atol=1e-5, rtol=1e-5)
    assert m.generate(4, generator=0).shape == (1, 4, 64)


# ------------------------------------------------------------------ the autograd-free LSTM step
def _fast_case(pen_states=2, lengths=(7, 3, 7, 1, 5), layers=1, dtype=torch.float64, **kw):
    """A model with perturbed weights (so no gradient is trivially zero) and a batch tuple."""
    torch.manual_seed(1)
    m = MDNRNN(2, hidden_size=7, num_layers=layers, num_components=3, pen_states=pen_states, **kw)
    m = m.to(dtype)
    x, lens = pad_sequences(_data(pen_states, lengths=lengths))
    x = x.to(dtype)
    # padding holds NaN: it must never reach the step (as model.loss ignores it)
    x[torch.arange(x.shape[1])[None, :] >= lens[:, None]] = float("nan")
    data = [x, lens]
    b, t = x.shape[0], x.shape[1]
    if kw.get("input_dim"):
        data.append(torch.randn(b, t, kw["input_dim"], dtype=dtype))
    if kw.get("context_dim"):
        data.append(torch.randn(b, kw["context_dim"], dtype=dtype))
    m.prepare(x, lens)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m, data


def _fast_and_autograd(m, data):
    """(fast loss, {parameter name: fast gradient}, autograd loss, {name: autograd gradient})."""
    named = list(m.named_parameters())
    ref = m.loss(*data)
    grads = torch.autograd.grad(ref, [p for _, p in named])
    step = m.fast_step(*data)
    assert step is not None, "the fast step should apply to this model"
    with step.attached():
        loss = step(*step.prepare(*data))
        # the parameters are views of the flat buffer here; their gradients are in flat.grad
        own = {id(p): g.clone() for p, g in zip(step.buffers.params, step.buffers.grads)}
    fast = {name: own[id(p)] for name, p in named}
    return loss, fast, ref.detach(), dict(zip([n for n, _ in named], grads))


@pytest.mark.parametrize(
    "case",
    [
        {},  # ragged lengths: packed steps
        {"lengths": (6, 6, 6)},  # every sequence as long as the longest
        {"pen_states": 0, "layers": 2},
        {"pen_states": 3, "layers": 3, "covariance": "spherical", "lengths": (4, 9, 2)},
        {"input_dim": 2, "context_dim": 3, "context_init": False, "layers": 2},
        {"scale_transform": "exp", "lengths": (1, 3, 1)},
    ],
    ids=["ragged", "uniform", "two-layers", "three-layers-spherical", "conditioned", "exp"],
)
def test_fast_step_equals_autograd(case):
    """Loss and every gradient of the hand-written step equal autograd's through nn.LSTM and the
    mixture's log_prob (float64: to 1e-12 relative for the loss, 1e-9 for the gradients)."""
    case = dict(case)
    m, data = _fast_case(
        case.pop("pen_states", 2), case.pop("lengths", (7, 3, 7, 1, 5)), case.pop("layers", 1),
        **case,
    )  # fmt: skip
    loss, fast, ref, grads = _fast_and_autograd(m, data)
    assert float(loss) == pytest.approx(float(ref), rel=1e-12)
    for name, g in grads.items():
        assert float(g.abs().max()) > 0, name
        torch.testing.assert_close(fast[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_fast_step_float32_agrees_with_autograd():
    """In float32 the two differ by rounding only: tanh as 2 sigmoid(2x) - 1 and other
    summation orders (5e-5 relative on the gradient's norm, 1e-5 on the loss)."""
    m, data = _fast_case(dtype=torch.float32, lengths=(9, 4, 9, 6))
    loss, fast, ref, grads = _fast_and_autograd(m, data)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    diff = torch.cat([(fast[n] - g).reshape(-1) for n, g in grads.items()]).norm()
    norm = torch.cat([g.reshape(-1) for g in grads.values()]).norm()
    assert float(diff / norm) < 5e-5


@pytest.mark.parametrize("lengths", [(40, 40, 40), (40, 17, 33, 1, 40, 8)])
def test_fast_lstm_forward_equals_nn_lstm_in_float32(lengths):
    """The hand-unrolled forward (g gate through a sigmoid of -2x, the cell kept as -2c, tanh c
    as 1 - 2 sigmoid(-2c)) gives nn.LSTM's outputs to float32 rounding, with weights large
    enough that gates saturate and cells grow far from 0 (where a scaled variable could lose
    precision or overflow)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from mdnkit.sequence.fast import PackedBatch, Workspace, lstm_forward, lstm_weights

    torch.manual_seed(3)
    hs, width = 16, 3
    lstm = torch.nn.LSTM(width, hs, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(8.0)
        lstm.bias_ih_l0[: 3 * hs].add_(12.0)  # i, f, g near 1 for most units: c grows with t
    lens = torch.tensor(lengths)
    x = torch.randn(len(lengths), max(lengths), width)
    ref = lstm(pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False))[0].data
    ones = torch.ones(*x.shape[:2], 1)
    batch = PackedBatch.pack(torch.cat([x, ones], -1), lens)
    n, first = batch.rows.shape[0], batch.sizes[0]
    hx = torch.zeros(n + first, hs + width + 1)
    hx[:n, hs:] = batch.rows
    w = lstm_weights(
        *(p.detach() for p in lstm.parameters()), out=torch.empty(hs + width + 1, 4 * hs)
    )
    _, out = lstm_forward(hx, w, batch, Workspace())
    with torch.no_grad():  # the cells do grow large: |c| in the tens
        _, (_, c_last) = lstm(x[:, : max(lengths)])
    assert float(c_last.abs().max()) > 20
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"cell": "gru"},
        {"dropout": 0.1},  # between the two layers
        {"context_dim": 2},  # context_init: the context sets the initial state
        {"done": True},
        {"reward": True},
        {"mixture": "per_dimension"},
        {"covariance": "full"},
    ],
)
def test_fast_step_steps_aside_where_its_formulas_do_not_hold(kw):
    m = MDNRNN(2, hidden_size=4, num_layers=2, num_components=2, **kw)
    x = torch.zeros(2, 3, m.columns)
    assert m.fast_step(x) is None
    assert MDNRNN(2, hidden_size=4).half().fast_step(x.half()) is None
    frozen = MDNRNN(2, hidden_size=4)
    frozen.rnn.weight_hh_l0.requires_grad_(False)
    assert frozen.fast_step(x) is None


def test_fit_with_the_fast_step_trains_as_autograd_does(monkeypatch):
    """fit with the fast step and fit on autograd (the step switched off) give the same history
    and weights (float64, same seed), and the parameters get their own storage back."""
    training = pytest.importorskip("mdnkit.training")
    x, lengths = pad_sequences(_data(2, lengths=(6, 3, 9, 4, 8, 5, 7, 2)))
    x = x.double()
    runs = []
    made: list = []

    def offer(own):
        return lambda *data: made.append(own(*data)) or made[-1]

    for fast in (True, False):
        m = _model(pen_states=2).double()
        monkeypatch.setattr(m, "fast_step", offer(m.fast_step) if fast else lambda *d: None)
        hist = training.fit(m, x, lengths, epochs=3, batch_size=4, validation_split=0.0, seed=0)
        runs.append((hist.train_nll, [p.detach().clone() for p in m.parameters()], m))
    assert type(made[0]).__name__ == "LSTMFastStep"
    (h_fast, w_fast, m), (h_auto, w_auto, _) = runs
    assert h_fast == pytest.approx(h_auto, rel=1e-9)
    for a, b in zip(w_fast, w_auto):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    ptrs = [p.data_ptr() for p in m.parameters()]
    assert len(set(ptrs)) == len(ptrs) and all(p.grad is None for p in m.parameters())


def test_fast_step_checks_the_data_as_the_loss_does():
    x, lengths = pad_sequences(_data(2))
    x[0, 1, 2] = 5.0  # not a pen state
    m = _model(pen_states=2)
    with pytest.raises(ValueError, match="pen-state index in 0..1") as autograd:
        m.loss(x, lengths)
    step = m.fast_step(x, lengths)
    with pytest.raises(ValueError, match="pen-state index in 0..1") as fast:
        step.prepare(x, lengths)
    assert str(fast.value) == str(autograd.value)


@pytest.mark.parametrize("threads, lengths", [(2, (7, 3, 9, 4, 8, 5, 7, 2) * 3), (3, (6,) * 30)])
def test_fast_step_in_parts_on_threads_equals_autograd(threads, lengths):
    """With several threads a batch runs in parts side by side (ragged: dealt out by length;
    uniform: cut in slices); the summed loss and gradients are still autograd's, and the thread
    count is one inside the context and restored after it."""
    torch.manual_seed(0)
    m = MDNRNN(2, hidden_size=7, num_layers=2, num_components=3, pen_states=2).double()
    x, lens = pad_sequences(_data(2, lengths=lengths))
    x = x.double()
    m.prepare(x, lens)
    ref = m.loss(x, lens)
    grads = torch.autograd.grad(ref, list(m.parameters()))
    torch.set_num_threads(threads)  # (the module's fixture restores one thread)
    step = m.fast_step(x, lens)
    step.max_parts = threads  # (2 by default: 3 runs the general code)
    with step.attached():
        assert torch.get_num_threads() == 1
        features, lengths_ = step.prepare(x, lens)
        assert len(step._split(features, lengths_)) == threads
        loss = step(features, lengths_)
        own = {id(p): g.clone() for p, g in zip(step.buffers.params, step.buffers.grads)}
    assert torch.get_num_threads() == threads
    assert float(loss) == pytest.approx(float(ref.detach()), rel=1e-12)
    for p, g in zip(m.parameters(), grads):
        torch.testing.assert_close(own[id(p)], g, rtol=1e-9, atol=1e-12)
