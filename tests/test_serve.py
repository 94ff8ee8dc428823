"""mdnkit serve: the OSC server, the WebSocket endpoint and the web pad, on loopback.

Every server here binds 127.0.0.1 on a port the OS picks and stops by itself after a timeout.
The models are untrained (fixed seed): these tests are about the plumbing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pythonosc", reason="the live extra (python-osc) is not installed")
pytest.importorskip("websockets", reason="the live extra (websockets) is not installed")

from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder  # noqa: E402
from pythonosc.osc_message import OscMessage  # noqa: E402
from pythonosc.osc_message_builder import OscMessageBuilder  # noqa: E402
from pythonosc.udp_client import SimpleUDPClient  # noqa: E402

from mdnkit import MDNRNN, save  # noqa: E402
from mdnkit.live import DROP_KINDS, Drops, LiveSettings  # noqa: E402
from mdnkit.serve import encode_osc, serve_in_thread  # noqa: E402

DOCS = Path(__file__).parents[1] / "docs"


def _stroke_model() -> MDNRNN:
    torch.manual_seed(0)
    return MDNRNN(event_dim=2, hidden_size=16, num_layers=1, num_components=3, pen_states=2)


def _touch_model() -> MDNRNN:
    torch.manual_seed(1)
    return MDNRNN(event_dim=3, hidden_size=16, num_layers=1, num_components=3)


@pytest.fixture
def osc_server():
    settings = LiveSettings(mode="echo", seed=0, silence=0.2, interval=0.01)
    with serve_in_thread(_stroke_model(), settings, osc=("127.0.0.1", 0), timeout=60) as running:
        yield running


def _client(running) -> SimpleUDPClient:
    host, port = running.server.osc_address
    return SimpleUDPClient(host, port, timeout=2.0)


def _replies(client: SimpleUDPClient, n: int, timeout: float = 2.0) -> list[OscMessage]:
    out, end = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        data = client.receive(max(end - time.monotonic(), 0.01))
        if data:
            out.append(OscMessage(data))
    return out


def _drain(client: SimpleUDPClient) -> None:
    while client.receive(0.05):
        pass


# ------------------------------------------------------------------------------------ OSC
def test_osc_events_in_predictions_out(osc_server):
    client = _client(osc_server)
    for i in range(5):
        client.send_message("/mdnkit/event", [7, 0.5 * i, -0.25, 0])
    replies = _replies(client, 5)
    assert len(replies) == 5
    for m in replies:
        assert m.address == "/mdnkit/prediction"
        assert m.params[0] == 7 and len(m.params) == 4
        assert all(math.isfinite(v) for v in m.params[1:3]) and m.params[3] in (0.0, 1.0)
    client.send_message("/mdnkit/event", ["left hand", 0.1, 0.2, 1])  # a string stream id
    (m,) = _replies(client, 1)
    assert m.params[0] == "left hand"
    client.send_message("/mdnkit/event", [7.0, 0.1, 0.2, 1.0])  # Pure Data: every number a float
    (m,) = _replies(client, 1)
    assert m.params[0] == 7
    assert osc_server.server.engine.stats()["streams"] == 2


def test_osc_streams_are_independent(osc_server):
    """Stream 1's predictions do not depend on what stream 2 reads."""
    client = _client(osc_server)
    client.send_message("/mdnkit/temperature", 0.0)  # greedy: deterministic
    client.send_message("/mdnkit/sigma_temperature", 0.0)
    client.send_message("/mdnkit/pen_temperature", 0.0)
    first = []
    for sid, events in ((1, [[0.1, 0.2, 0]] * 3), (2, [[3.0, -2.0, 1]] * 3)):
        for e in events:
            client.send_message("/mdnkit/event", [sid, *e])
        first.append([m.params[1:] for m in _replies(client, 3)])
    client.send_message("/mdnkit/reset", [])  # forget both
    for e in [[0.1, 0.2, 0]] * 3:
        client.send_message("/mdnkit/event", [1, *e])
    again = [m.params[1:] for m in _replies(client, 3)]
    np.testing.assert_allclose(again, first[0], rtol=1e-6)


