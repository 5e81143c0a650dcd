"""The main window: six tabs (Data, Forward process, Train, Sample, Denoise, Runs), menus, status bar.

Startup is two-phase so the window shows fast: importing this module imports no torch; every tab
first shows a "Loading engine…" page, `start_engine()` imports torch and the engine in a background
Job, and when that is done the panels are built (their modules may import torch freely by then) and
`engineReady` is emitted. The Data panel then loads the last data source (the built-in shapes for a
new user) so there is something to look at at once.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.qt.mnemonics import MENU_TITLES
from ddpm_gui.qt.panels import PANELS
from ddpm_gui.qt.state import DEMO_SOURCE, AppState, demo_wanted
from ddpm_gui.qt.workers import JobSlot, show_warning

APP_TITLE = "DDPM Studio"
CLOSE_QUESTION = "Training is running. Stop it, save a checkpoint and quit?"


def _load_engine():
    """Runs in a worker thread: the heavy imports, so the GUI thread never waits for them."""
    t0 = time.perf_counter()
    yield ("status", "Loading PyTorch…")
    import torch

    yield ("status", "Loading the diffusion engine…")
    import pyqtgraph  # noqa: F401 - the plots' library, imported here so the GUI thread need not wait

    import ddpm_gui.core.diffusion
    import ddpm_gui.core.schedule
    import ddpm_gui.data  # noqa: F401

    for mod in ("ddpm_gui.engine.sampler", "ddpm_gui.engine.trainer"):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass  # optional here: the panels that need it say so themselves
    # the panel modules too (class definitions only, no widgets), so building them is quick
    for module, _cls, _title in PANELS:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    yield ("ready", {"torch": torch.__version__, "seconds": time.perf_counter() - t0})


class _LoadingPage(QWidget):
    """What a tab shows until its panel exists."""

    def __init__(self, title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.label = QLabel(f"<h3>{title}</h3><p>Loading engine…</p>", self)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.bar = QProgressBar(self)
        self.bar.setRange(0, 0)  # busy
        self.bar.setMaximumWidth(320)
        self.bar.setTextVisible(False)
        lay = QVBoxLayout(self)
        lay.addStretch(1)
        lay.addWidget(self.label)
        lay.addWidget(self.bar, 0, Qt.AlignmentFlag.AlignHCenter)
        lay.addStretch(2)

    def set_message(self, text: str, busy: bool = True) -> None:
        self.label.setText(text)
        self.bar.setVisible(busy)


class MainWindow(QMainWindow):
    engineReady = Signal()

    def __init__(
        self, settings: QSettings | None = None, state: AppState | None = None, parent: QWidget | None = None
    ):
        super().__init__(parent)
        self.state = state if state is not None else AppState(settings, self)
        self.settings = self.state.settings
        self.setWindowTitle(APP_TITLE)
        self.setMinimumSize(900, 600)
        screen = QGuiApplication.primaryScreen()
        room = screen.availableGeometry() if screen is not None else None
        # 1280x800, or the whole screen when it is smaller (a 1024x768 laptop)
        self.resize(min(1280, room.width()) if room else 1280, min(800, room.height()) if room else 800)

        self.panels: dict[str, QWidget] = {}  # class name -> panel (real ones only)
        self._ready = False
        self._engine_started = False
        self.engine_slot = JobSlot(self, self._on_engine_event, self._on_engine_failed)
        self.bundle_slot = JobSlot(self, self._on_bundle_loaded, self._on_bundle_failed)
        self.demo_slot = JobSlot(self, self._on_demo_loaded, self._on_demo_failed)
        self._bundle_path = ""
        self._closing = False
        self._force_close = False
        self._build_queue: list[int] = []
        self.engine_info: dict = {}
        self.closed_at: float | None = None  # time.monotonic() when the window closed (for run_app)

        self.tabs = QTabWidget(self)
        self.tabs.setDocumentMode(True)
        for _module, _cls, title in PANELS:
            self.tabs.addTab(_LoadingPage(title, self), title)
        self.setCentralWidget(self.tabs)

        self._build_menus()
        self.state.statusFor.connect(self._on_status)
        self.state.recentChanged.connect(self._rebuild_recent)
        self.statusBar().showMessage("Loading engine…")
        self._restore_settings()

    # ------------------------------------------------------------------ menus
    def _build_menus(self) -> None:
        mb = self.menuBar()
        file_menu = mb.addMenu(MENU_TITLES["file"])
        self.open_action = QAction("&Open checkpoint…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.setStatusTip("Load a trained model (.safetensors) to sample and denoise with")
        self.open_action.triggered.connect(self.open_checkpoint_dialog)
        self.open_action.setEnabled(False)
        file_menu.addAction(self.open_action)
        self.open_run_action = QAction("Open &run folder…", self)
        self.open_run_action.setStatusTip("Load the newest checkpoint of a training run folder")
        self.open_run_action.triggered.connect(self.open_run_dialog)
        self.open_run_action.setEnabled(False)
        file_menu.addAction(self.open_run_action)
        self.open_diffusers_action = QAction("Open &diffusers model folder…", self)
        self.open_diffusers_action.setStatusTip(
            "Load a diffusers DDPM/DDIM model from its folder (save_pretrained)"
        )
        self.open_diffusers_action.triggered.connect(self.open_diffusers_dialog)
        self.open_hub_action = QAction("Open diffusers model by &Hub id…", self)
        self.open_hub_action.setStatusTip(
            "Load a diffusers model already in the local Hugging Face cache, by its id (nothing is downloaded)"
        )
        self.open_hub_action.triggered.connect(self.open_hub_id_dialog)
        for act in (self.open_diffusers_action, self.open_hub_action):
            act.setEnabled(False)
            self.engineReady.connect(lambda act=act: act.setEnabled(True))
            file_menu.addAction(act)
        self.export_action = QAction("&Export as diffusers…", self)
        self.export_action.setStatusTip(
            "Write a run's model as a diffusers pipeline folder (DDPMPipeline.from_pretrained)"
        )
        self.export_action.triggered.connect(self._export_diffusers)
        self.export_action.setEnabled(False)
        self.engineReady.connect(lambda: self.export_action.setEnabled(True))
        file_menu.addAction(self.export_action)
        self.recent_menu = file_menu.addMenu("Recent &checkpoints")
        self._rebuild_recent()
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)

        view_menu = mb.addMenu(MENU_TITLES["view"])
        self.tab_actions: list[QAction] = []
        for i, (_m, _c, title) in enumerate(PANELS):
            act = QAction(title, self)
            act.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            act.triggered.connect(lambda _checked=False, k=i: self.tabs.setCurrentIndex(k))
            view_menu.addAction(act)
            self.addAction(act)
            self.tab_actions.append(act)

        help_menu = mb.addMenu(MENU_TITLES["help"])
        about = QAction("&About DDPM Studio", self)
        about.setMenuRole(QAction.MenuRole.AboutRole)
        about.triggered.connect(self.show_about)
        help_menu.addAction(about)

    @Slot()
    def _export_diffusers(self) -> None:
        from ddpm_gui.qt.export_model import export_action  # a panel-time module: the engine has loaded

        export_action(self)

    @Slot()
    def _rebuild_recent(self) -> None:
        self.recent_menu.clear()
        items = self.state.recent()
        for path in items:
            act = QAction(path, self.recent_menu)
            act.triggered.connect(lambda _checked=False, p=path: self.open_checkpoint(p))
            act.setEnabled(self._ready)
            self.recent_menu.addAction(act)
        if not items:
            empty = QAction("(none yet)", self.recent_menu)
            empty.setEnabled(False)
            self.recent_menu.addAction(empty)

    # ------------------------------------------------------------------ engine startup
    def is_ready(self) -> bool:
        return self._ready

    @Slot()
    def start_engine(self) -> None:
        """Import torch and the engine in the background, then build the panels. Idempotent."""
        if self._engine_started or self._closing:
            return
        self._engine_started = True
        self.engine_slot.start(_load_engine)

    def _on_engine_event(self, ev) -> None:
        kind, payload = ev
        if kind == "status":
            self.statusBar().showMessage(payload)
            for i in range(self.tabs.count()):
                page = self.tabs.widget(i)
                if isinstance(page, _LoadingPage):
                    page.set_message(f"<h3>{PANELS[i][2]}</h3><p>{payload}</p>")
        elif kind == "ready":
            self.engine_info = payload
            if not self._closing:
                from ddpm_gui.qt.style import configure_pyqtgraph

                configure_pyqtgraph()
                self._build_panels()

    def _on_engine_failed(self, message: str) -> None:
        job = self.engine_slot.job
        print(job.last_traceback if job is not None else message, file=sys.stderr)
        for i in range(self.tabs.count()):
            page = self.tabs.widget(i)
            if isinstance(page, _LoadingPage):
                page.set_message(f"<h3>The engine could not be loaded</h3><p>{message}</p>", busy=False)
        self.statusBar().showMessage(f"The engine could not be loaded: {message}")

    def _build_panels(self) -> None:
        """Build the panels one per event-loop turn (the visible tab first), so the window keeps
        painting and answering input between them instead of stalling for all five at once."""
        current = self.tabs.currentIndex()
        self._build_queue = [current] + [i for i in range(len(PANELS)) if i != current]
        self._build_next_panel()

    @Slot()
    def _build_next_panel(self) -> None:
        if self._closing or not self._build_queue:
            return
        i = self._build_queue.pop(0)
        module, cls, title = PANELS[i]
        try:
            panel_cls = getattr(importlib.import_module(module), cls)
        except ImportError as exc:  # a panel not written yet, or an optional dependency missing
            page = QLabel(f"<h3>{title}</h3><p>Not available in this build: {exc}</p>", self)
            page.setAlignment(Qt.AlignmentFlag.AlignCenter)
            page.setWordWrap(True)
            page.setObjectName(f"placeholder_{cls}")
        else:
            page = panel_cls(self.state, self)
            self.panels[cls] = page
        current = self.tabs.currentIndex()
        old = self.tabs.widget(i)
        self.tabs.blockSignals(True)
        self.tabs.removeTab(i)
        self.tabs.insertTab(i, page, title)
        self.tabs.setCurrentIndex(current)
        self.tabs.blockSignals(False)
        old.deleteLater()
        if cls == "DataPanel" and hasattr(page, "autoload"):
            QTimer.singleShot(0, page.autoload)  # data at once, while the other panels are built
        if self._build_queue:
            QTimer.singleShot(0, self._build_next_panel)
        else:
            self._finish_startup()

    def _finish_startup(self) -> None:
        self._ready = True
        for act in (self.open_action, self.open_run_action):
            act.setEnabled(True)
        self._rebuild_recent()
        self.statusBar().showMessage(f"Ready (PyTorch {self.engine_info.get('torch', '?')})", 5000)
        self.engineReady.emit()
        self.load_demo()

    def load_demo(self) -> bool:
        """With no model yet (a first launch): load the demo model that ships with the app in a worker, so
        Sample and Denoise work at once. Off with the `demo_model=false` setting. False: not started."""
        if self._closing or self.state.bundle is not None or not demo_wanted(self.settings):
            return False

        def load():
            from ddpm_gui.engine.demo import load_demo_bundle

            yield load_demo_bundle()

        return self.demo_slot.start(load)

    def _on_demo_loaded(self, bundle) -> None:
        if self.state.bundle is None and not self._closing:  # a model loaded or trained meanwhile wins
            self.state.set_bundle(bundle, DEMO_SOURCE, demo=True)

    def _on_demo_failed(self, message: str) -> None:
        self.state.show_status(f"No demo model: {message}", 10000)

    def panel(self, name: str) -> QWidget | None:
        """A panel by class name ("DataPanel", ...), or None if it is not built (yet)."""
        return self.panels.get(name)

    # ------------------------------------------------------------------ checkpoints
    @Slot()
    def open_checkpoint_dialog(self) -> None:
        start = self.settings.value("last_checkpoint_dir", str(Path.home()))
        path, _ = QFileDialog.getOpenFileName(
            self, "Open checkpoint", str(start), "Checkpoints (*.safetensors);;All files (*)"
        )
        if path:
            self.settings.setValue("last_checkpoint_dir", str(Path(path).parent))
            self.open_checkpoint(path)

    @Slot()
    def open_run_dialog(self) -> None:
        start = self.settings.value("last_checkpoint_dir", str(Path.home()))
        path = QFileDialog.getExistingDirectory(self, "Open training run folder", str(start))
        if path:
            self.settings.setValue("last_checkpoint_dir", str(Path(path).parent))
            self.open_checkpoint(path)

    def _diffusers_missing(self) -> bool:
        """True, after saying how to install it, when the optional diffusers extra is not installed."""
        import importlib.util

        if importlib.util.find_spec("diffusers") is not None:
            return False
        from ddpm_gui.models.diffusers_unet import INSTALL_HINT

        self.show_message("diffusers is not installed", INSTALL_HINT, QMessageBox.Icon.Warning)
        return True

    @Slot()
    def open_diffusers_dialog(self) -> None:
        if self._diffusers_missing():
            return
        start = self.settings.value("last_checkpoint_dir", str(Path.home()))
        path = QFileDialog.getExistingDirectory(self, "Open diffusers model folder", str(start))
        if path:
            self.settings.setValue("last_checkpoint_dir", str(Path(path).parent))
            self.open_checkpoint(path)

    @Slot()
    def open_hub_id_dialog(self) -> None:
        if self._diffusers_missing():
            return
        from ddpm_gui.engine.diffusers_io import cached_model_ids

        ids = cached_model_ids()
        label = (
            "A Hugging Face model id already in the local cache (e.g. google/ddpm-cifar10-32);\n"
            "nothing is downloaded. Models found in the cache:"
            if ids
            else "A Hugging Face model id already in the local cache (none found there yet):"
        )
        text, ok = QInputDialog.getItem(self, "Open diffusers model by Hub id", label, ids, 0, True)
        if ok and text.strip():
            self.open_checkpoint(text.strip())

    def open_checkpoint(self, path: str) -> None:
        """Load a run folder, a .safetensors checkpoint or a diffusers model (a folder, or a Hub id in the local
        cache) in the background and make it the current model."""
        if self.bundle_slot.is_busy():
            self.state.show_status("Already loading a checkpoint…")
            return
        self._bundle_path = str(path)
        self.state.show_status(f"Loading {path}…")

        def load():
            from ddpm_gui.engine.sampler import load_bundle

            yield load_bundle(path)

        self.bundle_slot.start(load)

    def _on_bundle_loaded(self, bundle) -> None:
        self.state.add_recent(self._bundle_path)
        self.state.set_bundle(bundle, Path(self._bundle_path).name)

    def _on_bundle_failed(self, message: str) -> None:
        self.state.show_status("Could not load the checkpoint")
        show_warning(self, "Could not open checkpoint", message)

    # ------------------------------------------------------------------ dialogs
    def show_message(self, title: str, text: str, icon=QMessageBox.Icon.Information) -> QMessageBox:
        """A window-modal message that does not block the event loop (jobs keep running)."""
        box = QMessageBox(icon, title, text, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        return box

    def about_text(self) -> str:
        import pyqtgraph
        from PySide6 import __version__ as pyside_version
        from PySide6.QtCore import qVersion

        from ddpm_gui import __version__

        torch_mod = sys.modules.get("torch")
        torch_v = torch_mod.__version__ if torch_mod is not None else "not loaded yet"
        numpy_v = sys.modules["numpy"].__version__ if "numpy" in sys.modules else "?"
        return (
            f"<h3>DDPM Studio {__version__}</h3>"
            "<p>Train and explore denoising diffusion models (DDPM) on small images.</p>"
            f"<p>Python {platform.python_version()}<br>Qt {qVersion()} / PySide6 {pyside_version}<br>"
            f"pyqtgraph {pyqtgraph.__version__}<br>PyTorch {torch_v}<br>NumPy {numpy_v}<br>"
            f"{platform.system()} {platform.release()} ({platform.machine()})</p>"
        )

    @Slot()
    def show_about(self) -> QMessageBox:
        box = self.show_message("About DDPM Studio", self.about_text())
        box.setTextFormat(Qt.TextFormat.RichText)
        icon = self.windowIcon()
        if not icon.isNull():
            box.setIconPixmap(icon.pixmap(64, 64))
        return box

    def confirm(self, title: str, text: str) -> bool:
        """Ask yes/no (a method so tests can replace it)."""
        answer = QMessageBox.question(
            self,
            title,
            text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    @Slot(str, int)
    def _on_status(self, text: str, timeout_ms: int) -> None:
        self.statusBar().showMessage(text, timeout_ms)

    # ------------------------------------------------------------------ settings and shutdown
    def _restore_settings(self) -> None:
        geom = self.settings.value("window/geometry")
        if geom is not None:
            self.restoreGeometry(geom)
        try:
            tab = int(self.settings.value("window/tab", 0))
        except (TypeError, ValueError):
            tab = 0
        if 0 <= tab < self.tabs.count():
            self.tabs.setCurrentIndex(tab)

    def save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/tab", self.tabs.currentIndex())
        self.settings.sync()

    def is_busy(self) -> bool:
        return any(getattr(p, "is_busy", lambda: False)() for p in self.panels.values())

    def shutdown(self, timeout_ms: int = 60000) -> None:
        """Stop every job (the train panel saves a checkpoint) and wait for the threads to end."""
        self._closing = True
        timing = os.environ.get("DDPM_GUI_TIMING", "") not in ("", "0")
        for name, panel in self.panels.items():
            stop = getattr(panel, "shutdown", None)
            if stop is not None:
                t0 = time.perf_counter()
                stop(timeout_ms)
                if timing:
                    print(f"{name}.shutdown took {time.perf_counter() - t0:.3f} s", flush=True)
        slots = [self.engine_slot, self.bundle_slot, self.demo_slot]
        if self._ready:  # an export of a run to diffusers may be writing
            from ddpm_gui.qt.export_model import Exporter

            slots += [ex.slot for ex in self.findChildren(Exporter)]
        for slot in slots:
            slot.stop()
            slot.wait(timeout_ms)

    def close_without_asking(self) -> None:
        """Close as if the user had said yes (DDPM_GUI_EXIT_AFTER, scripted runs)."""
        self._force_close = True
        self.close()

    def closeEvent(self, event: QCloseEvent) -> None:
        if (
            self.state.training
            and not self._force_close
            and not self.confirm("Quit DDPM Studio", CLOSE_QUESTION)
        ):
            event.ignore()
            return
        self.save_settings()
        if self.state.training:
            self.statusBar().showMessage("Stopping training and saving a checkpoint…")
            self.statusBar().repaint()  # shutdown() blocks the event loop until the checkpoint is saved
        self.shutdown()
        event.accept()
        self.closed_at = time.monotonic()
