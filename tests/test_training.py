"""Tests of mdnkit.training.fit: reproducibility, early stopping, NaN rollback, schedules,
DataLoaders, generic models, devices and argument checking."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mdnkit.models import MDN
from mdnkit.training import History, fit


def _data(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, :1] * 3.0 + 10.0) + 0.5 * torch.randn(n, 1, generator=g)
    return x, y


class _Quadratic(nn.Module):
    """loss(x) = (p - mean(x))^2: training data centred at 0, so p walks from 5 towards 0."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(5.0))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return (self.p - x.mean()) ** 2


class _NaNOnce(nn.Module):
    """An MDN whose loss is NaN on the ``bad_steps``-th training calls."""

    def __init__(self, bad_steps: set[int]) -> None:
        super().__init__()
        self.inner = MDN(2, 1, hidden=(8,), num_components=2)
        self.bad = bad_steps
        self.calls = 0

    def prepare(self, x, y):
        self.inner.prepare(x, y)

    def loss(self, x, y):
        out = self.inner.loss(x, y)
        if self.training:
            self.calls += 1
            if self.calls in self.bad:
                out = out * float("nan")
        return out


def test_same_seed_gives_identical_history_and_weights():
    x, y = _data()
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        m = MDN(2, 1, hidden=(8,), num_components=3, dropout=0.1)
        h = fit(m, x, y, epochs=6, batch_size=32, seed=7, progress=False)
        results.append((h, m.state_dict()))
    (h1, s1), (h2, s2) = results
    assert h1.train_nll == h2.train_nll and h1.val_nll == h2.val_nll
    for k in s1:
        assert torch.equal(s1[k], s2[k])
    torch.manual_seed(1)
    m3 = MDN(2, 1, hidden=(8,), num_components=3, dropout=0.1)
    h3 = fit(m3, x, y, epochs=6, batch_size=32, seed=8, progress=False)
    assert h3.train_nll != h1.train_nll


