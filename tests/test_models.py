"""Tests of mdnkit.models.MDN: raw-unit mixtures against SciPy and closed forms, the fast loss
against the generic mixture loss, configuration, validation and the inverted-sine target."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from conftest import assert_fast_step_equals_autograd
from mdnkit import GaussianMixture, MDNHead, mdn_loss
from mdnkit.models import MDN
from mdnkit.training import fit


def _sine(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, 1, generator=g) * 21 - 10.5
    x = 7 * torch.sin(0.75 * y) + 0.5 * y + torch.randn(n, 1, generator=g)
    return x, y


def _prepared(d: int, covariance: str, seed: int = 0, transform: str = "softplus") -> tuple:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.normal(2.0, 3.0, (64, 3)))
    y = torch.as_tensor(rng.normal(0, 1, (64, d)) * np.arange(1, d + 1) * 4.0 + 7.0)
    m = MDN(3, d, hidden=(8,), num_components=3, covariance=covariance, scale_transform=transform)
    m = m.double()
    m.prepare(x, y)
    # perturb the head so that components differ from their data-driven start
    with torch.no_grad():
        m.head.proj.weight.add_(0.3 * torch.randn_like(m.head.proj.weight))
    return m, x, y


def test_prepare_sets_scaling_from_data():
    m, x, y = _prepared(2, "diagonal")
    np.testing.assert_allclose(m.x_mean.numpy(), x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.x_std.numpy(), x.numpy().std(0), rtol=1e-12)
    np.testing.assert_allclose(m.y_mean.numpy(), y.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.y_std.numpy(), y.numpy().std(0), rtol=1e-12)


def test_spherical_uses_one_common_scale_and_stays_spherical():
    m, x, y = _prepared(3, "spherical")
    common = math.sqrt(float(np.mean(y.numpy().var(0))))
    np.testing.assert_allclose(m.y_std.numpy(), [common] * 3, rtol=1e-12)
    mix = m(x[:5])
    assert mix.covariance_type == "spherical"
    # raw-unit covariance is s^2 times the standardised one
    std_cov = m.standardized_mixture(x[:5]).component_covariance
    np.testing.assert_allclose(
        mix.component_covariance.detach().numpy(), common**2 * std_cov.detach().numpy(), rtol=1e-10
    )


def test_diagonal_log_prob_matches_scipy_in_raw_units():
    m, x, y = _prepared(1, "diagonal")
    with torch.no_grad():
        std = m.standardized_mixture(x)
        w = std.weights.numpy()
        mu = std.loc[..., 0].numpy() * m.y_std.item() + m.y_mean.item()
        sd = std.scale[..., 0].numpy() * m.y_std.item()
        ours = m(x).log_prob(y).numpy()
    ref = np.log((w * stats.norm.pdf(y.numpy(), mu, sd)).sum(-1))
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)


def test_full_covariance_matches_scipy_in_raw_units():
    m, x, y = _prepared(2, "full")
    s = np.diag(m.y_std.numpy())
    with torch.no_grad():
        std = m.standardized_mixture(x)
        mix = m(x)
        ours = mix.log_prob(y).numpy()
        cov_std = std.component_covariance.numpy()
        w = std.weights.numpy()
        mu = std.loc.numpy() @ s + m.y_mean.numpy()
    np.testing.assert_allclose(
        mix.component_covariance.detach().numpy(), s @ cov_std @ s, rtol=1e-10, atol=1e-12
    )
    for i in range(5):
        ref = np.log(
            sum(
                w[i, k] * stats.multivariate_normal(mu[i, k], s @ cov_std[i, k] @ s).pdf(y[i])
                for k in range(3)
            )
        )
        assert ours[i] == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("covariance", ["diagonal", "spherical", "full"])
def test_raw_nll_is_standardised_nll_plus_log_scales(covariance):
    m, x, y = _prepared(3, covariance)
    with torch.no_grad():
        z = (y - m.y_mean) / m.y_std
        std_nll = -m.standardized_mixture(x).log_prob(z).mean().item()
        raw_nll = -m(x).log_prob(y).mean().item()
        loss = m.loss(x, y).item()
    closed = std_nll + float(np.log(m.y_std.numpy()).sum())
    assert raw_nll == pytest.approx(closed, rel=1e-10)
    assert loss == pytest.approx(closed, rel=1e-10)


@pytest.mark.parametrize("covariance", ["diagonal", "spherical"])
@pytest.mark.parametrize("transform", ["softplus", "exp", "elu"])
@pytest.mark.parametrize("d", [1, 2])
def test_fast_loss_matches_generic_loss_and_gradients(covariance, transform, d):
    m, x, y = _prepared(d, covariance, transform=transform)
    params = list(m.parameters())
    fast = m.loss(x, y)
    g_fast = torch.autograd.grad(fast, params)
    generic = mdn_loss(m(x), y)
    g_gen = torch.autograd.grad(generic, params)
    assert fast.item() == pytest.approx(generic.item(), rel=1e-12)
    for a, b in zip(g_fast, g_gen):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_weighted_loss_matches_weighted_mean():
    m, x, y = _prepared(1, "diagonal")
    w = torch.rand(64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        per_row = -m(x).log_prob(y)
        ours = m.loss(x, y, weight=w).item()
    assert ours == pytest.approx(float((w * per_row).sum() / w.sum()), rel=1e-10)


def test_config_round_trip_and_json():
    m = MDN(4, 2, hidden=(7, 5), activation="relu", num_components=3, covariance="full")
    cfg = m.config()
    rebuilt = MDN(**json.loads(json.dumps(cfg)))
    assert rebuilt.config() == cfg
    a = {k: v.shape for k, v in m.state_dict().items()}
    b = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert a == b
    rebuilt.load_state_dict(m.state_dict())
    x = torch.randn(6, 4)
    torch.testing.assert_close(rebuilt(x).mean, m(x).mean)


def test_shapes_with_leading_dims_and_1d_targets():
    m = MDN(2, 1, hidden=(4,), num_components=2)
    mix = m(torch.randn(3, 5, 2))
    assert mix.batch_shape == (3, 5) and mix.event_shape == (1,)
    x, y = torch.randn(10, 2), torch.randn(10)
    assert m.loss(x, y).item() == pytest.approx(m.loss(x, y[:, None]).item())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_features": 0, "out_features": 1}, "in_features"),
        ({"in_features": 1, "out_features": 1, "activation": "swish2"}, "activation"),
        ({"in_features": 1, "out_features": 1, "hidden": (3, -1)}, "hidden"),
        ({"in_features": 1, "out_features": 1, "dropout": 1.0}, "dropout"),
        ({"in_features": 1, "out_features": 1, "covariance": "tied"}, "covariance"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MDN(**kwargs)


def test_bad_input_shapes_name_expected_and_found():
    m = MDN(3, 2, hidden=(4,), num_components=2)
    with pytest.raises(ValueError, match=r"in_features=3.*\(5, 4\)"):
        m(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"out_features=2.*\(5, 3\)"):
        m.loss(torch.randn(5, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        m.prepare(torch.full((5, 3), float("nan")), torch.randn(5, 2))


def test_inverted_sine_reaches_near_the_true_conditional_entropy():
    """H(Y|X) = 1.288 nats is the best possible NLL; a well-trained 3000-point model is close."""
    x, y = _sine(3000, 0)
    xt, yt = _sine(20000, 1)
    torch.manual_seed(0)
    m = MDN(1, 1, hidden=(32, 32), num_components=8)
    fit(m, x, y, epochs=60, lr=1e-2, seed=0, progress=False)
    nll = m.nll(xt, yt)
    assert 1.25 < nll <= 1.40


@pytest.mark.parametrize(
    "activation",
    ["tanh", "relu", "sigmoid", "elu", "silu", "gelu", "softplus", "leaky_relu"],
)
@pytest.mark.parametrize("covariance", ["diagonal", "spherical"])
@pytest.mark.parametrize("hidden", [(), (6, 4)])
@pytest.mark.parametrize("out", [1, 2])
def test_fast_step_matches_autograd_of_the_generic_loss(activation, covariance, hidden, out):
    torch.manual_seed(0)
    m = MDN(3, out, hidden=hidden, activation=activation, num_components=3, covariance=covariance)
    m = m.double()
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.randn(40, out, dtype=torch.float64) * 2 + 1
    m.prepare(x, y)
    with torch.no_grad():  # move the head away from its data-driven start
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = list(m.parameters())
    generic = mdn_loss(m(x), y)  # through GaussianMixture, in data units
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(generic, params)])
    before = [p.detach().clone() for p in params]
    trainer = m.fast_step(x, y)
    assert trainer is not None
    trainer.attach()
    loss = trainer.step(*trainer.prepare(x, y))
    assert loss.item() == pytest.approx(generic.item(), rel=1e-12)
    torch.testing.assert_close(trainer.flat.grad, expected, rtol=1e-9, atol=1e-12)
    # the parameters are views of the flat buffer until released
    with torch.no_grad():
        trainer.flat.zero_()
    assert all(float(p.detach().abs().max()) == 0 for p in params)
    with torch.no_grad():
        trainer.flat.copy_(torch.cat([b.reshape(-1) for b in before]))
    trainer.release()
    ptrs = {p.data_ptr() for p in params}
    assert len(ptrs) == len(params) and trainer.flat.data_ptr() not in ptrs
    for p, b in zip(params, before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)
        assert p.grad is None


@pytest.mark.parametrize("transform", ["softplus", "exp", "elu"])
def test_fast_step_scale_transforms(transform):
    torch.manual_seed(1)
    m = MDN(2, 2, hidden=(5,), num_components=4, scale_transform=transform).double()
    x = torch.randn(64, 2, dtype=torch.float64)
    y = torch.randn(64, 2, dtype=torch.float64)
    m.prepare(x, y)
    with torch.no_grad():
        m.head.proj.bias.add_(torch.linspace(-2.0, 2.0, m.head.proj.bias.numel()))
    assert_fast_step_equals_autograd(m, x, y)


def test_fast_step_uses_the_activation_modules_own_settings():
    torch.manual_seed(0)
    m = MDN(2, 1, hidden=(5, 5), activation="leaky_relu", num_components=3).double()
    for i in (1, 3):
        m.body[i] = nn.LeakyReLU(0.3)  # not the default slope
    x = torch.randn(30, 2, dtype=torch.float64)
    y = torch.randn(30, 1, dtype=torch.float64)
    m.prepare(x, y)
    assert_fast_step_equals_autograd(m, x, y)


def test_fast_trainer_touches_the_model_only_between_attach_and_release():
    m = MDN(2, 1, hidden=(3,))
    x, y = torch.randn(5, 2), torch.randn(5, 1)
    before = {id(p): p.data_ptr() for p in m.parameters()}
    trainer = m.fast_step(x, y)
    assert {id(p): p.data_ptr() for p in m.parameters()} == before  # not attached yet
    trainer.release()  # nothing to release: a no-op
    assert {id(p): p.data_ptr() for p in m.parameters()} == before


def test_fit_gives_the_parameters_their_storage_back_after_an_error():
    x, y = _sine(200, 5)
    m = MDN(1, 1, hidden=(4,), num_components=2)

    def fail(epoch, history):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(m, x, y, epochs=3, callback=fail, progress=False)
    ptrs = [p.data_ptr() for p in m.parameters()]
    assert len(set(ptrs)) == len(ptrs)
    assert all(
        p.data.untyped_storage().nbytes() == p.numel() * p.element_size() for p in m.parameters()
    )


def test_fast_trainer_applies_only_where_its_formulas_hold():
    x, y = torch.randn(5, 1), torch.randn(5, 1)
    assert MDN(1, 1).fast_step(x, y) is not None
    assert MDN(1, 1).fast_step(x.unsqueeze(0), y.unsqueeze(0)) is None  # rows only
    assert MDN(1, 1, dropout=0.1).fast_step(x, y) is None
    assert MDN(1, 2, covariance="full").fast_step(x, torch.randn(5, 2)) is None
    assert MDN(1, 1).bfloat16().fast_step(x, y) is None
    tied = MDN(1, 1, hidden=(4, 4))
    tied.body[2].bias = tied.body[0].bias  # one bias shared by two layers
    assert tied.fast_step(x, y) is None
    frozen = MDN(1, 1)
    frozen.head.proj.bias.requires_grad_(False)
    assert frozen.fast_step(x, y) is None


def test_fit_with_and_without_the_fast_path_agree(monkeypatch):
    x, y = _sine(400, 3)
    histories, weights = [], []
    for fast in (True, False):
        torch.manual_seed(0)
        m = MDN(1, 1, hidden=(8, 8), num_components=3).double()
        if not fast:
            monkeypatch.setattr(m, "fast_step", lambda *data: None)
        histories.append(fit(m, x.double(), y.double(), epochs=3, seed=0, progress=False))
        weights.append(torch.cat([p.detach().reshape(-1) for p in m.parameters()]))
        # parameters own their storage again (safetensors refuses shared memory)
        assert len({p.data_ptr() for p in m.parameters()}) == len(list(m.parameters()))
    np.testing.assert_allclose(histories[0].train_nll, histories[1].train_nll, rtol=1e-9)
    np.testing.assert_allclose(histories[0].val_nll, histories[1].val_nll, rtol=1e-9)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-7, atol=1e-10)


def test_fast_nll_pieces_hold_no_denormal_floats():
    from mdnkit.fast import nll_component_major

    k, n = 4, 8
    loc = torch.zeros(k, n)
    raw = torch.zeros(k, n)
    logits = torch.tensor([0.0, -95.0, -95.0, -1.0]).unsqueeze(1).expand(k, n)  # e^-95: subnormal
    params = torch.cat([loc, raw, logits])
    z = torch.linspace(-1, 1, n).unsqueeze(0)
    grad = torch.empty_like(params)
    head = MDNHead(1, 1, k, scale_transform="softplus", min_scale=1e-3)
    total = nll_component_major(params, z, head, grad, 1.0 / n)
    tiny = torch.finfo(grad.dtype).tiny
    assert bool(((grad == 0) | (grad.abs() >= tiny)).all())
    # the same value as the distribution's log-density (which drops nothing)
    sigma = torch.nn.functional.softplus(raw) + 1e-3
    ref = GaussianMixture(logits.t(), loc.t().unsqueeze(-1), sigma.t().unsqueeze(-1)).log_prob(
        z.t()
    )
    assert total.item() - n * 0.5 * math.log(2 * math.pi) == pytest.approx(
        ref.sum().item(), rel=1e-6
    )


# ------------------------------------------------------------------------------------ per-dimension head
def test_per_dimension_head_log_prob_is_a_sum_of_scipy_1d_mixtures():
    """mixture="per_dimension": 3·K·D outputs in dimension-major blocks; log p(y) is the sum over
    dimensions of 1-D K-component mixtures, computed here with SciPy from the raw outputs."""
    torch.manual_seed(0)
    k, d = 3, 2
    head = MDNHead(5, d, k, mixture="per_dimension", scale_transform="exp")
    h, y = torch.randn(4, 5), torch.randn(4, d)
    with torch.no_grad():
        raw = head.params(h).double().numpy()
        lp = head(h).log_prob(y).double().numpy()
    assert raw.shape == (4, 3 * k * d)
    for i in range(4):
        mu = raw[i, : k * d].reshape(d, k)
        sig = (np.exp(raw[i, k * d : 2 * k * d]) + head.min_scale).reshape(d, k)
        logits = raw[i, 2 * k * d :].reshape(d, k)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        want = sum(
            np.log(np.sum(w[j] * stats.norm(mu[j], sig[j]).pdf(float(y[i, j])))) for j in range(d)
        )
        assert lp[i] == pytest.approx(want, rel=1e-6, abs=1e-6)
    with pytest.raises(
        ValueError, match="needs covariance='diagonal', found covariance='spherical'"
    ):
        MDNHead(5, d, k, covariance="spherical", mixture="per_dimension")


def test_per_dimension_head_initialises_and_the_fast_step_declines_it():
    """init_from_data puts each dimension's K means at its own quantiles; MDN.fast_step returns
    None for a per-dimension head (fit then uses autograd)."""
    y = torch.randn(400, 2) * torch.tensor([1.0, 50.0])
    head = MDNHead(3, 2, 4, mixture="per_dimension").init_from_data(y)
    with torch.no_grad():
        loc = head(torch.zeros(1, 3)).loc[0]  # (D, K)
    q = torch.quantile(y, (torch.arange(4.0) + 0.5) / 4, dim=0).T
    torch.testing.assert_close(loc, q.float(), rtol=1e-4, atol=1e-4)
    model = MDN(3, 2, hidden=(8,), num_components=4)
    x = torch.randn(400, 3)
    assert model.fast_step(x, y) is not None
    model.head = MDNHead(8, 2, 4, mixture="per_dimension")
    assert model.fast_step(x, y) is None


def test_mdn_loss_with_a_per_dimension_head_is_its_mixtures_nll():
    """MDN.loss takes its fast joint-mixture branch only for joint heads: with a per-dimension
    head it is the mean NLL of the head's PerDimensionMixture (plus the target's log-scale),
    here recomputed with SciPy from the raw outputs (an unprepared MDN standardises nothing)."""
    torch.manual_seed(1)
    k, d = 3, 2
    model = MDN(2, d, hidden=(8,), num_components=k)
    model.head = MDNHead(8, d, k, mixture="per_dimension", scale_transform="exp")
    x, y = torch.randn(16, 2), torch.randn(16, d) * 3
    with torch.no_grad():
        loss = float(model.loss(x, y))
        raw = model.head.params(model.body(x)).double().numpy()
    mu = raw[:, : k * d].reshape(-1, d, k)
    sig = (np.exp(raw[:, k * d : 2 * k * d]) + model.head.min_scale).reshape(-1, d, k)
    logits = raw[:, 2 * k * d :].reshape(-1, d, k)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    dens = (w * stats.norm(mu, sig).pdf(y.double().numpy()[..., None])).sum(-1)
    assert loss == pytest.approx(-np.log(dens).sum(-1).mean(), rel=1e-5)
