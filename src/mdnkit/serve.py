"""``mdnkit serve``: a trained MDN-RNN played live over OSC (UDP) and a local web page.

::

    mdnkit serve MODEL [--osc [HOST:]PORT] [--web [HOST:]PORT] [--mode echo|call|generate]
                       [--silence S] [--interval S] [--dt-column auto|none|N] [--seed N] ...

The engine (streams, modes, temperatures, checks) is :class:`~mdnkit.live.LiveEngine`; this
module holds the two transports and the command:

* **OSC** (python-osc parses the packets): ``/mdnkit/event STREAM v1 .. vN`` in,
  ``/mdnkit/prediction STREAM v1 .. vN`` out, live controls ``/mdnkit/temperature``,
  ``/mdnkit/sigma_temperature``, ``/mdnkit/pen_temperature``, ``/mdnkit/mode``,
  ``/mdnkit/reset``, ``/mdnkit/reply``, ``/mdnkit/stats`` (docs/live.md has the table).
  Predictions go to the address that last sent to the stream, or to the one named by
  ``/mdnkit/reply`` / ``--reply``.
* **Web**: ``GET /`` returns the drawing pad (package data ``mdnkit/web/pad.html``, the only
  thing served), ``/ws`` a WebSocket speaking JSON (``{"type": "event", "event": [...]}`` in,
  ``{"type": "prediction", "event": [...]}`` out); each connection is its own stream.

Both bind 127.0.0.1 unless told otherwise.  Every bad message is counted and dropped
(:class:`~mdnkit.live.Drops`); nothing from the network can raise into the event loop.

Example:
    >>> from mdnkit import MDNRNN
    >>> with serve_in_thread(MDNRNN(3, hidden_size=8), osc=("127.0.0.1", 0)) as running:
    ...     host, port = running.server.osc_address
    >>> port > 0
    True
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import math
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from .live import LOG, TEMPERATURES, LiveEngine, LiveSettings

__all__ = [
    "OscLimits",
    "WebLimits",
    "LiveServer",
    "ServerThread",
    "serve_in_thread",
    "encode_osc",
    "pad_page",
    "add_serve_parser",
    "run_serve",
]

PREFIX = "/mdnkit/"


@dataclass(frozen=True)
class OscLimits:
    """What one OSC datagram may hold: ``max_datagram`` bytes, ``max_bundle`` messages."""

    max_datagram: int = 8192
    max_bundle: int = 32


@dataclass(frozen=True)
class WebLimits:
    """What one WebSocket client may send: ``max_message`` characters per message,
    ``rate`` messages per second (``burst`` at once); ``max_frame`` bytes closes the
    connection (the protocol's own limit); ``queue`` predictions waiting for a slow reader."""

    max_message: int = 2048
    rate: float = 200.0
    burst: int = 400
    max_frame: int = 65536
    queue: int = 256


# ------------------------------------------------------------------------------------ OSC
def _osc_string(text: str) -> bytes:
    b = text.encode("utf-8") + b"\0"
    return b + b"\0" * (-len(b) % 4)


def encode_osc(address: str, *args: Any) -> bytes:
    """One OSC 1.0 message: ``int`` → ``i``, ``float`` → ``f`` (32 bits), ``str`` → ``s``.

    Example:
        >>> encode_osc("/a", 1, 0.5)
        b'/a\\x00\\x00,if\\x00\\x00\\x00\\x00\\x01?\\x00\\x00\\x00'
    """
    tags, data = [","], []
    for a in args:
        if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            tags.append("i")
            data.append(struct.pack(">i", int(a)))
        elif isinstance(a, (float, np.floating)):
            tags.append("f")
            data.append(struct.pack(">f", float(a)))
        elif isinstance(a, str):
            tags.append("s")
            data.append(_osc_string(a))
        else:
            raise TypeError(f"an OSC argument must be an int, float or str, found {type(a)}")
    return _osc_string(address) + _osc_string("".join(tags)) + b"".join(data)


def _prediction(sid: Any, event: np.ndarray) -> bytes:
    head = _osc_string("/mdnkit/prediction")
    n = len(event)
    if isinstance(sid, int):
        return head + _osc_string(",i" + "f" * n) + struct.pack(f">i{n}f", sid, *event.tolist())
    return head + _osc_string(",s" + "f" * n) + _osc_string(sid) + struct.pack(f">{n}f", *event)


class _OscProtocol(asyncio.DatagramProtocol):
    """Datagrams in: size check, parse (python-osc), dispatch; predictions out on the same
    socket.  Nothing raised here reaches the event loop."""

    def __init__(self, engine: LiveEngine, limits: OscLimits, reply, loopback: bool) -> None:
        self.engine, self.limits, self.reply, self.loopback = engine, limits, reply, loopback
        self.transport: asyncio.DatagramTransport | None = None
        self._sinks: dict[Any, Any] = {}
        from pythonosc.osc_packet import OscPacket  # the live extra

        self._packet = OscPacket
        n = engine.columns
        self._event_head = _osc_string("/mdnkit/event") + _osc_string(",i" + "f" * n)
        self._event_size = len(self._event_head) + 4 * (1 + n)
        self._event_format = f">i{n}f"
        self._handlers = {
            "event": self._event,
            "temperature": self._temperature,
            "sigma_temperature": self._temperature,
            "pen_temperature": self._temperature,
            "mode": self._mode,
            "reset": self._reset,
            "reply": self._reply,
            "stats": self._stats,
        }

    def connection_made(self, transport) -> None:
        self.transport = transport

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable: ignore
        pass

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            self._datagram(data, addr[:2])
        except Exception as err:  # pragma: no cover - a bug; counted, never raised
            self.engine.drops.drop("internal", repr(err)[:200])

    def _datagram(self, data: bytes, addr) -> None:
        if len(data) == self._event_size and data.startswith(self._event_head):
            # the common case, an event with an int stream id and 32-bit floats: read directly
            sid, *values = struct.unpack_from(self._event_format, data, len(self._event_head))
            self.engine.event(sid, values, self._sink(addr))
            return
        drops = self.engine.drops
        if len(data) > self.limits.max_datagram:
            drops.drop("oversize", f"{len(data)} bytes > {self.limits.max_datagram}")
            return
        try:
            messages = self._packet(data).messages
        except Exception as err:
            drops.drop("parse", str(err)[:120])
            return
        if len(messages) > self.limits.max_bundle:
            drops.drop("bundle", f"{len(messages)} messages > {self.limits.max_bundle}")
            return
        for timed in messages:  # time tags are ignored: everything is played now
            msg = timed.message
            address = msg.address
            handler = None
            if address.startswith(PREFIX):
                handler = self._handlers.get(address[len(PREFIX) :])
            if handler is None:
                drops.drop("address", repr(address)[:80])
                continue
            handler(address[len(PREFIX) :], msg.params, addr)

    def _sink(self, addr):
        sink = self._sinks.get(addr)
        if sink is None:
            if len(self._sinks) > 1024:
                self._sinks.clear()
            sink = self._sinks[addr] = lambda sid, e: self._send(_prediction(sid, e), addr)
        return sink

    def _send(self, dgram: bytes, addr) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(dgram, self.reply or addr)

    def _arity(self, name: str, params, low: int, high: int) -> bool:
        if low <= len(params) <= high:
            return True
        want = str(low) if low == high else f"{low} to {high}"
        self.engine.drops.drop("arity", f"/mdnkit/{name} with {len(params)} arguments, not {want}")
        return False

    def _event(self, name: str, params, addr) -> None:
        if self._arity(name, params, 1, 1 + self.engine.columns):
            self.engine.event(params[0], params[1:], self._sink(addr))

    def _temperature(self, name: str, params, addr) -> None:
        if self._arity(name, params, 1, 2):
            self.engine.set_temperature(name, params[0], *params[1:])

    def _mode(self, name: str, params, addr) -> None:
        if self._arity(name, params, 1, 2):
            self.engine.set_mode(params[0], *params[1:])

    def _reset(self, name: str, params, addr) -> None:
        if self._arity(name, params, 0, 1):
            self.engine.reset(*params, sink=self._sink(addr))

    def _stats(self, name: str, params, addr) -> None:
        if self._arity(name, params, 0, 0):
            st = self.engine.stats()
            counts = [st["events_in"], st["events_out"], st["streams"], st["dropped"]]
            drops = [x for kind, n in st["drops"].items() for x in (kind, n)]
            self._send(encode_osc("/mdnkit/stats", *counts, *drops), addr)

    def _reply(self, name: str, params, addr) -> None:
        """``reply`` (back to the sender), ``reply PORT`` (the sender's host), ``reply HOST
        PORT``: where predictions go from now on."""
        if not self._arity(name, params, 0, 2):
            return
        if not params:
            self.reply = None
            return
        host, port = (addr[0], params[0]) if len(params) == 1 else params
        target = _reply_address(host, port, self.loopback)
        if target is None:
            self.engine.drops.drop("reply", f"{str(host)[:40]!r} {str(port)[:10]!r}")
        else:
            self.reply = target


def _reply_address(host: Any, port: Any, loopback_only: bool):
    """(host, port) when ``host`` is an IP address literal (loopback only, when the server is
    bound to loopback) and ``port`` an int in 1..65535; else None.  No name is looked up."""
    if isinstance(port, float) and port.is_integer():  # Pure Data sends every number so
        port = int(port)
    if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not 1 <= port <= 65535 or (loopback_only and not ip.is_loopback):
        return None
    return (str(ip), port)


# ------------------------------------------------------------------------------------ web
def pad_page() -> str:
    """The web pad: the one page the web server serves (package data ``web/pad.html``)."""
    return resources.files("mdnkit").joinpath("web", "pad.html").read_text(encoding="utf-8")


class _Bucket:
    """A token bucket: ``rate`` messages per second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.last = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _json_event(event: np.ndarray) -> str:
    values = [round(v, 6) for v in event.tolist()]
    return json.dumps({"type": "prediction", "event": values}, allow_nan=False)


class _WebFront:
    """``GET /`` → the pad, ``/ws`` → one stream per connection, JSON both ways."""

    def __init__(self, engine: LiveEngine, limits: WebLimits) -> None:
        self.engine, self.limits = engine, limits
        self.page = pad_page()
        self.clients = 0
        #: the Origin headers a WebSocket may come with: this server's own page
        self.origins: set[str] = set()

    def process_request(self, connection, request):
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and origin not in self.origins:  # another site's page
                return connection.respond(403, "forbidden origin\n")
            return None  # go on with the WebSocket handshake
        if path not in ("/", "/index.html"):
            return connection.respond(404, "not found\n")
        response = connection.respond(200, self.page)
        del response.headers["Content-Type"]  # text/plain: replaced, not added to
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'"
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    def hello(self, sid: str) -> str:
        m, s = self.engine.model, self.engine.settings
        return json.dumps(
            {
                "type": "hello",
                "stream": sid,
                "columns": self.engine.columns,
                "event_dim": m.event_dim,
                "pen_states": m.pen_states,
                "dt_column": s.dt_column,
                "scale": [round(float(v), 6) for v in m.scale.tolist()],
                "mode": "call",
                "temperatures": self.engine.temperatures,
                "limits": {"max_message": self.limits.max_message, "rate": self.limits.rate},
            }
        )

    async def client(self, conn) -> None:
        from websockets.exceptions import ConnectionClosed

        self.clients += 1
        sid = f"web-{self.clients}"
        queue: asyncio.Queue[str] = asyncio.Queue(self.limits.queue)

        def sink(_sid, event: np.ndarray) -> None:
            self._put(queue, _json_event(event))

        if self.engine.stream(sid, sink, mode="call") is None:
            await conn.close(1013, "too many streams")
            return
        self._put(queue, self.hello(sid))
        writer = asyncio.get_running_loop().create_task(self._writer(conn, queue))
        bucket = _Bucket(self.limits.rate, self.limits.burst)
        try:
            async for text in conn:
                try:
                    self.message(sid, text, bucket, queue)
                except Exception as err:  # pragma: no cover - a bug; counted, never raised
                    self.engine.drops.drop("internal", repr(err)[:200])
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            self.engine.remove(sid)

    def _put(self, queue: asyncio.Queue, text: str) -> None:
        try:
            queue.put_nowait(text)
        except asyncio.QueueFull:
            self.engine.drops.drop("slow", "a WebSocket client's queue is full")

    async def _writer(self, conn, queue: asyncio.Queue) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                await conn.send(await queue.get())
        except ConnectionClosed:
            pass

    def message(self, sid: str, text: Any, bucket: _Bucket, queue: asyncio.Queue) -> None:
        """One message from a client: checked, then handed to the engine."""
        drops, engine = self.engine.drops, self.engine
        if not bucket.take():
            drops.drop("rate", f"over {self.limits.rate:g} messages per second")
            return
        if not isinstance(text, str) or len(text) > self.limits.max_message:
            kind = "oversize" if len(text) > self.limits.max_message else "parse"
            drops.drop(kind, f"a {type(text).__name__} message of {len(text)} characters")
            return
        try:
            obj = json.loads(text)
        except Exception as err:  # JSONDecodeError, RecursionError, int-digit limit ...
            drops.drop("parse", f"{type(err).__name__}: {str(err)[:80]}")
            return
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "event":
            event = obj.get("event")
            if not isinstance(event, list):
                drops.drop("type", f"an event of type {type(event).__name__}, expected a list")
            else:
                engine.event(sid, event)
        elif kind == "temperature" and obj.get("name") in TEMPERATURES:
            engine.set_temperature(obj["name"], obj.get("value"), sid)
        elif kind == "mode":
            engine.set_mode(obj.get("mode"), sid)
        elif kind == "clear":
            engine.reset(sid)
        elif kind == "stats":
            self._put(queue, json.dumps({"type": "stats", **engine.stats()}))
        else:
            drops.drop("address", f"message type {str(kind)[:40]!r}")


# ------------------------------------------------------------------------------------ server
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LiveServer:
    """The OSC endpoint and/or the web server around one :class:`~mdnkit.live.LiveEngine`.

    ``osc`` and ``web`` are ``(host, port)`` or None (port 0: any free port; the bound
    addresses are ``osc_address`` / ``web_address`` after :meth:`start`).  ``reply`` fixes
    where OSC predictions go.  Use inside a running event loop: ``await server.start()``,
    ``await server.stop()``; or :func:`serve_in_thread`.
    """

    def __init__(
        self,
        model: Any,
        settings: LiveSettings | None = None,
        *,
        osc: tuple[str, int] | None = None,
        web: tuple[str, int] | None = None,
        reply: tuple[str, int] | None = None,
        osc_limits: OscLimits | None = None,
        web_limits: WebLimits | None = None,
    ) -> None:
        if osc is None and web is None:
            raise ValueError("serve needs --osc, --web or both")
        self.engine = LiveEngine(model, settings)
        self.osc, self.web, self.reply = osc, web, reply
        self.osc_limits, self.web_limits = osc_limits or OscLimits(), web_limits or WebLimits()
        self.osc_address: tuple[str, int] | None = None
        self.web_address: tuple[str, int] | None = None
        self._transport = None
        self._web_server = None

    async def start(self) -> None:
        """Bind the sockets (OSError when a port is taken)."""
        loop = asyncio.get_running_loop()
        if self.osc is not None:
            host, port = self.osc
            proto = _OscProtocol(self.engine, self.osc_limits, self.reply, _is_loopback(host))
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: proto, local_addr=(host, port)
            )
            self.osc_address = self._transport.get_extra_info("sockname")[:2]
        if self.web is not None:
            await self._start_web(*self.web)

    async def _start_web(self, host: str, port: int) -> None:
        from websockets.asyncio.server import serve

        front = _WebFront(self.engine, self.web_limits)
        self._web_server = await serve(
            front.client,
            host,
            port,
            process_request=front.process_request,
            max_size=self.web_limits.max_frame,
            max_queue=16,
        )
        self.web_address = self._web_server.sockets[0].getsockname()[:2]
        bound = self.web_address[1]
        names = {host, "127.0.0.1", "localhost", "[::1]"} if _is_loopback(host) else {host}
        front.origins = {f"http://{h}:{bound}" for h in names}  # no Origin: a script, allowed

    async def stop(self) -> None:
        """Close the sockets and stop every stream."""
        self.engine.close()
        if self._transport is not None:
            self._transport.close()
        if self._web_server is not None:
            self._web_server.close()
            try:  # a client that keeps its connection open does not hold the stop up
                await asyncio.wait_for(self._web_server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                pass

    def describe(self) -> str:
        """Where it listens, in one line."""
        parts = []
        if self.osc_address:
            parts.append(f"OSC udp://{self.osc_address[0]}:{self.osc_address[1]}")
        if self.web_address:
            parts.append(f"web http://{self.web_address[0]}:{self.web_address[1]}/")
        return ", ".join(parts)


class ServerThread:
    """A :class:`LiveServer` running in its own thread and event loop (tests, notebooks,
    benchmarks).  ``stop()`` (or leaving the ``with`` block, or ``timeout`` seconds) ends it."""

    def __init__(self, server: LiveServer, timeout: float | None = None) -> None:
        self.server, self.timeout = server, timeout
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="mdnkit-serve")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as err:  # reported by start()
            self._error = err
            self._ready.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        await self.server.start()
        self._ready.set()
        try:
            await asyncio.wait_for(self._stop.wait(), self.timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            await self.server.stop()

    def start(self) -> ServerThread:
        """Start and wait until the sockets are bound."""
        self.thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn, *args) -> Any:
        """Run ``fn(*args)`` in the server's loop and return its result."""
        done, out = threading.Event(), {}

        def run():
            try:
                out["value"] = fn(*args)
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(10)
        return out.get("value")

    def stop(self) -> None:
        """Stop the server and wait for the thread."""
        if self.thread.is_alive() and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_thread(model: Any, settings: LiveSettings | None = None, **kwargs) -> ServerThread:
    """Start a :class:`LiveServer` (same arguments; ``timeout`` seconds, default 600, after
    which it stops by itself) in a background thread; returns the running
    :class:`ServerThread`."""
    timeout = kwargs.pop("timeout", 600.0)
    return ServerThread(LiveServer(model, settings, **kwargs), timeout).start()


# ------------------------------------------------------------------------------------ command
def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        p = -1
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected [HOST:]PORT with PORT in 0..65535, found {text!r}"
        )
    return host, p


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found {text!r}")
    return v


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return int(text)