def test_osc_controls_take_effect(osc_server):
    client = _client(osc_server)
    engine = osc_server.server.engine
    client.send_message("/mdnkit/event", [0, 0.0, 0.0, 0])
    _replies(client, 1)
    client.send_message("/mdnkit/temperature", 0.5)
    client.send_message("/mdnkit/sigma_temperature", [0.25, 0])  # stream 0 only
    client.send_message("/mdnkit/pen_temperature", 0.0)
    client.send_message("/mdnkit/stats", [])
    (stats,) = _replies(client, 1)
    assert stats.address == "/mdnkit/stats" and stats.params[:3] == [1, 1, 1]
    g = engine.streams[0].generator
    assert (g.sampling.temperature, g.sampling.sigma_temperature) == (0.5, 0.25)
    assert g.sampling.pen_temperature == 0.0 and engine.temperatures["sigma_temperature"] == 1.0
    # greedy everything: the same input history gives the same prediction
    client.send_message("/mdnkit/temperature", 0.0)
    client.send_message("/mdnkit/sigma_temperature", 0.0)
    preds = []
    for _ in range(2):
        client.send_message("/mdnkit/reset", 0)
        client.send_message("/mdnkit/event", [0, 1.0, 1.0, 0])
        preds.append(_replies(client, 1)[0].params)
    assert preds[0] == preds[1]
    # call: silence, then an answer of response_length events; generate: a continuous flow
    client.send_message("/mdnkit/mode", "call")
    client.send_message("/mdnkit/event", [0, 1.0, 1.0, 0])
    assert client.receive(0.1) == b""  # nothing while the player might go on
    answer = _replies(client, 5, timeout=3.0)
    assert len(answer) == 5 and all(m.address == "/mdnkit/prediction" for m in answer)
    client.send_message("/mdnkit/mode", "generate")
    assert len(_replies(client, 10, timeout=3.0)) == 10
    client.send_message("/mdnkit/mode", "echo")
    _drain(client)
    client.send_message("/mdnkit/event", [0, 1.0, 1.0, 0])
    assert len(_replies(client, 1)) == 1 and client.receive(0.2) == b""


def test_osc_reply_address():
    settings = LiveSettings(seed=0)
    with serve_in_thread(_stroke_model(), settings, osc=("127.0.0.1", 0), timeout=30) as running:
        client = _client(running)
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(2.0)
        client.send_message("/mdnkit/reply", ["127.0.0.1", listener.getsockname()[1]])
        client.send_message("/mdnkit/event", [3, 0.0, 0.0, 0])
        assert OscMessage(listener.recv(4096)).params[0] == 3
        client.send_message("/mdnkit/reply", ["192.0.2.1", 9000])  # not loopback: refused
        client.send_message("/mdnkit/reply", ["example.org", 9000])  # no name look-ups
        client.send_message("/mdnkit/reply", [])  # back to the sender
        client.send_message("/mdnkit/event", [3, 0.0, 0.0, 0])
        assert _replies(client, 1)[0].params[0] == 3
        assert running.server.engine.drops.counts["reply"] == 2
        listener.close()


def _bundle(n: int) -> bytes:
    b = OscBundleBuilder(IMMEDIATELY)
    for i in range(n):
        m = OscMessageBuilder("/mdnkit/event")
        for v in (1, 0.1 * i, 0.0, 0):
            m.add_arg(v)
        b.add_content(m.build())
    return b.build().dgram


def _message(address: str, *args) -> bytes:
    m = OscMessageBuilder(address)
    for a in args:
        m.add_arg(a)
    return m.build().dgram


#: (kind it counts as, datagram)
MALFORMED = [
    ("address", _message("/mdnkit/nonsense", 1.0)),
    ("address", _message("/other/app", 1, 2)),
    ("arity", _message("/mdnkit/event")),
    ("arity", _message("/mdnkit/event", 1, 0.1, 0.2, 0, 5.0)),
    ("arity", _message("/mdnkit/event", 1, 0.1)),
    ("arity", _message("/mdnkit/temperature")),
    ("type", _message("/mdnkit/event", 1, "a", 0.2, 0)),
    ("type", _message("/mdnkit/event", 1, b"\x00\x01", 0.2, 0)),
    ("type", _message("/mdnkit/event", 1, True, 0.2, 0)),
    ("type", _message("/mdnkit/temperature", "hot")),
    ("nonfinite", _message("/mdnkit/event", 1, float("nan"), 0.2, 0)),
    ("nonfinite", _message("/mdnkit/event", 1, 0.1, float("inf"), 0)),
    ("range", _message("/mdnkit/event", 1, 1e30, 0.2, 0)),
    ("range", _message("/mdnkit/event", 1, 0.1, 0.2, 7)),
    ("range", _message("/mdnkit/event", 1, 0.1, 0.2, 0.5)),
    ("range", _message("/mdnkit/temperature", -1.0)),
    ("stream", _message("/mdnkit/event", 1.5, 0.1, 0.2, 0)),
    ("stream", _message("/mdnkit/event", -3, 0.1, 0.2, 0)),
    ("stream", _message("/mdnkit/event", "x" * 100, 0.1, 0.2, 0)),
    ("mode", _message("/mdnkit/mode", "karaoke")),
    ("reply", _message("/mdnkit/reply", "localhost", 9000)),
    ("reply", _message("/mdnkit/reply", "127.0.0.1", 70000)),
    ("parse", b"\x00\x01garbage that is not OSC"),
    ("parse", b"#bundle\x00\x00\x00"),  # a truncated bundle
    ("parse", encode_osc("/mdnkit/event", 1)[:-2]),  # a truncated message
    ("parse", b""),
    ("oversize", _message("/mdnkit/event", "y" * 9000, 0.0, 0.0, 0)),
    ("bundle", _bundle(40)),
]


