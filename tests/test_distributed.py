"""Data-parallel training on torch.distributed (gloo, this CPU): two processes give the result of
one with the same global batch; a rank that dies ends the run with a clear error, not a hang;
the sharding, the reductions and ``python -m mdnkit``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mdnkit.distributed import DataParallel, is_main_process
from mdnkit.training import TrainingData, fit

# Phase "train": both ranks train; rank 0 saves the weights and history.  Phase "die": rank 1
# kills itself in its second epoch; rank 0 must fail with the collective's error.
WORKER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from mdnkit.models import MDN
    from mdnkit.training import fit

    def data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1000, 2, generator=g)
        y = torch.sin(2 * x[:, :1]) + 0.3 * x[:, 1:] + 0.1 * torch.randn(1000, 1, generator=g)
        return x, y

    def train(batch_size, callback=None):
        x, y = data()
        torch.manual_seed(3)
        model = MDN(2, 1, hidden=(16, 16), num_components=3)
        h = fit(model, x, y, epochs=4, batch_size=batch_size, seed=5, progress=False,
                validation_split=0.1, callback=callback)
        return model, h

    if __name__ == "__main__":
        phase, out = sys.argv[1], sys.argv[2]
        rank = int(os.environ["RANK"])
        if phase == "train":
            model, h = train(16)
            if rank == 0:
                torch.save({"weights": model.state_dict(), "train": h.train_nll,
                            "val": h.val_nll}, out)
        else:
            def die(epoch, history):
                if rank == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
            try:
                train(16, die)
            except RuntimeError as err:
                print(err, file=sys.stderr)
                sys.exit(3)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(folder, phase: str, world: int = 2) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            MDNKIT_DIST_TIMEOUT="20",
        )
        cmd = [sys.executable, "dp_worker.py", phase, str(folder / f"{phase}.pt")]
        procs.append(subprocess.Popen(cmd, cwd=folder, env=env, stderr=subprocess.PIPE, text=True))
    return procs


def test_two_processes_match_one_and_a_dead_rank_fails_fast(tmp_path):
    (tmp_path / "dp_worker.py").write_text(WORKER)
    train = _launch(tmp_path, "train")
    die = _launch(tmp_path, "die")  # both pairs at once: one start-up to wait for
    sys.path.insert(0, str(tmp_path))
    try:
        import dp_worker

        one, h_one = dp_worker.train(32)  # one process, the same global batch (2 x 16)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("dp_worker", None)
    for p in train:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    two = torch.load(tmp_path / "train.pt")
    for k, v in one.state_dict().items():  # float32 sums in another order: ~1e-7 per step
        torch.testing.assert_close(two["weights"][k], v, atol=2e-5, rtol=1e-4)
    assert two["val"] == pytest.approx(h_one.val_nll, abs=1e-5)
    assert two["train"] == pytest.approx(h_one.train_nll, abs=1e-5)
    start = time.monotonic()
    survivor, dead = die
    _, err = survivor.communicate(timeout=60)
    dead.communicate(timeout=60)
    assert dead.returncode != 0 and survivor.returncode == 3, err
    assert "data-parallel training stopped" in err and "rank 0 of 2" in err
    assert time.monotonic() - start < 30


class _Rank:
    """A stand-in for DataParallel in one process: rank ``rank`` of ``world``."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world


def test_shards_are_rank_strided_and_padded_to_the_same_steps():
    x = torch.arange(23.0)[:, None]
    batches = {}
    for world in (1, 3):
        for rank in range(world):
            gen = torch.Generator().manual_seed(0)
            data = TrainingData((x,), None, None, torch.device("cpu"), torch.float32, gen)
            data.parallel = _Rank(rank, world) if world > 1 else None
            batches[world, rank] = [b[0].flatten().tolist() for b in data.batches(4)]
    (single,) = [batches[1, 0]]
    flat = [v for b in single for v in b]
    assert sorted(flat) == list(range(23))
    shares = [batches[3, r] for r in range(3)]
    assert {len(s) for s in shares} == {2}  # 8, 8, 7 rows: two steps each, none empty
    for r, share in enumerate(shares):
        assert [v for b in share for v in b] == flat[r::3]
    skipped = list(data.batches(4, skip=1))  # rank 2, resumed after one step
    assert len(skipped) == 1


def test_one_process_is_not_data_parallel(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert DataParallel.from_environment(torch.device("cpu")) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert DataParallel.from_environment(torch.device("cpu")) is None
    assert is_main_process()


def test_python_dash_m_mdnkit_runs_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "mdnkit", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("mdnkit ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_resume_and_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g)
    y = x[:, :1] + 0.1 * torch.randn(300, 1, generator=g)
    from mdnkit.models import MDN

    def model():
        torch.manual_seed(0)
        return MDN(2, 1, hidden=(8,), num_components=2, dropout=0.1)

    path = tmp_path / "run.ckpt"
    common = dict(batch_size=32, seed=0, progress=False, device="cuda", patience=None)
    a = model()
    fit(a, x, y, epochs=2, checkpoint=path, **common)
    b = model()
    fit(b, x, y, epochs=4, checkpoint=path, resume=path, **common)
    c = model()
    fit(c, x, y, epochs=4, **common)
    for k, v in c.state_dict().items():
        assert torch.equal(b.state_dict()[k], v)
