"""Model files: :func:`save` and :func:`load`.

One file per model, in the `safetensors <https://huggingface.co/docs/safetensors>`_ format: the
weights and buffers as named tensors, plus string metadata in the header:

==================  =========================================================================
key                 value
==================  =========================================================================
``format``          ``"mdnkit"``
``format_version``  ``"1"`` (a file of a newer version is refused with a clear message)
``class``           ``"MDN"``, ``"MDNRNN"`` or ``"MDNRegressor"``
``config``          JSON: the object's constructor arguments (``obj.config()``)
``user``            JSON: the caller's ``metadata`` dict (e.g. the CSV column names)
``checksum``        SHA-256 over the class, version, config, user metadata, the training state
                    (when there is one) and every tensor's name, dtype, shape and bytes
==================  =========================================================================

**Checkpoints** (:func:`save_checkpoint`, written by :func:`mdnkit.fit`) are model files too:
their tensors are the *best* weights under the model's own names, so :func:`load` gives the best
model, plus the whole training state: a JSON tree in the header key ``training_state`` whose
tensors (optimiser moments, RNG states, the current weights ...) are stored as further
safetensors tensors named ``@state/...`` and referenced from the tree as ``{"@tensor": name}``.
Tuples, non-string dict keys and non-finite floats have their own JSON forms
(``{"@tuple": [...]}``, ``{"@items": [[key, value], ...]}``, ``{"@float": "inf"}``), so an
optimiser's ``state_dict`` comes back as it was.  A checkpoint is ``format_version`` 2 (older
mdnkit versions refuse it with "upgrade"); :func:`load_checkpoint` reads it back.

Loading never unpickles and never runs code from the file: the class is looked up by name in a
fixed registry of mdnkit's own classes, the configuration is JSON, the tensors are raw bytes.
The checksum catches corruption and accidental edits (it is not a signature: anyone can
recompute it).  Writes are atomic: the file is written to a temporary file in the same folder
and moved over the target with :func:`os.replace`, so a failure leaves the old file or none.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .files import atomic_path

__all__ = [
    "save",
    "load",
    "load_with_header",
    "load_metadata",
    "load_header",
    "saveable_class_name",
    "save_checkpoint",
    "load_checkpoint",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

FORMAT_NAME = "mdnkit"
FORMAT_VERSION = 2  # the newest version this mdnkit reads; a plain model file is written as 1
_MODEL_VERSION = 1  # model files (no training state) stay readable by older versions
_STATE_PREFIX = "@state/"  # names of a checkpoint's training-state tensors

# class name -> (module, attribute): the only classes a file can ask for.
_REGISTRY: dict[str, tuple[str, str]] = {
    "MDN": ("mdnkit.models", "MDN"),
    "MDNRNN": ("mdnkit.sequence", "MDNRNN"),
    "SketchVAE": ("mdnkit.sequence", "SketchVAE"),
    "MDNRegressor": ("mdnkit.estimator", "MDNRegressor"),
}
_MAX_HEADER = 100 * 1024 * 1024


def saveable_class_name(obj: Any) -> str:
    """The registry name under which :func:`save` stores ``obj``; TypeError if it cannot."""
    for name, (mod, attr) in _REGISTRY.items():
        if type(obj).__name__ != attr:
            continue
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
        if type(obj) is cls:
            return name
    raise TypeError(
        f"save expects an mdnkit model ({', '.join(_REGISTRY)}), found {type(obj).__name__}"
    )


def _checksum(
    cls: str,
    version: int,
    config: str,
    user: str,
    tensors: dict[str, Tensor],
    state: str | None = None,
) -> str:
    h = hashlib.sha256()
    fields = [FORMAT_NAME, version, cls, config, user] + ([state] if state is not None else [])
    head = json.dumps(fields, separators=(",", ":"))
    h.update(head.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _state(obj: Any) -> dict[str, Tensor]:
    state = obj.state_dict()
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, Tensor):
            raise TypeError(
                f"state_dict entry {k!r} must be a tensor to be saved, found {type(v).__name__}"
            )
        # clone: safetensors refuses tensors that share memory
        out[str(k)] = v.detach().to("cpu").contiguous().clone()
    return out


def save(obj: Any, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Save an :class:`~mdnkit.MDN`, :class:`~mdnkit.MDNRNN` or :class:`~mdnkit.MDNRegressor`.

    The file holds ``obj.state_dict()`` as safetensors tensors and ``obj.config()`` plus the
    JSON-able ``metadata`` dict in the header (layout in the module docstring).  The write is
    atomic.  Returns the path written.

    Example:
        >>> from mdnkit import MDN, save, load
        >>> model = MDN(2, 1, hidden=(8,), num_components=3)
        >>> save(model, "model.mdn", metadata={"columns": ["a", "b", "y"]})  # doctest: +SKIP
        >>> model2 = load("model.mdn")                                       # doctest: +SKIP
    """
    name = saveable_class_name(obj)
    config, user = _config_and_user(obj, metadata)
    return _write(path, name, config, user, _state(obj))