def add_serve_parser(sub) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the ``mdnkit`` command's subparsers."""
    s = sub.add_parser(
        "serve",
        help="play an MDN-RNN live over OSC and/or a local web page",
        description="Play a trained MDN-RNN live: players send events over OSC (UDP) or draw on "
        "a local web page, and the model answers event by event (docs/live.md has the OSC "
        "address space). Binds 127.0.0.1 unless a host is given; Ctrl-C stops it.",
        epilog="examples:\n  mdnkit serve touch.mdn --osc 5000\n"
        "  mdnkit serve kanji.mdn --web 8000 --mode generate --temperature 0.5\n"
        "  mdnkit serve touch.mdn --osc 0.0.0.0:5000 --reply 192.168.1.20:5001 --mode call",
    )
    s.add_argument("model", metavar="MODEL", help="a model file of an MDN-RNN")
    s.add_argument("--osc", type=_endpoint, metavar="[HOST:]PORT", help="OSC over UDP")
    s.add_argument("--web", type=_endpoint, metavar="[HOST:]PORT", help="the web drawing pad")
    s.add_argument("--reply", type=_endpoint, metavar="HOST:PORT", help="send OSC replies here")
    s.add_argument("--mode", choices=("echo", "call", "generate"), default="echo",
                   help="echo: predict the next event after each one; call: answer a phrase "
                   "after --silence; generate: play on by itself")  # fmt: skip
    s.add_argument("--silence", type=_number, default=1.0, help="seconds before call answers")
    s.add_argument("--interval", type=_number, default=0.1, help="seconds between events")
    s.add_argument("--dt-column", default="auto", metavar="auto|none|N",
                   help="the event column that holds the time step (auto: from the model file)")  # fmt: skip
    s.add_argument("--timescale", type=_number, default=1.0, help="multiplies the dt column")
    s.add_argument(
        "--max-dt", type=_number, default=2.0, help="longest wait between played events, seconds"
    )
    s.add_argument("--response-length", type=_count, default=64, help="events in one call answer")
    s.add_argument("--max-streams", type=_count, default=16, help="independent players at once")
    s.add_argument("--temperature", type=_number, default=1.0, help="divides the mixture logits")
    s.add_argument("--sigma-temperature", type=_number, default=1.0,
                   help="multiplies the component variances")  # fmt: skip
    s.add_argument(
        "--pen-temperature", type=_number, default=1.0, help="divides the pen-state logits"
    )
    s.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    return s


