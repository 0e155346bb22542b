"""Live viewer for ``kernelight train ... --viewer``: the render panel on the model being trained.

The trainer calls, from its own thread::

    viewer = TrainingViewer(method, dataset, port=7007)   # prints the URL
    ...
    viewer.wait_if_paused()                  # blocks while paused; runs queued viewer renders
    with engine.kernels.lock():              # training steps and viewer renders never overlap
        loss, stats = step()
    viewer.update(step, loss, psnr, method.num_primitives)
    ...
    viewer.close()

Viewer renders are queued (:func:`engine.kernels.queue`) and run on the training thread inside
``update`` / ``wait_if_paused``, holding :func:`engine.kernels.lock`: a render only
happens between two training steps and always sees a consistent model (parameters, BVH,
densification). The trainer must run on the main thread (where Taichi was initialised). ``update`` is cheap: it stores numbers, refreshes the GUI at most
``gui_interval`` seconds apart and asks the clients for a new frame at most every
``render_interval`` seconds.
"""
from __future__ import annotations

import threading
import time

from .app import LOCALHOST, ViewerOptions, port_available
from .render_panel import RenderPanel, RenderSettings
from .scene import MethodScene


class TrainingViewer:
    def __init__(self, method, dataset=None, host: str = LOCALHOST, port: int = 7007, max_side: int = 256,
                 target_fps: float = 5.0, render_interval: float = 1.0, gui_interval: float = 0.5,
                 verbose: bool = True):
        import viser

        from engine.errors import ConfigError
        from engine.kernels import queue as default_queue

        from .viser_threads import install as install_viser_thread_safety

        self.taichi = default_queue()
        if not port_available(host, port):
            raise ConfigError(f"--viewer-port {port}: already in use on {host}")
        cams = None
        if dataset is not None and "train" in getattr(dataset, "splits", {}):
            cams = dataset.splits["train"].cameras
        self.scene = MethodScene(method, name="training", train_cameras=cams)
        self.options = ViewerOptions(host=host, port=port, max_side=max_side, target_fps=target_fps)
        install_viser_thread_safety()  # render threads push frames; see viewer/viser_threads.py
        self.server = viser.ViserServer(host=host, port=port, label="kernelight (training)", verbose=False)
        srv = self.server
        srv.gui.configure_theme(control_width="medium", show_share_button=False)
        srv.scene.set_up_direction(tuple(self.scene.up))
        from .scene import default_camera

        pos, look, up = default_camera(self.scene)
        srv.initial_camera.position, srv.initial_camera.look_at = tuple(pos), tuple(look)
        srv.initial_camera.up_direction = tuple(up)
        bg = tuple(float(x) for x in getattr(dataset, "background", (0.0, 0.0, 0.0))) if dataset is not None else (0.0, 0.0, 0.0)
        with srv.gui.add_folder("Training"):
            self.stats_md = srv.gui.add_markdown("waiting for the first step")
            self.pause_btn = srv.gui.add_button("Pause training")
        self.pause_btn.on_click(lambda _e: self.toggle_pause())
        self.render_panel = RenderPanel(srv, self.scene, RenderSettings(max_side=max_side, target_fps=target_fps,
                                                                        background=bg), taichi=self.taichi)
        if cams is not None and len(cams) > 0:
            from .frustums import TrainingFrustums

            self.frustums = TrainingFrustums(srv, cams, scale=0.08 * self.scene.radius)
        self._running = threading.Event()
        self._running.set()
        self._closed = False
        self.render_interval = float(render_interval)
        self.gui_interval = float(gui_interval)
        self._last_render = 0.0
        self._last_gui = 0.0
        self.last = {"step": 0, "loss": float("nan"), "psnr": float("nan"), "num_primitives": method.num_primitives}
        if verbose:
            print(f"viewer: {self.url}  (training view; Pause/Resume in the panel)", flush=True)

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST if self.options.host in ('0.0.0.0', '') else self.options.host}:{self.server.get_port()}"

    # -- pause / resume
    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()
        self.pause_btn.label = "Resume training"
        self._show()

    def resume(self) -> None:
        self._running.set()
        self.pause_btn.label = "Pause training"
        self._show()

    def toggle_pause(self) -> None:
        self.resume() if self.paused else self.pause()

    def wait_if_paused(self, poll: float = 0.25) -> None:
        """Block the training loop while paused (returns at once otherwise, or once closed)."""
        while not self._closed and not self._running.is_set():
            self._pump(poll)
        self._pump(0.0)

    # -- training progress
    def update(self, step: int, loss: float, psnr: float, num_primitives: int) -> None:
        """Record the latest numbers; refresh GUI and live frames at their intervals."""
        self.last = {"step": int(step), "loss": float(loss), "psnr": float(psnr), "num_primitives": int(num_primitives)}
        now = time.monotonic()
        if now - self._last_gui >= self.gui_interval:
            self._last_gui = now
            self._show()
        if now - self._last_render >= self.render_interval:
            self._last_render = now
            self.render_panel.refresh()
        self._pump(0.0)

    def _pump(self, timeout: float) -> None:
        """Run the viewer's queued renders here, on the training thread, between steps."""
        if self.taichi.on_owner_thread:
            self.taichi.run_pending(timeout=timeout)
        elif timeout:
            time.sleep(timeout)

    def _show(self) -> None:
        d = self.last
        state = "**paused**" if self.paused else "running"
        self.stats_md.content = (f"step **{d['step']}** · loss {d['loss']:.4f} · PSNR {d['psnr']:.2f} dB · "
                                 f"{d['num_primitives']:,} Gaussians · {state}")

    def close(self) -> None:
        self._closed = True
        self._running.set()
        self.render_panel.close()
        self.server.stop()


class TrainingViewerHook:
    """Adapter for the trainer's generic hooks (the engine never imports the viewer).

    ``kernelight train ... --viewer`` creates one in the CLI and passes it in
    ``TrainSettings.hooks``; the trainer calls ``on_start(trainer)`` once, ``before_step(trainer)``
    and ``after_step(trainer, loss, stats)`` around each step, and ``on_end(trainer)`` at the end.
    ``keep_open``: after training, keep serving the final model until Ctrl-C (like nerfstudio).
    """

    def __init__(self, host: str = LOCALHOST, port: int = 7007, keep_open: bool = True, **viewer_kwargs):
        self.host, self.port, self.keep_open = host, port, keep_open
        self.viewer_kwargs = viewer_kwargs
        self.viewer: TrainingViewer | None = None

    def on_start(self, trainer) -> None:
        self.viewer = TrainingViewer(trainer.method, getattr(trainer, "dataset", None), host=self.host,
                                     port=self.port, **self.viewer_kwargs)

    def before_step(self, trainer) -> None:
        self.viewer.wait_if_paused()

    def after_step(self, trainer, loss: float, stats: dict) -> None:
        self.viewer.update(trainer.step, loss, stats.get("psnr", float("nan")), trainer.method.num_primitives)

    def on_end(self, trainer) -> None:
        if self.viewer is None:
            return
        try:
            if self.keep_open:
                self.viewer.render_panel.refresh()
                print(f"training finished; the viewer keeps serving the final model at {self.viewer.url} "
                      "(Ctrl-C to exit)", flush=True)
                while True:
                    self.viewer._pump(0.1)
        except KeyboardInterrupt:
            pass
        finally:
            self.viewer.close()
