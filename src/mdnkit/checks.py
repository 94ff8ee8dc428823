"""Argument checks of the core, each wording in one place.

Every public function and constructor of the core checks its arguments with these helpers, so
a bad argument gets the same kind of message everywhere: a :class:`ValueError` (or
:class:`TypeError` for a value of the wrong kind) naming the argument, what was expected and
what was found.  (The Keras front, :mod:`mdnkit.keras`, stays standalone and has its own.)

Example:
    >>> positive_int("num_components", 5)
    5
    >>> choice("covariance", "full", CovarianceType)
    'full'
    >>> positive_int("num_components", 0)
    Traceback (most recent call last):
    ...
    ValueError: num_components must be a positive integer, found 0
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar, get_args

import numpy as np

from .options import CovarianceType  # noqa: F401  (used by the docstring example)

if TYPE_CHECKING:
    import torch

__all__ = [
    "positive_int",
    "nonnegative_int",
    "choice",
    "number",
    "as_generator",
]

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name: str, value: Any, *, or_none: bool = False) -> int | None:
    """``value`` as an ``int`` >= 1 (``None`` passes through when ``or_none``); else ValueError."""
    if or_none and value is None:
        return None
    if not _is_int(value) or value < 1:
        tail = " or None" if or_none else ""
        raise ValueError(f"{name} must be a positive integer{tail}, found {value!r}")
    return int(value)


def nonnegative_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 0; else ValueError."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, found {value!r}")
    return int(value)


def _options(options: Any) -> tuple:
    """The allowed values of a ``Literal`` type (``Literal[...] | None`` included) or a tuple."""
    if isinstance(options, tuple):
        return options
    flat: list = []
    for arg in get_args(options):
        if arg is type(None):
            flat.append(None)
        elif get_args(arg):
            flat.extend(_options(arg))
        else:
            flat.append(arg)
    return tuple(flat)


def choice(name: str, value: T, options: Any) -> T:
    """``value`` if it is one of ``options`` (a ``Literal`` type or a tuple); else ValueError."""
    allowed = _options(options)
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, found {value!r}")
    return value


def number(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    or_none: bool = False,
) -> float | None:
    """``value`` as a float in the given range (finite unless ``finite=False``; ``None`` passes
    through when ``or_none``); else ValueError.

    The message states the range: ``lr must be a finite number > 0, found -1``.
    """
    if or_none and value is None:
        return None
    ok = (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and not math.isnan(value)
        and (math.isfinite(value) or not finite)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        parts = []
        if low > -math.inf:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high < math.inf:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        kind = "finite number" if finite else "number"
        rng = " and ".join(parts)
        rng = (" " + rng if rng else "") + (" or None" if or_none else "")
        raise ValueError(f"{name} must be a {kind}{rng}, found {value!r}")
    return float(value)


def as_generator(
    generator: torch.Generator | int | None, device: torch.device | str = "cpu"
) -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` from an int seed; generators and None pass through."""
    import torch  # here, not at the top: the command line reads its options without torch

    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if _is_int(generator):
        g = torch.Generator(device=device)
        g.manual_seed(int(generator))
        return g
    raise TypeError(
        f"generator must be a torch.Generator, an int seed or None, found {type(generator).__name__}"
    )
