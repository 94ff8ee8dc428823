r"""The pictures people want to look at, with matplotlib.

Every function returns a :class:`matplotlib.figure.Figure` (save it with ``fig.savefig(path)``).
``model`` is anything whose ``forward(x)`` returns a :class:`~mdnkit.GaussianMixture` (an
:class:`~mdnkit.MDN`, a fitted estimator's network, your own module); it is called in evaluation
mode without gradients.

**Names.** ``x_names`` and ``y_names`` (the input and target column names, as ``mdnkit fit``
stores them) label the axes, titles and legends; without them the axes of a model with one input
read ``x`` and ``y``, with several inputs ``x[0]``, ``x[1]`` ...  ``x_dim`` and ``y_dim`` (the
input on the horizontal axis, the output dimension shown: its marginal) take a position or one of
those names.

**Models with several inputs** have no single picture of :math:`p(y \mid x)`.  Two kinds of
picture are honest about them:

* the *calibration* pictures use every row as it is: :func:`calibration_plot` (the default of
  ``mdnkit plot`` for such a model) puts together :func:`interval_plot` (the predicted central
  intervals against the observed target, row by row), :func:`pit_histogram` and
  :func:`coverage_plot` (observed against nominal coverage);
* the *slice* pictures (:func:`density_heatmap`, :func:`samples_plot`, :func:`components_plot`,
  :func:`temperature_grid`) vary input ``x_dim`` and hold the others fixed: at their mean over
  ``x`` (or the model's training mean ``x_mean`` without data), or at the values given in ``at``.
  The title names those values.  The slice's density describes only the rows whose other inputs
  lie near the held values, so only the ``near_fraction`` of rows nearest the slice (Euclidean
  distance of the other inputs, each divided by its standard deviation) are drawn in full; the
  others are drawn faded and labelled as off the slice.

For a model of one input the slice is the whole model, and every row is drawn.

===========================  ===============================================================
:func:`density_heatmap`      :math:`p(y \mid x)` over a grid of x and y, with the data on top
:func:`samples_plot`         draws from the model at many x, over the data
:func:`mixture_pdf_plot`     :math:`p(y \mid x_0)` and its weighted components at one x
:func:`temperature_grid`     samples at several temperatures, side by side
:func:`components_plot`      component means, scales and weights against x
:func:`training_curves`      training and validation NLL (and learning rate) per epoch
:func:`pit_histogram`        histogram of PIT values against the uniform line
:func:`interval_plot`        predicted central intervals against the observed target, per row
:func:`coverage_plot`        observed against nominal coverage of the central intervals
:func:`calibration_plot`     intervals, PIT histogram and coverage in one figure
===========================  ===============================================================

When no display is available (no ``DISPLAY`` on Linux) the non-interactive Agg backend is
selected before pyplot is first imported.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import checks
from .metrics import interval_coverage, pit
from .mixture import GaussianMixture

__all__ = [
    "density_heatmap",
    "samples_plot",
    "mixture_pdf_plot",
    "temperature_grid",
    "components_plot",
    "training_curves",
    "pit_histogram",
    "interval_plot",
    "coverage_plot",
    "calibration_plot",
]

#: Legend note on the temperatures (the project's convention, see GaussianMixture.with_temperature).
_TEMPERATURES = "T divides the mixture logits, S multiplies the component variances"


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


# ------------------------------------------------------------------------------ names
def _labels(names: Sequence[str] | None, n: int, kind: str) -> list[str]:
    """The names of a model's ``n`` inputs (``kind`` "x") or outputs ("y"): given, or x / x[i]."""
    if names is None:
        return [kind] if n == 1 else [f"{kind}[{i}]" for i in range(n)]
    out = [names] if isinstance(names, str) else [str(v) for v in names]
    if len(out) != n:
        what = "inputs" if kind == "x" else "outputs"
        raise ValueError(
            f"{kind}_names must hold {n} names (the model's {what}), found {len(out)}: "
            f"{', '.join(out)}"
        )
    return out


def _index(dim: int | str, labels: list[str], what: str) -> int:
    """The position of ``dim`` (a position, or one of ``labels``) among the columns ``labels``."""
    n = len(labels)
    if isinstance(dim, str):
        if dim in labels:
            return labels.index(dim)
        kind = "output" if what.startswith("y") else "input"
        raise ValueError(
            f"{what}: unknown {kind} column {dim!r}, expected one of {', '.join(labels)}"
        )
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 0 <= dim < n:
        raise ValueError(f"{what} must be in [0, {n}), found {dim!r}")
    return int(dim)


def _output(model: Any, full: np.ndarray, y_names, y_dim) -> tuple[GaussianMixture, str, int]:
    """(the marginal mixture of output ``y_dim`` at the inputs ``full``, its name, its position)."""
    m = _predict(model, full)
    d = m.event_shape[0]
    labels = _labels(y_names, d, "y")
    yd = _index(y_dim, labels, "y_dim")
    return (m if d == 1 else m.marginal(yd)), labels[yd], yd


