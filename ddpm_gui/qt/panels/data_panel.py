"""Data panel: pick a source, load it in the background, look at the images with their class names.

The tutorial's first step (load CIFAR-10, show a 5x2 grid with class names) made interactive: the
built-in shapes work offline and are the default; a Hub id, a local image folder or a parquet/arrow
file work the same way. Loading runs `ddpm_gui.data.load_data` in a Job; errors (DataError) are shown
in the panel with one-click ways out (built-in data, a local folder) instead of a dialog.
"""

from __future__ import annotations

import html
import os
import queue
import threading
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import ERROR_STYLE, INFO_STYLE, WARNING_STYLE
from ddpm_gui.qt.workers import Job, refuse_new_jobs

# source kinds, in the order of the combo
BUILTIN, HUB, FOLDER, FILE = "builtin", "hub", "folder", "file"
SOURCE_LABELS = {
    BUILTIN: "Built-in shapes (offline)",
    HUB: "Hugging Face dataset",
    FOLDER: "Local folder…",
    FILE: "Local file…",
}
HUB_IDS = ("cifar10", "mnist", "fashion_mnist")
PAGE_SIZES = (20, 50, 100, 200)
OFFLINE_HINT = (
    "Use the built-in shapes (source 'builtin', no download needed) or pick a local folder of images."
)


def _data_api():
    """ddpm_gui.data's public functions (load_data, hub_reachable, describe_source, ...)."""
    import ddpm_gui.data as data

    if not hasattr(data, "load_data"):  # the package's __init__ not filled in yet
        from ddpm_gui.data import sources as data
    return data


def load_iter(spec: str, image_size: int, limit: int | None, cancel: threading.Event, check_hub: bool):
    """Runs in the Job's worker thread: load_data in a helper thread, its progress passed on as items.

    Yields ("progress", done, total, message) ... then ("data", ImageData). load_data's progress
    callback only puts tuples in a queue (it cannot emit Qt signals itself)."""
    data = _data_api()
    if check_hub:
        # load_data itself probes the Hub (hub_reachable, here in the worker) before importing
        # `datasets`, and goes offline at once when it cannot be reached: no second probe here
        yield ("progress", 0, 0, "Checking the connection to the Hugging Face Hub…")
    q: queue.Queue = queue.Queue()
    box: dict = {}

    def work() -> None:
        try:
            box["data"] = data.load_data(
                spec,
                image_size,
                limit=limit,
                progress=lambda d, t, m: q.put(("progress", d, t, m)),
                cancel=cancel,
            )
        except BaseException as exc:  # re-raised in the worker below
            box["error"] = exc
        finally:
            q.put(None)

    th = threading.Thread(target=work, name="ddpm-load-data", daemon=True)
    th.start()
    finished = False
    try:
        while True:
            item = q.get()
            if item is None:
                finished = True
                break
            yield item
    finally:
        if not finished:
            cancel.set()  # closed early (Cancel): load_data raises Cancelled at its next check
        th.join()
    if "error" in box:
        raise box["error"]
    yield ("data", box["data"])


