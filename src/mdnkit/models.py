"""Ready networks: :class:`MDN`, a multilayer perceptron ending in an :class:`~mdnkit.MDNHead`.

The model keeps the standardisation of its inputs and targets inside (buffers ``x_mean``,
``x_std``, ``y_mean``, ``y_std``, set by :meth:`MDN.prepare`), so that its ``forward`` takes
inputs in the data's units and returns a :class:`~mdnkit.GaussianMixture` in the data's units:
a negative log-likelihood computed with it is comparable with any other model's.

(The recurrent MDN-RNN lives in :mod:`mdnkit.sequence`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import checks
from .fast import ACTIVATIONS as FAST_ACTIVATIONS
from .fast import FlatDiagonalNLL, MLPFastStep
from .head import MDNHead
from .layout import DEFAULT_MIN_SCALE
from .loss import mdn_loss
from .mixture import GaussianMixture
from .options import Activation, CovarianceType, ScaleTransform

__all__ = ["MDN", "Activation"]


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def _last_dim(name: str, v: Any, width: int, what: str, field: str, like: Tensor) -> Tensor:
    """``v`` as a tensor of ``like``'s dtype and device whose last dimension is ``width``."""
    if not isinstance(v, Tensor):
        v = _as_float_tensor(name, v, like.dtype).to(like.device)
    if v.dim() < 1 or v.shape[-1] != width:
        raise ValueError(
            f"expected {what} of shape (..., {field}={width}), found shape {tuple(v.shape)}"
        )
    return v if v.dtype == like.dtype else v.to(like.dtype)


def _as_float_tensor(name: str, v: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(v, Tensor):
        t = v.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(v, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be a tensor or array of numbers, found {type(v).__name__}"
            ) from err
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16)):
        raise TypeError(f"{name} must hold real numbers, found dtype {t.dtype}")
    return t.to(dtype)


