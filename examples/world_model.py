"""A World Models MDN-RNN on CartPole: predict the next state and the end of the episode.

Ha & Schmidhuber's world model (2018) has three parts: a VAE that compresses each frame to a
latent ``z``, an MDN-RNN that predicts the next ``z`` (and whether the episode ends) from the
current ``z`` and the action, and a small controller.  Its MDN-RNN is the part this example
trains, on a real environment from ``gymnasium``: here the environment's own observation vector
stands in for ``z`` (no VAE), and the model is the paper's: an LSTM whose head gives every
dimension of the next observation its own 1-D Gaussian mixture (``mixture="per_dimension"``),
plus a Bernoulli ``done`` head, with the action as a per-step input.

Why CartPole-v1: its observation ``(cart position, cart velocity, pole angle, pole angular
velocity)`` is small enough to plot, its action is discrete (push left / push right) and moves
the next state measurably (it sets the sign of the velocity changes), and its episodes end with a
``terminated`` signal (the pole falls or the cart leaves the track), so the ``done`` head has
something to learn.  Pendulum has no end and a continuous action; MountainCar's episodes under a
simple policy rarely reach the end; Acrobot's state is 6 numbers of sines and cosines.

Data: episodes played with an epsilon-noisy balancing heuristic (push towards the side the pole
is falling to, ``theta + 0.5 * theta_dot > 0``; with probability epsilon a uniform random action
instead, epsilon drawn per episode from [0.3, 1]), so episodes range from a few steps (random
play) to the 200-step cap, most of them ending with the pole down.  Everything is seeded: the
same ``--seed`` gives the same episodes.  The episodes are split 70 / 15 / 15 % into train,
validation (early stopping) and test.

A sequence is one episode: ``x[t] = o_t`` for ``t = 0 .. L`` and the input at step ``t`` is the
action ``a_{t-1}`` that led to ``o_t`` (one-hot; zeros at ``t = 0``), so the recurrent input that
predicts ``o_t`` is ``[o_{t-1}, a_{t-1}]`` and the model predicts ``p(o_t, done_t | o_{<t},
a_{<t})``.  ``done_t`` is 1 on the last observation of an episode that terminated (not on one
cut by the 200-step cap).

Reported, on the test episodes, as the NLL per transition (nats, in the observation's units;
the first observation of each episode, which has no action before it, is left out so every
model is scored on the same transitions ``(o_t, a_t) -> (o_{t+1}, done_{t+1})``):

* the MDN-RNN (next observation + ``done``, and the two parts);
* the same MDN-RNN trained and tested with the actions withheld (``input_dim=0``): the gap is
  what the action tells the model about the next state that the history does not.  For
  reference the report gives the behaviour policy's entropy per step: a model that knew the
  physics, the heuristic and each episode's epsilon would still lose about that much;
* a memoryless MDN (``mdnkit.MDN``, an MLP 64-64 with a 5-component mixture, trained with
  ``mdnkit.fit``) predicting ``o_{t+1}`` from ``(o_t, a_t)`` only, with a ``done`` classifier
  (gradient-boosted trees from scikit-learn, on the same inputs).  This is the honest
  baseline, and a strong one: CartPole's state is Markov and its dynamics deterministic, so
  ``(o_t, a_t)`` determines ``o_{t+1}`` and memory cannot help; the NLL only measures how
  precisely a model has learnt the physics, and an MLP's updates are far cheaper than an LSTM's
  over a 200-step episode.  The MDN-RNN and the MLP get the same wall-clock training budget
  (``--budget``), the MDN-RNN without actions exactly as many epochs as the one with them (a
  wall-clock budget alone would let the load of the machine decide the comparison);
* a per-dimension Gaussian fitted to the training deltas ``o_{t+1} - o_t`` (and the training
  frequency of ``done``): the model that knows nothing but "the state changes a little".

Pictures: "dreamed" rollouts, the model generating the observations step by step from a real
start state and the real action sequence, feeding back its own samples, beside the real ones
(each state dimension over time), with and without the actions.

Run (needs ``pip install gymnasium``, or ``pip install mdnkit[examples]``)::

    python examples/world_model.py            # under 10 minutes on two cores
    python examples/world_model.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mdnkit import MDN
from mdnkit.sequence import MDNRNN
from mdnkit.training import fit

ENV_ID = "CartPole-v1"
OBS_NAMES = ("cart position", "cart velocity", "pole angle (rad)", "pole angular velocity")
MAX_STEPS = 200  # episode cap (CartPole-v1's own is 500): keeps the sequences short
EPS_RANGE = (0.3, 1.0)  # per-episode probability of a random action

# per mode: episodes, LSTM units, mixture components, the MDN-RNNs' epochs (at most), the
# memoryless MDN's epochs (at most) and the training seconds each of the three models gets
MODES = {
    "smoke": {"episodes": 40, "hidden": 8, "k": 2, "epochs": 2, "budget": 3, "mdn_epochs": 3},
    "quick": {
        "episodes": 160,
        "hidden": 32,
        "k": 3,
        "epochs": 300,
        "budget": 14,
        "mdn_epochs": 1000,
    },
    "full": {
        "episodes": 800,
        "hidden": 64,
        "k": 5,
        "epochs": 2000,
        "budget": 160,
        "mdn_epochs": 1000,
    },
}


def require_gymnasium():
    """The gymnasium module, or one clear line and exit status 2."""
    try:
        import gymnasium
    except ImportError:
        print(
            "error: this example needs gymnasium: pip install gymnasium (or mdnkit[examples])",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    return gymnasium


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def heuristic(obs: np.ndarray) -> int:
    """Push towards the side the pole is falling to."""
    return int(obs[2] + 0.5 * obs[3] > 0)


def collect(n_episodes: int, seed: int) -> list[dict]:
    """Play ``n_episodes`` seeded episodes with the epsilon-noisy heuristic.

    Each episode is a dict: ``obs`` ``(L + 1, 4)`` float32, ``actions`` ``(L,)`` int,
    ``terminated`` (the pole fell or the cart left the track, rather than the step cap) and
    ``eps`` (the episode's probability of a random action)."""
    gym = require_gymnasium()
    env = gym.make(ENV_ID, max_episode_steps=MAX_STEPS)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n_episodes):
        eps = rng.uniform(*EPS_RANGE)
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        observations, actions, terminated = [obs], [], False
        while True:
            a = int(rng.integers(2)) if rng.random() < eps else heuristic(obs)
            obs, _, terminated, truncated, _ = env.step(a)
            observations.append(obs)
            actions.append(a)
            if terminated or truncated:
                break
        episodes.append(
            {
                "obs": np.asarray(observations, np.float32),
                "actions": np.asarray(actions, np.int64),
                "terminated": bool(terminated),
                "eps": float(eps),
            }
        )
    env.close()
    return episodes


