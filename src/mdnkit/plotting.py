r"""The pictures people want to look at, with matplotlib.

Every function returns a :class:`matplotlib.figure.Figure` (save it with ``fig.savefig(path)``).
``model`` is anything whose ``forward(x)`` returns a :class:`~mdnkit.GaussianMixture` (an
:class:`~mdnkit.MDN`, a fitted estimator's network, your own module); it is called in evaluation
mode without gradients.  The functions about one input and one output (density heatmap, samples,
components) use input column ``x_dim`` while holding the others at their mean, and output
dimension ``y_dim`` (its marginal).

===========================  ===============================================================
:func:`density_heatmap`      :math:`p(y \mid x)` over a grid of x and y, with the data on top
:func:`samples_plot`         draws from the model at many x, over the data
:func:`mixture_pdf_plot`     :math:`p(y \mid x_0)` and its weighted components at one x
:func:`temperature_grid`     samples at several temperatures, side by side
:func:`components_plot`      component means, scales and weights against x
:func:`training_curves`      training and validation NLL (and learning rate) per epoch
:func:`pit_histogram`        histogram of PIT values against the uniform line
===========================  ===============================================================

When no display is available (no ``DISPLAY`` on Linux) the non-interactive Agg backend is
selected before pyplot is first imported.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import checks
from .mixture import GaussianMixture

__all__ = [
    "density_heatmap",
    "samples_plot",
    "mixture_pdf_plot",
    "temperature_grid",
    "components_plot",
    "training_curves",
    "pit_histogram",
]


def _plt():
    """pyplot, on the Agg backend when headless."""
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        headless = sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        )
        if headless:
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _np(a: Any, name: str) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of numbers, found {type(a).__name__}") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, features), found {arr.shape}")
    return arr


def _model_io(model: Any) -> tuple[torch.dtype, torch.device]:
    if isinstance(model, torch.nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            if t.is_floating_point():
                return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def _predict(model: Any, x: np.ndarray) -> GaussianMixture:
    """Call the model on ``x`` (N, in) in eval mode without gradients; restore its mode."""
    dtype, device = _model_io(model)
    was = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            m = model(torch.as_tensor(x, dtype=dtype, device=device))
    finally:
        if was and hasattr(model, "train"):
            model.train(was)
    if not isinstance(m, GaussianMixture):
        raise TypeError(f"model(x) must return a GaussianMixture, found {type(m).__name__}")
    return m


def _in_features(model: Any, x: np.ndarray | None) -> int:
    n = getattr(model, "in_features", None)
    if isinstance(n, int):
        return n
    if x is not None:
        return x.shape[1]
    return 1


def _x_grid(
    model: Any, x: np.ndarray | None, n: int, x_range: tuple[float, float] | None, x_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """(grid values of input ``x_dim``, full inputs (n, in) with the other columns at their mean)."""
    nin = _in_features(model, x)
    if not 0 <= x_dim < nin:
        raise ValueError(f"x_dim must be in [0, {nin}), found {x_dim}")
    if x_range is None:
        if x is None:
            raise ValueError("give x (data) or x_range to choose the input grid")
        lo, hi = float(x[:, x_dim].min()), float(x[:, x_dim].max())
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        x_range = (lo - pad, hi + pad)
    grid = np.linspace(x_range[0], x_range[1], n)
    if x is not None:
        base = x.mean(0)
    elif isinstance(getattr(model, "x_mean", None), Tensor) and model.x_mean.numel() == nin:
        base = model.x_mean.detach().double().cpu().numpy()  # the training inputs' mean
    else:
        base = np.zeros(nin)
    full = np.tile(base, (n, 1))
    full[:, x_dim] = grid
    return grid, full


def _marginal(m: GaussianMixture, y_dim: int) -> GaussianMixture:
    d = m.event_shape[0]
    if not 0 <= y_dim < d:
        raise ValueError(f"y_dim must be in [0, {d}), found {y_dim}")
    return m if d == 1 else m.marginal(y_dim)


def _y_range(m: GaussianMixture, y: np.ndarray | None, y_dim: int) -> tuple[float, float]:
    if y is not None:
        lo, hi = float(y[:, y_dim].min()), float(y[:, y_dim].max())
    else:
        loc = m.loc[..., 0].double()
        sd = m.component_variance[..., 0].double().sqrt()
        lo, hi = float((loc - 3 * sd).min()), float((loc + 3 * sd).max())
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def _new_ax(ax, figsize):
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def density_heatmap(
    model: Any,
    x: Any = None,
    y: Any = None,
    *,
    n_x: int = 200,
    n_y: int = 200,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    x_dim: int = 0,
    y_dim: int = 0,
    log: bool = False,
    cmap: str = "magma",
    max_points: int = 3000,
    ax=None,
    title: str | None = "conditional density p(y | x)",
):
    r"""Heatmap of the conditional density :math:`p(y \mid x)` with the data on top.

    For every ``x`` on an ``n_x`` grid the model's mixture gives
    :math:`p(y\mid x) = \sum_k \pi_k(x)\,\mathcal{N}(y\mid\mu_k(x),\sigma_k^2(x))` on an ``n_y``
    grid of ``y`` (each column is one predictive density); ``log=True`` shows
    :math:`\log p`.  The data (at most ``max_points`` of them) are drawn as small dots.

    Example:
        >>> fig = density_heatmap(model, x_train, y_train)
        >>> fig.savefig("density.png")
    """
    x = _np(x, "x") if x is not None else None
    y = _np(y, "y") if y is not None else None
    gx, full = _x_grid(model, x, n_x, x_range, x_dim)
    m = _marginal(_predict(model, full), y_dim)
    lo, hi = y_range if y_range is not None else _y_range(m, y, y_dim)
    gy = np.linspace(lo, hi, n_y)
    yt = torch.as_tensor(gy, dtype=m.loc.dtype, device=m.loc.device).reshape(n_y, 1, 1)
    with torch.no_grad():
        logp = m.log_prob(yt).double().cpu().numpy()  # (n_y, n_x)
    img = logp if log else np.exp(logp)
    if log:
        img = np.maximum(img, img.max() - 20.0)  # keep the colour range readable
    fig, ax = _new_ax(ax, (7, 5))
    im = ax.imshow(
        img,
        origin="lower",
        aspect="auto",
        extent=(gx[0], gx[-1], gy[0], gy[-1]),
        cmap=cmap,
        interpolation="nearest",
    )
    fig.colorbar(im, ax=ax, label="log p(y | x)" if log else "p(y | x)")
    if x is not None and y is not None:
        idx = np.random.default_rng(0).permutation(len(x))[:max_points]
        ax.scatter(x[idx, x_dim], y[idx, y_dim], s=2, c="white", alpha=0.35, lw=0, label="data")
    ax.set_xlim(gx[0], gx[-1])
    ax.set_ylim(gy[0], gy[-1])
    ax.set_xlabel(f"x[{x_dim}]" if _in_features(model, x) > 1 else "x")
    ax.set_ylabel("y" if y_dim == 0 else f"y[{y_dim}]")
    if title:
        ax.set_title(title)
    return fig


def _draw(
    model: Any,
    full: np.ndarray,
    samples_per_x: int,
    temperature: float,
    sigma_temperature: float,
    seed: int,
    y_dim: int,
) -> np.ndarray:
    m = _predict(model, full)
    s = m.sample(
        (samples_per_x,),
        temperature=temperature,
        sigma_temperature=sigma_temperature,
        generator=seed,
    )  # (S, n, D)
    return s[..., y_dim].double().cpu().numpy()


def samples_plot(
    model: Any,
    x: Any,
    y: Any = None,
    *,
    n_x: int = 100,
    samples_per_x: int = 20,
    temperature: float = 1.0,
    sigma_temperature: float = 1.0,
    seed: int = 0,
    x_range: tuple[float, float] | None = None,
    x_dim: int = 0,
    y_dim: int = 0,
    ax=None,
    title: str | None = "samples from the model",
):
    r"""Samples :math:`y \sim p(y\mid x)` at ``n_x`` inputs (``samples_per_x`` each) over the data.

    Temperatures follow the project's convention (``temperature`` divides the logits,
    ``sigma_temperature`` multiplies the variances); ``seed`` makes the picture reproducible.

    Example:
        >>> fig = samples_plot(model, x_train, y_train, temperature=0.5)
    """
    x = _np(x, "x")
    y = _np(y, "y") if y is not None else None
    gx, full = _x_grid(model, x, n_x, x_range, x_dim)
    s = _draw(model, full, samples_per_x, temperature, sigma_temperature, seed, y_dim)
    fig, ax = _new_ax(ax, (7, 5))
    if y is not None:
        ax.scatter(x[:, x_dim], y[:, y_dim], s=4, c="0.6", alpha=0.5, lw=0, label="data")
    ax.scatter(
        np.broadcast_to(gx, s.shape).ravel(),
        s.ravel(),
        s=4,
        c="C3",
        alpha=0.6,
        lw=0,
        label=f"samples (T={temperature:g}, S={sigma_temperature:g})",
    )
    ax.legend(loc="upper left", markerscale=3, fontsize="small")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title)
    return fig


def mixture_pdf_plot(
    model: Any,
    x0: float | Sequence[float] | np.ndarray,
    *,
    y_range: tuple[float, float] | None = None,
    n_y: int = 500,
    y_dim: int = 0,
    ax=None,
    title: str | None = None,
):
    r"""The predictive density at one input and its weighted components.

    Draws :math:`p(y\mid x_0) = \sum_k \pi_k \mathcal{N}(y\mid\mu_k,\sigma_k^2)` (thick) and
    every :math:`\pi_k\mathcal{N}(y\mid\mu_k,\sigma_k^2)` (thin, dashed): the components sum to
    the total.  ``x0`` is a number (one input feature) or a full input vector.

    Example:
        >>> fig = mixture_pdf_plot(model, 0.0)
    """
    x0a = np.atleast_1d(np.asarray(x0, dtype=np.float64)).reshape(1, -1)
    nin = _in_features(model, None)
    if x0a.shape[1] != nin:
        raise ValueError(f"x0 must have {nin} values (the model's inputs), found {x0a.shape[1]}")
    m = _marginal(_predict(model, x0a), y_dim)[0]
    lo, hi = y_range if y_range is not None else _y_range(m, None, 0)
    gy = np.linspace(lo, hi, n_y)
    yt = torch.as_tensor(gy, dtype=m.loc.dtype, device=m.loc.device).reshape(n_y, 1)
    with torch.no_grad():
        total = m.log_prob(yt).exp().double().cpu().numpy()
        comp = (m.logits + m.component_log_prob(yt)).exp().double().cpu().numpy()  # (n_y, K)
    fig, ax = _new_ax(ax, (7, 4))
    weights = m.weights.double().cpu().numpy()
    for k in range(comp.shape[1]):
        ax.plot(gy, comp[:, k], ls="--", lw=1, label=f"π{k} = {weights[k]:.2f}")
    ax.plot(gy, total, c="k", lw=2.2, label="p(y | x0)")
    ax.fill_between(gy, total, color="0.85", zorder=0)
    ax.set_xlim(gy[0], gy[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("y")
    ax.set_ylabel("density")
    ax.legend(fontsize="small", ncol=2 if comp.shape[1] > 6 else 1)
    x_txt = ", ".join(f"{v:g}" for v in x0a[0])
    ax.set_title(title if title is not None else f"mixture at x = {x_txt}")
    return fig


def temperature_grid(
    model: Any,
    x: Any,
    y: Any = None,
    *,
    temperatures: Sequence[float] = (0.1, 0.5, 1.0, 2.0),
    sigma_temperatures: Sequence[float] = (1.0,),
    n_x: int = 100,
    samples_per_x: int = 10,
    seed: int = 0,
    x_dim: int = 0,
    y_dim: int = 0,
):
    r"""A grid of sample plots: one row per ``sigma_temperature`` S, one column per temperature T.

    T divides the mixture logits (→0: always the most likely component, large: every component
    equally often); S multiplies the component variances.  Axes share their limits.

    Example:
        >>> fig = temperature_grid(model, x, y, temperatures=(0.5, 1, 2))
        >>> len(fig.axes)
        3
    """
    temperatures, sigma_temperatures = list(temperatures), list(sigma_temperatures)
    if not temperatures or not sigma_temperatures:
        raise ValueError("temperatures and sigma_temperatures must each hold at least one value")
    x = _np(x, "x")
    y = _np(y, "y") if y is not None else None
    plt = _plt()
    rows, cols = len(sigma_temperatures), len(temperatures)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.2 * cols, 2.8 * rows),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    gx, full = _x_grid(model, x, n_x, None, x_dim)
    for i, s_t in enumerate(sigma_temperatures):
        for j, t in enumerate(temperatures):
            ax = axes[i, j]
            s = _draw(model, full, samples_per_x, t, s_t, seed, y_dim)
            if y is not None:
                ax.scatter(x[:, x_dim], y[:, y_dim], s=2, c="0.75", lw=0)
            ax.scatter(
                np.broadcast_to(gx, s.shape).ravel(), s.ravel(), s=2, c="C3", alpha=0.6, lw=0
            )
            ax.set_title(
                f"T = {t:g}" + (f", S = {s_t:g}" if rows > 1 or s_t != 1 else ""), fontsize="medium"
            )
    fig.supxlabel("x")
    fig.supylabel("y")
    return fig


def components_plot(
    model: Any,
    x: Any = None,
    *,
    n_x: int = 200,
    x_range: tuple[float, float] | None = None,
    x_dim: int = 0,
    y_dim: int = 0,
):
    r"""Component means :math:`\mu_k(x)`, scales :math:`\sigma_k(x)` and weights :math:`\pi_k(x)`
    against x, one line per component, in three stacked panels.

    Example:
        >>> fig = components_plot(model, x_train)
        >>> len(fig.axes)
        3
    """
    x = _np(x, "x") if x is not None else None
    gx, full = _x_grid(model, x, n_x, x_range, x_dim)
    m = _marginal(_predict(model, full), y_dim)
    mu = m.loc[..., 0].double().cpu().numpy()
    sd = m.component_variance[..., 0].double().sqrt().cpu().numpy()
    w = m.weights.double().cpu().numpy()
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True, layout="constrained")
    for k in range(mu.shape[1]):
        axes[0].plot(gx, mu[:, k], c=f"C{k % 10}", lw=1.5)
        axes[1].plot(gx, sd[:, k], c=f"C{k % 10}", lw=1.5)
        axes[2].plot(gx, w[:, k], c=f"C{k % 10}", lw=1.5, label=f"k = {k}")
    axes[0].set_ylabel("mean μ_k")
    axes[1].set_ylabel("scale σ_k")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("weight π_k")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_xlabel("x")
    if mu.shape[1] <= 10:
        axes[2].legend(fontsize="x-small", ncol=min(5, mu.shape[1]), loc="upper right")
    axes[0].set_title("mixture components against x")
    return fig


def training_curves(history: Any, *, ax=None, title: str | None = "training curves"):
    r"""Training and validation NLL per epoch (nats), the kept epoch marked; the learning rate on
    a second axis when it changed.

    ``history`` is a :class:`~mdnkit.History` or a dict with ``train_nll`` (and optionally
    ``val_nll``, ``lr``, ``best_epoch``).

    Example:
        >>> fig = training_curves({"train_nll": [2.0, 1.6, 1.4], "val_nll": [1.9, 1.5, 1.45]})
        >>> len(fig.axes[0].lines)
        2
    """
    h = history.as_dict() if hasattr(history, "as_dict") else history
    if not isinstance(h, dict) or "train_nll" not in h:
        raise TypeError(
            f"history must be a History or a dict with 'train_nll', found {type(history).__name__}"
        )
    train = np.asarray(h["train_nll"], dtype=np.float64)
    val = np.asarray(h.get("val_nll") or [], dtype=np.float64)
    lr = np.asarray(h.get("lr") or [], dtype=np.float64)
    best = h.get("best_epoch", -1)
    fig, ax = _new_ax(ax, (7, 4))
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, train, c="C0", label="train NLL")
    if len(val):
        ax.plot(np.arange(1, len(val) + 1), val, c="C1", label="validation NLL")
    if best is not None and 0 <= best < len(train):
        ax.axvline(best + 1, c="0.5", ls=":", lw=1, label=f"kept epoch {best + 1}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats)")
    finite = np.concatenate([train[np.isfinite(train)], val[np.isfinite(val)]])
    if finite.size > 4:  # ignore the first epochs' very large values in the y limits
        lo, hi = np.percentile(finite, [0, 95])
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        ax.set_ylim(lo - pad, hi + pad)
    ax.legend(loc="upper right", fontsize="small")
    if len(lr) and np.ptp(lr) > 0:
        ax2 = ax.twinx()
        ax2.plot(np.arange(1, len(lr) + 1), lr, c="C2", lw=1, alpha=0.6)
        ax2.set_ylabel("learning rate", color="C2")
        ax2.set_yscale("log")
    if title:
        ax.set_title(title)
    return fig


def pit_histogram(pit_values: Any, *, bins: int = 20, ax=None, title: str | None = "PIT histogram"):
    r"""Histogram (as a density) of probability-integral-transform values :math:`F(y)`.

    A calibrated model gives a flat histogram at height 1 (drawn as a dashed line), with a band
    of ±2 binomial standard errors; a U shape means over-confident, a hump under-confident.

    Example:
        >>> fig = pit_histogram(np.random.default_rng(0).uniform(size=1000))
        >>> [float(v) for v in fig.axes[0].get_xlim()]
        [0.0, 1.0]
    """
    u = pit_values.detach().cpu().numpy() if isinstance(pit_values, Tensor) else pit_values
    u = np.asarray(u, dtype=np.float64).ravel()
    if u.size == 0:
        raise ValueError("pit_values is empty, expected at least one value")
    if np.isnan(u).any() or (u < 0).any() or (u > 1).any():
        raise ValueError("pit_values must lie in [0, 1], found values outside it or NaN")
    bins = checks.positive_int("bins", bins)
    fig, ax = _new_ax(ax, (5, 3.5))
    ax.hist(u, bins=bins, range=(0, 1), density=True, color="C0", alpha=0.75, edgecolor="white")
    p = 1.0 / bins
    band = 2 * math.sqrt(p * (1 - p) / u.size) / p
    ax.axhspan(1 - band, 1 + band, color="0.8", alpha=0.5, zorder=0)
    ax.axhline(1.0, c="k", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("PIT value F(y)")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    return fig
