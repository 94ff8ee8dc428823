"""Model files: :func:`save` and :func:`load`.

One file per model, in the `safetensors <https://huggingface.co/docs/safetensors>`_ format: the
weights and buffers as named tensors, plus string metadata in the header.  Byte by byte: an
unsigned 64-bit little-endian N; N bytes of JSON, ``{"__metadata__": {key: string, ...}, name:
{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...}`` (padded with spaces);
then the tensors' bytes (C order, little-endian), tensor ``name`` at ``[begin, end)`` counted
from the end of the header, the tensors filling that part exactly.  The metadata:

==================  =========================================================================
key                 value
==================  =========================================================================
``format``          ``"mdnkit"``
``format_version``  ``"1"`` (a file of a newer version is refused with a clear message)
``class``           ``"MDN"``, ``"MDNEnsemble"``, ``"MDNRNN"``, ``"SketchVAE"``,
                    ``"MDNRegressor"`` or ``"MemberRows"`` (a checkpoint's, see below)
``config``          JSON: the object's constructor arguments (``obj.config()``; for
                    ``MemberRows``, which wraps an ensemble, ``{"ensemble": its config}``)
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
recompute it), so loading trusts nothing else either, and a bad file is a ``ValueError`` that
names the file and what is wrong.  Memory is bounded by the file's size plus the model's: the
header is read alone and its length checked against the file first; the config, the user
metadata and the training state must be JSON objects nested at most 100 deep; the network the
config describes is first built on PyTorch's ``meta`` device (no memory for weights, and no more
parameters and buffers than the file has tensors) and every tensor's name, dtype and shape
checked against it before the real network is built; the model's floating tensors must be finite
and those that hold scales (named ``std``, ``scale``, ``*_std`` or ``*_scale``, e.g. ``y_std``)
positive.  Writes are atomic: the file is written to a temporary file in the same folder
and moved over the target with :func:`os.replace`, so a failure leaves the old file or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import itertools
import json
import math
import os
import re
import struct
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
    "MDNEnsemble": ("mdnkit.ensemble", "MDNEnsemble"),
    "MemberRows": ("mdnkit.ensemble", "MemberRows"),
    "MDNRNN": ("mdnkit.sequence", "MDNRNN"),
    "SketchVAE": ("mdnkit.sequence", "SketchVAE"),
    "MDNRegressor": ("mdnkit.estimator", "MDNRegressor"),
}
#: classes that wrap one module of a registered class and have no config of their own:
#: name -> (the attribute that holds it, its class name); the file's config is {attribute:
#: the wrapped module's config}, and the class is built as ``cls(wrapped)`` (``MemberRows``,
#: which ``fit`` checkpoints when an ensemble's members train on rows of their own).
_WRAPPERS: dict[str, tuple[str, str]] = {"MemberRows": ("ensemble", "MDNEnsemble")}
_MAX_HEADER = 100 * 1024 * 1024
_MAX_DEPTH = 100  # how deeply the config, user metadata and training state may nest
_MAX_VALUES = 2**18  # JSON values in a header (about 13 per tensor): bounds parsing's memory
_POSITIVE = re.compile(r"(?:^|[._])(?:std|scale)$")  # tensors that hold scales (divisors)


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
    h = _hash_start(cls, version, config, user, state)
    for name in sorted(tensors):
        _hash_tensor(h, name, tensors[name].detach().cpu().contiguous())
    return h.hexdigest()


def _hash_start(cls: str, version: int, config: str, user: str, state: str | None) -> Any:
    """The checksum's hash, fed with the header fields (module docstring)."""
    h = hashlib.sha256()
    fields = [FORMAT_NAME, version, cls, config, user] + ([state] if state is not None else [])
    h.update(json.dumps(fields, separators=(",", ":")).encode())
    return h


