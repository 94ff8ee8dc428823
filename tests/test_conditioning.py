"""Tests of the MDN-RNN's conditioning (per-step inputs, per-sequence context), per-dimension
mixtures and extra heads (done, reward), in the three runtimes.

Every number is checked against an independent computation: the recurrent input built by hand
from the documented alignment and run through PyTorch's own nn.LSTM / nn.GRU, SciPy densities
from the raw network outputs, and models trained on tasks that cannot be solved without the
conditioning.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from mdnkit import load, save
from mdnkit.mixture import GaussianMixture
from mdnkit.per_dimension import PerDimensionMixture
from mdnkit.sequence import MDNRNN, SequenceOutput
from mdnkit.training import fit

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and (
    importlib.util.find_spec("onnx") is not None
)
NEW_KEYS = ("input_dim", "context_dim", "context_init", "mixture", "done", "reward")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed=0, d=2, **kw):
    torch.manual_seed(seed)
    kw.setdefault("hidden_size", 10)
    kw.setdefault("num_layers", 2)
    kw.setdefault("num_components", 3)
    return MDNRNN(d, **kw)


def _batch(m: MDNRNN, lengths=(6, 3, 5), seed=0):
    """Random events (valid pen/done columns), lengths, inputs and context for model ``m``."""
    rng = np.random.default_rng(seed)
    b, t = len(lengths), max(lengths)
    x = rng.normal(2.0, 3.0, (b, t, m.columns)).astype(np.float32)
    if m.pen_states:
        x[..., m.event_dim] = rng.integers(0, m.pen_states, (b, t))
    if m.done:
        x[..., m.done_column] = rng.integers(0, 2, (b, t))
    lengths = torch.tensor(lengths)
    inputs = torch.randn(b, t, m.input_dim) if m.input_dim else None
    context = torch.randn(b, m.context_dim) if m.context_dim else None
    return torch.from_numpy(x), lengths, inputs, context


# ------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_loss_follows_the_documented_alignment(cell):
    """Per-event NLL against SciPy on outputs of PyTorch's own RNN, its inputs built by hand:
    the step predicting x[t] reads [encode(x[t-1]) or the start token, inputs[t], context]
    from the state split(tanh(W context + b)); reward (Gaussian) and done (Bernoulli) added."""
    m = _model(cell=cell, input_dim=2, context_dim=3, pen_states=2, reward=True, done=True)
    x, lengths, inputs, context = _batch(m)
    m.prepare(x, lengths)
    d, k, hd, layers = 2, 3, m.hidden_size, m.num_layers
    sh, sc = m.shift.double().numpy(), m.scale.double().numpy()
    rs, rsc = float(m.reward_shift), float(m.reward_scale)
    got = m.loss(x, lengths, inputs, context, reduction="none").detach().double().numpy()
    for b, n in enumerate(lengths.tolist()):
        s = x[b, :n].double().numpy()
        inp = np.zeros((n, m.input_size))
        inp[0, d + 2] = 1.0  # the start flag
        inp[1:, :d] = (s[:-1, :d] - sh) / sc
        inp[np.arange(1, n), d + s[:-1, d].astype(int)] = 1.0
        inp[:, d + 3 : d + 5] = inputs[b, :n].numpy()
        inp[:, d + 5 :] = context[b].numpy()
        with torch.no_grad():
            init = torch.tanh(m.state_init(context[b : b + 1]))[0]
            if cell == "lstm":
                hc = init.reshape(layers, 2, hd)
                state = (hc[:, 0, None].contiguous(), hc[:, 1, None].contiguous())
            else:
                state = init.reshape(layers, 1, hd)
            h, _ = m.rnn(torch.tensor(inp, dtype=torch.float32)[None], state)
            raw = m.head.proj(h)[0].double().numpy()
            pen = m.pen(h)[0].double().numpy()
            done = m.done_head(h)[0, :, 0].double().numpy()
            rew = m.reward_head(h)[0].double().numpy()
        for t in range(n):
            loc = raw[t, : k * d].reshape(k, d) * sc + sh
            sig = (np.logaddexp(0, raw[t, k * d : 2 * k * d]) + m.min_scale).reshape(k, d) * sc
            logw = special.log_softmax(raw[t, 2 * k * d :])
            comp = [stats.norm(loc[j], sig[j]).logpdf(s[t, :d]).sum() for j in range(k)]
            want = -special.logsumexp(logw + np.array(comp))
            want -= special.log_softmax(pen[t])[int(s[t, d])]
            r_sig = (np.logaddexp(0, rew[t, 1]) + m.min_scale) * rsc
            want -= stats.norm(rew[t, 0] * rsc + rs, r_sig).logpdf(s[t, d + 1])
            want -= stats.bernoulli(special.expit(done[t])).logpmf(int(s[t, d + 2]))
            assert got[b, t] == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert np.all(got[b, n:] == 0)
    ev = m.evaluate(x, lengths, inputs, context, batch_size=2)
    assert ev["nll"] == pytest.approx(got.sum() / lengths.sum().item(), rel=1e-5)
    assert ev["reward_nll"] != 0 and ev["done_nll"] > 0 and ev["pen_nll"] > 0


def test_per_dimension_loss_matches_scipy():
    """mixture="per_dimension": the NLL is the sum over dimensions of 1-D K-mixtures."""
    m = _model(d=3, mixture="per_dimension", num_layers=1)
    x, lengths, _, _ = _batch(m)
    m.prepare(x, lengths)
    with torch.no_grad():
        out = m(x)
        assert isinstance(out.mixture, PerDimensionMixture)
        assert out.mixture.loc.shape == (3, 6, 3, 3)  # (B, T, D, K)
        mix = out.mixture
        lp = mix.log_prob(x[:, 1:2].expand(-1, 6, -1)).double().numpy()
    w, loc, sig = (t.double().numpy() for t in (mix.weights, mix.loc, mix.scale))
    for b in range(3):
        for t in range(6):
            y = x[b, 1].double().numpy()
            want = sum(
                math.log(np.sum(w[b, t, j] * stats.norm(loc[b, t, j], sig[b, t, j]).pdf(y[j])))
                for j in range(3)
            )
            assert lp[b, t] == pytest.approx(want, rel=1e-5, abs=1e-5)
    # and the loss of the first events is that density from the start token
    with torch.no_grad():
        g = m.generator()
        first = g.predict(None)
        p0 = PerDimensionMixture(*(torch.from_numpy(first[n]) for n in ("logits", "loc", "scale")))
        want = -p0.log_prob(x[:, 0]).double()
        got = m.loss(x, lengths, reduction="none")[:, 0].double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_padding_is_inert_with_inputs_and_context():
    """NaN and garbage in padded steps of x and of inputs change neither loss nor gradients."""
    m = _model(input_dim=2, context_dim=2, pen_states=2, done=True, reward=True)
    x, lengths, inputs, context = _batch(m)
    m.prepare(x, lengths)
    pad = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
    x2, in2 = x.clone(), inputs.clone()
    x2[pad] = float("nan")
    in2[pad] = torch.tensor([float("nan"), 1e9])
    losses, grads = [], []
    for xx, ii in ((x, inputs), (x2, in2)):
        m.zero_grad()
        loss = m.loss(xx, lengths, ii, context)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.isfinite(losses[1]) and torch.equal(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    # each sequence scores alone what it scores in the batch
    with torch.no_grad():
        full = m.loss(x2, lengths, in2, context, reduction="none")
        for b, n in enumerate(lengths.tolist()):
            alone = m.loss(x[b : b + 1, :n], None, inputs[b : b + 1, :n], context[b : b + 1])
            assert float(full[b, :n].mean()) == pytest.approx(float(alone), rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------ runtimes
CASES = [
    dict(cell="lstm", input_dim=2, context_dim=3),
    dict(cell="gru", input_dim=1, context_dim=2, pen_states=2, context_init=False),
    dict(cell="lstm", context_dim=2, mixture="per_dimension", done=True, reward=True),
    dict(cell="gru", input_dim=2, mixture="per_dimension", pen_states=3, reward=True),
]


def _reference(m: MDNRNN, x, inputs, context):
    """forward over x (inputs read with x[:, t]), and the same as a list of predict dicts."""
    with torch.no_grad():
        out = m(x, None, inputs, context)
    mix = out.mixture
    rows = []
    for t in range(x.shape[1]):
        r = {"logits": mix.logits[:, t], "loc": mix.loc[:, t]}
        if isinstance(mix, GaussianMixture):
            r["scale"] = mix.scale[:, t].expand_as(mix.loc[:, t])
        else:
            r["scale"] = mix.scale[:, t]
        if out.pen_logits is not None:
            r["pen_logits"] = out.pen_logits[:, t]
        if out.done_logits is not None:
            r["done_logits"] = out.done_logits[:, t]
        if out.reward is not None:
            r["reward_loc"], r["reward_scale"] = out.reward.loc[:, t], out.reward.scale[:, t]
        rows.append(r)
    return rows


def _check_runtime(g, m, x, inputs, context):
    rows = _reference(m, x, inputs, context)
    zero = None if inputs is None else np.zeros((x.shape[0], m.input_dim), np.float32)
    first = g.predict(None, zero)  # the start token, with zero inputs as forward reads it
    for t, ref in enumerate(rows):
        p = g.predict(x[:, t].numpy(), None if inputs is None else inputs[:, t].numpy())
        for name, want in ref.items():
            np.testing.assert_allclose(p[name], want.numpy(), atol=1e-5, rtol=1e-5, err_msg=name)
        for name in ("pen_logits", "done_logits", "reward_loc"):
            assert (p[name] is None) == (name not in ref)
    if m.context_init:  # the start token begins a sequence from the context's state
        again = g.predict(None, zero)
        np.testing.assert_allclose(again["loc"], first["loc"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kw", CASES)
def test_step_generator_matches_forward(kw):
    m = _model(d=3, **kw)
    x, lengths, inputs, context = _batch(m, lengths=(7, 7))
    m.prepare(x, lengths)
    g = m.generator(batch=2, context=None if context is None else context.numpy())
    _check_runtime(g, m, x, inputs, context)
    # continuing from a returned state equals one long forward, conditioning included
    with torch.no_grad():
        whole = m(x, None, inputs, context)
        a = m(x[:, :3], None, None if inputs is None else inputs[:, :3], context)
        b = m(x[:, 3:], a.state, None if inputs is None else inputs[:, 3:], context)
    torch.testing.assert_close(torch.cat([a.mixture.loc, b.mixture.loc], 1), whole.mixture.loc)


@pytest.mark.skipif(not HAS_ORT, reason="onnx / onnxruntime not installed")
@pytest.mark.parametrize("kw", CASES)
def test_onnx_step_matches_forward_and_the_numpy_generator(tmp_path, kw):
    from mdnkit.sequence import OnnxGenerator, export_onnx

    m = _model(d=3, **kw)
    x, lengths, inputs, context = _batch(m, lengths=(6, 6))
    m.prepare(x, lengths)
    path = tmp_path / "step.onnx"
    export_onnx(m, path)
    ctx = None if context is None else context.numpy()
    _check_runtime(OnnxGenerator(path, batch=2, context=ctx), m, x, inputs, context)
    # the same seed gives the same events in both runtimes (one stream and a batch)
    for batch in (1, 3):
        c = None if context is None else context[0].numpy()
        seq = None if inputs is None else np.random.default_rng(1).normal(size=(9, m.input_dim))
        a = OnnxGenerator(path, batch=batch, temperature=0.7, generator=5, context=c)
        b = m.generate(9, batch=batch, temperature=0.7, generator=5, inputs=seq, context=c)
        np.testing.assert_allclose(a.generate(9, inputs=seq), b.numpy(), atol=1e-4, rtol=1e-4)


def test_generate_aligns_inputs_with_prime_and_new_events():
    """generate's inputs row j conditions event j of prime + new events: the same as stepping
    by hand; and the done / reward columns are sampled (0/1 flags, finite rewards)."""
    m = _model(input_dim=2, context_dim=1, pen_states=2, done=True, reward=True)
    x, lengths, _, _ = _batch(m)
    m.prepare(x, lengths)
    prime = x[0, :3]
    seq = torch.randn(8, 2)
    out = m.generate(5, prime=prime, inputs=seq, context=[0.5], generator=3)
    g = m.generator(context=np.array([0.5]), generator=3)
    g.predict(None, seq[0])
    for i in range(2):
        g.predict(prime[i].numpy(), seq[i + 1])
    e = g.step(prime[2].numpy(), seq[3])
    got = [e]
    for i in range(4):
        e = g.step(e, seq[4 + i])
        got.append(e)
    np.testing.assert_array_equal(np.stack(got), out[0].numpy())
    many = m.generate(40, inputs=torch.randn(40, 2), context=[0.0], batch=4, generator=0)
    assert set(many[..., m.done_column].unique().tolist()) <= {0.0, 1.0}
    assert torch.isfinite(many[..., m.reward_column]).all()


# ------------------------------------------------------------------------------------ learning
def _train(m: MDNRNN, data: tuple, steps: int, lr: float = 1e-2) -> None:
    m.prepare(*data)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        m.loss(*data).backward()
        opt.step()


def test_context_changes_predictions():
    """Two classes of sequences around means -1 and +1 (noise 0.3): with the class one-hot as
    context the first event is predictable; swapping every sequence's context costs nats."""
    rng = np.random.default_rng(0)
    n, length = 64, 8
    cls = rng.integers(0, 2, n)
    x = (np.where(cls, 1.0, -1.0)[:, None] + 0.3 * rng.standard_normal((n, length)))[..., None]
    x = torch.tensor(x, dtype=torch.float32)
    ctx = torch.nn.functional.one_hot(torch.from_numpy(cls), 2).float()
    m = _model(d=1, hidden_size=16, num_layers=1, num_components=2, context_dim=2)
    _train(m, (x, None, None, ctx), 200)
    with torch.no_grad():
        right = float(m.loss(x, None, None, ctx))
        swapped = float(m.loss(x, None, None, ctx.flip(-1)))
        first = float(m.loss(x, None, None, ctx, reduction="none")[:, 0].mean())
    best_first = 0.5 * math.log(2 * math.pi * math.e * 0.09)  # the noise's entropy
    assert first < best_first + 0.5  # the context told the model the class
    assert swapped > right + 1.0


