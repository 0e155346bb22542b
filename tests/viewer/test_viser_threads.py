"""viewer.viser_threads: viser's message-buffer events may be set from worker threads.

CI failed once with ``RuntimeError: deque mutated during iteration`` inside
``asyncio.Event.set`` while the five-client load test moved cameras from its thread.  The
race itself is rare, so these tests check its cause directly: who iterates the event's
waiters.  A plain ``asyncio.Event`` does it on the calling thread (the first test shows
that, so the instrument can fail); ``ThreadSafeEvent`` must leave it to the loop thread.
"""

import asyncio
import collections
import threading
import time

import pytest

from viewer.viser_threads import ThreadSafeEvent, install

pytestmark = pytest.mark.timeout(60)


class _RecordingDeque(collections.deque):
    """Waiter list that records which thread iterates it."""

    def __init__(self, *a):
        super().__init__(*a)
        self.iterated_on: list[int] = []

    def __iter__(self):
        self.iterated_on.append(threading.get_ident())
        return super().__iter__()


def _wake_from_foreign_thread(make_event):
    """Loop thread awaits the event; the test thread sets it. Returns (loop thread id, iterating threads, woke)."""
    loop = asyncio.new_event_loop()
    ready, woke = threading.Event(), threading.Event()
    box = {}

    async def waiter():
        ev = box["ev"] = make_event(loop)
        ev._waiters = _RecordingDeque()        # CPython's Event keeps its waiters in a deque
        ready.set()
        await ev.wait()
        woke.set()

    def run():
        box["tid"] = threading.get_ident()
        loop.run_until_complete(asyncio.wait_for(waiter(), 10))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(5)
    deadline = time.monotonic() + 5
    while not box["ev"]._waiters and time.monotonic() < deadline:   # the waiter is parked in wait()
        time.sleep(0.001)
    assert box["ev"]._waiters, "the loop never started waiting"
    box["ev"].set()
    ok = woke.wait(3)
    if not ok:                                          # a plain Event resolved the future without waking the loop
        loop.call_soon_threadsafe(lambda: None)
        woke.wait(5)
    t.join(10)
    loop.close()
    return box["tid"], box["ev"]._waiters.iterated_on, ok


def test_plain_asyncio_event_iterates_waiters_on_the_calling_thread():
    loop_tid, iterated_on, woke = _wake_from_foreign_thread(lambda loop: asyncio.Event())
    assert threading.get_ident() in iterated_on       # the unsafe part: foreign thread walks the deque
    # (and its future is resolved off-loop, so the loop only notices when something else wakes it:
    # here ``woke`` is typically False)


def test_thread_safe_event_wakes_on_the_loop_thread_only():
    loop_tid, iterated_on, woke = _wake_from_foreign_thread(ThreadSafeEvent)
    assert woke, "a set() from another thread must still wake the waiter"
    assert iterated_on and set(iterated_on) == {loop_tid}


def test_set_on_the_loop_thread_is_immediate_and_closed_loop_is_harmless():
    loop = asyncio.new_event_loop()

    async def on_loop():
        ev = ThreadSafeEvent(loop)
        ev.set()
        return ev.is_set()

    assert loop.run_until_complete(on_loop())
    loop.close()
    ev = ThreadSafeEvent(loop)
    ev.set()                                           # closed loop: nothing to wake, no error
    assert not ev.is_set()
    free = ThreadSafeEvent(None)
    free.set()
    assert free.is_set()


def test_install_patches_every_viser_message_buffer():
    from viser.infra._async_message_buffer import AsyncMessageBuffer

    install()
    install()                                          # idempotent
    loop = asyncio.new_event_loop()
    try:
        buf = AsyncMessageBuffer(loop, persistent_messages=False)
        assert isinstance(buf.message_event, ThreadSafeEvent)
        assert isinstance(buf.flush_event, ThreadSafeEvent)
        assert buf.message_event._owner_loop is loop
    finally:
        loop.close()


def test_pushing_from_threads_reaches_a_waiting_consumer():
    """A viser buffer with a consumer parked on it; 4 threads push 200 messages each."""
    from viser.infra._async_message_buffer import AsyncMessageBuffer
    from viser._messages import RunJavascriptMessage    # never coalesced: all 800 must arrive

    install()
    loop = asyncio.new_event_loop()
    buf = AsyncMessageBuffer(loop, persistent_messages=False)
    got, started = [], threading.Event()

    async def consume():
        gen = buf.window_generator(client_id=1)
        started.set()
        async for window in gen:
            got.extend(window)
            if len(got) >= 800:
                break

    t = threading.Thread(target=lambda: loop.run_until_complete(asyncio.wait_for(consume(), 30)), daemon=True)
    t.start()
    assert started.wait(5)
    errors = []

    def push():
        for i in range(200):
            try:
                buf.push(RunJavascriptMessage(source=f"// {i}"))
            except Exception as exc:               # pragma: no cover - the failure this guards against
                errors.append(repr(exc))

    ps = [threading.Thread(target=push) for _ in range(4)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    t.join(30)
    loop.close()
    assert not errors
    assert len(got) == 800
