"""The Data tab's preview: the loaded images a page at a time, captioned with their class names, filtered
by class; the mouse wheel over the grid turns the pages."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.style import INFO_STYLE

PAGE_SIZES = (20, 50, 100, 200)
EMPTY_TEXT = "Load a dataset to see its images here."


def class_name(data, k: int) -> str:
    """The name of class `k` of an ImageData ("class 3" when it has no names)."""
    names = data.class_names if data is not None else None
    return names[k] if names and 0 <= k < len(names) else f"class {k}"


class DataPreview(QGroupBox):
    """The "Preview" box: `set_data(ImageData or None)`, then pages of `page_size()` images."""

    imageClicked = Signal(str)  # a line for the status bar: "Image #12 (circle)"

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Preview", parent)
        self._data = None
        self._indices = np.zeros(0, np.int64)  # images passing the class filter
        self._page = 0
        self._first_shown = 0  # the index (in _indices) of the first image shown, kept across page sizes
        self._build()
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._update_paging()

    def _build(self) -> None:
        pv = QVBoxLayout(self)
        bar = QHBoxLayout()
        self.class_combo = QComboBox(self)
        self.class_combo.addItem("All classes", -1)
        self.class_combo.setMinimumContentsLength(14)
        self.class_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.class_combo.currentIndexChanged.connect(self._on_filter_changed)
        cls_lbl = QLabel("Cla&ss:", self)
        cls_lbl.setBuddy(self.class_combo)
        self.page_size_combo = QComboBox(self)
        for n in PAGE_SIZES:
            self.page_size_combo.addItem(f"{n} per page", n)
        self.page_size_combo.setCurrentIndex(PAGE_SIZES.index(50))
        self.page_size_combo.currentIndexChanged.connect(self._on_page_size_changed)
        bar.addWidget(cls_lbl)
        bar.addWidget(self.class_combo)
        bar.addStretch(1)
        bar.addWidget(self.page_size_combo)
        pv.addLayout(bar)

        self.grid = ImageGrid(self)
        self.grid.setMinimumSize(320, 240)
        self.grid.setToolTip("Click an image to see its index and class in the status bar")
        self.grid.clicked.connect(self._on_grid_clicked)
        self.grid.wheeled.connect(self._on_grid_wheeled)
        self.grid.setVisible(False)
        pv.addWidget(self.grid, 1)
        self.placeholder = QLabel(EMPTY_TEXT, self)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setStyleSheet(INFO_STYLE)
        pv.addWidget(self.placeholder, 1)

        self.prev_btn = QPushButton("◀ P&revious", self)
        self.prev_btn.clicked.connect(lambda: self.set_page(self._page - 1))
        self.next_btn = QPushButton("Ne&xt ▶", self)
        self.next_btn.clicked.connect(lambda: self.set_page(self._page + 1))
        self.page_label = QLabel("", self)
        self.page_label.setMinimumWidth(140)
        self.page_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        nav = QHBoxLayout()
        nav.addStretch(1)
        nav.addWidget(self.prev_btn)
        nav.addWidget(self.page_label)
        nav.addWidget(self.next_btn)
        nav.addStretch(1)
        pv.addLayout(nav)

    # ------------------------------------------------------------------ data and filter
    def set_data(self, data) -> None:
        """Show `data` (an ImageData, or None for nothing), from its first page, all classes."""
        self._data = data
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItem("All classes", -1)
        if data is not None and data.labels is not None:
            counts = np.bincount(data.labels, minlength=data.num_classes)
            for k in range(data.num_classes):
                self.class_combo.addItem(f"{class_name(data, k)} ({counts[k]:,})", k)
        self.class_combo.setEnabled(self.class_combo.count() > 1)
        self.class_combo.blockSignals(False)
        self._apply_filter()

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

    # ------------------------------------------------------------------ pages
    def page_size(self) -> int:
        return int(self.page_size_combo.currentData())

    def pages(self) -> int:
        return max(1, -(-len(self._indices) // self.page_size()))

    def set_page(self, page: int) -> None:
        self._page = max(0, min(page, self.pages() - 1))
        self._first_shown = self._page * self.page_size()
        self._show_page()

    @Slot()
    def _on_page_size_changed(self, *_args) -> None:
        self.set_page(self._first_shown // self.page_size())  # the page that holds the first image shown

    def shown_indices(self) -> np.ndarray:
        """Dataset indices of the images on the current page."""
        start = self._page * self.page_size()
        return self._indices[start : start + self.page_size()]

    def _show_page(self) -> None:
        d = self._data
        idx = self.shown_indices()
        if d is None or not len(idx):
            self.grid.clear()
            self.grid.setVisible(False)
            self.placeholder.setVisible(True)
            self.placeholder.setText(EMPTY_TEXT if d is None else "No images.")
        else:
            captions = [class_name(d, int(k)) for k in d.labels[idx]] if d.labels is not None else None
            self.placeholder.setVisible(False)
            self.grid.setVisible(True)
            self.grid.set_images(d.images[idx], captions)
        self._update_paging()

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
        """The mouse wheel over the grid turns the pages (a notch a page)."""
        self.set_page(self._page + notches)

    @Slot(int)
    def _on_grid_clicked(self, i: int) -> None:
        idx = self.shown_indices()
        if 0 <= i < len(idx) and self._data is not None:
            k = int(idx[i])
            labels = self._data.labels
            cls = f" ({class_name(self._data, int(labels[k]))})" if labels is not None else ""
            self.imageClicked.emit(f"Image #{k:,}{cls}")
