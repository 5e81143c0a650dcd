"""Forward process panel: watch an image dissolve into noise, step by step and in closed form.

The tutorial's second and third steps side by side, driven by one frame player:
- left, the iterative process q(x_t | x_(t-1)) applied t times (`core.diffusion.q_step`);
- right, the closed form q(x_t | x_0) with the same x_0 (`core.diffusion.q_sample`), one noise draw
  for all t so the animation is smooth.
Above them, the schedule editor and plots of beta_t, alpha_bar_t and SNR(t) = alpha_bar / (1 - alpha_bar)
update as you type; a warning says when x_T still holds a visible part of x_0 (the tutorial's schedule
ends at alpha_bar_T = 0.131: 36% of the image is left while sampling starts from pure noise).

Frames are computed by `engine.forward.forward_frames` in a Job (T up to 10,000 and images up to the
data's size), debounced while you edit; a newer request replaces an older one. Image files (Open, or
dropped on the panel) go through the app's one image loader, `data.imageio.load_image`.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
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

from ddpm_gui.core.schedule import SCHEDULE_KINDS, SCHEDULE_PRESETS, NoiseSchedule, ScheduleConfig
from ddpm_gui.data.imageio import load_image
from ddpm_gui.engine.forward import ForwardFrames, forward_frames
from ddpm_gui.errors import ConfigError, DDPMError
from ddpm_gui.qt.imageview import FramePlayer, ImageGrid, as_hw3_batch
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import ERROR_STYLE, INFO_STYLE, PLOT_PENS, WARNING_STYLE, plot_colors
from ddpm_gui.qt.workers import Job, refuse_new_jobs

WARN_SIGNAL = 0.05  # warn when sqrt(alpha_bar_T) is above this: x_T is visibly not pure noise
STRIP_FRAMES = 6  # the tutorial's figure: 6 evenly spaced steps
CUSTOM = "(custom)"
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.webp *.tif *.tiff);;All files (*)"


def schedule_warning(summary: dict) -> str:
    """The warning for a schedule whose x_T still holds part of x_0 ("" when it ends in noise)."""
    signal = summary["signal_left_at_T"]
    if signal <= WARN_SIGNAL:
        return ""
    return (
        f"x_T still holds {signal:.0%} of the image (alpha_bar_T = {summary['alpha_bar_T']:.3f}): sampling "
        "starts from pure noise, which the model never saw at t=T. Try the cosine schedule or zero-terminal SNR."
    )


def _frames_job(image: np.ndarray, sched: NoiseSchedule, seed: int, generation: int, stop: threading.Event):
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

    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self._sched = NoiseSchedule(SCHEDULE_PRESETS["tutorial"])
        self._image = _fallback_image(32)
        self._image_source = "built-in example"
        self._frames: ForwardFrames | None = None
        self._generation = 0
        self._job: Job | None = None
        self._job_stop: threading.Event | None = None
        self._pending = False
        self._shut_down = False
        self._rng = np.random.default_rng()
        self._strip_picks = np.zeros(0, int)
        self.setAcceptDrops(True)

        self._recompute_timer = QTimer(self)
        self._recompute_timer.setSingleShot(True)
        self._recompute_timer.setInterval(30)
        self._recompute_timer.timeout.connect(self._start_job)

        self._build_ui()
        self._set_controls(SCHEDULE_PRESETS["tutorial"])
        self._apply_schedule()
        self.state.dataChanged.connect(self._on_data_changed)
        if state.data is not None:
            self._on_data_changed(state.data)
        else:
            self.request_frames()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        # --- image picker
        img_box = QGroupBox("Image", self)
        iv = QVBoxLayout(img_box)
        row = QHBoxLayout()
        self.index_spin = QSpinBox(img_box)
        self.index_spin.setRange(0, 0)
        self.index_spin.setToolTip("Index of the image in the current dataset")
        self.index_spin.valueChanged.connect(self._on_index_changed)
        idx_lbl = QLabel("&Index:", img_box)
        idx_lbl.setBuddy(self.index_spin)
        self.random_btn = QPushButton("&Random", img_box)
        self.random_btn.clicked.connect(self.pick_random)
        self.open_btn = QPushButton("&Open image…", img_box)
        self.open_btn.setToolTip("Open an image file (or drop one on this panel)")
        self.open_btn.clicked.connect(self.open_image_dialog)
        row.addWidget(idx_lbl)
        row.addWidget(self.index_spin, 1)
        row.addWidget(self.random_btn)
        row.addWidget(self.open_btn)
        iv.addLayout(row)
        self.strip = ImageGrid(img_box, columns=8, captions_visible=False)
        self.strip.setFixedHeight(48)
        self.strip.setToolTip("Click an image to noise it")
        self.strip.clicked.connect(self._on_strip_clicked)
        iv.addWidget(self.strip)
        self.image_label = QLabel("", img_box)
        self.image_label.setStyleSheet(INFO_STYLE)
        self.image_label.setWordWrap(True)
        iv.addWidget(self.image_label)
        self.image_error = QLabel("", img_box)  # a file that could not be opened (the image is kept)
        self.image_error.setStyleSheet(ERROR_STYLE)
        self.image_error.setWordWrap(True)
        self.image_error.setVisible(False)
        iv.addWidget(self.image_error)

        # --- schedule editor
        sch_box = QGroupBox("Noise schedule", self)
        form = QFormLayout(sch_box)
        self.preset_combo = QComboBox(sch_box)
        for name in SCHEDULE_PRESETS:
            self.preset_combo.addItem(name, name)
        self.preset_combo.addItem(CUSTOM, CUSTOM)
        self.preset_combo.setToolTip(
            "tutorial: linear 1e-4..0.04, T=100 (the article)\nddpm-paper: linear 1e-4..0.02, T=1000\n"
            "cosine: Nichol & Dhariwal 2021\ntutorial-zero-snr: the tutorial's, rescaled so x_T is pure noise"
        )
        self.preset_combo.activated.connect(self._on_preset)
        self._add_row(form, "&Preset:", self.preset_combo)
        self.kind_combo = QComboBox(sch_box)
        self.kind_combo.addItems(list(SCHEDULE_KINDS))
        self.kind_combo.currentIndexChanged.connect(self._on_edit)
        self._add_row(form, "&Kind:", self.kind_combo)
        self.T_spin = QSpinBox(sch_box)
        self.T_spin.setRange(1, 10000)
        self.T_spin.setKeyboardTracking(False)
        self.T_spin.setToolTip("Number of diffusion steps (tutorial: 100, DDPM paper: 1000)")
        self.T_spin.valueChanged.connect(self._on_edit)
        self._add_row(form, "&T (steps):", self.T_spin)
        self.beta_start_spin = self._beta_spin(sch_box)
        self._add_row(form, "beta_&start:", self.beta_start_spin)
        self.beta_end_spin = self._beta_spin(sch_box)
        self._add_row(form, "beta_&end:", self.beta_end_spin)
        self.zero_snr_check = QCheckBox("&Zero terminal SNR (rescale so x_T is pure noise)", sch_box)
        self.zero_snr_check.toggled.connect(self._on_edit)
        form.addRow(self.zero_snr_check)
        self.summary_label = QLabel("", sch_box)
        self.summary_label.setStyleSheet(INFO_STYLE)
        self.summary_label.setWordWrap(True)
        form.addRow(self.summary_label)
        self.error_label = QLabel("", self)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setWordWrap(True)
        self.error_label.setVisible(False)
        self.warning_label = QLabel("", self)
        self.warning_label.setStyleSheet(WARNING_STYLE)
        self.warning_label.setWordWrap(True)
        self.warning_label.setVisible(False)

        # --- noise
        noise_box = QGroupBox("Noise", self)
        nh = QHBoxLayout(noise_box)
        self.seed_spin = QSpinBox(noise_box)
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.valueChanged.connect(self.request_frames)
        seed_lbl = QLabel("See&d:", noise_box)
        seed_lbl.setBuddy(self.seed_spin)
        self.resample_btn = QPushButton("Resample &noise", noise_box)
        self.resample_btn.setToolTip("Draw new noise (a new seed)")
        self.resample_btn.clicked.connect(self.resample_noise)
        nh.addWidget(seed_lbl)
        nh.addWidget(self.seed_spin, 1)
        nh.addWidget(self.resample_btn)

        left = QWidget(self)
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(img_box)
        lv.addWidget(sch_box)
        lv.addWidget(self.error_label)
        lv.addWidget(self.warning_label)
        lv.addWidget(noise_box)
        lv.addStretch(1)
        left.setFixedWidth(360)

        # --- plots
        bg, fg = plot_colors()
        self.plots = pg.GraphicsLayoutWidget(self)
        self.plots.setBackground(bg)
        self.plots.setMinimumHeight(170)
        self.plots.setMaximumHeight(230)
        self.plots.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.markers: list[pg.InfiniteLine] = []
        for col, (key, title, log) in enumerate(
            (
                ("beta", "β_t", False),
                ("alpha_bar", "ᾱ_t (signal² left)", False),
                ("snr", "SNR(t) = ᾱ/(1−ᾱ)", True),
            )
        ):
            p = self.plots.addPlot(row=0, col=col, title=title)
            p.showGrid(x=True, y=True, alpha=0.2)
            p.setLabel("bottom", "t")
            p.setLogMode(y=log)
            p.setMouseEnabled(x=False, y=False)
            p.hideButtons()
            p.setMenuEnabled(False)
            self.curves[key] = p.plot(pen=pg.mkPen(PLOT_PENS[col], width=2), connect="finite")
            line = pg.InfiniteLine(
                angle=90, movable=False, pen=pg.mkPen(fg, width=1, style=Qt.PenStyle.DashLine)
            )
            p.addItem(line)
            self.markers.append(line)

        # --- the two processes
        views = QWidget(self)
        vg = QGridLayout(views)
        vg.setContentsMargins(0, 0, 0, 0)
        t1 = QLabel("<b>Iterative</b>  q(x<sub>t</sub> | x<sub>t−1</sub>), applied t times", views)
        t2 = QLabel("<b>Closed form</b>  q(x<sub>t</sub> | x<sub>0</sub>)", views)
        for k, t in enumerate((t1, t2)):
            t.setAlignment(Qt.AlignmentFlag.AlignHCenter)
            vg.addWidget(t, 0, k)
        self.iter_view = ImageGrid(views, columns=1, captions_visible=False)
        self.closed_view = ImageGrid(views, columns=1, captions_visible=False)
        for k, v in enumerate((self.iter_view, self.closed_view)):
            v.setMinimumSize(160, 160)
            vg.addWidget(v, 1, k)
        vg.setRowStretch(1, 1)
        self.player = FramePlayer(self, fps=15)
        self.player.set_loop(False)
        self.player.set_label_func(self._frame_label)
        self.player.frameChanged.connect(self._show_frame)
        self.player.install_shortcuts(views)
        self.frame_label = QLabel("", self)
        self.frame_label.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.frame_label.setTextFormat(Qt.TextFormat.RichText)

        strip_box = QWidget(self)
        sh = QHBoxLayout(strip_box)
        sh.setContentsMargins(0, 0, 0, 0)
        sl = QLabel("top: iterative\nbottom: closed form", strip_box)
        sl.setStyleSheet(INFO_STYLE)
        self.steps_strip = ImageGrid(strip_box, columns=STRIP_FRAMES)
        self.steps_strip.setFixedHeight(150)
        self.steps_strip.clicked.connect(self._on_steps_strip_clicked)
        self.steps_strip.setToolTip("6 evenly spaced steps; click one to jump there")
        sh.addWidget(sl)
        sh.addWidget(self.steps_strip, 1)

        right = QWidget(self)
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(self.plots)
        rv.addWidget(views, 1)
        rv.addWidget(self.frame_label)
        rv.addWidget(self.player)
        rv.addWidget(strip_box)
        right.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

        lay = QHBoxLayout(self)
        lay.addWidget(left)
        lay.addWidget(right, 1)

    @staticmethod
    def _add_row(form: QFormLayout, text: str, w: QWidget) -> None:
        lbl = QLabel(text, w.parentWidget())
        lbl.setBuddy(w)
        form.addRow(lbl, w)

    def _beta_spin(self, parent: QWidget) -> QDoubleSpinBox:
        s = QDoubleSpinBox(parent)
        s.setDecimals(6)
        s.setRange(0.0, 1.0)
        s.setStepType(QDoubleSpinBox.StepType.AdaptiveDecimalStepType)
        s.setKeyboardTracking(False)
        s.valueChanged.connect(self._on_edit)
        return s

    # ------------------------------------------------------------------ schedule
    def schedule(self) -> NoiseSchedule:
        """The last valid schedule (what the plots and frames show)."""
        return self._sched

    def config_from_controls(self) -> ScheduleConfig:
        return ScheduleConfig(
            kind=self.kind_combo.currentText(),
            T=int(self.T_spin.value()),
            beta_start=float(self.beta_start_spin.value()),
            beta_end=float(self.beta_end_spin.value()),
            rescale_zero_snr=self.zero_snr_check.isChecked(),
        )

    def set_schedule(self, cfg: ScheduleConfig | str) -> None:
        """Set the editor to a config or a preset name."""
        if isinstance(cfg, str):
            cfg = SCHEDULE_PRESETS[cfg]
        self._set_controls(cfg)
        self._apply_schedule()

    def _set_controls(self, cfg: ScheduleConfig) -> None:
        widgets = (
            self.kind_combo,
            self.T_spin,
            self.beta_start_spin,
            self.beta_end_spin,
            self.zero_snr_check,
        )
        for w in widgets:
            w.blockSignals(True)
        self.kind_combo.setCurrentText(cfg.kind)
        self.T_spin.setValue(cfg.T)
        self.beta_start_spin.setValue(cfg.beta_start)
        self.beta_end_spin.setValue(cfg.beta_end)
        self.zero_snr_check.setChecked(cfg.rescale_zero_snr)
        for w in widgets:
            w.blockSignals(False)

    @Slot()
    def _on_preset(self, *_args) -> None:
        name = self.preset_combo.currentData()
        if name in SCHEDULE_PRESETS:
            self.set_schedule(name)

    @Slot()
    def _on_edit(self, *_args) -> None:
        self._apply_schedule()

    def _apply_schedule(self) -> None:
        cfg = self.config_from_controls()
        linear = cfg.kind in ("linear", "quadratic")
        self.beta_start_spin.setEnabled(linear)
        self.beta_end_spin.setEnabled(linear)
        try:
            sched = NoiseSchedule(cfg)
        except ConfigError as exc:
            self.error_label.setText(f"{exc} Showing the last valid schedule (T = {self._sched.T}).")
            self.error_label.setVisible(True)
            return
        self.error_label.setVisible(False)
        self._sched = sched
        match = next((n for n, p in SCHEDULE_PRESETS.items() if p == sched.config), CUSTOM)
        self.preset_combo.setCurrentIndex(self.preset_combo.findData(match))
        self._update_plots()
        summary = sched.summary()
        warning = schedule_warning(summary)
        self.warning_label.setText(warning)
        self.warning_label.setVisible(bool(warning))
        self.summary_label.setText(
            f"β from {summary['beta_min']:.2g} to {summary['beta_max']:.3g}; ᾱ at T/2 = {summary['alpha_bar_mid']:.3f}, "
            f"at T = {summary['alpha_bar_T']:.3g} (x_T keeps {summary['signal_left_at_T']:.0%} of x_0)"
        )
        self.request_frames()

    def _update_plots(self) -> None:
        s = self._sched
        t = np.arange(1, s.T + 1, dtype=np.float64)
        snr = s.snr.double().cpu().numpy().copy()
        snr[~np.isfinite(snr) | (snr <= 0)] = np.nan  # log axis: alpha_bar_T = 0 has no SNR to draw
        self.curves["beta"].setData(t, s.betas.double().cpu().numpy())
        self.curves["alpha_bar"].setData(t, s.alpha_bars.double().cpu().numpy())
        self.curves["snr"].setData(t, snr)

    def warning_text(self) -> str:
        return self.warning_label.text() if self.warning_label.isVisibleTo(self) else ""

    def error_text(self) -> str:
        return self.error_label.text() if self.error_label.isVisibleTo(self) else ""

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

    def _strip_start(self, i: int) -> int:
        cols = 8
        return (i // cols) * cols

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
        self.strip.set_images(d.images[start : start + 8])
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
            self.state.show_status(str(exc))
            self.image_error.setText(str(exc))
            self.image_error.setVisible(True)
            return False
        self.set_image(img, Path(path).name)
        return True

    def image_error_text(self) -> str:
        """The message of the last image file that could not be opened ("" after a good one)."""
        return self.image_error.text() if self.image_error.isVisibleTo(self) else ""

    def dragEnterEvent(self, event) -> None:  # Qt API
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # Qt API
        for url in event.mimeData().urls():
            if url.isLocalFile() and self.open_image(url.toLocalFile()):
                event.acceptProposedAction()
                return

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
        if self._shut_down:
            return
        if self._job is not None:
            self._pending = True
            self._job.request_stop()
            return
        self._pending = False
        gen = self._generation
        image, sched, seed = self._image.copy(), self._sched, self.seed_spin.value()
        stop = threading.Event()
        self._job_stop = stop
        self._job = Job(lambda: _frames_job(image, sched, seed, gen, stop), parent=self, on_stop=stop.set)
        self._job.event.connect(self._on_frames)
        self._job.failed.connect(self._on_job_failed)
        self._job.done.connect(self._on_job_done)
        self._job.start()

    @Slot(object)
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
        self.framesReady.emit()

    @Slot(str)
    def _on_job_failed(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(True)

    @Slot()
    def _on_job_done(self) -> None:
        self._job = None
        if self._pending:
            self._start_job()

    def _update_steps_strip(self) -> None:
        f = self._frames
        picks = np.unique(np.linspace(0, len(f.ts) - 1, STRIP_FRAMES).round().astype(int))
        self._strip_picks = picks
        imgs = np.concatenate([f.iterative[picks], f.closed[picks]])
        caps = [f"t={int(f.ts[i])}" for i in picks] * 2
        self.steps_strip.set_images(imgs, caps, columns=len(picks))

    @Slot(int)
    def _on_steps_strip_clicked(self, k: int) -> None:
        picks = self._strip_picks
        if len(picks):
            self.player.set_current(int(picks[k % len(picks)]))

    def _alpha_bar(self, t: int) -> float:
        return 1.0 if t == 0 else float(self._sched.alpha_bars[t - 1])

    def _frame_label(self, i: int, n: int) -> str:
        if self._frames is None or not 0 <= i < len(self._frames.ts):
            return ""
        return f"step {int(self._frames.ts[i])} / {self._sched.T}"

    @Slot(int)
    def _show_frame(self, i: int) -> None:
        f = self._frames
        if f is None or not 0 <= i < len(f.ts):
            return
        self.iter_view.set_images(f.iterative[i : i + 1])
        self.closed_view.set_images(f.closed[i : i + 1])
        t = int(f.ts[i])
        ab = self._alpha_bar(t)
        for m in self.markers:
            m.setPos(max(t, 1))
            m.setVisible(t > 0)
        if t == 0:
            self.frame_label.setText("step 0: the clean image x<sub>0</sub>")
        else:
            self.frame_label.setText(
                f"step {t} / {self._sched.T} &nbsp;·&nbsp; ᾱ<sub>t</sub> = {ab:.4f} &nbsp;·&nbsp; "
                f"x<sub>t</sub> = {math.sqrt(ab):.2f}·x<sub>0</sub> + {math.sqrt(1 - ab):.2f}·ε "
                f"&nbsp;(signal {ab:.0%} / noise {1 - ab:.0%} of the variance)"
            )

    # ------------------------------------------------------------------ for tests and the window
    def frame_count(self) -> int:
        return 0 if self._frames is None else len(self._frames.ts)

    def frames(self) -> ForwardFrames | None:
        return self._frames

    def is_busy(self) -> bool:
        return self._job is not None

    def shutdown(self, timeout_ms: int = 60000) -> None:
        """Stop computing frames and wait for the thread; nothing new starts afterwards."""
        refuse_new_jobs(self)
        self._shut_down = True
        self._recompute_timer.stop()
        self._pending = False
        if self._job is not None:
            self._job.request_stop()
            self._job.wait(timeout_ms)