def _dt_column(choice: str, model: Any, metadata: dict[str, Any]) -> int | None:
    """``--dt-column``: ``none``, an index, or ``auto``: the metadata's ``dt_column``, else
    the position of a column named ``dt`` in the metadata's ``columns``, else none."""
    if choice == "none":
        return None
    if choice != "auto":
        if not choice.isdigit():
            raise ValueError(
                f"--dt-column: expected auto, none or a column index, found {choice!r}"
            )
        return int(choice)
    if isinstance(metadata.get("dt_column"), int):
        return metadata["dt_column"]
    names = [str(c).lower() for c in metadata.get("columns", [])][: model.event_dim]
    return names.index("dt") if "dt" in names else None


def _settings(args, model: Any, metadata: dict[str, Any]) -> LiveSettings:
    return LiveSettings(
        mode=args.mode,
        silence=args.silence,
        interval=args.interval,
        dt_column=_dt_column(args.dt_column, model, metadata),
        timescale=args.timescale,
        max_dt=args.max_dt,
        response_length=args.response_length,
        max_streams=args.max_streams,
        seed=args.seed,
        temperature=args.temperature,
        sigma_temperature=args.sigma_temperature,
        pen_temperature=args.pen_temperature,
    )


async def _serve_until_stopped(server: LiveServer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / Windows
            pass
    await server.start()
    print(f"mdnkit serve: {server.describe()} (Ctrl-C stops)", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def run_serve(args) -> int:
    """The ``serve`` command: 0 when stopped by Ctrl-C / SIGTERM, 2 for bad input or a
    missing ``live`` extra (one line on stderr)."""
    try:
        import pythonosc  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as err:
        print(
            f"mdnkit serve: error: the live extra is missing ({err}): pip install 'mdnkit[live]'",
            file=sys.stderr,
        )
        return 2
    if args.osc is None and args.web is None:
        raise ValueError("nothing to serve: give --osc [HOST:]PORT, --web [HOST:]PORT or both")
    from .io import load_with_header
    from .sequence import MDNRNN

    model, header = load_with_header(args.model)
    if not isinstance(model, MDNRNN):
        raise ValueError(f"{args.model}: serve plays MDN-RNN models, found {header['class']}")
    metadata = json.loads(header.get("user") or "{}")
    settings = _settings(args, model, metadata)
    server = LiveServer(model, settings, osc=args.osc, web=args.web, reply=args.reply)
    logging.basicConfig(level=logging.INFO, format="mdnkit serve: %(message)s", stream=sys.stderr)
    try:
        asyncio.run(_serve_until_stopped(server))
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the handlers were set
        pass
    st = server.engine.stats()
    LOG.info(
        f"stopped: {st['events_in']} events in, {st['events_out']} out, {st['dropped']} dropped"
    )
    return 0
