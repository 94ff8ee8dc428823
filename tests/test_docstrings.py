"""Every example in the package's docstrings runs and prints what it says.

Plotting examples use the names ``model``, ``x``, ``y``, ``x_train`` and ``y_train`` (a small
MDN and inverted-sine data), given to them here; examples that need files outside the package
(the UCI data, a trained model file) are marked ``+SKIP`` in place.  Each module runs in a
temporary working directory, so examples that write files leave nothing behind.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import matplotlib
import pytest
import torch

import mdnkit

matplotlib.use("Agg")

#: every module of the package but the Keras front (its examples need a Keras backend chosen
#: before import; tests/test_keras.py runs that API)
MODULES = ["mdnkit"] + sorted(
    m.name for m in pkgutil.walk_packages(mdnkit.__path__, "mdnkit.") if m.name != "mdnkit.keras"
)


def _globs() -> dict:
    from mdnkit import MDN
    from mdnkit.datasets import inverted_sine

    x, y = inverted_sine(300, seed=0)
    torch.manual_seed(0)
    model = MDN(1, 1, hidden=(8,), num_components=3)
    model.prepare(x, y)
    return {"model": model, "x": x, "y": y, "x_train": x, "y_train": y}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(
        module,
        extraglobs=_globs(),
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    plt.close("all")
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed (see stdout)"


def test_keras_front_docstring_examples(tmp_path, monkeypatch):
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")  # as tests/test_keras.py
    test_docstring_examples("mdnkit.keras", tmp_path, monkeypatch)