# ------------------------------------------------------------------------------ slices
class _Slice(NamedTuple):
    grid: np.ndarray  # the values of input x_dim along the horizontal axis
    full: np.ndarray  # (n, inputs): the grid in column x_dim, the held values elsewhere
    x_dim: int
    labels: list[str]  # the input names
    held: str  # "other inputs held at V = 54.31, ... (mean of the data)"; "" for one input
    near: np.ndarray | None  # which rows of x lie near the slice (None without data)
    near_label: str


def _base(model: Any, x: np.ndarray | None, nin: int) -> tuple[np.ndarray, str]:
    if x is not None:
        return x.mean(0), "mean of the data"
    xm = getattr(model, "x_mean", None)
    if isinstance(xm, Tensor) and xm.numel() == nin:
        return xm.detach().double().cpu().numpy().ravel().copy(), "training mean"
    return np.zeros(nin), "zero"


def _held(base: np.ndarray, at: Any, labels: list[str], xd: int) -> tuple[np.ndarray, set[int]]:
    """The held input values: ``base`` with the values ``at`` gives; and the positions it gave."""
    base, given = base.copy(), set()
    if at is None:
        return base, given
    if isinstance(at, Mapping):
        for key, value in at.items():
            i = _index(key, labels, "at")
            try:
                base[i] = float(value)
            except (TypeError, ValueError):
                base[i] = math.nan
            if not math.isfinite(base[i]):
                raise ValueError(f"at: the value of {labels[i]} must be a number, found {value!r}")
            given.add(i)
        if xd in given:
            raise ValueError(
                f"at gives a value for {labels[xd]}, the input that varies along the axis"
            )
        return base, given
    arr = _np(np.asarray(at, dtype=np.float64).reshape(1, -1), "at")[0]
    if arr.size != len(labels) or not np.isfinite(arr).all():
        raise ValueError(
            f"at must be a mapping of input names to numbers or {len(labels)} numbers "
            f"(the model's inputs), found {arr.size} values"
        )
    return arr, set(range(len(labels))) - {xd}


def _held_text(base: np.ndarray, labels: list[str], xd: int, given: set[int], source: str):
    others = [i for i in range(len(labels)) if i != xd]
    if not others:
        return ""
    chosen = [f"{labels[i]} = {base[i]:.4g}" for i in others if i in given]
    rest = [f"{labels[i]} = {base[i]:.4g}" for i in others if i not in given]
    parts = [", ".join(chosen) + " (given)"] if chosen else []
    parts += [", ".join(rest) + f" ({source})"] if rest else []
    return "other inputs held at " + "; ".join(parts)


def _near(x: np.ndarray, base: np.ndarray, xd: int, fraction: float) -> tuple[np.ndarray, str]:
    """The ``fraction`` of rows nearest the slice, in the standardised distance of the other
    inputs from their held values; and their legend label."""
    others = [j for j in range(x.shape[1]) if j != xd]
    if not others:
        return np.ones(len(x), dtype=bool), "data"
    sd = x[:, others].std(0)
    z = (x[:, others] - base[others]) / np.where(sd > 0, sd, 1.0)
    dist = np.sqrt((z * z).sum(1))
    r = float(np.quantile(dist, fraction))
    near = dist <= r
    return near, f"{near.sum()} of {len(x)} rows near the slice (other inputs within {r:.2g} sd)"


def _slice(model, x, n, x_range, x_dim, at=None, x_names=None, near_fraction=0.1) -> _Slice:
    """The inputs of a slice picture: input ``x_dim`` on an ``n`` grid, the others held."""
    nin = _in_features(model, x)
    if x is not None and x.shape[1] != nin:
        raise ValueError(f"x must have {nin} columns (the model's inputs), found {x.shape[1]}")
    labels = _labels(x_names, nin, "x")
    xd = _index(x_dim, labels, "x_dim")
    if not (isinstance(near_fraction, (int, float)) and 0 < near_fraction <= 1):
        raise ValueError(f"near_fraction must be a number in (0, 1], found {near_fraction!r}")
    base, source = _base(model, x, nin)
    base, given = _held(base, at, labels, xd)
    if x_range is None:
        if x is None:
            raise ValueError("give x (data) or x_range to choose the input grid")
        lo, hi = float(x[:, xd].min()), float(x[:, xd].max())
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        x_range = (lo - pad, hi + pad)
    grid = np.linspace(x_range[0], x_range[1], n)
    full = np.tile(base, (n, 1))
    full[:, xd] = grid
    near, label = (None, "") if x is None else _near(x, base, xd, near_fraction)
    return _Slice(grid, full, xd, labels, _held_text(base, labels, xd, given, source), near, label)


