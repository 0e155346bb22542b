"""The viewer under load and exposure, through viser's client protocol (no browser needed):
a client that never reads, 50 connect/disconnect cycles, the address it binds and the files its
HTTP server hands out. (5 browser clients for 30 s: test_browser.py; longer runs and the
figures: tools/bench_viewer_load.py.)

Everything runs on 127.0.0.1 on a free port, bounded in time; the Taichi queue is pumped on the
main thread while a helper thread plays the clients (see browser.drive).
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from shaders import runtime
from shaders.thread_queue import TaichiQueue
from viewer import loadtest as lt
from viewer.render_panel import ClientRenderer, RenderSettings, ViewRequest

from .browser import drive, wait_for

pytestmark = pytest.mark.timeout(180)
HOST = "127.0.0.1"


def _open(path, **kw):
    from viewer.app import ViewerApp, ViewerOptions, free_port

    runtime.init()
    return ViewerApp.open(path, ViewerOptions(port=free_port(), **kw), dt=0.02)


# ------------------------------------------------------------------ stale frames, no server
class _Source:
    def __init__(self):
        self.calls = []

    def render(self, cams, background):
        self.calls.append(float(cams.c2w[0, 0, 3]))
        H, W = int(cams.height[0]), int(cams.width[0])
        return {"rgb": torch.zeros(H, W, 3), "alpha": torch.ones(H, W), "depth": torch.ones(H, W)}


class _Buffer:                          # stands in for viser's per-client message buffer
    def __init__(self):
        self.id_from_redundancy_key = {}


class _Scene:
    def __init__(self, buf):
        self.buf, self.sent = buf, 0

    def set_background_image(self, img, **kw):
        self.buf.id_from_redundancy_key["BackgroundImageMessage"] = self.sent   # queued, not yet on the wire
        self.sent += 1


def _pump(q, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        q.run_pending(timeout=0.01)


def test_renders_wait_while_the_previous_frame_is_unsent():
    """While viser still holds a client's last frame, newer requests replace each other instead of
    being rendered; once the frame leaves, only the newest is rendered. Latency is recorded."""
    q = TaichiQueue()
    buf = _Buffer()
    client = SimpleNamespace(client_id=3, scene=_Scene(buf),
                             _websock_connection=SimpleNamespace(get_message_buffer=lambda: buf))
    src = _Source()
    cr = ClientRenderer(client, src, RenderSettings(max_side=16, rest_delay=10.0), taichi=q)
    view = lambda x: ViewRequest(np.array([1.0, 0, 0, 0]), np.array([x, 0.0, 0.0]), 1.0, 40, 30, moving=False)  # noqa: E731
    try:
        cr.request(view(1.0))
        _pump(q, 0.3)
        assert src.calls == [1.0] and cr.frames_sent == 1       # frame 1 "queued": the buffer holds it
        for x in range(2, 12):                                   # the client does not read meanwhile
            cr.request(view(float(x)))
            _pump(q, 0.03)
        _pump(q, 0.2)
        assert src.calls == [1.0], "rendered while the previous frame was still unsent"
        st = cr.stats()
        assert st["held"] >= 1 and st["dropped"] == 9, st        # 10 requests, 1 kept
        buf.id_from_redundancy_key.clear()                       # the socket writer took frame 1
        _pump(q, 0.3)
        assert src.calls == [1.0, 11.0] and cr.frames_sent == 2  # the newest view, not the stale ones
        st = cr.stats()
        assert st["latency_samples"] == 2 and st["latency_p95_ms"] >= 200, st   # includes the wait
    finally:
        cr.stop()
        _pump(q, 0.2)
    assert not cr.alive


# --------------------------------------------------------------------- a client that never reads
def test_slow_client_that_never_reads(tiny_ply):
    """A raw websocket client sends camera updates and never reads (its path limited to ~8 kB of
    kernel buffer). A normal client keeps getting frames; the server stops rendering for the slow
    one once a frame is stuck, holds at most one frame for it, its memory stays flat and it keeps
    answering HTTP. Once stuck longer than ``stall_timeout`` the slow client is disconnected."""
    app = _open(tiny_ply, max_side=96, target_fps=10)
    rep = {}

    def scenario():
        port = app.port
        good = lt.ProtocolClient(HOST, port)
        good.move(lt.orbit_eye(0))
        wait_for(lambda: len(app.render_panel.clients) == 1, 30, "the normal client")
        gid = next(iter(app.render_panel.clients))
        slow = lt.SlowClient(HOST, port, rcvbuf=4096)
        try:
            slow.move(lt.orbit_eye(0))
            wait_for(lambda: len(app.render_panel.clients) == 2, 30, "the slow client")
            sid = next(c for c in app.render_panel.clients if c != gid)
            assert lt.limit_send_buffer(app.server, sid, 4096)
            k, t0 = 0, time.monotonic()
            mem0 = lt.memory()["rss_mb"]
            stuck_at = None
            samples = []
            while time.monotonic() - t0 < 14.0:
                good.move(lt.orbit_eye(k))
                slow.move(lt.orbit_eye(k, speed=0.2))
                k += 1
                time.sleep(0.1)
                st = app.render_panel.stats()
                out = lt.outgoing(app.server, sid)
                samples.append((time.monotonic() - t0, st[gid]["frames_sent"], st[sid]["frames_sent"], out,
                                lt.memory()["rss_mb"]))
                if stuck_at is None and out["buffered_frames"] >= 1 and out["transport_bytes"] >= 32768:
                    stuck_at = len(samples) - 1
            rep["http"] = lt.http_get(HOST, port, "/")[0]
            st = app.render_panel.stats()
            rep.update(samples=samples, stuck_at=stuck_at, mem0=mem0, good=st[gid], slow=st[sid],
                       good_received=good.frames, good_client_p95=float(np.percentile(good.latencies, 95)) * 1e3)
            # a client stuck this long is dropped (keepalive pings cannot pass the full buffer)
            app.render_panel.settings.stall_timeout = 1.0
            n = good.frames
            t1 = time.monotonic()
            while time.monotonic() - t1 < 8.0 and sid in app.render_panel.clients:
                good.move(lt.orbit_eye(k))
                try:
                    slow.move(lt.orbit_eye(k, speed=0.2))
                except OSError:
                    pass
                k += 1
                time.sleep(0.1)
            rep["slow_gone"] = sid not in app.render_panel.clients and lt.server_connection(app.server, sid) is None
            rep["stalled_dropped"] = app.render_panel.stalled_dropped
            good.move(lt.orbit_eye(k + 1))
            wait_for(lambda: good.frames > n, 20, "the normal client's frames after the drop")
            rep["good_alive"] = gid in app.render_panel.clients
        finally:
            slow.close()
            good.close()
        wait_for(lambda: not app.render_panel.clients, 30, "both clients to be gone")
        try:   # a worker ends shortly after its client is removed (it finishes the render in flight)
            wait_for(lambda: lt.render_threads() == 0, 15, "the render threads to exit")
        except Exception:
            pass                                  # recorded below: a leaked worker fails the test
        rep["threads_after"] = lt.render_threads()

    try:
        drive(app, scenario, 150)
    finally:
        app.stop()
    s, stuck = rep["samples"], rep["stuck_at"]
    print("slow client:", {k: v for k, v in rep.items() if k != "samples"}, "samples:", s[::5])
    assert stuck is not None and s[stuck][0] < 10.0, "the slow client's frames never backed up"
    tail = [x for x in s if x[0] >= s[stuck][0] + 1.0]
    assert tail[-1][0] - tail[0][0] >= 2.0, "too little time after the slow client backed up"
    # the normal client is served all along: frames in every second after the backlog started
    for a, b in zip(tail[::10], tail[10::10]):
        assert b[1] - a[1] >= 2, f"the normal client starved: {a[:3]} -> {b[:3]}"
    # no more renders for the slow client: at most the one that was in flight
    assert tail[-1][2] - tail[0][2] <= 1, f"kept rendering for a client that does not read: {tail[0][:3]} {tail[-1][:3]}"
    assert rep["slow"]["held"] >= 1 and rep["slow"]["dropped"] >= 10, rep["slow"]
    # bounded: at most one frame waits in viser's buffer, one frame plus websockets' 32 kB high-water
    # mark in the transport, and the process does not grow
    assert max(x[3]["buffered_frames"] for x in s) <= 1
    assert max(x[3]["transport_bytes"] for x in s) < 256 * 1024, max(x[3]["transport_bytes"] for x in s)
    assert max(x[4] for x in s) - rep["mem0"] < 60, "server memory grew under the slow client"
    assert rep["http"] == 200
    assert rep["good"]["errors"] == 0 and rep["good"]["latency_p95_ms"] is not None
    assert rep["good_received"] >= 0.5 * rep["good"]["frames_sent"]
    assert rep["threads_after"] == 0
    assert rep["slow_gone"] and rep["stalled_dropped"] == 1 and rep["good_alive"], rep


# ------------------------------------------------------------------ 50 connect/disconnect cycles
def test_fifty_connect_disconnect_cycles(tiny_ply):
    """50 protocol clients connect, move the camera and leave (every 5th after its first frame, the
    others at once, often mid-render) while an idle client stays connected: no render thread, client
    state or viser cursor is left behind, memory stays flat, the page is still served, and the idle
    client gets no frame of the others (renders stay per client)."""
    app = _open(tiny_ply, max_side=48, target_fps=10)
    rep = {}

    def scenario():
        port = app.port
        ws = app.server._websock_server
        idle = lt.ProtocolClient(HOST, port)
        try:
            idle.move(lt.orbit_eye(0))
            wait_for(lambda: len(app.render_panel.clients) == 1, 30, "the idle client")
            iid = next(iter(app.render_panel.clients))
            wait_for(lambda: idle.frames >= 1, 60, "the idle client's first frame")
            time.sleep(1.0)                                   # and the full-size one at rest
            idle0 = idle.frames
            threads0 = lt.render_threads()
            broadcast0 = len(ws._broadcast_buffer.message_from_id)
            rss, got = [], 0
            for i in range(50):
                c = lt.ProtocolClient(HOST, port)
                try:
                    c.move(lt.orbit_eye(i + 1))
                    if i % 5 == 0:
                        wait_for(lambda: c.frames >= 1, 30, f"a frame for client {i}", poll=0.02)
                finally:
                    c.close()
                    got += c.frames
                if i % 10 == 9:
                    rss.append(lt.memory()["rss_mb"])
            wait_for(lambda: set(app.render_panel.clients) == {iid} and set(app.server.get_clients()) == {iid}, 30,
                     "every cycling client to be gone")
            wait_for(lambda: lt.render_threads() == threads0, 10, "the render threads to exit")
            time.sleep(0.5)
            rep.update(threads0=threads0, broadcast0=broadcast0, threads1=lt.render_threads(), rss=rss, got=got,
                       idle0=idle0, idle1=idle.frames, idle_sent=app.render_panel.stats()[iid]["frames_sent"],
                       http=lt.http_get(HOST, port, "/")[0], states=len(ws._client_state_from_id),
                       live=len(ws._live_connections), cursors=len(ws._broadcast_buffer.generator_cursors),
                       broadcast=len(ws._broadcast_buffer.message_from_id))
        finally:
            idle.close()
        wait_for(lambda: not app.render_panel.clients and lt.render_threads() == 0, 30, "the idle client to go")

    try:
        drive(app, scenario, 150)
    finally:
        app.stop()
    print("50 cycles:", rep)
    assert rep["threads0"] == 1 and rep["threads1"] == 1            # the idle client's worker only
    assert rep["states"] == 1 and rep["live"] == 1 and rep["cursors"] == 1
    assert rep["broadcast"] <= rep["broadcast0"] + 5, "viser's shared buffer grows per connection"
    assert rep["rss"][-1] - rep["rss"][0] < 40, f"memory grew over the cycles: {rep['rss']}"
    assert rep["http"] == 200
    assert rep["got"] >= 10                                          # every 5th waited for its frame
    assert 1 <= rep["idle0"] == rep["idle1"] == rep["idle_sent"] <= 3, rep   # nothing of the others


# ----------------------------------------------------------------------------------- exposure
def _listeners(port: int) -> list[tuple[str, str]]:
    """(file, local address hex) of the LISTEN sockets on ``port`` (Linux /proc/net/tcp{,6})."""
    out = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            addr, p = f[1].split(":")
            if int(p, 16) == port and f[3] == "0A":
                out.append((name, addr))
    return out


TRAVERSALS = ("/../../../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "/%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/..%5c..%5c..%5c..%5cetc%5cpasswd",
              "/..\\..\\..\\..\\etc\\passwd", "/etc/passwd", "//etc/passwd", "/%2fetc%2fpasswd",
              "/....//....//....//etc/passwd", "/%252e%252e/%252e%252e/etc/passwd",
              "/../package.json", "/%2e%2e/package.json", "/./../package.json", "/../../_viser.py",
              "/%2e%2e%2f%2e%2e%2f_viser.py", "/../src", "/..", "/%2e%2e", "/index.html%00.png",
              "/index.html/../../package.json", "http://127.0.0.1/../package.json", "/?../../package.json")


def test_binds_localhost_and_serves_only_its_client_build(tiny_ply):
    """The server listens on 127.0.0.1 only (nothing on other interfaces / IPv6) and hands out only
    the files of viser's client build: traversal and encoded variants get 404, not the file."""
    import inspect

    import viser

    from viewer.app import ViewerOptions
    from viewer.training import TrainingViewer

    assert ViewerOptions().host == "127.0.0.1"
    assert inspect.signature(TrainingViewer).parameters["host"].default == "127.0.0.1"
    root = Path(viser.__file__).resolve().parent / "client" / "build"
    secrets = {"passwd": b"root:", "package.json": (root.parent / "package.json").read_bytes()[:40],
               "_viser.py": (root.parent.parent / "_viser.py").read_bytes()[:40]}
    files = [p for p in root.rglob("*")]
    assert not any(p.is_symlink() for p in files), "a symlink in the served folder could point outside"
    app = _open(tiny_ply, max_side=32)
    try:
        port = app.port
        assert _listeners(port) == [("tcp", "0100007F")], _listeners(port)    # 127.0.0.1, nothing else
        code, body = lt.http_get(HOST, port, "/")
        assert code == 200 and body == (root / "index.html").read_bytes()
        served = {p.read_bytes() for p in files if p.is_file()}
        bad = []
        for target in TRAVERSALS:
            code, body = lt.http_get(HOST, port, target)
            leaked = [k for k, v in secrets.items() if v in body]
            if leaked or (code == 200 and body not in served):
                bad.append((target, code, leaked))
        assert not bad, f"served something outside the client build: {bad}"
        assert lt.http_get(HOST, port, "/../package.json")[0] == 404
        assert lt.http_get(HOST, port, "/")[0] == 200            # still answering after the probes
    finally:
        app.stop()


def test_disconnect_before_connect_callback_leaves_no_worker():
    """viser runs plain connect/disconnect callbacks on a thread pool: for a client that leaves at
    once, the disconnect can run first. The late connect must not start a worker (seen as leaked
    render threads in the 50-cycle test before the fix)."""
    from viewer.render_panel import RenderPanel

    from .test_render_logic import FakeClient, FakeServer

    q = TaichiQueue()
    srv = FakeServer()
    panel = RenderPanel(srv, _Source(), RenderSettings(max_side=16), gui=False, taichi=q)
    a, b = FakeClient(1), FakeClient(2)
    srv.disconnect_cbs[0](a)          # out of order
    srv.connect_cbs[0](a)
    srv.connect_cbs[0](b)             # in order
    assert set(panel.clients) == {2}
    srv.disconnect_cbs[0](b)
    _pump(q, 0.1)
    assert panel.clients == {} and panel._gone == set()
    panel.close()
