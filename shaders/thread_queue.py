"""Run Taichi work on the thread that initialised Taichi ("the Taichi thread").

Taichi's LLVM backend asserts that kernels are compiled on the thread that called ``ti.init``
(``llvm_context.cpp: add_struct_module: std::this_thread::get_id() == main_thread_id_``), so a
render started from a viser callback thread can crash. Viewer threads therefore never call the
renderer directly: they :meth:`TaichiQueue.call` it, which enqueues the job and waits for the
Taichi thread to run it. The Taichi thread pumps the queue:

* ``kernelight view``: the main thread does nothing else (:meth:`TaichiQueue.serve`);
* training: the trainer thread runs queued renders between steps (``TrainingViewer.update`` /
  ``wait_if_paused`` call :meth:`TaichiQueue.run_pending`), so training and viewing never race.

Jobs also hold :data:`shaders.runtime.runtime_lock` while they run.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future


class QueueClosed(RuntimeError):
    """The Taichi queue was closed before the job ran."""


class TaichiQueue:
    def __init__(self, owner_ident: int | None = None):
        self.owner = owner_ident if owner_ident is not None else threading.get_ident()
        self._q: queue.Queue = queue.Queue()
        self._closed = False
        self.jobs_run = 0

    @property
    def on_owner_thread(self) -> bool:
        return threading.get_ident() == self.owner

    def call(self, fn, *args, timeout: float | None = None, **kwargs):
        """Run ``fn(*args, **kwargs)`` on the Taichi thread and return its result (re-raises)."""
        from shaders import runtime

        if self.on_owner_thread:
            with runtime.runtime_lock:
                return fn(*args, **kwargs)
        if self._closed:
            raise QueueClosed("the viewer is shutting down")
        fut: Future = Future()
        self._q.put((fn, args, kwargs, fut))
        return fut.result(timeout)

    def run_pending(self, timeout: float = 0.0, max_jobs: int | None = None) -> int:
        """On the Taichi thread: run queued jobs (waiting up to ``timeout`` s for the first one).

        Only jobs already queued are run (at most ``max_jobs``), so a training loop is never held
        for long. Returns the number of jobs run.
        """
        from shaders import runtime

        if not self.on_owner_thread:
            raise RuntimeError("TaichiQueue.run_pending must be called on the thread that owns Taichi")
        n = 0
        limit = self._q.qsize() if max_jobs is None else max_jobs
        limit = max(limit, 1)
        while n < limit:
            try:
                item = self._q.get(timeout=timeout) if (n == 0 and timeout > 0) else self._q.get_nowait()
            except queue.Empty:
                break
            fn, args, kwargs, fut = item
            if fut.set_running_or_notify_cancel():
                try:
                    with runtime.runtime_lock:
                        res = fn(*args, **kwargs)
                except BaseException as exc:  # delivered to the waiting thread
                    fut.set_exception(exc)
                else:
                    fut.set_result(res)
            n += 1
            self.jobs_run += 1
        return n

    def serve(self, stop: threading.Event, poll: float = 0.1) -> None:
        """Run jobs until ``stop`` is set (the main loop of ``kernelight view``)."""
        while not stop.is_set():
            self.run_pending(timeout=poll)

    def close(self) -> None:
        """Fail every queued job (their callers get :class:`QueueClosed`)."""
        self._closed = True
        while True:
            try:
                _fn, _a, _k, fut = self._q.get_nowait()
            except queue.Empty:
                break
            if fut.set_running_or_notify_cancel():
                fut.set_exception(QueueClosed("the viewer is shutting down"))

    def reopen(self) -> None:
        self._closed = False


_default: TaichiQueue | None = None
_default_lock = threading.Lock()


def default_queue() -> TaichiQueue:
    """The process-wide queue, owned by the main thread (where Taichi is initialised).

    Initialises Taichi (``shaders.runtime.init``) if nobody has yet; call it first from the main
    thread, which must then pump the queue (:meth:`TaichiQueue.serve` / ``run_pending``).
    """
    global _default
    from shaders import runtime

    with _default_lock:
        if _default is None:
            if threading.current_thread() is not threading.main_thread() and not runtime._state["initialized"]:
                raise RuntimeError("initialise Taichi on the main thread first (shaders.runtime.init())")
            runtime.init()
            _default = TaichiQueue(threading.main_thread().ident)
        return _default
