"""A real X11 window under Xvfb (the offscreen tests never load the xcb platform plugin)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.xvfb

SCRIPT = r"""
import sys, time
from PySide6.QtCore import QSettings
from PySide6.QtGui import QGuiApplication
from ddpm_gui.qt.app import make_application
app = make_application([])
assert QGuiApplication.platformName() == "xcb", QGuiApplication.platformName()
from ddpm_gui.qt.main_window import MainWindow
w = MainWindow(settings=QSettings(sys.argv[2], QSettings.Format.IniFormat))
w.settings.setValue("data/limit", 200)
w.resize(1024, 700); w.move(0, 0); w.show()
w.start_engine()
t = time.monotonic()
while time.monotonic() - t < 60 and not (w.is_ready() and w.state.data is not None and not w.is_busy()):
    app.processEvents(); time.sleep(0.01)
for _ in range(50):
    app.processEvents(); time.sleep(0.01)
shot = QGuiApplication.primaryScreen().grabWindow(0)
ok = shot.save(sys.argv[1])
print("ready", w.is_ready(), "data", w.state.data is not None, "saved", ok, shot.width(), shot.height())
w.close()
"""


def _free_display() -> int:
    for n in range(90, 140):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            return n
    pytest.skip("no free X display number")


@pytest.fixture
def xvfb_display():
    yield from _xvfb("1280x800")


def _xvfb(size: str):
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb not installed: apt-get install xvfb libxcb-icccm4 libxcb-keysyms1")
    n = _free_display()
    proc = subprocess.Popen(
        ["Xvfb", f":{n}", "-screen", "0", f"{size}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{n}"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"Xvfb did not start: {proc.stderr.read().decode(errors='replace')[-500:]}")
        time.sleep(0.05)
    try:
        yield f":{n}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_real_window_under_xvfb(xvfb_display, tmp_path):
    png = tmp_path / "screen.png"
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", DISPLAY=xvfb_display, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(png), str(tmp_path / "s.ini")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "ready True data True saved True" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGB"), np.float32)
    assert a.shape[:2] == (800, 1280)
    window = a[:700, :1024]
    assert window.std() > 10  # a window with content, not a uniform screen
    assert a[750:, 1100:].std() < 1  # outside the window: the bare X root


FIT_SCRIPT = r"""
import sys, time
from PySide6.QtCore import QPoint, QRect, QSettings
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QAbstractButton, QAbstractSpinBox, QComboBox, QLabel, QLineEdit, QTabWidget,
                               QWidget)
from ddpm_gui.qt.app import make_application
app = make_application([])
from ddpm_gui.qt.main_window import MainWindow
w = MainWindow(settings=QSettings(sys.argv[2], QSettings.Format.IniFormat))
w.settings.setValue("data/limit", 200)
w.move(0, 0); w.show()  # the size the window picks for the screen
w.start_engine()
t = time.monotonic()
while time.monotonic() - t < 90 and not (w.is_ready() and w.state.data is not None and not w.is_busy()):
    app.processEvents(); time.sleep(0.01)
panel = w.panel("TrainPanel")
w.tabs.setCurrentWidget(panel)
screen = QGuiApplication.primaryScreen().geometry()
print("screen", screen.width(), screen.height(), "window", w.width(), w.height(), "ready", w.is_ready())
kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QLabel)
pages = panel.form.pages
bad = [] if screen.contains(w.frameGeometry()) else [f"window {w.frameGeometry().getRect()} off the screen"]
for page in range(pages.count()):
    pages.setCurrentIndex(page)
    for _ in range(30):
        app.processEvents(); time.sleep(0.01)
    for c in panel.findChildren(QWidget):
        if not isinstance(c, kinds) or not c.isVisible() or isinstance(c.parentWidget(), (QAbstractSpinBox, QComboBox)):
            continue
        where = QRect(c.mapTo(w, QPoint(0, 0)), c.size())
        text = c.text() if hasattr(c, "text") else ""
        need = c.minimumSizeHint()
        if isinstance(c, QLabel) and not c.wordWrap():
            need = c.sizeHint()  # a one-line label narrower than its text clips it
        elif isinstance(c, QAbstractButton):  # its text, not the style's preferred width
            need.setWidth(c.fontMetrics().horizontalAdvance(text.replace("&", "")) + 4)
        if not w.rect().contains(where):
            bad.append(f"outside the window: {type(c).__name__} {text!r} at {where.getRect()}")
        elif c.width() < need.width() or c.height() < need.height():
            bad.append(f"clipped: {type(c).__name__} {text!r} {c.width()}x{c.height()} < {need.width()}x{need.height()}")
pages.setCurrentIndex(1)
for _ in range(30):
    app.processEvents(); time.sleep(0.01)
QGuiApplication.primaryScreen().grabWindow(0).save(sys.argv[1])
print("BAD", bad)
w.close()
"""


@pytest.mark.parametrize("size,scale", [("1280x800", "1"), ("1024x768", "1"), ("2560x1600", "2")])
def test_train_tab_fits_the_screen(tmp_path, size, scale):
    """A laptop screen, a small one and a 2x-scaled one: every control of the Train tab, on each page of
    its settings, lies inside the window and gets the room its text needs."""
    display = _xvfb(size)
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="xcb",
        DISPLAY=next(display),
        HF_HUB_OFFLINE="1",
        QT_SCALE_FACTOR=scale,
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FIT_SCRIPT, str(tmp_path / "train.png"), str(tmp_path / "s.ini")],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        display.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "ready True" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "BAD []" in proc.stdout, proc.stdout