def _hash_tensor(h: Any, name: str, t: Tensor) -> None:
    """Feed one contiguous CPU tensor to the checksum: its name, dtype, shape and bytes."""
    h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes, without a copy


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
    """Save an :class:`~mdnkit.MDN`, :class:`~mdnkit.ensemble.MDNEnsemble`,
    :class:`~mdnkit.MDNRNN` or :class:`~mdnkit.MDNRegressor`.

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
    cfg = _config(obj)  # an unfitted estimator raises NotFittedError (a ValueError) here
    try:
        config = json.dumps(cfg, sort_keys=True, allow_nan=False)
        user = json.dumps(metadata or {}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config and metadata must be JSON-serialisable: {err}") from None
    except RecursionError:
        user = ""
    if not user or _depth(json.loads(user)) > _MAX_DEPTH:  # what load refuses is not written
        raise ValueError(f"metadata must not nest deeper than {_MAX_DEPTH} levels")
    return config, user


def _config(obj: Any) -> dict[str, Any]:
    """``obj.config()``; for a wrapper (:data:`_WRAPPERS`) the wrapped module's, under its
    attribute's name."""
    wrapped = _WRAPPERS.get(type(obj).__name__)
    if wrapped is not None:
        return {wrapped[0]: getattr(obj, wrapped[0]).config()}
    return obj.config()


def _construct(cls: Any, name: str, config: dict[str, Any]) -> Any:
    """The object of registered class ``cls`` (registry name ``name``) that ``config``
    describes: ``cls(**config)``, or for a wrapper ``cls(wrapped class(**config[attribute]))``."""
    wrapped = _WRAPPERS.get(name)
    if wrapped is None:
        return cls(**config)
    attr, inner = wrapped
    if set(config) != {attr} or not isinstance(config[attr], dict):
        raise ValueError(f"expected a config {{{attr!r}: {{...}}}}, found keys {sorted(config)}")
    return cls(_registered_class("the config", inner)(**config[attr]))


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
    (n,) = struct.unpack("<Q", data[:8])
    if _count_values(data[8 : 8 + n]) > _MAX_VALUES:  # what load refuses is not written
        raise ValueError(
            f"the file would hold more than {_MAX_VALUES} JSON values in its header (tensors, "
            "metadata, training state), more than load reads"
        )
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
    encoded = _encode(state, tensors, "state")
    if _depth(encoded) > _MAX_DEPTH:  # what load_checkpoint refuses is not written
        raise ValueError(f"state must not nest deeper than {_MAX_DEPTH} levels")
    tree = json.dumps(encoded, sort_keys=True, allow_nan=False)
    return _write(path, name, config, user, tensors, tree)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(weights, state)`` of a file written by :func:`save_checkpoint` (verified first):
    the model's tensors and the training state, every tensor on the CPU.  ValueError for a
    model file without a training state, or any file :func:`load` would refuse.

    Example:
        >>> weights, state = load_checkpoint("run.ckpt")  # doctest: +SKIP
    """
    with _opened(path) as src:
        if "training_state" not in src.meta:
            raise ValueError(
                f"{str(path)!r} is a model file without a training state (not a checkpoint "
                "written by fit(checkpoint=...))"
            )
        _verify(src, check_values=True)
        tree = _json_object(src.where, "training_state", src.meta["training_state"])
        tensors = {k: _tensor(src, k) for k in src.reader.keys()}
    try:
        state = _decode(tree, tensors)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as err:
        raise ValueError(f"{str(path)!r} has an unreadable training state: {err}") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith(_STATE_PREFIX)}
    return weights, state


@dataclass
class _Source:
    """An open model file whose header passed the checks of :func:`_opened`."""

    where: str  # the path, quoted, to start messages with
    meta: dict[str, str]  # the header's metadata (module docstring)
    version: int
    config: dict[str, Any]
    user: dict[str, Any]
    reader: Any  # safetensors' safe_open: tensors are read one at a time, when asked for


@contextlib.contextmanager
def _opened(path: str | os.PathLike) -> Iterator[_Source]:
    """Open a model file and check its header, reading nothing of the tensors' data: the length
    field against the file's size, the header's layout (safetensors), then every field."""
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"no model file at {str(p)!r}")
    where = f"{str(p)!r}"
    _check_values(where, _read_header(p, where))
    from safetensors import SafetensorError, safe_open

    try:  # the header is parsed by safetensors: bounded depth and size, every offset checked
        reader = safe_open(str(p), framework="pt")
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{where} is not an mdnkit model file (unreadable header: {_one_line(err)})"
        ) from None
    with reader:
        meta = reader.metadata()
        version = _check_meta(where, meta)
        config = _json_object(where, "config", meta["config"])
        user = _json_object(where, "user", meta["user"])
        yield _Source(where, meta, version, config, user, reader)


def _read_header(p: Path, where: str) -> bytes:
    """The header's bytes, its length field checked against the file's size first."""
    with open(p, "rb") as f:
        body = os.fstat(f.fileno()).st_size - 8
        first = f.read(8)
        if len(first) < 8:
            raise ValueError(f"{where} is not an mdnkit model file (only {len(first)} bytes)")
        (n,) = struct.unpack("<Q", first)
        if n > min(body, _MAX_HEADER):
            raise ValueError(
                f"{where} is not an mdnkit model file, or is truncated: its header claims {n} "
                f"bytes, the file has {body} after the length field"
            )
        return f.read(n)


def _count_values(header: bytes) -> int:
    """An upper bound on the JSON values a header holds (the tensors' entries and the JSON in
    its metadata strings): its strings, arrays, objects and commas."""
    return sum(header.count(c) for c in (b",", b"[", b"{")) + header.count(b'"') // 2


def _check_values(where: str, header: bytes) -> None:
    """ValueError for a header of more than ``_MAX_VALUES`` JSON values: parsing one costs
    memory in proportion to its values, many times its size (no mdnkit file comes close)."""
    if _count_values(header) > _MAX_VALUES:
        raise ValueError(
            f"{where} is not an mdnkit model file: its header holds more than {_MAX_VALUES} "
            "JSON values"
        )


def _check_meta(where: str, meta: dict[str, str] | None) -> int:
    """The format version of a file whose header metadata is ``meta``; ValueError naming the
    field that is missing or wrong."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{where} is not an mdnkit model file (expected format {FORMAT_NAME!r} in the "
            f"header, found {None if not isinstance(meta, dict) else meta.get('format')!r})"
        )
    try:
        version = int(meta.get("format_version", ""))
    except (TypeError, ValueError):
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
    return version


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number"}


