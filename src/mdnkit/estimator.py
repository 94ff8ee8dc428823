"""A scikit-learn estimator over :class:`~mdnkit.MDN` and :func:`~mdnkit.fit`: :class:`MDNRegressor`.

It follows scikit-learn's rules (``__init__`` only stores parameters, ``fit`` returns ``self``,
learned attributes end in ``_``, ``score`` is higher-is-better), so it clones, pickles, and works
in a :class:`~sklearn.pipeline.Pipeline` and :class:`~sklearn.model_selection.GridSearchCV`.
Beyond ``predict`` it gives the whole predictive distribution: quantiles, intervals, samples and
the :class:`~mdnkit.GaussianMixture` itself.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import checks
from .mixture import GaussianMixture
from .models import MDN
from .options import Activation, CovarianceType, LRSchedule, PointPrediction, ScaleTransform
from .training import History, fit

__all__ = ["MDNRegressor"]


class MDNRegressor(RegressorMixin, BaseEstimator):
    r"""Mixture density network regressor: predicts a Gaussian mixture :math:`p(y\mid x)`.

    The network is an :class:`~mdnkit.MDN` (inputs and targets standardised inside), trained by
    :func:`~mdnkit.fit` on the negative log-likelihood

    .. math::

        -\frac1N\sum_i \log \sum_k \pi_k(x_i)\,\mathcal{N}(y_i\mid\mu_k(x_i),\Sigma_k(x_i)).

    :meth:`score` is the mean log-likelihood per sample (nats, higher is better), *not* the
    :math:`R^2` of other regressors: it rewards a correct spread, not only a correct mean.

    Parameters:
        hidden, activation, num_components, covariance, scale_transform, min_scale, dropout:
            the network (see :class:`~mdnkit.MDN`).
        epochs, batch_size, lr, weight_decay, validation_split, patience, lr_schedule:
            the training (see :func:`~mdnkit.fit`).
        random_state: seed (int, ``RandomState`` or None) for the weights, the split and the
            shuffling: the same seed gives the same model.
        device: torch device for training and prediction (None: CPU).
        verbose: show a progress bar while fitting.

    Attributes:
        model_: the trained :class:`~mdnkit.MDN`.
        history_: the :class:`~mdnkit.History` of the training.
        n_features_in_: number of input features.
        n_outputs_: number of target dimensions D.

    Example:
        >>> import numpy as np
        >>> from mdnkit import MDNRegressor
        >>> rng = np.random.default_rng(0)
        >>> y = rng.uniform(-10.5, 10.5, 1000)
        >>> X = (7 * np.sin(0.75 * y) + 0.5 * y + rng.normal(size=1000))[:, None]
        >>> reg = MDNRegressor(hidden=(32, 32), num_components=8, epochs=20, random_state=0)
        >>> reg = reg.fit(X, y)
        >>> reg.predict(X[:3]).shape, reg.sample(X[:3], n_samples=10).shape
        ((3,), (3, 10))
        >>> lo, hi = reg.predict_interval(X[:3], coverage=0.9)
    """

    def __init__(
        self,
        hidden: Sequence[int] = (64, 64),
        activation: Activation = "tanh",
        num_components: int = 5,
        covariance: CovarianceType = "diagonal",
        scale_transform: ScaleTransform = "softplus",
        min_scale: float = 1e-3,
        dropout: float = 0.0,
        epochs: int = 200,
        batch_size: int = 128,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        validation_split: float = 0.1,
        patience: int | None = 20,
        lr_schedule: LRSchedule | None = "plateau",
        random_state: int | np.random.RandomState | None = None,
        device: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.hidden = hidden
        self.activation = activation
        self.num_components = num_components
        self.covariance = covariance
        self.scale_transform = scale_transform
        self.min_scale = min_scale
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.validation_split = validation_split
        self.patience = patience
        self.lr_schedule = lr_schedule
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        # score() is the mean log-likelihood (nats), not R^2: the "score > 0.5" check of
        # scikit-learn's R^2 regressors does not apply.
        tags.regressor_tags.poor_score = True
        tags.non_deterministic = self.random_state is None
        return tags

    # ------------------------------------------------------------------ fitting
    def _device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else torch.device("cpu")

    def fit(self, X: Any, y: Any) -> MDNRegressor:
        """Fit the network on ``X`` ``(n_samples, n_features)`` and ``y`` ``(n_samples,)`` or
        ``(n_samples, n_outputs)``; returns ``self``."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        self._y_1d = y.ndim == 1
        y2 = y.reshape(-1, 1) if y.ndim == 1 else y
        self.n_outputs_ = int(y2.shape[1])
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        hidden = (
            (int(self.hidden),)
            if isinstance(self.hidden, numbers.Integral)
            else tuple(int(h) for h in self.hidden)
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MDN(
                self.n_features_in_,
                self.n_outputs_,
                hidden=hidden,
                activation=self.activation,
                num_components=self.num_components,
                covariance=self.covariance,
                scale_transform=self.scale_transform,
                min_scale=self.min_scale,
                dropout=self.dropout,
            )
        self.history_ = fit(
            model,
            torch.from_numpy(np.array(X, dtype=np.float32)),
            torch.from_numpy(np.array(y2, dtype=np.float32)),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            validation_split=self.validation_split,
            patience=self.patience,
            lr_schedule=self.lr_schedule,
            progress=bool(self.verbose),
            seed=seed,
            device=self._device(),
        )
        self.model_ = model.eval()
        return self

    # ------------------------------------------------------------------ prediction
    def _x(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        dev = next(self.model_.parameters()).device
        return torch.from_numpy(np.array(X, dtype=np.float32)).to(dev)

    def _out(self, t: torch.Tensor) -> np.ndarray:
        """(..., D) tensor -> float64 array, the last axis dropped for 1-D targets."""
        a = t.detach().cpu().double().numpy()
        return a[..., 0] if self._y_1d else a

    def predict_distribution(self, X: Any) -> GaussianMixture:
        """The predictive :class:`~mdnkit.GaussianMixture`, batch shape ``(n_samples,)``, event ``(D,)``."""
        x = self._x(X)
        self.model_.eval()
        with torch.no_grad():
            return self.model_(x)

    def predict(self, X: Any, kind: PointPrediction = "mean") -> np.ndarray:
        r"""A point prediction: the mixture ``"mean"`` :math:`\sum_k \pi_k\mu_k` (default), the
        ``"median"`` (of each output's marginal) or the ``"mode"`` (the highest density point).

        Shape ``(n_samples,)`` for 1-D targets, else ``(n_samples, n_outputs)``.
        """
        checks.choice("kind", kind, PointPrediction)
        m = self.predict_distribution(X)
        if kind == "mean":
            return self._out(m.mean)
        if kind == "mode":
            return self._out(m.mode)
        return self._out(self._marginal_icdf(m, torch.tensor(0.5, dtype=torch.float64)))

    def _marginal_icdf(self, m: GaussianMixture, q: torch.Tensor) -> torch.Tensor:
        """Quantiles of each output's marginal: q ``(Q,)`` or scalar -> ``(Q?, N, D)``."""
        q = q.reshape(q.shape + (1,) * len(m.batch_shape))
        cols = [m.marginal(d).icdf(q) for d in range(self.n_outputs_)]
        return torch.cat(cols, dim=-1)

    def predict_quantiles(self, X: Any, q: float | Sequence[float]) -> np.ndarray:
        """Quantiles of each output's predictive marginal :math:`F^{-1}(q)`.

        ``q`` a float: shape like :meth:`predict`; ``q`` a list of Q levels: ``(n_samples, Q)``
        for 1-D targets, else ``(n_samples, Q, n_outputs)``.
        """
        qa = np.asarray(q, dtype=np.float64)
        if qa.ndim > 1 or not np.all((qa > 0) & (qa < 1)):
            raise ValueError(f"q must be a level or a 1-D list of levels in (0, 1), found {q!r}")
        m = self.predict_distribution(X)
        out = self._marginal_icdf(m, torch.as_tensor(qa))  # (Q?, N, D)
        if qa.ndim == 1:
            out = out.movedim(0, 1)  # (N, Q, D)
        return self._out(out)

    def predict_interval(self, X: Any, coverage: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """The central interval holding ``coverage`` of each output's predictive probability:
        ``(lower, upper)``, the quantiles at :math:`(1 \\mp c)/2`, each shaped like :meth:`predict`."""
        coverage = checks.number("coverage", coverage, low=0, high=1, low_open=True, high_open=True)
        a = (1 - coverage) / 2
        both = self.predict_quantiles(X, [a, 1 - a])
        return both[:, 0], both[:, 1]

    def sample(
        self,
        X: Any,
        n_samples: int = 1,
        temperature: float = 1.0,
        sigma_temperature: float = 1.0,
        random_state: int | None = None,
    ) -> np.ndarray:
        """Draw ``n_samples`` targets per row from the predictive mixture.

        ``temperature`` divides the mixture logits, ``sigma_temperature`` multiplies the component
        covariances (0 and 0: the mean of the most likely component).  Shape
        ``(n_rows, n_samples)`` for 1-D targets, else ``(n_rows, n_samples, n_outputs)``.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
            raise TypeError(f"n_samples must be an integer, found {type(n_samples).__name__}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, found {n_samples}")
        m = self.predict_distribution(X)
        seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
        s = m.sample(
            (int(n_samples),),
            temperature=temperature,
            sigma_temperature=sigma_temperature,
            generator=seed,
        )
        return self._out(s.movedim(0, 1))

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        r"""Mean log-likelihood per sample, :math:`\frac1N\sum_i\log p(y_i\mid x_i)` (nats; higher
        is better), weighted by ``sample_weight`` when given."""
        x = self._x(X)
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        if y.shape != (x.shape[0], self.n_outputs_):
            raise ValueError(
                f"expected y of shape ({x.shape[0]},) or ({x.shape[0]}, {self.n_outputs_}), "
                f"found {np.shape(y)}"
            )
        m = self.predict_distribution(X)
        with torch.no_grad():
            lp = m.log_prob(torch.as_tensor(y, dtype=m.loc.dtype, device=m.loc.device))
        lp = lp.double().cpu().numpy()
        if sample_weight is None:
            return float(lp.mean())
        w = np.asarray(sample_weight, dtype=np.float64)
        return float((w * lp).sum() / w.sum())

    # ------------------------------------------------------------------ model files
    def config(self) -> dict[str, Any]:
        """JSON description for :func:`mdnkit.save`: parameters and the fitted shapes."""
        check_is_fitted(self, "model_")
        params = self.get_params()
        params["hidden"] = (
            [int(params["hidden"])]
            if isinstance(params["hidden"], numbers.Integral)
            else [int(h) for h in params["hidden"]]
        )
        rs = params["random_state"]
        params["random_state"] = int(rs) if isinstance(rs, numbers.Integral) else None
        params["device"] = None if params["device"] is None else str(params["device"])
        return {
            "params": params,
            "n_features_in": int(self.n_features_in_),
            "n_outputs": int(self.n_outputs_),
            "y_1d": bool(self._y_1d),
            "model": self.model_.config(),
            "history": self.history_.as_dict(),
            **(
                {"feature_names_in": [str(c) for c in self.feature_names_in_]}
                if hasattr(self, "feature_names_in_")
                else {}
            ),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained network's tensors (for :func:`mdnkit.save`)."""
        check_is_fitted(self, "model_")
        return self.model_.state_dict()

    @classmethod
    def from_saved(cls, config: dict[str, Any], state: dict[str, torch.Tensor]) -> MDNRegressor:
        """Rebuild a fitted estimator from :meth:`config` and :meth:`state_dict` (what
        :func:`mdnkit.load` calls; classes with this method are built by it, not by
        ``cls(**config)``)."""
        params = dict(config["params"])
        params["hidden"] = tuple(params["hidden"])
        est = cls(**params)
        model = MDN(**config["model"])
        model.load_state_dict(state)
        est.model_ = model.eval()
        est.n_features_in_ = int(config["n_features_in"])
        est.n_outputs_ = int(config["n_outputs"])
        est._y_1d = bool(config["y_1d"])
        if "feature_names_in" in config:
            est.feature_names_in_ = np.asarray(config["feature_names_in"], dtype=object)
        est.history_ = History.from_dict(config.get("history") or {})
        return est
