"""Sequence data: pad sequences of different lengths into one batch, cut a stream into windows.

An MDN-RNN trains on a batch ``x`` ``(B, T, columns)`` with the real length of each row in
``lengths`` ``(B,)`` (the rest of a row is padding, which never affects the loss).
:func:`pad_sequences` builds that pair from a list of sequences; :func:`windows` cuts one long
stream of events (a touch corpus, a sensor log) into overlapping training windows.

Example:
    >>> x, lengths = pad_sequences([np.zeros((3, 2)), np.ones((5, 2))])
    >>> tuple(x.shape), lengths.tolist()
    ((2, 5, 2), [3, 5])
    >>> windows(np.zeros((10, 2)), length=4, stride=3).shape
    (3, 4, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .. import checks

__all__ = ["pad_sequences", "windows", "ArrayLike"]

#: What the sequence functions take: a NumPy array or a tensor.
ArrayLike = np.ndarray | Tensor


def _as_rows(s: ArrayLike, i: int) -> Tensor:
    """Sequence ``i`` as a ``(L, D)`` tensor (a ``(L,)`` one becomes ``(L, 1)``)."""
    t = torch.as_tensor(np.asarray(s) if not isinstance(s, Tensor) else s)
    if t.dim() == 1:
        t = t.unsqueeze(-1)
    if t.dim() != 2 or t.shape[0] < 1:
        raise ValueError(f"sequence {i} must have shape (L, D) with L >= 1, found {tuple(t.shape)}")
    return t


def pad_sequences(
    sequences: Sequence[ArrayLike], value: float = 0.0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Stack sequences of different lengths into one zero-padded batch.

    Args:
        sequences: arrays or tensors of shape ``(L_i, D)`` (all the same D, every ``L_i >= 1``).
        value: the padding value (it never affects :meth:`MDNRNN.loss`).
        dtype: dtype of the returned batch.

    Returns:
        ``(x, lengths)``: ``x`` of shape ``(B, max L_i, D)`` and ``lengths`` ``(B,)`` (int64).

    Example:
        >>> x, lengths = pad_sequences([np.zeros((3, 2)), np.ones((5, 2))])
        >>> tuple(x.shape), lengths.tolist()
        ((2, 5, 2), [3, 5])
    """
    if isinstance(sequences, (np.ndarray, Tensor)) or not isinstance(sequences, Sequence):
        raise TypeError(
            f"pad_sequences expects a list of (L, D) arrays, found {type(sequences).__name__}"
        )
    if len(sequences) == 0:
        raise ValueError("pad_sequences needs at least one sequence, found an empty list")
    seqs = []
    for i, s in enumerate(sequences):
        t = _as_rows(s, i)
        if seqs and t.shape[1] != seqs[0].shape[1]:
            raise ValueError(
                f"all sequences need the same event dimension: sequence 0 has D={seqs[0].shape[1]}, "
                f"sequence {i} has D={t.shape[1]}"
            )
        seqs.append(t.to(dtype))
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    x = torch.full((len(seqs), int(lengths.max()), seqs[0].shape[1]), value, dtype=dtype)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
    return x, lengths


def windows(stream: ArrayLike, length: int, stride: int | None = None) -> ArrayLike:
    """Cut one long stream of events ``(N, D)`` into overlapping windows ``(W, length, D)``.

    Window ``i`` is ``stream[i * stride : i * stride + length]``; only complete windows are kept,
    so ``W = (N - length) // stride + 1``.  ``stride`` defaults to ``length`` (no overlap).  The
    result is a copy of the same type (NumPy array or tensor) as ``stream``.

    Example:
        >>> windows(np.arange(10.0).reshape(5, 2), length=3, stride=2).shape
        (2, 3, 2)
    """
    if not isinstance(stream, (np.ndarray, Tensor)):
        raise TypeError(f"stream must be a NumPy array or a tensor, found {type(stream).__name__}")
    if stream.ndim != 2:
        raise ValueError(f"stream must have shape (N, D), found {tuple(stream.shape)}")
    length = checks.positive_int("length", length)
    stride = length if stride is None else checks.positive_int("stride", stride)
    n = stream.shape[0]
    if n < length:
        raise ValueError(f"the stream has {n} events, fewer than one window of length {length}")
    starts = np.arange(0, n - length + 1, stride)
    idx = starts[:, None] + np.arange(length)[None, :]
    if isinstance(stream, Tensor):
        return stream[torch.from_numpy(idx)].clone()
    return stream[idx].copy()