def _json_object(where: str, field: str, text: str) -> dict[str, Any]:
    """The JSON object in the header field ``field``; ValueError when it is not one (not JSON,
    another kind of value, or nested deeper than ``_MAX_DEPTH``)."""
    try:
        value = json.loads(text)
        deep = isinstance(value, dict) and _depth(value) > _MAX_DEPTH
    except RecursionError:  # nested deeper than the parser goes
        value, deep = {}, True
    except ValueError as err:  # JSONDecodeError, or an integer of too many digits
        raise ValueError(f"{where} is corrupt: its {field} is not JSON ({err})") from None
    if deep:
        raise ValueError(f"{where} is corrupt: its {field} nests deeper than {_MAX_DEPTH} levels")
    if not isinstance(value, dict):
        kind = "null" if value is None else _JSON_KINDS.get(type(value), "true or false")
        raise ValueError(f"{where} is corrupt: its {field} must be a JSON object, found {kind}")
    return value


def _depth(value: Any) -> int:
    """How deeply ``value`` (parsed JSON) nests arrays and objects, counted up to just past
    ``_MAX_DEPTH`` (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth > _MAX_DEPTH:
                break
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _one_line(err: BaseException) -> str:
    """``err``'s message on one line, without a C++ stack trace, at most 500 characters."""
    text = " ".join(str(err).split("Exception raised from ")[0].split())
    return text if len(text) <= 500 else text[:497] + "..."


def _too_large(config: dict[str, Any]) -> str | None:
    """The path of the first integer in ``config`` too large for any size or count (2**62 and
    more, which PyTorch cannot even represent as a shape), or None."""
    stack: list[tuple[str, Any]] = [("", config)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else k, v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, int) and abs(value) >= 2**62:
            return f"{where} is {value}"
    return None


def _tensor(src: _Source, name: str) -> Tensor:
    """One tensor of the file (a fresh CPU tensor); ValueError naming it when it cannot be read."""
    try:
        return src.reader.get_tensor(name)
    except Exception as err:  # safetensors' own error, or a dtype this torch lacks
        raise ValueError(
            f"{src.where} is corrupt: its tensor {name!r} cannot be read ({_one_line(err)})"
        ) from None


def _verify(src: _Source, check_values: bool) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Read every tensor once, one at a time: check the checksum and (``check_values``) the
    model's weights (:func:`_value_problem`); the dtype and shape of every tensor."""
    meta = src.meta
    state = meta.get("training_state")
    h = _hash_start(meta["class"], src.version, meta["config"], meta["user"], state)
    infos: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    problem = None
    for name in sorted(src.reader.keys()):
        t = _tensor(src, name)
        _hash_tensor(h, name, t)
        infos[name] = (t.dtype, tuple(t.shape))
        if check_values and problem is None and not name.startswith(_STATE_PREFIX):
            problem = _value_problem(name, t)
    if h.hexdigest() != meta["checksum"]:
        raise ValueError(
            f"{src.where} is corrupt or was modified: its checksum does not match its contents"
        )
    if problem is not None:
        raise ValueError(f"{src.where} holds unusable weights: {problem}")
    return infos