def test_fit_does_not_touch_the_global_rng():
    x, y = _data()
    m = MDN(2, 1, hidden=(4,), num_components=2, dropout=0.2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(m, x, y, epochs=2, seed=0, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_history_contents_and_training_improves():
    x, y = _data(400)
    torch.manual_seed(0)
    m = MDN(2, 1, hidden=(16,), num_components=2)
    h = fit(m, x, y, epochs=30, seed=0, progress=False)
    assert isinstance(h, History)
    assert len(h.train_nll) == len(h.val_nll) == len(h.lr) == 30
    assert all(math.isfinite(v) for v in h.train_nll + h.val_nll)
    # y = 3 x0 + 10 + N(0, 0.5^2): the conditional entropy is 0.5 log(2 pi e 0.25) = 0.726 nats
    assert h.best_nll < 0.726 + 0.25
    assert h.best_nll == min(h.val_nll) and h.val_nll[h.best_epoch] == h.best_nll
    assert h.monitor == "val_nll"
    d = h.as_dict()
    assert d["best_epoch"] == h.best_epoch and h.seconds > 0
    assert d["best_nll"] == h.best_nll and d["monitor"] == "val_nll"
    assert History.from_dict(d) == h


def test_without_validation_data_the_training_nll_is_monitored():
    x, y = _data(200)
    h = fit(MDN(2, 1, hidden=(4,)), x, y, epochs=4, validation_split=0.0, seed=0, progress=False)
    assert h.val_nll == [] and h.monitor == "train_nll"
    assert h.best_nll == min(h.train_nll) == h.train_nll[h.best_epoch]


def test_best_val_nll_is_a_deprecated_read_only_alias():
    h = History(train_nll=[2.0], best_epoch=0, best_nll=2.0, monitor="train_nll")
    with pytest.warns(DeprecationWarning, match="best_nll"):
        assert h.best_val_nll == 2.0
    with pytest.raises(AttributeError):
        h.best_val_nll = 1.0
    assert "best_val_nll" not in h.as_dict()


def test_history_from_dict_reads_old_and_new_dicts():
    old = {  # as_dict before the rename
        "train_nll": [2.0, 1.5],
        "val_nll": [1.9, 1.6],
        "lr": [0.003, 0.003],
        "best_epoch": 1,
        "best_val_nll": 1.6,
        "stopped_early": False,
        "seconds": 0.5,
        "nan_recoveries": 0,
    }
    h = History.from_dict(old)
    assert h.best_nll == 1.6 and h.monitor == "val_nll" and h.train_nll == [2.0, 1.5]
    assert h.train_nll is not old["train_nll"]
    no_val = History.from_dict({**old, "val_nll": [], "best_val_nll": None})
    assert no_val.monitor == "train_nll" and no_val.best_nll == math.inf
    assert History.from_dict({}) == History(monitor="train_nll")
    assert History.from_dict({**h.as_dict(), "from_a_later_version": 1}) == h
    with pytest.raises(ValueError, match="monitor"):
        History.from_dict({**h.as_dict(), "monitor": "test_nll"})
    with pytest.raises(TypeError, match="mapping"):
        History.from_dict([1, 2])


def test_an_estimator_saved_with_an_old_history_loads():
    pytest.importorskip("sklearn")
    from mdnkit.estimator import MDNRegressor

    x, y = _data(60)
    reg = MDNRegressor(hidden=(4,), num_components=2, epochs=2, random_state=0).fit(x, y)
    config = reg.config()
    old = {k: v for k, v in config["history"].items() if k not in ("best_nll", "monitor")}
    config["history"] = {**old, "best_val_nll": config["history"]["best_nll"]}
    loaded = MDNRegressor.from_saved(config, reg.state_dict())
    assert loaded.history_ == reg.history_ and loaded.history_.monitor == "val_nll"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 1.5}, "epochs must be a positive integer, found 1.5"),
        ({"lr": -1.0}, "lr must be a finite number > 0, found -1.0"),
        ({"weight_decay": math.inf}, "weight_decay must be a finite number >= 0, found inf"),
        ({"validation_split": 1}, "validation_split must be a finite number >= 0 and < 1, found 1"),
        ({"clip_grad_norm": 0}, "clip_grad_norm must be a finite number > 0 or None, found 0"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of ('adam', 'adamw', 'sgd')"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of ('plateau', 'cosine', None)"),
    ],
)
def test_bad_arguments_say_what_was_expected_and_found(kwargs, message):
    x, y = _data(32)
    with pytest.raises(ValueError) as err:
        fit(MDN(2, 1, hidden=(4,)), x, y, progress=False, **kwargs)
    assert message in str(err.value)


def test_history_pickled_before_the_rename_still_loads():
    import pickle

    h = History(train_nll=[2.0], val_nll=[1.9], best_epoch=0, best_nll=1.9)
    assert pickle.loads(pickle.dumps(h)) == h
    old = History.__new__(History)  # the instance dict of an old History
    state = {k: v for k, v in h.__dict__.items() if k not in ("best_nll", "monitor")}
    old.__setstate__({**state, "best_val_nll": 1.9})
    assert old == h


def test_early_stopping_restores_the_best_weights():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(64, generator=g) * 0.1  # mean ~0
    val = torch.randn(64, generator=g) * 0.1 + 5.0  # mean ~5: p = 5 at start is the best
    m = _Quadratic()
    h = fit(
        m,
        (train,),
        validation_data=(val,),
        epochs=100,
        batch_size=64,
        lr=0.1,
        patience=4,
        lr_schedule=None,
        progress=False,
    )
    assert h.best_epoch == 0
    assert h.stopped_early and len(h.val_nll) == 5
    # the kept weights are those after epoch 0, whose validation loss was recorded
    assert m.loss(val).item() == pytest.approx(h.val_nll[0], rel=1e-6)
    assert m.loss(val).item() < h.val_nll[-1]


# 256 rows in 8 batches of 32 an epoch, no validation split, a fixed rate unless halved
_NAN_RUN = dict(
    epochs=4,
    batch_size=32,
    lr=1e-2,
    validation_split=0.0,
    lr_schedule=None,
    seed=0,
    progress=False,
)