def test_osc_malformed_messages_are_counted_and_dropped(osc_server):
    engine = osc_server.server.engine
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = _client(osc_server)
    kinds = {kind for kind, _ in MALFORMED}
    assert len(kinds) >= 10 and kinds <= set(DROP_KINDS)
    for _ in range(3):  # three rounds: a log line per kind, not per message
        for _, dgram in MALFORMED:
            raw.sendto(dgram, osc_server.server.osc_address)
    raw.close()
    client.send_message("/mdnkit/event", [1, 0.1, 0.2, 0])  # it still answers
    (m,) = _replies(client, 1)
    assert m.address == "/mdnkit/prediction" and m.params[0] == 1
    expected = {}
    for kind, _ in MALFORMED:
        expected[kind] = expected.get(kind, 0) + 3
    assert engine.drops.nonzero() == expected
    assert engine.events_in == 1 and engine.stats()["streams"] == 1


def test_osc_stream_limit_and_huge_bundles_of_good_events():
    settings = LiveSettings(seed=0, max_streams=2)
    with serve_in_thread(_stroke_model(), settings, osc=("127.0.0.1", 0), timeout=30) as running:
        client = _client(running)
        for sid in range(4):
            client.send_message("/mdnkit/event", [sid, 0.0, 0.0, 0])
        assert len(_replies(client, 4, timeout=1.0)) == 2
        assert running.server.engine.drops.counts["streams"] == 2
        client.send(type("B", (), {"dgram": _bundle(20)})())  # a bundle within the limit
        assert len(_replies(client, 20)) == 20


def test_drops_log_once_per_kind_per_period():
    lines, now = [], [0.0]
    d = Drops(log=lines.append, every=10.0, clock=lambda: now[0])
    for _ in range(100):
        d.drop("arity")
    d.drop("type", "a str")
    now[0] = 11.0
    d.drop("arity")
    assert len(lines) == 3 and "100 since the last report" in lines[2]
    assert d.counts["arity"] == 101 and d.total == 102


def test_call_mode_honours_the_dt_column():
    """A touch model (x, y, dt): the answer's events are sent their own dt apart."""
    model = _touch_model()
    model.shift.copy_(torch.tensor([0.5, 0.5, 0.08]))  # dt around 80 ms
    model.scale.copy_(torch.tensor([0.2, 0.2, 0.001]))
    settings = LiveSettings(mode="call", silence=0.1, dt_column=2, seed=0, response_length=6)
    with serve_in_thread(model, settings, osc=("127.0.0.1", 0), timeout=30) as running:
        client = _client(running)
        client.send_message("/mdnkit/event", [0, 0.5, 0.5, 0.1])
        got, times = [], []
        while len(got) < 6:
            data = client.receive(3.0)
            assert data, "no answer"
            got.append(OscMessage(data).params)
            times.append(time.monotonic())
    gaps, dts = np.diff(times), np.array([p[3] for p in got])
    assert np.all(np.abs(dts - 0.08) < 0.02)
    assert np.all(np.abs(gaps - dts[1:]) < 0.06), (gaps, dts)


# ------------------------------------------------------------------------------------ web
@pytest.fixture
def web_server():
    settings = LiveSettings(seed=0, silence=0.2, interval=0.01, response_length=30)
    with serve_in_thread(_stroke_model(), settings, web=("127.0.0.1", 0), timeout=60) as running:
        yield running


def _ws(running):
    from websockets.sync.client import connect

    host, port = running.server.web_address
    return connect(f"ws://{host}:{port}/ws", open_timeout=5, close_timeout=2)


