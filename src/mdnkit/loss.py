"""The MDN training loss: the (weighted) mean negative log-likelihood of a mixture."""

from __future__ import annotations

import torch
from torch import Tensor

from . import checks
from .kernels import broadcast_shapes
from .mixture import GaussianMixture
from .options import Reduction
from .per_dimension import PerDimensionMixture

__all__ = ["mdn_loss"]


def mdn_loss(
    mixture: GaussianMixture | PerDimensionMixture,
    y: Tensor,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Negative log-likelihood of targets ``y`` under ``mixture``.

    .. math::

        L = \frac{\sum_i w_i \,\big(-\log p(y_i)\big)}{\sum_i w_i}

    with :math:`w_i = 1` when ``weight`` is None.  ``weight`` (or a boolean padding mask)
    broadcasts to ``mixture.batch_shape`` and holds finite numbers >= 0 (ValueError otherwise);
    elements of weight 0 contribute nothing, not even a NaN from garbage padding values.
    Computed in float32 or wider whatever the parameters' dtype.  ``reduction="none"`` returns
    the per-element NLL (weighted when ``weight`` is given), ``"sum"`` its weighted sum.

    Example:
        >>> from mdnkit import MDNHead, mdn_loss
        >>> head = MDNHead(4, 1, 3)
        >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
        >>> mask = torch.arange(32) < 16          # the second half is padding
        >>> mdn_loss(head(x), y, weight=mask).shape
        torch.Size([])
    """
    if not isinstance(mixture, (GaussianMixture, PerDimensionMixture)):
        raise TypeError(
            "mixture must be a GaussianMixture or a PerDimensionMixture, "
            f"found {type(mixture).__name__}"
        )
    checks.choice("reduction", reduction, Reduction)
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if weight is None:
        nll = -mixture.log_prob(y)
        if reduction == "none":
            return nll
        return nll.mean() if reduction == "mean" else nll.sum()
    w = torch.as_tensor(weight, device=y.device)
    w = w.to(torch.promote_types(mixture.loc.dtype, torch.float32))
    _check_weight(w)
    batch = broadcast_shapes(y.shape[:-1], mixture.batch_shape)
    try:
        w = w.expand(batch)
    except RuntimeError:
        raise ValueError(
            f"weight of shape {tuple(w.shape)} does not broadcast to the batch shape {tuple(batch)}"
        ) from None
    keep = w != 0
    # Padding may hold anything (NaN too): give it a harmless value so that neither the loss
    # nor its gradient sees it.
    y = torch.where(keep.unsqueeze(-1), y, torch.zeros((), dtype=y.dtype, device=y.device))
    nll = torch.where(keep, -mixture.log_prob(y), torch.zeros((), dtype=w.dtype, device=w.device))
    total = (w * nll).sum()
    if reduction == "none":
        return w * nll
    if reduction == "sum":
        return total
    return total / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


def _check_weight(w: Tensor) -> None:
    """Every weight finite and >= 0 (one min/max pass; the bad ones are looked for only to name
    them)."""
    if w.numel() == 0:
        return
    lo, hi = torch.aminmax(w.detach())
    if float(lo) >= 0 and float(hi) <= torch.finfo(w.dtype).max:
        return
    bad = w[~((w >= 0) & (w <= torch.finfo(w.dtype).max))].flatten()[:3].tolist()
    raise ValueError(f"weight must hold finite numbers >= 0, found values such as {bad}")
