"""Helpers shared by the tests: a random-mixture factory and the fast-step-against-autograd check."""

from __future__ import annotations

import pytest
import torch

from mdnkit import GaussianMixture, mdn_loss


def random_mixture_params(
    batch: tuple[int, ...],
    k: int,
    d: int,
    cov: str,
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    requires_grad: bool = False,
    logit_scale: float = 1.5,
    loc_scale: float = 2.0,
    scale_low: float = 0.3,
    scale_spread: float = 1.0,
    tril_low: float = 0.4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(logits, loc, scale or scale_tril)`` of a ``cov`` mixture with ``batch`` shape.

    Logits ~ N(0, logit_scale²), means ~ N(0, loc_scale²); diagonal/spherical scales uniform in
    [scale_low, scale_low + scale_spread); full factors: off-diagonal N(0, 0.25), diagonal
    uniform in [tril_low, tril_low + 1).  Drawn in this order from one seeded generator.
    """
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, k, generator=g, dtype=dtype) * logit_scale
    loc = torch.randn(*batch, k, d, generator=g, dtype=dtype) * loc_scale
    if cov == "full":
        a = torch.randn(*batch, k, d, d, generator=g, dtype=dtype) * 0.5
        diag = torch.rand(*batch, k, d, generator=g, dtype=dtype) + tril_low
        s = torch.tril(a, -1) + torch.diag_embed(diag)
    else:
        c = 1 if cov == "spherical" else d
        s = torch.rand(*batch, k, c, generator=g, dtype=dtype) * scale_spread + scale_low
    if requires_grad:
        for t in (logits, loc, s):
            t.requires_grad_()
    return logits, loc, s


def make_mixture(logits: torch.Tensor, loc: torch.Tensor, s: torch.Tensor, cov: str):
    """The :class:`GaussianMixture` of :func:`random_mixture_params`' output."""
    if cov == "full":
        return GaussianMixture(logits, loc, scale_tril=s)
    return GaussianMixture(logits, loc, s)


def assert_fast_step_equals_autograd(
    model, x: torch.Tensor, y: torch.Tensor, *, rtol: float = 1e-9, atol: float = 1e-12
) -> torch.Tensor:
    """One step of ``model.fast_step`` gives autograd's loss and gradients through the mixture
    (``mdn_loss(model(x), y)``, every parameter); returns the fast step's flat gradient."""
    params = list(model.parameters())
    generic = mdn_loss(model(x), y)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(generic, params)])
    step = model.fast_step(x, y)
    assert step is not None, "the fast step should apply to this model"
    with step.attached():
        loss = step(*step.prepare(x, y))
        grad = step.flat.grad.clone()
    assert loss.item() == pytest.approx(generic.item(), rel=max(rtol, 1e-12))
    torch.testing.assert_close(grad, expected, rtol=rtol, atol=atol)
    return grad
