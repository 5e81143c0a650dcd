"""The Train tab's right side: progress, live figures, messages, loss curves, preview grid and log.

It only shows what a run reports (`show_event`); what the events mean for the run's control (the
buttons, the current model, a quality check at each checkpoint) is the panel's business.
"""

from __future__ import annotations

import math
import time

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QListWidget, QProgressBar, QSplitter, QVBoxLayout, QWidget

from ddpm_gui.engine import events as ev
from ddpm_gui.engine.text import fmt_count, fmt_duration
from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.lossplot import LossPlot, TimestepLossPlot
from ddpm_gui.qt.style import ERROR_STYLE, INFO_STYLE, WARNING_STYLE

LOG_LIMIT = 300  # entries kept in the log list


class RunView(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._on_cpu = False
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("step %v / %m")
        self.stats_label = _label("Not running.", selectable=True)
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
        self._layout.addWidget(self._plots_and_preview(), 1)

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

    # ------------------------------------------------------------------ a run starts
    def start(self, preset: str, data: str, steps: int, run_dir, resumed: bool) -> None:
        self.error_label.hide()
        self.estimate_label.hide()
        # a resumed run re-sends its logged losses in its first Progress event
        self.loss_plot.clear()
        self.t_plot.clear()
        if not resumed:
            self.preview_grid.clear()
            self.preview_label.setText("Preview: none yet")
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.stats_label.setText("Starting: loading data and building the model…")
        self.run_label.setText(f"Run folder: {run_dir}")
        self.log(("Resuming" if resumed else "Starting") + f" {preset} on {data}, {steps:,} steps")

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
        if isinstance(e, ev.Progress):
            self._progress(e, paused)
        elif isinstance(e, ev.Started):
            self._started(e)
        elif isinstance(e, ev.TimestepLoss):
            self.t_plot.set_values(e.loss_by_t)
        elif isinstance(e, ev.Preview):
            self.preview_grid.set_images(e.images, columns=max(1, math.ceil(math.sqrt(len(e.images)))))
            self.preview_label.setText(f"Preview at step {e.step:,} (the same starting noise every time)")
        elif isinstance(e, ev.CheckpointSaved):
            self.log(f"Checkpoint saved at step {e.step:,}: {e.path}")
        elif isinstance(e, ev.Paused):
            self.progress.setValue(min(e.step, self.progress.maximum()))
            self.stats_label.setText(f"Paused at step {e.step:,}.")
            self.log(f"Paused at step {e.step:,}")
        elif isinstance(e, ev.Resumed):
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
        flops = f" · {fmt_count(e.flops_per_image)}FLOP/image" if e.flops_per_image else ""
        self.run_label.setText(
            f"{e.device} · {e.n_params:,} parameters{flops} · {e.dataset} ({e.n_images:,} images) · "
            f"batch {e.batch_size} · {e.run_dir}"
        )
        self.stats_label.setText(f"Training from step {e.step:,}…" if e.resumed else "Training…")
        self._on_cpu = e.device.startswith("cpu")
        self.log(f"Started on {e.device}: {e.n_params:,} parameters, {e.n_images:,} images")
        if e.estimate_note:
            self.estimate_label.setText(e.estimate_note)
            self.estimate_label.show()
            self.log(e.estimate_note)

    def _progress(self, e: ev.Progress, paused: bool) -> None:
        self.progress.setMaximum(max(e.total_steps, 1))
        self.progress.setValue(min(e.step, e.total_steps))
        self.loss_plot.append(e.steps, e.losses)
        if not paused:
            self.stats_label.setText(
                f"loss {e.loss:.4f} (smoothed {e.loss_smooth:.4f}) · {e.img_per_s:,.1f} img/s · "
                f"ETA {fmt_duration(e.eta_s) if e.img_per_s > 0 else '–'} · "
                f"elapsed {fmt_duration(e.elapsed_s)} · lr {e.lr:.2e}"
            )
        if self._on_cpu and e.img_per_s > 0 and math.isfinite(e.eta_s) and e.step < e.total_steps:
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
