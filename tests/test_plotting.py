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
    # the lighter component (0.3, at +x) first and below, the dominant one (0.7) last, on top,
    # bolder; the legend: the total, then the components by weight
    light, heavy = lines[0], lines[1]
    np.testing.assert_allclose(light.get_ydata(), 0.3 * stats.norm.pdf(g, 1.0, 0.5), rtol=1e-5)
    assert heavy.get_zorder() > light.get_zorder() > lines[-1].get_zorder()
    assert heavy.get_linewidth() > light.get_linewidth() and heavy.get_alpha() > light.get_alpha()
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["p(y | x = 1)", "π1 = 0.70", "π0 = 0.30"]
    with pytest.raises(ValueError, match="1 values"):
        plotting.mixture_pdf_plot(TwoBranch(), [0.0, 1.0])
    named = plotting.mixture_pdf_plot(TwoBranch(), 1.0, x_names=["AT"], y_names=["PE"])
    assert named.axes[0].get_legend().get_texts()[0].get_text() == "p(PE | AT = 1)"
    assert named.axes[0].get_xlabel() == "PE" and named.axes[0].get_title() == "mixture at AT = 1"


def test_mixture_pdf_leaves_out_negligible_components():
    class Three(TwoBranch):
        def forward(self, x):
            n = x.shape[:-1]
            loc = torch.stack([x, -x, 0 * x], -2)
            scale = torch.ones(*n, 3, 1)
            logits = torch.log(torch.tensor([0.2, 0.799, 0.001])).expand(*n, 3)
            return GaussianMixture(logits, loc, scale)

    fig = plotting.mixture_pdf_plot(Three(), 1.0)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["p(y | x = 1)", "π1 = 0.80", "π0 = 0.20"]
    assert legend.get_title().get_text() == "1 components of weight < 0.005 not listed"
    widths = [line.get_linewidth() for line in fig.axes[0].lines[:3]]
    assert widths == sorted(widths)  # drawn from the lightest (thinnest) to the heaviest


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
    # the first epochs stay on the axis (the demo's curve starts well above the rest) ...
    steep = {"train_nll": [2.44, 1.83, 1.68] + list(np.linspace(1.6, 1.29, 147))}
    lo, hi = plotting.training_curves(steep).axes[0].get_ylim()
    assert lo < 1.29 and hi > 2.44
    # ... unless one is far off the others: cut, and a note says so
    wild = {"train_nll": [5000.0] + list(np.linspace(1.6, 1.29, 50))}
    ax = plotting.training_curves(wild).axes[0]
    assert ax.get_ylim()[1] < 100
    assert [t.get_text() for t in ax.texts] == ["1 values above the axis (largest 5000)"]
    with pytest.raises(TypeError, match="train_nll"):
        plotting.training_curves([1, 2])


def test_pit_histogram_density():
    u = np.random.default_rng(0).uniform(size=5000)
    fig = plotting.pit_histogram(u, bins=10)
    heights = [p.get_height() for p in fig.axes[0].containers[0].patches]
    assert len(heights) == 10
    assert sum(h * 0.1 for h in heights) == pytest.approx(1.0)
    assert max(abs(h - 1) for h in heights) < 0.15
    legend = fig.axes[0].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0].startswith("±2 s.e. of a bar for 5000 values") and "calibrated" in texts[1]
    assert "over-confident" in legend.get_title().get_text()
    span = fig.axes[0].patches[-1]  # the band: 1 ± 2 sqrt(p (1 - p) / N) / p
    band = span.get_patch_transform().transform(span.get_path().vertices)[:, 1]
    half = 2 * np.sqrt(0.1 * 0.9 / 5000) / 0.1
    np.testing.assert_allclose([band.min(), band.max()], [1 - half, 1 + half], rtol=1e-9)
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
    ax = fig.axes[0]
    assert np.isfinite(np.asarray(ax.images[0].get_array())).all()
    off, near = (c.get_offsets() for c in ax.collections[:2])  # every row, in one of the two
    np.testing.assert_allclose(np.sort(np.concatenate([off, near])[:, 1]), np.sort(y[:, 1]))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x[1]", "y[1]")
    assert model.training  # the model's mode is restored
    with pytest.raises(ValueError, match="y_dim"):
        plotting.components_plot(model, x, y_dim=2)


class ThreeInputs(nn.Module):
    """A fixed mixture of three inputs: y | x ~ 0.4 N(x0 + x1, 0.5^2) + 0.6 N(x0 - x2, 1)."""

    in_features = 3

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        n = x.shape[:-1]
        loc = torch.stack([x[..., 0] + x[..., 1], x[..., 0] - x[..., 2]], -1).unsqueeze(-1)
        scale = torch.tensor([[0.5], [1.0]], dtype=x.dtype).expand(*n, 2, 1)
        logits = torch.log(torch.tensor([0.4, 0.6], dtype=x.dtype)).expand(*n, 2)
        return GaussianMixture(logits, loc, scale)