def _config_and_user(obj: Any, metadata: dict[str, Any] | None) -> tuple[str, str]:
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, found {type(metadata).__name__}")
    cfg = obj.config()  # an unfitted estimator raises NotFittedError (a ValueError) here
    try:
        config = json.dumps(cfg, sort_keys=True, allow_nan=False)
        user = json.dumps(metadata or {}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config and metadata must be JSON-serialisable: {err}") from None
    return config, user


def _write(
    path: str | os.PathLike,
    name: str,
    config: str,
    user: str,
    tensors: dict[str, Tensor],
    state: str | None = None,
) -> Path:
    """Write one file (layout in the module docstring) atomically; the path written."""
    version = _MODEL_VERSION if state is None else FORMAT_VERSION
    header = {
        "format": FORMAT_NAME,
        "format_version": str(version),
        "class": name,
        "config": config,
        "user": user,
        "checksum": _checksum(name, version, config, user, tensors, state),
    }
    if state is not None:
        header["training_state"] = state
    from safetensors.torch import save as st_save

    data = st_save(tensors, metadata=header)
    path = Path(os.fspath(path))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def _encode(value: Any, tensors: dict[str, Tensor], where: str) -> Any:
    """``value`` as a JSON tree, its tensors moved into ``tensors`` (module docstring)."""
    if isinstance(value, Tensor):
        name = _STATE_PREFIX + where
        while name in tensors:
            name += "'"
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {"@tensor": name}
    if isinstance(value, float) and not math.isfinite(value):
        return {"@float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"@tuple": [_encode(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("@") for k in value):
            return {k: _encode(v, tensors, f"{where}/{k}") for k, v in value.items()}
        return {
            "@items": [
                [_encode(k, tensors, f"{where}/key"), _encode(v, tensors, f"{where}/{k}")]
                for k, v in value.items()
            ]
        }
    raise TypeError(f"a checkpoint cannot hold {type(value).__name__} (at {where!r})")


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of :func:`_encode`."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key == "@tensor":
            return tensors[inner]
        if key == "@float":
            return float(inner)
        if key == "@tuple":
            return tuple(_decode(v, tensors) for v in inner)
        if key == "@items":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_checkpoint(
    obj: Any,
    path: str | os.PathLike,
    state: dict[str, Any],
    *,
    weights: dict[str, Tensor] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save a training checkpoint: a model file holding ``weights`` (default: ``obj``'s own, a
    ``state_dict``), so that :func:`load` gives that model, plus ``state``, a dict of JSON
    values, tuples, dicts (any keys) and tensors (layout in the module docstring).  Atomic, and
    nothing in it is pickled.  :func:`mdnkit.fit` writes one with ``checkpoint=``.

    Example:
        >>> from mdnkit import MDN
        >>> model = MDN(2, 1, hidden=(8,), num_components=3)
        >>> st = {"epoch": 3, "moments": {0: torch.zeros(4)}}
        >>> save_checkpoint(model, "run.ckpt", st)                # doctest: +SKIP
        >>> load_checkpoint("run.ckpt")[1]["moments"][0].shape    # doctest: +SKIP
        torch.Size([4])
    """
    name = saveable_class_name(obj)
    config, user = _config_and_user(obj, metadata)
    if weights is None:
        tensors = _state(obj)
    else:
        tensors = {str(k): v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    if any(k.startswith(_STATE_PREFIX) for k in tensors):
        raise ValueError(f"model tensor names must not start with {_STATE_PREFIX!r}")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, found {type(state).__name__}")
    tree = json.dumps(_encode(state, tensors, "state"), sort_keys=True, allow_nan=False)
    return _write(path, name, config, user, tensors, tree)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(weights, state)`` of a file written by :func:`save_checkpoint` (verified first):
    the model's tensors and the training state, every tensor on the CPU.  ValueError for a
    model file without a training state, or any file :func:`load` would refuse.

    Example:
        >>> weights, state = load_checkpoint("run.ckpt")  # doctest: +SKIP
    """
    meta, tensors = _read(path)
    if "training_state" not in meta:
        raise ValueError(
            f"{str(path)!r} is a model file without a training state (not a checkpoint "
            "written by fit(checkpoint=...))"
        )
    try:
        state = _decode(json.loads(meta["training_state"]), tensors)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{str(path)!r} has an unreadable training state: {err}") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith(_STATE_PREFIX)}
    return weights, state


def _read(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Parse and verify a model file: (header metadata, tensors).  Raises ValueError."""
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"no model file at {str(p)!r}")
    data = p.read_bytes()
    where = f"{str(p)!r}"
    if len(data) < 8:
        raise ValueError(f"{where} is not an mdnkit model file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, _MAX_HEADER):
        raise ValueError(
            f"{where} is not an mdnkit model file, or is truncated: its header claims {n} bytes, "
            f"the file has {len(data) - 8} after the length field"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{where} is not an mdnkit model file (unreadable header)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where} is not an mdnkit model file (header is not a JSON object)")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{where} is not an mdnkit model file (expected format {FORMAT_NAME!r} in the "
            f"header, found {None if not isinstance(meta, dict) else meta.get('format')!r})"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise ValueError(
            f"{where}: format_version must be an integer, found {meta.get('format_version')!r}"
        ) from None
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{where} uses model file format version {version}, newer than this mdnkit "
            f"reads (version {FORMAT_VERSION}); upgrade mdnkit to load it"
        )
    if version < 1:
        raise ValueError(f"{where}: invalid format_version {version}")
    for key in ("class", "config", "user", "checksum"):
        if not isinstance(meta.get(key), str):
            raise ValueError(f"{where} is corrupt: the header has no {key!r} entry")
    state = meta.get("training_state")
    if state is not None and not isinstance(state, str):
        raise ValueError(f"{where} is corrupt: its training_state is not a string")
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(data)
    except (SafetensorError, RuntimeError, ValueError) as err:
        raise ValueError(f"{where} is corrupt or truncated: {err}") from None
    expected = _checksum(meta["class"], version, meta["config"], meta["user"], tensors, state)
    if expected != meta["checksum"]:
        raise ValueError(
            f"{where} is corrupt or was modified: its checksum does not match its contents"
        )
    return meta, tensors


def load_header(path: str | os.PathLike) -> dict[str, str]:
    """The verified header of a model file: ``format``, ``format_version``, ``class``,
    ``config`` and ``user`` (JSON strings) and ``checksum``, without building the model.

    Example:
        >>> load_header("model.mdn")["class"]  # doctest: +SKIP
        'MDN'
    """
    meta, _ = _read(path)
    return dict(meta)


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The user ``metadata`` dict stored by :func:`save` (the file is verified first).

    Example:
        >>> load_metadata("model.mdn")["columns"]  # doctest: +SKIP
        ['a', 'b', 'y']
    """
    meta, _ = _read(path)
    return json.loads(meta["user"])


def load(path: str | os.PathLike) -> Any:
    """Load a model written by :func:`save`; modules come back in evaluation mode.

    Raises ``ValueError`` for a file that is corrupt, truncated, modified, of a newer format
    version, or not an mdnkit model file, and ``FileNotFoundError`` when there is no file.

    Example:
        >>> model = load("model.mdn")  # doctest: +SKIP
        >>> mixture = model(torch.randn(5, 2))  # doctest: +SKIP
    """
    return load_with_header(path)[0]


def load_with_header(path: str | os.PathLike) -> tuple[Any, dict[str, str]]:
    """:func:`load` and :func:`load_header` from one read of the file: ``(model, header)``.

    Example:
        >>> model, header = load_with_header("model.mdn")  # doctest: +SKIP
        >>> json.loads(header["user"])  # the metadata given to save  # doctest: +SKIP
    """
    meta, tensors = _read(path)
    if "training_state" in meta:  # a checkpoint: the model is its best weights
        tensors = {k: v for k, v in tensors.items() if not k.startswith(_STATE_PREFIX)}
    name = meta["class"]
    if name not in _REGISTRY:
        raise ValueError(
            f"{str(path)!r} holds a {name!r}, which this mdnkit cannot load "
            f"(known: {', '.join(_REGISTRY)})"
        )
    mod, attr = _REGISTRY[name]
    cls = getattr(importlib.import_module(mod), attr)
    config = json.loads(meta["config"])
    if not isinstance(config, dict):
        raise ValueError(
            f"{str(path)!r}: config must be a JSON object, found {type(config).__name__}"
        )
    try:
        if hasattr(cls, "from_saved"):
            obj = cls.from_saved(config, tensors)
        else:
            obj = cls(**config)
            floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
            if floats:
                obj = obj.to(floats[0])
            obj.load_state_dict(tensors)
            obj.eval()
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"{str(path)!r} does not describe a valid {name}: {err}") from None
    if isinstance(obj, torch.nn.Module):
        from .training import mark_trained

        mark_trained(obj)  # fit(..., prepare="auto") continues from these weights
    return obj, dict(meta)
