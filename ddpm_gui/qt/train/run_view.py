"""The Train tab's right side: progress, live figures, messages, loss curves, preview grid and log, and
the One step page (step_view.py) that shows a step made while paused.

It only shows what a run reports (`show_event`); what the events mean for the run's control (the
buttons, the current model, a quality check at each checkpoint) is the panel's business. Every line
says what is true now: the stats line follows the run (training, paused, resumed, stopping, ended) and
names the device and the CPU threads really used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QListWidget, QProgressBar, QSplitter, QTabWidget, QVBoxLayout, QWidget

from ddpm_gui.engine import events as ev
from ddpm_gui.engine.config import TrainConfig
from ddpm_gui.engine.device import usable_cpus
from ddpm_gui.engine.text import fmt_count, fmt_duration
from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.lossplot import LossPlot, TimestepLossPlot
from ddpm_gui.qt.style import ERROR_STYLE, INFO_STYLE, WARNING_STYLE
from ddpm_gui.qt.train.step_view import StepView

LOG_LIMIT = 300  # entries kept in the log list
NO_RUN = "No run yet."


@dataclass
class ThreadsUsed:
    """How many CPU threads torch uses in the training thread, read in that thread (torch keeps the
    count per thread: the GUI thread's own count says nothing about the trainer's)."""

    threads: int


def cpu_text(threads: int | None, auto: bool, cores: int) -> str:
    """The CPU as the stats line names it: "cpu (1 of 2 threads, auto)"."""
    if threads is None:
        return "cpu"
    how = ", auto" if auto else ""
    if threads > cores:
        return f"cpu ({threads} threads on {cores} core{'s' if cores != 1 else ''}{how})"
    return f"cpu ({threads} of {cores} thread{'s' if cores != 1 else ''}{how})"


class RunView(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._device = ""  # the run's device as the trainer names it ("cpu (2 threads)", "cuda:0 (...)")
        self._threads: int | None = None  # the CPU threads the trainer uses (ThreadsUsed, or its events)
        self._threads_auto = True
        self.started = False  # the run being shown has begun training (its Started event came)
        self._before_pause: str | None = None  # the stats line while a pause is asked for, not yet done
        self._val_at: dict[int, float] = {}  # step -> validation loss: a best checkpoint's loss to mark
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)  # no "step 0 / 1" before a run
        self.stats_label = _label(NO_RUN, selectable=True)
        self.run_label = _label("", INFO_STYLE, selectable=True)
        self.estimate_label = _label("", WARNING_STYLE, hidden=True)
        self.error_label = _label("", ERROR_STYLE, selectable=True, hidden=True)

        self.loss_plot = LossPlot()
        self.t_plot = TimestepLossPlot()
        self.preview_label = QLabel("Preview: none yet")
        self.preview_grid = ImageGrid(columns=None)
        self.preview_grid.setMinimumSize(200, 200)
        self.log_list = QListWidget()
        self.log_list.setAlternatingRowColors(True)
        self.log_list.setWordWrap(True)

        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(4, 0, 0, 0)
        for w in (self.progress, self.stats_label, self.run_label, self.estimate_label, self.error_label):
            self._layout.addWidget(w)
        self.step_view = StepView()
        self.pages = QTabWidget()
        self.pages.addTab(self._plots_and_preview(), "Curves and preview")
        self.pages.addTab(self.step_view, "One step")
        self._layout.addWidget(self.pages, 1)

    def _plots_and_preview(self) -> QSplitter:
        plots = QSplitter(Qt.Orientation.Vertical)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.t_plot)
        plots.setStretchFactor(0, 3)
        plots.setStretchFactor(1, 1)
        preview_box = QWidget()
        pv = QVBoxLayout(preview_box)
        pv.setContentsMargins(0, 0, 0, 0)
        pv.addWidget(self.preview_label)
        pv.addWidget(self.preview_grid, 1)
        log_box = QWidget()
        lb = QVBoxLayout(log_box)
        lb.setContentsMargins(0, 0, 0, 0)
        lb.addWidget(QLabel("Log"))
        lb.addWidget(self.log_list, 1)
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(preview_box)
        side.addWidget(log_box)
        side.setStretchFactor(0, 3)
        side.setStretchFactor(1, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(plots)
        split.addWidget(side)
        split.setStretchFactor(0, 4)
        split.setStretchFactor(1, 3)
        return split

    def add_message(self, label: QLabel) -> None:
        """Another message line under the run's own (the quality check's result)."""
        self._layout.insertWidget(self._layout.indexOf(self.error_label) + 1, label)

    @property
    def on_cpu(self) -> bool:
        return self._device.startswith("cpu")

    def device_text(self) -> str:
        """The run's device and, on the CPU, the threads really used: "cpu (1 of 2 threads, auto)"."""
        if self.on_cpu:
            return cpu_text(self._threads, self._threads_auto, usable_cpus())
        return self._device

    # ------------------------------------------------------------------ a run starts
    def start(self, cfg: TrainConfig, run_dir, resumed: bool) -> None:
        self.error_label.hide()
        self.estimate_label.hide()
        self._device, self._threads, self._threads_auto = "", None, cfg.threads == 0
        self.started = False
        # a resumed run re-sends its logged losses in its first Progress event
        self.loss_plot.clear()
        self._val_at.clear()
        self.t_plot.clear()
        self.step_view.clear()
        self.pages.setCurrentIndex(0)
        if not resumed:
            self.preview_grid.clear()
            self.preview_label.setText("Preview: none yet")
        self.progress.setRange(0, cfg.steps)
        self.progress.setValue(0)
        self.progress.setFormat("step %v / %m")
        self.progress.setTextVisible(True)
        self.stats_label.setText("Starting: loading data and building the model…")
        self.run_label.setText(f"Run folder: {run_dir}")
        self.log(
            ("Resuming" if resumed else "Starting") + f" {cfg.preset} on {cfg.data}, {cfg.steps:,} steps"
        )

    def pausing(self) -> None:
        """Pause was asked for: the run pauses after the step it is in (seconds, on a busy CPU)."""
        self._before_pause = self.stats_label.text()
        self.stats_label.setText("Pausing after the current step…")

    def unpausing(self) -> None:
        """Resume was asked for: if the run had not paused yet, it simply goes on."""
        if self._before_pause is not None:
            self.stats_label.setText(self._before_pause)
            self._before_pause = None

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.show()

    def log(self, message: str, warn: bool = False) -> None:
        self.log_list.addItem(f"{time.strftime('%H:%M:%S')}  {message}")
        if warn:
            self.log_list.item(self.log_list.count() - 1).setForeground(Qt.GlobalColor.yellow)
        while self.log_list.count() > LOG_LIMIT:
            self.log_list.takeItem(0)
        self.log_list.scrollToBottom()

    # ------------------------------------------------------------------ events (GUI thread)
    def show_event(self, e: object, paused: bool = False) -> None:
        threads = getattr(e, "threads", None)  # ThreadsUsed, or an engine event that carries the count
        if isinstance(threads, int) and threads > 0:
            self._threads = threads
        handler = {ev.Started: self._started, ev.Validation: self._validation, ev.StepInspected: self._inspected,
                   ev.SettingsChanged: self._settings_changed}.get(type(e))  # fmt: skip
        if handler is not None:
            handler(e)
        elif isinstance(e, ev.Progress):
            self._progress(e, paused)
        elif isinstance(e, ev.TimestepLoss):
            self.t_plot.set_values(e.loss_by_t)
        elif isinstance(e, ev.Preview):
            self.preview_grid.set_images(e.images, columns=max(1, math.ceil(math.sqrt(len(e.images)))))
            self.preview_label.setText(f"Preview at step {e.step:,} (the same starting noise every time)")
        elif isinstance(e, ev.CheckpointSaved):
            best = ""
            if e.best:
                best = " (the lowest validation loss so far: kept as the best checkpoint)"
                self.loss_plot.mark_best(e.step, self._val_at.get(e.step, math.nan))
            self.log(f"Checkpoint saved at step {e.step:,}: {e.path}{best}")
        elif isinstance(e, ev.Paused):
            self.progress.setValue(min(e.step, self.progress.maximum()))
            self.stats_label.setText(f"Paused at step {e.step:,}.")
            self._before_pause = None
            self.estimate_label.hide()  # its "done around" moves on while the run waits
            self.log(f"Paused at step {e.step:,}")
        elif isinstance(e, ev.Resumed):
            self.stats_label.setText(f"Resumed at step {e.step:,}: training on {self.device_text()}…")
            self.log(f"Resumed at step {e.step:,}")
        elif isinstance(e, ev.Notice):
            self.log(e.message, warn=e.level == "warning")
        elif isinstance(e, ev.Finished):
            what = "Finished" if e.reason == "completed" else "Stopped"
            self.stats_label.setText(f"{what} at step {e.step:,}. Checkpoint: {e.checkpoint or 'none'}")
            self.log(f"{what} at step {e.step:,}" + (f"; checkpoint {e.checkpoint}" if e.checkpoint else ""))
        elif isinstance(e, ev.Failed):
            extra = f"\nThe last good checkpoint is {e.checkpoint}." if e.checkpoint else ""
            self.fail(e.message + extra)

    def fail(self, message: str) -> None:
        self.show_error(message)
        self.log(message, warn=True)
        self.stats_label.setText("Failed.")

    def finish(self) -> None:
        """The run's thread ended (whatever the reason)."""
        self.estimate_label.hide()

    def _started(self, e: ev.Started) -> None:
        self.progress.setRange(0, max(e.total_steps, 1))
        self.progress.setValue(e.step)
        self._device, self.started = e.device, True
        if e.threads:  # the trainer's own word on the count and how it was chosen
            self._threads_auto = e.threads_auto
        flops = f" · {fmt_count(e.flops_per_image)}FLOP/image" if e.flops_per_image else ""
        # the device without its thread count: that one changes while training and the stats line has it
        device = "cpu" if self.on_cpu else e.device
        self.run_label.setText(
            f"{device} · {e.n_params:,} parameters{flops} · {e.dataset} ({e.n_images:,} images) · "
            f"batch {e.batch_size} · {e.run_dir}"
        )
        where = f" from step {e.step:,}" if e.resumed else ""
        self.stats_label.setText(f"Training{where} on {self.device_text()}…")
        self.log(f"Started on {self.device_text()}: {e.n_params:,} parameters, {e.n_images:,} images")
        if e.estimate_note:
            self.estimate_label.setText(e.estimate_note)
            self.estimate_label.show()
            self.log(e.estimate_note)

    def _inspected(self, e: ev.StepInspected) -> None:
        """A step made while paused: on the One step page, shown at once."""
        self.progress.setValue(min(e.step, self.progress.maximum()))
        self.stats_label.setText(f"Paused at step {e.step:,} (one step made: loss {e.loss:.4f}).")
        self.step_view.show_step(e)
        self.pages.setCurrentWidget(self.step_view)
        self.log(f"One step to step {e.step:,}: loss {e.loss:.4f}, gradient norm {e.grad_norm:.3g}")

    def _settings_changed(self, e: ev.SettingsChanged) -> None:
        for text in e.texts:
            self.log(f"Changed in place: {text} (recorded in the run)")

    def _validation(self, e: ev.Validation) -> None:
        """A point of the validation curve (its bands too); a resumed run's curve comes back replayed."""
        self._val_at[e.step] = e.loss
        self.loss_plot.add_validation(e.step, e.loss, (e.low, e.mid, e.high))
        if e.best_step is not None and e.best_loss is not None:
            self.loss_plot.mark_best(e.best_step, e.best_loss)
        if not e.replayed:
            bands = " · ".join(
                f"{name} noise {v:.4f}"
                for name, v in (("low", e.low), ("mid", e.mid), ("high", e.high))
                if v is not None
            )
            self.log(f"Validation loss at step {e.step:,}: {e.loss:.4f} ({bands}; took {e.seconds:.2g} s)")

    def _progress(self, e: ev.Progress, paused: bool) -> None:
        self.progress.setMaximum(max(e.total_steps, 1))
        self.progress.setValue(min(e.step, e.total_steps))
        self.loss_plot.append(e.steps, e.losses, e.loss_smooth)
        if paused:
            return  # the stats line keeps "Paused at step N."
        self.stats_label.setText(
            f"loss {e.loss:.4f} (smoothed {e.loss_smooth:.4f}) · {e.img_per_s:,.1f} img/s · "
            f"ETA {fmt_duration(e.eta_s) if e.img_per_s > 0 else '–'} · "
            f"elapsed {fmt_duration(e.elapsed_s)} · lr {e.lr:.2e} · {self.device_text()}"
        )
        if self.on_cpu and e.img_per_s > 0 and math.isfinite(e.eta_s) and e.step < e.total_steps:
            done_at = time.strftime("%H:%M", time.localtime(time.time() + e.eta_s))
            self.estimate_label.setText(
                f"Training on the CPU at about {e.img_per_s:,.0f} images/s: the remaining "
                f"{e.total_steps - e.step:,} steps take about {fmt_duration(e.eta_s)} (done around {done_at})."
            )
            self.estimate_label.show()


def _label(text: str, style: str = "", selectable: bool = False, hidden: bool = False) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    if style:
        label.setStyleSheet(style)
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if hidden:
        label.hide()
    return label
