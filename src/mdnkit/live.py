"""The live engine behind ``mdnkit serve``: streams of events in, a model's events out, in time.

A :class:`LiveEngine` holds one trained :class:`~mdnkit.MDNRNN` and any number (up to a limit)
of independent *streams*, each with its own :class:`~mdnkit.sequence.StepGenerator` state, its
mode and its temperatures.  Every stream always holds ``pending``: a sample of its next event
given everything it has read so far.  An incoming event is read (``pending = g.step(event)``)
and then, by the stream's mode:

``echo``
    ``pending`` is sent at once: one prediction per event.
``call``
    nothing is sent; after ``silence`` seconds without an event the model answers: it plays
    ``pending``, reads it back, plays the next one ... (``response_length`` events, or until the
    player plays again).  With a time column (``dt_column``) each event is sent its own
    ``dt`` after the previous one; without one every ``interval`` seconds.
``generate``
    the model plays continuously, in the same rhythm; incoming events are read into the state
    (they steer it) and not answered one by one.

The engine knows nothing about the network: a transport (OSC, WebSocket) parses a message into
plain Python values and calls :meth:`LiveEngine.event`, :meth:`LiveEngine.set_temperature`,
:meth:`LiveEngine.set_mode` or :meth:`LiveEngine.reset`; every check of those values lives here,
and a value that fails one is *dropped*: counted by kind in :class:`Drops` (one log line per
kind, at most every ``every`` seconds), never raised.  All methods run in one asyncio event
loop; the timed modes need a running loop.

Example:
    >>> import asyncio
    >>> from mdnkit import MDNRNN
    >>> engine = LiveEngine(MDNRNN(3, hidden_size=8), LiveSettings(seed=0))
    >>> out = []
    >>> async def play():
    ...     engine.event(0, [0.1, 0.2, 0.3], lambda sid, e: out.append(e))
    ...     engine.event(0, [1.0, float("nan"), 0.0], lambda sid, e: out.append(e))
    >>> asyncio.run(play())
    >>> len(out), engine.drops.counts["nonfinite"]
    (1, 1)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

if TYPE_CHECKING:
    from .sequence import MDNRNN

__all__ = ["LiveMode", "LiveSettings", "Drops", "LiveStream", "LiveEngine", "DROP_KINDS", "LOG"]

#: The logger of the live front (``mdnkit.live``).
LOG = logging.getLogger("mdnkit.live")

LiveMode = Literal["echo", "call", "generate"]
TEMPERATURES = ("temperature", "sigma_temperature", "pen_temperature")

#: Why a message was dropped: kind -> what was wrong.
DROP_KINDS: dict[str, str] = {
    "oversize": "a datagram or message larger than the limit",
    "parse": "bytes that are not an OSC packet / text that is not a JSON object",
    "bundle": "an OSC bundle with more messages than the limit",
    "address": "an unknown address or message type",
    "arity": "the wrong number of arguments",
    "type": "an argument of the wrong type (a string or blob for a number, a bool ...)",
    "nonfinite": "NaN or infinity in an event",
    "range": "a value out of range (|v| > max_abs, a pen state not in 0..P-1, a temperature < 0)",
    "stream": "a stream id that is not a whole number in [0, 2**31) or a string of 1..64 characters",
    "streams": "a new stream beyond max_streams",
    "mode": "a mode other than echo, call, generate",
    "reply": "a reply address that is not an allowed IP address and port",
    "rate": "more messages per second than the limit (WebSocket)",
    "slow": "a client too slow to read its predictions (its queue is full)",
    "internal": "an unexpected error while handling a message (a bug: please report)",
}

Sink = Callable[[Any, np.ndarray], None]


@dataclass
class LiveSettings:
    """How the engine plays: the defaults of new streams and the limits.

    ``mode`` new streams' mode; ``silence`` (s) the pause after which ``call`` answers;
    ``interval`` (s) between generated events when there is no time column; ``dt_column`` the
    index of the column holding the time since the previous event (None: no time column),
    multiplied by ``timescale`` (2: half speed); ``min_dt``/``max_dt`` (s) bound the waits;
    ``response_length`` events per answer; ``max_streams`` streams at once; ``max_abs`` the largest magnitude accepted in an
    event; ``seed`` the random seed (stream ``n`` draws from seed + n; None: fresh entropy);
    the three temperatures new streams start with (the project's convention).
    """

    mode: LiveMode = "echo"
    silence: float = 1.0
    interval: float = 0.1
    dt_column: int | None = None
    timescale: float = 1.0
    min_dt: float = 0.002
    max_dt: float = 2.0
    response_length: int = 64
    max_streams: int = 16
    max_abs: float = 1e6
    seed: int | None = 0
    temperature: float = 1.0
    sigma_temperature: float = 1.0
    pen_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in get_args(LiveMode):
            raise ValueError(f"mode must be one of {get_args(LiveMode)}, found {self.mode!r}")
        for name in (
            "silence",
            "interval",
            "timescale",
            "min_dt",
            "max_dt",
            "max_abs",
            *TEMPERATURES,
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, found {v!r}")
        for name in ("response_length", "max_streams"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, found {v!r}")


class Drops:
    """Dropped messages, counted by kind (:data:`DROP_KINDS`); one log line per kind at most
    every ``every`` seconds, saying how many were dropped since the last line.

    Example:
        >>> d = Drops(log=lambda msg: None)
        >>> d.drop("arity", "3 values, expected 4"); d.drop("arity")
        >>> d.counts["arity"], d.total
        (2, 2)
    """

    def __init__(
        self,
        log: Callable[[str], None] | None = None,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counts: dict[str, int] = dict.fromkeys(DROP_KINDS, 0)
        self.total = 0
        self._log = log or LOG.warning
        self._every, self._clock = float(every), clock
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def drop(self, kind: str, detail: str = "") -> None:
        """Count one dropped message of ``kind`` (with a short ``detail`` for the log)."""
        if kind not in self.counts:
            kind = "internal"
        self.counts[kind] += 1
        self.total += 1
        self._since[kind] = self._since.get(kind, 0) + 1
        now = self._clock()
        last = self._last.get(kind)
        if last is None or now - last >= self._every:
            n = self._since.pop(kind)
            more = f" ({n} since the last report)" if last is not None else ""
            tail = f": {detail}" if detail else ""
            self._log(f"dropped {kind} ({DROP_KINDS[kind]}){tail}{more}")
            self._last[kind] = now

    def nonzero(self) -> dict[str, int]:
        """The kinds with at least one drop."""
        return {k: v for k, v in self.counts.items() if v}


@dataclass(eq=False)
class LiveStream:
    """One stream: its generator, the sample of its next event, where its events go, its mode,
    and the timer / task of an answer or a continuous generation."""

    id: Any
    generator: Any
    pending: np.ndarray
    sink: Sink
    mode: LiveMode
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task | None = None
    sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        """Cancel a waiting answer and a playing one."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


class LiveEngine:
    """Streams of events in, the model's events out (see the module docstring).

    Every method that takes values from the network checks them and drops (counts) bad ones;
    none raises for bad input.  ``on_send(stream, event)`` is called for every event sent (for
    statistics), after the stream's sink.
    """

    def __init__(self, model: MDNRNN, settings: LiveSettings | None = None, drops=None) -> None:
        from .sequence import MDNRNN  # torch: imported when an engine is made

        if not isinstance(model, MDNRNN):
            raise TypeError(f"the live engine needs an MDNRNN, found {type(model).__name__}")
        self.model = model.eval()
        self.settings = s = settings or LiveSettings()
        self.drops: Drops = drops or Drops()
        self.columns = model.event_dim + (1 if model.pen_states else 0)
        if model.reward or model.done or model.input_dim or model.context_dim:
            raise ValueError(
                "serve plays models whose events are their only input: found a model with "
                "reward, done, per-step inputs or a context"
            )
        if s.dt_column is not None and not 0 <= s.dt_column < model.event_dim:
            raise ValueError(
                f"dt_column must index a continuous column (0..{model.event_dim - 1}), "
                f"found {s.dt_column}"
            )
        self.temperatures = {t: float(getattr(s, t)) for t in TEMPERATURES}
        self.streams: dict[Any, LiveStream] = {}
        self.events_in = 0
        self.events_out = 0
        self._opened = 0

    # ---------------------------------------------------------------- checks
    def check_stream_id(self, sid: Any) -> Any:
        """``sid`` when it is a valid stream id, else None (and a ``stream`` drop)."""
        if isinstance(sid, float) and sid.is_integer():  # Pure Data sends every number so
            sid = int(sid)
        if isinstance(sid, (int, np.integer)) and not isinstance(sid, bool):
            if 0 <= sid < 2**31:
                return int(sid)
        elif isinstance(sid, str) and 1 <= len(sid) <= 64 and sid.isprintable():
            return sid
        self.drops.drop("stream", f"{type(sid).__name__} {str(sid)[:40]!r}")
        return None

    def check_event(self, values: Sequence[Any]) -> np.ndarray | None:
        """``values`` as a float32 event row when they are one, else None (and a drop)."""
        n = self.columns
        if len(values) != n:
            self.drops.drop("arity", f"an event of {len(values)} values, expected {n}")
            return None
        if not all(_is_number(v) for v in values):
            bad = next(type(v).__name__ for v in values if not _is_number(v))
            self.drops.drop("type", f"an event value of type {bad}, expected numbers")
            return None
        try:
            e = [float(v) for v in values]
        except OverflowError:  # an int beyond a float's range (JSON allows 10**400)
            self.drops.drop("range", "an event value beyond a float's range")
            return None
        if not all(map(math.isfinite, e)):
            self.drops.drop("nonfinite", "NaN or infinity in an event")
            return None
        top = self.settings.max_abs
        if any(v > top or v < -top for v in e):
            self.drops.drop("range", f"an event value beyond +-{top:g}")
            return None
        p = self.model.pen_states
        if p and (e[-1] != round(e[-1]) or not 0 <= e[-1] < p):
            self.drops.drop("range", f"pen state {e[-1]:g}, expected an integer in 0..{p - 1}")
            return None
        return np.array(e, dtype=np.float32)

    # ---------------------------------------------------------------- streams
    def stream(self, sid: Any, sink: Sink | None = None, mode: LiveMode | None = None):
        """The stream ``sid`` (opened when new, if there is room; None and a ``streams`` drop
        otherwise); ``sink`` replaces where its events go."""
        s = self.streams.get(sid)
        if s is None:
            if len(self.streams) >= self.settings.max_streams:
                self.drops.drop("streams", f"stream {sid!r}: already {len(self.streams)} streams")
                return None
            seed = None if self.settings.seed is None else self.settings.seed + self._opened
            self._opened += 1
            g = self.model.generator(generator=seed, **self.temperatures)
            s = LiveStream(sid, g, g.step(), sink or _nowhere, mode or self.settings.mode)
            self.streams[sid] = s
            if s.mode == "generate":
                self._start(s, None)
        elif sink is not None:
            s.sink = sink
        return s

    def event(self, sid: Any, values: Sequence[Any], sink: Sink | None = None) -> bool:
        """Read one event of stream ``sid`` (answering it as the stream's mode says); False
        when the message was dropped."""
        sid = self.check_stream_id(sid)
        e = None if sid is None else self.check_event(values)
        if e is None:
            return False
        s = self.stream(sid, sink)
        if s is None:
            return False
        self.events_in += 1
        if s.mode == "call":
            s.stop()  # the player plays: the model listens
        s.pending = s.generator.step(e)
        if s.mode == "echo":
            self._send(s, s.pending)
        elif s.mode == "call":
            loop = asyncio.get_running_loop()
            s.timer = loop.call_later(self.settings.silence, self._answer, s)
        return True

    def _answer(self, s: LiveStream) -> None:
        s.timer = None
        if self.streams.get(s.id) is s:
            self._start(s, self.settings.response_length)

    def _start(self, s: LiveStream, limit: int | None) -> None:
        s.stop()
        s.task = asyncio.get_running_loop().create_task(self._play(s, limit))

    def delay(self, event: np.ndarray) -> float:
        """Seconds to wait before sending ``event``: its ``dt`` (bounded), else ``interval``."""
        st = self.settings
        if st.dt_column is None:
            return st.interval
        return min(max(float(event[st.dt_column]) * st.timescale, st.min_dt), st.max_dt)

    async def _play(self, s: LiveStream, limit: int | None) -> None:
        """Send the stream's events one after another, each at its time, reading each back."""
        loop = asyncio.get_running_loop()
        due, n = loop.time(), 0
        while limit is None or n < limit:
            e = s.pending
            due = max(due + self.delay(e), loop.time() - 0.05)  # late: no catch-up burst
            await asyncio.sleep(max(due - loop.time(), 0.0))
            if s.pending is not e:  # the player's event arrived meanwhile: play from it
                continue
            self._send(s, e)
            s.pending = s.generator.step(e)
            n += 1

    def _send(self, s: LiveStream, e: np.ndarray) -> None:
        self.events_out += 1
        s.sent += 1
        try:
            s.sink(s.id, e)
        except Exception as err:  # a transport's failure never stops the engine
            self.drops.drop("internal", f"sending to stream {s.id!r}: {err!r}")

    # ---------------------------------------------------------------- controls
    def set_temperature(self, name: str, value: Any, sid: Any = None) -> bool:
        """Set one of the three temperatures, for stream ``sid`` or (None) for every stream
        and the streams to come; False when dropped."""
        if name not in TEMPERATURES:
            self.drops.drop("address", f"unknown temperature {name!r}")
            return False
        if not _is_number(value):
            self.drops.drop("type", f"{name} of type {type(value).__name__}, expected a number")
            return False
        v = float(value) if abs(value) < 1e300 else math.inf
        if not math.isfinite(v) or v < 0 or v > 1e3:
            self.drops.drop("range", f"{name} {v!r}, expected a number in [0, 1000]")
            return False
        targets = self._targets(sid)
        if targets is None:
            return False
        if sid is None:
            self.temperatures[name] = v
        for s in targets:
            s.generator.retune(**{name: v})
        return True

    def set_mode(self, mode: Any, sid: Any = None) -> bool:
        """Switch stream ``sid`` (None: every stream, and the default) to ``mode``."""
        if mode not in get_args(LiveMode):
            self.drops.drop("mode", f"{str(mode)[:20]!r}")
            return False
        targets = self._targets(sid)
        if targets is None:
            return False
        if sid is None:
            self.settings.mode = mode
        for s in targets:
            s.stop()
            s.mode = mode
            if mode == "generate":
                self._start(s, None)
        return True

    def reset(self, sid: Any = None, sink: Sink | None = None) -> bool:
        """Forget stream ``sid``'s past (opening it when new: a stream to generate on), or
        (None) close every stream."""
        if sid is None:
            self.close()
            return True
        sid = self.check_stream_id(sid)
        if sid is None:
            return False
        s = self.streams.get(sid)
        if s is None:
            return self.stream(sid, sink) is not None
        s.stop()
        if sink is not None:
            s.sink = sink
        s.generator.reset()
        s.pending = s.generator.step()
        if s.mode == "generate":
            self._start(s, None)
        return True

    def remove(self, sid: Any) -> None:
        """Close one stream (a transport's client went away)."""
        s = self.streams.pop(sid, None)
        if s is not None:
            s.stop()

    def close(self) -> None:
        """Stop and forget every stream."""
        for s in self.streams.values():
            s.stop()
        self.streams.clear()

    def _targets(self, sid: Any) -> list[LiveStream] | None:
        if sid is None:
            return list(self.streams.values())
        sid = self.check_stream_id(sid)
        if sid is None:
            return None
        s = self.stream(sid)
        return None if s is None else [s]

    def stats(self) -> dict[str, Any]:
        """Counts: events read and sent, open streams, drops by kind."""
        return {
            "events_in": self.events_in,
            "events_out": self.events_out,
            "streams": len(self.streams),
            "dropped": self.drops.total,
            "drops": self.drops.nonzero(),
        }


def _nowhere(sid: Any, event: np.ndarray) -> None:
    """The sink of a stream that has no client yet."""
