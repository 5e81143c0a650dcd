"""The Denoise tab's settings: the image (the dataset, the built-in shapes, or a file) and how to noise and
denoise it (t, K, seed, sampler; the class and guidance of a class-conditional model), or to inpaint it (RePaint: the jump length and the number of resamples).
`imageChanged` follows every change of the image to noise, `inpaintChanged` the inpainting switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.core.inpaint import MAX_RESAMPLES
from ddpm_gui.core.spec import ScheduleConfig
from ddpm_gui.data.imageio import fit_square, load_image
from ddpm_gui.engine.inpaint import DEFAULT_JUMP_LENGTH, DEFAULT_RESAMPLES, chain_moves
from ddpm_gui.errors import DDPMError
from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import INFO_STYLE
from ddpm_gui.qt.widgets import Messages, SamplerForm, fill_class_combo, guidance_spin

STRIP = 16  # images shown in the chooser strip
DEFAULT_INDEX = 4  # the tutorial's horse is image 4 of its CIFAR-10 grid
DEFAULT_T = 50  # the tutorial noises to t = 50 of 100
DEFAULT_K = 10
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.webp *.tif *.tiff);;All files (*)"


class DenoiseForm(QWidget):
    imageChanged = Signal()
    inpaintChanged = Signal(bool)

    def __init__(self, state: AppState, messages: Messages, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self._messages = messages
        self._model = None
        self._file_image: np.ndarray | None = None  # an opened file, at the model's size
        self._file_path: Path | None = None
        self._file_name = ""
        self._builtin: tuple[np.ndarray, np.ndarray] | None = None
        self._builtin_names: list[str] = []
        self._strip_start = 0
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._image_box())
        lay.addWidget(self._run_box())
        state.dataChanged.connect(self._on_data_changed)
        self._on_data_changed(state.data)

    def _image_box(self) -> QGroupBox:
        self.source_label = QLabel()
        self.source_label.setWordWrap(True)
        self.source_label.setStyleSheet(INFO_STYLE)
        self.strip = ImageGrid(columns=8, captions_visible=True)
        self.strip.setMinimumHeight(110)
        self.strip.setMaximumHeight(150)
        self.strip.setToolTip("Click an image to choose it")
        self.strip.clicked.connect(self.on_strip_clicked)
        self.index_spin = QSpinBox()
        self.index_spin.setRange(0, 0)
        self.index_spin.valueChanged.connect(self._on_index_changed)
        self.open_btn = QPushButton("Open image fi&le…")
        self.open_btn.setToolTip("Open an image file (or drop one on this tab)")
        self.open_btn.clicked.connect(lambda: self.open_image())
        box = QGroupBox("Image")
        iv = QVBoxLayout(box)
        iv.addWidget(self.source_label)
        iv.addWidget(self.strip)
        row = QFormLayout()
        row.addRow("&Index:", self.index_spin)
        iv.addLayout(row)
        iv.addWidget(self.open_btn)
        return box

    def _run_box(self) -> QGroupBox:
        self.t_slider = QSlider(Qt.Orientation.Horizontal)
        self.t_spin = QSpinBox()
        for w in (self.t_slider, self.t_spin):
            w.setRange(0, 99)
            w.setValue(DEFAULT_T)
            w.setToolTip("t: the tutorial's 0-based index into the noise schedule (0 to T-1)")
        self.t_slider.valueChanged.connect(self.t_spin.setValue)
        self.t_spin.valueChanged.connect(self.t_slider.setValue)
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
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("Class-conditional models only: the class the model is asked for")
        self.class_combo.currentIndexChanged.connect(self._update_class_controls)
        self.guidance_spin = guidance_spin()
        form = QFormLayout()
        t_label = QLabel("Noise to &t:")
        t_label.setBuddy(self.t_spin)
        form.addRow(t_label, t_row)
        form.addRow(self.t_note)
        self._t_rows = (form, t_row, self.t_note)  # hidden while inpainting, which does not use t
        form.addRow("&K continuations:", self.k_spin)
        form.addRow("See&d:", self.seed_spin)
        form.addRow("Cl&ass:", self.class_combo)
        form.addRow("G&uidance:", self.guidance_spin)
        box = QGroupBox("Noise, then denoise")
        rv = QVBoxLayout(box)
        rv.addLayout(form)
        rv.addWidget(self.sampler_form)
        self._add_inpaint_settings(rv)
        return box

    def _add_inpaint_settings(self, lay: QVBoxLayout) -> None:
        """The inpainting switch, and its settings (shown only while it is on)."""
        self.inpaint_check = QCheckBox("Inpaint (RePaint): redraw onl&y the painted region")
        self.inpaint_check.setToolTip(
            "RePaint: paint a mask on the image; the painted region starts from pure noise at t = T-1 and the "
            "rest of the image is the original, noised to each step"
        )
        self.jump_spin = QSpinBox()
        self.jump_spin.setRange(1, 99)
        self.jump_spin.setValue(DEFAULT_JUMP_LENGTH)
        self.jump_spin.setToolTip("Jump length j: how many steps the chain goes back up by forward diffusion")
        self.resample_spin = QSpinBox()
        self.resample_spin.setRange(0, MAX_RESAMPLES)
        self.resample_spin.setValue(DEFAULT_RESAMPLES)
        self.resample_spin.setToolTip(
            "Resamples r: how many times each stretch of j steps is noised again and redone (0: no resampling)"
        )
        self.calls_note = QLabel()
        self.calls_note.setStyleSheet(INFO_STYLE)
        self.calls_note.setWordWrap(True)
        row = QHBoxLayout()
        for text, spin in (("&Jump length:", self.jump_spin), ("&Resamples:", self.resample_spin)):
            label = QLabel(text)
            label.setBuddy(spin)
            row.addWidget(label)
            row.addWidget(spin, 1)
        self._inpaint_body = QWidget()
        v = QVBoxLayout(self._inpaint_body)
        v.setContentsMargins(0, 0, 0, 0)
        v.addLayout(row)
        v.addWidget(self.calls_note)
        lay.addWidget(self.inpaint_check)
        lay.addWidget(self._inpaint_body)
        self.inpaint_check.toggled.connect(self._on_inpaint_toggled)
        for w in (self.jump_spin, self.resample_spin):
            w.valueChanged.connect(self._update_calls_note)
        self._on_inpaint_toggled(False)

    # ------------------------------------------------------------------ class and guidance
    def class_kwargs(self) -> dict:
        """SampleConfig's class_label and guidance: no class (and no guidance) for an unconditional model."""
        b = self._model
        label = self.class_combo.currentData() if b is not None and b.num_classes else None
        return {"class_label": label, "guidance": self.guidance_spin.value() if label is not None else 1.0}

    def _fill_classes(self, b) -> None:
        fill_class_combo(self.class_combo, b)
        self._update_class_controls()

    @Slot()
    def _update_class_controls(self, *_args) -> None:
        b = self._model
        cond = b is not None and bool(b.num_classes)
        self.class_combo.setEnabled(cond)
        # guidance needs the model's "no class" row (models of other tools may have none)
        guided = cond and getattr(b, "null_class", None) is not None
        self.guidance_spin.setEnabled(guided and self.class_combo.currentData() is not None)

    # ------------------------------------------------------------------ inpainting
    def inpainting(self) -> bool:
        return self.inpaint_check.isChecked()

    def repaint_settings(self) -> tuple[int, int]:
        """(jump length, resamples)."""
        return self.jump_spin.value(), self.resample_spin.value()

    def inpaint_moves(self) -> tuple[int, int]:
        """(moves, model calls per image) of the RePaint chain these settings ask for."""
        return chain_moves(self._T(), *self.repaint_settings())

    def _T(self) -> int:
        """The model's number of diffusion steps (the default schedule's without a model)."""
        return self._model.schedule.T if self._model is not None else ScheduleConfig().T

    @Slot(bool)
    def _on_inpaint_toggled(self, on: bool) -> None:
        self._inpaint_body.setVisible(on)
        form, *rows = self._t_rows
        for row in rows:  # inpainting starts from pure noise: t is not used
            form.setRowVisible(row, not on)
        self._update_calls_note()
        self.inpaintChanged.emit(on)

    @Slot()
    def _update_calls_note(self, *_args) -> None:
        T = self._T()
        _moves, calls = self.inpaint_moves()
        j, r = self.repaint_settings()
        how = (
            "no resampling"
            if r == 0
            else f"every {j} steps, back up {j} steps by forward diffusion and redo them, {r}×"
        )
        self.calls_note.setText(
            f"Only the painted region changes, from pure noise at t = {T - 1}; {how}: {calls:,} model calls "
            "per image."
        )

    # ------------------------------------------------------------------ the image
    def pool(self) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, str]:
        """(images, labels, class names, description) the index chooses from."""
        d = self.state.data
        if d is not None:
            return d.images, d.labels, d.class_names, f"{d.name}: {len(d):,} images"
        if self._builtin is None:
            from ddpm_gui.data.builtin import BUILTIN_CLASSES, generate_builtin

            imgs, labels = generate_builtin(64, size=max(self.model_size(), 8))
            self._builtin = (imgs, labels)
            self._builtin_names = list(BUILTIN_CLASSES)
        imgs, labels = self._builtin
        return imgs, labels, self._builtin_names, "built-in shapes (nothing loaded in the Data tab)"

    @Slot(object)
    def _on_data_changed(self, _data: object) -> None:
        images, _, _, desc = self.pool()
        self.index_spin.blockSignals(True)
        self.index_spin.setRange(0, max(len(images) - 1, 0))
        if self._file_image is None and self.index_spin.value() == 0:
            self.index_spin.setValue(min(DEFAULT_INDEX, len(images) - 1))
        self.index_spin.blockSignals(False)
        self.source_label.setText(desc)
        self._strip_start = -1
        self._on_index_changed(self.index_spin.value(), keep_file=self._file_image is not None)

    @Slot(int)
    def on_strip_clicked(self, i: int) -> None:
        self.index_spin.setValue(self._strip_start + i)
        self._on_index_changed(self.index_spin.value())

    @Slot(int)
    def _on_index_changed(self, index: int, keep_file: bool = False) -> None:
        if not keep_file:
            self._file_image = self._file_path = None
        images = self.pool()[0]
        start = (index // STRIP) * STRIP
        self._strip_start = start
        chunk = images[start : start + STRIP]
        marked = self._file_image is None
        caps = [
            f"[{start + j}]" if marked and start + j == index else str(start + j) for j in range(len(chunk))
        ]
        self.strip.set_images(chunk, captions=caps)
        self.imageChanged.emit()

    def open_image(self, path: str | Path | None = None) -> bool:
        """Use an image file (any size; centre-cropped and resized to the model's size by the app's image
        loader). On failure the message is shown and the current image is kept."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Open image", str(Path.home()), IMAGE_FILTER)
            if not path:
                return False
        try:
            image = load_image(path, self.model_size())
        except DDPMError as e:
            self._messages.error(str(e), "Cannot open the image")
            return False
        self._messages.clear_error()
        self._file_image, self._file_path, self._file_name = image, Path(path), Path(path).name
        self.source_label.setText(f"File: {self._file_name} (pick an index to go back to the dataset)")
        self._on_index_changed(self.index_spin.value(), keep_file=True)  # unmarks the strip
        return True

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
            self.source_label.setText(self.pool()[3])
            self._on_index_changed(self.index_spin.value())
            self._messages.error(f"{e} Showing the dataset's image instead.", "Cannot open the image")

    def model_size(self) -> int:
        return self._model.image_size if self._model is not None else 32

    def image(self) -> np.ndarray:
        """The image to noise, at the model's size ((S, S, 3) uint8)."""
        if self._file_image is not None and self._file_image.shape[0] == self.model_size():
            return self._file_image
        images = self.pool()[0]
        i = min(self.index_spin.value(), len(images) - 1)
        return fit_square(images[i], self.model_size())

    def image_caption(self) -> str:
        if self._file_image is not None:
            return self._file_name
        _, labels, names, _ = self.pool()
        i = self.index_spin.value()
        if labels is not None and names and 0 <= i < len(labels) and labels[i] < len(names):
            return f"#{i}: {names[labels[i]]}"
        return f"#{i}"

    # ------------------------------------------------------------------ the model
    def set_model(self, b) -> None:
        """A new model (or None): t up to its T-1, the image at its size."""
        self._model = b
        if b is not None:
            T = b.schedule.T
            self.sampler_form.set_T(T)
            hi = max(T - 1, 0)
            for w in (self.t_slider, self.t_spin):
                w.setMaximum(hi)
            self.jump_spin.setMaximum(max(hi, 1))
            if self._builtin is not None and self._builtin[0].shape[1] != b.image_size:
                self._builtin = None
                self._on_data_changed(self.state.data)
        self._refit_file()
        self._fill_classes(b)
        self._update_calls_note()
        self.imageChanged.emit()