def split(episodes: list[dict], seed: int) -> dict[str, list[dict]]:
    """Shuffle the episodes (seeded) and split them 70 / 15 / 15 %."""
    order = np.random.default_rng(seed + 1).permutation(len(episodes))
    a, b = int(0.7 * len(order)), int(0.85 * len(order))
    pick = lambda idx: [episodes[i] for i in idx]  # noqa: E731
    return {"train": pick(order[:a]), "valid": pick(order[a:b]), "test": pick(order[b:])}


def sequences(episodes: list[dict]) -> tuple[torch.Tensor, ...]:
    """Padded sequences: observations ``(B, T, 4)``, lengths ``(B,)``, actions one-hot
    ``(B, T, 2)`` (row t holds the action that led to observation t; zeros at t = 0) and done
    ``(B, T)`` (1 on the last observation of a terminated episode)."""
    b, t = len(episodes), max(len(e["obs"]) for e in episodes)
    x = np.zeros((b, t, 4), np.float32)
    inputs = np.zeros((b, t, 2), np.float32)
    done = np.zeros((b, t), np.float32)
    lengths = np.zeros(b, np.int64)
    for i, e in enumerate(episodes):
        n = len(e["obs"])
        x[i, :n] = e["obs"]
        inputs[i, np.arange(1, n), e["actions"]] = 1.0
        done[i, n - 1] = float(e["terminated"])
        lengths[i] = n
    return tuple(torch.from_numpy(a) for a in (x, lengths, inputs, done))


