"""Tests of :class:`mdnkit.head.MDNHead`: layout, scale transforms, initialisation, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from mdnkit.head import MDNHead, kmeans


def _set_bias(head: MDNHead, bias: torch.Tensor) -> None:
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.copy_(bias)


@pytest.mark.parametrize(
    "cov, n_scale",
    [
        ("diagonal", lambda k, d: k * d),
        ("spherical", lambda k, d: k),
        ("full", lambda k, d: k * d * (d + 1) // 2),
    ],
)
@pytest.mark.parametrize("k, d", [(1, 1), (3, 2), (5, 3)])
def test_num_params_and_output_shapes(cov, n_scale, k, d):
    head = MDNHead(7, d, k, covariance=cov)
    assert head.num_params == k * d + n_scale(k, d) + k
    assert head.proj.out_features == head.num_params
    m = head(torch.randn(4, 2, 7))
    assert m.batch_shape == (4, 2) and m.event_shape == (d,) and m.num_components == k
    assert head.params(torch.randn(3, 7)).shape == (3, head.num_params)


def test_flat_layout_diagonal():
    """means (component-major), then scales, then logits; softplus + floor on the scales."""
    k, d, floor = 2, 3, 1e-3
    head = MDNHead(4, d, k, min_scale=floor)
    raw = torch.arange(head.num_params, dtype=torch.float32) / 10 - 0.5
    _set_bias(head, raw)
    with torch.no_grad():
        m = head(torch.zeros(1, 4))
    r = raw.numpy().astype(np.float64)
    np.testing.assert_allclose(m.loc[0].numpy(), r[: k * d].reshape(k, d), rtol=1e-6)
    want_scale = np.log1p(np.exp(r[k * d : 2 * k * d])).reshape(k, d) + floor
    np.testing.assert_allclose(m.scale[0].numpy(), want_scale, rtol=1e-6)
    np.testing.assert_allclose(m.weights[0].numpy(), special.softmax(r[2 * k * d :]), rtol=1e-6)


def test_flat_layout_spherical_and_full():
    k, d = 2, 3
    head = MDNHead(4, d, k, covariance="spherical", scale_transform="exp", min_scale=0.0)
    raw = torch.linspace(-1, 1, head.num_params)
    _set_bias(head, raw)
    with torch.no_grad():
        m = head(torch.zeros(4))
    assert m.covariance_type == "spherical" and m.scale.shape == (k, 1)
    np.testing.assert_allclose(
        m.scale[:, 0].numpy(), np.exp(raw[k * d : k * d + k].numpy()), rtol=1e-6
    )

    head = MDNHead(4, d, k, covariance="full", min_scale=0.0)
    raw = torch.linspace(-1, 1, head.num_params)
    _set_bias(head, raw)
    with torch.no_grad():
        m = head(torch.zeros(4))
    blk = raw[k * d : k * d + k * 6].reshape(k, 6).numpy()
    tril = m.scale_tril.numpy()
    for j in range(k):
        np.testing.assert_allclose(np.diag(tril[j]), np.log1p(np.exp(blk[j, :3])), rtol=1e-6)
        # strictly lower entries row by row: (1,0), (2,0), (2,1)
        np.testing.assert_allclose(
            [tril[j, 1, 0], tril[j, 2, 0], tril[j, 2, 1]], blk[j, 3:], rtol=1e-6
        )
        assert np.all(np.triu(tril[j], 1) == 0)
    np.testing.assert_allclose(m.weights.numpy(), special.softmax(raw[-k:].numpy()), rtol=1e-6)


@pytest.mark.parametrize("transform", ["softplus", "exp", "elu"])
def test_scale_transform_values_and_floor(transform):
    floor = 1e-3
    head = MDNHead(1, 1, 5, scale_transform=transform, min_scale=floor)
    a = np.array([-1e4, -30.0, -1.0, 0.5, 3.0])
    bias = torch.zeros(head.num_params)
    bias[5:10] = torch.tensor(a)
    _set_bias(head, bias)
    got = head(torch.zeros(1)).scale[:, 0].detach().double().numpy()
    if transform == "softplus":
        want = np.logaddexp(0, a) + floor
    elif transform == "exp":
        want = np.exp(a) + floor
    else:
        want = np.where(a > 0, a, np.expm1(a)) + 1 + floor
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got.min() >= floor and got[0] == pytest.approx(floor, rel=1e-6)
    # Very large raw values stay finite.
    bias[5:10] = 1e4
    _set_bias(head, bias)
    assert torch.isfinite(head(torch.zeros(1)).scale).all()


def test_gradients_flow_through_head():
    head = MDNHead(3, 2, 4, covariance="full")
    x = torch.randn(16, 3)
    loss = -head(x).log_prob(torch.randn(16, 2)).mean()
    loss.backward()
    assert head.proj.weight.grad is not None and torch.isfinite(head.proj.weight.grad).all()
    assert head.proj.weight.grad.abs().sum() > 0


def test_kmeans_finds_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0], [0.0, -10.0]])
    y = centres.repeat_interleave(100, 0) + 0.3 * torch.randn(400, 2, generator=g)
    c, labels = kmeans(y, 4, generator=1)
    # Each true centre has a found centre within 0.2 (the mean of 100 points has SE 0.03).
    dist = torch.cdist(centres.double(), c)
    assert (dist.min(1).values < 0.2).all()
    assert len(set(labels.tolist())) == 4
    with pytest.raises(ValueError, match="at least k=5"):
        kmeans(y[:4], 5)


def test_init_from_data_spreads_means_kmeans():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0]])
    y = centres.repeat_interleave(200, 0) + 0.5 * torch.randn(600, 2, generator=g)
    head = MDNHead(5, 2, 3).init_from_data(y)
    m = head(torch.randn(64, 5, generator=g))
    # Every true cluster centre is close to some component mean for every input row.
    dist = torch.cdist(m.loc.detach(), centres.expand(64, 3, 2))  # (64, K, 3)
    assert (dist.min(1).values < 1.5).all()
    # Components start with about the spread of their cluster and nearly equal weights.
    assert ((m.scale > 0.2) & (m.scale < 1.5)).all()
    w = m.weights.detach()
    assert (w > 0.2).all()
    # The initial NLL is close to that of the generating mixture (SciPy-free closed form:
    # -log p for three well separated, equally weighted clusters).
    nll = -m[0].log_prob(y).mean().item()
    want = math.log(3) + math.log(2 * math.pi * 0.25) + 1.0
    assert nll < want + 0.5


def test_init_from_data_quantiles_1d():
    y = torch.linspace(0, 1, 1001).unsqueeze(-1)
    head = MDNHead(2, 1, 4).init_from_data(y)
    with torch.no_grad():
        loc = head.proj.bias[:4].clone()
    np.testing.assert_allclose(loc.detach().numpy(), [0.125, 0.375, 0.625, 0.875], atol=1e-3)
    np.testing.assert_allclose(head.proj.weight[:4].detach().abs().max().item(), 0, atol=0.2)


@pytest.mark.parametrize("cov", ["spherical", "full"])
def test_init_from_data_other_covariances(cov):
    y = torch.randn(300, 3, generator=torch.Generator().manual_seed(3))
    head = MDNHead(2, 3, 4, covariance=cov).init_from_data(y)
    m = head(torch.zeros(1, 2))
    assert torch.isfinite(m.log_prob(y[:, None, :])).all()


def test_errors():
    with pytest.raises(ValueError, match="in_features"):
        MDNHead(0, 1, 2)
    with pytest.raises(ValueError, match="num_components"):
        MDNHead(3, 1, 2.5)
    with pytest.raises(ValueError, match="out_features"):
        MDNHead(3, True, 2)
    with pytest.raises(ValueError, match="covariance"):
        MDNHead(3, 1, 2, covariance="tied")
    with pytest.raises(ValueError, match="scale_transform"):
        MDNHead(3, 1, 2, scale_transform="relu")
    with pytest.raises(ValueError, match="min_scale"):
        MDNHead(3, 1, 2, min_scale=-1.0)
    head = MDNHead(3, 2, 2)
    with pytest.raises(ValueError, match="in_features=3"):
        head(torch.zeros(4, 5))
    with pytest.raises(ValueError, match=f"{head.num_params} mixture parameters"):
        head.mixture(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        head.init_from_data(torch.zeros(10, 3))
    with pytest.raises(ValueError, match="NaN"):
        head.init_from_data(torch.full((10, 2), math.nan))
    with pytest.raises(ValueError, match="method"):
        head.init_from_data(torch.zeros(10, 2), method="random")
    with pytest.raises(ValueError, match="1-D"):
        head.init_from_data(torch.zeros(10, 2), method="quantile")
    with pytest.raises(ValueError, match="at least K=2"):
        head.init_from_data(torch.zeros(1, 2))
