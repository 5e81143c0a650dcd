"""Data panel: pick a source, load it in the background, look at the images with their class names.

The tutorial's first step (load CIFAR-10, show a 5x2 grid with class names) made interactive: the
built-in shapes work offline and are the default; a Hub id, a local image folder or a parquet/arrow
file work the same way. The panel is three parts: the source form (`data_source.SourceForm`), the
"Dataset" box (what was loaded, and what was skipped and why) and the preview (`data_preview.DataPreview`).
Loading runs `ddpm_gui.data.load_data` in a JobSlot; errors (DataError) are shown in the panel with
one-click ways out (built-in data, a local folder) instead of a dialog.
"""

from __future__ import annotations

import html
import os
import threading
from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QFrame, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ddpm_gui.qt.panels.data_preview import DataPreview, class_name
from ddpm_gui.qt.panels.data_source import BUILTIN, FILE, FOLDER, HUB, SOURCE_LABELS, SourceForm, data_api
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import ERROR_STYLE, WARNING_STYLE
from ddpm_gui.qt.workers import JobSlot, shutdown_jobs

__all__ = ["BUILTIN", "FILE", "FOLDER", "HUB", "SOURCE_LABELS", "DataPanel", "load_job"]

OFFLINE_HINT = (
    "Use the built-in shapes (source 'builtin', no download needed) or pick a local folder of images."
)


def load_job(report, spec: str, size: int, limit: int | None, cancel: threading.Event, check_hub: bool):
    """Runs in the job's worker thread: load_data, its progress sent as ("progress", done, total, message)
    items through `report`; returns [("data", ImageData)]. `cancel` stops it (Cancelled) at its next check."""
    if check_hub:  # load_data probes the Hub before importing `datasets`, and goes offline when it must
        report(("progress", 0, 0, "Checking the connection to the Hugging Face Hub…"))
    data = data_api().load_data(
        spec, size, limit=limit, progress=lambda d, t, m: report(("progress", d, t, m)), cancel=cancel
    )
    return [("data", data)]


def _home_short(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home) :] if path.startswith(home + os.sep) else path


def info_rows(d) -> list[tuple[str, str]]:
    """The "Dataset" box's rows (label, HTML) for an ImageData."""
    rows = [
        ("Name", html.escape(d.name)),
        ("Source", html.escape(str(d.source))),
        ("Images", f"{len(d):,}"),
        ("Resolution", f"{d.images.shape[2]} × {d.images.shape[1]} RGB"),
    ]
    if d.labels is not None:
        names = ", ".join(class_name(d, k) for k in range(d.num_classes))
        rows.append(("Classes", f"{d.num_classes}: {html.escape(names)}"))
    else:
        rows.append(("Classes", "none (unlabelled)"))
    rows.append(("Skipped", html.escape(d.skipped_text())))
    rows.append(("Memory", f"{d.images.nbytes / 1e6:.1f} MB"))
    cache = _home_short(str(d.cache_path)) if d.cache_path else "not cached"
    rows.append(("Cache", f"<span style='font-size:small'>{html.escape(cache)}</span>"))
    return rows


