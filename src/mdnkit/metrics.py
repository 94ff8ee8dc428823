r"""Scores for predictive distributions: NLL, CRPS, energy score, PIT, calibration, coverage.

Every function takes a :class:`~mdnkit.GaussianMixture` (any batch shape, event ``(D,)``) and
targets ``y`` of shape ``batch_shape + (D,)`` (a tensor or an array), and returns a tensor: the
mean over every element with ``reduction="mean"`` (a 0-d tensor; ``float()`` it), or one value
per element with ``reduction="none"``.  All are "lower is better" except :func:`interval_coverage`,
which should match its nominal coverage.

=====================  ===================================================================
:func:`nll`            :math:`-\log p(y)`, nats (the training loss)
:func:`crps`           continuous ranked probability score, closed form, per output dim
:func:`energy_score`   multivariate CRPS, Monte Carlo
:func:`rmse`           root mean squared error of the predictive mean
:func:`pit`            probability integral transform :math:`F_d(y_d)`, per output dim
:func:`calibration_error`  distance of the PIT values from uniform
:func:`interval_coverage`  fraction of targets inside the central interval
=====================  ===================================================================
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import checks
from .checks import as_generator
from .mixture import GaussianMixture
from .options import MetricReduction

__all__ = [
    "nll",
    "crps",
    "energy_score",
    "rmse",
    "pit",
    "calibration_error",
    "interval_coverage",
]

_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _check(mixture: GaussianMixture, y, reduction: str) -> Tensor:
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, found {type(mixture).__name__}")
    checks.choice("reduction", reduction, MetricReduction)
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(np.asarray(y, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(
                f"y must be a tensor or an array of numbers, found {type(y).__name__}"
            ) from None
    d = mixture.event_shape[0]
    if y.dim() < 1 or y.shape[-1] != d:
        raise ValueError(
            f"y must have shape batch_shape + (D,) = {tuple(mixture.batch_shape) + (d,)}, "
            f"found {tuple(y.shape)}"
        )
    try:
        torch.broadcast_shapes(y.shape[:-1], mixture.batch_shape)
    except RuntimeError:
        raise ValueError(
            f"y of shape {tuple(y.shape)} does not broadcast to the mixture's batch shape "
            f"{tuple(mixture.batch_shape)} + ({d},)"
        ) from None
    return y.to(device=mixture.loc.device)


def _reduce(values: Tensor, reduction: str) -> Tensor:
    return values.mean() if reduction == "mean" else values


def nll(mixture: GaussianMixture, y, reduction: MetricReduction = "mean") -> Tensor:
    r"""Negative log-likelihood :math:`-\log p(y)` in nats (the model's training loss).

    Example:
        >>> m = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), torch.ones(1, 1))
        >>> round(float(nll(m, torch.zeros(1))), 4)  # log sqrt(2 pi)
        0.9189
    """
    y = _check(mixture, y, reduction)
    return _reduce(-mixture.log_prob(y), reduction)


def _a(mu: Tensor, var: Tensor) -> Tensor:
    r""":math:`A(\mu, \sigma^2) = \mathbb{E}|X|` for :math:`X\sim\mathcal{N}(\mu,\sigma^2)`."""
    s = var.sqrt()
    z = mu / s
    return 2.0 * s * torch.exp(-0.5 * z * z) / _SQRT_2PI + mu * (2.0 * torch.special.ndtr(z) - 1.0)


def crps(mixture: GaussianMixture, y, reduction: MetricReduction = "mean") -> Tensor:
    r"""Continuous ranked probability score of each output dimension's marginal, closed form.

    .. math::

        \mathrm{CRPS}(F, y) = \int (F(t) - \mathbb{1}\{t \ge y\})^2\,dt
        = \sum_k w_k A(y-\mu_k, \sigma_k^2)
          - \tfrac12 \sum_{k,l} w_k w_l A(\mu_k-\mu_l, \sigma_k^2+\sigma_l^2),

    with :math:`A(\mu,\sigma^2) = 2\sigma\varphi(\mu/\sigma) + \mu(2\Phi(\mu/\sigma)-1)`
    (Grimit et al. 2006).  Same units as ``y``; it reduces to the absolute error for a point
    forecast.  Computed in float64.  ``reduction="none"`` gives shape ``batch_shape + (D,)``.

    Example:
        >>> m = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), torch.ones(1, 1))
        >>> round(float(crps(m, torch.zeros(1))), 4)  # (sqrt(2) - 1) / sqrt(pi)
        0.2337
    """
    y = _check(mixture, y, reduction).double()
    w = mixture.weights.double().unsqueeze(-1)  # (..., K, 1)
    mu = mixture.loc.double()  # (..., K, D)
    var = mixture.component_variance.double()  # (..., K, D)
    first = (w * _a(y.unsqueeze(-2) - mu, var)).sum(-2)  # (..., D)
    ww = w.unsqueeze(-2) * w.unsqueeze(-3)  # (..., K, K, 1)
    pair = _a(mu.unsqueeze(-2) - mu.unsqueeze(-3), var.unsqueeze(-2) + var.unsqueeze(-3))
    second = 0.5 * (ww * pair).sum((-2, -3))
    return _reduce(first - second, reduction)


_ENERGY_CHUNK = 1 << 22  # sampled numbers per chunk of rows in energy_score


def energy_score(
    mixture: GaussianMixture,
    y,
    n_samples: int = 1000,
    generator: torch.Generator | int | None = 0,
    reduction: MetricReduction = "mean",
) -> Tensor:
    r"""Energy score, the multivariate CRPS, by Monte Carlo.

    .. math::

        \mathrm{ES}(P, y) = \mathbb{E}\lVert X - y\rVert - \tfrac12 \mathbb{E}\lVert X - X'\rVert,
        \qquad X, X' \sim P \text{ independent},

    estimated without bias from ``n_samples`` draws :math:`X_1..X_n` as
    :math:`\frac1n\sum_i\lVert X_i-y\rVert - \frac1{2n}\sum_i\lVert X_i - X_{i+1 \bmod n}\rVert`.
    For D = 1 it equals :func:`crps`.  ``reduction="none"`` gives shape ``batch_shape``.

    Example:
        >>> m = GaussianMixture(torch.zeros(1), torch.zeros(1, 2), torch.ones(1, 2))
        >>> float(energy_score(m, torch.zeros(2), n_samples=4000, generator=0)) > 0
        True
    """
    y = _check(mixture, y, reduction)
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2, found {n_samples!r}")
    n = int(n_samples)
    gen = as_generator(generator, mixture.loc.device)  # one stream across the chunks
    batch = mixture.batch_shape
    d = mixture.event_shape[0]

    def score(m: GaussianMixture, yc: Tensor) -> Tensor:
        x = m.sample((n,), generator=gen).double()  # (n, ..., D)
        term1 = (x - yc.double()).norm(dim=-1).mean(0)
        term2 = (x - x.roll(1, dims=0)).norm(dim=-1).mean(0)
        return term1 - 0.5 * term2

    if len(batch) == 0 or torch.broadcast_shapes(y.shape[:-1], batch) != batch:
        return _reduce(score(mixture, y), reduction)
    # Rows of the first batch dimension in chunks of at most _ENERGY_CHUNK sampled numbers:
    # memory stays bounded (all at once, 100 000 rows of 3-D targets took some 7 GB).
    y = y.expand(*batch, d)
    per_row = n * d * max(1, batch[1:].numel())
    step = max(1, _ENERGY_CHUNK // per_row)
    parts = [score(mixture[i : i + step], y[i : i + step]) for i in range(0, batch[0], step)]
    return _reduce(torch.cat(parts), reduction)


def rmse(mixture: GaussianMixture, y) -> Tensor:
    r"""Root mean squared error of the predictive mean, :math:`\sqrt{\overline{(y - \mathbb{E}[y])^2}}`,
    over every element and output dimension.

    Example:
        >>> m = GaussianMixture(torch.zeros(2), torch.tensor([[-1.0], [1.0]]), torch.ones(2, 1))
        >>> float(rmse(m, torch.tensor([2.0])))
        2.0
    """
    y = _check(mixture, y, "mean")
    return (y.to(mixture.loc.dtype) - mixture.mean).square().mean().sqrt()


def pit(mixture: GaussianMixture, y) -> Tensor:
    r"""Probability integral transform :math:`u_d = F_d(y_d)` of each output dimension.

    :math:`F_d` is the CDF of the marginal mixture of dimension ``d``.  If ``y`` is drawn from
    the mixture, each :math:`u_d` is uniform on [0, 1]; a U-shaped histogram of PIT values means
    over-confident predictions, a hump under-confident ones.  Shape ``batch_shape + (D,)``.

    Example:
        >>> m = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), torch.ones(1, 1))
        >>> float(pit(m, torch.zeros(1))[0])
        0.5
    """
    y = _check(mixture, y, "mean")
    d = mixture.event_shape[0]
    if d == 1:
        return mixture.cdf(y).unsqueeze(-1)
    return torch.stack([mixture.marginal(i).cdf(y[..., i : i + 1]) for i in range(d)], -1)


def calibration_error(pit_values, bins: int = 10) -> float:
    r"""Mean absolute miscalibration of PIT values: how far their CDF is from the uniform one.

    .. math::

        \mathrm{CE} = \frac{1}{B-1}\sum_{j=1}^{B-1}\Big|\hat F\big(\tfrac jB\big) - \tfrac jB\Big|,
        \qquad \hat F(p) = \frac1N \#\{u_i \le p\},

    i.e. for each nominal level :math:`p = j/B` the gap between the fraction of targets below
    the predictive :math:`p`-quantile and :math:`p` (Kuleshov et al. 2018, absolute version).
    0 is perfectly calibrated, 0.5 the worst.  All PIT values are pooled (every output dim).

    Args:
        pit_values: values in [0, 1], any shape (e.g. from :func:`pit`).
        bins: number of levels B (>= 2).

    Example:
        >>> calibration_error(torch.full((100,), 0.5), bins=10)  # all mass at the median
        0.2777777777777778
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, found {bins!r}")
    u = (
        pit_values.detach().cpu().double()
        if isinstance(pit_values, Tensor)
        else (torch.as_tensor(np.asarray(pit_values, dtype=np.float64)))
    )
    u = u.reshape(-1)
    if u.numel() == 0:
        raise ValueError("pit_values is empty, expected at least one value")
    if torch.isnan(u).any() or (u < 0).any() or (u > 1).any():
        raise ValueError("pit_values must lie in [0, 1], found values outside it or NaN")
    levels = torch.arange(1, bins, dtype=torch.float64) / bins
    emp = (u.unsqueeze(0) <= levels.unsqueeze(1)).double().mean(1)
    return float((emp - levels).abs().mean())


