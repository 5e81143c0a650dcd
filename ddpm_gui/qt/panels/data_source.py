"""The Data tab's source form: which data (built-in shapes, a Hub id, a folder or a file: an image folder, a
parquet/arrow file, or a CIFAR archive or its extracted folder), at which size and how many images, the Load
and Cancel buttons, and the progress of the load that the Data tab runs."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ddpm_gui.qt.style import INFO_STYLE
from ddpm_gui.qt.widgets import laid_out

# source kinds, in the order of the combo
BUILTIN, HUB, FOLDER, FILE = "builtin", "hub", "folder", "file"
SOURCE_LABELS = {
    BUILTIN: "Built-in shapes (offline)",
    HUB: "Hugging Face dataset",
    FOLDER: "Local folder…",
    FILE: "Local file…",
}
HUB_IDS = ("cifar10", "mnist", "fashion_mnist")
PLACEHOLDERS = {
    FILE: "a .parquet or .arrow file, or a CIFAR archive (cifar-10-python.tar.gz; :test for its test split)",
    FOLDER: "a folder: one sub-folder of images per class, or an extracted CIFAR folder",
}


def data_api():
    """ddpm_gui.data (load_data, describe_source, datasets_available...), imported when first needed."""
    import ddpm_gui.data as data

    return data


def file_filters() -> str:
    """The Browse dialog's filters for a file: every dataset file load_data reads, then each kind alone."""
    archives = " ".join("*" + ext for ext in data_api().CIFAR_ARCHIVE_EXTENSIONS)
    return (
        f"Datasets (*.parquet *.arrow {archives});;CIFAR-10/100 archives ({archives});;"
        "Parquet and Arrow files (*.parquet *.arrow);;All files (*)"
    )