class DataPanel(QWidget):
    """Choose and load a dataset, preview it page by page with class captions."""

    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.settings = state.settings
        self._job: Job | None = None
        self._cancel: threading.Event | None = None
        self._cancelled = False
        self._loading_spec = ""
        self._data = None
        self._indices = np.zeros(0, np.int64)  # images passing the class filter
        self._page = 0
        self._autoloaded = False
        self._shut_down = False

        self._build_ui()
        self._restore()
        self._on_source_changed()
        self.state.dataChanged.connect(self._on_data_changed)
        if state.data is not None:
            self._on_data_changed(state.data)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        # --- source
        src_box = QGroupBox("Source", self)
        form = QFormLayout(src_box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.source_combo = QComboBox(src_box)
        for kind, label in SOURCE_LABELS.items():
            self.source_combo.addItem(label, kind)
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        src_lbl = QLabel("S&ource:", src_box)
        src_lbl.setBuddy(self.source_combo)
        form.addRow(src_lbl, self.source_combo)

        self.hub_combo = QComboBox(src_box)
        self.hub_combo.setEditable(True)
        self.hub_combo.addItems(HUB_IDS)
        self.hub_combo.setToolTip(
            "A Hugging Face Hub dataset id: cifar10 (the tutorial's), mnist, fashion_mnist, or any\n"
            "'namespace/name' (optionally ':config'). Downloaded once, then read from the cache."
        )
        self.hub_label = QLabel("Dataset &id:", src_box)
        self.hub_label.setBuddy(self.hub_combo)
        form.addRow(self.hub_label, self.hub_combo)

        path_row = QWidget(src_box)
        ph = QHBoxLayout(path_row)
        ph.setContentsMargins(0, 0, 0, 0)
        self.path_edit = QLineEdit(path_row)
        self.path_edit.setPlaceholderText("a folder of images, or a .parquet / .arrow file")
        self.path_edit.setClearButtonEnabled(True)
        self.browse_btn = QPushButton("&Browse…", path_row)
        self.browse_btn.clicked.connect(self.browse)
        ph.addWidget(self.path_edit, 1)
        ph.addWidget(self.browse_btn)
        self.path_label = QLabel("&Path:", src_box)
        self.path_label.setBuddy(self.path_edit)
        form.addRow(self.path_label, path_row)

        self.size_spin = QSpinBox(src_box)
        self.size_spin.setRange(8, 1024)
        self.size_spin.setValue(32)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("Images are resized (shorter side, then a centre crop) to this size")
        size_lbl = QLabel("Image si&ze:", src_box)
        size_lbl.setBuddy(self.size_spin)
        form.addRow(size_lbl, self.size_spin)

        self.limit_spin = QSpinBox(src_box)
        self.limit_spin.setRange(0, 10_000_000)
        self.limit_spin.setSingleStep(1000)
        self.limit_spin.setSpecialValueText("all")
        self.limit_spin.setToolTip("Use only the first N images (0 = all)")
        limit_lbl = QLabel("&Limit:", src_box)
        limit_lbl.setBuddy(self.limit_spin)
        form.addRow(limit_lbl, self.limit_spin)

        btn_row = QHBoxLayout()
        self.load_btn = QPushButton("Lo&ad", src_box)
        self.load_btn.setDefault(True)
        self.load_btn.clicked.connect(lambda: self.load())
        self.cancel_btn = QPushButton("&Cancel", src_box)
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        btn_row.addWidget(self.load_btn)
        btn_row.addWidget(self.cancel_btn)
        form.addRow(btn_row)

        self.progress = QProgressBar(src_box)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress_label = QLabel("", src_box)
        self.progress_label.setWordWrap(True)
        self.progress_label.setStyleSheet(INFO_STYLE)
        form.addRow(self.progress)
        form.addRow(self.progress_label)

        # --- error / offline box
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

        # --- info
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

        left = QWidget(self)
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(src_box)
        lv.addWidget(self.error_box)
        lv.addWidget(info_box, 1)
        left.setFixedWidth(360)

        # --- preview
        prev_box = QGroupBox("Preview", self)
        pv = QVBoxLayout(prev_box)
        bar = QHBoxLayout()
        self.class_combo = QComboBox(prev_box)
        self.class_combo.addItem("All classes", -1)
        self.class_combo.setMinimumContentsLength(14)
        self.class_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.class_combo.currentIndexChanged.connect(self._on_filter_changed)
        cls_lbl = QLabel("Cla&ss:", prev_box)
        cls_lbl.setBuddy(self.class_combo)
        self.page_size_combo = QComboBox(prev_box)
        for n in PAGE_SIZES:
            self.page_size_combo.addItem(f"{n} per page", n)
        self.page_size_combo.setCurrentIndex(PAGE_SIZES.index(50))
        self.page_size_combo.currentIndexChanged.connect(self._on_page_size_changed)
        self.prev_btn = QPushButton("◀ P&revious", prev_box)
        self.prev_btn.clicked.connect(lambda: self.set_page(self._page - 1))
        self.next_btn = QPushButton("Ne&xt ▶", prev_box)
        self.next_btn.clicked.connect(lambda: self.set_page(self._page + 1))
        self.page_label = QLabel("", prev_box)
        self.page_label.setMinimumWidth(140)
        self.page_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        bar.addWidget(cls_lbl)
        bar.addWidget(self.class_combo)
        bar.addStretch(1)
        bar.addWidget(self.page_size_combo)
        pv.addLayout(bar)
        self.grid = ImageGrid(prev_box)
        self.grid.setMinimumSize(320, 240)
        self.grid.setToolTip("Click an image to see its index and class in the status bar")
        self.grid.clicked.connect(self._on_grid_clicked)
        self.grid.wheeled.connect(self._on_grid_wheeled)
        pv.addWidget(self.grid, 1)
        self.placeholder = QLabel("Load a dataset to see its images here.", prev_box)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setStyleSheet(INFO_STYLE)
        pv.addWidget(self.placeholder, 1)
        nav = QHBoxLayout()
        nav.addStretch(1)
        nav.addWidget(self.prev_btn)
        nav.addWidget(self.page_label)
        nav.addWidget(self.next_btn)
        nav.addStretch(1)
        pv.addLayout(nav)
        self.grid.setVisible(False)
        prev_box.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

        lay = QHBoxLayout(self)
        lay.addWidget(left)
        lay.addWidget(prev_box, 1)
        self._update_paging()

    # ------------------------------------------------------------------ source
    def source_kind(self) -> str:
        return self.source_combo.currentData()

    def spec(self) -> str:
        """The data spec the controls describe ("builtin", "cifar10", "/path/to/folder", ...)."""
        kind = self.source_kind()
        if kind == BUILTIN:
            return "builtin"
        if kind == HUB:
            return self.hub_combo.currentText().strip()
        return self.path_edit.text().strip()

    def limit(self) -> int | None:
        return self.limit_spin.value() or None

    def set_spec(self, spec: str, image_size: int | None = None, limit: int | None = None) -> None:
        """Set the controls from a spec string ("builtin:500" sets the built-in source, limit 500)."""
        spec = spec.strip()
        if spec == "builtin" or spec.startswith("builtin:"):
            kind = BUILTIN
            count = spec.partition(":")[2].replace("_", "")
            if count.isdigit() and limit is None:
                limit = int(count)
        else:
            try:
                kind = _data_api().describe_source(spec)
            except Exception:  # a guess is enough to fill the controls
                kind = HUB
            kind = {"saved": FOLDER}.get(kind, kind)
            if kind == HUB:
                self.hub_combo.setCurrentText(spec)
            else:
                self.path_edit.setText(spec)
        self.source_combo.setCurrentIndex(list(SOURCE_LABELS).index(kind))
        if image_size is not None:
            self.size_spin.setValue(int(image_size))
        self.limit_spin.setValue(int(limit or 0))

    @Slot()
    def _on_source_changed(self, *_args) -> None:
        kind = self.source_kind()
        is_hub = kind == HUB
        is_path = kind in (FOLDER, FILE)
        for w in (self.hub_label, self.hub_combo):
            w.setVisible(is_hub)
        for w in (self.path_label, self.path_edit.parentWidget()):
            w.setVisible(is_path)
        if kind == FILE:
            self.path_edit.setPlaceholderText("a .parquet or .arrow file")
        elif kind == FOLDER:
            self.path_edit.setPlaceholderText("a folder: one sub-folder of images per class")
        if self._job is None:  # say before loading that this source needs the optional `datasets`
            api = _data_api() if kind in (HUB, FILE) else None
            missing = api is not None and not api.datasets_available()
            self.progress_label.setText(
                f"Hub datasets and parquet/arrow files need the `datasets` package: {api.HUB_EXTRA_INSTALL}"
                if missing
                else ""
            )

    @Slot()
    def browse(self) -> None:
        kind = self.source_kind()
        start = self.path_edit.text().strip() or str(Path.home())
        if kind == FILE:
            path, _ = QFileDialog.getOpenFileName(
                self, "Open a dataset file", start, "Datasets (*.parquet *.arrow);;All files (*)"
            )
        else:
            path = QFileDialog.getExistingDirectory(self, "Pick a folder of images", start)
        if path:
            self.path_edit.setText(path)

    @Slot()
    def use_builtin(self) -> None:
        self.set_spec("builtin", limit=self.limit())
        self.error_box.setVisible(False)
        self.load()

    @Slot()
    def pick_folder(self) -> None:
        self.source_combo.setCurrentIndex(list(SOURCE_LABELS).index(FOLDER))
        self.error_box.setVisible(False)
        self.browse()
        if self.path_edit.text().strip():
            self.load()

    # ------------------------------------------------------------------ loading
    def is_busy(self) -> bool:
        return self._job is not None

    def autoload(self) -> None:
        """At startup: load the remembered source (the built-in shapes for a new user), once."""
        if self._autoloaded or self.state.data is not None or self._job is not None:
            return
        self._autoloaded = True
        self.load()

    def load(self, spec: str | None = None, image_size: int | None = None, limit: int | None = None) -> bool:
        """Start loading (the controls' source, or `spec`). Returns False if a load is already running
        or the source is empty."""
        if spec is not None:
            self.set_spec(spec, image_size, limit)
        if self._job is not None or self._shut_down:
            return False
        spec = self.spec()
        if not spec:
            self._show_error("Choose a source first: a Hub dataset id, a folder or a file.")
            return False
        size, limit = self.size_spin.value(), self.limit()
        self.error_box.setVisible(False)
        self._cancelled = False
        self._loading_spec = spec
        self._cancel = cancel = threading.Event()
        check_hub = self.source_kind() == HUB
        self._job = Job(
            lambda: load_iter(spec, size, limit, cancel, check_hub), parent=self, on_stop=cancel.set
        )
        self._job.event.connect(self._on_job_event)
        self._job.failed.connect(self._on_job_failed)
        self._job.done.connect(self._on_job_done)
        self._set_loading(True)
        self.progress_label.setText(f"Loading {spec}…")
        self.state.show_status(f"Loading {spec}…")
        self._save_source()
        self._job.start()
        return True

    @Slot()
    def cancel(self) -> None:
        if self._job is not None:
            self._cancelled = True
            self.progress_label.setText("Cancelling…")
            self._job.request_stop()

    def shutdown(self, timeout_ms: int = 60000) -> None:
        """Stop loading and wait for the thread; no new loads start afterwards."""
        refuse_new_jobs(self)
        self._shut_down = True
        if self._job is not None:
            self._cancelled = True
            self._job.request_stop()
            self._job.wait(timeout_ms)

    def _set_loading(self, loading: bool) -> None:
        self.load_btn.setEnabled(not loading)
        self.cancel_btn.setEnabled(loading)
        for w in (
            self.source_combo,
            self.hub_combo,
            self.path_edit,
            self.browse_btn,
            self.size_spin,
            self.limit_spin,
        ):
            w.setEnabled(not loading)
        if loading:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if self._data is not None else 0)

    @Slot(object)
    def _on_job_event(self, ev) -> None:
        if ev[0] == "progress":
            _, done, total, msg = ev
            if total > 0:
                self.progress.setRange(0, int(total))
                self.progress.setValue(int(done))
            else:
                self.progress.setRange(0, 0)
            self.progress_label.setText(msg)
        elif ev[0] == "data":
            self.state.set_data(ev[1])  # -> _on_data_changed
            self.state.show_status(f"Loaded {len(ev[1])} images from {self._loading_spec}")

    @Slot(str)
    def _on_job_failed(self, message: str) -> None:
        if self._cancelled:
            return
        self._show_error(message)
        self.state.show_status("Loading failed")

    @Slot()
    def _on_job_done(self) -> None:
        self._job = None
        self._set_loading(False)
        if self._cancelled:
            self.progress_label.setText("Loading cancelled.")
            self.state.show_status("Loading cancelled")
        elif not self.error_box.isVisible():
            self.progress_label.setText("")

    def _show_error(self, message: str) -> None:
        text = message
        if "builtin" not in message and self.source_kind() != BUILTIN:
            text = f"{message}\n\n{OFFLINE_HINT}"
        self.error_label.setText(text)
        self.error_label.setStyleSheet(WARNING_STYLE if self.source_kind() == HUB else ERROR_STYLE)
        self.use_builtin_btn.setVisible(self.source_kind() != BUILTIN)
        self.error_box.setVisible(True)
        self.progress_label.setText("")

    def error_text(self) -> str:
        """The message shown in the panel ("" when none)."""
        return self.error_label.text() if self.error_box.isVisible() else ""

    # ------------------------------------------------------------------ showing the data
    @Slot(object)
    def _on_data_changed(self, data) -> None:
        self._data = data
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItem("All classes", -1)
        if data is not None and data.labels is not None:
            counts = np.bincount(data.labels, minlength=data.num_classes)
            for k in range(data.num_classes):
                self.class_combo.addItem(f"{self._class_name(k)} ({counts[k]})", k)
        self.class_combo.setEnabled(self.class_combo.count() > 1)
        self.class_combo.blockSignals(False)
        self._update_info()
        self._apply_filter()
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if data is not None else 0)

    def _class_name(self, k: int) -> str:
        names = self._data.class_names if self._data is not None else None
        return names[k] if names and 0 <= k < len(names) else f"class {k}"

    def _update_info(self) -> None:
        d = self._data
        if d is None:
            self.info_label.setText("No data loaded yet.")
            self.open_cache_btn.setEnabled(False)
            return
        n = len(d)
        rows = [
            ("Name", html.escape(d.name)),
            ("Source", html.escape(str(d.source))),
            ("Images", f"{n:,}"),
            ("Resolution", f"{d.images.shape[2]} × {d.images.shape[1]} RGB"),
        ]
        if d.labels is not None:
            names = ", ".join(self._class_name(k) for k in range(d.num_classes))
            rows.append(("Classes", f"{d.num_classes}: {html.escape(names)}"))
        else:
            rows.append(("Classes", "none (unlabelled)"))
        rows.append(("Skipped", f"{d.skipped} file(s) that could not be read" if d.skipped else "none"))
        rows.append(("Memory", f"{d.images.nbytes / 1e6:.1f} MB"))
        cache = str(d.cache_path) if d.cache_path else "not cached"
        home = str(Path.home())
        if cache.startswith(home + os.sep):
            cache = "~" + cache[len(home) :]
        rows.append(("Cache", f"<span style='font-size:small'>{html.escape(cache)}</span>"))
        self.info_label.setText(
            "<table cellspacing='2'>"
            + "".join(f"<tr><td><b>{k}</b>&nbsp;</td><td>{v}</td></tr>" for k, v in rows)
            + "</table>"
        )
        self.open_cache_btn.setEnabled(d.cache_path is not None)

    @Slot()
    def open_cache_folder(self) -> None:
        if self._data is not None and self._data.cache_path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(os.path.dirname(str(self._data.cache_path))))

    def page_size(self) -> int:
        return int(self.page_size_combo.currentData())

    def _apply_filter(self) -> None:
        d = self._data
        if d is None:
            self._indices = np.zeros(0, np.int64)
        else:
            k = self.class_combo.currentData()
            if k is None or k < 0 or d.labels is None:
                self._indices = np.arange(len(d))
            else:
                self._indices = np.flatnonzero(d.labels == k)
        self.set_page(0)

    @Slot()
    def _on_filter_changed(self, *_args) -> None:
        self._apply_filter()

    @Slot()
    def _on_page_size_changed(self, *_args) -> None:
        first = self._page * self._last_page_size if hasattr(self, "_last_page_size") else 0
        self.set_page(first // self.page_size())

    def pages(self) -> int:
        return max(1, -(-len(self._indices) // self.page_size()))

    def set_page(self, page: int) -> None:
        self._page = max(0, min(page, self.pages() - 1))
        self._last_page_size = self.page_size()
        self._show_page()

    def _show_page(self) -> None:
        d = self._data
        idx = self.shown_indices()
        if d is None or not len(idx):
            self.grid.clear()
            self.grid.setVisible(False)
            self.placeholder.setVisible(True)
            self.placeholder.setText("Load a dataset to see its images here." if d is None else "No images.")
        else:
            captions = [self._class_name(int(k)) for k in d.labels[idx]] if d.labels is not None else None
            self.placeholder.setVisible(False)
            self.grid.setVisible(True)
            self.grid.set_images(d.images[idx], captions)
        self._update_paging()

    def shown_indices(self) -> np.ndarray:
        """Dataset indices of the images on the current page."""
        start = self._page * self.page_size()
        return self._indices[start : start + self.page_size()]

    def _update_paging(self) -> None:
        n = len(self._indices)
        if n:
            start = self._page * self.page_size()
            end = min(n, start + self.page_size())
            self.page_label.setText(f"{start + 1:,}–{end:,} of {n:,}")
        else:
            self.page_label.setText("")
        self.prev_btn.setEnabled(self._page > 0)
        self.next_btn.setEnabled(self._page < self.pages() - 1)

    @Slot(int)
    def _on_grid_wheeled(self, notches: int) -> None:
        """The mouse wheel over the grid scrolls through the pages (a notch a page)."""
        self.set_page(self._page + notches)

    @Slot(int)
    def _on_grid_clicked(self, i: int) -> None:
        idx = self.shown_indices()
        if 0 <= i < len(idx) and self._data is not None:
            k = int(idx[i])
            cls = f" ({self._class_name(int(self._data.labels[k]))})" if self._data.labels is not None else ""
            self.state.show_status(f"Image #{k}{cls}")

    # ------------------------------------------------------------------ settings
    def _restore(self) -> None:
        s = self.settings
        kind = s.value("data/kind", BUILTIN)
        if kind in SOURCE_LABELS:
            self.source_combo.setCurrentIndex(list(SOURCE_LABELS).index(kind))
        hub_id = s.value("data/hub_id", "")
        if hub_id:
            self.hub_combo.setCurrentText(str(hub_id))
        self.path_edit.setText(str(s.value("data/path", "") or ""))
        try:
            self.size_spin.setValue(int(s.value("data/size", 32)))
            self.limit_spin.setValue(int(s.value("data/limit", 0)))
        except (TypeError, ValueError):
            pass

    def _save_source(self) -> None:
        s = self.settings
        s.setValue("data/kind", self.source_kind())
        s.setValue("data/hub_id", self.hub_combo.currentText().strip())
        s.setValue("data/path", self.path_edit.text().strip())
        s.setValue("data/size", self.size_spin.value())
        s.setValue("data/limit", self.limit_spin.value())
