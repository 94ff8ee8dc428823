"""The speed paths against their references, never against their own output, and no timings.

* The NumPy training step of an MLP MDN (:class:`mdnkit.fast.MLPFastStep` on the CPU) against
  autograd through the mixture (``mdn_loss(model(x), y)``) and against the PyTorch step; its
  scale transforms against PyTorch's softplus / exp / ELU and their derivatives.
* The NumPy step runtime (:class:`mdnkit.sequence.StepGenerator`): its merged state buffer
  against ``nn.LSTM`` / ``nn.GRU`` run over the whole sequence (parameters and state), and its
  one-stream shortcut against the general path (the same events for the same seed).
"""

from __future__ import annotations

import math
import types
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special

from conftest import assert_fast_step_equals_autograd
from mdnkit import MDN, GaussianMixture, fit, mdn_loss
from mdnkit.fast import NUMPY_SCALES, MLPFastStep
from mdnkit.sequence import MDNRNN, StepGenerator


def _mdn(activation="relu", hidden=(6, 4), out=1, covariance="diagonal", transform="softplus",
         dtype=torch.float64, seed=0, rows=50):  # fmt: skip
    torch.manual_seed(seed)
    m = MDN(3, out, hidden=hidden, activation=activation, num_components=3,
            covariance=covariance, scale_transform=transform).to(dtype)  # fmt: skip
    x = torch.randn(rows, 3, dtype=dtype)
    y = torch.randn(rows, out, dtype=dtype) * 2 + 1
    m.prepare(x, y)
    with torch.no_grad():  # away from the data-driven start: raw scales of both signs
        for p in m.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return m, x, y


def _no_torch_step():
    """Inside: a call of the PyTorch step fails the test (so the NumPy step must have run)."""
    return mock.patch.object(MLPFastStep, "torch_step", side_effect=AssertionError("torch step"))


# ------------------------------------------------------------------------- the training step
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("covariance", ["diagonal", "spherical"])
@pytest.mark.parametrize("hidden", [(), (6, 4)])
@pytest.mark.parametrize("out", [1, 3])
def test_numpy_step_equals_autograd(activation, covariance, hidden, out):
    m, x, y = _mdn(activation, hidden, out, covariance)
    assert m.fast_step(x, y).numpy_step is not None
    with _no_torch_step():
        assert_fast_step_equals_autograd(m, x, y)  # float64: rtol 1e-9


@pytest.mark.parametrize("transform", ["softplus", "exp", "elu"])
def test_numpy_step_scale_transforms_equal_autograd(transform):
    m, x, y = _mdn("tanh", (5,), 2, transform=transform)
    with _no_torch_step():
        assert_fast_step_equals_autograd(m, x, y)


def test_numpy_step_in_float32_is_autograd_in_float64_to_float32_rounding():
    m, x, y = _mdn("relu", (15, 15), 1, dtype=torch.float32, rows=128)
    m64 = MDN(3, 1, hidden=(15, 15), activation="relu", num_components=3).double()
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    loss64 = mdn_loss(m64(x.double()), y.double())
    expected = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(loss64, list(m64.parameters()))]
    )
    step = m.fast_step(x, y)
    with step.attached(), _no_torch_step():
        loss = step(*step.prepare(x, y))
        grad = step.flat.grad.double()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(loss64.item(), rel=1e-5)
    torch.testing.assert_close(grad, expected, rtol=1e-3, atol=2e-5)


def test_numpy_and_torch_steps_agree_over_changing_batch_sizes_and_the_size_limit():
    m, x, y = _mdn("tanh", (6, 4), 2, rows=60)
    step = m.fast_step(x, y)
    with step.attached():
        xs, zs = step.prepare(x, y)
        for rows in (60, 7, 60, 1):  # buffers kept per batch size
            got = step(xs[:rows], zs[:rows])
            g_np = step.flat.grad.clone()
            want = step.torch_step(xs[:rows], zs[:rows])
            assert got.item() == pytest.approx(want.item(), rel=1e-12)
            torch.testing.assert_close(g_np, step.flat.grad, rtol=1e-10, atol=1e-13)
        # above the limit the PyTorch step runs (and gives the same numbers)
        step.numpy_max_rows = 10
        with mock.patch.object(step, "torch_step", wraps=step.torch_step) as spy:
            step(xs, zs)
        assert spy.call_count == 1


