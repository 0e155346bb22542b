"""Render panel: each client's camera drives the engine renderer, frames stream back as images.

Per client there is one :class:`ClientRenderer` with one worker thread and a single-slot
mailbox (:class:`LatestSlot`): a new camera update *replaces* the pending one, so a fast-moving
or slow client never piles up work (stale requests are counted in ``dropped``). While the camera
moves, frames are rendered at a reduced size chosen by :class:`AdaptiveResolution` from the
measured rays/s and the target frame rate; once the camera rests for ``rest_delay`` seconds the
view is re-rendered at full size (``max_side`` pixels on the longer side). A disconnecting
client stops its thread and its state is dropped.

A client that reads slowly (or never) does not make the server render for nothing or pile up
frames: before rendering, the worker checks whether viser still holds this client's previous
frame in its outgoing buffer (:func:`unsent_frame`, i.e. its socket writer has not taken it);
if so the request is held (polled every ``BACKLOG_POLL`` s) and replaced by any newer one, so
per client at most one frame waits in viser's buffer and one is being written to the socket.
A client whose frame stays unsent for ``RenderSettings.stall_timeout`` seconds is disconnected
(websockets' keepalive cannot do it: its ping queues behind the full write buffer).
Each worker counts frames sent, requests dropped as stale, held renders and the latency from
camera update to frame handed to viser (:meth:`ClientRenderer.stats`).

Renders run on the Taichi thread through the engine's kernel queue (:func:`engine.kernels.queue`,
holding :func:`engine.kernels.lock`), so viewer threads never race each other or a training loop.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .camera_convert import render_size, viser_to_cameras

MODES = ("RGB", "Depth", "Alpha", "Normal", "Samples")


# ------------------------------------------------------------------------------------ mailbox
class LatestSlot:
    """A one-item mailbox: :meth:`put` replaces any pending item (counted in ``dropped``)."""

    def __init__(self):
        self._cv = threading.Condition()
        self._item = None
        self._has = False
        self.closed = False
        self.dropped = 0
        self.accepted = 0

    def put(self, item) -> None:
        with self._cv:
            if self.closed:
                return
            if self._has:
                self.dropped += 1
            self._item, self._has = item, True
            self.accepted += 1
            self._cv.notify()

    def get(self, timeout: float | None):
        """The pending item (removing it), or ``None`` after ``timeout`` seconds or when closed."""
        with self._cv:
            if not self._has and not self.closed:
                self._cv.wait(timeout)
            if self.closed or not self._has:
                return None
            item, self._item, self._has = self._item, None, False
            return item

    @property
    def pending(self) -> int:
        with self._cv:
            return int(self._has)

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._item, self._has = None, False
            self._cv.notify_all()


# -------------------------------------------------------------------------- adaptive resolution
class AdaptiveResolution:
    """Chooses render sizes from the measured throughput (rays/s, exponential moving average).

    While moving: a pixel budget of ``rays_per_sec / target_fps`` rays, i.e. longer side
    ``sqrt(budget * aspect)`` (landscape) or ``sqrt(budget / aspect)`` (portrait), clamped to
    ``[min_side, max_side]``. At rest: ``max_side``.
    """

    def __init__(self, target_fps: float = 10.0, max_side: int = 512, min_side: int = 24,
                 initial_rays_per_sec: float = 5e4, smoothing: float = 0.3):
        self.target_fps = float(target_fps)
        self.max_side = int(max_side)
        self.min_side = int(min_side)
        self.rays_per_sec = float(initial_rays_per_sec)
        self.smoothing = float(smoothing)
        self.samples = 0

    def record(self, n_rays: int, seconds: float) -> None:
        if seconds <= 0 or n_rays <= 0:
            return
        r = n_rays / seconds
        a = 1.0 if self.samples == 0 else self.smoothing
        self.rays_per_sec = (1 - a) * self.rays_per_sec + a * r
        self.samples += 1

    def moving_side(self, aspect: float) -> int:
        budget = self.rays_per_sec / max(self.target_fps, 1e-3)
        aspect = max(float(aspect), 1e-3)
        side = math.sqrt(budget * aspect) if aspect >= 1 else math.sqrt(budget / aspect)
        return int(min(max(side, self.min_side), self.max_side))

    def resting_side(self) -> int:
        return self.max_side


# ------------------------------------------------------------------------------- settings/view
@dataclass
class RenderSettings:
    """Shared by all clients of one viewer (changed by the GUI)."""

    mode: str = "RGB"                        # one of MODES
    background: tuple = (0.0, 0.0, 0.0)      # RGB in [0, 1]
    auto_range: bool = True                  # depth colour range from the 2nd/98th percentiles
    near: float = 0.0                        # depth colour range when auto_range is off
    far: float = 5.0
    target_fps: float = 10.0
    max_side: int = 512
    min_side: int = 24
    rest_delay: float = 0.25                 # seconds without camera updates = "at rest"
    jpeg_quality: int = 85
    stall_timeout: float = 30.0              # a client whose frame stays unsent this long is dropped


@dataclass
class ViewRequest:
    """A snapshot of a client camera (viser conventions, see camera_convert)."""

    wxyz: np.ndarray
    position: np.ndarray
    fov: float
    image_width: int
    image_height: int
    moving: bool = True
    stamp: float = field(default_factory=time.monotonic)

    @classmethod
    def from_camera(cls, cam, moving: bool = True) -> "ViewRequest":
        return cls(np.array(cam.wxyz, dtype=np.float64), np.array(cam.position, dtype=np.float64),
                   float(cam.fov), int(cam.image_width), int(cam.image_height), moving)

    @property
    def aspect(self) -> float:
        return max(self.image_width, 1) / max(self.image_height, 1)


def colorize(out: dict, settings: RenderSettings) -> np.ndarray:
    """Renderer output -> (H, W, 3) uint8 image for the current mode.

    ``out`` holds the rendering contract (:mod:`engine.methods.base`): rgb (H,W,3) composited on the
    background, alpha (H,W), depth (H,W) (expected depth, normalised by alpha) and cost (H,W). Depth
    mode shows depth (turbo colour map between near and far) where alpha > 0.05 and the background
    elsewhere; alpha mode maps [0, 1] through turbo. Normal mode shows n * 0.5 + 0.5 where the
    method returns ``normal`` (shells); Samples mode is a heat map of ``cost`` (field samples or
    Gaussian evaluations per ray), 0 .. 99th percentile. Outputs without those keys show RGB.
    """
    from engine.io.images import colormap

    def np_(x):
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    mode = settings.mode
    if mode == "RGB":
        img = np_(out["rgb"]).astype(np.float32)
    else:
        alpha = np_(out["alpha"]).astype(np.float32)
        if mode == "Alpha":
            img = colormap(alpha, 0.0, 1.0)
        elif mode == "Depth":
            depth = np_(out["depth"]).astype(np.float32)     # expected depth, normalised by alpha
            valid = alpha > 0.05
            if settings.auto_range and valid.sum() >= 4:
                near, far = np.percentile(depth[valid], [2, 98])
            else:
                near, far = settings.near, settings.far
            if not far > near:
                far = near + 1e-3
            img = colormap(np.where(valid, depth, np.nan), float(near), float(far))
            img[~valid] = np.asarray(settings.background, np.float32)
        elif mode == "Normal":
            # methods with normals (shells); others fall back to RGB
            img = (np_(out["normal"]).astype(np.float32) * 0.5 + 0.5) if "normal" in out else np_(out["rgb"]).astype(np.float32)
        elif mode == "Samples":
            # field samples per ray (shells) or Gaussian evaluations per ray (RayGauss) as a heat map
            cnt = out.get("cost")
            if cnt is None:
                img = np_(out["rgb"]).astype(np.float32)
            else:
                cnt = np_(cnt).astype(np.float32)
                img = colormap(cnt, 0.0, float(max(np.percentile(cnt, 99), 1.0)))
        else:
            raise ValueError(f"unknown render mode {mode!r}; expected one of {MODES}")
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------- per client
BACKLOG_POLL = 0.02          # seconds between checks while a client's previous frame is unsent
LATENCY_WINDOW = 4096        # latencies kept per client (newest)
FRAME_MESSAGE = "BackgroundImageMessage"   # viser's redundancy key of set_background_image


def unsent_frame(client) -> bool:
    """Whether viser's outgoing buffer for ``client`` still holds a frame its socket writer has
    not taken yet (a slow or stalled client). ``False`` when it cannot tell (e.g. a test double)."""
    try:
        buf = client._websock_connection.get_message_buffer()
        return FRAME_MESSAGE in buf.id_from_redundancy_key
    except Exception:
        return False


def percentile_ms(seconds, q: float) -> float | None:
    """The ``q``-th percentile of a sequence of durations in seconds, in milliseconds (None if empty)."""
    xs = list(seconds)
    return float(np.percentile(np.asarray(xs) * 1000.0, q)) if xs else None


class ClientRenderer:
    """Worker thread rendering the newest view request of one client (see module docstring)."""

    def __init__(self, client, source, settings: RenderSettings, on_frame=None, taichi=None, on_stall=None):
        from engine.kernels import queue as default_queue

        self.taichi = taichi or default_queue()
        self.client = client
        self.source = source
        self.settings = settings
        self.on_frame = on_frame
        self.on_stall = on_stall       # called once when the client has not taken a frame for stall_timeout s
        self.stalled = False
        self._backlog_since: float | None = None
        self.slot = LatestSlot()
        self.res = AdaptiveResolution(settings.target_fps, settings.max_side, settings.min_side)
        self.frames_sent = 0
        self.frames_full = 0
        self.held = 0                  # renders postponed because the previous frame was still unsent
        self.superseded = 0            # held requests replaced by a newer one before rendering
        self.latencies: deque = deque(maxlen=LATENCY_WINDOW)   # camera update -> frame handed to viser (s)
        self.errors = 0
        self.last_error: str | None = None
        self.last_frame_time = 0.0
        self.last_size = (0, 0)
        self.last_render_s = 0.0
        self._last_view: ViewRequest | None = None
        self._low_pending = False
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"kernelight-render-{client.client_id}")
        self._thread.start()

    # -- requests
    def request(self, view: ViewRequest) -> None:
        self.slot.put(view)

    def refresh(self) -> None:
        """Re-render the last view at full size (settings or model changed)."""
        if self._last_view is not None:
            v = self._last_view
            self.slot.put(ViewRequest(v.wxyz, v.position, v.fov, v.image_width, v.image_height, moving=False))

    # -- lifecycle
    def stop(self, timeout: float = 0.0) -> None:
        """Stop the worker; it exits after the render in flight (if any) without sending it."""
        self._stop = True
        self.slot.close()
        if timeout > 0 and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- worker
    def backlogged(self) -> bool:
        """Whether this client's previous frame still waits in viser's buffer (see :func:`unsent_frame`)."""
        return unsent_frame(self.client)

    def _loop(self) -> None:
        held = None                   # the newest request, waiting for the previous frame to leave
        while not self._stop:
            if held is not None:
                timeout = BACKLOG_POLL
            else:
                timeout = self.settings.rest_delay if self._low_pending else 0.5
            view = self.slot.get(timeout)
            if self._stop:
                break
            again = False             # the same held request, checked once more
            if view is not None:
                if held is not None:
                    self.superseded += 1
                held = None
            elif held is not None:
                view, held, again = held, None, True
            if view is None:          # no new request: the resting full-size re-render, when due
                if self._low_pending and self._last_view is not None and not self.backlogged():
                    self._render(self._last_view, full=True, requested=False)
                continue
            if self.backlogged():     # a stale frame would only queue up behind the unsent one
                self.held += int(not again)
                held = view
                self._check_stall()
                continue
            self._backlog_since = None
            self._render(view, full=not view.moving)

    def _check_stall(self) -> None:
        """A client that has not taken its frame for ``stall_timeout`` s is reported once (the panel
        drops its connection: websockets' keepalive cannot, its ping waits behind the full buffer)."""
        now = time.monotonic()
        if self._backlog_since is None:
            self._backlog_since = now
        elif (not self.stalled and self.on_stall is not None
              and now - self._backlog_since > self.settings.stall_timeout):
            self.stalled = True
            self.on_stall(self)

    def _render(self, view: ViewRequest, full: bool, requested: bool = True) -> None:
        import torch

        s = self.settings
        self.res.target_fps, self.res.max_side, self.res.min_side = s.target_fps, s.max_side, s.min_side
        side = self.res.resting_side() if full else self.res.moving_side(view.aspect)
        W, H = render_size(view.image_width, view.image_height, side)
        try:
            cams = viser_to_cameras(view.wxyz, view.position, view.fov, W, H)
            t0 = time.perf_counter()
            out = self.taichi.call(self.source.render, cams, torch.tensor(s.background, dtype=torch.float32),
                                   timeout=120.0)
            dt = time.perf_counter() - t0
            img = colorize(out, s)
        except Exception as exc:  # keep serving; show the problem in the panel
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._low_pending = False
            return
        self.res.record(W * H, dt)
        self.last_render_s = dt
        self._last_view = view
        self._low_pending = (not full) and side < self.res.resting_side()
        if self._stop:
            return
        try:
            self.client.scene.set_background_image(img, format="jpeg", jpeg_quality=s.jpeg_quality)
        except Exception as exc:  # client went away between render and send
            self.errors += 1
            self.last_error = f"send failed: {exc}"
            return
        self.frames_sent += 1
        if requested:
            self.latencies.append(time.monotonic() - view.stamp)
        self.frames_full += int(full or not self._low_pending)
        self.last_frame_time = time.monotonic()
        self.last_size = (W, H)
        if self.on_frame is not None:
            self.on_frame(self)

    def stats(self) -> dict:
        """Counters of this client: frames sent, requests (accepted / dropped as stale, either replaced
        in the mailbox or while held), held renders, latency percentiles (camera update -> frame
        handed to viser, ms, over the newest ``LATENCY_WINDOW`` frames), errors, throughput."""
        lat = tuple(self.latencies)
        return {"frames_sent": self.frames_sent, "frames_full": self.frames_full,
                "dropped": self.slot.dropped + self.superseded, "held": self.held,
                "requests": self.slot.accepted, "pending": self.slot.pending, "errors": self.errors,
                "last_error": self.last_error, "rays_per_sec": self.res.rays_per_sec, "size": self.last_size,
                "render_ms": 1000 * self.last_render_s, "latency_p50_ms": percentile_ms(lat, 50),
                "latency_p95_ms": percentile_ms(lat, 95), "latency_samples": len(lat)}


# --------------------------------------------------------------------------------- the panel
class RenderPanel:
    """Registers client hooks on a viser server and owns one :class:`ClientRenderer` per client.

    ``source`` is any object with ``render(cameras, background) -> dict(rgb, alpha, depth)``
    (see :class:`viewer.scene.MethodScene`).
    """

    def __init__(self, server, source, settings: RenderSettings | None = None, gui: bool = True, taichi=None):
        from engine.kernels import queue as default_queue

        self.taichi = taichi or default_queue()
        self.server = server
        self.source = source
        self.settings = settings or RenderSettings()
        self.clients: dict[int, ClientRenderer] = {}
        self._gone: set[int] = set()      # disconnects that ran before their connect callback
        self.stalled_dropped = 0          # connections closed because the client stopped reading
        self._lock = threading.Lock()
        self._stats_md = None
        self._last_stats = 0.0
        if gui:
            self._build_gui()
        server.on_client_connect(self._connect)
        server.on_client_disconnect(self._disconnect)

    # -- GUI
    def _build_gui(self) -> None:
        gui, s = self.server.gui, self.settings
        with gui.add_folder("Render"):
            mode = gui.add_dropdown("Mode", MODES, initial_value=s.mode)
            bg = gui.add_rgb("Background", tuple(int(round(255 * c)) for c in s.background))
            auto = gui.add_checkbox("Auto depth range", s.auto_range)
            near = gui.add_number("Near", s.near, min=0.0, step=0.01)
            far = gui.add_number("Far", s.far, min=0.0, step=0.01)
            fps = gui.add_slider("Target FPS", min=1, max=60, step=1, initial_value=int(s.target_fps))
            res = gui.add_slider("Max resolution", min=32, max=2048, step=16, initial_value=int(s.max_side))
            self._stats_md = gui.add_markdown("_no frames yet_")
        self.gui = {"mode": mode, "background": bg, "auto_range": auto, "near": near, "far": far,
                    "target_fps": fps, "max_side": res}

        def changed(_event=None):
            s.mode = str(mode.value)
            s.background = tuple(float(c) / 255 for c in bg.value)
            s.auto_range = bool(auto.value)
            s.near, s.far = float(near.value), float(far.value)
            s.target_fps = float(fps.value)
            s.max_side = int(res.value)
            self.refresh()

        for h in self.gui.values():
            h.on_update(changed)

    def _on_frame(self, cr: ClientRenderer) -> None:
        now = time.monotonic()
        if self._stats_md is None or now - self._last_stats < 1.0:
            return
        self._last_stats = now
        with self._lock:
            crs = list(self.clients.values())
        if not crs:
            return
        rps = sum(c.res.rays_per_sec for c in crs) / len(crs)
        W, H = cr.last_size
        try:
            self._stats_md.content = (f"{len(crs)} client(s) · last frame {W}×{H} in "
                                      f"{1000 * cr.last_render_s:.0f} ms · {rps / 1e3:.0f}k rays/s")
        except Exception:
            pass

    # -- clients
    # viser runs plain connect/disconnect callbacks on a thread pool, so for a client that leaves
    # right after arriving the disconnect may run first: it leaves a tombstone that the connect
    # then honours (otherwise the worker of a departed client would live forever).
    def _connect(self, client) -> None:
        with self._lock:
            if client.client_id in self._gone:
                self._gone.discard(client.client_id)
                return
            cr = ClientRenderer(client, self.source, self.settings, on_frame=self._on_frame, taichi=self.taichi,
                                on_stall=self._stalled)
            self.clients[client.client_id] = cr

        @client.camera.on_update
        def _(cam) -> None:
            cr.request(ViewRequest.from_camera(cam, moving=True))

        # viser dispatches this callback on a thread pool after the client's first camera message,
        # which may have been handled before the hook above existed: render the current view now
        try:
            cr.request(ViewRequest.from_camera(client.camera, moving=False))
        except Exception:  # no camera state yet: the next camera message starts the frames
            pass

    def _stalled(self, cr: ClientRenderer) -> None:
        """Close the connection of a client that stopped reading (its frame unsent for stall_timeout s):
        abort the socket on viser's event loop; viser then runs the usual disconnect callbacks."""
        self.stalled_dropped += 1
        try:
            ws = self.server._websock_server
            conn = ws._live_connections.get(cr.client.client_id)
            if conn is not None:
                ws._background_event_loop.call_soon_threadsafe(conn.transport.abort)
        except Exception as exc:  # not a viser server (tests) or already gone
            cr.last_error = f"could not drop the stalled client: {exc}"

    def _disconnect(self, client) -> None:
        with self._lock:
            cr = self.clients.pop(client.client_id, None)
            if cr is None and len(self._gone) < 100_000:
                self._gone.add(client.client_id)
        if cr is not None:
            cr.stop()

    def refresh(self) -> None:
        """Re-render every client's current view at full size (after a settings/model change)."""
        with self._lock:
            crs = list(self.clients.values())
        for cr in crs:
            cr.refresh()

    def stats(self) -> dict[int, dict]:
        with self._lock:
            return {cid: cr.stats() for cid, cr in self.clients.items()}

    def close(self, timeout: float = 5.0) -> None:
        """Stop every client worker (pumping the Taichi queue meanwhile when on its thread)."""
        with self._lock:
            crs = list(self.clients.values())
            self.clients.clear()
        for cr in crs:
            cr.stop()
        deadline = time.monotonic() + timeout
        while any(cr.alive for cr in crs) and time.monotonic() < deadline:
            if self.taichi.on_owner_thread:
                self.taichi.run_pending(timeout=0.02)
            else:
                time.sleep(0.02)