def transitions(episodes: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Memoryless data: inputs ``(o_t, one-hot a_t)`` ``(N, 6)``, targets ``o_{t+1}`` ``(N, 4)``
    and ``done_{t+1}`` ``(N,)``, over every transition of the episodes."""
    xs, ys, ds = [], [], []
    for e in episodes:
        n = len(e["actions"])
        xs.append(np.concatenate([e["obs"][:-1], np.eye(2, dtype=np.float32)[e["actions"]]], 1))
        ys.append(e["obs"][1:])
        d = np.zeros(n, np.float32)
        d[-1] = float(e["terminated"])
        ds.append(d)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ds)


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------


def within(budget: float, start: float):
    """A ``fit`` callback that stops training when another epoch (as long as the mean so far)
    would end more than ``budget`` seconds after ``start``."""

    def stop(epoch: int, history) -> bool:
        spent = time.perf_counter() - start
        return spent * (epoch + 2) / (epoch + 1) > budget

    return stop


def bernoulli_nll(p: np.ndarray, d: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(d * np.log(p) + (1 - d) * np.log1p(-p)))


def delta_gaussian(train: list[dict], test: list[dict]) -> dict[str, float]:
    """Per-dimension Gaussian on the deltas ``o_{t+1} - o_t`` (no action, no memory) and the
    training frequency of ``done``: NLL per test transition."""
    _, y_tr, d_tr = transitions(train)
    x_te, y_te, d_te = transitions(test)
    x_tr = transitions(train)[0]
    delta_tr = (y_tr - x_tr[:, :4]).astype(np.float64)
    mu, sd = delta_tr.mean(0), delta_tr.std(0)
    z = ((y_te - x_te[:, :4]) - mu) / sd
    obs = float(np.mean(np.sum(0.5 * z**2 + np.log(sd) + 0.5 * np.log(2 * np.pi), 1)))
    done = bernoulli_nll(np.full(len(d_te), d_tr.mean()), d_te)
    return {"nll": obs + done, "obs_nll": obs, "done_nll": done}


def memoryless_mdn(
    train: list[dict], valid: list[dict], test: list[dict], epochs: int, budget: float, seed: int
) -> dict[str, float]:
    """An MLP-MDN ``(o_t, a_t) -> o_{t+1}`` (mdnkit.MDN + fit) and a gradient-boosted
    classifier for ``done_{t+1}`` on the same inputs (scikit-learn): NLL per test transition."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x_tr, y_tr, d_tr = transitions(train)
    x_va, y_va, _ = transitions(valid)
    x_te, y_te, d_te = transitions(test)
    torch.manual_seed(seed)
    model = MDN(6, 4, hidden=(64, 64), num_components=5)
    start = time.perf_counter()
    fit(
        model,
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        validation_data=(torch.from_numpy(x_va), torch.from_numpy(y_va)),
        epochs=epochs,
        batch_size=256,
        lr=3e-3,
        patience=30,
        seed=seed,
        progress=False,
        callback=within(budget, start),
    )
    obs = model.nll(torch.from_numpy(x_te), torch.from_numpy(y_te))

    clf = HistGradientBoostingClassifier(random_state=seed).fit(x_tr, d_tr)
    done = bernoulli_nll(clf.predict_proba(x_te)[:, 1], d_te)
    return {"nll": obs + done, "obs_nll": obs, "done_nll": done}


# --------------------------------------------------------------------------------------------
# the MDN-RNN
# --------------------------------------------------------------------------------------------


def make_rnn(hidden: int, k: int, actions: bool) -> MDNRNN:
    """The World Models MDN-RNN: one LSTM layer, a per-dimension mixture, a ``done`` head."""
    return MDNRNN(
        4,
        hidden_size=hidden,
        num_layers=1,
        num_components=k,
        input_dim=2 if actions else 0,
        mixture="per_dimension",
        done=True,
    )


def batch_of(data: dict, actions: bool) -> tuple:
    """The tuple ``fit`` passes to ``model.loss(*batch)``: ``(x, lengths, inputs)`` (or ``(x,
    lengths)`` without the actions), ``x`` the observations with the done flag as the last
    column ``(B, T, 5)``."""
    x = torch.cat([data["x"], data["done"][..., None]], -1)
    return (x, data["lengths"], data["inputs"]) if actions else (x, data["lengths"])


@torch.no_grad()
def rnn_test_nll(model: MDNRNN, data: dict, actions: bool) -> dict[str, float]:
    """NLL per test transition (every step but each episode's first observation), its two parts
    (next observation, done) and, for reference, the NLL of the first observations."""
    model.eval()
    x, lengths, inputs = (*batch_of(data, actions), None)[:3]
    total = model.loss(x, lengths, inputs, reduction="none").double()  # (B, T)
    # the done part, from the forward pass: output t predicts event t + 1 and reads the inputs
    # loss aligns with event t + 1
    shifted = None if inputs is None else inputs[:, 1:]
    out = model(x[:, :-1], inputs=shifted)
    mask = torch.arange(1, x.shape[1])[None, :] < lengths[:, None]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        out.done_logits.double(), x[:, 1:, -1].double(), reduction="none"
    )
    n = float(mask.sum())
    nll = float(total[:, 1:][mask].sum()) / n
    done = float(bce[mask].sum()) / n
    return {
        "nll": nll,
        "obs_nll": nll - done,
        "done_nll": done,
        "first_obs_nll": float(total[:, 0].mean()),
    }


