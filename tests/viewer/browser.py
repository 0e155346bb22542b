"""Headless Chromium for the viewer tests (selenium + Debian chromium / chromium-driver).

Taichi work of the viewer runs on the main thread (see shaders/thread_queue.py), so the tests
drive the browser from a helper thread (:func:`drive`) while the main thread pumps the viewer's
queue.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import pytest

CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--enable-unsafe-swiftshader", "--disable-dev-shm-usage", "--mute-audio",
                "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
                "--disable-backgrounding-occluded-windows")


def find_browser() -> tuple[str | None, str | None]:
    chrome = os.environ.get("KERNELIGHT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("KERNELIGHT_CHROMEDRIVER") or shutil.which("chromedriver")
    return chrome, driver


def require_browser():
    """Skip (or fail under KERNELIGHT_REQUIRE_BROWSER=1 / CI) when chromium or selenium is missing."""
    chrome, driver = find_browser()
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if chrome is None:
        missing.append("chromium")
    if driver is None:
        missing.append("chromedriver (Debian chromium-driver)")
    if missing:
        msg = "browser tests need " + ", ".join(missing) + " (run: sudo tools/install_sysdeps.sh --browser)"
        if os.environ.get("KERNELIGHT_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return chrome, driver


class Browser:
    """One headless Chromium window (own profile folder)."""

    def __init__(self, width: int = 900, height: int = 700):
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        chrome, driver = require_browser()
        self.profile = tempfile.mkdtemp(prefix="kl-chrome-")
        opts = Options()
        for f in CHROME_FLAGS:
            opts.add_argument(f)
        opts.add_argument(f"--window-size={width},{height}")
        opts.add_argument(f"--user-data-dir={self.profile}")
        opts.binary_location = chrome
        self.driver = webdriver.Chrome(options=opts, service=Service(driver))
        self.driver.set_page_load_timeout(30)
        self.driver.set_script_timeout(30)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def screenshot(self) -> np.ndarray:
        """The visible page as (H, W, 3) uint8."""
        from PIL import Image

        png = self.driver.get_screenshot_as_png()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def canvas_rect(self) -> dict:
        """Bounding box of the biggest <canvas> (the 3D view), CSS pixels."""
        return self.driver.execute_script(
            "let b=null,a=0;for(const c of document.querySelectorAll('canvas')){const r=c.getBoundingClientRect();"
            "if(r.width*r.height>a){a=r.width*r.height;b=r;}}return b&&{x:b.x,y:b.y,w:b.width,h:b.height};")

    def click_at(self, x: float, y: float) -> None:
        """A real mouse click (CDP input events) at page coordinates."""
        d = self.driver
        for typ in ("mouseMoved", "mousePressed", "mouseReleased"):
            d.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": typ, "x": float(x), "y": float(y),
                                                           "button": "left" if typ != "mouseMoved" else "none",
                                                           "buttons": 1 if typ == "mousePressed" else 0,
                                                           "clickCount": 1})
            time.sleep(0.05)

    def drag(self, x0, y0, x1, y1, steps: int = 8) -> None:
        """Left-button drag (orbits the camera in viser)."""
        d = self.driver
        d.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x0, "y": y0, "button": "none"})
        d.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mousePressed", "x": x0, "y": y0, "button": "left",
                                                       "buttons": 1, "clickCount": 1})
        for i in range(1, steps + 1):
            x = x0 + (x1 - x0) * i / steps
            y = y0 + (y1 - y0) * i / steps
            d.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y, "button": "left",
                                                           "buttons": 1})
            time.sleep(0.03)
        d.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseReleased", "x": x1, "y": y1, "button": "left",
                                                       "buttons": 0, "clickCount": 1})

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def drive(app, fn, timeout: float):
    """Run ``fn()`` in a helper thread while this (main) thread pumps ``app``'s Taichi queue.

    Returns ``fn``'s result; re-raises its exception; fails the test after ``timeout`` seconds.
    """
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised on the main thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True, name="kl-test-browser")
    t.start()
    end = time.monotonic() + timeout
    while t.is_alive() and time.monotonic() < end:
        app.pump(0.05)
    if t.is_alive():
        pytest.fail(f"browser scenario did not finish within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def wait_for(cond, timeout: float, what: str, poll: float = 0.1):
    """Poll ``cond()`` (from the helper thread) until truthy; AssertionError naming ``what`` otherwise."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def maybe_save(img: np.ndarray, name: str) -> None:
    """Save a screenshot to $KERNELIGHT_TEST_SHOTS/<name>.png when that variable is set (debugging)."""
    folder = os.environ.get("KERNELIGHT_TEST_SHOTS")
    if folder:
        from PIL import Image

        os.makedirs(folder, exist_ok=True)
        Image.fromarray(img).save(os.path.join(folder, f"{name}.png"))