class MDN(nn.Module):
    r"""A multilayer perceptron with a mixture density head, in the data's units.

    .. math::

        \tilde x = (x - \bar x) / s_x, \qquad
        h = f_L(\dots f_1(\tilde x)), \qquad
        p(\tilde y \mid x) = \sum_k \pi_k(h)\, \mathcal{N}(\tilde y \mid \mu_k(h), \Sigma_k(h)),

    with :math:`\tilde y = (y - \bar y) / s_y` and each :math:`f_i` a linear layer followed by
    the activation (and dropout).  :meth:`forward` maps the mixture back to the data's units,
    :math:`y = \bar y + S\tilde y` with :math:`S = \operatorname{diag}(s_y)`:

    * means :math:`\bar y + S\mu_k`;
    * diagonal scales :math:`s_{y,d}\,\sigma_{k,d}`;
    * full covariances: Cholesky factors :math:`S L_k` (row :math:`d` of :math:`L_k` times
      :math:`s_{y,d}`, still lower-triangular with a positive diagonal);
    * spherical components stay spherical only under a *common* scale, so for
      ``covariance="spherical"`` the targets are standardised with one scale for every
      dimension, :math:`s_y = \sqrt{\tfrac1D\sum_d \operatorname{Var}(y_d)}` (the root mean
      variance), and the raw-unit scale is :math:`s_y\sigma_k`.

    The log-density changes by the Jacobian of the affine map, so
    :math:`\log p(y\mid x) = \log p(\tilde y\mid x) - \sum_d \log s_{y,d}` exactly: the NLL
    returned by :meth:`loss` is in the data's units, comparable with anyone's.

    Args:
        in_features: size of the input x.
        out_features: D, size of the target y.
        hidden: sizes of the hidden layers (``()`` for none: the head sees the inputs).
        activation: hidden-layer activation, one of ``tanh``, ``relu``, ``elu``, ``gelu``,
            ``silu``, ``sigmoid``, ``softplus``, ``leaky_relu``.
        num_components: K, the number of mixture components.
        covariance: ``"diagonal"``, ``"spherical"`` or ``"full"``.
        scale_transform: ``"softplus"``, ``"exp"`` or ``"elu"`` (see :class:`~mdnkit.MDNHead`).
        min_scale: floor of the component scales, in *standardised* units.
        dropout: dropout probability after each hidden activation (0 for none).

    Example:
        >>> import torch
        >>> from mdnkit import MDN, fit
        >>> y = torch.empty(500, 1).uniform_(-10.5, 10.5)
        >>> x = 7 * torch.sin(0.75 * y) + 0.5 * y + torch.randn(500, 1)
        >>> model = MDN(1, 1, hidden=(15, 15), num_components=10)
        >>> history = fit(model, x, y, epochs=5, seed=0, progress=False)
        >>> mixture = model(x[:3])            # a GaussianMixture in y's units
        >>> mixture.batch_shape, mixture.sample(generator=0).shape
        (torch.Size([3]), torch.Size([3, 1]))
    """

    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] | int = (64, 64),
        activation: Activation = "tanh",
        num_components: int = 5,
        covariance: CovarianceType = "diagonal",
        scale_transform: ScaleTransform = "softplus",
        min_scale: float = DEFAULT_MIN_SCALE,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = checks.positive_int("in_features", in_features)
        self.out_features = checks.positive_int("out_features", out_features)
        if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
            hidden = (int(hidden),)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(
                f"hidden must be a sequence of layer sizes, found {type(hidden).__name__}"
            )
        self.hidden = tuple(checks.positive_int("each hidden layer size", h) for h in hidden)
        self.activation = checks.choice("activation", activation, Activation)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise TypeError(f"dropout must be a number in [0, 1), found {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), found {dropout!r}")
        self.dropout = float(dropout)
        layers: list[nn.Module] = []
        width = self.in_features
        for h in self.hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = MDNHead(
            width,
            self.out_features,
            num_components,
            covariance=covariance,
            scale_transform=scale_transform,
            min_scale=min_scale,
        )
        self.register_buffer("x_mean", torch.zeros(self.in_features))
        self.register_buffer("x_std", torch.ones(self.in_features))
        self.register_buffer("y_mean", torch.zeros(self.out_features))
        self.register_buffer("y_std", torch.ones(self.out_features))

    # ------------------------------------------------------------------ configuration
    @property
    def num_components(self) -> int:
        """K, the number of mixture components."""
        return self.head.num_components

    @property
    def covariance(self) -> str:
        """The covariance type of the components."""
        return self.head.covariance

    def config(self) -> dict[str, Any]:
        """The constructor's arguments as a JSON-able dict: ``MDN(**model.config())`` rebuilds it."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "num_components": self.head.num_components,
            "covariance": self.head.covariance,
            "scale_transform": self.head.scale_transform,
            "min_scale": self.head.min_scale,
            "dropout": self.dropout,
        }

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    # ------------------------------------------------------------------ data handling
    def standardize(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        r"""Checked inputs and targets in the network's standardised units:
        :math:`(\tilde x, \tilde y) = ((x - \bar x)/s_x, (y - \bar y)/s_y)`."""
        x = self._check_x(x)
        y = self._check_y(y, x)
        return (x - self.x_mean) / self.x_std, (y - self.y_mean) / self.y_std

    def _check_x(self, x: Tensor) -> Tensor:
        return _last_dim("x", x, self.in_features, "inputs", "in_features", self.x_mean)

    def _check_y(self, y: Tensor, x: Tensor) -> Tensor:
        if not isinstance(y, Tensor):
            y = _as_float_tensor("y", y, self.y_mean.dtype).to(self.y_mean.device)
        if self.out_features == 1 and y.dim() == x.dim() - 1 and y.shape == x.shape[:-1]:
            y = y.unsqueeze(-1)
        return _last_dim("y", y, self.out_features, "targets", "out_features", self.y_mean)

    @torch.no_grad()
    def prepare(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> MDN:
        r"""Set the scaling buffers from training data and spread the head's initial components.

        :math:`\bar x, s_x` and :math:`\bar y, s_y` are the column means and standard deviations
        (a constant column gets scale 1); for spherical components :math:`s_y` is the common
        root-mean-variance scale.  Then, when there are at least K rows,
        :meth:`MDNHead.init_from_data` places the components on the standardised targets.  :func:`mdnkit.fit` calls this once (``prepare=True``).
        """
        dt = self.x_mean.dtype
        x = _as_float_tensor("x", x, torch.float64).cpu()
        y = _as_float_tensor("y", y, torch.float64).cpu()
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected x of shape (N, {self.in_features}), found {tuple(x.shape)}")
        if self.out_features == 1 and y.dim() == 1:
            y = y.unsqueeze(-1)
        if y.dim() != 2 or y.shape[1] != self.out_features:
            raise ValueError(
                f"expected y of shape (N, {self.out_features}), found {tuple(y.shape)}"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y have different numbers of rows: {x.shape[0]} and {y.shape[0]}"
            )
        if x.shape[0] < 1:
            raise ValueError("need at least one training row, found 0")
        if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
            raise ValueError("training data contain NaN or inf")
        n = x.shape[0]
        x_mean, y_mean = x.mean(0), y.mean(0)
        x_std = x.std(0, correction=0) if n > 1 else torch.ones_like(x_mean)
        y_std = y.std(0, correction=0) if n > 1 else torch.ones_like(y_mean)
        if self.head.covariance == "spherical":
            y_std = y_std.square().mean().sqrt().expand_as(y_std).clone()
        x_std = torch.where(x_std > 1e-12 * (1 + x_mean.abs()), x_std, torch.ones_like(x_std))
        y_std = torch.where(y_std > 1e-12 * (1 + y_mean.abs()), y_std, torch.ones_like(y_std))
        self.x_mean.copy_(x_mean.to(dt))
        self.x_std.copy_(x_std.to(dt))
        self.y_mean.copy_(y_mean.to(dt))
        self.y_std.copy_(y_std.to(dt))
        if n >= self.head.num_components:
            self.head.init_from_data((y - y_mean) / y_std, generator=0)
        return self

    # ------------------------------------------------------------------ forward
    def standardized_params(self, x: Tensor) -> Tensor:
        """Flat mixture parameters of the *standardised* target for raw inputs ``x``."""
        x = self._check_x(x)
        return self.head.params(self.body((x - self.x_mean) / self.x_std))

    def standardized_mixture(self, x: Tensor) -> GaussianMixture:
        r"""The mixture over the standardised target :math:`\tilde y = (y - \bar y)/s_y`."""
        return self.head.mixture(self.standardized_params(x))

    def forward(self, x: Tensor) -> GaussianMixture:
        """The predictive mixture :math:`p(y \\mid x)` in the target's units, batch shape ``x.shape[:-1]``."""
        m = self.standardized_mixture(x)
        ys, ym = self.y_std.to(m.loc.dtype), self.y_mean.to(m.loc.dtype)
        # spherical components have one common y_std (see prepare), so they stay spherical
        return m.affine(ym, ys[:1] if m.covariance_type == "spherical" else ys)

    def loss(self, x: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
        r"""Mean negative log-likelihood of ``y`` given ``x``, in the target's units.

        Computed on the standardised scale and corrected by the Jacobian:
        :math:`-\log p(y\mid x) = -\log p(\tilde y\mid x) + \sum_d \log s_{y,d}`.
        ``weight`` (optional, broadcast to the batch shape) weights the rows.
        """
        x, z = self.standardize(x, y)
        head = self.head
        params = head.params(self.body(x))
        joint_diagonal = head.covariance != "full" and not head.layout.per_dimension
        if weight is None and joint_diagonal and z.shape[:-1] == params.shape[:-1]:
            if params.dtype in (torch.float16, torch.bfloat16):
                params = params.float()
            nll = FlatDiagonalNLL.apply(params, z.to(params.dtype), head)
        else:
            nll = mdn_loss(head.mixture(params), z, weight=weight)
        return nll + self.y_std.log().sum()

    def fast_step(self, *data: Tensor) -> MLPFastStep | None:
        """The autograd-free training step :func:`mdnkit.fit` uses (:mod:`mdnkit.fast`) for
        in-memory rows ``data = (x (N, in), y)`` when its formulas hold: no dropout, diagonal or
        spherical components of a joint mixture, every parameter trainable, on one device in float32 or float64,
        no parameter shared between layers; else None."""
        if len(data) != 2 or data[0].dim() != 2:
            return None
        linears = [m for m in self.body if isinstance(m, nn.Linear)] + [self.head.proj]
        owned = {id(p) for lin in linears for p in (lin.weight, lin.bias)}
        params = list(self.parameters())
        ok = (
            self.dropout == 0.0
            and all(type(m) in FAST_ACTIVATIONS for m in self.body if not isinstance(m, nn.Linear))
            and self.head.covariance != "full"
            and not self.head.layout.per_dimension  # the fast kernels know joint mixtures only
            and all(p.requires_grad for p in params)
            and {id(p) for p in params} == owned
            and len(owned) == 2 * len(linears)  # no parameter shared between layers
            and len({(p.device, p.dtype) for p in params}) == 1
            and params[0].dtype in (torch.float32, torch.float64)  # half precision: autograd
        )
        return MLPFastStep(self, linears) if ok else None

    @torch.no_grad()
    def nll(self, x: Tensor, y: Tensor) -> float:
        """Mean NLL (nats per row, target units) as a float, in evaluation mode."""
        was = self.training
        self.eval()
        try:
            return float(self.loss(x, y))
        finally:
            self.train(was)
