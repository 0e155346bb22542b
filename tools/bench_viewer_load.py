#!/usr/bin/env python
"""Load figures of the web viewer (the scenarios of tests/viewer/test_load.py and the 5-client
browser test, run longer), printed as a table and written as JSON.

Scenarios (each on a fresh viewer of a small Gaussian scene, 127.0.0.1, a free port):

1. ``clients``: ``--clients`` clients orbit their cameras for ``--duration`` s, one camera update
   every ``--interval`` s each. ``--kind browser`` = headless Chromium windows (cameras moved
   through viser, as in test_browser.py), ``protocol`` = viser's client protocol
   (``viewer.loadtest.ProtocolClient``, which also measures latency at the client), ``both``.
   Figures: frames served per client, p50/p95 latency camera update -> frame handed to viser
   (server side, ``ClientRenderer`` counters), client-side p95 (protocol clients), peak RSS of
   this process (VmHWM, reset at the start of the scenario), RSS growth, errors.
2. ``slow``: one normal protocol client and one that never reads (raw websocket, 4 kB receive
   buffer; the server's send buffer to it limited to ``--slow-sndbuf`` bytes, 0 = leave the
   kernel's autotuning, ~4 MB on loopback; one run per value given) for ``--slow-duration`` s. Figures: frames rendered for
   each, renders held and requests dropped for the slow one, the most frames / bytes the server
   held for it, peak RSS, and when (if) the server dropped it (websockets' keepalive: no pong
   within ping_interval + ping_timeout = 40 s).
3. ``cycles``: ``--cycles`` protocol clients connect, send a camera update and leave (every 5th
   after its first frame). Figures: seconds per cycle, render threads / client states left,
   RSS before / after / peak, HTTP still answering.

The machine's load matters (these are wall-clock figures on shared CPUs): compare runs made
side by side. Usage::

    .venv/bin/python tools/bench_viewer_load.py [--kind both] [--clients 5] [--duration 60]
        [--slow-duration 60] [--cycles 200] [--out tools/results/bench_viewer_load.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HOST = "127.0.0.1"


def _pct(xs, q):
    import numpy as np

    return round(float(np.percentile(xs, q)) * 1000.0, 1) if len(xs) else None


def _open(scene, max_side):
    from viewer.app import ViewerApp, ViewerOptions, free_port

    return ViewerApp.open(scene, ViewerOptions(port=free_port(), max_side=max_side, target_fps=10), dt=0.02)


def _run(app, fn, timeout):
    """fn() on a helper thread while this (main) thread runs the viewer's Taichi queue."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # reported by the caller
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    end = time.monotonic() + timeout
    while t.is_alive() and time.monotonic() < end:
        app.pump(0.05)
    if t.is_alive():
        raise TimeoutError(f"scenario did not finish within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def _wait(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise TimeoutError(f"waiting for {what}")


# ------------------------------------------------------------------------------------ clients
def scenario_clients(scene, kind, n, duration, interval, max_side) -> dict:
    import numpy as np

    from viewer import loadtest as lt

    app = _open(scene, max_side)
    try:
        def body():
            browser, protos = None, []
            try:
                if kind == "browser":
                    from tests.viewer.browser import Browser

                    browser = Browser(900, 600)
                    browser.open(app.url)
                    for _ in range(n - 1):
                        browser.driver.switch_to.new_window("window")
                        browser.open(app.url)
                else:
                    for i in range(n):
                        protos.append(lt.ProtocolClient(HOST, app.port))
                        protos[-1].move(lt.orbit_eye(0, speed=0.15 * (i + 1)))
                _wait(lambda: len(app.render_panel.clients) == n
                      and all(s["frames_sent"] >= 1 for s in app.render_panel.stats().values()), 120,
                      f"{n} clients with a first frame")
                time.sleep(1.0)
                crs = dict(app.render_panel.clients)
                for cr in crs.values():
                    cr.latencies.clear()
                for p in protos:
                    p.latencies.clear()
                start = {cid: s["frames_sent"] for cid, s in app.render_panel.stats().items()}
                recv0 = [p.frames for p in protos]
                lt.reset_peak()
                rss0 = lt.memory()["rss_mb"]
                clients = list(app.server.get_clients().values())
                center = np.asarray(app.scene.center, dtype=np.float64)
                offs = {c.client_id: np.asarray(c.camera.position, float) - center for c in clients}
                t0, k = time.monotonic(), 0
                while time.monotonic() - t0 < duration:
                    if browser is not None:          # the browser echoes the new camera back
                        for i, c in enumerate(clients):
                            ang = 0.15 * (i + 1) * (k + 1)
                            R = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
                            with c.atomic():
                                c.camera.position = center + R @ offs[c.client_id]
                                c.camera.look_at = center
                    for i, p in enumerate(protos):
                        p.move(lt.orbit_eye(k, speed=0.15 * (i + 1), center=center))
                    k += 1
                    time.sleep(interval)
                dur = time.monotonic() - t0
                st = app.render_panel.stats()
                lat = [x for cr in crs.values() for x in cr.latencies]
                out = {
                    "kind": kind, "clients": n, "duration_s": round(dur, 1), "camera_updates_per_client": k,
                    "frames_served": {str(cid): st[cid]["frames_sent"] - start[cid] for cid in st},
                    "frames_served_total": sum(st[cid]["frames_sent"] - start[cid] for cid in st),
                    "requests_dropped_stale": sum(s["dropped"] for s in st.values()),
                    "latency_p50_ms": _pct(lat, 50), "latency_p95_ms": _pct(lat, 95),
                    "latency_p95_ms_per_client": {str(cid): (round(s["latency_p95_ms"], 1)
                                                             if s["latency_p95_ms"] is not None else None)
                                                  for cid, s in st.items()},
                    "errors": sum(s["errors"] for s in st.values()),
                    "peak_rss_mb": round(lt.memory()["peak_mb"], 1), "rss_start_mb": round(rss0, 1),
                    "rss_end_mb": round(lt.memory()["rss_mb"], 1)}
                if protos:
                    out["frames_received_by_clients"] = [p.frames - r for p, r in zip(protos, recv0)]
                    out["client_side_latency_p95_ms"] = _pct([x for p in protos for x in p.latencies], 95)
                return out
            finally:
                if browser is not None:
                    browser.quit()
                for p in protos:
                    p.close()

        return _run(app, body, duration + 300)
    finally:
        app.stop()


# ---------------------------------------------------------------------------------------- slow
def scenario_slow(scene, duration, sndbuf, max_side) -> dict:
    import numpy as np

    from viewer import loadtest as lt

    app = _open(scene, max_side)
    try:
        def body():
            good = lt.ProtocolClient(HOST, app.port)
            good.move(lt.orbit_eye(0))
            _wait(lambda: len(app.render_panel.clients) == 1, 60, "the normal client")
            gid = next(iter(app.render_panel.clients))
            slow = lt.SlowClient(HOST, app.port, rcvbuf=4096)
            try:
                slow.move(lt.orbit_eye(0))
                _wait(lambda: len(app.render_panel.clients) == 2, 60, "the slow client")
                sid = next(c for c in app.render_panel.clients if c != gid)
                if sndbuf:
                    lt.limit_send_buffer(app.server, sid, sndbuf)
                lt.reset_peak()
                rss0 = lt.memory()["rss_mb"]
                t0, k = time.monotonic(), 0
                max_frames = max_bytes = 0
                slow_frames = stuck_at = dropped_at = None
                last_slow = {}
                while time.monotonic() - t0 < duration:
                    good.move(lt.orbit_eye(k))
                    try:
                        slow.move(lt.orbit_eye(k, speed=0.2))
                    except OSError:
                        pass                                     # the server closed it
                    k += 1
                    time.sleep(0.1)
                    st = app.render_panel.stats()
                    now = round(time.monotonic() - t0, 1)
                    if sid in st:
                        last_slow = st[sid]
                        out = lt.outgoing(app.server, sid)
                        max_frames = max(max_frames, out["buffered_frames"])
                        max_bytes = max(max_bytes, out["transport_bytes"])
                        if stuck_at is None and out["buffered_frames"] >= 1 and out["transport_bytes"] >= 32768:
                            stuck_at, slow_frames = now, st[sid]["frames_sent"]
                    elif dropped_at is None:
                        dropped_at = now
                st = app.render_panel.stats()
                return {"duration_s": round(time.monotonic() - t0, 1), "server_sndbuf_limit": sndbuf or None,
                        "normal_frames": st[gid]["frames_sent"], "normal_received": good.frames,
                        "normal_latency_p95_ms": st[gid]["latency_p95_ms"] and round(st[gid]["latency_p95_ms"], 1),
                        "normal_client_side_p95_ms": _pct(good.latencies, 95),
                        "slow_camera_updates": slow.sent, "slow_frames_rendered": last_slow.get("frames_sent"),
                        "slow_backed_up_at_s": stuck_at,
                        "slow_frames_rendered_after_backup": (None if stuck_at is None else
                                                             last_slow.get("frames_sent", 0) - slow_frames),
                        "slow_renders_held": last_slow.get("held"), "slow_requests_dropped": last_slow.get("dropped"),
                        "slow_max_buffered_frames": max_frames, "slow_max_transport_bytes": max_bytes,
                        "slow_dropped_by_server_at_s": dropped_at,
                        "peak_rss_mb": round(lt.memory()["peak_mb"], 1), "rss_start_mb": round(rss0, 1),
                        "http_while_slow": lt.http_get(HOST, app.port, "/")[0],
                        "render_threads_after": None}
            finally:
                slow.close()
                good.close()

        rep = _run(app, body, duration + 300)
        _run(app, lambda: _wait(lambda: not app.render_panel.clients, 60, "clients to leave"), 90)
        from viewer.loadtest import render_threads

        rep["render_threads_after"] = render_threads()
        return rep
    finally:
        app.stop()


# -------------------------------------------------------------------------------------- cycles
def scenario_cycles(scene, cycles, max_side) -> dict:
    from viewer import loadtest as lt

    app = _open(scene, max_side)
    try:
        def body():
            ws = app.server._websock_server
            warm = lt.ProtocolClient(HOST, app.port)            # compile the render kernels first
            warm.move(lt.orbit_eye(0))
            _wait(lambda: warm.frames >= 1, 120, "a first frame")
            warm.close()
            _wait(lambda: not app.render_panel.clients, 30, "the warm-up client to leave")
            threads0, mem0 = lt.render_threads(), lt.memory()["rss_mb"]
            lt.reset_peak()
            t0, got = time.monotonic(), 0
            for i in range(cycles):
                c = lt.ProtocolClient(HOST, app.port)
                try:
                    c.move(lt.orbit_eye(i))
                    if i % 5 == 0:
                        _wait(lambda: c.frames >= 1, 30, f"a frame for client {i}")
                finally:
                    c.close()
                    got += c.frames
            dt = time.monotonic() - t0
            _wait(lambda: not app.render_panel.clients and not app.server.get_clients(), 60, "every client to leave")
            _wait(lambda: lt.render_threads() == threads0, 30, "render threads to exit")
            try:
                _wait(lambda: not ws._client_state_from_id, 10, "viser to drop every connection")
            except TimeoutError:
                pass                                            # reported below
            return {"cycles": cycles, "seconds_per_cycle": round(dt / cycles, 4), "frames_received": got,
                    "render_threads_before": threads0, "render_threads_after": lt.render_threads(),
                    "client_states_left": len(ws._client_state_from_id) + len(app.render_panel.clients),
                    "rss_before_mb": round(mem0, 1), "rss_after_mb": round(lt.memory()["rss_mb"], 1),
                    "peak_rss_mb": round(lt.memory()["peak_mb"], 1),
                    "http_after": lt.http_get(HOST, app.port, "/")[0]}

        return _run(app, body, 60 + 2.0 * cycles)
    finally:
        app.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--kind", choices=("browser", "protocol", "both"), default="both",
                    help="clients of scenario 1 (browser needs chromium + chromedriver + selenium)")
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of scenario 1")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between camera updates per client")
    ap.add_argument("--slow-duration", type=float, default=60.0, help="seconds of scenario 2")
    ap.add_argument("--slow-sndbuf", default="4096,0",
                    help="server send buffer(s) to the slow client, bytes, comma-separated: one run each "
                         "(0 = kernel autotuning)")
    ap.add_argument("--cycles", type=int, default=200, help="connect/disconnect cycles of scenario 3")
    ap.add_argument("--max-side", type=int, default=64, help="full-size render (longer side, pixels)")
    ap.add_argument("--scenarios", default="clients,slow,cycles", help="comma-separated subset to run")
    ap.add_argument("--out", default=str(REPO / "tools" / "results" / "bench_viewer_load.json"))
    a = ap.parse_args(argv)

    from shaders import runtime
    from tests.viewer.conftest import make_tiny_gaussians

    runtime.init()
    tmp = tempfile.TemporaryDirectory(prefix="kl-bench-viewer-")
    scene = make_tiny_gaussians(Path(tmp.name) / "tiny.ply")
    wanted = set(a.scenarios.split(","))
    res = {"machine": platform.node(), "python": platform.python_version(), "args": vars(a),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "scene": "300 Gaussians (tiny.ply)"}
    res["loadavg_start"] = os.getloadavg()
    if "clients" in wanted:
        kinds = ["browser", "protocol"] if a.kind == "both" else [a.kind]
        res["clients"] = []
        for kind in kinds:
            if kind == "browser":
                from tests.viewer.browser import find_browser

                if None in find_browser():
                    res["clients"].append({"kind": "browser", "skipped": "chromium/chromedriver not found"})
                    continue
            r = scenario_clients(scene, kind, a.clients, a.duration, a.interval, a.max_side)
            res["clients"].append(r)
            print(f"{kind:8s} {r['clients']} clients {r['duration_s']:6.1f} s: frames {r['frames_served_total']:5d} "
                  f"(per client {min(r['frames_served'].values())}..{max(r['frames_served'].values())}), "
                  f"p50 {r['latency_p50_ms']} ms, p95 {r['latency_p95_ms']} ms, peak RSS {r['peak_rss_mb']} MB "
                  f"(start {r['rss_start_mb']}), errors {r['errors']}", flush=True)
    for sndbuf in ([int(x) for x in a.slow_sndbuf.split(",")] if "slow" in wanted else []):
        r = scenario_slow(scene, a.slow_duration, sndbuf, a.max_side)
        res.setdefault("slow", []).append(r)
        print(f"slow     sndbuf {sndbuf or 'auto'}, {r['duration_s']:.1f} s: normal client frames {r['normal_frames']} (p95 "
              f"{r['normal_latency_p95_ms']} ms); slow client rendered {r['slow_frames_rendered']}, "
              f"backed up at {r['slow_backed_up_at_s']} s, rendered after {r['slow_frames_rendered_after_backup']}, "
              f"held {r['slow_renders_held']}, dropped {r['slow_requests_dropped']}, max buffered frames "
              f"{r['slow_max_buffered_frames']}, max transport {r['slow_max_transport_bytes']} B, dropped by "
              f"server at {r['slow_dropped_by_server_at_s']} s; peak RSS {r['peak_rss_mb']} MB", flush=True)
    if "cycles" in wanted:
        r = scenario_cycles(scene, a.cycles, a.max_side)
        res["cycles"] = r
        print(f"cycles   {r['cycles']} x connect/disconnect: {1000 * r['seconds_per_cycle']:.0f} ms each, threads "
              f"{r['render_threads_before']} -> {r['render_threads_after']}, states left {r['client_states_left']}, "
              f"RSS {r['rss_before_mb']} -> {r['rss_after_mb']} MB (peak {r['peak_rss_mb']}), HTTP {r['http_after']}",
              flush=True)
    res["loadavg_end"] = os.getloadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
