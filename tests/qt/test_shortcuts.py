"""Alt+letter mnemonics in the main window: no two controls shown together share one, in any tab, on
any page of a tab's own tabs, in any state of the Train and Data tabs; and Alt+letter reaches the field.

Shown together: the menu titles, and every visible button, group box, tab and label with a buddy. Two of
them with the same letter make Alt+letter ambiguous (Qt only moves the focus between them), and one with
a menu's letter loses to the menu.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractButton, QApplication, QGroupBox, QLabel, QTabBar, QTabWidget, QWidget

from ddpm_gui.qt.main_window import MainWindow
from ddpm_gui.qt.mnemonics import assign_mnemonics, mnemonic
from ddpm_gui.qt.panels import PANELS
from tests.qt.conftest import open_window

pytestmark = pytest.mark.qt


@pytest.fixture
def window(qtbot, settings):
    w = open_window(qtbot, settings, limit=100)
    qtbot.waitUntil(lambda: w.state.data is not None and not w.is_busy(), timeout=60_000)
    yield w
    w.shutdown(60_000)


def shown_keys(window: MainWindow) -> dict[str, list[str]]:
    """Alt+letter -> the controls shown now that take it."""
    found = defaultdict(list)
    for action in window.menuBar().actions():
        if mnemonic(action.text()):
            found[mnemonic(action.text())].append(f"menu {action.text()!r}")
    for w in window.findChildren(QWidget):
        if not w.isVisible():
            continue
        if isinstance(w, QAbstractButton) or (isinstance(w, QLabel) and w.buddy() is not None):
            texts = [w.text()]
        elif isinstance(w, QGroupBox):
            texts = [w.title()]
        elif isinstance(w, QTabBar):
            texts = [w.tabText(i) for i in range(w.count())]
        else:
            continue
        for text in texts:
            if mnemonic(text):
                found[mnemonic(text)].append(f"{type(w).__name__} {text!r}")
    return found


def check(qtbot, window: MainWindow, where: str) -> None:
    """No shared letter now, on any page of the current tab's own tab widgets."""
    panel = window.tabs.currentWidget()
    inner = [t for t in panel.findChildren(QTabWidget) if t.isVisible()]
    for tabs in inner or [None]:
        for page in range(tabs.count() if tabs is not None else 1):
            if tabs is not None:
                tabs.setCurrentIndex(page)
            qtbot.wait(10)
            clashes = {k: v for k, v in shown_keys(window).items() if len(v) > 1}
            title = f"{where}, page {tabs.tabText(page)!r}" if tabs is not None else where
            assert not clashes, f"{title}: {clashes}"


@pytest.mark.parametrize("panel_name", [cls for _m, cls, _t in PANELS])
def test_no_two_controls_shown_together_share_an_alt_key(qtbot, window, panel_name):
    window.tabs.setCurrentWidget(window.panel(panel_name))
    check(qtbot, window, panel_name)


def test_menu_items_have_their_own_keys(window):
    for menu_action in window.menuBar().actions():
        keys = [mnemonic(a.text()) for a in menu_action.menu().actions() if mnemonic(a.text())]
        assert len(keys) == len(set(keys)), (menu_action.text(), keys)


def test_data_tab_keys_for_every_source_and_after_a_failed_load(qtbot, window, tmp_path):
    panel = window.panel("DataPanel")
    window.tabs.setCurrentWidget(panel)
    combo = panel.form.source_combo
    for i in range(combo.count()):
        combo.setCurrentIndex(i)
        check(qtbot, window, f"DataPanel, source {combo.itemText(i)!r}")
    assert panel.load(str(tmp_path / "no-such-folder"))
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=30_000)
    assert panel.error_box.isVisible()
    check(qtbot, window, "DataPanel, after a failed load")


def test_train_tab_keys_while_running_paused_and_with_a_saved_run_loaded(qtbot, window, tmp_path):
    import torch

    from ddpm_gui.qt.panels.train_panel import TEXTS

    panel = window.panel("TrainPanel")
    window.tabs.setCurrentWidget(panel)
    assert all(mnemonic(t) for t in TEXTS.values()), TEXTS  # every run button, in every state, has a key
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_train_panel.one_torch_thread
    try:
        panel.preset_combo.setCurrentIndex(panel.preset_combo.findData("tiny"))
        panel.batch_spin.setValue(4)
        panel.steps_spin.setValue(100_000)
        panel.preview_spin.setValue(0)
        run_dir = tmp_path / "keys"
        panel.set_run_dir(run_dir)
        panel.set_overrides(log_every=1, checkpoint_every=0, checkpoint_minutes=0)
        assert panel.start()
        qtbot.waitUntil(lambda: panel.last_step >= 1, timeout=60_000)
        check(qtbot, window, "TrainPanel, running")
        panel.pause()
        qtbot.waitUntil(panel.is_paused, timeout=30_000)
        assert panel.pause_btn.text() == TEXTS["resume"] and panel.resume_btn.text() == TEXTS["saved_run"]
        check(qtbot, window, "TrainPanel, paused")
        panel.stop()
        qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)
    finally:
        torch.set_num_threads(n_threads)
    assert panel.resume_run(run_dir, start=False)
    assert panel.start_btn.text() == TEXTS["continue"] and panel.resume_btn.text() == TEXTS["new_run"]
    check(qtbot, window, "TrainPanel, a saved run loaded")


def test_alt_key_of_a_train_setting_reaches_its_field(qtbot, window):
    """The Device and CPU threads rows (and every other row) answer their own Alt+letter, not a menu's."""
    panel = window.panel("TrainPanel")
    window.tabs.setCurrentWidget(panel)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=30_000)
    pages = panel.form.pages
    reached = []
    for page in range(pages.count()):
        pages.setCurrentIndex(page)
        labels = [w for w in pages.widget(page).findChildren(QLabel) if w.buddy() is not None and w.text()]
        assert labels
        for label in labels:
            key, buddy = mnemonic(label.text()), label.buddy()
            assert key, f"{label.text()!r} has no Alt key"
            if not buddy.isEnabled():
                continue
            panel.start_btn.setFocus()
            qtbot.keyClick(window, Qt.Key(ord(key.upper())), Qt.KeyboardModifier.AltModifier)
            focus = QApplication.focusWidget()
            assert focus is buddy or buddy.isAncestorOf(focus), (label.text(), focus)
            reached.append(label.text().replace("&", ""))
    assert {"Device:", "CPU threads:", "Noise schedule:"} <= set(reached), reached


def test_assign_mnemonics_gives_distinct_free_letters():
    out = assign_mnemonics(["Steps", "Seed", "Save", "S&ome", "&&"], taken={"f", "e"})
    keys = [mnemonic(t) for t in out]
    assert keys[3] == "o" and keys[4] is None  # a text's own mnemonic is kept; "&&" is no mnemonic
    assert None not in keys[:3] and len(set(keys[:4])) == 4 and not {"f", "e"} & set(keys)
    assert [t.replace("&", "") for t in out[:3]] == ["Steps", "Seed", "Save"]
    assert assign_mnemonics(["Data", "Device"], taken=()) == ["&Data", "D&evice"]
    assert assign_mnemonics(["abc"], taken="abc") == ["abc"]  # nothing free: left as it is
