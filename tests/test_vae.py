"""SketchVAE (mdnkit.sequence.vae): sketch-rnn's losses against their definitions, the KL term,
the annealing, augmentation, padding, files and training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mdnkit
from mdnkit.sequence import SketchVAE, pad_sequences
from mdnkit.sequence.vae import (
    augment_strokes,
    events_to_strokes,
    kl_divergence,
    kl_weight_schedule,
    slerp,
    strokes_to_events,
)


def _drawings(n: int = 12, seed: int = 0) -> list[np.ndarray]:
    """Small stroke-3 drawings: random integer offsets, a pen lift every few points and at the end."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(2, 14))
        d = np.zeros((length, 3), np.float32)
        d[:, :2] = rng.integers(-6, 7, (length, 2))
        d[:, 2] = rng.random(length) < 0.3
        d[-1, 2] = 1
        out.append(d)
    return out


def _model(**kw) -> tuple[SketchVAE, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, n = pad_sequences(_drawings())
    settings = dict(z_dim=4, encoder_size=8, decoder_size=16, num_components=3)
    settings.update(kw)
    model = SketchVAE(**settings).prepare(x, n)
    return model, x, n


# ---------------------------------------------------------------------- the KL term
def test_kl_matches_closed_form_per_dimension_mean():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    expected = torch.distributions.kl_divergence(q, p).mean()  # over batch and dimensions
    assert torch.allclose(kl_divergence(mu, logvar), expected, atol=1e-6)


def test_kl_matches_monte_carlo():
    """E_q[log q(z) - log p(z)] by sampling; per-dimension mean, within 4 standard errors."""
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.3, -0.2]], dtype=torch.float64)
    logvar = torch.tensor([[0.1, -0.5, 0.0], [-1.0, 0.4, 0.8]], dtype=torch.float64)
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(200_000, *mu.shape, generator=g, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu, std).log_prob(z)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    terms = (log_q - log_p).mean((1, 2))  # per sample: the per-dimension mean of the log ratio
    estimate, se = float(terms.mean()), float(terms.std() / math.sqrt(terms.numel()))
    assert abs(estimate - float(kl_divergence(mu, logvar))) < 4 * se


# ---------------------------------------------------------------------- the schedule, the floor
def test_kl_weight_schedule_formula():
    for step in (0, 1, 100, 10_000, 200_000):
        expected = 0.5 * (1 - (1 - 0.01) * 0.99995**step)
        assert kl_weight_schedule(step, 0.5, 0.01, 0.99995) == pytest.approx(expected, rel=1e-12)
    assert kl_weight_schedule(0, 0.5, 0.01, 0.99995) == pytest.approx(0.005)


def test_loss_is_reconstruction_plus_annealed_floored_kl():
    model, x, n = _model(kl_min=0.2)
    model.train()
    for step, kl_min in ((1234, 0.2), (50, 1e3)):  # the second: the floor is active
        model.kl_min = kl_min
        model.step.fill_(step)
        torch.manual_seed(7)
        loss = model.loss(x, n)
        assert int(model.step) == step + 1  # the counter advanced once
        torch.manual_seed(7)
        with torch.no_grad():
            mu, logvar = model.encode(x, n)
            z = model.sample_z(mu, logvar)
            offset, _, ce, _ = model.reconstruction(x, n, z)
        w = 0.5 * (1 - 0.99 * 0.99995**step)
        kl = max(float(kl_divergence(mu, logvar)), kl_min)
        assert float(loss.detach()) == pytest.approx(float((offset + ce).mean()) + w * kl, rel=1e-5)
    model.eval()
    before = int(model.step)
    model.loss(x, n)
    assert int(model.step) == before  # evaluation does not advance the annealing