def test_web_page_and_other_paths(web_server):
    import urllib.error
    import urllib.request

    host, port = web_server.server.web_address
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert "mdnkit live pad" in r.read().decode()
    for path in ("/etc/passwd", "/../pyproject.toml", "/web/pad.html"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5)
        assert err.value.code == 404
        err.value.close()


def test_web_events_in_continuation_out(web_server):
    with _ws(web_server) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "hello" and hello["columns"] == 3 and hello["pen_states"] == 2
        for i in range(6):
            ws.send(json.dumps({"type": "event", "event": [0.5, 0.1 * i, int(i == 5)]}))
        got = [json.loads(ws.recv(timeout=5)) for _ in range(30)]
        assert all(m["type"] == "prediction" and len(m["event"]) == 3 for m in got)
        ws.send(json.dumps({"type": "temperature", "name": "temperature", "value": 0.3}))
        ws.send(json.dumps({"type": "clear"}))
        ws.send(json.dumps({"type": "stats"}))
        stats = json.loads(ws.recv(timeout=5))
        assert stats["type"] == "stats" and stats["events_in"] == 6 and stats["dropped"] == 0
        (stream,) = web_server.server.engine.streams.values()
        assert stream.generator.sampling.temperature == 0.3


def test_web_bad_messages_are_dropped_and_the_server_still_serves(web_server):
    bad = [
        ("oversize", json.dumps({"type": "event", "event": [0.0] * 1000})),
        ("parse", "{not json"),
        # 1000-deep and unbalanced: a parse error whatever the interpreter's recursion limit
        # (balanced, it parses as a list where the limit is raised, and is then an "address")
        ("parse", "[" * 1000 + "]" * 999),
        ("parse", b"\x00\x01binary"),
        ("address", json.dumps({"type": "shutdown"})),
        ("address", json.dumps([1, 2, 3])),
        ("type", json.dumps({"type": "event", "event": "1,2,3"})),
        ("type", json.dumps({"type": "event", "event": [0.1, "a", 0]})),
        ("arity", json.dumps({"type": "event", "event": [0.1]})),
        ("nonfinite", '{"type": "event", "event": [NaN, 0.1, 0]}'),
        ("range", json.dumps({"type": "event", "event": [10**400, 0.1, 0]})),
        ("range", json.dumps({"type": "temperature", "name": "temperature", "value": -2})),
        ("mode", json.dumps({"type": "mode", "mode": "loud"})),
    ]
    with _ws(web_server) as ws:
        json.loads(ws.recv(timeout=5))
        for _, text in bad:
            ws.send(text)
        ws.send(json.dumps({"type": "event", "event": [0.1, 0.1, 1]}))
        msg = json.loads(ws.recv(timeout=5))  # the continuation still comes
        assert msg["type"] == "prediction"
    expected = {}
    for kind, _ in bad:
        expected[kind] = expected.get(kind, 0) + 1
    assert web_server.server.engine.drops.nonzero() == expected
    with _ws(web_server) as ws:  # and a new client is served
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"


def test_web_rate_limit_and_foreign_origin():
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from mdnkit.serve import WebLimits

    settings = LiveSettings(seed=0, silence=5.0)
    limits = WebLimits(rate=50, burst=20)
    with serve_in_thread(
        _stroke_model(), settings, web=("127.0.0.1", 0), web_limits=limits, timeout=30
    ) as running:
        host, port = running.server.web_address
        with connect(f"ws://{host}:{port}/ws") as ws:
            for _ in range(100):
                ws.send(json.dumps({"type": "event", "event": [0.1, 0.1, 0]}))
            ws.send(json.dumps({"type": "stats"}))
            time.sleep(0.3)
        assert running.server.engine.drops.counts["rate"] >= 50
        with pytest.raises(InvalidStatus):
            connect(f"ws://{host}:{port}/ws", origin="http://evil.example", open_timeout=5)