def _pick(rows: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= max_points else np.sort(rng.choice(rows, max_points, replace=False))


def _scatter_rows(ax, sl: _Slice, x, y, y_dim: int, max_points: int, style: dict) -> None:
    """The data over a slice picture: every row for one input; for several, the rows near the
    slice in ``style["c"]`` and the others faded (``style["faded"]``), each labelled."""
    rng = np.random.default_rng(0)
    faded = style.pop("faded")
    if not sl.held:  # one input: every row lies on the slice
        idx = rng.permutation(len(x))[:max_points]
        ax.scatter(x[idx, sl.x_dim], y[idx, y_dim], lw=0, label="data", **style)
        return
    far = _pick(np.flatnonzero(~sl.near), max_points, rng)
    near = _pick(np.flatnonzero(sl.near), max_points, rng)
    ax.scatter(
        x[far, sl.x_dim],
        y[far, y_dim],
        s=style["s"],
        c=faded,
        alpha=0.12,
        lw=0,
        label="other rows: off the slice (faded)",
    )
    ax.scatter(x[near, sl.x_dim], y[near, y_dim], lw=0, label=sl.near_label, **style)


def _title(target, title: str | None, auto: str, sl: _Slice, suptitle: bool = False) -> None:
    """``title`` (None: ``auto``; "": none) and, for several inputs, the held values below it."""
    lines = [auto if title is None else title]
    if sl.held:
        lines.append(textwrap.fill(sl.held, 90))
    text = "\n".join(s for s in lines if s)
    size = {"fontsize": "medium"} if "\n" in text or suptitle else {}  # one line: the default
    if text and suptitle:
        target.suptitle(text, **size)
    elif text:
        target.set_title(text, **size)


def _cond(sl: _Slice) -> str:
    return sl.labels[sl.x_dim] + (", others held" if sl.held else "")


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


def _relative(w: np.ndarray) -> np.ndarray:
    """Weights divided by the largest weight of their mixture (last axis): 1 for the dominant."""
    return w / np.maximum(w.max(-1, keepdims=True), 1e-300)


# ------------------------------------------------------------------------------ slice pictures
def density_heatmap(
    model: Any,
    x: Any = None,
    y: Any = None,
    *,
    n_x: int = 200,
    n_y: int = 200,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    x_dim: int | str = 0,
    y_dim: int | str = 0,
    log: bool = False,
    cmap: str = "magma",
    max_points: int = 3000,
    at: Mapping[int | str, float] | Sequence[float] | None = None,
    x_names: Sequence[str] | None = None,
    y_names: Sequence[str] | None = None,
    near_fraction: float = 0.1,
    ax=None,
    title: str | None = None,
):
    r"""Heatmap of the conditional density :math:`p(y \mid x)` with the data on top.

    For every ``x`` on an ``n_x`` grid the model's mixture gives
    :math:`p(y\mid x) = \sum_k \pi_k(x)\,\mathcal{N}(y\mid\mu_k(x),\sigma_k^2(x))` on an ``n_y``
    grid of ``y`` (each column is one predictive density); ``log=True`` shows
    :math:`\log p`.  The data (at most ``max_points`` of them) are drawn as small dots.  With
    several inputs this is a slice (the module's notes): the title names the held values
    (``at``), and only the rows near the slice are drawn in full.  ``title`` None: automatic.

    Example:
        >>> fig = density_heatmap(model, x_train, y_train)
        >>> fig.axes[0].get_xlabel(), fig.axes[0].get_title()
        ('x', 'conditional density p(y | x)')
        >>> fig.savefig("density.png")
    """
    x = _np(x, "x") if x is not None else None
    y = _np(y, "y") if y is not None else None
    sl = _slice(model, x, n_x, x_range, x_dim, at, x_names, near_fraction)
    m, yl, yd = _output(model, sl.full, y_names, y_dim)
    lo, hi = y_range if y_range is not None else _y_range(m, y, yd)
    gy = np.linspace(lo, hi, n_y)
    yt = torch.as_tensor(gy, dtype=m.loc.dtype, device=m.loc.device).reshape(n_y, 1, 1)
    with torch.no_grad():
        logp = m.log_prob(yt).double().cpu().numpy()  # (n_y, n_x)
    img = logp if log else np.exp(logp)
    if log:
        img = np.maximum(img, img.max() - 20.0)  # keep the colour range readable
    fig, ax = _new_ax(ax, (7, 5))
    gx = sl.grid
    im = ax.imshow(
        img,
        origin="lower",
        aspect="auto",
        extent=(gx[0], gx[-1], gy[0], gy[-1]),
        cmap=cmap,
        interpolation="nearest",
    )
    dens = f"p({yl} | {_cond(sl)})"
    fig.colorbar(im, ax=ax, label=f"log {dens}" if log else dens)
    if x is not None and y is not None:
        style = {"s": 2, "c": "white", "alpha": 0.35 if not sl.held else 0.6, "faded": "0.8"}
        _scatter_rows(ax, sl, x, y, yd, max_points, style)
        if sl.held:
            ax.legend(loc="upper right", fontsize="x-small", markerscale=3, framealpha=0.8)
    ax.set_xlim(gx[0], gx[-1])
    ax.set_ylim(gy[0], gy[-1])
    ax.set_xlabel(sl.labels[sl.x_dim])
    ax.set_ylabel(yl)
    auto = f"conditional density p({yl} | {sl.labels[sl.x_dim]})"
    _title(ax, title, auto + (" on a slice" if sl.held else ""), sl)
    return fig


def _draw(
    model: Any,
    full: np.ndarray,
    samples_per_x: int,
    temperature: float,
    sigma_temperature: float,
    seed: int,
    y_names,
    y_dim,
) -> tuple[np.ndarray, str, int]:
    m = _predict(model, full)
    labels = _labels(y_names, m.event_shape[0], "y")
    yd = _index(y_dim, labels, "y_dim")
    s = m.sample(
        (samples_per_x,),
        temperature=temperature,
        sigma_temperature=sigma_temperature,
        generator=seed,
    )  # (S, n, D)
    return s[..., yd].double().cpu().numpy(), labels[yd], yd


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
    x_dim: int | str = 0,
    y_dim: int | str = 0,
    at: Mapping[int | str, float] | Sequence[float] | None = None,
    x_names: Sequence[str] | None = None,
    y_names: Sequence[str] | None = None,
    near_fraction: float = 0.1,
    ax=None,
    title: str | None = "samples from the model",
):
    r"""Samples :math:`y \sim p(y\mid x)` at ``n_x`` inputs (``samples_per_x`` each) over the data.

    Temperatures follow the project's convention (``temperature`` T divides the logits,
    ``sigma_temperature`` S multiplies the variances; the legend says so); ``seed`` makes the
    picture reproducible.  With several inputs this is a slice (the module's notes).

    Example:
        >>> fig = samples_plot(model, x_train, y_train, temperature=0.5)
        >>> fig.axes[0].get_legend().get_title().get_text()
        'T divides the mixture logits, S multiplies the component variances'
    """
    x = _np(x, "x")
    y = _np(y, "y") if y is not None else None
    sl = _slice(model, x, n_x, x_range, x_dim, at, x_names, near_fraction)
    s, yl, yd = _draw(
        model, sl.full, samples_per_x, temperature, sigma_temperature, seed, y_names, y_dim
    )
    fig, ax = _new_ax(ax, (7, 5))
    if y is not None:
        style = {"s": 4, "c": "0.6" if not sl.held else "0.3", "alpha": 0.5, "faded": "0.6"}
        _scatter_rows(ax, sl, x, y, yd, len(x), style)
    ax.scatter(
        np.broadcast_to(sl.grid, s.shape).ravel(),
        s.ravel(),
        s=4,
        c="C3",
        alpha=0.6,
        lw=0,
        label=f"samples (T = {temperature:g}, S = {sigma_temperature:g})",
    )
    ax.legend(
        loc="upper left",
        markerscale=3,
        fontsize="small",
        title=_TEMPERATURES,
        title_fontsize="x-small",
    )
    ax.set_xlabel(sl.labels[sl.x_dim])
    ax.set_ylabel(yl)
    _title(ax, title, "samples from the model", sl)
    return fig


