"""Forward process panel: watch an image dissolve into noise, step by step and in closed form.

The tutorial's second and third steps side by side, driven by one frame player:
- left, the iterative process q(x_t | x_(t-1)) applied t times (`core.diffusion.q_step`);
- right, the closed form q(x_t | x_0) with the same x_0 (`core.diffusion.q_sample`), one noise draw
  for all t so the animation is smooth.
Above them, the schedule editor and plots (qt/schedule_view.py) update as you type.

Frames are computed by `engine.forward.forward_frames` in a job (T up to 10,000 and images up to the
data's size), debounced while you edit; a newer request replaces an older one. Image files (Open, or
dropped on the panel) go through the app's one image loader, `data.imageio.load_image`. The tab exports
what it shows (qt/exports.py): a PNG of the six-step strip (iterative above, closed form below) and an
animated GIF or WebP of both processes side by side.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.core.schedule import ScheduleConfig
from ddpm_gui.data.imageio import load_image
from ddpm_gui.engine.forward import ForwardFrames, forward_frames
from ddpm_gui.errors import DDPMError
from ddpm_gui.qt.exports import Exporter, animation_picks, export_scale, tile
from ddpm_gui.qt.imageview import ImageGrid, as_hw3_batch
from ddpm_gui.qt.player import FramePlayer
from ddpm_gui.qt.schedule_view import ScheduleEditor, SchedulePlots
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import ERROR_STYLE, INFO_STYLE
from ddpm_gui.qt.widgets import (
    Messages,
    accept_file_drags,
    button,
    drop_kind,
    dropped_paths,
    laid_out,
    side_column,
)
from ddpm_gui.qt.workers import JobSlot, shutdown_jobs

# Tests set this to False: errors are then shown in the panel only, never in a modal dialog.
SHOW_DIALOGS = True

STRIP_FRAMES = 6  # the tutorial's figure: 6 evenly spaced steps
STRIP_COLUMNS = 8  # images of the dataset shown in the chooser strip
EXPORT_TITLE = "Save the forward process"  # the save dialogs' title
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.webp *.tif *.tiff);;All files (*)"


def _dialogs() -> bool:
    return SHOW_DIALOGS


def _tiled(images: np.ndarray, columns: int) -> np.ndarray:
    """The exported mosaic of these images, `columns` wide, upscaled as every export is."""
    return tile(images, columns=columns, scale=export_scale(images.shape[1]))


def _frames_job(image: np.ndarray, sched, seed: int, generation: int, stop: threading.Event):
    """Runs in a worker thread: yields (generation, ForwardFrames) once, nothing when stopped."""
    frames = forward_frames(image, sched, seed, stop=stop)
    if frames is not None:
        yield generation, frames


def _fallback_image(size: int = 32) -> np.ndarray:
    """An image to show before any data is loaded: the first built-in shape."""
    try:
        from ddpm_gui.data.builtin import generate_builtin

        return generate_builtin(1, size=max(size, 8))[0][0]
    except Exception:  # never fail for a placeholder
        y, x = np.mgrid[0:size, 0:size]
        return np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 128)], -1).astype(np.uint8)


class ForwardPanel(QWidget):
    """Schedule editor + plots + the two forward processes of one image, frame by frame."""

    framesReady = Signal()  # new frames are shown (tests wait for it)
    exported = Signal(object)  # the Path of a finished export

    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self._image = _fallback_image(32)
        self._image_source = "built-in example"
        self._frames: ForwardFrames | None = None
        self._generation = 0
        self._pending = False
        self._rng = np.random.default_rng()
        self._strip_picks = np.zeros(0, int)
        self.messages = Messages(state, _dialogs, self)
        self._frames_slot = JobSlot(self, self._on_frames, self._on_job_failed, self._on_job_done)
        self.exporter = Exporter(self, state, self.messages, _dialogs)
        self.exporter.exported.connect(self.exported)
        self.exporter.busyChanged.connect(self._update_buttons)
        self.setAcceptDrops(True)

        self._recompute_timer = QTimer(self)
        self._recompute_timer.setSingleShot(True)
        self._recompute_timer.setInterval(30)
        self._recompute_timer.timeout.connect(self._start_job)

        self._build_ui()
        self.schedule_editor.scheduleChanged.connect(self._on_schedule)
        self._on_schedule(self.schedule_editor.schedule())
        self.state.dataChanged.connect(self._on_data_changed)
        if state.data is not None:
            self._on_data_changed(state.data)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.schedule_editor = ScheduleEditor(self)
        self.png_btn = button(
            "Save PN&G strip…",
            self.save_png_strip,
            "The six steps below the player (iterative above, closed form below) as a PNG",
        )
        self.anim_btn = button(
            "Save GIF / &WebP…",
            self.save_animation,
            "Both processes side by side, x_0 to x_T, as an animated GIF or WebP",
        )
        self.train_btn = button(
            "&Use for training",
            self.use_for_training,
            "Train the Train tab's next run with this noise schedule (kind, T, beta range, zero terminal SNR)",
        )
        boxes = [self._image_box(), self.schedule_editor, self.train_btn, self._noise_box()]
        scroll = side_column([*boxes, (self.png_btn, self.anim_btn), self.messages], 370, 370)

        self.plots = SchedulePlots(self)
        right, rv = laid_out(QVBoxLayout, self)
        rv.addWidget(self.plots)
        rv.addWidget(self._views(), 1)
        rv.addWidget(self.frame_label)
        rv.addWidget(self.player)
        rv.addWidget(self._strip_row())
        right.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        lay = QHBoxLayout(self)
        lay.addWidget(scroll)
        lay.addWidget(right, 1)
        self._update_buttons()

    def _image_box(self) -> QGroupBox:
        box = QGroupBox("Image", self)
        iv = QVBoxLayout(box)
        row = QHBoxLayout()
        self.index_spin = QSpinBox(box)
        self.index_spin.setRange(0, 0)
        self.index_spin.setToolTip("Index of the image in the current dataset")
        self.index_spin.valueChanged.connect(self._on_index_changed)
        idx_lbl = QLabel("&Index:", box)
        idx_lbl.setBuddy(self.index_spin)
        self.random_btn = QPushButton("&Random", box)
        self.random_btn.clicked.connect(self.pick_random)
        self.open_btn = QPushButton("&Open image…", box)
        self.open_btn.setToolTip("Open an image file (or drop one on this panel)")
        self.open_btn.clicked.connect(self.open_image_dialog)
        for w, stretch in ((idx_lbl, 0), (self.index_spin, 1), (self.random_btn, 0), (self.open_btn, 0)):
            row.addWidget(w, stretch)
        iv.addLayout(row)
        self.strip = ImageGrid(box, columns=STRIP_COLUMNS, captions_visible=False)
        self.strip.setFixedHeight(48)
        self.strip.setToolTip("Click an image to noise it")
        self.strip.clicked.connect(self._on_strip_clicked)
        iv.addWidget(self.strip)
        self.image_label = QLabel("", box)
        self.image_label.setStyleSheet(INFO_STYLE)
        self.image_label.setWordWrap(True)
        iv.addWidget(self.image_label)
        self.image_error = QLabel("", box)  # a file that could not be opened (the image is kept)
        self.image_error.setStyleSheet(ERROR_STYLE)
        self.image_error.setWordWrap(True)
        self.image_error.setVisible(False)
        iv.addWidget(self.image_error)
        return box

    def _noise_box(self) -> QGroupBox:
        box = QGroupBox("Noise", self)
        nh = QHBoxLayout(box)
        self.seed_spin = QSpinBox(box)
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.valueChanged.connect(self.request_frames)
        seed_lbl = QLabel("See&d:", box)
        seed_lbl.setBuddy(self.seed_spin)
        self.resample_btn = QPushButton("Resample &noise", box)
        self.resample_btn.setToolTip("Draw new noise (a new seed)")
        self.resample_btn.clicked.connect(self.resample_noise)
        nh.addWidget(seed_lbl)
        nh.addWidget(self.seed_spin, 1)
        nh.addWidget(self.resample_btn)
        return box

    def _views(self) -> QWidget:
        views, vg = laid_out(QGridLayout, self)
        t1 = QLabel("<b>Iterative</b>  q(x<sub>t</sub> | x<sub>t−1</sub>), applied t times", views)
        t2 = QLabel("<b>Closed form</b>  q(x<sub>t</sub> | x<sub>0</sub>)", views)
        self.iter_view = ImageGrid(views, columns=1, captions_visible=False)
        self.closed_view = ImageGrid(views, columns=1, captions_visible=False)
        for k, (title, view) in enumerate(((t1, self.iter_view), (t2, self.closed_view))):
            title.setAlignment(Qt.AlignmentFlag.AlignHCenter)
            vg.addWidget(title, 0, k)
            view.setMinimumSize(160, 160)
            vg.addWidget(view, 1, k)
        vg.setRowStretch(1, 1)
        self.player = FramePlayer(self, fps=15)
        self.player.set_loop(False)
        self.player.set_label_func(self._frame_label)
        self.player.frameChanged.connect(self._show_frame)
        self.player.install_shortcuts(views)
        self.frame_label = QLabel("", self)
        self.frame_label.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.frame_label.setTextFormat(Qt.TextFormat.RichText)
        return views

    def _strip_row(self) -> QWidget:
        strip_box, sh = laid_out(QHBoxLayout, self)
        sl = QLabel("top: iterative\nbottom: closed form", strip_box)
        sl.setStyleSheet(INFO_STYLE)
        self.steps_strip = ImageGrid(strip_box, columns=STRIP_FRAMES)
        self.steps_strip.setFixedHeight(150)
        self.steps_strip.clicked.connect(self._on_steps_strip_clicked)
        self.steps_strip.setToolTip("6 evenly spaced steps; click one to jump there")
        sh.addWidget(sl)
        sh.addWidget(self.steps_strip, 1)
        return strip_box

    # ------------------------------------------------------------------ schedule
    def schedule(self):
        """The last valid schedule (what the plots and frames show)."""
        return self.schedule_editor.schedule()

    def set_schedule(self, cfg: ScheduleConfig | str) -> None:
        """Set the editor to a config or a preset name."""
        self.schedule_editor.set_schedule(cfg)

    def use_for_training(self) -> ScheduleConfig:
        """Send the schedule shown (the last valid one) to the Train tab's next run."""
        cfg = self.schedule().config
        self.state.use_schedule_for_training(cfg)
        return cfg

    def warning_text(self) -> str:
        return self.schedule_editor.warning_text()

    def error_text(self) -> str:
        return self.schedule_editor.error_text()

    @Slot(object)
    def _on_schedule(self, sched) -> None:
        self.plots.show_schedule(sched)
        self.request_frames()

    # ------------------------------------------------------------------ image
    def image_size(self) -> int:
        d = self.state.data
        return int(d.images.shape[1]) if d is not None else int(self._image.shape[0])

    def clean_image(self) -> np.ndarray:
        return self._image

    def set_image(self, image: np.ndarray, source: str = "") -> None:
        """Use this (H, W, 3) uint8 image as x_0."""
        self._image = as_hw3_batch(image)[0]
        self._image_source = source
        h, w = self._image.shape[:2]
        self.image_label.setText(f"x₀: {source} ({w}×{h})" if source else f"x₀: {w}×{h}")
        self.image_error.setVisible(False)
        self.request_frames()

    @Slot(object)
    def _on_data_changed(self, data) -> None:
        n = len(data) if data is not None else 0
        self.index_spin.blockSignals(True)
        self.index_spin.setRange(0, max(n - 1, 0))
        self.index_spin.setValue(0)
        self.index_spin.blockSignals(False)
        self.index_spin.setEnabled(n > 0)
        self.random_btn.setEnabled(n > 0)
        if n:
            self._select_index(0)
        else:
            self.strip.clear()

    @staticmethod
    def _strip_start(i: int) -> int:
        return (i // STRIP_COLUMNS) * STRIP_COLUMNS

    def _select_index(self, i: int) -> None:
        d = self.state.data
        if d is None or not len(d):
            return
        i = max(0, min(int(i), len(d) - 1))
        if self.index_spin.value() != i:
            self.index_spin.blockSignals(True)
            self.index_spin.setValue(i)
            self.index_spin.blockSignals(False)
        start = self._strip_start(i)
        self.strip.set_images(d.images[start : start + STRIP_COLUMNS])
        label = ""
        if d.labels is not None:
            k = int(d.labels[i])
            label = d.class_names[k] if d.class_names and k < len(d.class_names) else f"class {k}"
        self.set_image(d.images[i], f"#{i} of {d.name}" + (f", {label}" if label else ""))

    @Slot(int)
    def _on_index_changed(self, i: int) -> None:
        self._select_index(i)

    @Slot(int)
    def _on_strip_clicked(self, k: int) -> None:
        self._select_index(self._strip_start(self.index_spin.value()) + k)

    @Slot()
    def pick_random(self) -> None:
        d = self.state.data
        if d is not None and len(d):
            self._select_index(int(self._rng.integers(len(d))))

    @Slot()
    def open_image_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an image", "", IMAGE_FILTER)
        if path:
            self.open_image(path)

    def open_image(self, path: str | Path) -> bool:
        """Use an image file as x_0 (centre-cropped and resized to the data's size). On failure the
        message is shown and the current image is kept."""
        try:
            img = load_image(path, self.image_size())
        except DDPMError as exc:
            self._refuse_image(str(exc))
            return False
        self.set_image(img, Path(path).name)
        return True

    def _refuse_image(self, message: str) -> None:
        self.state.show_status(message)
        self.image_error.setText(message)
        self.image_error.setVisible(True)

    def image_error_text(self) -> str:
        """The message of the last image file that could not be opened ("" after a good one)."""
        return self.image_error.text() if self.image_error.isVisibleTo(self) else ""

    def dragEnterEvent(self, event) -> None:  # Qt API
        accept_file_drags(event)

    def dropEvent(self, event) -> None:  # Qt API
        for path in dropped_paths(event):
            kind = drop_kind(path)
            if kind == "image" and self.open_image(path):
                event.acceptProposedAction()
                return
            if kind in ("folder", "run"):
                self._refuse_image(
                    f"{path.name} is a folder, not an image: open folders in the Data tab, "
                    "or drop an image file here."
                )
            elif kind == "checkpoint":
                self._refuse_image(
                    f"{path.name} is a model checkpoint, not an image: the Forward tab needs no model "
                    "(load checkpoints in the Sample or Denoise tab); drop an image file here."
                )

    # ------------------------------------------------------------------ frames
    @Slot()
    def resample_noise(self) -> None:
        self.seed_spin.setValue(int(self._rng.integers(0, 2**31 - 1)))

    @Slot()
    def request_frames(self, *_args) -> None:
        """Recompute the frames soon (debounced); a running computation is replaced."""
        self._generation += 1
        self._recompute_timer.start()

    def _start_job(self) -> None:
        if self._frames_slot.is_busy():
            self._pending = True
            self._frames_slot.stop()
            return
        self._pending = False
        gen = self._generation
        image, sched, seed = self._image.copy(), self.schedule(), self.seed_spin.value()
        stop = threading.Event()
        self._frames_slot.start(lambda: _frames_job(image, sched, seed, gen, stop), on_stop=stop.set)

    def _on_frames(self, item: tuple[int, ForwardFrames]) -> None:
        generation, frames = item
        if generation != self._generation:
            return  # superseded by a newer edit
        keep_t = (
            int(self._frames.ts[self.player.current()])
            if self._frames is not None and self.player.count()
            else 0
        )
        self._frames = frames
        n = len(frames.ts)
        self.player.set_count(n)
        i = int(np.searchsorted(frames.ts, min(keep_t, int(frames.ts[-1]))))
        self.player.set_current(min(i, n - 1))
        self._show_frame(self.player.current())
        self._update_steps_strip()
        self._update_buttons()
        self.framesReady.emit()

    def _on_job_failed(self, message: str) -> None:
        self.messages.error(message)

    def _on_job_done(self) -> None:
        if self._pending:
            self._start_job()

    def _update_steps_strip(self) -> None:
        f = self._frames
        picks = np.unique(np.linspace(0, len(f.ts) - 1, STRIP_FRAMES).round().astype(int))
        self._strip_picks = picks
        caps = [f"t={int(f.ts[i])}" for i in picks] * 2
        self.steps_strip.set_images(self._strip_images(f, picks), caps, columns=len(picks))

    @staticmethod
    def _strip_images(f: ForwardFrames, picks: np.ndarray) -> np.ndarray:
        return np.concatenate([f.iterative[picks], f.closed[picks]])

    @Slot(int)
    def _on_steps_strip_clicked(self, k: int) -> None:
        picks = self._strip_picks
        if len(picks):
            self.player.set_current(int(picks[k % len(picks)]))

    def _alpha_bar(self, t: int) -> float:
        """ᾱ at step t (1-based: step t uses alpha_bars[t - 1]; step 0 is the clean image)."""
        return 1.0 if t == 0 else float(self.schedule().alpha_bars[t - 1])

    def _frame_label(self, i: int, n: int) -> str:
        if self._frames is None or not 0 <= i < len(self._frames.ts):
            return ""
        return f"step {int(self._frames.ts[i])} / {self.schedule().T}"

    @Slot(int)
    def _show_frame(self, i: int) -> None:
        f = self._frames
        if f is None or not 0 <= i < len(f.ts):
            return
        self.iter_view.set_images(f.iterative[i : i + 1])
        self.closed_view.set_images(f.closed[i : i + 1])
        t = int(f.ts[i])
        ab = self._alpha_bar(t)
        self.plots.mark(t)
        if t == 0:
            self.frame_label.setText("step 0: the clean image x<sub>0</sub>")
        else:
            self.frame_label.setText(
                f"step {t} / {self.schedule().T} &nbsp;·&nbsp; ᾱ<sub>t</sub> = {ab:.4f} &nbsp;·&nbsp; "
                f"x<sub>t</sub> = {math.sqrt(ab):.2f}·x<sub>0</sub> + {math.sqrt(1 - ab):.2f}·ε "
                f"&nbsp;(signal {ab:.0%} / noise {1 - ab:.0%} of the variance)"
            )

    # ------------------------------------------------------------------ export
    def _update_buttons(self, *_args) -> None:
        ready = self._frames is not None and not self.exporter.is_busy()
        self.png_btn.setEnabled(ready)
        self.anim_btn.setEnabled(ready)

    def is_exporting(self) -> bool:
        return self.exporter.is_busy()

    def save_png_strip(self, path: str | Path | None = None) -> Path | None:
        """The six-step strip (iterative above, closed form below) as one PNG, written in a worker.
        Returns the path being written, or None (no frames yet, an export running, dialog cancelled)."""
        f, picks = self._frames, self._strip_picks
        if f is None or not len(picks):
            return None
        return self.exporter.save_png(
            path, EXPORT_TITLE, "forward.png", lambda: _tiled(self._strip_images(f, picks), len(picks))
        )

    def save_animation(self, path: str | Path | None = None, fps: int | None = None) -> Path | None:
        """Both processes side by side (iterative left), step 0 to T, as an animated GIF or WebP (by the
        suffix), written in a worker: every step, or MAX_ANIMATION_FRAMES evenly spaced ones. Returns as
        save_png_strip does."""
        f = self._frames
        if f is None:
            return None
        return self.exporter.save_animation(
            path,
            EXPORT_TITLE,
            "forward.gif",
            animation_picks(len(f.ts)),
            lambda i: _tiled(np.stack([f.iterative[i], f.closed[i]]), 2),
            fps or self.player.fps(),
        )

    # ------------------------------------------------------------------ for tests and the window
    def frame_count(self) -> int:
        return 0 if self._frames is None else len(self._frames.ts)

    def frames(self) -> ForwardFrames | None:
        return self._frames

    def is_busy(self) -> bool:
        return any(s.is_busy() for s in self.findChildren(JobSlot))

    def shutdown(self, timeout_ms: int = 60000) -> None:
        """Stop computing frames and exporting, and wait for the threads; nothing new starts afterwards."""
        self._recompute_timer.stop()
        self._pending = False
        shutdown_jobs(self, timeout_ms)
