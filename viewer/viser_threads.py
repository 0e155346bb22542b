"""Make viser's message buffers safe to write to from worker threads.

kernelight pushes to viser from threads other than viser's event loop: every client's
render thread sends its frames (``set_background_image``), GUI callbacks move cameras,
and the training viewer updates its panel from the training loop.  viser 1.1.1 wakes the
consumers of a message buffer with ``asyncio.Event.set()`` called directly on the calling
thread, besides the thread-safe ``call_soon_threadsafe(event.set)`` it schedules right
after.  ``asyncio.Event`` is not thread-safe: ``set()`` iterates the event's waiters
while the loop thread may be adding or removing one, and then fails with
``RuntimeError: deque mutated during iteration`` (seen in CI with five browser clients)
or resolves the loop's futures from the wrong thread.

:func:`install` swaps the events of every message buffer viser creates for
:class:`ThreadSafeEvent`, whose ``set()`` from a foreign thread is handed to the loop with
``call_soon_threadsafe``.  Nothing is lost by the hand-off: viser's consumer decides what
to send from its message counter, not from the event, and never reads ``is_set()``; the
event only wakes it, and the wake-up now happens on the loop thread.
"""

import asyncio
import functools

_INSTALLED = False


class ThreadSafeEvent(asyncio.Event):
    """An :class:`asyncio.Event` bound to ``loop`` whose :meth:`set` may be called from any thread.

    On the loop's own thread (or with no loop) it behaves exactly like ``asyncio.Event``.
    From any other thread ``set()`` is scheduled on the loop; if that loop is already
    closed there is nobody left to wake and the call does nothing.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None):
        super().__init__()
        self._owner_loop = loop

    def set(self) -> None:
        loop = self._owner_loop
        if loop is None or _running_loop() is loop:
            super().set()
            return
        try:
            loop.call_soon_threadsafe(super().set)
        except RuntimeError:  # loop closed: no consumer left to wake
            pass


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def install() -> None:
    """Patch viser's ``AsyncMessageBuffer`` once, before any server is created (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from viser.infra import _async_message_buffer as amb

    cls = amb.AsyncMessageBuffer
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.message_event = ThreadSafeEvent(self.event_loop)
        self.flush_event = ThreadSafeEvent(self.event_loop)

    cls.__init__ = __init__
    _INSTALLED = True