class SourceForm(QGroupBox):
    """The "Source" box. It loads nothing itself: Load and Cancel are signals that the Data tab answers, and
    it shows that load's progress (`set_busy`, `show_progress`, `finish`)."""

    sourceChanged = Signal(str)  # the new source kind (BUILTIN, HUB, FOLDER or FILE)
    loadRequested = Signal()
    cancelRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Source", parent)
        self._busy = False
        form = QFormLayout(self)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self._build_source_rows(form)
        self._build_size_rows(form)
        self._build_load_rows(form)
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self._on_source_changed()

    # ------------------------------------------------------------------ building
    def _build_source_rows(self, form: QFormLayout) -> None:
        self.source_combo = QComboBox(self)
        for kind, label in SOURCE_LABELS.items():
            self.source_combo.addItem(label, kind)
        src_lbl = QLabel("S&ource:", self)
        src_lbl.setBuddy(self.source_combo)
        form.addRow(src_lbl, self.source_combo)

        self.hub_combo = QComboBox(self)
        self.hub_combo.setEditable(True)
        self.hub_combo.addItems(HUB_IDS)
        self.hub_combo.setToolTip(
            "A Hugging Face Hub dataset id: cifar10 (the tutorial's), mnist, fashion_mnist, or any\n"
            "'namespace/name' (optionally ':config'). Downloaded once, then read from the cache."
        )
        self.hub_label = QLabel("Dataset &id:", self)
        self.hub_label.setBuddy(self.hub_combo)
        form.addRow(self.hub_label, self.hub_combo)

        self.path_row, ph = laid_out(QHBoxLayout, self)
        self.path_edit = QLineEdit(self.path_row)
        self.path_edit.setPlaceholderText(PLACEHOLDERS[FOLDER])
        self.path_edit.setClearButtonEnabled(True)
        self.path_edit.setToolTip(
            "A folder of images, a .parquet/.arrow file, or CIFAR-10/100 as downloaded\n"
            "(cifar-10-python.tar.gz, cifar-10-binary.tar.gz, cifar-100-python.tar.gz) or extracted\n"
            "(cifar-10-batches-py...), read offline. After a CIFAR archive or folder, ':test' picks its\n"
            "test split (default: train), and for CIFAR-100 ':coarse' its 20 superclasses (default: the\n"
            "100 fine classes)."
        )
        self.browse_btn = QPushButton("&Browse…", self.path_row)
        self.browse_btn.clicked.connect(self.browse)
        ph.addWidget(self.path_edit, 1)
        ph.addWidget(self.browse_btn)
        self.path_label = QLabel("&Path:", self)
        self.path_label.setBuddy(self.path_edit)
        form.addRow(self.path_label, self.path_row)

    def _build_size_rows(self, form: QFormLayout) -> None:
        self.size_spin = self._spin_row(
            form,
            "Image si&ze:",
            8,
            1024,
            "Images are cropped to their centre square, then resized to this size",
        )
        self.size_spin.setValue(32)
        self.size_spin.setSuffix(" px")
        self.limit_spin = self._spin_row(
            form, "&Limit:", 0, 10_000_000, "Use only the first N images (0 = all)"
        )
        self.limit_spin.setSingleStep(1000)
        self.limit_spin.setSpecialValueText("all")

    def _spin_row(self, form: QFormLayout, label: str, lo: int, hi: int, tip: str) -> QSpinBox:
        """A spin box from lo to hi in a new row of `form`, after a label that is its buddy."""
        spin = QSpinBox(self)
        spin.setRange(lo, hi)
        spin.setToolTip(tip)
        buddy = QLabel(label, self)
        buddy.setBuddy(spin)
        form.addRow(buddy, spin)
        return spin

    def _build_load_rows(self, form: QFormLayout) -> None:
        btn_row = QHBoxLayout()
        self.load_btn = QPushButton("Lo&ad", self)
        self.load_btn.setDefault(True)
        self.load_btn.clicked.connect(self.loadRequested)
        self.cancel_btn = QPushButton("&Cancel", self)
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancelRequested)
        btn_row.addWidget(self.load_btn)
        btn_row.addWidget(self.cancel_btn)
        form.addRow(btn_row)

        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1)
        self.progress.reset()  # no text until a load has run
        self.progress.setTextVisible(True)
        self.progress_label = QLabel("", self)
        self.progress_label.setWordWrap(True)
        self.progress_label.setStyleSheet(INFO_STYLE)
        form.addRow(self.progress)
        form.addRow(self.progress_label)

    # ------------------------------------------------------------------ the source
    def kind(self) -> str:
        return self.source_combo.currentData()

    def set_kind(self, kind: str) -> None:
        self.source_combo.setCurrentIndex(list(SOURCE_LABELS).index(kind))

    def spec(self) -> str:
        """The data spec the controls describe ("builtin", "cifar10", "/path/to/folder", ...)."""
        kind = self.kind()
        if kind == BUILTIN:
            return "builtin"
        if kind == HUB:
            return self.hub_combo.currentText().strip()
        return self.path_edit.text().strip()

    def image_size(self) -> int:
        return self.size_spin.value()

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
                kind = data_api().describe_source(spec)
            except Exception:  # a guess is enough to fill the controls
                kind = HUB
            if kind == "cifar":  # an archive is picked as a file, its extracted folder as a folder
                from ddpm_gui.data.cifar import split_spec

                kind = FOLDER if Path(split_spec(spec)[0]).is_dir() else FILE
            kind = {"saved": FOLDER}.get(kind, kind)
            if kind == HUB:
                self.hub_combo.setCurrentText(spec)
            else:
                self.path_edit.setText(spec)
        self.set_kind(kind)
        if image_size is not None:
            self.size_spin.setValue(int(image_size))
        self.limit_spin.setValue(int(limit or 0))

    @Slot()
    def _on_source_changed(self, *_args) -> None:
        kind = self.kind()
        for w in (self.hub_label, self.hub_combo):
            w.setVisible(kind == HUB)
        for w in (self.path_label, self.path_row):
            w.setVisible(kind in (FOLDER, FILE))
        if kind in PLACEHOLDERS:
            self.path_edit.setPlaceholderText(PLACEHOLDERS[kind])
        if not self._busy:
            self.progress_label.setText(self.needs_text())
        self.sourceChanged.emit(kind)

    def needs_text(self) -> str:
        """What the chosen source needs that is not installed (the optional `datasets`), or ""."""
        if self.kind() not in (HUB, FILE):
            return ""
        api = data_api()
        if self.kind() == FILE and api.describe_source(self.spec()) == "cifar":  # read without `datasets`
            return ""
        if api.datasets_available():
            return ""
        return f"Hub datasets and parquet/arrow files need the `datasets` package: {api.HUB_EXTRA_INSTALL}"

    @Slot()
    def browse(self) -> None:
        start = self.path_edit.text().strip() or str(Path.home())
        if self.kind() == FILE:
            path, _ = QFileDialog.getOpenFileName(self, "Open a dataset file", start, file_filters())
        else:
            path = QFileDialog.getExistingDirectory(
                self, "Pick a folder of images or an extracted CIFAR folder", start
            )
        if path:
            self.path_edit.setText(path)

    # ------------------------------------------------------------------ the load's progress
    def set_busy(self, message: str) -> None:
        """A load has started: the controls are locked, the bar runs, `message` says what is loading."""
        self._busy = True
        self._lock(True)
        self.progress.setRange(0, 0)
        self.progress_label.setText(message)

    def show_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress.setRange(0, int(total))
            self.progress.setValue(int(done))
        else:
            self.progress.setRange(0, 0)
        self.progress_label.setText(message)

    def finish(self, loaded: bool, message: str = "") -> None:
        """The load has ended: a full bar when it `loaded` data, an empty one (no "100%") when it failed or
        was cancelled; `message` below it ("" shows what the source needs, if anything)."""
        self._busy = False
        self._lock(False)
        self.progress.setRange(0, 1)
        if loaded:
            self.progress.setValue(1)
        else:
            self.progress.reset()
        self.progress_label.setText(message or self.needs_text())

    def _lock(self, busy: bool) -> None:
        self.load_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)
        inputs = (self.source_combo, self.hub_combo, self.path_edit, self.browse_btn, self.size_spin)
        for w in (*inputs, self.limit_spin):
            w.setEnabled(not busy)

    # ------------------------------------------------------------------ settings
    def restore(self, s: QSettings) -> None:
        kind = s.value("data/kind", BUILTIN)
        if kind in SOURCE_LABELS:
            self.set_kind(kind)
        hub_id = s.value("data/hub_id", "")
        if hub_id:
            self.hub_combo.setCurrentText(str(hub_id))
        self.path_edit.setText(str(s.value("data/path", "") or ""))
        try:
            self.size_spin.setValue(int(s.value("data/size", 32)))
            self.limit_spin.setValue(int(s.value("data/limit", 0)))
        except (TypeError, ValueError):
            pass
        self._on_source_changed()

    def save(self, s: QSettings) -> None:
        s.setValue("data/kind", self.kind())
        s.setValue("data/hub_id", self.hub_combo.currentText().strip())
        s.setValue("data/path", self.path_edit.text().strip())
        s.setValue("data/size", self.size_spin.value())
        s.setValue("data/limit", self.limit_spin.value())