def test_nan_loss_rolls_back_and_halves_the_learning_rate():
    x, y = _data(256)
    torch.manual_seed(0)
    m = _NaNOnce({10})  # epoch 1 (8 batches of 32 per epoch, no validation split)
    h = fit(m, x, y, **_NAN_RUN)
    assert h.nan_recoveries == 1
    assert len(h.train_nll) == 4 and all(math.isfinite(v) for v in h.train_nll)
    assert h.lr == [1e-2, 5e-3, 5e-3, 5e-3]
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_persistent_nan_stops_with_a_clear_error():
    x, y = _data(64)
    m = _NaNOnce(set(range(1, 1000)))
    with pytest.raises(RuntimeError, match="NaN/inf"):
        fit(m, x, y, epochs=3, batch_size=32, validation_split=0.0, progress=False)


def test_cosine_schedule_follows_the_closed_form():
    x, y = _data(64)
    h = fit(
        MDN(2, 1, hidden=(4,), num_components=2),
        x,
        y,
        epochs=8,
        lr=1e-2,
        lr_schedule="cosine",
        patience=None,
        seed=0,
        progress=False,
    )
    expected = [1e-2 * (1 + math.cos(math.pi * e / 8)) / 2 for e in range(8)]
    assert h.lr == pytest.approx(expected, rel=1e-9)


def test_plateau_schedule_lowers_the_rate_without_improvement():
    train = torch.zeros(32)
    val = torch.full((32,), 5.0)
    h = fit(
        _Quadratic(),
        (train,),
        validation_data=(val,),
        epochs=12,
        batch_size=32,
        lr=0.01,
        patience=None,
        lr_schedule="plateau",
        progress=False,
    )
    assert h.lr[0] == 0.01 and h.lr[-1] < 0.01


def test_dataloader_input_and_validation_loader():
    x, y = _data(300)
    xv, yv = _data(100, seed=1)
    torch.manual_seed(0)
    m = MDN(2, 1, hidden=(8,), num_components=2)
    train = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=30)
    h = fit(m, train, validation_data=val, epochs=5, seed=0, progress=False)
    assert len(h.val_nll) == 5
    torch.testing.assert_close(m.y_mean, y.mean(0))  # prepare ran on the loader's tensors
    # the validation NLL of the kept weights is the size-weighted mean over the loader
    assert m.nll(xv, yv) == pytest.approx(h.best_nll, rel=1e-5)


class _ListDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_dataloader_over_a_generic_dataset_prepares_from_its_batches():
    x, y = _data(200)
    m = MDN(2, 1, hidden=(8,), num_components=2)
    h = fit(m, DataLoader(_ListDataset(x, y), batch_size=64), epochs=2, seed=0, progress=False)
    assert h.val_nll == [] and len(h.train_nll) == 2
    torch.testing.assert_close(m.x_mean, x.mean(0))


def test_generic_model_with_integer_second_tensor():
    class Lengths(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.prepared_with = None

        def prepare(self, x, lengths):
            self.prepared_with = (tuple(x.shape), lengths.dtype)

        def loss(self, x, lengths):
            assert lengths.dtype == torch.int64
            return ((x.sum(-1) - self.w) ** 2).mean()

    x = torch.randn(40, 3, 2).numpy()
    lengths = torch.randint(1, 4, (40,))
    m = Lengths()
    fit(m, x, lengths, epochs=2, validation_split=0.25, seed=0, progress=False)
    assert m.prepared_with == ((30, 3, 2), torch.int64)


def test_progress_bar_reports_live_nll(capsys):
    x, y = _data(64)
    fit(MDN(2, 1, hidden=(4,), num_components=2), x, y, epochs=2, progress=True, seed=0)
    err = capsys.readouterr().err
    assert "val_nll" in err and "train_nll" in err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"validation_split": 1.0}, "validation_split"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"patience": 0}, "patience"),
        ({"clip_grad_norm": -1.0}, "clip_grad_norm"),
    ],
)
def test_bad_arguments(kwargs, match):
    x, y = _data(32)
    with pytest.raises(ValueError, match=match):
        fit(MDN(2, 1, hidden=(4,)), x, y, progress=False, **kwargs)