# ---------------------------------------------------------------------- L_R from its definition
def _numpy_l_r(drawings, n_max, sigma, mixture, pen_logits) -> float:
    """sketch-rnn's L_R written out: stroke-5 targets, the bivariate normal of Graves' eq. 24,
    -log(sum_k pi_k N + 1e-6) on real steps, the pen cross-entropy on all n_max steps."""
    logits = mixture.logits.detach().double().numpy()
    pi = np.exp(logits - logits.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    loc = mixture.loc.detach().double().numpy()
    tril = mixture.scale_tril.detach().double().numpy()
    cov = tril @ np.swapaxes(tril, -1, -2)
    s1, s2 = np.sqrt(cov[..., 0, 0]), np.sqrt(cov[..., 1, 1])
    rho = cov[..., 0, 1] / (s1 * s2)
    q = pen_logits.detach().double().numpy()
    log_softmax = q - q.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    total = 0.0
    for b, d in enumerate(drawings):
        for i in range(n_max):
            real = i < len(d)
            dx, dy = (d[i, 0] / sigma, d[i, 1] / sigma) if real else (0.0, 0.0)
            state = int(d[i, 2]) if real else 2
            if real:
                n1, n2 = dx - loc[b, i, :, 0], dy - loc[b, i, :, 1]
                zz = (n1 / s1[b, i]) ** 2 + (n2 / s2[b, i]) ** 2
                zz -= 2 * rho[b, i] * n1 * n2 / (s1[b, i] * s2[b, i])
                dens = np.exp(-zz / (2 * (1 - rho[b, i] ** 2)))
                dens /= 2 * np.pi * s1[b, i] * s2[b, i] * np.sqrt(1 - rho[b, i] ** 2)
                total += -np.log(np.sum(pi[b, i] * dens) + 1e-6)
            total += -log_softmax[b, i, state]
    return total / (len(drawings) * n_max)


def test_l_r_matches_numpy_definition():
    drawings = _drawings(5, seed=3)
    torch.manual_seed(0)
    x, n = pad_sequences(drawings)
    model = SketchVAE(z_dim=3, encoder_size=6, decoder_size=10, num_components=3, max_len=16)
    model.prepare(x, n).eval()
    flat = np.concatenate([d[:, :2] for d in drawings]).ravel()
    sigma = float(np.std(flat))
    assert float(model.offset_scale) == pytest.approx(sigma, rel=1e-6)
    # the decoder's predictions for the teacher-forced stroke-5 inputs, built here by hand
    n_max = 16
    inputs = np.zeros((len(drawings), n_max, 3), np.float32)  # row 0: S_0 = (0, 0, pen down)
    for b, d in enumerate(drawings):
        big = np.zeros((n_max, 3), np.float32)
        big[:, 2] = 2
        big[: len(d), :2] = d[:, :2] / sigma
        big[: len(d), 2] = d[:, 2]
        inputs[b, 1:] = big[:-1]
    with torch.no_grad():
        mu, _ = model.encode(x, n)
        mixture, pen_logits, _ = model.decoder(torch.from_numpy(inputs), context=mu)
    expected = _numpy_l_r(drawings, n_max, sigma, mixture, pen_logits)
    got = model.evaluate(x, n, sample=False)
    assert got["L_R"] == pytest.approx(expected, rel=1e-5)
    assert got["events"] == sum(len(d) for d in drawings)


# ---------------------------------------------------------------------- data and padding
def test_stroke5_conversion_round_trip():
    drawings = _drawings(6, seed=5)
    x, n = pad_sequences(drawings)
    ev = strokes_to_events(x, n, max_len=20)
    assert ev.shape == (6, 20, 3)
    assert bool((ev[1, int(n[1]) :, 2] == 2).all()) and bool((ev[1, int(n[1]) :, :2] == 0).all())
    y, m = events_to_strokes(ev)
    assert torch.equal(m, n)
    for i, d in enumerate(drawings):
        assert np.array_equal(y[i, : len(d)].numpy(), d)
    with pytest.raises(ValueError, match="at most max_len=5"):
        strokes_to_events(x, n, max_len=5)
    bad = x.clone()
    bad[0, 0, 2] = 2
    with pytest.raises(ValueError, match="pen_lifted = 0 or 1"):
        strokes_to_events(bad, n, max_len=20)


def test_encoder_padding_is_inert():
    model, x, n = _model()
    model.eval()
    mu, logvar = model.encode(x, n)
    mask = torch.arange(x.shape[1])[None, :] < n[:, None]
    for fill in (float("nan"), 1e6, -3.0):
        y = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, fill))
        mu2, logvar2 = model.encode(y, n)
        assert torch.equal(mu, mu2) and torch.equal(logvar, logvar2)
    # a drawing alone gives the same posterior as in the batch
    mu1, _ = model.encode(x[3:4, : int(n[3])], n[3:4])
    assert torch.allclose(mu1, mu[3:4], atol=1e-6)