def _value_problem(name: str, t: Tensor) -> str | None:
    """What is wrong with the model tensor ``name``: a NaN or infinite value, or a scale (a
    tensor named ``std``, ``scale``, ``*_std`` or ``*_scale``: a divisor) that is not a
    positive normal number; None when nothing is."""
    if not t.is_floating_point() or not t.numel():
        return None
    low, high = (float(v) for v in torch.aminmax(t))  # NaN when there is one: one fast pass
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int(t.numel() - torch.isfinite(t).sum())
        return f"tensor {name!r} has {bad} NaN or infinite value(s) of {t.numel()}"
    tiny = torch.finfo(t.dtype).tiny
    if _POSITIVE.search(name) and low < tiny:
        return (
            f"tensor {name!r} holds scales, which must be positive (at least {tiny:.3g}), "
            f"found {low:.6g}"
        )
    return None


class _OverBudget(Exception):
    """Raised while building a network that its file's tensors cannot hold."""


@contextlib.contextmanager
def _registration_budget(units: int) -> Iterator[None]:
    """Within the block, the parameters, buffers and modules that this thread registers on any
    ``nn.Module`` may cost at most ``units`` (a tensor its elements, at least 1; a module 1):
    a config that describes a network far larger than its file's tensors (wide layers, many
    layers) stops at its first layers, before it costs time or memory, even on the meta
    device."""
    from torch.nn.modules import module as nn_module

    owner = threading.get_ident()
    spent = [0]

    def hook(module: Any, name: str, value: Any) -> None:
        if value is not None and threading.get_ident() == owner:
            spent[0] += max(1, value.numel()) if isinstance(value, Tensor) else 1
            if spent[0] > units:
                raise _OverBudget

    handles = [
        nn_module.register_module_parameter_registration_hook(hook),
        nn_module.register_module_buffer_registration_hook(hook),
        nn_module.register_module_module_registration_hook(hook),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# what building a network from a file's config may raise for a config that does not fit it
_BUILD_ERRORS = (
    TypeError,
    ValueError,
    RuntimeError,  # RecursionError and NotImplementedError included
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
)


def _expected(
    src: _Source, cls: Any, name: str, infos: dict[str, tuple[torch.dtype, tuple[int, ...]]]
) -> torch.dtype | None:
    """Check the file's model tensors against the network its config describes, built on the
    meta device (no memory for weights) with at most as many parameters and buffers as the
    file holds tensors, in the dtype of most of the file's floating tensors: that dtype."""
    found = {k: infos[k] for k in _model_names(src, infos)}
    huge = _too_large(src.config)
    if huge is not None:
        raise ValueError(
            f"{src.where} does not describe a valid {name}: its config's {huge}, too large "
            "for any size or count"
        )
    floats = Counter(dt for dt, _ in found.values() if dt.is_floating_point)
    dtype = floats.most_common(1)[0][0] if floats else None
    held = sum(math.prod(shape) for _, shape in found.values())
    try:  # 4x: room for a class that builds parts and then stacks them (an ensemble)
        with _registration_budget(4 * (held + len(found)) + 1024), torch.device("meta"):
            if hasattr(cls, "from_saved"):
                empty = {k: torch.empty(shape, dtype=dt) for k, (dt, shape) in found.items()}
                obj = cls.from_saved(src.config, empty)
            else:
                obj = _in_dtype(_construct(cls, name, src.config), dtype)
            expected = {k: (v.dtype, tuple(v.shape)) for k, v in obj.state_dict().items()}
    except _OverBudget:
        raise ValueError(
            f"{src.where} does not describe a valid {name}: its config describes a network "
            f"far larger than the {held} values of the {len(found)} tensors the file holds"
        ) from None
    except _BUILD_ERRORS as err:
        raise ValueError(
            f"{src.where} does not describe a valid {name}: {_one_line(err)}"
        ) from None
    _compare(src.where, name, expected, found)
    return dtype


def _compare(
    where: str,
    name: str,
    expected: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    found: dict[str, tuple[torch.dtype, tuple[int, ...]]],
) -> None:
    """ValueError naming the first tensor of ``found`` that is not what ``expected`` says."""
    extra = sorted(set(found) - set(expected))
    if extra:
        more = f" (nor are {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ValueError(
            f"{where}: its tensor {extra[0]!r} is not part of the {name} its config describes{more}"
        )
    for key, (dtype, shape) in expected.items():
        if key not in found:
            continue
        dt, sh = found[key]
        if sh != shape:
            raise ValueError(
                f"{where}: its tensor {key!r} has shape {list(sh)}, but its config describes "
                f"{list(shape)}"
            )
        if dt != dtype:
            raise ValueError(
                f"{where}: its tensor {key!r} is {str(dt).replace('torch.', '')}, expected "
                f"{str(dtype).replace('torch.', '')}"
            )
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ValueError(
            f"{where}: the {name} its config describes has a tensor {missing[0]!r}, which the "
            f"file lacks ({len(missing)} missing)"
        )