def test_bad_data():
    m = MDN(2, 1, hidden=(4,))
    with pytest.raises(ValueError, match="first dimension"):
        fit(m, torch.randn(10, 2), torch.randn(9, 1), progress=False)
    with pytest.raises(ValueError, match="y is required"):
        fit(m, torch.randn(10, 2), progress=False)
    with pytest.raises(TypeError, match="DataLoader"):
        fit(m, "data.csv", "y", progress=False)
    with pytest.raises(TypeError, match="Module"):
        fit(object(), torch.randn(10, 2), torch.randn(10, 1), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_moves_model_and_batches():
    x, y = _data(200)
    m = MDN(2, 1, hidden=(8,), num_components=2)
    h = fit(m, x, y, epochs=3, device="cuda", seed=0, progress=False)
    assert next(m.parameters()).is_cuda and m.y_mean.is_cuda
    assert all(math.isfinite(v) for v in h.val_nll)


def test_checkpoint_needs_a_saveable_model(tmp_path):
    with pytest.raises(TypeError, match="mdnkit model"):
        fit(_Quadratic(), (torch.zeros(8),), epochs=1, checkpoint=tmp_path / "q.mdn")
    assert not (tmp_path / "q.mdn").exists()


def test_large_validation_set_is_evaluated_in_chunks(monkeypatch):
    import mdnkit.training as training

    monkeypatch.setattr(training, "_VAL_CHUNK", 7)
    x, y = _data(100)
    xv, yv = _data(50, seed=2)
    torch.manual_seed(0)
    m = MDN(2, 1, hidden=(4,), num_components=2)
    h = fit(m, x, y, validation_data=(xv, yv), epochs=2, seed=0, progress=False)
    # the row-weighted mean of the chunks is the mean over all rows
    assert m.nll(xv, yv) == pytest.approx(h.best_nll, rel=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1, fused=True),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    ],
)
def test_direct_adam_step_is_the_optimisers_own_update(make):
    from mdnkit.training import _direct_adam_step

    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(7, generator=g) for _ in range(8)]
    start = torch.randn(7, generator=g)
    runs = []
    for direct in (True, False):
        p = nn.Parameter(start.clone())
        opt = make([p])
        step = _direct_adam_step(opt) if direct else opt.step
        assert step is not None
        saved = None
        for i, grad in enumerate(grads):
            p.grad = grad.clone()
            step()
            if i == 2:
                saved = {"p": p.detach().clone(), "opt": copy.deepcopy(opt.state_dict())}
            if i == 4:  # roll back as fit does after a NaN (new state tensors), halve the rate
                with torch.no_grad():
                    p.copy_(saved["p"])
                opt.state[p] = {k: v.clone() for k, v in opt.state[p].items()}
                opt.state[p]["step"].sub_(2)
                opt.param_groups[0]["lr"] *= 0.5
            if i == 6:  # and through load_state_dict (new groups too)
                opt.load_state_dict(saved["opt"])
                opt.param_groups[0]["lr"] *= 0.5
        runs.append((p.detach().clone(), float(opt.state[p]["step"])))
    assert runs[0][1] == runs[1][1] == 4.0
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    assert not torch.equal(runs[0][0], start)


def test_direct_adam_step_declines_what_it_does_not_cover():
    from mdnkit.training import _direct_adam_step

    p, q = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    assert _direct_adam_step(torch.optim.Adam([p], foreach=True)) is None
    assert _direct_adam_step(torch.optim.Adam([p], amsgrad=True, fused=True)) is None
    assert _direct_adam_step(torch.optim.Adam([p, q], fused=True)) is None
    assert _direct_adam_step(torch.optim.SGD([p], lr=0.1)) is None


def test_fast_path_nan_rolls_back_and_halves_the_rate(monkeypatch):
    from mdnkit import fast as _fast

    calls = {"n": 0}
    real_step = _fast.MLPFastStep.step

    def poisoned(self, x, z):
        loss = real_step(self, x, z)
        calls["n"] += 1
        if calls["n"] == 10:  # in epoch 1 (8 batches an epoch)
            self.flat.grad[0] = float("nan")
        return loss

    monkeypatch.setattr(_fast.MLPFastStep, "step", poisoned)
    x, y = _data(256)
    m = MDN(2, 1, hidden=(8,), num_components=3)
    h = fit(m, x, y, **_NAN_RUN)
    assert calls["n"] == 5 * 8  # epoch 1 ran twice
    assert h.nan_recoveries == 1
    assert h.lr == [1e-2, 5e-3, 5e-3, 5e-3]
    assert all(torch.isfinite(p).all() for p in m.parameters())