def test_augmentation_matches_sketch_rnn_rule_and_keeps_shape():
    def reference(strokes, prob, uniforms):  # sketch-rnn's augment_strokes, restated
        result, prev, count, last = [], [0.0, 0.0, 1.0], 0, None
        for i, row in enumerate(strokes):
            cand = list(row)
            count = 0 if cand[2] == 1 or prev[2] == 1 else count + 1
            if cand[2] == 0 and prev[2] == 0 and count > 2 and uniforms[i] < prob:
                last[0] += cand[0]
                last[1] += cand[1]
            else:
                last = prev = cand
                result.append(cand)
        return np.array(result)

    drawings = _drawings(30, seed=9)
    for d in drawings:
        d[:, 2] = np.random.default_rng(len(d)).random(len(d)) < 0.15
    x, n = pad_sequences(drawings)
    y, m = augment_strokes(x, n, drop_prob=0.5, generator=torch.Generator().manual_seed(4))
    u = torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(4)).numpy()
    for i, d in enumerate(drawings):
        ref = reference(d.tolist(), 0.5, u[i])
        assert int(m[i]) == len(ref) and np.allclose(y[i, : len(ref)].numpy(), ref)
        assert np.allclose(ref[:, :2].sum(0), d[:, :2].sum(0))  # same end point
    s, k = augment_strokes(x, n, scale=0.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(k, n) and torch.equal(s[..., 2], x[..., 2])
    ratio = s[..., :2][x[..., :2] != 0] / x[..., :2][x[..., :2] != 0]
    assert float(ratio.min()) >= 0.8 - 1e-6 and float(ratio.max()) <= 1.2 + 1e-6


def test_augmentation_only_in_training():
    model, x, n = _model(scale_augment=0.15, stroke_drop=0.1)
    model.eval()
    with torch.no_grad():
        assert float(model.loss(x, n)) == float(model.loss(x, n))  # fixed z, no augmentation


# ---------------------------------------------------------------------- latent space, generation
def test_slerp_ends_and_norm():
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    z = slerp(a, b, 5)
    assert torch.allclose(z[0], a) and torch.allclose(z[-1], b, atol=1e-6)
    assert torch.allclose(z.norm(dim=1), torch.full((5,), 3.0))
    same = slerp(a, a, 3)
    assert torch.allclose(same, a.expand(3, 3))


def test_generate_and_reconstruct_shapes_and_seed():
    model, x, n = _model()
    y1, n1 = model.generate(batch=3, temperature=0.5, generator=0)
    y2, n2 = model.generate(batch=3, temperature=0.5, generator=0)
    assert torch.equal(y1, y2) and torch.equal(n1, n2)
    assert y1.shape == (3, model.n_max, 3) and bool((n1 <= model.n_max).all())
    r, m = model.reconstruct(x[:2], n[:2], temperature=0.2, generator=1, steps=7)
    assert r.shape == (2, 7, 3)
    z = model.interpolate(torch.randn(4), torch.randn(4), 6)
    assert z.shape == (6, 4)


# ---------------------------------------------------------------------- files and training
def test_save_load_round_trip(tmp_path):
    model, x, n = _model()
    model.step.fill_(321)
    path = mdnkit.save(model, tmp_path / "vae.mdn")
    loaded = mdnkit.load(path)
    assert isinstance(loaded, SketchVAE) and loaded.config() == model.config()
    assert int(loaded.step) == 321 and int(loaded.max_len) == int(model.max_len)
    assert float(loaded.offset_scale) == float(model.offset_scale)
    a, b = model.evaluate(x, n), loaded.evaluate(x, n)
    assert a == pytest.approx(b, rel=1e-6)


def test_tiny_training_run_lowers_the_loss():
    from mdnkit import fit

    torch.manual_seed(0)
    x, n = pad_sequences(_drawings(48, seed=2))
    model = SketchVAE(z_dim=4, encoder_size=16, decoder_size=32, num_components=3)
    model.prepare(x, n)
    before = model.evaluate(x, n, sample=False)
    history = fit(model, x, n, epochs=12, batch_size=16, lr=1e-2, validation_split=0.0, seed=0)
    after = model.evaluate(x, n, sample=False)
    assert history.train_nll[-1] < history.train_nll[0]
    assert after["L_R"] < before["L_R"] - 0.1
    # one step per training batch (fit restores the best epoch's state, its counter included)
    assert int(model.step) > 0 and int(model.step) % 3 == 0
