"""The 2D tab: diffusion you can see whole. The data are points in the plane (two moons, a swiss roll, a
mixture of Gaussians, or points drawn with the mouse), the model a small MLP that trains in seconds on a CPU
(engine/toy2d.py), and one scatter plot shows it all:

- Forward process: the player's slider is the step t; the cloud dissolves into noise by q(x_t | x_0), one
  noise draw for every t;
- Reverse process: particles drawn from N(0, I) are brought back by the trained model with the chosen
  sampler, frame by frame (sampling starts by itself when training ends);
- arrows on a grid: the model's denoising direction at the t shown (predicted x_0 - x_t, or the score
  -eps / sqrt(1 - alpha_bar)), scaled so the longest one spans a grid cell;
- the loss, live while training.

Training, sampling and the arrows run in workers (qt/workers.py); the GUI thread only draws.
"""

from __future__ import annotations

import threading

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.core.spec import PREDICTIONS, SAMPLERS
from ddpm_gui.data.points2d import DATASETS, DRAWN, GENERATORS, check_drawn, load_points
from ddpm_gui.engine.toy2d import (
    FIELD_KINDS,
    FIELD_LIMIT,
    Toy2DConfig,
    Toy2DFinished,
    Toy2DProgress,
    Toy2DTrainer,
    denoise_field,
    diffuse,
    merge_progress,
    reverse_chain,
    sliced_wasserstein,
    start_noise,
)
from ddpm_gui.errors import DDPMError
from ddpm_gui.qt.lossplot import LossPlot
from ddpm_gui.qt.mnemonics import WINDOW_KEYS, assign_mnemonics
from ddpm_gui.qt.player import FramePlayer
from ddpm_gui.qt.schedule_view import ScheduleEditor
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import INFO_STYLE, PLOT_PENS, plot_colors
from ddpm_gui.qt.widgets import Messages, button, laid_out, side_column
from ddpm_gui.qt.workers import JobSlot, shutdown_jobs

# Tests set this to False: errors are then shown in the panel only, never in a modal dialog.
SHOW_DIALOGS = True

VIEW_LIMIT = 1.6  # the plot shows [-VIEW_LIMIT, VIEW_LIMIT] on both axes: the data, and x_T's bulk
FIELD_GRID = 21  # arrows per side
VARIANCES = {"ddpm": ("beta", "posterior")}  # DDPM's two sigma^2 (core.diffusion.VARIANCES), one row each
FIELD_TEXTS = {"x0": "predicted x₀ − x_t", "score": "score −ε / √(1 − ᾱ_t)"}
# the rows' and buttons' texts; their Alt+letters are assigned once, apart from the window's, the schedule
# editor's and the loss plot's
_TEXTS = ("Data:", "Points:", "Seed:", "Clear drawn points", "Training steps:", "Batch size:", "Learning rate:",
          "Prediction:", "Train", "Stop", "Sampler:", "Sampler steps:", "Particles:", "Sample", "Arrows:",
          "Show arrows", "Forward process", "Reverse process")  # fmt: skip
_TAKEN = WINDOW_KEYS | {"p", "k", "t", "s", "e", "z", "y"}
TEXTS = dict(zip(_TEXTS, assign_mnemonics(_TEXTS, _TAKEN), strict=True))


def _dialogs() -> bool:
    return SHOW_DIALOGS


def sampler_rows() -> list[tuple[str, str, str, str]]:
    """(label, sampler name, variance, help) for every sampler core.spec.SAMPLERS lists, DDPM once per
    variance."""
    rows = []
    for name, spec in SAMPLERS.items():
        for variance in VARIANCES.get(name, ("beta",)):
            label = f"{name.upper()}, σ² = {variance}" if name in VARIANCES else name.upper()
            rows.append((label, name, variance, spec.help))
    return rows


def arrow_lines(xy: np.ndarray, d: np.ndarray, cell: float) -> np.ndarray:
    """Line segments (pairs of points, for connect="pairs") drawing arrows from xy along d, scaled so the
    longest is `cell` long, each with a two-stroke head."""
    n = np.linalg.norm(d, axis=1, keepdims=True)
    d = d * (cell / max(float(n.max()), 1e-12)) if len(d) else d
    tip = xy + d
    back = -d * 0.3
    c, s = np.cos(0.45), np.sin(0.45)
    left = np.stack([back[:, 0] * c - back[:, 1] * s, back[:, 0] * s + back[:, 1] * c], 1)
    right = np.stack([back[:, 0] * c + back[:, 1] * s, -back[:, 0] * s + back[:, 1] * c], 1)
    segs = np.stack([xy, tip, tip, tip + left, tip, tip + right], 1)  # (n, 6, 2): three segments an arrow
    return segs.reshape(-1, 2)


