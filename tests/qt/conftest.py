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


# ----------------------------------------------------------------------------- the Sample, Forward and Denoise tabs


def train_tiny_run(root, steps: int = 5):
    """A real run folder: the tiny preset trained for a few steps on 64 built-in images (headless)."""
    import torch

    from ddpm_gui.engine import events as ev
    from ddpm_gui.engine.config import TrainConfig
    from ddpm_gui.engine.trainer import Trainer

    run_dir = root / "run"
    cfg = TrainConfig(
        data="builtin:64", preset="tiny", batch_size=8, steps=steps, preview_every=0, log_every=1
    )
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_train_panel.one_torch_thread
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDPM_GUI_CACHE", str(root / "cache"))
        events = list(Trainer(cfg, run_dir).run())
    torch.set_num_threads(n)
    assert isinstance(events[-1], ev.Finished), events[-1]
    return run_dir


@pytest.fixture(scope="module")
def bundle(run_dir):
    """The test module's `run_dir` fixture (a tiny trained run), loaded on the CPU."""
    from ddpm_gui.engine.sampler import load_bundle

    return load_bundle(run_dir, device="cpu")


@pytest.fixture
def show_panel(qtbot, settings, monkeypatch):
    """show_panel(module, cls): a `cls` panel over a fresh AppState, with its module's SHOW_DIALOGS off,
    shown at 1280x800; shut down after the test, its threads waited for."""
    from ddpm_gui.qt.state import AppState

    shown = []

    def show(module, cls):
        monkeypatch.setattr(module, "SHOW_DIALOGS", False)
        p = cls(AppState(settings))
        qtbot.addWidget(p)
        p.resize(1280, 800)
        p.show()
        shown.append(p)
        return p

    yield show
    for p in shown:
        p.shutdown(60000)
        qtbot.waitUntil(lambda p=p: not p.is_busy(), timeout=10000)


def file_mime(*paths):
    """The QMimeData of local files dragged from a file manager."""
    from PySide6.QtCore import QMimeData, QUrl

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return mime


def drop(widget, *paths) -> bool:
    """Drop local files on a widget as a file manager does; True when the widget took them."""
    from PySide6.QtCore import QPoint, QPointF, Qt
    from PySide6.QtGui import QDragEnterEvent, QDropEvent

    mime = file_mime(*paths)
    enter, ev = (
        kind(point, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
        for kind, point in ((QDragEnterEvent, QPoint(10, 10)), (QDropEvent, QPointF(10, 10)))
    )
    widget.dragEnterEvent(enter)
    assert enter.isAccepted()  # every local file is taken in: the drop says what it does with it
    widget.dropEvent(ev)
    return ev.isAccepted()


@pytest.fixture
def export_writers(monkeypatch):
    """The threads that write the exports (qt.exports' save_png and save_animation, which still write)."""
    import threading

    from ddpm_gui.qt import exports

    writers = []
    for name in ("save_png", "save_animation"):

        def recording(*a, _real=getattr(exports, name), **k):
            writers.append(threading.current_thread())
            return _real(*a, **k)

        monkeypatch.setattr(exports, name, recording)
    return writers


def export_to_a_full_disk(qtbot, panel, export: str, target) -> str:
    """panel.<export>(target) over an earlier file while the disk is full: the earlier file is kept and
    nothing else is left in its folder. Returns the panel's error message."""
    from test_imageio import disk_full_at

    target.write_bytes(b"an earlier export")
    with disk_full_at(target.name):
        assert getattr(panel, export)(target) == target
        qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=60_000)
    assert target.read_bytes() == b"an earlier export"
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    assert not panel.messages.error_label.isHidden()
    return panel.messages.error_label.text()


def open_window(qtbot, settings, limit: int, demo: bool = False):
    """The main window at 1280x800, shown, its engine started and ready; it autoloads `limit` built-in
    images. Without `demo` it starts with no model (no demo model at start), as the tests of loading and
    training models expect."""
    from ddpm_gui.qt.main_window import MainWindow
    from ddpm_gui.qt.state import DEMO_SETTING

    settings.setValue("data/limit", limit)
    settings.setValue(DEMO_SETTING, demo)
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    w.start_engine()
    qtbot.waitUntil(w.is_ready, timeout=60_000)
    return w
