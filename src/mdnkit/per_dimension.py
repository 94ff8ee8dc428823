"""Per-dimension Gaussian mixtures: D independent 1-D mixtures, as one distribution.

The World Models MDN-RNN (Ha & Schmidhuber, 2018) predicts its 32-dimensional latent ``z`` this
way: every output dimension ``d`` has its own K-component 1-D Gaussian mixture, and the
dimensions are independent given the network's input,

.. math::

    p(y) = \\prod_{d=1}^{D} \\sum_{k=1}^{K} \\pi_{dk}\\,
           \\mathcal{N}(y_d \\mid \\mu_{dk}, \\sigma_{dk}^2),
    \\qquad \\pi_{d\\cdot} = \\operatorname{softmax}(\\text{logits}_{d\\cdot}).

This is not a :class:`~mdnkit.mixture.GaussianMixture` with K components (where one component
is drawn for all dimensions together): written as one mixture it has :math:`K^D` components.
:meth:`PerDimensionMixture.to_gaussian_mixture` builds that mixture when :math:`K^D` is small, and
:meth:`PerDimensionMixture.univariate` gives the D mixtures as a batch of 1-D GaussianMixtures.

Everything is computed in log space with every normalising constant, in float32 or wider even
when the parameters are half precision; sampling and densities are vectorised (no Python loop
over rows or dimensions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property

from .checks import as_generator, positive_int
from .kernels import LOG_2PI, DiagonalMixtureLogProb, broadcast_shapes, draw_components
from .mixture import (
    GaussianMixture,
    check_temperature,
    check_values,
    event_values,
    log_softmax,
    promote,
    tempered_logits,
)

__all__ = ["PerDimensionMixture", "DEFAULT_MAX_JOINT_COMPONENTS"]

#: Largest :math:`K^D` that :meth:`PerDimensionMixture.to_gaussian_mixture` builds by default.
DEFAULT_MAX_JOINT_COMPONENTS = 4096

_HALF_LOG_2PI = 0.5 * LOG_2PI

TemperatureLike = float | int | Tensor


def _per_row(t: float | Tensor) -> float | Tensor:
    """A temperature of shape ``batch`` (or a number) shaped to broadcast against ``(..., D, K)``."""
    return t[..., None, None] if isinstance(t, Tensor) else t


def _logsumexp_(a: Tensor) -> Tensor:
    """``logsumexp(a, -1)``, overwriting ``a`` (rows of all ``-inf`` give ``-inf``, not NaN)."""
    top = a.amax(-1, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)
    return a.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))


class PerDimensionMixture(Distribution):
    r"""A batch of per-dimension Gaussian mixtures: D independent 1-D K-component mixtures.

    .. math::

        \log p(y) = \sum_{d=1}^{D} \operatorname{logsumexp}_k \Big[\log\pi_{dk} - \log\sigma_{dk}
                    - \tfrac12\log 2\pi - \tfrac12\big((y_d-\mu_{dk})/\sigma_{dk}\big)^2\Big]

    with :math:`\pi_{d\cdot} = \operatorname{softmax}(\text{logits}_{d\cdot})`.  This is the
    output distribution of the World Models MDN-RNN.  Unlike :class:`GaussianMixture`, where one
    component is drawn for the whole vector, each dimension draws its own component.

    Args:
        logits: mixture logits, shape ``(..., D, K)``; the weights of dimension d are
            ``softmax(logits[..., d, :])``.
        loc: component means, shape ``(..., D, K)``.
        scale: component standard deviations (positive), shape ``(..., D, K)``.
        validate_args: check values (no NaN or +inf logits, finite means, positive finite
            scales) as well as shapes.  Shapes are always checked.  Defaults to
            ``torch.distributions``' global setting.

    The trailing ``(D, K)`` of the three parameters must agree exactly; their leading dimensions
    broadcast against each other to ``batch_shape``.  The event shape is ``(D,)``.

    Example:
        >>> import torch
        >>> from mdnkit import PerDimensionMixture
        >>> logits = torch.zeros(2, 2)                      # D = 2 dimensions, K = 2 components
        >>> loc = torch.tensor([[-1.0, 1.0], [0.0, 4.0]])
        >>> m = PerDimensionMixture(logits, loc, torch.ones(2, 2))
        >>> m.mean, m.variance
        (tensor([0., 2.]), tensor([2., 5.]))
        >>> m.log_prob(torch.tensor([0.0, 2.0])).shape, m.cdf(torch.tensor([0.0, 2.0]))
        (torch.Size([]), tensor([0.5000, 0.5000]))
        >>> m.sample((5,), temperature=0.5, generator=0).shape
        torch.Size([5, 2])
        >>> m.to_gaussian_mixture().num_components              # K ** D
        4
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        scale: Tensor,
        validate_args: bool | None = None,
    ) -> None:
        for name, t in (("logits", logits), ("loc", loc), ("scale", scale)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, found {type(t).__name__}")
            if t.dim() < 2:
                raise ValueError(
                    f"{name} must have shape (..., D, K), found shape {tuple(t.shape)}"
                )
        d, k = loc.shape[-2], loc.shape[-1]
        if d < 1 or k < 1:
            raise ValueError(
                f"need D >= 1 dimensions and K >= 1 components, found loc shape {tuple(loc.shape)}"
            )
        for name, t in (("logits", logits), ("scale", scale)):
            if t.shape[-2:] != (d, k):
                raise ValueError(
                    f"{name} and loc disagree on (D, K): expected {name} of shape (..., {d}, {k}) "
                    f"like loc {tuple(loc.shape)}, found {tuple(t.shape)}"
                )
        shapes = [logits.shape[:-2], loc.shape[:-2], scale.shape[:-2]]
        try:
            batch_shape = broadcast_shapes(*shapes)
        except RuntimeError:
            raise ValueError(
                "the leading (batch) dimensions of the parameters do not broadcast: "
                + ", ".join(f"{n} {tuple(s)}" for n, s in zip(("logits", "loc", "scale"), shapes))
            ) from None
        logits, loc, scale = promote(logits), promote(loc), promote(scale)
        if validate_args or (validate_args is None and Distribution._validate_args):
            check_values(logits, loc, scale)
        self._d, self._k = d, k
        self._raw_logits = logits.expand(*batch_shape, d, k)
        self.loc = loc.expand(*batch_shape, d, k)
        self.scale = scale.expand(*batch_shape, d, k)
        super().__init__(batch_shape, torch.Size((d,)), validate_args=False)

    # ------------------------------------------------------------------ basic properties
    @lazy_property
    def logits(self) -> Tensor:
        r"""Normalised log-weights :math:`\log\pi_{dk}` (log-softmax over k), ``(..., D, K)``."""
        return log_softmax(self._raw_logits)

    @lazy_property
    def weights(self) -> Tensor:
        r"""Mixture weights :math:`\pi_{dk}` of every dimension, ``(..., D, K)`` (rows sum to 1)."""
        return self.logits.exp()

    @lazy_property
    def _log_norm(self) -> Tensor:
        r""":math:`\log\pi_{dk} - \log\sigma_{dk} - \tfrac12\log 2\pi`, the constant of each term."""
        return self.logits - self.scale.log() - _HALF_LOG_2PI

    @property
    def num_components(self) -> int:
        """K, the number of mixture components of each dimension."""
        return self._k

    def expand(self, batch_shape, _instance=None) -> PerDimensionMixture:
        """The same mixtures broadcast to ``batch_shape`` (views, no copy)."""
        shape = (*torch.Size(batch_shape), self._d, self._k)
        return PerDimensionMixture(
            self._raw_logits.expand(shape),
            self.loc.expand(shape),
            self.scale.expand(shape),
            validate_args=False,
        )

    def __getitem__(self, index) -> PerDimensionMixture:
        """Index the batch dimensions: ``mixture[0]``, ``mixture[:, 3]``, ``mixture[mask]``."""
        if not isinstance(index, tuple):
            index = (index,)
        if any(i is Ellipsis for i in index):
            raise IndexError("Ellipsis is not supported when indexing a PerDimensionMixture")
        if len(index) > len(self.batch_shape):
            raise IndexError(
                f"too many indices for batch_shape {tuple(self.batch_shape)}: found {len(index)}"
            )
        return PerDimensionMixture(
            self._raw_logits[index], self.loc[index], self.scale[index], validate_args=False
        )

    def __repr__(self) -> str:
        return (
            f"PerDimensionMixture(batch_shape={tuple(self.batch_shape)}, D={self._d}, "
            f"K={self._k}, dtype={self.loc.dtype})"
        )

    # ------------------------------------------------------------------ densities
    def _check_value(self, value: Tensor) -> Tensor:
        return event_values(value, self._d, self.loc)

    def component_log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log\mathcal{N}(y_d \mid \mu_{dk}, \sigma_{dk}^2)` for every d and k, ``(..., D, K)``."""
        z = (self._check_value(value).unsqueeze(-1) - self.loc) / self.scale
        return -0.5 * z.square() - self.scale.log() - _HALF_LOG_2PI

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log p(y)`, summed over the D dimensions; shape
        ``broadcast(value.shape[:-1], batch_shape)``."""
        y = self._check_value(value)
        raw, loc, scale = self._raw_logits, self.loc, self.scale
        if torch.is_grad_enabled() and any(t.requires_grad for t in (raw, loc, scale, y)):
            # the D mixtures as a batch of 1-D ones, through GaussianMixture's kernel and its
            # hand-written backward pass (finite gradients for components of no weight)
            lp = DiagonalMixtureLogProb.apply(
                raw, loc[..., None], scale[..., None], y[..., None, None]
            )
            return lp.sum(-1)
        # no graph: the same sums in place, three full-size temporaries instead of ten; the
        # logits shifted to a maximum of 0 first, so that large ones do not swamp the densities
        shifted = raw - raw.amax(-1, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)
        a = (y.unsqueeze(-1) - loc).div_(scale).square_().mul_(-0.5).add_(shifted)
        a = _logsumexp_(a.sub_(scale.log()))
        return (a - shifted.exp_().sum(-1).log_()).sum(-1) - self._d * _HALF_LOG_2PI

    def posterior(self, value: Tensor) -> Tensor:
        r"""Responsibilities :math:`p(k_d = k \mid y_d)` of every dimension, ``(..., D, K)``."""
        z = (self._check_value(value).unsqueeze(-1) - self.loc) / self.scale
        return torch.softmax(self._log_norm - 0.5 * z.square(), dim=-1)

    def cdf(self, value: Tensor) -> Tensor:
        r""":math:`F_d(y_d) = \sum_k \pi_{dk}\Phi\big((y_d-\mu_{dk})/\sigma_{dk}\big)` per dimension.

        ``value`` has shape ``(..., D)``; so has the result (one CDF per dimension, computed in
        float64).  The joint CDF is the product over the last dimension.
        """
        y = self._check_value(value).to(torch.float64).unsqueeze(-1)
        z = (y - self.loc.double()) / self.scale.double()
        out = (self.weights.double() * torch.special.ndtr(z)).sum(-1)
        return out.clamp(0.0, 1.0).to(self.loc.dtype)

    def icdf(self, value: Tensor) -> Tensor:
        r"""Per-dimension quantiles :math:`F_d^{-1}(q_d)`, shape ``broadcast(value.shape,
        batch_shape + (D,))``.

        Each root is found as :meth:`GaussianMixture.icdf` finds it (Newton steps safeguarded by
        bisection inside the bracket of the components' own quantiles, in float64), on the D
        1-D mixtures of :meth:`univariate`.  ``q = 0`` and ``q = 1`` give ``-inf`` and ``+inf``.
        """
        q = torch.as_tensor(value, device=self.loc.device)
        return self.univariate().icdf(q).squeeze(-1)

    def quantile(self, q: float | Sequence[float] | Tensor) -> Tensor:
        """Quantiles ``q`` (a float or a 1-D list) of every dimension, shape
        ``q.shape + batch_shape + (D,)``."""
        qt = torch.as_tensor(q, dtype=torch.float64, device=self.loc.device)
        return self.icdf(qt.reshape(qt.shape + (1,) * (len(self.batch_shape) + 1)))

    # ------------------------------------------------------------------ moments
    @property
    def mean(self) -> Tensor:
        r""":math:`\mathbb{E}[y_d] = \sum_k \pi_{dk}\mu_{dk}`, shape ``batch_shape + (D,)``."""
        return (self.weights * self.loc).sum(-1)

    @property
    def variance(self) -> Tensor:
        r""":math:`\operatorname{Var}[y_d] = \sum_k \pi_{dk}\big(\sigma_{dk}^2 + (\mu_{dk} -
        \mathbb{E}[y_d])^2\big)` (law of total variance), ``batch_shape + (D,)``."""
        dev = self.loc - self.mean.unsqueeze(-1)
        return (self.weights * (self.scale.square() + dev.square())).sum(-1)

    @property
    def mode(self) -> Tensor:
        r"""The highest-density point, ``batch_shape + (D,)``: the dimensions are independent, so
        it is the vector of the D 1-D modes, each found by :attr:`GaussianMixture.mode` on
        :meth:`univariate`."""
        return self.univariate().mode.squeeze(-1)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        sample_shape: torch.Size | Sequence[int] = (),
        temperature: TemperatureLike = 1.0,
        sigma_temperature: TemperatureLike = 1.0,
        generator: torch.Generator | int | None = None,
    ) -> Tensor:
        r"""Draw samples, shape ``sample_shape + batch_shape + (D,)``, fully vectorised.

        Every dimension d draws its own component from
        :math:`\operatorname{softmax}(\text{logits}_{d\cdot} / T)` and then
        :math:`y_d \sim \mathcal{N}(\mu_{dk}, S\,\sigma_{dk}^2)` (the standard deviation scales by
        :math:`\sqrt S`), with :math:`T` = ``temperature`` and :math:`S` = ``sigma_temperature``.
        ``temperature=0`` picks each dimension's most likely component, ``inf`` draws uniformly
        among the components of nonzero weight; ``sigma_temperature=0`` returns the component
        means.

        Args:
            sample_shape: leading shape of the draws.
            temperature: :math:`T \ge 0`, a number or a tensor broadcastable to ``batch_shape``.
            sigma_temperature: :math:`S \ge 0` finite, a number or a tensor broadcastable to
                ``batch_shape``.
            generator: a ``torch.Generator`` or an int seed; the same seed gives the same samples.
        """
        shape = self._extended_shape(torch.Size(sample_shape))[:-1]
        loc = self.loc
        gen = as_generator(generator, loc.device)
        t = check_temperature(temperature, "temperature", loc, self.batch_shape, finite=False)
        s = check_temperature(sigma_temperature, "sigma_temperature", loc, self.batch_shape, True)
        if not isinstance(t, Tensor) and t == 0.0:
            idx = self._raw_logits.argmax(-1).expand(*shape, self._d)
        else:
            raw = self._raw_logits
            one = not isinstance(t, Tensor) and t == 1.0
            scaled = raw if one else tempered_logits(raw, _per_row(t))
            idx = draw_components(scaled, torch.Size((*shape, self._d)), gen)
        full = (*shape, self._d, self._k)
        idx = idx.unsqueeze(-1)
        mean = loc.expand(full).gather(-1, idx).squeeze(-1)
        if not isinstance(s, Tensor) and s == 0.0:
            return mean
        sigma = self.scale.expand(full).gather(-1, idx).squeeze(-1)
        if isinstance(s, Tensor):
            sigma = sigma * s.sqrt().unsqueeze(-1)
        elif s != 1.0:
            sigma = sigma * math.sqrt(s)
        eps = torch.randn(mean.shape, dtype=loc.dtype, device=loc.device, generator=gen)
        return torch.addcmul(mean, sigma, eps)

    def with_temperature(
        self, temperature: TemperatureLike = 1.0, sigma_temperature: TemperatureLike = 1.0
    ) -> PerDimensionMixture:
        r"""The tempered distribution that :meth:`sample` draws from: logits / T, variances × S.

        ``temperature`` 0 gives all weight to each dimension's most likely component and ``inf``
        equal weight to its components of nonzero weight; ``sigma_temperature`` must be positive
        and finite here (a zero-variance mixture has no density).
        """
        loc, batch = self.loc, self.batch_shape
        t = check_temperature(temperature, "temperature", loc, batch, finite=False)
        s = check_temperature(sigma_temperature, "sigma_temperature", loc, batch, finite=True)
        if bool((s == 0).any()) if isinstance(s, Tensor) else s == 0:
            raise ValueError("sigma_temperature must be > 0 for a tempered distribution")
        logits = tempered_logits(self._raw_logits, _per_row(t))
        scale = self.scale * (_per_row(s.sqrt()) if isinstance(s, Tensor) else math.sqrt(s))
        return PerDimensionMixture(logits, loc, scale, validate_args=False)

    # ------------------------------------------------------------------ other views
    def affine(self, shift: Tensor, scale: Tensor) -> PerDimensionMixture:
        r"""The distribution of :math:`y = \text{shift} + \text{scale} \odot z` for :math:`z`
        from this one: :math:`\mu_{dk} \mapsto \text{shift}_d + s_d\,\mu_{dk}`,
        :math:`\sigma_{dk} \mapsto s_d\,\sigma_{dk}`, the weights unchanged.

        ``shift`` and ``scale`` (positive) are per dimension, shape ``(D,)`` (or one entry for
        all); used to bring a mixture over standardised values into the data's units, as
        :meth:`GaussianMixture.affine` does.

        Example:
            >>> m = PerDimensionMixture(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))
            >>> a = m.affine(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 3.0]))
            >>> a.loc[:, 0], a.scale[:, 0]
            (tensor([ 1., -1.]), tensor([2., 3.]))
        """
        shift = torch.as_tensor(shift, dtype=self.loc.dtype, device=self.loc.device)
        scale = torch.as_tensor(scale, dtype=self.loc.dtype, device=self.loc.device)
        col_shift, col_scale = shift.reshape(-1, 1), scale.reshape(-1, 1)
        return PerDimensionMixture(
            self._raw_logits,
            self.loc * col_scale + col_shift,
            self.scale * col_scale,
            validate_args=False,
        )

    def marginal(self, dims: int | Sequence[int]) -> PerDimensionMixture:
        r"""The marginal over the output dimensions ``dims``: the selected dimensions' mixtures
        (exact, since the dimensions are independent); event shape ``(len(dims),)``."""
        if isinstance(dims, int):
            dims = [dims]
        dims = list(dims)
        d = self._d
        if (
            not dims
            or any(not isinstance(i, int) or not -d <= i < d for i in dims)
            or len({i % d for i in dims}) != len(dims)
        ):
            raise ValueError(f"dims must be distinct indices in [-{d}, {d}), found {dims}")
        idx = torch.tensor([i % d for i in dims], device=self.loc.device)
        return PerDimensionMixture(
            self._raw_logits.index_select(-2, idx),
            self.loc.index_select(-2, idx),
            self.scale.index_select(-2, idx),
            validate_args=False,
        )

    def univariate(self) -> GaussianMixture:
        r"""The D mixtures as one batch of 1-D :class:`GaussianMixture`: batch shape
        ``batch_shape + (D,)``, K components, event shape ``(1,)``.  Any 1-D tool of
        GaussianMixture (``cdf``, ``icdf``, ``interval``, ``mode``) then works per dimension."""
        return GaussianMixture(
            self._raw_logits, self.loc.unsqueeze(-1), self.scale.unsqueeze(-1), validate_args=False
        )

    def to_gaussian_mixture(
        self, max_components: int = DEFAULT_MAX_JOINT_COMPONENTS
    ) -> GaussianMixture:
        r"""The same distribution as one diagonal :class:`GaussianMixture` with :math:`K^D`
        components, for small :math:`K^D`.

        Component :math:`(k_1, \dots, k_D)` has weight :math:`\prod_d \pi_{d k_d}`, mean
        :math:`(\mu_{1k_1}, \dots, \mu_{Dk_D})` and standard deviations
        :math:`(\sigma_{1k_1}, \dots, \sigma_{Dk_D})`.  It lets every tool that takes a
        GaussianMixture (metrics, plots) work on a small per-dimension mixture.  Raises
        ValueError when :math:`K^D` exceeds ``max_components`` (for the World Models' D = 32,
        K = 5 it would be :math:`5^{32}`): use :meth:`marginal` or :meth:`univariate` then.
        """
        limit = positive_int("max_components", max_components)
        d, k = self._d, self._k
        n = k**d
        if n > limit:
            raise ValueError(
                f"the joint mixture would have K**D = {k}**{d} = {n} components, more than "
                f"max_components={limit}; use .marginal(dims) or .univariate() instead"
            )
        # index of component (k_1, ..., k_D) in dimension d: (D, K**D), first dimension slowest
        grid = torch.arange(n, device=self.loc.device)
        strides = k ** torch.arange(d - 1, -1, -1, device=self.loc.device)
        idx = (grid // strides.unsqueeze(-1)) % k
        idx = idx.expand(*self.batch_shape, d, n)
        logits = self.logits.gather(-1, idx).sum(-2)
        loc = self.loc.gather(-1, idx).transpose(-1, -2)
        scale = self.scale.gather(-1, idx).transpose(-1, -2)
        return GaussianMixture(logits, loc, scale, validate_args=False)