def mixture_pdf_plot(
    model: Any,
    x0: float | Sequence[float] | np.ndarray,
    *,
    y_range: tuple[float, float] | None = None,
    n_y: int = 500,
    y_dim: int | str = 0,
    x_names: Sequence[str] | None = None,
    y_names: Sequence[str] | None = None,
    ax=None,
    title: str | None = None,
):
    r"""The predictive density at one input and its weighted components.

    Draws :math:`p(y\mid x_0) = \sum_k \pi_k \mathcal{N}(y\mid\mu_k,\sigma_k^2)` (black) and
    every :math:`\pi_k\mathcal{N}(y\mid\mu_k,\sigma_k^2)` (coloured): the components sum to the
    total.  They are drawn from the lightest to the heaviest, so the dominant ones lie on top,
    each with an opacity and width that grow with :math:`\pi_k / \max_j \pi_j`; the legend lists
    them by weight, leaving out those under 0.005.  ``x0`` is a number (one input) or a full
    input vector.

    Example:
        >>> fig = mixture_pdf_plot(model, 0.0)
        >>> fig.axes[0].get_legend().get_texts()[0].get_text()
        'p(y | x = 0)'
    """
    x0a = np.atleast_1d(np.asarray(x0, dtype=np.float64)).reshape(1, -1)
    nin = _in_features(model, None)
    if x0a.shape[1] != nin:
        raise ValueError(f"x0 must have {nin} values (the model's inputs), found {x0a.shape[1]}")
    xl = _labels(x_names, nin, "x")
    m, yl, _ = _output(model, x0a, y_names, y_dim)
    m = m[0]
    lo, hi = y_range if y_range is not None else _y_range(m, None, 0)
    gy = np.linspace(lo, hi, n_y)
    yt = torch.as_tensor(gy, dtype=m.loc.dtype, device=m.loc.device).reshape(n_y, 1)
    with torch.no_grad():
        total = m.log_prob(yt).exp().double().cpu().numpy()
        comp = (m.logits + m.component_log_prob(yt)).exp().double().cpu().numpy()  # (n_y, K)
    fig, ax = _new_ax(ax, (8.5, 4))
    w = m.weights.double().cpu().numpy()
    rel = _relative(w)
    for rank, k in enumerate(np.argsort(w, kind="stable")):  # the heaviest last: on top
        ax.plot(
            gy,
            comp[:, k],
            c=_colour(k),
            lw=0.6 + 2.0 * rel[k],
            alpha=0.2 + 0.8 * rel[k],
            zorder=3 + rank / len(w),
            label=f"π{k} = {w[k]:.2f}" if w[k] >= 0.005 else "_nolegend_",
        )
    at_x = f"{xl[0]} = {x0a[0, 0]:g}" if nin == 1 else "x₀"
    ax.plot(gy, total, c="k", lw=1.4, zorder=2.5, label=f"p({yl} | {at_x})")
    ax.fill_between(gy, total, color="0.88", zorder=0)
    ax.set_xlim(gy[0], gy[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel(yl)
    ax.set_ylabel("density")
    handles, texts = ax.get_legend_handles_labels()
    order = [len(handles) - 1, *reversed(range(len(handles) - 1))]  # total, then by weight
    hidden = int((w < 0.005).sum())
    ax.legend(
        [handles[i] for i in order],
        [texts[i] for i in order],
        fontsize="small",
        ncol=1 + len(handles) // 14,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title=f"{hidden} components of weight < 0.005 not listed" if hidden else None,
        title_fontsize="x-small",
    )
    x_txt = ", ".join(f"{n} = {v:.4g}" for n, v in zip(xl, x0a[0]))
    ax.set_title(title if title is not None else textwrap.fill(f"mixture at {x_txt}", 90))
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
    x_dim: int | str = 0,
    y_dim: int | str = 0,
    at: Mapping[int | str, float] | Sequence[float] | None = None,
    x_names: Sequence[str] | None = None,
    y_names: Sequence[str] | None = None,
    near_fraction: float = 0.1,
):
    r"""A grid of sample plots: one row per ``sigma_temperature`` S, one column per temperature T.

    T divides the mixture logits (→0: always the most likely component, large: every component
    equally often); S multiplies the component variances; the figure's title says so.  Axes
    share their limits.  With several inputs each panel is a slice (the module's notes).

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
        figsize=(3.2 * cols, 2.8 * rows + 0.4),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    sl = _slice(model, x, n_x, None, x_dim, at, x_names, near_fraction)
    for i, s_t in enumerate(sigma_temperatures):
        for j, t in enumerate(temperatures):
            ax = axes[i, j]
            s, yl, yd = _draw(model, sl.full, samples_per_x, t, s_t, seed, y_names, y_dim)
            if y is not None:
                style = {"s": 2, "c": "0.75" if not sl.held else "0.45", "alpha": 1.0}
                _scatter_rows(ax, sl, x, y, yd, len(x), {**style, "faded": "0.75"})
            ax.scatter(
                np.broadcast_to(sl.grid, s.shape).ravel(), s.ravel(), s=2, c="C3", alpha=0.6, lw=0
            )
            ax.set_title(
                f"T = {t:g}" + (f", S = {s_t:g}" if rows > 1 or s_t != 1 else ""), fontsize="medium"
            )
    fig.supxlabel(sl.labels[sl.x_dim])
    fig.supylabel(yl)
    _title(fig, f"samples: {_TEMPERATURES}", "", sl, suptitle=True)
    return fig


def _colour(k: int) -> tuple[float, float, float]:
    """Component ``k``'s colour: tab10 without its grey (the grey of the fills and faded rows),
    then the lighter tab20 shades of the same nine, 18 in all."""
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors
    nine = (0, 1, 2, 3, 4, 5, 6, 8, 9)
    palette = [tab20[2 * i] for i in nine] + [tab20[2 * i + 1] for i in nine]
    return palette[k % len(palette)]


def _weighted_lines(ax, gx: np.ndarray, values: np.ndarray, rel: np.ndarray) -> None:
    """Every component's curve ``values[:, k]`` against ``gx``: a faint thin line each, and over
    them, in one collection, segments whose colour strength and width follow the component's
    weight relative to the heaviest at that x (``rel``), the heaviest drawn last, on top."""
    from matplotlib.collections import LineCollection

    k = values.shape[1]
    for j in range(k):
        ax.plot(gx, values[:, j], c=_colour(j), lw=0.6, alpha=0.25, zorder=1)
    mid = 0.5 * (rel[:-1] + rel[1:])  # (n - 1, K), one value per segment
    x0, x1 = (np.broadcast_to(g[:, None], mid.shape) for g in (gx[:-1], gx[1:]))
    ends = (np.stack([x0, values[:-1]], -1), np.stack([x1, values[1:]], -1))
    segments = np.stack(ends, -2).reshape(-1, 2, 2)
    strength = (0.12 + 0.88 * mid)[..., None]
    base = np.array([_colour(j) for j in range(k)])
    rgb = (1.0 - strength * (1.0 - base)).reshape(-1, 3)  # the colour mixed with white, opaque
    order = np.argsort(mid.ravel(), kind="stable")
    widths = (0.3 + 2.2 * mid).ravel()[order]
    lines = LineCollection(segments[order], colors=rgb[order], linewidths=widths, zorder=2)
    lines.set_capstyle("round")
    ax.add_collection(lines)


def components_plot(
    model: Any,
    x: Any = None,
    *,
    n_x: int = 200,
    x_range: tuple[float, float] | None = None,
    x_dim: int | str = 0,
    y_dim: int | str = 0,
    at: Mapping[int | str, float] | Sequence[float] | None = None,
    x_names: Sequence[str] | None = None,
    y_names: Sequence[str] | None = None,
):
    r"""Component means :math:`\mu_k(x)`, scales :math:`\sigma_k(x)` and weights :math:`\pi_k(x)`
    against x, one line per component, in three stacked panels.

    In the mean and scale panels a component is drawn boldly where it carries weight and fades
    out where it does not (opacity and width follow :math:`\pi_k(x) / \max_j \pi_j(x)`), so
    unused components do not crowd the picture.  With several inputs this is a slice.

    Example:
        >>> fig = components_plot(model, x_train)
        >>> len(fig.axes)
        3
    """
    x = _np(x, "x") if x is not None else None
    sl = _slice(model, x, n_x, x_range, x_dim, at, x_names)
    m, yl, _ = _output(model, sl.full, y_names, y_dim)
    mu = m.loc[..., 0].double().cpu().numpy()
    sd = m.component_variance[..., 0].double().sqrt().cpu().numpy()
    w = m.weights.double().cpu().numpy()
    rel = _relative(w)
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True, layout="constrained")
    gx = sl.grid
    _weighted_lines(axes[0], gx, mu, rel)
    _weighted_lines(axes[1], gx, sd, rel)
    for k in range(mu.shape[1]):
        axes[2].plot(gx, w[:, k], c=_colour(k), lw=1.5, label=f"k = {k}")
    axes[0].set_ylabel(f"mean μ_k of {yl}")
    axes[1].set_ylabel("scale σ_k")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("weight π_k")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_xlabel(sl.labels[sl.x_dim])
    if mu.shape[1] <= 10:
        axes[2].legend(fontsize="x-small", ncol=min(5, mu.shape[1]), loc="upper right")
    auto = (
        f"mixture components against {sl.labels[sl.x_dim]}\n"
        "line strength and width: the component's weight relative to the heaviest"
    )
    _title(axes[0], None, auto, sl)
    return fig


# ------------------------------------------------------------------------------ training
def training_curves(history: Any, *, ax=None, title: str | None = "training curves"):
    r"""Training and validation NLL per epoch (nats), the kept epoch marked; the learning rate on
    a second axis when it changed.

    The vertical axis shows every value, the first epochs' too, unless some are far off the
    others (more than 20 times the spread between the smallest value and the 90th percentile
    above the smallest): those are cut and a note on the axes gives how many and the largest.

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
    fig, ax = _new_ax(ax, (7, 4.5))
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, train, c="C0", label="train NLL")
    if len(val):
        ax.plot(np.arange(1, len(val) + 1), val, c="C1", label="validation NLL")
    if best is not None and 0 <= best < len(train):
        ax.axvline(best + 1, c="0.5", ls=":", lw=1, label=f"kept epoch {best + 1}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats)")
    _nll_limits(ax, np.concatenate([train[np.isfinite(train)], val[np.isfinite(val)]]))
    ax.legend(loc="upper right", fontsize="small")
    if len(lr) and np.ptp(lr) > 0:
        ax2 = ax.twinx()
        ax2.plot(np.arange(1, len(lr) + 1), lr, c="C2", lw=1, alpha=0.6)
        ax2.set_ylabel("learning rate", color="C2")
        ax2.set_yscale("log")
    if title:
        ax.set_title(title)
    return fig


