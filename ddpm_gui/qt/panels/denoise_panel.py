"""Denoise panel: the tutorial's horse experiment with any image, any t and K continuations.

Pick an image (the current dataset, the built-in shapes, or a file), noise it to timestep t with the
closed form q(x_t | x_0) K independent ways, then run the reverse chain from t for each: the K results
show what the model "remembers" of the image at that noise level (small t: the same image; large t:
K different images that share only the coarse layout and colours).

Image files (Open, or dropped on the panel) go through the app's one image loader
(`data.imageio.load_image`), at the model's size; when the model's size changes, the file is read again.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.data.imageio import fit_square, load_image
from ddpm_gui.errors import DDPMError
from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.panels.sample_panel import NO_MODEL_TEXT, SamplerForm, describe_bundle
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import ERROR_STYLE, INFO_STYLE
from ddpm_gui.qt.workers import Job, refuse_new_jobs

# Tests set this to False: errors are then shown in the panel only, never in a modal dialog.
SHOW_DIALOGS = True

STRIP = 16  # images shown in the chooser strip
DEFAULT_INDEX = 4  # the tutorial's horse is image 4 of its CIFAR-10 grid
DEFAULT_T = 50  # the tutorial noises to t = 50 of 100
DEFAULT_K = 10


class DenoisePanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self._job: Job | None = None
        self._file_image: np.ndarray | None = None  # an opened file, at the model's size
        self._file_path: Path | None = None
        self._file_name = ""
        self._builtin: tuple[np.ndarray, np.ndarray] | None = None
        self._strip_start = 0
        self._results: np.ndarray | None = None
        self._starts: np.ndarray | None = None
        self._seed_used = 0
        self._t_used = 0
        self._build_ui()
        state.dataChanged.connect(self._on_data_changed)
        state.bundleChanged.connect(self._on_bundle_changed)
        self._on_data_changed(state.data)
        self._on_bundle_changed(state.bundle)
        self.setAcceptDrops(True)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        # --- the image
        self.source_label = QLabel()
        self.source_label.setWordWrap(True)
        self.source_label.setStyleSheet(INFO_STYLE)
        self.strip = ImageGrid(columns=8, captions_visible=True)
        self.strip.setMinimumHeight(110)
        self.strip.setMaximumHeight(150)
        self.strip.setToolTip("Click an image to choose it")
        self.strip.clicked.connect(self._on_strip_clicked)
        self.index_spin = QSpinBox()
        self.index_spin.setRange(0, 0)
        self.index_spin.valueChanged.connect(self._on_index_changed)
        self.open_btn = QPushButton("Open image &file…")
        self.open_btn.clicked.connect(lambda: self.open_image())
        img_box = QGroupBox("Image")
        iv = QVBoxLayout(img_box)
        iv.addWidget(self.source_label)
        iv.addWidget(self.strip)
        row = QFormLayout()
        row.addRow("&Index:", self.index_spin)
        iv.addLayout(row)
        iv.addWidget(self.open_btn)

        # --- noise and denoise
        self.t_slider = QSlider(Qt.Orientation.Horizontal)
        self.t_slider.setRange(1, 99)
        self.t_slider.setValue(DEFAULT_T)
        self.t_spin = QSpinBox()
        self.t_spin.setRange(1, 99)
        self.t_spin.setValue(DEFAULT_T)
        self.t_slider.valueChanged.connect(self.t_spin.setValue)
        self.t_spin.valueChanged.connect(self.t_slider.setValue)
        self.t_spin.valueChanged.connect(self._update_t_note)
        self.t_note = QLabel()
        self.t_note.setStyleSheet(INFO_STYLE)
        self.t_note.setWordWrap(True)
        t_row = QHBoxLayout()
        t_row.addWidget(self.t_slider, 1)
        t_row.addWidget(self.t_spin)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 64)
        self.k_spin.setValue(DEFAULT_K)
        self.k_spin.setToolTip("How many independent noisings (and denoisings) of the image")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.sampler_form = SamplerForm(default="ddpm-beta", ddim_steps=20)
        form = QFormLayout()
        t_label = QLabel("Noise to &t:")
        t_label.setBuddy(self.t_spin)
        form.addRow(t_label, t_row)
        form.addRow("", self.t_note)
        form.addRow("&K continuations:", self.k_spin)
        form.addRow("See&d:", self.seed_spin)
        run_box = QGroupBox("Noise, then denoise")
        rv = QVBoxLayout(run_box)
        rv.addLayout(form)
        rv.addWidget(self.sampler_form)

        self.run_btn = QPushButton("&Run")
        self.run_btn.setDefault(True)
        self.run_btn.clicked.connect(self.run)
        self.stop_btn = QPushButton("St&op")
        self.stop_btn.clicked.connect(self.stop)
        self.rerun_btn = QPushButton("Re-run with &new seeds")
        self.rerun_btn.setToolTip("Increase the seed and run again: other noise, other continuations")
        self.rerun_btn.clicked.connect(self.rerun)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.stop_btn)
        self.model_label = QLabel(NO_MODEL_TEXT)
        self.model_label.setWordWrap(True)
        self.model_label.setStyleSheet(INFO_STYLE)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.hide()

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 4, 0)
        lv.addWidget(img_box)
        lv.addWidget(run_box)
        lv.addLayout(buttons)
        lv.addWidget(self.rerun_btn)
        lv.addWidget(self.model_label)
        lv.addWidget(self.status_label)
        lv.addWidget(self.error_label)
        lv.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(left)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setMinimumWidth(340)
        scroll.setMaximumWidth(420)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        # --- results
        self.original_view = ImageGrid(captions_visible=False)
        self.start_view = ImageGrid(captions_visible=False)
        self.starts_grid = ImageGrid(captions_visible=False)
        self.results_grid = ImageGrid()
        self.original_title = QLabel("<b>original</b>")
        self.start_title = QLabel("<b>noised start</b>")
        self.starts_title = QLabel("<b>all K noised starts</b> (independent noise)")
        self.results_title = QLabel("<b>continuations</b>: the reverse process from each noised start")
        top = QHBoxLayout()
        for title, view, stretch in (
            (self.original_title, self.original_view, 1),
            (self.start_title, self.start_view, 1),
            (self.starts_title, self.starts_grid, 2),
        ):
            col = QVBoxLayout()
            col.addWidget(title)
            col.addWidget(view, 1)
            top.addLayout(col, stretch)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(4, 0, 0, 0)
        rl.addLayout(top, 2)
        rl.addWidget(self.results_title)
        rl.addWidget(self.results_grid, 3)

        outer = QHBoxLayout(self)
        outer.addWidget(scroll)
        outer.addWidget(right, 1)
        self._update_buttons()

    # ------------------------------------------------------------------ image source
    def _pool(self) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, str]:
        """(images, labels, class names, description) the index chooses from."""
        d = self.state.data
        if d is not None:
            return d.images, d.labels, d.class_names, f"{d.name}: {len(d):,} images"
        if self._builtin is None:
            from ddpm_gui.data.builtin import BUILTIN_CLASSES, generate_builtin

            size = self.state.bundle.image_size if self.state.bundle is not None else 32
            imgs, labels = generate_builtin(64, size=max(size, 8))
            self._builtin = (imgs, labels)
            self._builtin_names = list(BUILTIN_CLASSES)
        imgs, labels = self._builtin
        return imgs, labels, self._builtin_names, "built-in shapes (nothing loaded in the Data tab)"

    @Slot(object)
    def _on_data_changed(self, _data: object) -> None:
        images, _, _, desc = self._pool()
        self.index_spin.blockSignals(True)
        self.index_spin.setRange(0, max(len(images) - 1, 0))
        if self._file_image is None and self.index_spin.value() == 0:
            self.index_spin.setValue(min(DEFAULT_INDEX, len(images) - 1))
        self.index_spin.blockSignals(False)
        self.source_label.setText(desc)
        self._strip_start = -1
        self._on_index_changed(self.index_spin.value(), keep_file=self._file_image is not None)

    @Slot(int)
    def _on_strip_clicked(self, i: int) -> None:
        self.index_spin.setValue(self._strip_start + i)
        self._on_index_changed(self.index_spin.value())

    @Slot(int)
    def _on_index_changed(self, index: int, keep_file: bool = False) -> None:
        if not keep_file:
            self._file_image = self._file_path = None
        images, labels, names, _desc = self._pool()
        start = (index // STRIP) * STRIP
        self._strip_start = start
        chunk = images[start : start + STRIP]
        marked = self._file_image is None
        self.strip.set_images(
            chunk,
            captions=[
                f"[{start + j}]" if marked and start + j == index else str(start + j)
                for j in range(len(chunk))
            ],
        )
        self._show_original()

    def open_image(self, path: str | Path | None = None) -> bool:
        """Use an image file (any size; centre-cropped and resized to the model's size by the app's image
        loader). On failure the message is shown and the current image is kept."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self,
                "Open image",
                str(Path.home()),
                "Images (*.png *.jpg *.jpeg *.bmp *.gif *.webp *.tif *.tiff);;All files (*)",
            )
            if not path:
                return False
        try:
            image = load_image(path, self.model_size())
        except DDPMError as e:
            self._error(str(e), "Cannot open the image")
            return False
        self.error_label.hide()
        self._file_image, self._file_path, self._file_name = image, Path(path), Path(path).name
        self.source_label.setText(f"File: {self._file_name} (pick an index to go back to the dataset)")
        self._on_index_changed(self.index_spin.value(), keep_file=True)  # unmarks the strip
        return True

    def dragEnterEvent(self, event) -> None:  # Qt API
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # Qt API
        for url in event.mimeData().urls():
            if url.isLocalFile() and self.open_image(url.toLocalFile()):
                event.acceptProposedAction()
                return

    def _refit_file(self) -> None:
        """After the model's size changed: read the opened file again at the new size (one crop and resize
        from the file, as the CLI does, never a resize of a resize). If it cannot be read any more, say so
        and go back to the dataset's image."""
        size = self.model_size()
        if self._file_image is None or self._file_image.shape[0] == size:
            return
        try:
            self._file_image = load_image(self._file_path, size)
        except DDPMError as e:
            self._file_image = self._file_path = None
            self.source_label.setText(self._pool()[3])
            self._on_index_changed(self.index_spin.value())
            self._error(f"{e} Showing the dataset's image instead.", "Cannot open the image")

    def model_size(self) -> int:
        b = self.state.bundle
        return b.image_size if b is not None else 32

    def image(self) -> np.ndarray:
        """The image to noise, at the model's size ((S, S, 3) uint8)."""
        if self._file_image is not None and self._file_image.shape[0] == self.model_size():
            return self._file_image
        images, _, _, _ = self._pool()
        i = min(self.index_spin.value(), len(images) - 1)
        return fit_square(images[i], self.model_size())

    def _image_caption(self) -> str:
        if self._file_image is not None:
            return self._file_name
        _, labels, names, _ = self._pool()
        i = self.index_spin.value()
        if labels is not None and names and 0 <= i < len(labels) and labels[i] < len(names):
            return f"#{i}: {names[labels[i]]}"
        return f"#{i}"

    def _show_original(self) -> None:
        self.original_view.set_images(self.image())
        self.original_title.setText(f"<b>original</b> ({self._image_caption()})")

    # ------------------------------------------------------------------ model
    @Slot(object)
    def _on_bundle_changed(self, b: object) -> None:
        if b is None:
            self.model_label.setText(NO_MODEL_TEXT)
        else:
            T = b.schedule.T  # type: ignore[attr-defined]
            self.model_label.setText(describe_bundle(b))
            self.sampler_form.set_T(T)
            hi = max(T - 1, 1)
            for w in (self.t_slider, self.t_spin):
                w.setMaximum(hi)
            if self.t_spin.value() > hi:
                self.t_spin.setValue(hi)
            if self._builtin is not None and self._builtin[0].shape[1] != b.image_size:  # type: ignore[attr-defined]
                self._builtin = None
                self._on_data_changed(self.state.data)
        self._refit_file()
        self._update_t_note()
        self._show_original()
        self._update_buttons()

    @Slot()
    def _update_t_note(self, *_args) -> None:
        b = self.state.bundle
        if b is None:
            self.t_note.setText("")
            return
        t = self.t_spin.value()
        ab = float(b.schedule.alpha_bars[t])
        self.t_note.setText(
            f"x_t = {math.sqrt(ab):.2f}·image + {math.sqrt(1 - ab):.2f}·noise (step {t + 1} of {b.schedule.T})"
        )

    # ------------------------------------------------------------------ running
    def is_busy(self) -> bool:
        return self._job is not None and self._job.is_running()

    def _update_buttons(self) -> None:
        has = self.state.bundle is not None
        running = self._job is not None
        self.run_btn.setEnabled(has and not running)
        self.rerun_btn.setEnabled(has and not running)
        self.stop_btn.setEnabled(running)

    @Slot()
    def rerun(self) -> bool:
        self.seed_spin.setValue(self.seed_spin.value() + 1)
        return self.run()

    @Slot()
    def run(self) -> bool:
        b = self.state.bundle
        if b is None:
            self._error(NO_MODEL_TEXT, "No model")
            return False
        if self._job is not None:
            return False
        from ddpm_gui.engine.sampler import SampleConfig, accelerated, denoise_frames

        image = self.image()
        t = min(self.t_spin.value(), b.schedule.T - 1)
        k = self.k_spin.value()
        seed = self.seed_spin.value()
        kw = self.sampler_form.kwargs()
        chain = self.sampler_form.chain_length(t)
        cfg = SampleConfig(n=k, seed=seed, every=max(1, math.ceil(chain / 60)), **kw)
        self._seed_used = seed
        self._t_used = t
        self._results = None
        self._starts = None
        self.error_label.hide()
        self.start_view.clear()
        self.starts_grid.clear()
        self.results_grid.clear()
        self.start_title.setText(f"<b>noised start</b> (t = {t})")
        self.status_label.setText(f"Noising to t = {t}, then {chain} reverse steps for {k} images…")
        stop = threading.Event()
        job = Job(
            lambda: denoise_frames(accelerated(b), image, t=t, k=k, seed=seed, cfg=cfg, stop=stop),
            parent=self,
            on_stop=stop.set,
            close_on_stop=True,
        )
        job.event.connect(self._on_frame)
        job.failed.connect(self._on_failed)
        job.done.connect(self._on_done)
        self._job = job
        job.start()
        self._update_buttons()
        return True

    @Slot()
    def stop(self) -> None:
        if self._job is not None:
            self._job.request_stop()

    @Slot(object)
    def _on_frame(self, f) -> None:  # f: SampleFrame
        if f.index < 0:  # the K noised starts
            self._starts = f.xt
            self.start_view.set_images(f.xt[0])
            self.starts_grid.set_images(f.xt)
            self.results_grid.set_images(f.xt)
            return
        if f.final:
            self._results = f.xt
            self.results_grid.set_images(f.xt, captions=[f"#{i + 1}" for i in range(len(f.xt))])
            self.results_title.setText(
                f"<b>{len(f.xt)} continuations</b> of the image noised to t = {self._t_used} (seed {self._seed_used})"
            )
        else:
            self.results_grid.set_images(f.xt)
            self.results_title.setText(
                f"<b>continuations</b>: reverse step {f.index + 1} of {f.total} (t = {f.t})"
            )

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._error(message, "Denoising failed")

    @Slot()
    def _on_done(self) -> None:
        self._job = None
        if self._results is not None:
            self.status_label.setText(f"Done: {len(self._results)} continuations (seed {self._seed_used}).")
        elif self.error_label.isHidden():
            self.status_label.setText("Stopped.")
        self._update_buttons()

    def shutdown(self, timeout_ms: int = 60000) -> None:
        refuse_new_jobs(self)
        if self._job is not None:
            self._job.request_stop()
            self._job.wait(timeout_ms)

    # ------------------------------------------------------------------ results (tests, export)
    def results(self) -> np.ndarray | None:
        return self._results

    def noised_starts(self) -> np.ndarray | None:
        return self._starts

    def _error(self, message: str, title: str) -> None:
        self.error_label.setText(message)
        self.error_label.show()
        self.state.show_status(message)
        if SHOW_DIALOGS:
            QMessageBox.warning(self, title, message)
