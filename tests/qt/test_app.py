"""The main window: tabs, menus, shortcuts, settings, closing; and run_app's start-up figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from ddpm_gui.qt.app import resource_path
from ddpm_gui.qt.main_window import CLOSE_QUESTION, MainWindow
from tests.qt.conftest import grab_variance, open_window

pytestmark = pytest.mark.qt

TAB_TITLES = ["Data", "Forward process", "Train", "Sample", "A/B", "Denoise", "Runs", "2D"]


def _open_window(qtbot, settings) -> MainWindow:
    return open_window(qtbot, settings, limit=300)


@pytest.fixture
def window(qtbot, settings):
    w = _open_window(qtbot, settings)
    qtbot.waitUntil(lambda: w.state.data is not None and not w.is_busy(), timeout=30000)
    return w


def test_window_title_tabs_and_panels(window):
    assert "DDPM Studio" in window.windowTitle()
    assert [window.tabs.tabText(i) for i in range(window.tabs.count())] == TAB_TITLES
    assert window.panel("DataPanel") is not None and window.panel("ForwardPanel") is not None
    assert len(window.state.data) == 300  # the built-in data was loaded at start
    assert grab_variance(window) > 0


def test_shows_loading_state_before_the_engine(qtbot, settings):
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    assert not w.is_ready()
    assert "Loading engine" in w.tabs.widget(0).label.text()
    assert not w.open_action.isEnabled()


def test_ctrl_number_switches_tabs(qtbot, window):
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=30_000)
    for i in (2, 4, 0, 1):
        qtbot.keyClick(window, Qt.Key(Qt.Key.Key_1 + i), Qt.KeyboardModifier.ControlModifier)
        assert window.tabs.currentIndex() == i


def test_status_bar_follows_state(qtbot, window):
    window.state.show_status("hello from a panel")
    assert window.statusBar().currentMessage() == "hello from a panel"
    window.state.show_status("passing news", 50)  # gone after its time: it would go stale
    assert window.statusBar().currentMessage() == "passing news"
    qtbot.waitUntil(lambda: window.statusBar().currentMessage() == "", timeout=10_000)


def test_remembers_tab_and_geometry(qtbot, tmp_path):
    path = str(tmp_path / "remember.ini")
    s1 = QSettings(path, QSettings.Format.IniFormat)
    w = _open_window(qtbot, s1)
    w.tabs.setCurrentIndex(1)
    w.resize(1000, 700)
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=30000)
    w.close()
    s1.sync()
    s2 = QSettings(path, QSettings.Format.IniFormat)
    w2 = MainWindow(settings=s2)
    qtbot.addWidget(w2)
    assert w2.tabs.currentIndex() == 1
    assert s2.value("window/geometry") is not None
    assert w2.height() == 700  # restored (the offscreen screen may clamp the width)
    assert s2.value("data/kind") == "builtin"


def test_close_asks_while_training(qtbot, window, monkeypatch):
    asked = []
    answer = [False]

    def confirm(title, text):
        asked.append(text)
        return answer[0]

    monkeypatch.setattr(window, "confirm", confirm)
    stopped = []
    for panel in window.panels.values():
        monkeypatch.setattr(panel, "shutdown", lambda timeout_ms=60000, p=panel: stopped.append(p))
    window.state.set_training(True)
    window.close()
    assert asked == [CLOSE_QUESTION]
    assert window.isVisible() and not stopped  # "No": keeps running
    answer[0] = True
    window.close()
    assert not window.isVisible()
    assert len(stopped) == len(window.panels)  # "Yes": every panel was shut down
    window.state.set_training(False)


def test_close_while_training_saves_a_checkpoint(qtbot, window, tmp_path, monkeypatch, no_thread_leaks):
    """The real thing: a running training run, "Yes" to the close question, and the window closes after
    the run stopped and saved a checkpoint of the very step it stopped at."""
    import threading

    import torch

    from ddpm_gui.engine.checkpoint import list_checkpoints, read_meta
    from ddpm_gui.qt.panels import train_panel as tp

    monkeypatch.setattr(tp, "SHOW_DIALOGS", False)
    asked = []

    def question(parent, title, text, *args, **kwargs):
        asked.append(text)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_train_panel.one_torch_thread
    try:
        panel = window.panel("TrainPanel")
        run_dir = tmp_path / "closing"
        panel.preset_combo.setCurrentIndex(panel.preset_combo.findData("tiny"))
        panel.batch_spin.setValue(4)
        panel.steps_spin.setValue(100_000)
        panel.preview_spin.setValue(0)
        panel.set_run_dir(run_dir)
        panel.set_overrides(log_every=1, checkpoint_every=0, checkpoint_minutes=0)
        assert panel.start()
        qtbot.waitUntil(lambda: panel.last_step >= 3, timeout=60_000)
        assert window.state.training and list_checkpoints(run_dir) == []
        window.close()
        assert asked == [CLOSE_QUESTION]
        assert not window.isVisible()
        job = panel.train_slot.job
        assert job is not None and job.wait(0)  # close returned after the worker ended
        qtbot.waitUntil(lambda: not panel.is_busy() and panel.last_finished is not None, timeout=30_000)
    finally:
        torch.set_num_threads(n_threads)
    stopped = panel.last_finished
    assert stopped.reason == "stopped" and 3 <= stopped.step < 100_000
    assert stopped.step == panel.trainer.step
    ckpts = list_checkpoints(run_dir)
    assert [s for s, _ in ckpts] == [stopped.step]
    path = ckpts[-1][1]
    assert path.name.startswith("step_") and path.suffix == ".safetensors"
    assert read_meta(path)["step"] == stopped.step
    assert not window.state.training
    alive = []
    for t in no_thread_leaks:
        try:
            alive += [t] if t.isRunning() else []
        except RuntimeError:  # already deleted: it had stopped
            pass
    assert not alive
    assert not [t for t in threading.enumerate() if t.name.startswith("ddpm-") and t.is_alive()]


def test_bad_checkpoint_shows_a_message_and_keeps_running(qtbot, window, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    window.open_checkpoint(str(bad))

    def box():
        boxes = [b for b in window.findChildren(QMessageBox) if b.isVisible()]
        return boxes[0] if boxes else None

    qtbot.waitUntil(lambda: box() is not None, timeout=30000)
    assert "broken.safetensors" in box().text() or box().text()
    assert window.state.bundle is None and window.state.recent() == []
    box().close()
    qtbot.waitUntil(lambda: not window.bundle_slot.is_busy(), timeout=60_000)
    assert window.isVisible()


def test_recent_menu_and_about(window):
    window.state.add_recent("/tmp/run-a")
    texts = [a.text() for a in window.recent_menu.actions()]
    assert texts == ["/tmp/run-a"]
    box = window.show_about()
    assert "DDPM Studio" in box.text() and "PyTorch" in box.text() and "Qt" in box.text()
    box.close()


def test_resources_are_found():
    for name in ("ddpm-gui.svg", "ddpm-gui.png", "ddpm-gui.desktop"):
        assert resource_path(name) is not None, name


def test_run_app_reports_timing_and_stalls(tmp_path):
    env = dict(
        os.environ,
        DDPM_GUI_TIMING="1",
        DDPM_GUI_STALL_PROBE="1",
        DDPM_GUI_EXIT_AFTER="4",
        QT_QPA_PLATFORM="offscreen",
    )
    ini = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    ini.setValue("data/limit", 200)  # autoload a small built-in set
    ini.sync()
    code = (
        "import sys; from ddpm_gui.qt.app import run_app; "
        f"sys.exit(run_app(settings_path={str(tmp_path / 's.ini')!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "window shown after" in proc.stdout
    # the window is painted before the heavy imports (the engine job starts them after the first paint)
    assert "torch imported at first paint: False" in proc.stdout, proc.stdout
    assert "datasets imported at first paint: False" in proc.stdout, proc.stdout
    # "engine ready after" follows when the engine and the panels are loaded within those 4 s (a busy
    # CPU may take longer: then this also checks that closing during start-up is clean)
    assert "stall probe: longest gap" in proc.stdout
    print(proc.stdout)


def test_the_process_ends_soon_after_the_window_closes_and_keeps_its_settings(tmp_path):
    """`python -m ddpm_gui`, closed by DDPM_GUI_EXIT_AFTER: the process ends (and says how long after the
    window closed: the figure for people, not an assertion) with the settings written at close on disk."""
    config = tmp_path / "config"
    conf = config / "DDPM Studio" / "ddpm_gui.conf"  # QSettings' own place for the app's settings
    conf.parent.mkdir(parents=True)
    ini = QSettings(str(conf), QSettings.Format.IniFormat)
    ini.setValue("data/limit", 100)  # autoload a small built-in set
    ini.setValue("window/tab", 2)
    ini.sync()
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        DDPM_GUI_EXIT_AFTER="15",
        DDPM_GUI_TIMING="1",
        XDG_CONFIG_HOME=str(config),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ddpm_gui"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    ended = re.search(r"process ends (\d+\.\d+) s after the window closed", proc.stdout)
    assert ended, proc.stdout + proc.stderr[-3000:]
    print(f"\nthe process ended {ended.group(1)} s after the window closed")
    saved = QSettings(str(conf), QSettings.Format.IniFormat)
    assert saved.value("window/geometry") is not None and int(saved.value("window/tab")) == 2
    if "engine ready after" in proc.stdout:  # the data was loaded before the close: its source was kept
        assert saved.value("data/kind") == "builtin"


def test_every_control_is_reachable_by_tab(qtbot, window):
    """Every control of every panel takes Tab focus, and pressing Tab through the visible tab reaches
    each of its enabled, visible controls (no control is skipped and none traps the Tab key)."""
    from PySide6.QtWidgets import (
        QAbstractButton,
        QAbstractSpinBox,
        QComboBox,
        QLineEdit,
        QRadioButton,
        QSlider,
    )

    kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QSlider)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=30_000)
    for name in (
        "DataPanel",
        "ForwardPanel",
        "TrainPanel",
        "SamplePanel",
        "ABPanel",
        "DenoisePanel",
        "Toy2DPanel",
    ):
        panel = window.panel(name)
        assert panel is not None, name
        controls = [
            w
            for w in panel.findChildren(QWidget)
            if isinstance(w, kinds)
            and not isinstance(w.parentWidget(), (QLineEdit, QAbstractSpinBox, QComboBox))
            and not w.objectName().startswith("qt_")
        ]  # (a line edit's own clear button, a table's corner button: Qt's parts, not controls of ours)
        assert controls
        missing = [w for w in controls if not (w.focusPolicy() & Qt.FocusPolicy.TabFocus)]
        assert not missing, [f"{type(w).__name__} {w.text() if hasattr(w, 'text') else ''}" for w in missing]
        # the real keyboard: Tab from the first control until focus comes back to it
        window.tabs.setCurrentWidget(panel)
        usable = [w for w in controls if w.isEnabled() and w.isVisible()]
        first = usable[0]
        first.setFocus(Qt.FocusReason.TabFocusReason)
        qtbot.waitUntil(lambda w=first: QApplication.focusWidget() is w, timeout=30_000)
        reached = set()
        for _ in range(4 * len(controls) + 50):
            qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
            reached.add(QApplication.focusWidget())
            if QApplication.focusWidget() is first:
                break
        # Tab enters a group of auto-exclusive radio buttons at its checked one; the arrows move inside it
        radios = {w for w in reached if isinstance(w, QRadioButton) and w.autoExclusive()}
        reached |= {w for w in usable if isinstance(w, QRadioButton) and any(
            r.parentWidget() is w.parentWidget() for r in radios)}  # fmt: skip
        skipped = [w for w in usable if w not in reached]
        assert not skipped, (
            name,
            [f"{type(w).__name__} {getattr(w, 'text', lambda: '')()}" for w in skipped],
        )


def test_engine_loads_once(qtbot, settings, monkeypatch):
    import ddpm_gui.qt.main_window as mw

    calls = []
    real = mw._load_engine

    def counting():
        calls.append(1)
        yield from real()

    monkeypatch.setattr(mw, "_load_engine", counting)
    settings.setValue("data/limit", 100)
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    w.start_engine()
    qtbot.waitUntil(lambda: not w.engine_slot.is_busy(), timeout=30000)
    w.start_engine()  # e.g. run_app's fallback timer firing while the panels are still being built
    qtbot.waitUntil(w.is_ready, timeout=30000)
    w.start_engine()
    assert calls == [1]
    assert [w.tabs.widget(i) for i in range(2)] == [w.panel("DataPanel"), w.panel("ForwardPanel")]
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=30000)


def test_an_opened_checkpoint_becomes_the_current_model_through_the_state(qtbot, window, tmp_path):
    import torch

    from ddpm_gui.engine.config import TrainConfig
    from ddpm_gui.engine.trainer import Trainer

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_train_panel.one_torch_thread
    try:
        cfg = TrainConfig(data="builtin:64", batch_size=4, steps=2, preview_every=0, log_every=1)
        events = list(Trainer(cfg, tmp_path / "run_a").run())
    finally:
        torch.set_num_threads(n_threads)
    assert events[-1].reason == "completed"
    seen = []
    window.state.bundleChanged.connect(seen.append)
    window.open_checkpoint(str(tmp_path / "run_a"))
    qtbot.waitUntil(lambda: seen != [], timeout=30_000)
    assert seen == [window.state.bundle] and window.state.bundle.step == 2
    assert window.state.bundle_source == "run_a"
    assert "run_a" in window.statusBar().currentMessage() and "step 2" in window.statusBar().currentMessage()
    assert str(tmp_path / "run_a") in window.state.recent()
    window.state.set_bundle(None)
    assert window.state.bundle is None and window.state.bundle_source == ""


def test_a_recipe_at_another_image_size_reloads_the_data_tab_at_it(qtbot, window):
    """The image size is locked to the Data tab's images: picking 3min-cpu (16 px) in the Train tab has
    the Data tab load its source at 16 px, so the run started from the form is the recipe's; picking
    quick-cpu (32 px) again loads them back at 32."""
    from ddpm_gui.engine.recipes import RECIPES, matching_recipe

    train, data = window.panel("TrainPanel"), window.panel("DataPanel")
    assert window.state.data.size == 32
    combo = train.recipe_combo
    combo.setCurrentIndex(combo.findData("3min-cpu"))  # as a user picks it
    qtbot.waitUntil(lambda: window.state.data.size == 16 and not data.is_busy(), timeout=60_000)
    assert len(window.state.data) == 300  # the same source and limit, at the new size
    cfg = train.build_config()
    assert cfg.image_size == 16 and matching_recipe(cfg) == "3min-cpu" == combo.currentData()
    assert cfg.steps == RECIPES["3min-cpu"].changes["steps"]
    combo.setCurrentIndex(combo.findData("quick-cpu"))
    qtbot.waitUntil(lambda: window.state.data.size == 32 and not data.is_busy(), timeout=60_000)
    assert matching_recipe(train.build_config()) == "quick-cpu"


def test_a_settings_file_at_another_image_size_reloads_the_data_tab_at_it(qtbot, window, tmp_path):
    from ddpm_gui.engine.config import TrainConfig, config_toml

    train = window.panel("TrainPanel")
    f = tmp_path / "settings.toml"
    f.write_text(config_toml(TrainConfig(image_size=24, steps=77)))
    assert train.form.load_file(f)
    qtbot.waitUntil(
        lambda: window.state.data.size == 24 and not window.panel("DataPanel").is_busy(), timeout=60_000
    )
    cfg = train.build_config()
    assert (cfg.image_size, cfg.steps) == (24, 77)