def _nll_limits(ax, finite: np.ndarray) -> None:
    if finite.size <= 4:
        return
    lo, p90, top = np.percentile(finite, [0, 90, 100])
    hi = min(top, lo + 20 * (p90 - lo)) if p90 > lo else top
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    ax.set_ylim(lo - pad, hi + pad)
    cut = int((finite > hi + pad).sum())
    if cut:
        ax.text(
            0.01,
            0.98,
            f"{cut} values above the axis (largest {top:.4g})",
            transform=ax.transAxes,
            va="top",
            fontsize="x-small",
            color="0.3",
        )


# ------------------------------------------------------------------------------ calibration
def _pit_values(pit_values: Any) -> np.ndarray:
    u = pit_values.detach().cpu().numpy() if isinstance(pit_values, Tensor) else pit_values
    u = np.asarray(u, dtype=np.float64).ravel()
    if u.size == 0:
        raise ValueError("pit_values is empty, expected at least one value")
    if np.isnan(u).any() or (u < 0).any() or (u > 1).any():
        raise ValueError("pit_values must lie in [0, 1], found values outside it or NaN")
    return u


def pit_histogram(
    pit_values: Any,
    *,
    bins: int = 20,
    y_name: str = "y",
    ax=None,
    title: str | None = "PIT histogram",
):
    r"""Histogram (as a density) of probability-integral-transform values :math:`F(y)`.

    :math:`F` is the predicted CDF and ``y`` the observed target: for a calibrated model the
    values are uniform, a flat histogram at height 1 (the dashed line).  The grey band is ±2
    binomial standard errors of one bar's height, :math:`2\sqrt{p(1-p)/N}/p` with
    :math:`p = 1/\text{bins}`: a calibrated model's bars fall inside it about 95 % of the time.
    A U shape means over-confident, a hump under-confident; the legend says all this.

    Example:
        >>> fig = pit_histogram(np.random.default_rng(0).uniform(size=1000))
        >>> [float(v) for v in fig.axes[0].get_xlim()]
        [0.0, 1.0]
    """
    u = _pit_values(pit_values)
    bins = checks.positive_int("bins", bins)
    fig, ax = _new_ax(ax, (5.5, 4))
    heights, _, _ = ax.hist(
        u, bins=bins, range=(0, 1), density=True, color="C0", alpha=0.75, edgecolor="white"
    )
    p = 1.0 / bins
    band = 2 * math.sqrt(p * (1 - p) / u.size) / p
    ax.axhspan(
        1 - band,
        1 + band,
        color="0.8",
        alpha=0.5,
        zorder=0,
        label=f"±2 s.e. of a bar for {u.size} values (calibrated: ~95 % of bars inside)",
    )
    ax.axhline(1.0, c="k", ls="--", lw=1, label="uniform: a calibrated model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.45 * max(float(heights.max()), 1 + band))
    ax.set_xlabel(f"PIT value F({y_name}): the predicted CDF at the observed {y_name}")
    ax.set_ylabel("density")
    ax.legend(
        loc="upper center",
        fontsize="x-small",
        title="U shape: over-confident; hump: under-confident",
        title_fontsize="x-small",
    )
    if title:
        ax.set_title(title)
    return fig


def _observed_coverage(u: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Fraction of PIT values inside each central interval [(1-c)/2, (1+c)/2]: the fraction of
    targets inside the central ``c`` interval (as :func:`mdnkit.metrics.interval_coverage`)."""
    a = (1.0 - coverage[:, None]) / 2.0
    return ((u[None, :] >= a) & (u[None, :] <= 1.0 - a)).mean(1)


def coverage_plot(
    pit_values: Any,
    *,
    highlight: Sequence[float] = (0.5, 0.9),
    ax=None,
    title: str | None = "coverage of the central intervals",
):
    r"""Observed against nominal coverage of the predictive central intervals.

    For each nominal level :math:`c` the line shows the fraction of targets inside their central
    :math:`c` interval :math:`[F^{-1}(\tfrac{1-c}2), F^{-1}(\tfrac{1+c}2)]`, counted as
    :math:`\tfrac{1-c}2 \le F(y) \le \tfrac{1+c}2` from the PIT values (the line's data: levels
    0, 0.01, ..., 1).  A calibrated model follows the diagonal, inside the band of ±2 binomial
    standard errors :math:`2\sqrt{c(1-c)/N}`; below it means over-confident (intervals too
    narrow).  The ``highlight`` levels are marked and their numbers written beside them.

    Example:
        >>> fig = coverage_plot(np.random.default_rng(0).uniform(size=2000))
        >>> fig.axes[0].get_xlabel()
        'nominal coverage of the central interval'
    """
    u = _pit_values(pit_values)
    fig, ax = _new_ax(ax, (4.5, 4.5))
    c = np.linspace(0.0, 1.0, 101)
    se = 2 * np.sqrt(c * (1 - c) / u.size)
    ax.fill_between(c, c - se, c + se, color="0.85", lw=0, label="calibrated: ±2 s.e.")
    ax.plot([0, 1], [0, 1], c="k", ls="--", lw=1, label="nominal = observed")
    ax.plot(c, _observed_coverage(u, c), c="C0", lw=1.8, label=f"observed ({u.size} values)")
    hl = np.asarray(sorted(highlight), dtype=np.float64)
    if hl.size:
        obs = _observed_coverage(u, hl)
        ax.plot(hl, obs, "o", c="C3", ms=5, label="_nolegend_")
        for level, value in zip(hl, obs):
            ax.annotate(
                f"{100 * level:g} %: {100 * value:.1f} % inside",
                (level, value),
                xytext=(-6, 6),
                textcoords="offset points",
                ha="right",
                fontsize="x-small",
                color="C3",
            )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("observed fraction inside")
    ax.legend(loc="upper left", fontsize="x-small")
    if title:
        ax.set_title(title)
    return fig


def _rows(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _np(x, "x"), _np(y, "y")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"x and y must hold the same number of rows (> 0), found {len(x)}, {len(y)}"
        )
    return x, y


def _coverages(coverages: Sequence[float]) -> list[float]:
    cov = [float(c) for c in coverages]
    if not cov or any(not 0 < c < 1 for c in cov):
        raise ValueError(f"coverages must be numbers in (0, 1), found {list(coverages)}")
    return sorted(set(cov), reverse=True)  # the widest first: drawn below the narrower


def _interval_panel(ax, m: GaussianMixture, obs: np.ndarray, cov: list[float], yl: str, most):
    """Central intervals ``cov`` of the 1-D mixtures ``m`` and the observed targets, rows sorted
    by the predicted median; the legend gives the fraction of rows inside each interval."""
    levels = [0.5] + [a for c in cov for a in ((1 - c) / 2, (1 + c) / 2)]
    q = m.quantile(levels)[..., 0].double().cpu().numpy()  # (levels, N)
    n = len(obs)
    order = np.argsort(q[0], kind="stable")
    pos = np.arange(n) if n <= most else np.unique(np.linspace(0, n - 1, most).round().astype(int))
    rows = order[pos]
    yt = torch.as_tensor(obs[:, None], dtype=m.loc.dtype, device=m.loc.device)
    for i, c in enumerate(cov):
        inside = float(interval_coverage(m, yt, c))
        ax.fill_between(
            pos,
            q[1 + 2 * i, rows],
            q[2 + 2 * i, rows],
            color="C0",
            alpha=0.18 + 0.3 * i / max(1, len(cov) - 1),
            lw=0,
            step="mid",
            label=f"{100 * c:g} % interval: {100 * inside:.1f} % of the {n} rows inside",
        )
    ax.plot(pos, q[0, rows], c="C0", lw=1, label="predicted median")
    out = (obs[rows] < q[1, rows]) | (obs[rows] > q[2, rows])
    ax.scatter(pos[~out], obs[rows][~out], s=3, c="k", lw=0, label=f"observed {yl}")
    ax.scatter(
        pos[out],
        obs[rows][out],
        s=5,
        c="C3",
        lw=0,
        label=f"outside the {100 * cov[0]:g} % interval",
    )
    drawn = "" if n <= most else f" ({len(pos)} of {n} rows drawn, evenly spaced)"
    ax.set_xlabel(f"rows, sorted by the predicted median of {yl}{drawn}")
    ax.set_ylabel(yl)
    ax.set_xlim(-0.5, n - 0.5)
    ax.legend(loc="upper left", fontsize="x-small", markerscale=2)


def interval_plot(
    model: Any,
    x: Any,
    y: Any,
    *,
    coverages: Sequence[float] = (0.5, 0.9),
    y_dim: int | str = 0,
    y_names: Sequence[str] | None = None,
    max_points: int = 2000,
    ax=None,
    title: str | None = None,
):
    r"""The predicted central intervals of every row against its observed target.

    Rows are sorted by their predicted median :math:`F^{-1}(\tfrac12)`; for each coverage
    :math:`c` the band is :math:`[F^{-1}(\tfrac{1-c}2), F^{-1}(\tfrac{1+c}2)]` of each row's own
    predictive distribution (computed with :meth:`~mdnkit.GaussianMixture.icdf`), the dots the
    observed targets (red: outside the widest interval).  The legend gives the fraction of rows
    inside each interval (:func:`mdnkit.metrics.interval_coverage`, over all rows even when only
    ``max_points`` evenly spaced ones are drawn).  Works for any number of inputs.

    Example:
        >>> fig = interval_plot(model, x, y)
        >>> fig.axes[0].get_legend().get_texts()[0].get_text()
        '90 % interval: ... % of the 300 rows inside'
    """
    x, y = _rows(x, y)
    cov = _coverages(coverages)
    m, yl, yd = _output(model, x, y_names, y_dim)
    fig, ax = _new_ax(ax, (8, 4.5))
    _interval_panel(ax, m, y[:, yd], cov, yl, checks.positive_int("max_points", max_points))
    auto = f"predicted intervals of {yl} and the observed values, {len(x)} rows"
    ax.set_title(auto if title is None else title, fontsize="medium")
    return fig


def calibration_plot(
    model: Any,
    x: Any,
    y: Any,
    *,
    coverages: Sequence[float] = (0.5, 0.9),
    bins: int = 20,
    y_dim: int | str = 0,
    x_names: Sequence[str] | None = None,
    y_names: Sequence[str] | None = None,
    max_points: int = 2000,
    title: str | None = None,
):
    r"""How well the predictive distributions fit the observed targets, for any number of inputs.

    Three panels from every row of ``(x, y)``: the central intervals against the observed
    targets (:func:`interval_plot`), the PIT histogram (:func:`pit_histogram`) and the observed
    against nominal coverage (:func:`coverage_plot`).  No input is held fixed: this is the
    default picture of ``mdnkit plot`` for a model of several inputs.

    Example:
        >>> fig = calibration_plot(model, x, y, x_names=["x"], y_names=["y"])
        >>> len(fig.axes)
        3
    """
    x, y = _rows(x, y)
    cov = _coverages(coverages)
    xl = _labels(x_names, x.shape[1], "x")
    m, yl, yd = _output(model, x, y_names, y_dim)
    obs = y[:, yd]
    with torch.no_grad():
        u = pit(m, torch.as_tensor(obs[:, None], dtype=m.loc.dtype, device=m.loc.device))
    plt = _plt()
    fig = plt.figure(figsize=(10, 8.5), layout="constrained")
    axd = fig.subplot_mosaic([["iv", "iv"], ["pit", "cov"]], height_ratios=[1.1, 1])
    most = checks.positive_int("max_points", max_points)
    _interval_panel(axd["iv"], m, obs, cov, yl, most)
    axd["iv"].set_title("predicted central intervals and the observed values", fontsize="medium")
    pit_histogram(u, bins=bins, y_name=yl, ax=axd["pit"])
    coverage_plot(u, highlight=cov, ax=axd["cov"])
    auto = f"calibration of p({yl} | {', '.join(xl)}) on {len(x)} rows"
    fig.suptitle(textwrap.fill(auto if title is None else title, 100))
    return fig