class DrawViewBox(pg.ViewBox):
    """A fixed view that turns left clicks and drags into points while `drawing` is on."""

    pointsDrawn = Signal(object)  # (m, 2) array in data coordinates

    def __init__(self):
        super().__init__(enableMenu=False)
        self.drawing = False
        self.setMouseEnabled(x=False, y=False)

    def mouseClickEvent(self, ev) -> None:  # pyqtgraph API
        if self.drawing and ev.button() == Qt.MouseButton.LeftButton:
            ev.accept()
            p = self.mapSceneToView(ev.scenePos())
            self.pointsDrawn.emit(np.array([[p.x(), p.y()]], np.float32))
        else:
            super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev, axis=None) -> None:  # pyqtgraph API: a stroke leaves a trail of points
        if not (self.drawing and ev.button() == Qt.MouseButton.LeftButton):
            ev.ignore()
            return
        ev.accept()
        a, b = self.mapSceneToView(ev.lastScenePos()), self.mapSceneToView(ev.scenePos())
        k = max(2, int(np.hypot(b.x() - a.x(), b.y() - a.y()) / 0.03) + 1)  # about a point every 0.03
        pts = np.linspace([a.x(), a.y()], [b.x(), b.y()], k, dtype=np.float32)[1:]
        self.pointsDrawn.emit(pts)


def _chain_job(model, kwargs: dict, stop: threading.Event):
    """Worker: the reverse process (None when stopped)."""
    chain = reverse_chain(model, stop=stop, **kwargs)
    if chain is not None:
        yield chain


def _field_job(model, t: int, kind: str, generation: int):
    """Worker: the arrows at timestep t."""
    yield generation, denoise_field(model, t, kind, FIELD_GRID)


