"""Qt test setup: offscreen platform, private caches, no network, and no QThread left running.

A QThread still running when its QObject is destroyed aborts the whole pytest process, so every test
here is checked (napari's approach): QThread.start is wrapped to record each thread, and after the
test each must have stopped (we wait a few seconds first); the test fails if one has not.
"""

from __future__ import annotations

import os
import threading

# before any Qt import (pytest-qt creates the QApplication later, on first use of qtbot/qapp)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtCore import QSettings, QThread

THREAD_GRACE_MS = 5000


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path_factory, monkeypatch):
    """No network, and caches shared by this session's tests (cheap to reuse), never the user's.
    Set per test (not at import) so the other test directories keep their own environment."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("DDPM_GUI_CACHE", str(base / "ddpm-cache"))
    monkeypatch.setenv("HF_HOME", str(base / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(base / "hf-home" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(autouse=True)
def no_thread_leaks(monkeypatch):
    """Fail a test that leaves a QThread (or a data-loading helper thread) running."""
    started: list[QThread] = []
    original = QThread.start

    def start(self, *args, **kwargs):
        started.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(QThread, "start", start)
    before = set(threading.enumerate())
    yield started
    from PySide6.QtWidgets import QApplication

    leaked = []
    for t in started:
        try:
            if t.isRunning() and not t.wait(THREAD_GRACE_MS):
                leaked.append(t)
        except RuntimeError:  # the C++ object is already gone: it was stopped and deleted
            pass
    app = QApplication.instance()
    if app is not None:
        app.processEvents()  # deliver the jobs' queued `done` signals
    py_leaked = [
        t for t in threading.enumerate() if t not in before and t.name.startswith("ddpm-") and t.is_alive()
    ]
    for t in py_leaked:
        t.join(THREAD_GRACE_MS / 1000)
    py_leaked = [t for t in py_leaked if t.is_alive()]
    if leaked or py_leaked:
        pytest.fail(f"test left threads running: {len(leaked)} QThread(s), {[t.name for t in py_leaked]}")


@pytest.fixture
def settings(tmp_path):
    """A private INI-file QSettings (never the user's real settings)."""
    s = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    yield s
    s.sync()


@pytest.fixture
def state(settings, qapp):
    from ddpm_gui.qt.state import AppState

    return AppState(settings)


@pytest.fixture
def builtin_data():
    """A small built-in dataset (300 images, 10 classes), loaded without the GUI."""
    from ddpm_gui.data import load_data

    return load_data("builtin:300")


def grab_variance(widget) -> float:
    """Pixel variance of what the widget paints (0 for a blank widget)."""
    import numpy as np

    img = widget.grab().toImage().convertToFormat(widget.grab().toImage().Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    a = np.frombuffer(img.constBits(), np.uint8, count=bpl * h).reshape(h, bpl)[:, : w * 3]
    return float(a.astype(np.float32).var())
