"""Render panel logic without a browser: newest-only mailbox, adaptive resolution, colour modes,
per-client workers (stale requests dropped, disconnect frees state), the Taichi queue."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from viewer.render_panel import (AdaptiveResolution, ClientRenderer, LatestSlot, RenderPanel, RenderSettings,
                                 ViewRequest, colorize)
from shaders.thread_queue import QueueClosed, TaichiQueue


def test_latest_slot_keeps_only_newest():
    s = LatestSlot()
    for i in range(10):
        s.put(i)
    assert s.pending == 1 and s.dropped == 9
    assert s.get(0.01) == 9 and s.get(0.01) is None
    got = []
    t = threading.Thread(target=lambda: got.append(s.get(2.0)))
    t.start()
    time.sleep(0.05)
    s.put("x")
    t.join(2)
    assert got == ["x"]
    s.close()
    s.put(1)
    assert s.get(0.01) is None


def test_adaptive_resolution_targets_frame_rate():
    r = AdaptiveResolution(target_fps=10, max_side=512, min_side=16)
    r.record(100_000, 1.0)              # 1e5 rays/s -> 1e4 rays per frame at 10 fps
    side = r.moving_side(aspect=1.0)
    assert side == 100
    assert r.moving_side(aspect=4.0) == 200          # 200 x 50 = 1e4 rays
    assert r.moving_side(aspect=0.25) == 200         # 50 x 200
    r.target_fps = 1000
    assert r.moving_side(1.0) == 16                  # clamped to min_side
    r.target_fps = 0.01
    assert r.moving_side(1.0) == 512                 # clamped to max_side
    assert r.resting_side() == 512
    for _ in range(30):                              # EMA converges to the new throughput
        r.record(400_000, 1.0)
    assert r.rays_per_sec == pytest.approx(400_000, rel=1e-3)


def _out(H=4, W=6):
    alpha = torch.zeros(H, W)
    alpha[:, :3] = 1.0
    depth = torch.zeros(H, W)
    depth[:, :3] = torch.tensor([1.0, 2.0, 3.0])
    rgb = torch.full((H, W, 3), 0.25)
    return {"rgb": rgb, "alpha": alpha, "depth": depth}


def test_colorize_modes():
    out = _out()
    rgb = colorize(out, RenderSettings(mode="RGB"))
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 6, 3) and (rgb == 64).all()
    s = RenderSettings(mode="Depth", auto_range=False, near=1.0, far=3.0, background=(0.0, 1.0, 0.0))
    d = colorize(out, s)
    assert (d[:, 3:] == np.array([0, 255, 0])).all()          # no coverage -> background colour
    assert not np.array_equal(d[0, 0], d[0, 2])                # near and far get different colours
    s2 = RenderSettings(mode="Depth", auto_range=False, near=1.0, far=30.0)
    assert not np.array_equal(colorize(out, s2)[0, 2], d[0, 2])  # near/far change the mapping
    a = colorize(out, RenderSettings(mode="Alpha"))
    assert not np.array_equal(a[0, 0], a[0, 5])
    with pytest.raises(ValueError, match="mode"):
        colorize(out, RenderSettings(mode="Normals"))
    # Normal / Samples: shown when the method returns them, RGB otherwise
    assert (colorize(out, RenderSettings(mode="Normal")) == rgb).all()
    assert (colorize(out, RenderSettings(mode="Samples")) == rgb).all()
    normal = torch.zeros(4, 6, 3)
    normal[..., 2] = 1.0
    n = colorize({**out, "normal": normal}, RenderSettings(mode="Normal"))
    assert (n[..., 2] == 255).all() and (n[..., 0] == 128).all()
    evals = torch.zeros(4, 6)
    evals[:, :3] = 50.0
    h = colorize({**out, "cost": evals}, RenderSettings(mode="Samples"))
    assert not np.array_equal(h[0, 0], h[0, 5])


class FakeScene:
    def __init__(self):
        self.images = []

    def set_background_image(self, img, format="jpeg", jpeg_quality=None):
        self.images.append(img.copy())


class SlowSource:
    """Renders an image whose value encodes the camera x position; takes `delay` seconds."""

    def __init__(self, delay):
        self.delay = delay
        self.calls = []
        self.threads = set()

    def render(self, cams, background):
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        x = float(cams.c2w[0, 0, 3])
        self.calls.append((x, int(cams.width[0])))
        H, W = int(cams.height[0]), int(cams.width[0])
        return {"rgb": torch.full((H, W, 3), x / 100.0), "alpha": torch.ones(H, W), "depth": torch.ones(H, W)}


def _view(x, moving=True):
    return ViewRequest(np.array([1.0, 0, 0, 0]), np.array([x, 0.0, 0.0]), 1.0, 400, 300, moving)


def _pump(q, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        q.run_pending(timeout=0.01)


def test_client_renderer_drops_stale_requests_and_upgrades_at_rest():
    q = TaichiQueue()                         # owned by this (main) test thread
    src = SlowSource(0.15)
    client = SimpleNamespace(client_id=7, scene=FakeScene())
    st = RenderSettings(max_side=64, target_fps=10, rest_delay=0.2)
    cr = ClientRenderer(client, src, st, taichi=q)
    try:
        pend = []

        def fast_client():                    # camera messages arrive on viser's threads, 100/s
            for i in range(40):
                cr.request(_view(float(i)))
                pend.append(cr.slot.pending)
                time.sleep(0.01)

        t = threading.Thread(target=fast_client)
        t.start()
        _pump(q, 0.6)
        t.join(5)
        _pump(q, 1.5)
        assert max(pend) <= 1
        assert cr.slot.dropped >= 30, cr.stats()
        assert len(src.calls) <= 10
        # the newest camera was rendered, then re-rendered at full size once at rest
        assert src.calls[-1] == (39.0, 64)
        assert any(w < 64 for _x, w in src.calls[:-1]), src.calls      # moving frames are smaller
        assert cr.frames_full >= 1
        assert np.allclose(client.scene.images[-1], round(255 * 0.39), atol=1)
        assert src.threads == {threading.get_ident()}                  # rendered on the Taichi thread
    finally:
        cr.stop()
        _pump(q, 0.3)
    assert not cr.alive


class FakeServer:
    def __init__(self):
        self.connect_cbs, self.disconnect_cbs = [], []

    def on_client_connect(self, cb):
        self.connect_cbs.append(cb)

    def on_client_disconnect(self, cb):
        self.disconnect_cbs.append(cb)


class FakeClient:
    def __init__(self, cid):
        self.client_id = cid
        self.scene = FakeScene()
        self.camera_cbs = []
        self.camera = SimpleNamespace(on_update=self.camera_cbs.append, wxyz=np.array([1.0, 0, 0, 0]),
                                      position=np.array([float(cid), 0, 0]), fov=1.0, image_width=320, image_height=240)


def test_panel_frees_client_state_on_disconnect():
    q = TaichiQueue()
    srv = FakeServer()
    panel = RenderPanel(srv, SlowSource(0.01), RenderSettings(max_side=32), gui=False, taichi=q)
    clients = [FakeClient(i) for i in range(3)]
    for c in clients:
        srv.connect_cbs[0](c)
        c.camera_cbs[0](c.camera)
    _pump(q, 0.8)
    assert set(panel.stats()) == {0, 1, 2}
    assert all(s["frames_sent"] >= 1 for s in panel.stats().values())
    workers = dict(panel.clients)
    srv.disconnect_cbs[0](clients[1])
    _pump(q, 0.5)
    assert set(panel.clients) == {0, 2}
    assert not workers[1].alive
    n0 = len(clients[1].scene.images)
    clients[1].camera_cbs[0](clients[1].camera)      # a late camera message after disconnect
    _pump(q, 0.3)
    assert len(clients[1].scene.images) == n0
    panel.close()
    assert not any(w.alive for w in workers.values()) and panel.clients == {}


def test_taichi_queue_runs_jobs_on_owner_thread_and_fails_them_on_close():
    q = TaichiQueue()
    res = {}

    def worker():
        res["value"] = q.call(lambda a, b: (a + b, threading.get_ident()), 2, 3, timeout=5)
        try:
            q.call(lambda: 1 / 0, timeout=5)
        except ZeroDivisionError:
            res["error"] = True

    t = threading.Thread(target=worker)
    t.start()
    end = time.monotonic() + 5
    while t.is_alive() and time.monotonic() < end:
        q.run_pending(timeout=0.01)
    assert res["value"] == (5, threading.get_ident()) and res["error"]
    got = []
    t2 = threading.Thread(target=lambda: got.append(_call_catch(q)))
    t2.start()
    time.sleep(0.1)
    q.close()
    t2.join(5)
    assert got == ["closed"]
    with pytest.raises(RuntimeError, match="owns Taichi"):
        th = []
        t3 = threading.Thread(target=lambda: th.append(_run_pending_catch(q)))
        t3.start()
        t3.join(5)
        raise th[0]


def _call_catch(q):
    try:
        q.call(lambda: 1, timeout=5)
    except QueueClosed:
        return "closed"
    return "ran"


def _run_pending_catch(q):
    try:
        q.run_pending()
    except RuntimeError as e:
        return e
    return RuntimeError("no error")


def test_training_viewer_hook_drives_a_viewer_without_a_browser(tmp_path):
    import engine
    from shaders import runtime
    from viewer.app import free_port
    from viewer.training import TrainingViewerHook

    from .conftest import make_tiny_gaussians

    runtime.init()
    method = engine.load(make_tiny_gaussians(tmp_path / "t.ply", n=20), dt=0.05)
    trainer = SimpleNamespace(method=method, dataset=None, step=0)
    hook = TrainingViewerHook(port=free_port(), keep_open=False, verbose=False, gui_interval=0.0)
    hook.on_start(trainer)
    try:
        for s in range(1, 4):
            hook.before_step(trainer)
            trainer.step = s
            hook.after_step(trainer, 0.5 / s, {"psnr": 20.0 + s})
        md = hook.viewer.stats_md.content
        assert "step **3**" in md and "PSNR 23.00" in md and "20 Gaussians" in md
        hook.viewer.pause()
        t0 = time.monotonic()
        threading.Timer(0.4, hook.viewer.resume).start()
        hook.before_step(trainer)                    # blocks until resumed from another thread
        assert 0.3 < time.monotonic() - t0 < 5
    finally:
        hook.on_end(trainer)
    assert hook.viewer._closed
