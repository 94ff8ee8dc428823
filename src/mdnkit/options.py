"""The named options users choose among, each spelled once.

Every string option of the package is a ``Literal`` type here; the code that checks a value
(:func:`mdnkit.checks.choice`), the scikit-learn estimator's signature and the command line's
``choices=`` all read the allowed values from it with :func:`typing.get_args`.  This module
imports nothing heavy, so the command line can build its parser without importing torch.

Example:
    >>> from typing import get_args
    >>> get_args(CovarianceType)
    ('diagonal', 'spherical', 'full')
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "CovarianceType",
    "MixtureType",
    "ScaleTransform",
    "Activation",
    "Optimizer",
    "LRSchedule",
    "CellType",
    "Standardize",
    "Reduction",
    "MetricReduction",
    "InitMethod",
    "PointPrediction",
]

#: Covariance of each mixture component: ``diag(σ²)``, ``σ² I`` or ``L Lᵀ``.
CovarianceType = Literal["diagonal", "spherical", "full"]
#: How a head's mixture covers the D target values: one K-component mixture over the whole vector
#: (``"joint"``), or an independent K-component 1-D mixture per value (``"per_dimension"``, the
#: World Models MDN-RNN's).
MixtureType = Literal["joint", "per_dimension"]
#: The positive map from a raw network output to a component scale (see :mod:`mdnkit.layout`).
ScaleTransform = Literal["softplus", "exp", "elu"]
#: Hidden-layer activation of :class:`~mdnkit.MDN`.
Activation = Literal["tanh", "relu", "elu", "gelu", "silu", "sigmoid", "softplus", "leaky_relu"]
#: Optimisers :func:`~mdnkit.fit` builds.
Optimizer = Literal["adam", "adamw", "sgd"]
#: Learning-rate schedules of :func:`~mdnkit.fit` (``None``: constant).
LRSchedule = Literal["plateau", "cosine"]
#: Recurrent cell of :class:`~mdnkit.MDNRNN`.
CellType = Literal["lstm", "gru"]
#: How :class:`~mdnkit.MDNRNN` standardises the continuous part of its events.
Standardize = Literal["auto", "full", "scale", "none"]
#: Reduction of a per-element loss.
Reduction = Literal["mean", "sum", "none"]
#: Reduction of a per-element score (:mod:`mdnkit.metrics`).
MetricReduction = Literal["mean", "none"]
#: How :meth:`~mdnkit.MDNHead.init_from_data` places the initial components.
InitMethod = Literal["auto", "kmeans", "quantile"]
#: The point predictions of :class:`~mdnkit.MDNRegressor`.
PointPrediction = Literal["mean", "median", "mode"]
