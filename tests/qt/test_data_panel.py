"""Data panel: load sources in the background, preview with class captions, offline errors."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from ddpm_gui.qt.panels.data_panel import BUILTIN, FILE, FOLDER, HUB, DataPanel
from tests.qt.conftest import grab_variance

pytestmark = pytest.mark.qt


@pytest.fixture
def panel(qtbot, state):
    p = DataPanel(state)
    qtbot.addWidget(p, before_close_func=lambda w: w.shutdown(10000))
    p.resize(1100, 700)
    p.show()
    return p


def _wait_loaded(qtbot, panel, timeout=20000):
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=timeout)


def test_loads_builtin_and_shows_captioned_grid(qtbot, panel, state):
    with qtbot.waitSignal(state.dataChanged, timeout=20000):
        assert panel.load("builtin:500")
    _wait_loaded(qtbot, panel)
    data = state.data
    assert len(data) == 500 and data.images.shape[1:] == (32, 32, 3)
    assert panel.source_kind() == BUILTIN and panel.limit() == 500
    n = panel.page_size()
    assert panel.preview.grid.count() == min(n, 500)
    expected = [data.class_names[k] for k in data.labels[:n]]
    assert panel.preview.grid.captions() == expected
    np.testing.assert_array_equal(panel.preview.grid.images(), data.images[:n])
    assert grab_variance(panel.preview.grid) > 0
    info = panel.info_label.text()
    assert "500" in info and "32 × 32" in info and "circle" in info
    assert panel.error_text() == ""
    # the source is remembered
    assert state.settings.value("data/kind") == BUILTIN


def test_paging_and_class_filter(qtbot, panel, state, builtin_data):
    state.set_data(builtin_data)  # the panel shows data set by anyone
    n = panel.page_size()
    panel.preview.next_btn.click()
    np.testing.assert_array_equal(panel.shown_indices(), np.arange(n, min(2 * n, 300)))
    assert panel.preview.page_label.text().startswith(f"{n + 1}")
    panel.preview.class_combo.setCurrentIndex(panel.preview.class_combo.findData(2))  # triangle
    name = builtin_data.class_names[2]
    assert panel.preview.grid.count() > 0
    assert set(panel.preview.grid.captions()) == {name}
    assert all(builtin_data.labels[panel.shown_indices()] == 2)
    assert not panel.preview.prev_btn.isEnabled()


def _wheel(widget, notches: int) -> None:
    """A real mouse-wheel event (120 units a notch; positive = away from the user = up)."""
    from PySide6.QtCore import QPoint, QPointF
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    pos = QPointF(widget.width() / 2, widget.height() / 2)
    ev = QWheelEvent(
        pos, widget.mapToGlobal(pos), QPoint(0, 0), QPoint(0, 120 * notches),
        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False,
    )  # fmt: skip
    QApplication.sendEvent(widget.viewport(), ev)


def test_mouse_wheel_scrolls_pages(qtbot, panel, state, builtin_data):
    state.set_data(builtin_data)
    n = panel.page_size()
    view = panel.preview.grid._view_widget
    _wheel(view, -1)  # one notch down: the next page
    np.testing.assert_array_equal(panel.shown_indices(), np.arange(n, min(2 * n, 300)))
    np.testing.assert_array_equal(panel.preview.grid.images(), builtin_data.images[n : min(2 * n, 300)])
    _wheel(view, 1)  # and back up
    np.testing.assert_array_equal(panel.shown_indices(), np.arange(0, n))
    _wheel(view, 5)  # past the first page: stays there
    assert panel.preview.page_label.text().startswith("1")
    _wheel(view, -100)  # past the last: stays on the last
    assert not panel.preview.next_btn.isEnabled() and panel.shown_indices()[-1] == 299


def test_offline_hub_id_shows_an_error_that_offers_builtin(qtbot, panel, state):
    t0 = time.monotonic()
    panel.set_spec("cifar10")
    assert panel.source_kind() == HUB
    assert panel.load()
    qtbot.waitUntil(
        lambda: panel.error_text() != "", timeout=60_000
    )  # a deadline that holds on a busy machine
    elapsed = time.monotonic() - t0
    text = panel.error_text()
    assert "builtin" in text, text
    assert panel.use_builtin_btn.isVisible() and panel.pick_folder_btn.isVisible()
    _wait_loaded(qtbot, panel)
    assert state.data is None
    print(f"offline error shown after {elapsed:.2f} s")  # a figure to read, not a timed assertion
    # one click away from working data
    panel.form.limit_spin.setValue(200)
    with qtbot.waitSignal(state.dataChanged, timeout=20000):
        panel.use_builtin_btn.click()
    _wait_loaded(qtbot, panel)
    assert len(state.data) == 200 and panel.error_text() == ""


def test_without_datasets_the_panel_says_how_to_install(qtbot, panel, state, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as installed without the `hub` extra
    install = "pip install 'ddpm-gui[hub]'"
    panel.form.source_combo.setCurrentIndex(panel.form.source_combo.findData(FILE))
    assert install in panel.form.progress_label.text()  # said before anything is loaded
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    panel.set_spec(str(path))
    assert panel.source_kind() == FILE and panel.load()
    qtbot.waitUntil(lambda: panel.error_text() != "", timeout=10000)
    text = panel.error_text()
    assert install in text and "Traceback" not in text, text
    _wait_loaded(qtbot, panel)
    assert state.data is None
    panel.form.limit_spin.setValue(100)
    with qtbot.waitSignal(state.dataChanged, timeout=20000):
        panel.use_builtin_btn.click()
    _wait_loaded(qtbot, panel)
    assert len(state.data) == 100 and panel.error_text() == ""
    panel.form.source_combo.setCurrentIndex(panel.form.source_combo.findData(FOLDER))
    assert install not in panel.form.progress_label.text()  # folders need no datasets


def test_cancel_stops_loading(qtbot, panel, state):
    assert panel.load("builtin:400000")  # long enough to cancel (generated in blocks of 1,000)
    qtbot.waitUntil(lambda: panel.form.progress.maximum() > 0, timeout=10000)
    panel.form.cancel_btn.click()
    _wait_loaded(qtbot, panel, timeout=10000)
    assert state.data is None
    assert "cancel" in panel.form.progress_label.text().lower()
    assert panel.error_text() == ""
    assert panel.form.load_btn.isEnabled()


def test_local_folder_with_class_subfolders(qtbot, panel, state, tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png"
            )
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png")
    panel.set_spec(str(tmp_path))
    assert panel.source_kind() == FOLDER
    with qtbot.waitSignal(state.dataChanged, timeout=20000):
        panel.load()
    _wait_loaded(qtbot, panel)
    assert len(state.data) == 6 and state.data.class_names == ["cats", "dogs"]
    assert set(panel.preview.grid.captions()) == {"cats", "dogs"}
    info = panel.info_label.text()  # the broken one is left out, named, with why
    assert "Skipped" in info and "1 — dogs/broken.png (is not an image" in info, info


def test_missing_folder_error_offers_builtin(qtbot, panel, tmp_path):
    panel.set_spec(str(tmp_path / "nope"))
    panel.form.source_combo.setCurrentIndex(1 + 1)  # folder
    panel.load()
    qtbot.waitUntil(
        lambda: panel.error_text() != "", timeout=60_000
    )  # a deadline that holds on a busy machine
    assert "builtin" in panel.error_text()
    _wait_loaded(qtbot, panel)


def _status_messages(state) -> list[str]:
    seen: list[str] = []
    state.status.connect(seen.append)
    return seen


def test_skipped_files_are_shown_with_their_reasons(qtbot, panel, state, tmp_path):
    """A loose image beside the class folders, a damaged file and Synology's @eaDir: the Dataset box
    names them with why (not only a line on stderr), and @eaDir is not a class."""
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "loose.png")
    (tmp_path / "cats" / "bad.png").write_bytes(b"not a png")
    (tmp_path / "@eaDir" / "loose.png").mkdir(parents=True)
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "@eaDir" / "loose.png" / "THUMB.jpg")
    seen = _status_messages(state)
    panel.set_spec(str(tmp_path))
    with qtbot.waitSignal(state.dataChanged, timeout=20000):
        assert panel.load()
    _wait_loaded(qtbot, panel)
    assert state.data.class_names == ["cats", "dogs"] and len(state.data) == 4
    info = panel.info_label.text()
    assert "3 — loose.png (an image beside the class folders: move it into a class folder)" in info, info
    assert "cats/bad.png" in info and "@eaDir (Synology" in info, info
    assert "@eaDir" in panel.info_label.toolTip() and "bad.png" in panel.info_label.toolTip()
    assert any(m.startswith("Loaded 4 images") and "3 skipped" in m for m in seen), seen


def test_no_skips_say_none(qtbot, panel, state, builtin_data):
    state.set_data(builtin_data)
    assert "none" in panel.info_label.text() and panel.info_label.toolTip() == ""


def test_switching_source_clears_the_previous_sources_error(qtbot, panel, state):
    panel.set_spec("cifar10")
    assert panel.load()
    qtbot.waitUntil(lambda: panel.error_text() != "", timeout=10000)
    _wait_loaded(qtbot, panel)
    panel.form.source_combo.setCurrentIndex(panel.form.source_combo.findData(FOLDER))
    assert panel.error_text() == "" and not panel.error_box.isVisible()


def test_failed_load_does_not_show_a_full_progress_bar(qtbot, panel, state, tmp_path):
    with qtbot.waitSignal(state.dataChanged, timeout=20000):
        assert panel.load("builtin:200")
    _wait_loaded(qtbot, panel)
    assert panel.form.progress.text() == "100%"  # a load that worked
    assert panel.load(str(tmp_path / "nope"))
    qtbot.waitUntil(lambda: panel.error_text() != "", timeout=10000)
    _wait_loaded(qtbot, panel)
    assert panel.form.progress.text() == "" and state.data is not None  # the old data stays, no "100%"


def test_loaded_count_uses_thousands_separators(qtbot, panel, state):
    seen = _status_messages(state)
    with qtbot.waitSignal(state.dataChanged, timeout=20000):
        assert panel.load("builtin:1500")
    _wait_loaded(qtbot, panel)
    assert "Loaded 1,500 images from builtin" in seen, seen
    assert "1,500" in panel.info_label.text()