def test_numpy_step_applies_only_where_it_knows_the_formulas():
    x, y = torch.randn(8, 1), torch.randn(8, 1)
    assert MDN(1, 1, hidden=(4,), activation="gelu").fast_step(x, y).numpy_step is None
    assert MDN(1, 1, hidden=(4,), activation="relu").fast_step(x, y).numpy_step is not None
    m = MDN(1, 1, hidden=(4,), activation="relu")
    linears = [m.body[0], m.head.proj]
    assert MLPFastStep(m, linears, numpy=False).numpy_step is None
    # a batch whose inputs require a gradient (or of another dtype) takes the PyTorch step
    step = m.fast_step(x, y)
    with step.attached(), mock.patch.object(step, "torch_step", wraps=step.torch_step) as spy:
        step(x.requires_grad_(), y)
    assert spy.call_count == 1


def test_numpy_step_is_silent_on_non_finite_rows_and_reports_them():
    """A NaN input makes the loss and the gradient NaN (fit then rolls the epoch back): no
    exception and no NumPy warning."""
    m, x, y = _mdn("relu", (6,), 1, dtype=torch.float32)
    x[3, 0] = math.nan
    step = m.fast_step(x, y)
    with step.attached(), _no_torch_step(), warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = step(*step.prepare(x, y))
        assert not math.isfinite(loss.item())
        assert not torch.isfinite(step.flat.grad).all()


def test_numpy_step_keeps_subnormal_floats_out_of_the_gradient():
    """Logits 95 below the largest: e^-95 is a subnormal float32, counted as exactly 0 (as the
    PyTorch kernels do); the loss is still the mixture's log-density."""
    m = MDN(1, 1, hidden=(), num_components=4, min_scale=1e-3)
    x, y = torch.linspace(-1, 1, 16).unsqueeze(1), torch.linspace(-1, 1, 16).unsqueeze(1)
    with torch.no_grad():
        m.head.proj.weight.zero_()
        m.head.proj.bias.copy_(torch.tensor([0.0] * 8 + [0.0, -95.0, -95.0, -1.0]))
    step = m.fast_step(x, y)
    with step.attached(), _no_torch_step():
        loss = step(*step.prepare(x, y))
        g = step.flat.grad
        tiny = torch.finfo(g.dtype).tiny
        assert bool(((g == 0) | (g.abs() >= tiny)).all())
    sigma = torch.full((16, 4, 1), F.softplus(torch.tensor(0.0)).item() + 1e-3)
    logits = torch.tensor([0.0, -95.0, -95.0, -1.0]).expand(16, 4)
    mixture = GaussianMixture(logits.double(), torch.zeros(16, 4, 1).double(), sigma.double())
    assert loss.item() == pytest.approx(-mixture.log_prob(y.double()).mean().item(), rel=1e-5)


def test_fit_runs_the_numpy_step_for_a_relu_network():
    m, x, y = _mdn("relu", (8, 8), 1, dtype=torch.float32, rows=300)
    with _no_torch_step():
        history = fit(m, x, y, epochs=3, batch_size=64, seed=0, progress=False)
    assert all(math.isfinite(v) for v in history.train_nll)