class DataPanel(QWidget):
    """Choose and load a dataset, preview it page by page with class captions."""

    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.settings = state.settings
        self._data = None
        self._loading_spec = ""
        self._outcome = ""  # of the running load: "loaded", "failed" or "cancelled"
        self._autoloaded = False
        self.load_slot = JobSlot(self, self._on_job_event, self._on_job_failed, self._on_job_done)

        self.form = SourceForm(self)
        self.form.restore(self.settings)
        self.form.loadRequested.connect(self._on_load_clicked)
        self.form.cancelRequested.connect(self.cancel)
        self.form.sourceChanged.connect(self._on_source_changed)
        self.preview = DataPreview(self)
        self.preview.imageClicked.connect(self.state.show_status)
        left = QWidget(self)
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.form)
        lv.addWidget(self._build_error_box())
        lv.addWidget(self._build_info_box(), 1)
        left.setFixedWidth(360)
        lay = QHBoxLayout(self)
        lay.addWidget(left)
        lay.addWidget(self.preview, 1)

        self.state.dataChanged.connect(self._on_data_changed)
        self.state.dataWanted.connect(self._on_data_wanted)
        if state.data is not None:
            self._on_data_changed(state.data)

    def _build_error_box(self) -> QFrame:
        self.error_box = QFrame(self)
        eb = QVBoxLayout(self.error_box)
        eb.setContentsMargins(0, 0, 0, 0)
        self.error_label = QLabel("", self.error_box)
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setStyleSheet(WARNING_STYLE)
        eb.addWidget(self.error_label)
        eb_btns = QHBoxLayout()
        self.use_builtin_btn = QPushButton("Use built-i&n shapes", self.error_box)
        self.use_builtin_btn.clicked.connect(self.use_builtin)
        self.pick_folder_btn = QPushButton("Pick a fol&der…", self.error_box)
        self.pick_folder_btn.clicked.connect(self.pick_folder)
        eb_btns.addWidget(self.use_builtin_btn)
        eb_btns.addWidget(self.pick_folder_btn)
        eb.addLayout(eb_btns)
        self.error_box.setVisible(False)
        return self.error_box

    def _build_info_box(self) -> QGroupBox:
        info_box = QGroupBox("Dataset", self)
        ib = QVBoxLayout(info_box)
        self.info_label = QLabel("No data loaded yet.", info_box)
        self.info_label.setWordWrap(True)
        self.info_label.setTextFormat(Qt.TextFormat.RichText)
        self.info_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        ib.addWidget(self.info_label)
        self.open_cache_btn = QPushButton("Show cache fold&er", info_box)
        self.open_cache_btn.setToolTip("Show where the decoded images are cached")
        self.open_cache_btn.setEnabled(False)
        self.open_cache_btn.clicked.connect(self.open_cache_folder)
        ib.addWidget(self.open_cache_btn, 0, Qt.AlignmentFlag.AlignLeft)
        ib.addStretch(1)
        return info_box

    # ------------------------------------------------------------------ the source (see SourceForm)
    def source_kind(self) -> str:
        return self.form.kind()

    def spec(self) -> str:
        return self.form.spec()

    def limit(self) -> int | None:
        return self.form.limit()

    def set_spec(self, spec: str, image_size: int | None = None, limit: int | None = None) -> None:
        self.form.set_spec(spec, image_size, limit)

    @Slot(str, int)
    def _on_data_wanted(self, source: str, image_size: int) -> None:
        if not self.load(source, image_size, self.limit()):
            self.state.show_status(
                f"The Data tab is busy: load {source} at {image_size} px there when it is done."
            )

    @Slot(str)
    def _on_source_changed(self, _kind: str) -> None:
        self._clear_error()  # it was about the previous source

    @Slot()
    def use_builtin(self) -> None:
        self.set_spec("builtin", limit=self.limit())
        self._clear_error()
        self.load()

    @Slot()
    def pick_folder(self) -> None:
        self.form.set_kind(FOLDER)
        self._clear_error()
        self.form.browse()
        if self.form.path_edit.text().strip():
            self.load()

    # ------------------------------------------------------------------ loading
    def is_busy(self) -> bool:
        return self.load_slot.is_busy()

    def autoload(self) -> None:
        """At startup: load the remembered source (the built-in shapes for a new user), once."""
        if self._autoloaded or self.state.data is not None or self.is_busy():
            return
        self._autoloaded = True
        self.load()

    @Slot()
    def _on_load_clicked(self) -> None:
        self.load()

    def load(self, spec: str | None = None, image_size: int | None = None, limit: int | None = None) -> bool:
        """Start loading (the controls' source, or `spec`). Returns False if a load is already running,
        the panel is closing or the source is empty."""
        if spec is not None:
            self.set_spec(spec, image_size, limit)
        if self.is_busy():
            return False
        spec = self.spec()
        if not spec:
            self._show_error("Choose a source first: a Hub dataset id, a folder or a file.")
            return False
        size, limit, check_hub = self.form.image_size(), self.limit(), self.source_kind() == HUB
        cancel = threading.Event()
        started = self.load_slot.start(
            lambda report: load_job(report, spec, size, limit, cancel, check_hub),
            report=True,
            on_stop=cancel.set,
        )
        if not started:  # the panel is shutting down
            return False
        self._clear_error()
        self._loading_spec, self._outcome = spec, ""
        self.form.set_busy(f"Loading {spec}…")
        self.state.show_status(f"Loading {spec}…")
        self.form.save(self.settings)
        return True

    @Slot()
    def cancel(self) -> None:
        if self.is_busy():
            self.form.progress_label.setText("Cancelling…")
            self.load_slot.stop()

    def shutdown(self, timeout_ms: int = 60000) -> None:
        """Stop loading and wait for the thread; no new loads start afterwards."""
        shutdown_jobs(self, timeout_ms)

    def _on_job_event(self, ev) -> None:
        if ev[0] == "progress":
            self.form.show_progress(*ev[1:])
        elif ev[0] == "data":
            data = ev[1]
            self._outcome = "loaded"
            self.state.set_data(data)  # -> _on_data_changed
            skipped = f"; {data.skipped:,} skipped (see the Dataset box)" if data.skipped else ""
            self.state.show_status(f"Loaded {len(data):,} images from {self._loading_spec}{skipped}")

    def _on_job_failed(self, message: str) -> None:
        if self.load_slot.stopping():  # Cancel, or the window closing: load_data raised Cancelled
            self._outcome = "cancelled"
            return
        self._outcome = "failed"
        self._show_error(message)
        self.state.show_status("Loading failed")

    def _on_job_done(self) -> None:
        if self._outcome == "cancelled":
            self.form.finish(False, "Loading cancelled.")
            self.state.show_status("Loading cancelled")
        else:
            self.form.finish(self._outcome == "loaded")

    def _show_error(self, message: str) -> None:
        kind = self.source_kind()
        text = message
        if "builtin" not in message and kind != BUILTIN:
            text = f"{message}\n\n{OFFLINE_HINT}"
        self.error_label.setText(text)
        self.error_label.setStyleSheet(WARNING_STYLE if kind == HUB else ERROR_STYLE)
        self.use_builtin_btn.setVisible(kind != BUILTIN)
        self.error_box.setVisible(True)

    def _clear_error(self) -> None:
        self.error_box.setVisible(False)
        self.error_label.setText("")

    def error_text(self) -> str:
        """The message shown in the panel ("" when none)."""
        return self.error_label.text() if self.error_box.isVisible() else ""

    # ------------------------------------------------------------------ showing the data
    @Slot(object)
    def _on_data_changed(self, data) -> None:
        self._data = data
        self._update_info()
        self.preview.set_data(data)

    def _update_info(self) -> None:
        d = self._data
        self.open_cache_btn.setEnabled(d is not None and d.cache_path is not None)
        if d is None:
            self.info_label.setText("No data loaded yet.")
            self.info_label.setToolTip("")
            return
        self.info_label.setText(
            "<table cellspacing='2'>"
            + "".join(f"<tr><td><b>{k}</b>&nbsp;</td><td>{v}</td></tr>" for k, v in info_rows(d))
            + "</table>"
        )
        listed = "\n".join(f"{s.name}: {s.reason}" for s in d.skipped_items)
        more = d.skipped - len(d.skipped_items)
        tip = f"Skipped:\n{listed}" + (f"\n… and {more:,} more" if more > 0 else "") if listed else ""
        self.info_label.setToolTip(tip)

    @Slot()
    def open_cache_folder(self) -> None:
        if self._data is not None and self._data.cache_path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(os.path.dirname(str(self._data.cache_path))))

    # ------------------------------------------------------------------ the preview (see DataPreview)
    def page_size(self) -> int:
        return self.preview.page_size()

    def shown_indices(self):
        return self.preview.shown_indices()
