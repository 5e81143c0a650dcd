"""The GUI's "open checkpoint" doors (the main window's File menu and the Sample panel) with files crafted to
run code when unpickled, and with truncated or corrupt files: nothing runs, a message names the file, the
app keeps running (the engine side is in tests/test_safe_loading.py)."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QMessageBox

from ddpm_gui.qt.main_window import MainWindow
from ddpm_gui.qt.panels import sample_panel as sp
from ddpm_gui.qt.state import AppState
from tests.test_safe_loading import evil_files

pytestmark = pytest.mark.qt


@pytest.fixture
def crafted(tmp_path):
    files = evil_files(tmp_path / "evil")
    (tmp_path / "evil" / "empty.safetensors").write_bytes(b"")
    (tmp_path / "evil" / "cut.safetensors").write_bytes((200).to_bytes(8, "little") + b'{"a": {"dtype"')
    extra = [tmp_path / "evil" / "empty.safetensors", tmp_path / "evil" / "cut.safetensors"]
    yield [p for p, _ in files.values()] + extra
    ran = [p.name for p, m in files.values() if m.exists()]
    assert not ran, f"unpickling ran code: {ran}"


@pytest.fixture
def panel(qtbot, settings, monkeypatch):
    monkeypatch.setattr(sp, "SHOW_DIALOGS", False)
    p = sp.SamplePanel(AppState(settings))
    qtbot.addWidget(p)
    p.show()
    yield p
    p.shutdown(60000)
    qtbot.waitUntil(lambda: not p.is_busy(), timeout=10000)


def test_sample_panel_refuses_crafted_and_corrupt_files(qtbot, panel, crafted):
    for path in crafted:
        panel.load_checkpoint(path)
        qtbot.waitUntil(lambda: not panel.is_busy(), timeout=30_000)
        text = panel.error_label.text()
        assert not panel.error_label.isHidden() and path.name in text, (path.name, text)
        assert panel.bundle() is None and panel.isVisible()


def test_main_window_refuses_crafted_files_with_a_dialog(qtbot, settings, crafted):
    settings.setValue("data/limit", 300)  # the window autoloads data: a small built-in set
    settings.setValue("demo_model", False)  # no model at all: the refused file must not leave one behind
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    w.show()
    w.start_engine()
    qtbot.waitUntil(w.is_ready, timeout=30000)

    def box():
        boxes = [b for b in w.findChildren(QMessageBox) if b.isVisible()]
        return boxes[0] if boxes else None

    for path in crafted[:3] + crafted[-1:]:
        w.open_checkpoint(str(path))
        qtbot.waitUntil(lambda: box() is not None, timeout=30000)
        assert path.name in box().text(), box().text()
        box().close()
        qtbot.waitUntil(lambda: not w.bundle_slot.is_busy(), timeout=60_000)
        assert w.state.bundle is None and w.isVisible()
    qtbot.waitUntil(lambda: w.state.data is not None and not w.is_busy(), timeout=30000)