def policy_entropy(episodes: list[dict]) -> float:
    """Mean entropy (nats) of the behaviour policy's action per transition: the action is the
    heuristic's with probability ``1 - eps / 2``.  A model that knew each episode's epsilon and
    the heuristic would still pay this much per step for not being told the action."""
    h = []
    for e in episodes:
        p = e["eps"] / 2
        h += [-(p * np.log(p) + (1 - p) * np.log1p(-p))] * len(e["actions"])
    return float(np.mean(h))


def train_rnn(
    model: MDNRNN, data: dict, actions: bool, epochs: int, seed: int, budget: float
) -> dict:
    start = time.perf_counter()
    history = fit(
        model,
        batch_of(data["train"], actions),
        validation_data=batch_of(data["valid"], actions),
        epochs=epochs,
        batch_size=16,
        lr=3e-3,
        patience=30,
        seed=seed,
        callback=within(budget, start),
    )
    return {
        "epochs_run": len(history.train_nll),
        "best_epoch": history.best_epoch,
        "train_seconds": round(time.perf_counter() - start, 1),
    }


def dream(model: MDNRNN, episode: dict, n: int, seed: int, actions: bool) -> np.ndarray:
    """``n`` dreamed rollouts ``(n, L + 1, 4)``: from the episode's real first observation,
    with its real actions (when ``actions``), every later observation sampled by the model and
    fed back.  A rollout whose sampled ``done`` fires ends there (NaN after it)."""
    obs, acts = episode["obs"], episode["actions"]
    one_hot = np.eye(2, dtype=np.float32)
    g = model.generator(batch=n, generator=seed)
    g.step(None, np.zeros((n, 2), np.float32) if actions else None)  # reads the start token
    out = np.full((n, len(obs), 4), np.nan, np.float32)
    out[:, 0] = obs[0]
    event = np.zeros((n, 5), np.float32)
    event[:, :4] = obs[0]  # start from the real first observation (done = 0)
    alive = np.ones(n, bool)
    for t, a in enumerate(acts):
        event = g.step(event, np.repeat(one_hot[a : a + 1], n, 0) if actions else None)
        out[alive, t + 1] = event[alive, :4]
        alive &= event[:, 4] < 0.5
    return out


def episodes_to_show(episodes: list[dict]) -> list[dict]:
    """Three test episodes that end with the pole down (any, if none does), of about the 90th,
    60th and 30th percentile of length among those of at most 120 steps."""
    ended = [e for e in episodes if e["terminated"] and len(e["actions"]) <= 120] or episodes
    ended = sorted(ended, key=lambda e: len(e["actions"]))
    return [ended[int(q * (len(ended) - 1))] for q in (0.9, 0.6, 0.3)]