NAMES = ["a", "b", "c"]


def _three_pdf(y, x):
    """The density of ThreeInputs, with SciPy."""
    return 0.4 * stats.norm.pdf(y, x[..., 0] + x[..., 1], 0.5) + 0.6 * stats.norm.pdf(
        y, x[..., 0] - x[..., 2], 1.0
    )


def _three_cdf(y, x):
    return 0.4 * stats.norm.cdf(y, x[..., 0] + x[..., 1], 0.5) + 0.6 * stats.norm.cdf(
        y, x[..., 0] - x[..., 2], 1.0
    )


@pytest.fixture
def three():
    """400 rows of correlated inputs (means 1, -2, 0.5) and targets drawn from ThreeInputs."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((400, 3))
    x = np.column_stack([z[:, 0], 0.6 * z[:, 0] + 0.8 * z[:, 1], z[:, 2]]) + [1.0, -2.0, 0.5]
    first = rng.uniform(size=400) < 0.4
    y = np.where(first, x[:, 0] + x[:, 1], x[:, 0] - x[:, 2])
    y = y + np.where(first, 0.5, 1.0) * rng.standard_normal(400)
    return x, y[:, None]


def test_slice_names_its_columns_and_held_values(three):
    x, y = three
    kw = {"n_x": 20, "n_y": 30, "x_range": (-4, 0), "y_range": (-6, 4)}
    fig = plotting.density_heatmap(
        ThreeInputs(), x, y, x_dim="b", x_names=NAMES, y_names=["t"], **kw
    )
    ax = fig.axes[0]
    mean = x.mean(0)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("b", "t")
    held = f"other inputs held at a = {mean[0]:.4g}, c = {mean[2]:.4g} (mean of the data)"
    assert ax.get_title() == f"conditional density p(t | b) on a slice\n{held}"
    # the image is p(t | a = mean, b, c = mean), by SciPy
    gx, gy = np.linspace(-4, 0, 20), np.linspace(-6, 4, 30)
    grid = np.column_stack([np.full(20, mean[0]), gx, np.full(20, mean[2])])
    ref = _three_pdf(gy[:, None], grid[None, :, :])
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), ref, rtol=1e-4, atol=1e-7)
    # rows near the slice: the 10 % nearest in standardised distance of a and c, in full
    z = (x[:, [0, 2]] - mean[[0, 2]]) / x[:, [0, 2]].std(0)
    dist = np.hypot(z[:, 0], z[:, 1])
    near = dist <= np.quantile(dist, 0.1)
    off, on = (c.get_offsets() for c in ax.collections[:2])
    np.testing.assert_allclose(np.sort(on[:, 0]), np.sort(x[near, 1]))
    np.testing.assert_allclose(np.sort(off[:, 1]), np.sort(y[~near, 0]))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "other rows: off the slice (faded)"
    assert labels[1].startswith(f"{near.sum()} of 400 rows near the slice")
    assert ax.collections[0].get_alpha() < ax.collections[1].get_alpha()


def test_slice_at_given_values(three):
    x, y = three
    kw = {"n_x": 10, "n_y": 12, "y_range": (-5, 5)}
    fig = plotting.density_heatmap(ThreeInputs(), x, y, x_dim=0, at={"c": 2.0}, x_names=NAMES, **kw)
    ax = fig.axes[0]
    assert ax.get_title().endswith(f"c = 2 (given); b = {x[:, 1].mean():.4g} (mean of the data)")
    gx = ax.images[0].get_extent()[:2]
    grid = np.column_stack([np.linspace(*gx, 10), np.full(10, x[:, 1].mean()), np.full(10, 2.0)])
    ref = _three_pdf(np.linspace(-5, 5, 12)[:, None], grid[None])
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), ref, rtol=1e-4, atol=1e-7)
    # the held values without data: the model's training mean, here absent: zero
    bare = plotting.density_heatmap(ThreeInputs(), x_range=(0, 1), x_dim=2, n_x=5, n_y=5)
    assert bare.axes[0].get_title().endswith("x[0] = 0, x[1] = 0 (zero)")
    with pytest.raises(
        ValueError, match="x_dim: unknown input column 'zz', expected one of a, b, c"
    ):
        plotting.density_heatmap(ThreeInputs(), x, y, x_dim="zz", x_names=NAMES)
    with pytest.raises(ValueError, match="at: unknown input column 'q'"):
        plotting.samples_plot(ThreeInputs(), x, y, at={"q": 1.0}, x_names=NAMES)
    with pytest.raises(ValueError, match="varies along the axis"):
        plotting.density_heatmap(ThreeInputs(), x, y, at={"a": 1.0}, x_names=NAMES)
    with pytest.raises(ValueError, match="x_names must hold 3 names"):
        plotting.components_plot(ThreeInputs(), x, x_names=["a"])


def test_other_slice_pictures_name_columns(three):
    x, y = three
    kw = {"x_dim": "c", "x_names": NAMES, "y_names": ["t"]}
    fig = plotting.samples_plot(ThreeInputs(), x, y, n_x=10, samples_per_x=3, **kw)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("c", "t")
    assert "a = " in ax.get_title() and "b = " in ax.get_title()
    assert ax.get_legend().get_texts()[-1].get_text() == "samples (T = 1, S = 1)"
    fig = plotting.components_plot(ThreeInputs(), x, n_x=15, **kw)
    assert fig.axes[2].get_xlabel() == "c" and "(mean of the data)" in fig.axes[0].get_title()
    means = fig.axes[0].lines
    gx = means[0].get_xdata()
    np.testing.assert_allclose(means[1].get_ydata(), x[:, 0].mean() - gx, rtol=1e-5, atol=1e-5)
    fig = plotting.temperature_grid(ThreeInputs(), x, y, temperatures=(1.0,), n_x=5, **kw)
    assert (fig._supxlabel.get_text(), fig._supylabel.get_text()) == ("c", "t")
    assert "T divides the mixture logits" in fig._suptitle.get_text()
    assert "held at a = " in fig._suptitle.get_text()


def test_components_fade_where_their_weight_is_small(data):
    x, _ = data
    fig = plotting.components_plot(TwoBranch(), x, n_x=11)
    segments = fig.axes[0].collections[0]  # both components' segments, the heaviest last
    widths = segments.get_linewidths()
    assert len(widths) == 2 * 10
    # weights 0.3 and 0.7 everywhere: relative weights 3/7 and 1
    np.testing.assert_allclose(sorted(set(np.round(widths, 9))), [0.3 + 2.2 * 3 / 7, 2.5])
    assert widths[-1] == pytest.approx(2.5)


def _scipy_interval(x_row, coverage):
    from scipy.optimize import brentq

    a = (1 - coverage) / 2
    lo, hi = -60.0, 60.0
    f = lambda q: lambda v: _three_cdf(v, x_row) - q  # noqa: E731
    return brentq(f(a), lo, hi, xtol=1e-12), brentq(f(1 - a), lo, hi, xtol=1e-12)


def test_calibration_numbers_match_scipy(three):
    x, y = three
    fig = plotting.calibration_plot(
        ThreeInputs(), x, y, coverages=(0.5, 0.9), x_names=NAMES, y_names=["t"]
    )
    assert fig._suptitle.get_text() == "calibration of p(t | a, b, c) on 400 rows"
    iv, pit_ax, cov_ax = fig.axes
    assert iv.get_ylabel() == "t" and "predicted median of t" in iv.get_xlabel()
    texts = [t.get_text() for t in iv.get_legend().get_texts()]
    for coverage, text in zip((0.9, 0.5), texts):
        bounds = np.array([_scipy_interval(row, coverage) for row in x])
        inside = np.mean((y[:, 0] >= bounds[:, 0]) & (y[:, 0] <= bounds[:, 1]))
        assert text == f"{100 * coverage:g} % interval: {100 * inside:.1f} % of the 400 rows inside"
    # the bands are the SciPy intervals, rows sorted by the SciPy median
    median = np.array([_scipy_interval(row, 1e-9)[0] for row in x])
    order = np.argsort(median)
    np.testing.assert_allclose(iv.lines[0].get_ydata(), median[order], atol=1e-4)
    # the coverage curve: the fraction of SciPy PIT values inside each central interval
    u = _three_cdf(y[:, 0], x)
    curve = next(line for line in cov_ax.lines if line.get_label().startswith("observed"))
    c = curve.get_xdata()
    ref = [np.mean((u >= (1 - v) / 2) & (u <= (1 + v) / 2)) for v in c]
    np.testing.assert_allclose(curve.get_ydata(), ref, atol=1.01 / 400)
    notes = [t.get_text() for t in cov_ax.texts]
    inside90 = np.mean((u >= 0.05) & (u <= 0.95))
    assert notes == [
        f"50 %: {100 * np.mean((u >= 0.25) & (u <= 0.75)):.1f} % inside",
        f"90 %: {100 * inside90:.1f} % inside",
    ]
    assert pit_ax.get_xlabel() == "PIT value F(t): the predicted CDF at the observed t"
    heights = [p.get_height() for p in pit_ax.containers[0].patches]
    ref_h, _ = np.histogram(u, bins=20, range=(0, 1), density=True)
    np.testing.assert_allclose(heights, ref_h, atol=1e-3)


def test_interval_plot_draws_evenly_spaced_rows(three):
    x, y = three
    fig = plotting.interval_plot(ThreeInputs(), x, y, max_points=50, coverages=[0.8])
    ax = fig.axes[0]
    assert len(ax.lines[0].get_xdata()) == 50
    assert "(50 of 400 rows drawn, evenly spaced)" in ax.get_xlabel()
    assert ax.get_legend().get_texts()[0].get_text().endswith("% of the 400 rows inside")
    with pytest.raises(ValueError, match="coverages"):
        plotting.interval_plot(ThreeInputs(), x, y, coverages=[1.5])
    with pytest.raises(ValueError, match="same number of rows"):
        plotting.interval_plot(ThreeInputs(), x, y[:10])


# ------------------------------------------------------------------------------ mdnkit plot
@pytest.fixture(scope="module")
def plot_files(tmp_path_factory):
    """A CSV of three named inputs and a target, and a small model `mdnkit fit` made of it."""
    from mdnkit.cli import main
    from mdnkit.datasets import write_csv

    folder = tmp_path_factory.mktemp("plot")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 3)) + [10.0, 50.0, 1000.0]
    y = x[:, :1] - 0.1 * x[:, 1:2] + rng.normal(size=(300, 1))
    data = folder / "plant.csv"
    write_csv(data, ["AT", "V", "AP", "PE"], np.hstack([x, y]))
    model = folder / "plant.mdn"
    argv = ["fit", data, "--x", "AT,V,AP", "--y", "PE", "--hidden", "8", "--components", "2"]
    assert main([*map(str, argv), "--epochs", "2", "-o", str(model)]) == 0
    return data, model, x


def _plot(monkeypatch, capsys, *argv):
    """Run `mdnkit plot ...`; (exit status, stderr, the figure it saved or None)."""
    from mdnkit import cli

    saved = []
    real = cli._savefig_atomic
    monkeypatch.setattr(
        cli, "_savefig_atomic", lambda fig, path: (saved.append(fig), real(fig, path))
    )
    code = cli.main(["plot", *map(str, argv)])
    return code, capsys.readouterr().err, (saved[0] if saved else None)


def test_cli_plot_defaults_to_calibration_for_several_inputs(
    monkeypatch, capsys, tmp_path, plot_files
):
    data, model, _ = plot_files
    code, err, fig = _plot(monkeypatch, capsys, model, data, "-o", tmp_path / "cal.png")
    assert code == 0, err
    assert fig._suptitle.get_text() == "calibration of p(PE | AT, V, AP) on 300 rows"
    assert fig.axes[0].get_ylabel() == "PE" and (tmp_path / "cal.png").exists()


def test_cli_plot_slice_by_name(monkeypatch, capsys, tmp_path, plot_files):
    data, model, x = plot_files
    out = tmp_path / "slice.png"
    argv = [model, data, "--kind", "density", "--x-dim", "V", "--at", "AP=1001.5", "-o", out]
    code, err, fig = _plot(monkeypatch, capsys, *argv)
    assert code == 0, err
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("V", "PE")
    assert ax.get_title() == (
        "conditional density p(PE | V) on a slice\n"
        f"other inputs held at AP = 1002 (given); AT = {x[:, 0].mean():.4g} (mean of the data)"
    )
    code, err, fig = _plot(monkeypatch, capsys, model, "--kind", "components", "-o", out)
    assert code == 0, err
    assert fig.axes[2].get_xlabel() == "AT" and "(training mean)" in fig.axes[0].get_title()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--x-dim", "XX"],
            "--x-dim: unknown column 'XX', expected one of AT, V, AP or a position",
        ),
        (["--x-dim", "3"], "--x-dim must be in [0, 3), found 3"),
        (["--y-dim", "AT"], "--y-dim: unknown column 'AT', expected one of PE or a position"),
        (["--kind", "density", "--at", "ZZ=1"], "unknown input column 'ZZ'"),
        (["--kind", "density", "--at", "AP"], "--at: expected NAME=VALUE, found 'AP'"),
    ],
)
def test_cli_plot_bad_columns_one_line(monkeypatch, capsys, tmp_path, plot_files, argv, message):
    data, model, _ = plot_files
    out = tmp_path / "bad.png"
    code, err, fig = _plot(monkeypatch, capsys, model, data, *argv, "-o", out)
    assert code == 2 and fig is None and not out.exists()
    assert len(err.strip().splitlines()) == 1 and message in err, err
