"""Hardening of the distributions against extreme and bad values (issue 13, item 6).

Large logits against a float64 SciPy reference; subnormal, zero, negative and non-finite scales
refused at construction; finite gradients for a component of no weight whose scale is tiny,
against the closed-form gradient of the one component that carries the weight; quantiles of
huge scales against SciPy; temperatures and weights refused or handled at their limits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats

from mdnkit import GaussianMixture, MDNHead, PerDimensionMixture, mdn_loss

F32 = torch.finfo(torch.float32)
F64 = torch.finfo(torch.float64)


def _scipy_joint_log_prob(logits, loc, cov, y):
    """log p(y) of one joint mixture with SciPy in float64: logits (K,), loc (K, D), cov (K, D, D)."""
    lw = logits - special.logsumexp(logits)
    comp = [stats.multivariate_normal(loc[k], cov[k]).logpdf(y) for k in range(len(logits))]
    return special.logsumexp(lw + np.array(comp))


def _scipy_per_dim_log_prob(logits, loc, scale, y):
    """log p(y) of D independent 1-D mixtures, all (D, K) in float64; y (D,)."""
    lw = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    comp = stats.norm(loc, scale).logpdf(y[:, None])
    return special.logsumexp(lw + comp, axis=-1).sum()


# ----------------------------------------------------------------------------- large logits
def _big_logits(big: float) -> torch.Tensor:
    """Float32 logits around +-big; the reference reads back the float32 values exactly."""
    return torch.tensor(
        [[big, big + 1.0, -big], [-big, -big + 2.0, -big - 2.0]], dtype=torch.float32
    )


@pytest.mark.parametrize("big", [1e6, 1e7])
@pytest.mark.parametrize("cov", ["diagonal", "spherical", "full"])
@pytest.mark.parametrize("grad", [False, True])
def test_large_logits_log_prob_against_scipy(big, cov, grad):
    logits = _big_logits(big)
    loc = torch.tensor([[[0.0, 1.0], [1.5, -1.0], [3.0, 0.0]]] * 2)
    sd = torch.tensor([[[1.0, 0.5], [2.0, 1.5], [0.7, 0.7]]] * 2)
    if cov == "spherical":
        sd = sd[..., :1]
    y = torch.tensor([[0.3, -0.2], [1.0, 0.4]])
    params = [logits, loc, sd]
    if grad:
        params = [p.clone().requires_grad_() for p in params]
    if cov == "full":
        m = GaussianMixture(params[0], params[1], scale_tril=torch.diag_embed(params[2]))
    else:
        m = GaussianMixture(*params)
    got = m.log_prob(y).detach().double().numpy()
    sd_full = np.broadcast_to(sd.double().numpy(), loc.shape)
    covs = sd_full[..., :, None] ** 2 * np.eye(2)
    want = [
        _scipy_joint_log_prob(logits[i].double().numpy(), loc[i].double().numpy(), covs[i], y[i])
        for i in range(2)
    ]
    # the old code lost 7.6e-3 nats at 1e6 and 4.2e-2 at 1e7 (the data term swamped)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    lw = special.log_softmax(logits.double().numpy(), axis=-1)
    np.testing.assert_allclose(m.logits.detach().double().numpy(), lw, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("big", [1e6, 1e7])
@pytest.mark.parametrize("grad", [False, True])
def test_large_logits_per_dimension_against_scipy(big, grad):
    logits = _big_logits(big).unsqueeze(0)  # (1, D=2, K=3)
    loc = torch.tensor([[[0.0, 1.5, 3.0], [1.0, -1.0, 0.0]]])
    scale = torch.tensor([[[1.0, 2.0, 0.7], [0.5, 1.5, 0.7]]])
    y = torch.tensor([[0.3, -0.2]])
    params = [logits, loc, scale]
    if grad:
        params = [p.clone().requires_grad_() for p in params]
    m = PerDimensionMixture(*params)
    got = m.log_prob(y).detach().double().numpy()
    want = _scipy_per_dim_log_prob(
        *(t[0].double().numpy() for t in (logits, loc, scale)), y[0].double().numpy()
    )
    np.testing.assert_allclose(got, [want], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- scales
@pytest.mark.parametrize(
    ("dtype", "bad"),
    [
        (torch.float32, 1e-40),  # subnormal in float32
        (torch.float64, 1e-310),  # subnormal in float64
        (torch.float32, 0.0),
        (torch.float32, -1.0),
        (torch.float32, math.inf),
        (torch.float32, math.nan),
    ],
)
@pytest.mark.parametrize("kind", ["diagonal", "full", "per_dimension"])
def test_subnormal_and_nonfinite_scales_refused(dtype, bad, kind):
    scale = torch.tensor([[1.0, bad]], dtype=dtype)  # (D=1 or batch 1, K=2)
    loc = torch.zeros(1, 2, dtype=dtype)
    logits = torch.zeros(1, 2, dtype=dtype)
    if kind == "per_dimension":
        what = "scale must be positive and finite"
        build = lambda: PerDimensionMixture(logits, loc, scale, validate_args=True)  # noqa: E731
    elif kind == "diagonal":
        what = "scale must be positive and finite"
        build = lambda: GaussianMixture(  # noqa: E731
            logits, loc[..., None], scale[..., None], validate_args=True
        )
    else:
        tril = scale[..., None, None]
        if not math.isfinite(bad):
            what = "scale_tril contains NaN or inf"
        else:
            what = "scale_tril must have a positive diagonal"
        build = lambda: GaussianMixture(  # noqa: E731
            logits, loc[..., None], scale_tril=tril, validate_args=True
        )
    with pytest.raises(ValueError, match=what) as info:
        build()
    if "NaN or inf" not in what:
        # the message names the smallest scale accepted
        assert f"torch.finfo({dtype}).tiny = {torch.finfo(dtype).tiny:.4g}" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smallest_normal_scale_accepted_and_exact(dtype):
    tiny = torch.finfo(dtype).tiny
    m = GaussianMixture(
        torch.zeros(1, dtype=dtype),
        torch.zeros(1, 1, dtype=dtype),
        torch.full((1, 1), tiny, dtype=dtype),
        validate_args=True,
    )
    # closed form at the mean: -log(sigma) - log(2 pi) / 2
    want = -math.log(tiny) - 0.5 * math.log(2 * math.pi)
    got = float(m.log_prob(torch.zeros(1, dtype=dtype)))
    assert got == pytest.approx(want, rel=1e-6)


def test_half_scales_checked_in_the_dtype_computed_in():
    """A float16 scale that is subnormal in float16 is a normal float32: accepted, and right."""
    s = torch.tensor([[1e-6]], dtype=torch.float16)
    assert 0 < float(s) < torch.finfo(torch.float16).tiny
    m = GaussianMixture(
        torch.zeros(1, dtype=torch.float16),
        torch.zeros(1, 1, dtype=torch.float16),
        s,
        validate_args=True,
    )
    y = torch.tensor([2e-6])
    want = stats.norm(0.0, float(s)).logpdf(2e-6)
    assert float(m.log_prob(y)) == pytest.approx(want, abs=1e-4)


# ----------------------------------------------------------------------------- tiny scales
CASES = [
    (torch.float64, 1e-30),
    (torch.float64, F64.tiny),
    (torch.float32, 1e-30),
    (torch.float32, F32.tiny),
]


def _closed_form_grads(y, mu, sd):
    """d(-log N(y | mu, diag(sd^2)))/d(mu, sd), NumPy float64."""
    z = (y - mu) / sd
    return -z / sd, (1 - z * z) / sd


@pytest.mark.parametrize(("dtype", "tiny"), CASES)
@pytest.mark.parametrize("kind", ["diagonal", "spherical", "full", "per_dimension"])
def test_tiny_scale_of_a_negligible_component_gives_finite_gradients(dtype, tiny, kind):
    """Component 1 (weight e^-100, sigma tiny, 5 away from y) carries nothing: the gradient is
    that of component 0 alone (closed form) and exactly 0 for component 1, not NaN."""
    y = np.array([0.5, -0.3])
    mu0, sd0 = np.array([0.0, 0.2]), np.array([1.0, 2.0])
    if kind == "spherical":
        sd0 = np.array([1.5, 1.5])
    logits = torch.tensor([0.0, -100.0], dtype=dtype, requires_grad=True)
    loc = torch.tensor(np.array([mu0, [5.0, 5.0]]), dtype=dtype, requires_grad=True)
    yt = torch.tensor(y, dtype=dtype)
    if kind == "per_dimension":
        # each dimension: component 0 (mu0_d, sd0_d) and the tiny one; logits per dimension
        lg = logits.detach().expand(2, 2).clone().requires_grad_()
        lc = loc.detach().T.clone().requires_grad_()  # (D, K)
        sc = torch.tensor([[sd0[0], tiny], [sd0[1], tiny]], dtype=dtype, requires_grad=True)
        mdn_loss(PerDimensionMixture(lg, lc, sc), yt).backward()
        g_mu, g_sd = _closed_form_grads(y, mu0, sd0)
        for g in (lg.grad, lc.grad, sc.grad):
            assert torch.isfinite(g).all()
        np.testing.assert_allclose(lc.grad[:, 0].double().numpy(), g_mu, rtol=1e-5)
        np.testing.assert_allclose(sc.grad[:, 0].double().numpy(), g_sd, rtol=1e-5)
        assert (lc.grad[:, 1] == 0).all() and (sc.grad[:, 1] == 0).all()
        return
    if kind == "full":
        tril = torch.tensor(
            [[[sd0[0], 0.0], [0.0, sd0[1]]], [[tiny, 0.0], [0.3, tiny]]], dtype=dtype
        ).requires_grad_()
        mdn_loss(GaussianMixture(logits, loc, scale_tril=tril), yt).backward()
        g_sd = tril.grad[0].diagonal().double().numpy()
        z = (y - mu0) / sd0
        # off-diagonal: d(|L^-1 (y - mu)|^2 / 2)/dL_10 = -(z_1 / sd_1) z_0, so the loss's is that
        assert float(tril.grad[0, 1, 0]) == pytest.approx(-z[1] * z[0] / sd0[1], rel=1e-5)
        sd_grad_other = tril.grad[1]
    else:
        width = 1 if kind == "spherical" else 2
        sds = np.array([sd0[:width], [tiny] * width])  # (K, 1 or D)
        sc = torch.tensor(sds, dtype=dtype, requires_grad=True)
        mdn_loss(GaussianMixture(logits, loc, sc), yt).backward()
        g_sd = sc.grad[0].double().numpy()
        sd_grad_other = sc.grad[1]
    g_mu, g_sd_want = _closed_form_grads(y, mu0, sd0)
    if kind == "spherical":
        g_sd_want = np.array([g_sd_want.sum()])
    np.testing.assert_allclose(loc.grad[0].double().numpy(), g_mu, rtol=1e-5)
    np.testing.assert_allclose(g_sd, g_sd_want, rtol=1e-5)
    assert (loc.grad[1] == 0).all() and (sd_grad_other == 0).all()
    # d loss / d logit_k = pi_k - r_k: e^-100 for the negligible one (0 in float32)
    np.testing.assert_allclose(logits.grad.double().numpy(), [0.0, 0.0], atol=1e-40)


def test_tiny_scale_second_derivatives_finite():
    """Second derivatives too, while z / sigma of the negligible component fits the dtype
    (float64, sigma = 1e-30)."""
    dtype = torch.float64
    sc = torch.tensor([[1.0], [1e-30]], dtype=dtype, requires_grad=True)
    logits, loc = (
        torch.tensor([0.0, -100.0], dtype=dtype),
        torch.tensor([[0.0], [5.0]], dtype=dtype),
    )
    m = GaussianMixture(logits, loc, sc)
    y = torch.tensor([0.5], dtype=dtype)
    (g,) = torch.autograd.grad(mdn_loss(m, y), sc, create_graph=True)
    (gg,) = torch.autograd.grad(g[0, 0], sc)
    # d2(-log N)/d sigma^2 at sigma = 1: 3 z^2 - 1 with z = 0.5
    assert torch.isfinite(gg).all() and float(gg[0, 0]) == pytest.approx(3 * 0.25 - 1, rel=1e-5)


# ----------------------------------------------------------------------------- quantiles
@pytest.mark.parametrize("s", [1e20, 1e30])
def test_icdf_and_interval_of_huge_scales_against_scipy(s):
    """float32 scales of 1e20 (whose variance overflows float32): the quantiles fit, so they are
    returned, not inf."""
    sig = np.array([s, 3 * s])
    w = special.softmax([0.0, 1.0])
    m = GaussianMixture(
        torch.tensor([0.0, 1.0]), torch.zeros(2, 1), torch.tensor(sig, dtype=torch.float32)[:, None]
    )

    def quantile(q):
        return optimize.brentq(
            lambda v: float((w * stats.norm.cdf(v / sig)).sum()) - q,
            -100 * s,
            100 * s,
            xtol=1e-6 * s,
        )

    for q in (0.05, 0.5, 0.9, 0.999):
        got = float(m.icdf(torch.tensor(q)))
        assert math.isfinite(got)
        assert got == pytest.approx(quantile(q), rel=1e-5, abs=1e-5 * s)
    lo, hi = m.interval(0.9)
    assert float(lo) == pytest.approx(quantile(0.05), rel=1e-5)
    assert float(hi) == pytest.approx(quantile(0.95), rel=1e-5)
    want = float((w * stats.norm.cdf(s / sig)).sum())
    assert float(m.cdf(torch.tensor([s]))) == pytest.approx(want, rel=1e-6)


def test_icdf_of_huge_scales_full_per_dimension_and_gradient():
    q = 0.9
    z = stats.norm.ppf(q)
    full = GaussianMixture(
        torch.zeros(1), torch.zeros(1, 1), scale_tril=torch.full((1, 1, 1), 1e20)
    )
    assert float(full.icdf(torch.tensor(q))) == pytest.approx(1e20 * z, rel=1e-5)
    pd = PerDimensionMixture(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([[1e20], [1e25]]))
    np.testing.assert_allclose(
        pd.icdf(torch.tensor(q)).double().numpy(), [1e20 * z, 1e25 * z], rtol=1e-5
    )
    # the implicit gradient dy/dsigma = Phi^-1(q) of y = sigma Phi^-1(q)
    sig = torch.tensor([[1e20]], requires_grad=True)
    GaussianMixture(torch.zeros(1), torch.zeros(1, 1), sig).icdf(torch.tensor(q)).sum().backward()
    assert float(sig.grad) == pytest.approx(z, rel=1e-4)


# ----------------------------------------------------------------------------- temperatures
def _both():
    logits = torch.tensor([[0.0, 1.0, -math.inf]])
    g = GaussianMixture(logits, torch.tensor([[[0.0], [1.0], [2.0]]]), torch.ones(1, 3, 1))
    p = PerDimensionMixture(logits, torch.tensor([[0.0, 1.0, 2.0]]), torch.ones(1, 3))
    return g, p


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(sigma_temperature=math.inf),
            "sigma_temperature must be a finite number >= 0, found inf",
        ),
        (
            dict(sigma_temperature=math.nan),
            "sigma_temperature must be a finite number >= 0, found nan",
        ),
        (dict(sigma_temperature=-1.0), "sigma_temperature must be a finite number >= 0, found -1"),
        (
            dict(sigma_temperature=torch.tensor([math.inf])),
            "sigma_temperature must hold finite numbers >= 0",
        ),
        (dict(temperature=math.nan), "temperature must be a number >= 0, found nan"),
        (dict(temperature=-0.5), "temperature must be a number >= 0, found -0.5"),
        (dict(temperature=torch.ones(3)), "tensor broadcastable to batch_shape"),
    ],
)
def test_bad_temperatures_refused(which, kwargs, message):
    m = _both()[which]
    with pytest.raises(ValueError, match=message):
        m.sample((2,), **kwargs)
    with pytest.raises(ValueError, match=message):
        m.with_temperature(**kwargs)


@pytest.mark.parametrize("which", [0, 1])
def test_temperature_limits(which):
    m = _both()[which]
    # inf: equal weight to the components of nonzero weight, none to the masked one
    np.testing.assert_allclose(m.with_temperature(math.inf).weights.numpy().ravel(), [0.5, 0.5, 0])
    x = m.sample((4000,), temperature=math.inf, sigma_temperature=0.0, generator=0).ravel()
    assert set(x.tolist()) <= {0.0, 1.0}
    frac = float((x == 1.0).double().mean())
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / 4000)
    # a temperature so small that the logits divided by it overflow: greedy, never NaN
    for t in (1e-45, 1e-30):
        np.testing.assert_array_equal(m.with_temperature(t).weights.numpy().ravel(), [0, 1, 0])
        x = m.sample((50,), temperature=t, sigma_temperature=0.0, generator=1)
        assert (x == 1.0).all()


# ----------------------------------------------------------------------------- logits
def test_all_minus_inf_logits_refused():
    ninf = -math.inf
    loc, scale = torch.zeros(2, 2, 1), torch.ones(2, 2, 1)
    with pytest.raises(ValueError, match="found 1 batch entry of all -inf logits"):
        GaussianMixture(torch.tensor([[0.0, ninf], [ninf, ninf]]), loc, scale, validate_args=True)
    with pytest.raises(ValueError, match="found 2 batch entries of all -inf logits"):
        PerDimensionMixture(
            torch.full((2, 2), ninf), torch.zeros(2, 2), torch.ones(2, 2), validate_args=True
        )
    # masked components (some -inf) are fine: weight 0 for them
    m = GaussianMixture(torch.tensor([[0.0, ninf], [ninf, 1.0]]), loc, scale, validate_args=True)
    np.testing.assert_array_equal(m.weights.numpy(), [[1.0, 0.0], [0.0, 1.0]])


# ----------------------------------------------------------------------------- loss weights
@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf])
def test_mdn_loss_refuses_negative_or_nonfinite_weights(bad):
    m = GaussianMixture(torch.zeros(3, 2), torch.zeros(3, 2, 1), torch.ones(3, 2, 1))
    y = torch.zeros(3, 1)
    with pytest.raises(
        ValueError, match=r"weight must hold finite numbers >= 0, found values such as \["
    ):
        mdn_loss(m, y, weight=torch.tensor([1.0, bad, 1.0]))
    # masks and zero weights stay accepted; the weighted mean is the closed form
    nll = 0.5 * math.log(2 * math.pi)
    assert float(mdn_loss(m, y, weight=torch.tensor([True, False, True]))) == pytest.approx(nll)
    assert float(mdn_loss(m, y, weight=torch.tensor([0.0, 2.0, 0.0]))) == pytest.approx(nll)


# ----------------------------------------------------------------------------- the head
@pytest.mark.parametrize("transform", ["softplus", "exp", "elu"])
def test_head_with_no_floor_keeps_scales_normal(transform):
    """The head's mixtures skip the value checks (trusted by construction): with min_scale=0 a
    very negative raw scale still gives the smallest normal float, not 0 or a subnormal."""
    head = MDNHead(2, 1, 2, scale_transform=transform, min_scale=0.0)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.fill_(-1e4)  # every raw scale (and mean, logit) far below 0
    m = head(torch.zeros(3, 2))
    assert (m.scale >= F32.tiny).all()
    lp = m.log_prob(torch.full((3, 1), -1e4))
    # y on the means: log N = -log(tiny) - log(2 pi) / 2 (equal weights, equal components)
    np.testing.assert_allclose(
        lp.detach().numpy(), -math.log(F32.tiny) - 0.5 * math.log(2 * math.pi), rtol=1e-6
    )
    raw = np.full(3, -1e4, np.float32)
    assert (head.layout.scale_map.numpy(raw) == np.float32(F32.tiny)).all()