def draw_dreams(
    episodes: list[dict], dreams: list[np.ndarray], blind: list[np.ndarray], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(episodes)
    fig, axes = plt.subplots(4, cols, figsize=(3.2 * cols, 6.4), sharex="col", squeeze=False)
    for c, (e, dr, bl) in enumerate(zip(episodes, dreams, blind)):
        t = np.arange(len(e["obs"]))
        for d in range(4):
            ax = axes[d, c]
            for i in range(len(bl)):
                ax.plot(
                    t,
                    bl[i, :, d],
                    color="tab:orange",
                    lw=0.7,
                    alpha=0.5,
                    label="dreamed, actions withheld" if i == 0 else None,
                )
            for i in range(len(dr)):
                ax.plot(
                    t,
                    dr[i, :, d],
                    color="tab:blue",
                    lw=0.8,
                    alpha=0.6,
                    label="dreamed with the real actions" if i == 0 else None,
                )
            ax.plot(t, e["obs"][:, d], color="k", lw=1.8, label="real")
            if c == 0:
                ax.set_ylabel(OBS_NAMES[d], fontsize=8)
            ax.tick_params(labelsize=7)
        end = "pole fell" if e["terminated"] else "step cap"
        axes[0, c].set_title(f"test episode, {len(t) - 1} steps ({end})", fontsize=8)
        axes[-1, c].set_xlabel("step", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "CartPole: the MDN-RNN dreaming from the real start state (the same action sequence)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer episodes, small models, < 1 min")
    mode.add_argument("--smoke", action="store_true", help="a few seconds: for the tests")
    parser.add_argument("--out", default="world_model_out", help="output folder")
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--budget", type=float, default=None, help="training seconds per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")
    args = parser.parse_args(argv)
    require_gymnasium()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[name]
    hidden, k = mode["hidden"], mode["k"]
    n_episodes = args.episodes or mode["episodes"]
    epochs = args.epochs or mode["epochs"]
    budget = args.budget or mode["budget"]

    start = begin = time.perf_counter()
    parts = split(collect(n_episodes, args.seed), args.seed)
    collect_seconds = time.perf_counter() - start
    data = {}
    for s, eps in parts.items():
        x, lengths, inputs, done = sequences(eps)
        data[s] = {"x": x, "lengths": lengths, "inputs": inputs, "done": done}

    report = {
        "env": ENV_ID,
        "mode": name,
        "episodes": {s: len(e) for s, e in parts.items()},
        "transitions": {s: int(sum(len(e["actions"]) for e in v)) for s, v in parts.items()},
        "terminated_fraction": round(float(np.mean([e["terminated"] for e in parts["train"]])), 3),
        "collect_seconds": round(collect_seconds, 1),
        "hidden_size": hidden,
        "num_components": k,
    }
    models = {}
    for actions in (True, False):
        key = "mdnrnn" if actions else "mdnrnn_no_actions"
        torch.manual_seed(args.seed)
        models[key] = make_rnn(hidden, k, actions)
        if not actions:  # the same number of epochs as the model with the actions, any time
            epochs, budget_rnn = report["mdnrnn"]["epochs_run"], float("inf")
        else:
            budget_rnn = budget
        info = train_rnn(models[key], data, actions, epochs, args.seed, budget_rnn)
        info.update(rnn_test_nll(models[key], data["test"], actions))
        report[key] = {n: round(v, 4) if isinstance(v, float) else v for n, v in info.items()}
    report["actions_gain_nats_per_step"] = round(
        report["mdnrnn_no_actions"]["nll"] - report["mdnrnn"]["nll"], 4
    )
    report["policy_action_entropy_nats_per_step"] = round(policy_entropy(parts["test"]), 4)
    start = time.perf_counter()
    base = memoryless_mdn(
        parts["train"], parts["valid"], parts["test"], mode["mdn_epochs"], budget, args.seed
    )
    base["train_seconds"] = time.perf_counter() - start
    report["memoryless_mdn"] = {n: round(v, 4) for n, v in base.items()}
    report["delta_gaussian"] = {
        n: round(v, 4) for n, v in delta_gaussian(parts["train"], parts["test"]).items()
    }

    shown = episodes_to_show(parts["test"])
    dreams = [dream(models["mdnrnn"], e, 6, args.seed + i, True) for i, e in enumerate(shown)]
    blind = [
        dream(models["mdnrnn_no_actions"], e, 6, args.seed + i, False) for i, e in enumerate(shown)
    ]
    draw_dreams(shown, dreams, blind, out / "world_model_dreams.png")
    report["total_seconds"] = round(time.perf_counter() - begin, 1)
    (out / "world_model_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
