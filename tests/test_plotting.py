"""Tests for mdnkit.plotting: figure contents (axes, data in artists, finite images), not pixels."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from mdnkit import GaussianMixture, plotting

plt.switch_backend("Agg")


class TwoBranch(nn.Module):
    """A fixed conditional mixture: y | x ~ 0.3 N(x, 0.5^2) + 0.7 N(-x, 1)."""

    in_features = 1

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        n = x.shape[:-1]
        loc = torch.stack([x, -x], -2)  # (..., 2, 1)
        scale = torch.tensor([[0.5], [1.0]]).expand(*n, 2, 1)
        logits = torch.log(torch.tensor([0.3, 0.7])).expand(*n, 2)
        return GaussianMixture(logits, loc, scale)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, (400, 1))
    return x, np.where(rng.uniform(size=(400, 1)) < 0.3, x, -x) + 0.1 * rng.standard_normal(
        (400, 1)
    )


def test_density_heatmap_matches_scipy_and_shows_data(data):
    x, y = data
    fig = plotting.density_heatmap(
        TwoBranch(), x, y, n_x=30, n_y=40, x_range=(-2, 2), y_range=(-4, 4)
    )
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the image and its colour bar
    img = ax.images[0].get_array()
    assert img.shape == (40, 30) and np.isfinite(img).all()
    gx, gy = np.linspace(-2, 2, 30), np.linspace(-4, 4, 40)
    ref = 0.3 * stats.norm.pdf(gy[:, None], gx[None, :], 0.5) + 0.7 * stats.norm.pdf(
        gy[:, None], -gx[None, :], 1.0
    )
    np.testing.assert_allclose(np.asarray(img), ref, rtol=1e-4, atol=1e-7)
    offsets = ax.collections[0].get_offsets()
    assert len(offsets) == 400
    np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(x[:, 0]))
    log_fig = plotting.density_heatmap(TwoBranch(), x, y, log=True, n_x=10, n_y=10)
    assert np.isfinite(np.asarray(log_fig.axes[0].images[0].get_array())).all()


def test_samples_plot_draws_from_the_model(data):
    x, y = data
    fig = plotting.samples_plot(TwoBranch(), x, y, n_x=50, samples_per_x=40, seed=1)
    ax = fig.axes[0]
    data_pts, samples = ax.collections[0].get_offsets(), ax.collections[1].get_offsets()
    assert len(data_pts) == 400 and len(samples) == 50 * 40
    # P(y has the sign of x) under the model, averaged over the sampled inputs (|x| > 1)
    sx, sy = samples[:, 0], samples[:, 1]
    keep = np.abs(sx) > 1
    p = 0.3 * stats.norm.cdf(np.abs(sx[keep]) / 0.5) + 0.7 * stats.norm.cdf(-np.abs(sx[keep]))
    frac = np.mean(np.sign(sy[keep]) == np.sign(sx[keep]))
    assert frac == pytest.approx(p.mean(), abs=4 * np.sqrt(p.mean() * (1 - p.mean()) / keep.sum()))
    same = plotting.samples_plot(TwoBranch(), x, y, n_x=50, samples_per_x=40, seed=1)
    np.testing.assert_array_equal(same.axes[0].collections[1].get_offsets(), samples)


def test_mixture_pdf_components_sum_to_total():
    fig = plotting.mixture_pdf_plot(TwoBranch(), 1.0, y_range=(-5, 5), n_y=101)
    lines = fig.axes[0].lines
    assert len(lines) == 3  # two weighted components and the total
    total = lines[-1].get_ydata()
    np.testing.assert_allclose(lines[0].get_ydata() + lines[1].get_ydata(), total, rtol=1e-5)
    g = np.linspace(-5, 5, 101)
    ref = 0.3 * stats.norm.pdf(g, 1.0, 0.5) + 0.7 * stats.norm.pdf(g, -1.0, 1.0)
    np.testing.assert_allclose(total, ref, rtol=1e-5)
    with pytest.raises(ValueError, match="1 values"):
        plotting.mixture_pdf_plot(TwoBranch(), [0.0, 1.0])


def test_temperature_grid_layout_and_greedy_limit(data):
    x, y = data
    fig = plotting.temperature_grid(
        TwoBranch(),
        x,
        y,
        temperatures=(0.0, 1.0, 5.0),
        sigma_temperatures=(0.0, 1.0),
        n_x=20,
        samples_per_x=5,
    )
    assert len(fig.axes) == 6
    greedy = fig.axes[0].collections[1].get_offsets()  # T = 0, S = 0: the heaviest mean, -x
    np.testing.assert_allclose(greedy[:, 1], -greedy[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        plotting.temperature_grid(TwoBranch(), x, y, temperatures=())


def test_components_plot_values(data):
    x, _ = data
    fig = plotting.components_plot(TwoBranch(), x, n_x=25)
    assert len(fig.axes) == 3
    means, scales, weights = (ax.lines for ax in fig.axes)
    gx = means[0].get_xdata()
    np.testing.assert_allclose(means[0].get_ydata(), gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(means[1].get_ydata(), -gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scales[0].get_ydata(), 0.5, rtol=1e-6)
    np.testing.assert_allclose(weights[1].get_ydata(), 0.7, rtol=1e-6)


def test_training_curves_from_dict_and_history_like():
    h = {
        "train_nll": [3.0, 2.0, 1.5, 1.4],
        "val_nll": [2.9, 2.1, 1.6, 1.7],
        "lr": [1e-2, 1e-2, 5e-3, 5e-3],
        "best_epoch": 2,
    }
    fig = plotting.training_curves(h)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), h["train_nll"])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), h["val_nll"])
    assert ax.lines[2].get_xdata()[0] == 3  # the kept epoch, 1-based
    assert len(fig.axes) == 2  # learning rate on a twin axis

    class Hist:
        def as_dict(self):
            return {"train_nll": [1.0, 0.5], "val_nll": [], "lr": [1e-3, 1e-3], "best_epoch": 1}

    assert len(plotting.training_curves(Hist()).axes) == 1
    with pytest.raises(TypeError, match="train_nll"):
        plotting.training_curves([1, 2])


def test_pit_histogram_density():
    u = np.random.default_rng(0).uniform(size=5000)
    fig = plotting.pit_histogram(u, bins=10)
    heights = [p.get_height() for p in fig.axes[0].containers[0].patches]
    assert len(heights) == 10
    assert sum(h * 0.1 for h in heights) == pytest.approx(1.0)
    assert max(abs(h - 1) for h in heights) < 0.15
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plotting.pit_histogram(np.array([0.5, 1.5]))


def test_model_must_return_a_mixture(data):
    x, y = data
    with pytest.raises(TypeError, match="GaussianMixture"):
        plotting.density_heatmap(lambda t: t, x, y)
    with pytest.raises(ValueError, match="x_range"):
        plotting.density_heatmap(TwoBranch())


def test_real_mdn_with_several_outputs():
    from mdnkit.models import MDN

    torch.manual_seed(0)
    model = MDN(2, 2, hidden=(8,), num_components=3)
    x = np.random.default_rng(1).normal(size=(50, 2))
    y = np.random.default_rng(2).normal(size=(50, 2))
    fig = plotting.density_heatmap(model, x, y, x_dim=1, y_dim=1, n_x=12, n_y=14)
    assert np.isfinite(np.asarray(fig.axes[0].images[0].get_array())).all()
    np.testing.assert_allclose(
        np.sort(fig.axes[0].collections[0].get_offsets()[:, 1]), np.sort(y[:, 1])
    )
    assert model.training  # the model's mode is restored
    with pytest.raises(ValueError, match="y_dim"):
        plotting.components_plot(model, x, y_dim=2)