def interval_coverage(
    mixture: GaussianMixture, y, coverage: float = 0.9, reduction: MetricReduction = "mean"
) -> Tensor:
    r"""Fraction of targets inside each output's central ``coverage`` interval.

    The interval of dimension ``d`` is :math:`[F_d^{-1}(\tfrac{1-c}2), F_d^{-1}(\tfrac{1+c}2)]`,
    computed as :math:`\tfrac{1-c}2 \le F_d(y_d) \le \tfrac{1+c}2` (the same thing, since
    :math:`F_d` is increasing, without solving for quantiles).  A calibrated model covers
    ``coverage`` of the targets.  ``reduction="none"`` gives booleans ``batch_shape + (D,)``.

    Example:
        >>> m = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), torch.ones(1, 1))
        >>> float(interval_coverage(m, torch.tensor([[0.0], [3.0]]), 0.9))
        0.5
    """
    if not isinstance(coverage, (int, float)) or isinstance(coverage, bool) or not 0 < coverage < 1:
        raise ValueError(f"coverage must be a number in (0, 1), found {coverage!r}")
    u = pit(mixture, y).double()
    a = (1.0 - coverage) / 2.0
    inside = (u >= a) & (u <= 1.0 - a)
    return inside.double().mean() if reduction == "mean" else inside
