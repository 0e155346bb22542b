"""The viewer's text-to-3D prompt box (GVGEN): a caption, a seed and a Generate button.

Shown when the viewer opens a gvgen generator (a ``kernelight train gvgen`` run, or the shipped
checkpoint ``engine/methods/gvgen/weights/primitives16.pt``). Generate samples the object in a
background thread (the GUI stays live; the button is disabled meanwhile), then makes it the
object the render panel shows (the generator's ``caption`` / ``gen_seed``) and re-renders every
client. A bad caption (empty, over-long, not text) shows its one-line message in the status line;
words the training captions never had are listed there too.

:meth:`GeneratePanel.generate` is the whole logic, callable without a browser (the tests do).
"""
from __future__ import annotations

import threading


class GeneratePanel:
    """``server``: a viser server (None: no GUI, logic only); ``scene``: a
    :class:`viewer.scene.MethodScene` whose method is a gvgen generator; ``on_change()`` runs after a
    generation is shown (the render panel's ``refresh``)."""

    def __init__(self, server, scene, on_change=None, gui: bool = True):
        self.server = server
        self.scene = scene
        self.method = scene.method
        self.on_change = on_change
        self._lock = threading.Lock()
        self._thread = None
        self.history: list[dict] = []
        self.status = "_type a caption and press Generate_"
        self.gui = None
        if gui and server is not None:
            self._build_gui()

    def _build_gui(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Text to 3D"):
            self.text = gui.add_text("Caption", self.method.default_caption())
            self.seed = gui.add_number("Seed", int(self.method.cfg.gen_seed), min=0, step=1)
            self.button = gui.add_button("Generate")
            self.status_md = gui.add_markdown(self.status)
        self.gui = {"text": self.text, "seed": self.seed, "button": self.button, "status": self.status_md}
        self.button.on_click(lambda _e: self.start(str(self.text.value), int(self.seed.value)))

    def _show_status(self, text: str) -> None:
        self.status = text
        if self.gui is not None:
            self.status_md.content = text

    def start(self, caption: str, seed: int = 0) -> threading.Thread | None:
        """Generate in a background thread (one at a time: a click while one runs is ignored)."""
        if self._thread is not None and self._thread.is_alive():
            self._show_status("_still generating the previous caption..._")
            return None
        if self.gui is not None:
            self.button.disabled = True
        self._thread = threading.Thread(target=self.generate, args=(caption, seed), daemon=True,
                                        name="kernelight-generate")
        self._thread.start()
        return self._thread

    def generate(self, caption: str, seed: int = 0) -> dict | None:
        """Generate ``caption`` with ``seed`` and show it; returns the generation (None on a bad
        caption, whose message becomes the status line)."""
        from engine.errors import KernelightError

        with self._lock:
            self._show_status(f"_generating {caption.strip()[:60]!r} ..._")
            try:
                gen = self.method.generate(caption, seed=int(seed))
            except KernelightError as exc:
                self._show_status(f"**cannot generate:** {exc}")
                return None
            finally:
                if self.gui is not None:
                    self.button.disabled = False
            # the render panel draws the generator's caption / seed: point them at this one (cached)
            self.method.cfg.caption = gen["caption"]
            self.method.cfg.gen_seed = int(seed)
            self.method._last_gen = gen
            n = int(self.method.gaussians(gen)["means"].shape[0])
            msg = f"**{gen['caption']}** (seed {seed}): {n:,} Gaussians, {gen['seconds']:.1f} s"
            if gen["unknown_words"]:
                msg += f"; words the training set never saw: {', '.join(gen['unknown_words'])}"
            self._show_status(msg)
            self.history.append({"caption": gen["caption"], "seed": int(seed), "gaussians": n,
                                 "seconds": gen["seconds"], "unknown_words": list(gen["unknown_words"])})
        if self.on_change is not None:
            self.on_change()
        return gen