# ------------------------------------------------------------------------------------ browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_web_pad_in_headless_chromium(tmp_path):
    """Draw two strokes with the mouse; the continuation arrives and is drawn.  The screenshot
    goes to docs/live_pad.png with MDNKIT_SCREENSHOT=1 (else to a temporary folder)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    settings = LiveSettings(
        seed=0, silence=0.3, interval=0.02, response_length=40, sigma_temperature=0.5
    )
    with serve_in_thread(_stroke_model(), settings, web=("127.0.0.1", 0), timeout=90) as running:
        host, port = running.server.web_address
        with sync_api.sync_playwright() as p:
            try:
                browser = p.chromium.launch(
                    executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"]
                )
            except Exception as err:  # a browser that cannot start here
                pytest.skip(f"chromium does not start: {str(err).splitlines()[0]}")
            # bypass_csp: the page's CSP forbids eval, which wait_for_function uses
            page = browser.new_page(viewport={"width": 900, "height": 640}, bypass_csp=True)
            page.goto(f"http://{host}:{port}/")
            page.wait_for_function("window.mdnkitPad.hello !== null", timeout=10_000)
            box = page.locator("#pad").bounding_box()
            x0, y0 = box["x"], box["y"]
            for sx, sy in ((200, 150), (300, 300)):  # two strokes
                page.mouse.move(x0 + sx, y0 + sy)
                page.mouse.down()
                for i in range(1, 16):
                    page.mouse.move(x0 + sx + 8 * i, y0 + sy + 5 * math.sin(i / 2))
                page.mouse.up()
            page.wait_for_function("window.mdnkitPad.received >= 40", timeout=15_000)
            state = page.evaluate("window.mdnkitPad")
            assert state["sent"] >= 30 and state["drawn"] > 0
            assert int(page.inner_text("#received")) >= 40
            folder = DOCS if os.environ.get("MDNKIT_SCREENSHOT") == "1" else tmp_path
            page.screenshot(path=str(folder / "live_pad.png"))
            assert (folder / "live_pad.png").stat().st_size > 1000
            browser.close()


# ------------------------------------------------------------------------------------ command
def test_serve_command_starts_answers_and_stops_cleanly(tmp_path):
    path = tmp_path / "model.mdn"
    save(_stroke_model(), path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdnkit", "serve", str(path), "--osc", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("mdnkit serve: OSC udp://127.0.0.1:"), line
        port = int(line.split("udp://127.0.0.1:")[1].split()[0].rstrip(","))
        client = SimpleUDPClient("127.0.0.1", port)
        client.send_message("/mdnkit/event", [0, 0.1, 0.1, 0])
        assert OscMessage(client.receive(5.0)).address == "/mdnkit/prediction"
        proc.send_signal(2)  # Ctrl-C
        assert proc.wait(10) == 0
        assert "stopped: 1 events in, 1 out, 0 dropped" in proc.stderr.read()
    finally:
        proc.kill()


def test_serve_command_errors_are_one_line(tmp_path):
    from mdnkit.cli import main

    path = tmp_path / "mlp.mdn"
    from mdnkit import MDN

    save(MDN(1, 1, hidden=(4,)), path)
    assert main(["serve", str(path), "--osc", "0"]) == 2  # not an MDN-RNN
    save(_stroke_model(), path)
    assert main(["serve", str(path)]) == 2  # nothing to serve
    assert main(["serve", str(path), "--osc", "127.0.0.1:99999"]) == 2
    assert main(["serve", str(path), "--osc", "0", "--dt-column", "5"]) == 2


def test_serve_command_without_the_live_extra(tmp_path, monkeypatch, capsys):
    from mdnkit.cli import main

    path = tmp_path / "model.mdn"
    save(_stroke_model(), path)
    monkeypatch.setitem(sys.modules, "pythonosc", None)  # import pythonosc -> ImportError
    assert main(["serve", str(path), "--osc", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'mdnkit[live]'" in err


def test_encode_osc_matches_python_osc():
    mine = encode_osc("/mdnkit/prediction", 3, 0.25, "s")
    theirs = OscMessage(mine)
    assert theirs.params == [3, 0.25, "s"]
    assert struct.unpack(">f", mine[-8:-4])[0] == 0.25


def test_retune_keeps_the_state_and_applies_to_the_fast_path():
    """StepGenerator.retune, which the live controls use: same state, new temperatures."""
    model = _stroke_model()
    events = np.array([[0.3, -0.2, 0], [0.1, 0.4, 1], [-0.5, 0.0, 0]], np.float32)
    a = model.generator(generator=3)
    b = model.generator(generator=3, temperature=0.0, sigma_temperature=0.0, pen_temperature=0.0)
    for e in events:
        a.step(e)
        b.step(e)
    s = a.retune(temperature=0.0, sigma_temperature=0.0, pen_temperature=0.0)
    assert s is a.sampling and (s.temperature, s.sigma_temperature) == (0.0, 0.0)
    np.testing.assert_array_equal(a.step(events[0]), b.step(events[0]))
    with pytest.raises(ValueError):
        a.retune(sigma_temperature=-1.0)
