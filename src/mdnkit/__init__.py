"""mdnkit: mixture density networks that are correct, fast and pleasant to use.

The core is a batch of Gaussian mixtures (:class:`GaussianMixture`), the layer that produces one
from any network's features (:class:`MDNHead`) and the loss (:func:`mdn_loss`).  On top of it:
ready models (:class:`MDN`, :class:`MDNRNN`), a training loop (:func:`fit`), a scikit-learn
estimator (:class:`MDNRegressor`), model files (:func:`save`, :func:`load`), metrics, plots, a
Keras 3 front (``from mdnkit import keras as mdn``) and the ``mdnkit`` command.

Every name is imported on first use, so ``import mdnkit`` imports neither torch nor anything
else heavy (the ``mdnkit`` command answers ``--help`` without it).
``from mdnkit import *`` gives the public names below (not the submodules: the Keras front,
``mdnkit.keras``, needs the optional ``keras`` package and is imported by name).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers; at run time each name is imported on first use
    from .head import MDNHead
    from .loss import mdn_loss
    from .mixture import GaussianMixture
    from .per_dimension import PerDimensionMixture

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_LAZY = {
    "GaussianMixture": "mixture",
    "PerDimensionMixture": "per_dimension",
    "MDNHead": "head",
    "mdn_loss": "loss",
    "MDN": "models",
    "fit": "training",
    "History": "training",
    "MDNRegressor": "estimator",
    "save": "io",
    "load": "io",
    "MDNRNN": "sequence",
    "SketchVAE": "sequence",
}
_SUBMODULES = (
    "mixture",
    "per_dimension",
    "head",
    "loss",
    "layout",
    "kernels",
    "metrics",
    "plotting",
    "datasets",
    "keras",
    "models",
    "training",
    "estimator",
    "io",
    "sequence",
    "cli",
)

__all__ = ["GaussianMixture", "PerDimensionMixture", "MDNHead", "mdn_loss", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mdnkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