def _build(src: _Source, cls: Any, name: str, dtype: torch.dtype | None) -> Any:
    """The object the file describes (checked by :func:`_expected`), built as its class builds
    it, its tensors copied in one at a time; modules in evaluation mode."""
    try:
        if hasattr(cls, "from_saved"):
            names = _model_names(src, src.reader.keys())
            return cls.from_saved(src.config, {k: _tensor(src, k) for k in names})
        obj = _in_dtype(_construct(cls, name, src.config), dtype)
        with torch.no_grad():
            for key, dst in obj.state_dict().items():
                dst.copy_(_tensor(src, key))
        return obj.eval()
    except _BUILD_ERRORS as err:
        raise ValueError(
            f"{src.where} does not describe a valid {name}: {_one_line(err)}"
        ) from None


def _in_dtype(module: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """``module`` with its floating tensors in ``dtype`` (None: as it is)."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    if dtype is None or all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        return module
    return module.to(dtype)


def _model_names(src: _Source, names: Iterable[str]) -> list[str]:
    """The names of the model's tensors among ``names``: all but a checkpoint's training state."""
    if "training_state" not in src.meta:
        return list(names)
    return [k for k in names if not k.startswith(_STATE_PREFIX)]


def _registered_class(where: str, name: str) -> Any:
    if name not in _REGISTRY:
        raise ValueError(
            f"{where} holds a {name!r}, which this mdnkit cannot load "
            f"(known: {', '.join(_REGISTRY)})"
        )
    mod, attr = _REGISTRY[name]
    return getattr(importlib.import_module(mod), attr)


def load_header(path: str | os.PathLike) -> dict[str, str]:
    """The verified header of a model file: ``format``, ``format_version``, ``class``,
    ``config`` and ``user`` (JSON objects, as strings) and ``checksum``, without building the
    model.

    Example:
        >>> load_header("model.mdn")["class"]  # doctest: +SKIP
        'MDN'
    """
    with _opened(path) as src:
        _verify(src, check_values=False)
        return dict(src.meta)


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The user ``metadata`` dict stored by :func:`save` (the file is verified first).

    Example:
        >>> load_metadata("model.mdn")["columns"]  # doctest: +SKIP
        ['a', 'b', 'y']
    """
    with _opened(path) as src:
        _verify(src, check_values=False)
        return src.user


def load(path: str | os.PathLike) -> Any:
    """Load a model written by :func:`save`; modules come back in evaluation mode.

    Raises ``ValueError`` for a file that is corrupt, truncated, modified, of a newer format
    version, not an mdnkit model file, whose tensors do not fit its configuration, or whose
    weights are not finite (or scales not positive), and ``FileNotFoundError`` when there is
    no file.  Memory: about the file's size plus the model's; nothing is built before the
    file's tensors are checked against its configuration.

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
    with _opened(path) as src:
        infos = _verify(src, check_values=True)
        name = src.meta["class"]
        cls = _registered_class(src.where, name)
        dtype = _expected(src, cls, name, infos)  # nothing allocated for a wrong config
        obj = _build(src, cls, name, dtype)
        meta = dict(src.meta)
    if isinstance(obj, torch.nn.Module):
        from .training import mark_trained

        mark_trained(obj)  # fit(..., prepare="auto") continues from these weights
    return obj, meta
