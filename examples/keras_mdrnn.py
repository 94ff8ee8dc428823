"""An MDN-RNN in Keras 3 with ``mdnkit.keras``: train on sequences, then generate step by step.

The toy data is a zig-zag walk: each step moves ``+0.5`` or ``-0.5`` (plus a little noise) and
keeps its direction with probability 0.8, so the next step is bimodal and which mode is likely
depends on the past: a job for an LSTM with a mixture density output.

1. Training model: ``LSTM -> LSTM -> TimeDistributed(MDN)`` over whole sequences ``(B, T, 1)``.
2. Generation model: the same layers with ``stateful=True`` and a fixed batch of one sequence of
   one step, ``(1, 1, 1)``; it takes *all* the trained weights (LSTMs and MDN), and each call
   advances the LSTM state by one step. Samples come from ``mdn.sample_from_output``.

Run it (about half a minute on two CPU cores; any Keras backend)::

    KERAS_BACKEND=torch python examples/keras_mdrnn.py
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mdnkit import keras as mdn  # noqa: E402

OUTPUT_DIM = 1
N_MIXES = 3
UNITS = 32
SEQ_LEN = 30


def make_data(
    n_sequences: int = 600, seq_len: int = SEQ_LEN, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Zig-zag steps: inputs ``x[:, t]`` and targets ``y[:, t] = x[:, t + 1]``, each
    ``(n_sequences, seq_len, 1)`` float32."""
    rng = np.random.default_rng(seed)
    flips = rng.random((n_sequences, seq_len + 1)) < 0.2
    start = rng.choice([-1.0, 1.0], size=(n_sequences, 1))
    direction = start * np.cumprod(np.where(flips, -1.0, 1.0), axis=1)
    steps = 0.5 * direction + 0.05 * rng.standard_normal(direction.shape)
    steps = steps.astype("float32")[..., None]
    return steps[:, :-1], steps[:, 1:]


def best_nll() -> float:
    """Entropy of the next step given the past, the lowest NLL per step any model can reach:
    the direction's Bernoulli(0.8) entropy plus the N(0, 0.05^2) noise entropy (nats)."""
    h_direction = -(0.8 * np.log(0.8) + 0.2 * np.log(0.2))
    h_noise = 0.5 * np.log(2 * np.pi * np.e * 0.05**2)
    return float(h_direction + h_noise)


def _stack(inputs: keras.KerasTensor, stateful: bool) -> keras.KerasTensor:
    h = keras.layers.LSTM(UNITS, return_sequences=True, stateful=stateful, name="lstm_1")(inputs)
    h = keras.layers.LSTM(UNITS, return_sequences=True, stateful=stateful, name="lstm_2")(h)
    return keras.layers.TimeDistributed(mdn.MDN(OUTPUT_DIM, N_MIXES), name="mdn")(h)


def build_training_model(seq_len: int = SEQ_LEN) -> keras.Model:
    """Sequence-to-sequence MDN-RNN: ``(B, T, 1) -> (B, T, 2 K D + K)``, compiled with the
    per-step mixture NLL."""
    inputs = keras.Input(shape=(seq_len, OUTPUT_DIM), name="inputs")
    model = keras.Model(inputs, _stack(inputs, stateful=False), name="mdrnn_train")
    model.compile(
        loss=mdn.get_mixture_loss_func(OUTPUT_DIM, N_MIXES),
        optimizer=keras.optimizers.Adam(learning_rate=3e-3),
    )
    return model


def build_generation_model(trained: keras.Model) -> keras.Model:
    """Stateful one-step copy of ``trained``: batch 1, 1 step per call, all weights copied."""
    inputs = keras.Input(batch_shape=(1, 1, OUTPUT_DIM), name="inputs")
    model = keras.Model(inputs, _stack(inputs, stateful=True), name="mdrnn_generate")
    model.set_weights(trained.get_weights())
    reset_states(model)
    return model


def reset_states(model: keras.Model) -> None:
    """Zero the state of every stateful recurrent layer in ``model``."""
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()


def generate(
    model: keras.Model,
    n_steps: int,
    first: float = 0.5,
    temp: float = 1.0,
    sigma_temp: float = 1.0,
    seed: int | None = 0,
) -> np.ndarray:
    """Generate ``n_steps`` steps, feeding each sample back in; returns ``(n_steps, 1)``."""
    rng = np.random.default_rng(seed)
    reset_states(model)
    x = np.full((1, 1, OUTPUT_DIM), first, dtype="float32")
    out = np.empty((n_steps, OUTPUT_DIM))
    for t in range(n_steps):
        params = keras.ops.convert_to_numpy(model(x, training=False))[0, 0]
        out[t] = mdn.sample_from_output(
            params, OUTPUT_DIM, N_MIXES, temp=temp, sigma_temp=sigma_temp, seed=rng
        )
        x[0, 0] = out[t]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--sequences", type=int, default=600)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    x, y = make_data(args.sequences)
    model = build_training_model()
    history = model.fit(x, y, batch_size=32, epochs=args.epochs, validation_split=0.1, verbose=0)
    print(
        f"backend {keras.backend.backend()}: val NLL per step {history.history['val_loss'][-1]:.3f}"
    )
    print(
        f"(the best possible is about {best_nll():.3f}: a 0.8/0.2 choice of direction, N(0, 0.05^2))"
    )

    generator = build_generation_model(model)
    for temp in (0.0, 1.0):
        steps = generate(generator, args.steps, temp=temp, sigma_temp=0.5)
        signs = "".join("+" if s > 0 else "-" for s in steps[:, 0])
        print(f"temp={temp}: {signs}")


if __name__ == "__main__":
    main()