def test_inputs_change_predictions():
    """x[t] = inputs[t] + N(0, 0.1^2): only a model that reads inputs[t] when predicting x[t]
    (the documented alignment) reaches the noise's entropy; shuffled inputs lose many nats."""
    rng = np.random.default_rng(1)
    n, length = 48, 10
    a = rng.standard_normal((n, length, 1))
    x = torch.tensor(a + 0.1 * rng.standard_normal((n, length, 1)), dtype=torch.float32)
    inputs = torch.tensor(a, dtype=torch.float32)
    m = _model(d=1, hidden_size=16, num_layers=1, num_components=1, input_dim=1)
    _train(m, (x, None, inputs), 300)
    entropy = 0.5 * math.log(2 * math.pi * math.e * 0.01)
    with torch.no_grad():
        right = float(m.loss(x, None, inputs))
        perm = torch.from_numpy(np.random.default_rng(2).permutation(length))
        shuffled = float(m.loss(x, None, inputs[:, perm]))
    assert right < entropy + 0.6
    assert shuffled > right + 3.0


def test_fit_takes_the_conditioning_in_its_batches():
    m = _model(input_dim=1, context_dim=2, num_layers=1)
    x, lengths, _, _ = _batch(m, lengths=(6, 3, 5, 4, 6, 2, 5, 6))
    inputs, context = torch.randn(8, 6, 1), torch.randn(8, 2)
    with torch.no_grad():
        before = float(m.prepare(x, lengths).loss(x, lengths, inputs, context))
    fit(m, (x, lengths, inputs, context), epochs=4, batch_size=4, validation_split=0.0, seed=0)
    with torch.no_grad():
        assert float(m.loss(x, lengths, inputs, context)) < before


