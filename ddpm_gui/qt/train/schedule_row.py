"""The Train form's noise schedule, seen: the schedule the next run trains with, drawn with the Forward
tab's own plots (schedule_view.SchedulePlots, compact) under its row, with a line saying what it is, and
the schedule the Forward tab sends ("Use for training", AppState.trainingSchedule).

A schedule sent while a run is going on (or a saved run is loaded to be continued, whose schedule is
fixed) waits, and is set when the form is back to a new run.
"""

from __future__ import annotations

from PySide6.QtGui import QFont
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig
from ddpm_gui.qt.schedule_view import WARN_SIGNAL, SchedulePlots
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import INFO_STYLE, WARNING_STYLE
from ddpm_gui.qt.train.fields import schedule_text
from ddpm_gui.qt.train.form import SettingsForm

PLOT_HEIGHT = 110  # pixels: the Forward tab's three plots, small
TITLES = ("β_t", "ᾱ_t", "SNR(t)")  # the plots' titles, short


class ScheduleRow(QWidget):
    def __init__(self, form: SettingsForm, state: AppState):
        super().__init__()
        self.form, self.state = form, state
        self.pending: ScheduleConfig | None = None  # sent from the Forward tab while a run goes on
        self.plots = SchedulePlots(self)
        self.plots.setMinimumHeight(PLOT_HEIGHT)
        self.plots.setMaximumHeight(PLOT_HEIGHT)
        self.plots.setToolTip(
            "β_t, ᾱ_t and SNR(t) of the schedule the run trains with (as on the Forward tab)"
        )
        self._compact()
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setStyleSheet(INFO_STYLE)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.label)
        lay.addWidget(self.plots)
        form.add_below("schedule", self)
        form.changed.connect(lambda name: self.refresh() if name == "schedule" else None)
        state.trainingSchedule.connect(self.use)
        self.refresh()

    def _compact(self) -> None:
        """The plots in little room: short titles, small tick labels, no axis names, no step marker."""
        font = QFont()
        font.setPointSizeF(7)
        for col, title in enumerate(TITLES):
            p = self.plots.ci.getItem(0, col)
            p.setTitle(title, size="8pt")
            p.setLabel("bottom", "")
            for side in ("left", "bottom"):
                p.getAxis(side).setStyle(tickFont=font, tickTextOffset=2)
            p.getAxis("left").setWidth(30)
        for m in self.plots.markers:
            m.setVisible(False)

    def schedule(self) -> ScheduleConfig | None:
        return self.form.fields["schedule"].value()

    def refresh(self) -> None:
        cfg = self.schedule()
        if cfg is None:
            return
        sched = NoiseSchedule(cfg)
        self.plots.show_schedule(sched)
        s = sched.summary()
        left = s["signal_left_at_T"]
        self.label.setText(
            f"ᾱ at T = {s['alpha_bar_T']:.3g}: x_T keeps {left:.0%} of x_0"
            + (" (not pure noise, where sampling starts)." if left > WARN_SIGNAL else ".")
        )
        self.label.setStyleSheet(WARNING_STYLE if left > WARN_SIGNAL else INFO_STYLE)

    def use(self, cfg: ScheduleConfig) -> bool:
        """Set the schedule for the next new run (now, or once the run going on has ended)."""
        if self.form.mode != "new":
            self.pending = cfg
            self.state.show_status(f"The next new run will train with the schedule {schedule_text(cfg)}.")
            return False
        self.pending = None
        self.form.set_values({"schedule": cfg})
        self.refresh()
        self.state.show_status(f"The Train tab's next run trains with the schedule {schedule_text(cfg)}.")
        return True

    def apply_pending(self) -> None:
        """A schedule that waited for the form to be back to a new run."""
        if self.pending is not None and self.form.mode == "new":
            self.use(self.pending)
