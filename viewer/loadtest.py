"""Load and exposure probes for the viewer: viser's client protocol without a browser.

Used by ``tests/viewer/test_load.py`` and ``tools/bench_viewer_load.py``:

* :class:`ProtocolClient` speaks viser's websocket protocol (``websockets``' sync client, the
  package viser itself uses): it sends camera messages like a browser tab and counts the frames
  (``BackgroundImageMessage``) that come back, with the client-side latency camera -> frame.
* :class:`SlowClient` does the websocket upgrade on a raw socket with a tiny receive buffer,
  sends camera messages and **never reads**: the server's writes to it back up.
* :func:`http_get` sends one raw HTTP request line (no client-side path normalisation), for
  path-traversal probes.
* :func:`memory` / :func:`reset_peak` read this process's resident set (VmRSS) and its peak
  (VmHWM) from ``/proc/self/status``; ``reset_peak`` restarts the peak (``/proc/self/clear_refs``).

Everything here talks to the address it is given; the tests and the benchmark use 127.0.0.1.
"""
from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time

import numpy as np


# ------------------------------------------------------------------------------------- memory
def memory() -> dict:
    """{'rss_mb', 'peak_mb'} of this process (Linux /proc; NaN elsewhere)."""
    out = {"rss_mb": float("nan"), "peak_mb": float("nan")}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_mb"] = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    out["peak_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------ camera messages
def camera_message(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0), fov: float = 0.9,
                   width: int = 640, height: int = 480) -> bytes:
    """A viser ``ViewerCameraMessage`` (what a browser tab sends when its camera moves), msgpack."""
    import msgspec

    from engine.camera_paths import look_at

    from .camera_convert import c2w_to_pose

    wxyz, pos = c2w_to_pose(look_at(np.asarray(eye, float), np.asarray(target, float),
                                    np.asarray(up, float)).double().numpy())
    return msgspec.msgpack.encode({
        "type": "ViewerCameraMessage", "wxyz": [float(x) for x in wxyz], "position": [float(x) for x in pos],
        "fov": float(fov), "near": 0.01, "far": 1000.0, "image_height": int(height), "image_width": int(width),
        "look_at": [float(x) for x in target], "up_direction": [float(x) for x in up]})


def orbit_eye(k: int, radius: float = 2.5, height: float = 0.8, speed: float = 0.15, center=(0.0, 0.0, 0.0)):
    ang = speed * k
    c = np.asarray(center, float)
    return c + np.array([radius * np.cos(ang), radius * np.sin(ang), height])


def message_types(payload: bytes) -> list[str]:
    """The message type names in one server -> client websocket message (viser's wire format:
    8-byte msgpack size, 8-byte compressed size, zstd(msgpack), binary buffers). A background
    image without pixels (viser's initial clear) is reported as ``BackgroundImageMessage:empty``."""
    import msgspec
    import zstandard

    n_inner, n_comp = struct.unpack_from("<QQ", payload, 0)
    inner = zstandard.ZstdDecompressor().decompress(payload[16:16 + n_comp], max_output_size=n_inner)
    body = msgspec.msgpack.decode(inner)
    out = []
    for m in body.get("messages", ()):
        t = m.get("type", "?")
        out.append(t + ":empty" if t == "BackgroundImageMessage" and m.get("rgb_data") is None else t)
    return out


def _subprotocol() -> str:
    import viser

    return f"viser-v{viser.__version__}"


# ------------------------------------------------------------------------------ normal client
class ProtocolClient:
    """A well-behaved viser client: reads everything; :meth:`move` sends a camera update and
    the reader thread timestamps the next frame (client-side latency, seconds)."""

    def __init__(self, host: str, port: int, timeout: float = 20.0):
        from websockets.sync.client import connect

        self.ws = connect(f"ws://{host}:{port}", subprotocols=[_subprotocol()], open_timeout=timeout,
                          max_size=64 * 1024 * 1024, compression=None)
        self.frames = 0
        self.messages = 0
        self.latencies: list[float] = []
        self._sent_at: float | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True, name="kl-load-reader")
        self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                payload = self.ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:
                return
            if not isinstance(payload, bytes):
                continue
            try:
                types = message_types(payload)
            except Exception:
                continue
            now = time.monotonic()
            with self._lock:
                self.messages += len(types)
                n = types.count("BackgroundImageMessage")
                if n:
                    self.frames += n
                    if self._sent_at is not None:
                        self.latencies.append(now - self._sent_at)
                        self._sent_at = None

    def move(self, eye, **kw) -> None:
        msg = camera_message(eye, **kw)
        with self._lock:
            if self._sent_at is None:               # latency of the oldest unanswered update
                self._sent_at = time.monotonic()
        self.ws.send(msg)

    def close(self) -> None:
        self._closed = True
        try:
            self.ws.close()
        except Exception:
            pass
        self._reader.join(5)


# -------------------------------------------------------------------------------- slow client
class SlowClient:
    """Websocket upgrade on a raw socket (receive buffer ``rcvbuf`` bytes), then camera messages
    only: it never reads a byte, so what the server sends it stays in the server's buffers."""

    def __init__(self, host: str, port: int, rcvbuf: int = 4096, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)   # before connect: small window
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"Sec-WebSocket-Protocol: {_subprotocol()}\r\n\r\n").encode())
        self.sent = 0

    def send_frame(self, payload: bytes, opcode: int = 0x2) -> None:
        """One masked websocket frame (clients must mask)."""
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        arr = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
        self.sock.sendall(head + mask + arr.tobytes())

    def move(self, eye, **kw) -> None:
        self.send_frame(camera_message(eye, **kw))
        self.sent += 1

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------- HTTP probe
def http_get(host: str, port: int, target: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``GET <target> HTTP/1.1`` verbatim; (status code, body). Status 0: no HTTP answer."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept-Encoding: identity\r\n"
                  f"Connection: close\r\n\r\n".encode("latin-1"))
        data = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        code = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        code = 0
    return code, body


def render_threads() -> int:
    """Live per-client render workers in this process."""
    return sum(1 for t in threading.enumerate() if t.name.startswith("kernelight-render"))


def server_connection(server, client_id: int):
    """viser's websocket connection object for ``client_id`` (None once it is gone). Internal API."""
    return server._websock_server._live_connections.get(client_id)


def limit_send_buffer(server, client_id: int, nbytes: int = 4096) -> bool:
    """Shrink the kernel send buffer of the server's socket to one client (a slow network path:
    backpressure after tens of kB instead of the ~4 MB loopback autotuning allows)."""
    conn = server_connection(server, client_id)
    if conn is None:
        return False
    sock = conn.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(nbytes))
    return True


def outgoing(server, client_id: int) -> dict:
    """What the server holds for one client: messages in viser's buffer, frames among them, and
    bytes in the websocket transport's write buffer."""
    out = {"buffered_messages": 0, "buffered_frames": 0, "transport_bytes": 0}
    try:
        state = server._websock_server._client_state_from_id.get(client_id)
        if state is not None:
            buf = state.message_buffer
            msgs = list(buf.message_from_id.values())
            out["buffered_messages"] = len(msgs)
            out["buffered_frames"] = sum(type(m).__name__ == "BackgroundImageMessage" for m in msgs)
        conn = server_connection(server, client_id)
        if conn is not None and conn.transport is not None:
            out["transport_bytes"] = int(conn.transport.get_write_buffer_size())
    except Exception:
        pass
    return out