# ------------------------------------------------------------------------------------ files, errors
def test_save_load_round_trip_and_old_configs(tmp_path):
    m = _model(
        cell="gru", input_dim=2, context_dim=3, mixture="per_dimension", done=True, reward=True
    )
    x, lengths, inputs, context = _batch(m)
    m.prepare(x, lengths)
    save(m, tmp_path / "m.mdn")
    m2 = load(tmp_path / "m.mdn")
    assert m2.config() == m.config() and all(m2.config()[k] == m.config()[k] for k in NEW_KEYS)
    with torch.no_grad():
        assert float(m2.loss(x, lengths, inputs, context)) == pytest.approx(
            float(m.loss(x, lengths, inputs, context)), rel=1e-6
        )
    # a config and weights written before these settings existed load with the old behaviour
    old = _model(pen_states=2)
    cfg = {k: v for k, v in old.config().items() if k not in NEW_KEYS}
    again = MDNRNN(**cfg)
    again.load_state_dict(old.state_dict())  # strict: no new tensor is expected
    assert again.config() == old.config() and again.input_size == 2 + 2 + 1
    assert again.config()["mixture"] == "joint" and not again.done and not again.reward


def test_errors_name_expected_and_found():
    m = _model(input_dim=2, context_dim=3)
    x, lengths, inputs, context = _batch(m)
    with pytest.raises(
        ValueError, match=r"per-step inputs of shape \(B, T, 2\) = \(3, 6, 2\).*None"
    ):
        m.loss(x, lengths, None, context)
    with pytest.raises(ValueError, match=r"\(B, T, input_dim\) = \(3, 6, 2\), found \(3, 6, 1\)"):
        m.loss(x, lengths, inputs[..., :1], context)
    with pytest.raises(ValueError, match=r"context of shape \(B, 3\) = \(3, 3\).*found None"):
        m(x, None, inputs)
    with pytest.raises(ValueError, match=r"\(B, context_dim\) = \(3, 3\), found \(2, 3\)"):
        m.evaluate(x, lengths, inputs, context[:2])
    plain = _model()
    with pytest.raises(ValueError, match=r"no per-step inputs .*input_dim=0.*\(3, 6, 2\)"):
        plain.loss(x, lengths, inputs)
    with pytest.raises(ValueError, match=r"no context .*context_dim=0.*found a context of shape"):
        plain.generate(3, context=[1.0, 2.0])
    g = m.generator(batch=3, context=context)
    with pytest.raises(ValueError, match=r"per-step inputs of shape \(3, 2\).*found None"):
        g.step()
    with pytest.raises(ValueError, match=r"shape \(3, 2\) for 3 stream\(s\), found \(2,\)"):
        g.step(None, np.zeros(2))
    with pytest.raises(ValueError, match=r"context of shape \(3,\) or \(1, 3\).*found None"):
        m.generator()
    with pytest.raises(
        ValueError, match=r"inputs of shape \(4, 2\) or \(1, 4, 2\).*found \(3, 2\)"
    ):
        m.generate(4, inputs=np.zeros((3, 2)), context=np.zeros(3))
    with pytest.raises(ValueError, match="needs covariance='diagonal', found covariance='full'"):
        MDNRNN(2, covariance="full", mixture="per_dimension")
    with pytest.raises(ValueError, match=r"mixture must be one of \('joint', 'per_dimension'\)"):
        MDNRNN(2, mixture="independent")
    with pytest.raises(TypeError, match="done must be True or False, found 'yes'"):
        MDNRNN(2, done="yes")
    d = _model(done=True)
    bad = torch.zeros(1, 4, 3)
    bad[0, 1, 2] = 2.0
    with pytest.raises(
        ValueError, match=r"done column must hold values in \[0, 1\], found \[2.0\]"
    ):
        d.loss(bad)
    with pytest.raises(ValueError, match=r"\(B, T, 3\) \(2 continuous \+ 1 done column\)"):
        d.loss(torch.zeros(1, 4, 2))


def test_output_unpacks_as_before():
    m = _model(done=True, reward=True)
    out = m(torch.zeros(2, 4, 4))
    assert isinstance(out, SequenceOutput) and isinstance(out, tuple) and len(out) == 3
    mixture, pen, state = out
    assert mixture is out.mixture and pen is None and state is out.state
    assert out.done_logits.shape == (2, 4) and out.reward.mean.shape == (2, 4)