@pytest.mark.parametrize("name", ["softplus", "exp", "elu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_scale_transforms_equal_pytorch(name, dtype):
    raw = np.concatenate([np.linspace(-100, 100, 401), [-1e-3, 0.0, 1e-3, 19.9, 20.1, 85, 90]])
    raw = raw.astype(dtype).reshape(-1, 1, 1)
    like = np.zeros_like(raw)
    p = types.SimpleNamespace(
        t=like.copy(), sigma=like.copy(), dsigma=like.copy(), zero_s=like.copy(),
        one_s=like + 1, exp_max=like + 80,
    )  # fmt: skip
    sigma, dsigma = NUMPY_SCALES[name](raw, p)
    # references: softplus and exp exactly (float64 NumPy / SciPy; PyTorch's softplus returns a
    # itself above a = 20, 2e-9 off), ELU + 1 in PyTorch in the same precision (its + 1 cancels)
    r64, r = raw.astype(np.float64), torch.from_numpy(raw)
    elu = (F.elu(r) + 1).double().numpy()
    want = {"softplus": np.logaddexp(0, r64), "exp": np.exp(np.minimum(r64, 80)), "elu": elu}
    dwant = {"softplus": special.expit(r64), "exp": want["exp"], "elu": np.where(r64 > 0, 1, elu)}
    # to float rounding: relative, and absolute on the scale of 1 (ELU + 1 near 0 carries the
    # rounding of its + 1; a scale gets its floor, 1e-3 by default, added after this)
    eps = float(np.finfo(dtype).eps)
    rtol, atol = 16 * eps, 2 * eps
    np.testing.assert_allclose(sigma, want[name], rtol=rtol, atol=atol)
    np.testing.assert_allclose(dsigma, dwant[name], rtol=rtol, atol=atol)


# ------------------------------------------------------------------------- the step runtime
@pytest.mark.parametrize(
    "cell,layers,batch,pen",
    [("lstm", 1, 1, 0), ("lstm", 3, 1, 2), ("lstm", 2, 3, 0), ("gru", 3, 2, 2)],
)
def test_runtime_state_follows_the_full_sequence_forward(cell, layers, batch, pen):
    torch.manual_seed(0)
    m = MDNRNN(3, hidden_size=10, num_layers=layers, cell=cell, num_components=3, pen_states=pen)
    u = torch.randn(batch, 7, 3) * 2 + 1
    if pen:
        u = torch.cat([u, torch.randint(0, pen, (batch, 7, 1)).float()], -1)
    m.prepare(u)
    with torch.no_grad():
        mix, _, state = m(u)
    g = m.generator(batch=batch, generator=0)
    g.predict(None)
    for t in range(7):
        p = g.predict(u[:, t].numpy())
        np.testing.assert_allclose(p["loc"], mix.loc[:, t].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(p["logits"], mix.logits[:, t].numpy(), rtol=1e-5, atol=1e-5)
    ref = state if cell == "lstm" else (state,)
    for got, want in zip(g.state, ref):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"pen_states": 2}, {"context_dim": 2}, {"cell": "gru"}])
def test_one_stream_shortcut_gives_the_general_paths_events(kw):
    torch.manual_seed(1)
    m = MDNRNN(3, hidden_size=8, num_layers=2, num_components=3, **kw)
    ctx = {"context": np.array([0.5, -1.0], np.float32)} if "context_dim" in kw else {}
    fast, slow = (m.generator(generator=7, temperature=0.8, **ctx) for _ in range(2))
    e_fast, e_slow = fast.step(), slow.step()
    np.testing.assert_array_equal(e_fast, e_slow)
    for i in range(30):
        if i == 15:  # a fresh sequence: the start token's flag is set, then cleared
            fast.reset(), slow.reset()
            e_fast, e_slow = fast.step(), slow.step()
        with mock.patch.object(StepGenerator, "_as_event", side_effect=AssertionError):
            e_fast = fast.step(e_fast)  # float32 (columns,): the shortcut
        e_slow = slow.step(e_slow.astype(np.float64))  # the general path
        assert e_fast.shape == e_slow.shape == (fast.columns,) and e_fast.dtype == np.float32
        np.testing.assert_array_equal(e_fast, e_slow)
    for a, b in zip(fast.state, slow.state):
        np.testing.assert_array_equal(a, b)


def test_numpy_step_keeps_a_scale_without_floor_at_the_smallest_normal_float():
    """min_scale=0: a scale whose softplus underflows to 0 becomes the smallest normal float
    (as ScaleMap.forward makes it), so its component weighs nothing and every gradient stays
    finite, on both paths."""
    m = MDN(1, 1, hidden=(), num_components=2, min_scale=0.0)
    x, y = torch.linspace(-1, 1, 16).unsqueeze(1), torch.linspace(-1, 1, 16).unsqueeze(1)
    with torch.no_grad():
        m.head.proj.weight.zero_()
        m.head.proj.bias.copy_(torch.tensor([0.0, 0.0, -200.0, 0.0, 0.0, 0.0]))  # sigma_0 -> 0
    step = m.fast_step(x, y)
    with step.attached():
        xs, zs = step.prepare(x, y)
        loss = step(xs, zs)
        grad = step.flat.grad.clone()
        want = step.torch_step(xs, zs)
        assert math.isfinite(loss.item()) and bool(torch.isfinite(grad).all())
        assert loss.item() == pytest.approx(want.item(), rel=1e-6)
        torch.testing.assert_close(grad, step.flat.grad, rtol=1e-5, atol=1e-7)
    # the other component alone: N(0, softplus(0)^2), weight 1/2
    sigma = F.softplus(torch.tensor(0.0, dtype=torch.float64))
    ref = -(torch.distributions.Normal(0.0, sigma).log_prob(y.double()) + math.log(0.5)).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
