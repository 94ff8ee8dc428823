r"""Scores for predictive distributions: NLL, CRPS, energy score, PIT, calibration, coverage.

Every function takes a :class:`~mdnkit.GaussianMixture` (any batch shape, event ``(D,)``) and
targets ``y`` of shape ``batch_shape + (D,)`` (a tensor or an array), and returns a tensor: the
mean over every element with ``reduction="mean"`` (a 0-d tensor; ``float()`` it), or one value
per element with ``reduction="none"``.  All are "lower is better" except :func:`interval_coverage`,
which should match its nominal coverage.

=========================  ===================================================================
:func:`nll`                :math:`-\log p(y)`, nats (the training loss)
:func:`crps`               continuous ranked probability score, closed form, per output dim
:func:`energy_score`       multivariate CRPS, Monte Carlo
:func:`rmse`               root mean squared error of the predictive mean
:func:`pit`                probability integral transform :math:`F_d(y_d)`, per output dim
:func:`calibration_error`  distance of the PIT values from uniform
:func:`interval_coverage`  fraction of targets inside the central interval
:class:`ScoreSums`         the scores above of data given in parts (sums and counts, bounded memory)
=========================  ===================================================================
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import checks
from .checks import as_generator
from .kernels import broadcast_shapes, to_component_major
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
    "ScoreSums",
]

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)


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
        broadcast_shapes(y.shape[:-1], mixture.batch_shape)
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
    r""":math:`A(\mu, \sigma^2) = \mathbb{E}|X| = 2\sigma\varphi(z) + \mu\,\mathrm{erf}(z/\sqrt2)`,
    :math:`z = \mu/\sigma`, for :math:`X\sim\mathcal{N}(\mu,\sigma^2)` (:math:`2\Phi(z) - 1 =
    \mathrm{erf}(z/\sqrt2)`; in place on temporaries: it is most of the CRPS's time)."""
    s = var.sqrt()
    z = mu / s
    out = z.square().mul_(-0.5).exp_().mul_(2.0 / _SQRT_2PI).mul_(s)
    return out.addcmul_(mu, torch.special.erf(z.mul_(_SQRT_HALF)))


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
    y = _check(mixture, y, reduction)
    batch = broadcast_shapes(y.shape[:-1], mixture.batch_shape)
    # component-major (K, D, B): the elementwise work runs along the long batch dimension
    w = to_component_major(mixture.weights.unsqueeze(-1), batch).double()  # (K, 1, B)
    mu = to_component_major(mixture.loc, batch).double()  # (K, D, B)
    var = to_component_major(mixture.component_variance, batch).double()  # (K, D, B)
    yc = to_component_major(y.unsqueeze(-2), batch)[0].double()  # (D, B)
    first = (w * _a(yc - mu, var)).sum(0)  # (D, B)
    # A is even in mu, so the K x K double sum is its diagonal, A(0, 2 var_k) = 2 sqrt(var_k / pi),
    # plus twice the K (K - 1) / 2 pairs k < l: 0.5 * sum_kl = diagonal / 2 + pairs
    k = mu.shape[0]
    i, j = torch.triu_indices(k, k, 1, device=mu.device)
    second = (w.square() * var.sqrt()).sum(0) / math.sqrt(math.pi)
    if k > 1:
        second = second + (w[i] * w[j] * _a(mu[i] - mu[j], var[i] + var[j])).sum(0)
    score = (first - second).T.reshape(*batch, -1)  # batch_shape + (D,)
    return _reduce(score, reduction)


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

    if len(batch) == 0 or broadcast_shapes(y.shape[:-1], batch) != batch:
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
    _check_bins(bins)
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
    levels = _levels(bins)
    return _calibration(_below(u, levels), u.numel(), levels)


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, found {bins!r}")


def _levels(bins: int) -> Tensor:
    """The nominal levels j / B, j = 1 .. B - 1, of :func:`calibration_error`."""
    return torch.arange(1, bins, dtype=torch.float64) / bins


def _below(u: Tensor, levels: Tensor) -> Tensor:
    """How many of the values ``u`` are <= each level (int64, one count per level)."""
    u = u.reshape(-1, 1).to(torch.float64)
    return (u <= levels.to(u.device)).sum(0).cpu()


def _calibration(below: Tensor, n: int, levels: Tensor) -> float:
    r""":func:`calibration_error` from the counts :math:`N\hat F(j/B)` of :func:`_below`."""
    return float((below.double() / n - levels).abs().mean())


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
    _check_coverage(coverage)
    inside = _inside(pit(mixture, y), coverage)
    return inside.double().mean() if reduction == "mean" else inside


def _check_coverage(coverage: float) -> None:
    if not isinstance(coverage, (int, float)) or isinstance(coverage, bool) or not 0 < coverage < 1:
        raise ValueError(f"coverage must be a number in (0, 1), found {coverage!r}")


def _inside(u: Tensor, coverage: float) -> Tensor:
    """Whether each PIT value lies in the central ``coverage`` interval (booleans)."""
    u = u.double()
    a = (1.0 - coverage) / 2.0
    return (u >= a) & (u <= 1.0 - a)


class ScoreSums:
    r"""The scores of a data set given in parts: sums and counts, added one part at a time.

    :meth:`add` takes a mixture and its targets (as the functions above do; one part of the
    data, any size) and :meth:`result` gives the scores of everything added so far, the same
    numbers as :func:`nll`, :func:`crps`, :func:`rmse`, :func:`calibration_error` of the
    :func:`pit` values and :func:`interval_coverage` on all the data at once (sums in float64;
    the counts behind calibration and coverage exactly).  Memory does not grow with the data.

    Args:
        coverage: the nominal coverage of the central interval (as :func:`interval_coverage`).
        bins: the levels of :func:`calibration_error`.

    Example:
        >>> m = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), torch.ones(1, 1))
        >>> sums = ScoreSums(coverage=0.9)
        >>> for part in torch.linspace(-3, 3, 60).reshape(3, 20, 1):
        ...     sums.add(m, part)
        >>> r = sums.result()
        >>> r["rows"], round(r["nll"], 4), round(r["coverage"], 4)
        (60, 2.4698, 0.5333)
    """

    def __init__(self, coverage: float = 0.9, bins: int = 10) -> None:
        _check_coverage(coverage)
        _check_bins(bins)
        self.coverage = float(coverage)
        self.levels = _levels(int(bins))
        self.rows = self.values = self.inside = 0
        self.nll_sum = self.crps_sum = self.squared_error_sum = 0.0
        self.below = torch.zeros(len(self.levels), dtype=torch.int64)

    def add(self, mixture: GaussianMixture, y) -> None:
        """Add the scores of targets ``y`` (shape ``batch_shape + (D,)``) under ``mixture``."""
        y = _check(mixture, y, "none")
        with torch.no_grad():
            loss = nll(mixture, y, reduction="none")
            score = crps(mixture, y, reduction="none")
            error = mixture.mean - y.to(mixture.loc.dtype)
            u = pit(mixture, y)
        self.rows += loss.numel()
        self.values += score.numel()
        self.nll_sum += float(loss.double().sum())
        self.crps_sum += float(score.sum())
        self.squared_error_sum += float(error.double().square().sum())
        self.inside += int(_inside(u, self.coverage).sum())
        self.below += _below(u, self.levels)

    def result(self) -> dict[str, float]:
        """``rows`` (elements of the batch), ``nll``, ``crps``, ``rmse``, ``calibration_error``
        and ``coverage`` of everything added; NaN for each score when nothing was added."""
        if self.rows == 0:
            nan = math.nan
            return dict(rows=0, nll=nan, crps=nan, rmse=nan, calibration_error=nan, coverage=nan)
        return {
            "rows": self.rows,
            "nll": self.nll_sum / self.rows,
            "crps": self.crps_sum / self.values,
            "rmse": math.sqrt(self.squared_error_sum / self.values),
            "calibration_error": _calibration(self.below, self.values, self.levels),
            "coverage": self.inside / self.values,
        }