class Toy2DPanel(QWidget):
    """Train a 2D diffusion model and watch the forward process, the reverse process and the learned field."""

    trained = Signal()  # training ended (tests wait for it)
    sampled = Signal()  # a reverse process is ready to play
    fieldShown = Signal()  # arrows were drawn

    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.model = None  # the newest Toy2DModel (a snapshot while training)
        self.chain = None  # the last reverse process (engine.toy2d.Chain)
        self.drawn = np.zeros((0, 2), np.float32)
        self.points = np.zeros((0, 2), np.float32)
        self.last_step = 0
        self.distance: float | None = None
        self._trainer: Toy2DTrainer | None = None
        self._sample_stop = threading.Event()
        self._field_generation = 0
        self._field_pending = False
        self.messages = Messages(state, _dialogs, self)
        self._train_slot = JobSlot(self, self._on_train_event, self._on_failed, self._on_train_done,
                                   error_title="Cannot train the 2D model", dialogs=_dialogs)  # fmt: skip
        self._sample_slot = JobSlot(self, self._on_chain, self._on_failed, self._update_buttons,
                                    error_title="Cannot sample", dialogs=_dialogs)  # fmt: skip
        self._field_slot = JobSlot(self, self._on_field, self._on_failed, self._on_field_done)
        for slot in (self._train_slot, self._sample_slot):
            slot.busyChanged.connect(self._update_buttons)
        self._field_timer = QTimer(self, singleShot=True, interval=30)
        self._field_timer.timeout.connect(self._start_field)
        self._build_ui()
        self._on_schedule(self.schedule_editor.schedule())
        self.schedule_editor.scheduleChanged.connect(self._on_schedule)
        self._load_data()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.schedule_editor = ScheduleEditor(self, preset="cosine")
        boxes = [
            self._data_box(),
            self.schedule_editor,
            self._train_box(),
            self._sample_box(),
        ]
        scroll = side_column([*boxes, self.messages], 340, 360)
        self.view = DrawViewBox()
        self.plot = pg.PlotWidget(viewBox=self.view, background=plot_colors()[0])
        self.plot.setMinimumSize(300, 300)
        self.view.setAspectLocked(True)
        self.view.setRange(xRange=(-VIEW_LIMIT, VIEW_LIMIT), yRange=(-VIEW_LIMIT, VIEW_LIMIT), padding=0)
        self.view.pointsDrawn.connect(self._add_drawn)
        self.data_item = pg.ScatterPlotItem(size=4, pen=None, brush=pg.mkBrush(150, 150, 150, 90))
        self.particles = pg.ScatterPlotItem(size=4, pen=None, brush=pg.mkBrush(PLOT_PENS[0]))
        self.arrows = pg.PlotCurveItem(pen=pg.mkPen(PLOT_PENS[1], width=1.2), connect="pairs")
        self.drawn_item = pg.ScatterPlotItem(size=7, pen=pg.mkPen("#1e1e1e"), brush=pg.mkBrush(PLOT_PENS[3]))
        for item in (self.data_item, self.arrows, self.particles, self.drawn_item):
            self.plot.addItem(item)
        self.loss_plot = LossPlot(self, title="Training loss (2D)")
        self.player = FramePlayer(self, fps=24)
        self.player.frameChanged.connect(self._show_frame)
        self.player.install_shortcuts(self)
        self.frame_label = QLabel("", self)
        self.frame_label.setStyleSheet(INFO_STYLE)
        top, tl = laid_out(QHBoxLayout)
        tl.addWidget(self.plot, 5)
        tl.addWidget(self.loss_plot, 3)
        right, rv = laid_out(QVBoxLayout)
        rv.addWidget(top, 1)
        rv.addWidget(self._view_row())
        rv.addWidget(self.frame_label)
        rv.addWidget(self.player)
        lay = QHBoxLayout(self)
        lay.addWidget(scroll)
        lay.addWidget(right, 1)
        self._update_buttons()

    @staticmethod
    def _row(form: QFormLayout, key: str, w: QWidget) -> QWidget:
        lbl = QLabel(TEXTS[key], w.parentWidget())
        lbl.setBuddy(w)
        form.addRow(lbl, w)
        return w

    @staticmethod
    def _spin(parent, lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
        s = QSpinBox(parent)
        s.setRange(lo, hi)
        s.setValue(value)
        s.setSingleStep(step)
        s.setKeyboardTracking(False)
        return s

    def _data_box(self) -> QGroupBox:
        cfg = Toy2DConfig()
        box = QGroupBox("Data", self)
        form = QFormLayout(box)
        self.data_combo = self._row(form, "Data:", QComboBox(box))
        for name in DATASETS:
            self.data_combo.addItem(name if name in GENERATORS else "drawn with the mouse", name)
        self.n_spin = self._row(form, "Points:", self._spin(box, 10, 100_000, cfg.n_points, 100))
        self.seed_spin = self._row(form, "Seed:", self._spin(box, 0, 2**31 - 1, cfg.seed))
        self.clear_btn = button(
            TEXTS["Clear drawn points"], self.clear_drawn, "Remove every drawn point", box
        )
        form.addRow(self.clear_btn)
        self.draw_hint = QLabel("Click or drag on the plot to draw points; training uses them.", box)
        self.draw_hint.setStyleSheet(INFO_STYLE)
        self.draw_hint.setWordWrap(True)
        form.addRow(self.draw_hint)
        self.data_combo.currentIndexChanged.connect(self._load_data)
        self.n_spin.valueChanged.connect(self._load_data)
        self.seed_spin.valueChanged.connect(self._load_data)
        return box

    def _train_box(self) -> QGroupBox:
        cfg = Toy2DConfig()
        box = QGroupBox("Model and training", self)
        form = QFormLayout(box)
        self.steps_spin = self._row(form, "Training steps:", self._spin(box, 1, 1_000_000, cfg.steps, 500))
        self.batch_spin = self._row(form, "Batch size:", self._spin(box, 1, 65536, cfg.batch_size, 64))
        self.lr_spin = self._row(form, "Learning rate:", QDoubleSpinBox(box))
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 0.5)
        self.lr_spin.setSingleStep(1e-3)
        self.lr_spin.setValue(cfg.lr)
        self.prediction_combo = self._row(form, "Prediction:", QComboBox(box))
        self.prediction_combo.addItems(list(PREDICTIONS))
        self.prediction_combo.setToolTip(
            "What the MLP predicts: the noise eps, or v (needed at zero terminal SNR)"
        )
        self.train_btn = button(TEXTS["Train"], self.start_training, "Train a new MLP on the points", box)
        self.stop_btn = button(TEXTS["Stop"], self.stop, "Stop training or sampling", box)
        self.train_info = QLabel("", box)
        self.train_info.setStyleSheet(INFO_STYLE)
        self.train_info.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.train_btn)
        row.addWidget(self.stop_btn)
        form.addRow(row)
        form.addRow(self.train_info)
        return box

    def _sample_box(self) -> QGroupBox:
        box = QGroupBox("Reverse process", self)
        form = QFormLayout(box)
        self.sampler_combo = self._row(form, "Sampler:", QComboBox(box))
        for label, name, variance, tip in sampler_rows():
            self.sampler_combo.addItem(label, (name, variance))
            self.sampler_combo.setItemData(self.sampler_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.sampler_steps_spin = self._row(form, "Sampler steps:", self._spin(box, 1, 10000, 50))
        self.sampler_steps_spin.setToolTip("Timesteps a strided sampler visits (DDIM and the like)")
        self.eta_spin = QDoubleSpinBox(box)
        self.eta_spin.setRange(0.0, 1.0)
        self.eta_spin.setSingleStep(0.1)
        form.addRow("eta:", self.eta_spin)
        self.particles_spin = self._row(form, "Particles:", self._spin(box, 1, 20000, 2000, 500))
        self.sample_btn = button(
            TEXTS["Sample"], self.sample, "Run the reverse process from fresh noise", box
        )
        self.distance_label = QLabel("", box)
        self.distance_label.setStyleSheet(INFO_STYLE)
        self.distance_label.setWordWrap(True)
        form.addRow(self.sample_btn)
        form.addRow(self.distance_label)
        self.sampler_combo.currentIndexChanged.connect(self._update_buttons)
        return box

    def _view_row(self) -> QWidget:
        """Under the plot: which process the player walks through, and the arrows."""
        row, lay = laid_out(QHBoxLayout)
        self.forward_radio = QRadioButton(TEXTS["Forward process"], row)
        self.reverse_radio = QRadioButton(TEXTS["Reverse process"], row)
        self.forward_radio.setChecked(True)
        self.field_combo = QComboBox(row)
        for kind in FIELD_KINDS:
            self.field_combo.addItem(FIELD_TEXTS[kind], kind)
        field_label = QLabel(TEXTS["Arrows:"], row)
        field_label.setBuddy(self.field_combo)
        self.arrows_check = QCheckBox(TEXTS["Show arrows"], row)
        self.arrows_check.setChecked(True)
        self.arrows_check.setToolTip("The model's denoising direction at the step shown, on a grid")
        for w in (self.forward_radio, self.reverse_radio):
            lay.addWidget(w)
        lay.addStretch(1)
        for w in (self.arrows_check, field_label, self.field_combo):
            lay.addWidget(w)
        self.forward_radio.toggled.connect(self._on_view_mode)
        self.field_combo.currentIndexChanged.connect(self._request_field)
        self.arrows_check.toggled.connect(self._request_field)
        return row

    # ------------------------------------------------------------------ data
    def dataset(self) -> str:
        return self.data_combo.currentData()

    def set_dataset(self, name: str) -> None:
        self.data_combo.setCurrentIndex(self.data_combo.findData(name))

    @Slot()
    def _load_data(self, *_args) -> None:
        """The cloud the controls describe (instant: a few thousand numpy points)."""
        drawing = self.dataset() == DRAWN
        self.view.drawing = drawing
        self.draw_hint.setVisible(drawing)
        self.clear_btn.setVisible(drawing)
        n, seed = self.n_spin.value(), self.seed_spin.value()
        if drawing and not len(self.drawn):
            self.points = np.zeros((0, 2), np.float32)
        else:
            self.points = load_points(self.dataset(), n, seed, drawn=self.drawn)
        self._noise = start_noise(len(self.points), seed + 1)
        self.data_item.setData(pos=self.points)
        self.drawn_item.setData(pos=self.drawn if drawing else np.zeros((0, 2)))
        self._update_buttons()
        self._show_frame(self.player.current())

    @Slot(object)
    def _add_drawn(self, pts: np.ndarray) -> None:
        inside = np.abs(pts).max(1) <= VIEW_LIMIT
        self.drawn = np.concatenate([self.drawn, pts[inside]]).astype(np.float32)
        self._load_data()

    def add_drawn_points(self, pts) -> None:
        """Add points as if drawn (the plot's coordinates)."""
        self._add_drawn(check_drawn(pts))

    def clear_drawn(self) -> None:
        self.drawn = np.zeros((0, 2), np.float32)
        self._load_data()

    # ------------------------------------------------------------------ training
    def config(self) -> Toy2DConfig:
        """The training settings the controls show."""
        return Toy2DConfig(
            data=self.dataset(), n_points=self.n_spin.value(), schedule=self.schedule_editor.schedule().config,
            prediction=self.prediction_combo.currentText(), steps=self.steps_spin.value(),
            batch_size=self.batch_spin.value(), lr=float(self.lr_spin.value()), seed=self.seed_spin.value(),
        )  # fmt: skip

    def start_training(self) -> bool:
        """Train a new model on the points shown; False when something runs or the settings are wrong."""
        if self.is_busy():
            return False
        self.messages.clear_error()
        try:
            if self.dataset() == DRAWN:
                check_drawn(self.drawn)
            trainer = Toy2DTrainer(self.config(), self.points)
        except DDPMError as exc:
            self.messages.error(str(exc))
            return False
        self._trainer = trainer
        self.loss_plot.clear()
        self.last_step = 0
        self.train_info.setText("Training…")
        self.state.show_status("2D: training started.", 5000)
        return self._train_slot.start(trainer.run, throttle_s=0.05, coalesce=merge_progress,
                                      on_stop=trainer.stop, close_on_stop=False)  # fmt: skip

    def _on_train_event(self, ev) -> None:
        if isinstance(ev, Toy2DProgress):
            self.loss_plot.append(ev.steps, ev.losses)
            self.last_step = ev.step
            rate = ev.step / max(ev.elapsed_s, 1e-9)
            self.train_info.setText(f"step {ev.step:,} / {ev.total_steps:,} · loss {ev.loss:.4f} · "
                                    f"{rate:,.0f} steps/s")  # fmt: skip
        elif isinstance(ev, Toy2DFinished):
            self.last_step = ev.step
            how = "stopped" if ev.stopped else "trained"
            self.train_info.setText(f"{how} at step {ev.step:,} in {ev.seconds:.1f} s "
                                    f"({ev.step / max(ev.seconds, 1e-9):,.0f} steps/s)")  # fmt: skip
        model = getattr(ev, "model", None)
        if model is not None:
            self.model = model
            self._request_field()

    def _on_train_done(self) -> None:
        self._trainer = None
        self.trained.emit()
        self._update_buttons()
        if self.model is not None and not self.messages.has_error():
            self.sample()  # the reverse process of what was just trained, ready to play

    # ------------------------------------------------------------------ sampling
    def sample(self) -> bool:
        """Run the reverse process of the current model; False when there is none or something runs."""
        if self.model is None or self._sample_slot.is_busy() or self._train_slot.is_busy():
            return False
        name, variance = self.sampler_combo.currentData()
        kwargs = dict(n=self.particles_spin.value(), sampler=name, variance=variance,
                      steps=self.sampler_steps_spin.value(), eta=float(self.eta_spin.value()), clip_x0=True,
                      seed=self.seed_spin.value())  # fmt: skip
        self._sample_stop = threading.Event()
        self.messages.status("Sampling…")
        model, stop = self.model, self._sample_stop
        return self._sample_slot.start(lambda: _chain_job(model, kwargs, stop), on_stop=stop.set)

    def _on_chain(self, chain) -> None:
        self.chain = chain
        self.distance = sliced_wasserstein(chain.xs[-1], self.points) if len(self.points) else None
        noise = sliced_wasserstein(chain.xs[0], self.points) if len(self.points) else None
        self.messages.status("")
        if self.distance is not None:
            self.distance_label.setText(f"Sliced W₁ distance of the particles to the data: {self.distance:.3f} "
                                        f"(x_T: {noise:.3f}; 0 is a perfect match)")  # fmt: skip
        self.reverse_radio.setChecked(True)
        self._on_view_mode()
        self.player.set_current(0)
        self.player.play()
        self.sampled.emit()

    # ------------------------------------------------------------------ what the plot shows
    def showing_reverse(self) -> bool:
        return self.reverse_radio.isChecked() and self.chain is not None

    def _on_schedule(self, sched) -> None:
        self.sched = sched.to("cpu")
        self.chain = None  # made with another schedule
        self.sampler_steps_spin.setMaximum(sched.T)
        self._on_view_mode()

    @Slot()
    def _on_view_mode(self, *_args) -> None:
        if self.showing_reverse():
            self.player.set_count(len(self.chain.xs))
            self.player.set_label_func(
                lambda i, n: f"reverse step {i} / {n - 1}", "reverse step 10000 / 10000"
            )
        else:
            self.player.pause()
            self.player.set_count(self.sched.T + 1)
            self.player.set_label_func(
                lambda i, n: f"forward step {i} / {n - 1}", "forward step 10000 / 10000"
            )
        self._show_frame(self.player.current())

    def current_t(self) -> int:
        """The 0-based timestep of the frame shown (-1: clean data)."""
        i = max(self.player.current(), 0)
        if self.showing_reverse():
            return int(self.chain.ts[min(i, len(self.chain.ts) - 1)])
        return min(i, self.sched.T) - 1

    @Slot(int)
    def _show_frame(self, i: int) -> None:
        i = max(i, 0)
        t = self.current_t()
        if self.showing_reverse():
            pts = self.chain.xs[min(i, len(self.chain.xs) - 1)]
            what = "x_0: the samples" if t < 0 else f"x_t at t = {t + 1}"
        else:
            pts = diffuse(self.points, t, self.sched, self._noise) if len(self.points) else self.points
            what = "x_0: the data" if t < 0 else f"x_t ~ q(x_t | x_0) at t = {t + 1}"
        self.particles.setData(pos=pts)
        ab = float(self.sched.alpha_bars[t]) if t >= 0 else 1.0
        self.frame_label.setText(f"{what} · ᾱ = {ab:.3f} (x_t keeps {ab**0.5:.0%} of x_0)")
        self._request_field()

    # ------------------------------------------------------------------ arrows
    @Slot()
    def _request_field(self, *_args) -> None:
        if self.model is None or not self.arrows_check.isChecked():
            self.arrows.setData([], [])
            return
        self._field_timer.start()

    @Slot()
    def _start_field(self) -> None:
        if self._field_slot.is_busy():
            self._field_pending = True  # drawn when the running one ends: the newest t wins
            return
        self._field_pending = False
        self._field_generation += 1
        model, t, kind, gen = (
            self.model,
            max(self.current_t(), 0),
            self.field_combo.currentData(),
            self._field_generation,
        )
        self._field_slot.start(lambda: _field_job(model, t, kind, gen))

    def _on_field(self, item) -> None:
        generation, (xy, d) = item
        if generation != self._field_generation or not self.arrows_check.isChecked():
            return
        cell = 2 * FIELD_LIMIT / (FIELD_GRID - 1)
        lines = arrow_lines(xy, d, cell * 0.9)
        self.arrows.setData(lines[:, 0], lines[:, 1])
        self.fieldShown.emit()

    def _on_field_done(self) -> None:
        if self._field_pending:
            self._field_timer.start()

    def arrow_count(self) -> int:
        """Arrows drawn now (tests)."""
        x, _y = self.arrows.getData()
        return 0 if x is None else len(x) // 6

    # ------------------------------------------------------------------ state
    def _on_failed(self, message: str) -> None:
        self.messages.status("")
        self.messages.error(message)  # the JobSlot shows the dialog

    @Slot()
    def _update_buttons(self, *_args) -> None:
        training, sampling = self._train_slot.is_busy(), self._sample_slot.is_busy()
        self.train_btn.setEnabled(not (training or sampling) and len(self.points) > 0)
        self.stop_btn.setEnabled(training or sampling)
        self.sample_btn.setEnabled(self.model is not None and not (training or sampling))
        name, _variance = self.sampler_combo.currentData()
        self.sampler_steps_spin.setEnabled(SAMPLERS[name].strided)
        self.eta_spin.setEnabled(SAMPLERS[name].takes_eta)

    def stop(self) -> None:
        self._train_slot.stop()
        self._sample_slot.stop()

    def is_busy(self) -> bool:
        """Training, sampling, or computing arrows (or about to: a request waits out its debounce)."""
        slots = (self._train_slot, self._sample_slot, self._field_slot)
        return any(s.is_busy() for s in slots) or self._field_timer.isActive()

    def shutdown(self, timeout_ms: int = 60000) -> None:
        self.player.pause()
        self._field_timer.stop()
        shutdown_jobs(self, timeout_ms)
