"""The Forward tab's noise-schedule editor and its plots of beta_t, alpha_bar_t and SNR(t).

ScheduleEditor edits a ScheduleConfig (a preset, or kind, T, beta range and zero terminal SNR) and emits
`scheduleChanged(NoiseSchedule)` after every valid edit; an invalid one shows its message and keeps the
last valid schedule. A warning says when x_T still holds a visible part of x_0 (the tutorial's schedule
ends at alpha_bar_T = 0.131: 36% of the image is left while sampling starts from pure noise).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.core.schedule import SCHEDULE_KINDS, SCHEDULE_PRESETS, NoiseSchedule, ScheduleConfig
from ddpm_gui.errors import ConfigError
from ddpm_gui.qt.style import ERROR_STYLE, INFO_STYLE, PLOT_PENS, WARNING_STYLE, plot_colors

WARN_SIGNAL = 0.05  # warn when sqrt(alpha_bar_T) is above this: x_T is visibly not pure noise
CUSTOM = "(custom)"
PRESET_TIPS = (
    "tutorial: linear 1e-4..0.04, T=100 (the article)\nddpm-paper: linear 1e-4..0.02, T=1000\n"
    "cosine: Nichol & Dhariwal 2021\ntutorial-zero-snr: the tutorial's, rescaled so x_T is pure noise"
)


def schedule_warning(summary: dict) -> str:
    """The warning for a schedule whose x_T still holds part of x_0 ("" when it ends in noise)."""
    signal = summary["signal_left_at_T"]
    if signal <= WARN_SIGNAL:
        return ""
    return (
        f"x_T still holds {signal:.0%} of the image (alpha_bar_T = {summary['alpha_bar_T']:.3f}): sampling "
        "starts from pure noise, which the model never saw at t=T. Try the cosine schedule or zero-terminal SNR."
    )


def _label(parent: QWidget, style: str, hidden: bool = False) -> QLabel:
    lab = QLabel("", parent)
    lab.setStyleSheet(style)
    lab.setWordWrap(True)
    if hidden:
        lab.hide()
    return lab


class ScheduleEditor(QWidget):
    """The schedule form, its one-line summary, and the error and warning boxes under it."""

    scheduleChanged = Signal(object)  # NoiseSchedule

    def __init__(self, parent: QWidget | None = None, preset: str = "tutorial"):
        super().__init__(parent)
        self._sched = NoiseSchedule(SCHEDULE_PRESETS[preset])
        box = QGroupBox("Noise schedule", self)
        form = QFormLayout(box)
        self.preset_combo = QComboBox(box)
        for name in (*SCHEDULE_PRESETS, CUSTOM):
            self.preset_combo.addItem(name, name)
        self.preset_combo.setToolTip(PRESET_TIPS)
        self.preset_combo.activated.connect(self._on_preset)
        self._add_row(form, "&Preset:", self.preset_combo)
        self.kind_combo = QComboBox(box)
        self.kind_combo.addItems(list(SCHEDULE_KINDS))
        self.kind_combo.currentIndexChanged.connect(self._apply)
        self._add_row(form, "&Kind:", self.kind_combo)
        self.T_spin = QSpinBox(box)
        self.T_spin.setRange(1, 10000)
        self.T_spin.setKeyboardTracking(False)
        self.T_spin.setToolTip("Number of diffusion steps (tutorial: 100, DDPM paper: 1000)")
        self.T_spin.valueChanged.connect(self._apply)
        self._add_row(form, "&T (steps):", self.T_spin)
        self.beta_start_spin = self._beta_spin(box)
        self._add_row(form, "beta_&start:", self.beta_start_spin)
        self.beta_end_spin = self._beta_spin(box)
        self._add_row(form, "beta_&end:", self.beta_end_spin)
        self.zero_snr_check = QCheckBox("&Zero terminal SNR (rescale so x_T is pure noise)", box)
        self.zero_snr_check.toggled.connect(self._apply)
        form.addRow(self.zero_snr_check)
        self.summary_label = _label(box, INFO_STYLE)
        form.addRow(self.summary_label)
        self.error_label = _label(self, ERROR_STYLE, hidden=True)
        self.warning_label = _label(self, WARNING_STYLE, hidden=True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        for w in (box, self.error_label, self.warning_label):
            lay.addWidget(w)
        self._set_controls(SCHEDULE_PRESETS[preset])
        self._apply()

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
        s.valueChanged.connect(self._apply)
        return s

    def schedule(self) -> NoiseSchedule:
        """The last valid schedule."""
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
        self._set_controls(SCHEDULE_PRESETS[cfg] if isinstance(cfg, str) else cfg)
        self._apply()

    def warning_text(self) -> str:
        return self.warning_label.text() if self.warning_label.isVisibleTo(self) else ""

    def error_text(self) -> str:
        return self.error_label.text() if self.error_label.isVisibleTo(self) else ""

    def _controls(self) -> tuple[QWidget, ...]:
        return (self.kind_combo, self.T_spin, self.beta_start_spin, self.beta_end_spin, self.zero_snr_check)

    def _set_controls(self, cfg: ScheduleConfig) -> None:
        for w in self._controls():
            w.blockSignals(True)
        self.kind_combo.setCurrentText(cfg.kind)
        self.T_spin.setValue(cfg.T)
        self.beta_start_spin.setValue(cfg.beta_start)
        self.beta_end_spin.setValue(cfg.beta_end)
        self.zero_snr_check.setChecked(cfg.rescale_zero_snr)
        for w in self._controls():
            w.blockSignals(False)

    @Slot()
    def _on_preset(self, *_args) -> None:
        name = self.preset_combo.currentData()
        if name in SCHEDULE_PRESETS:
            self.set_schedule(name)

    @Slot()
    def _apply(self, *_args) -> None:
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
        summary = sched.summary()
        warning = schedule_warning(summary)
        self.warning_label.setText(warning)
        self.warning_label.setVisible(bool(warning))
        self.summary_label.setText(
            f"β from {summary['beta_min']:.2g} to {summary['beta_max']:.3g}; ᾱ at T/2 = {summary['alpha_bar_mid']:.3f}, "
            f"at T = {summary['alpha_bar_T']:.3g} (x_T keeps {summary['signal_left_at_T']:.0%} of x_0)"
        )
        self.scheduleChanged.emit(sched)


class SchedulePlots(pg.GraphicsLayoutWidget):
    """beta_t, alpha_bar_t and SNR(t) (log scale) over t = 1..T, with a marker at the step shown."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        bg, fg = plot_colors()
        self.setBackground(bg)
        self.setMinimumHeight(170)
        self.setMaximumHeight(230)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.markers: list[pg.InfiniteLine] = []
        titles = (("beta", "β_t", False), ("alpha_bar", "ᾱ_t (signal² left)", False),
                  ("snr", "SNR(t) = ᾱ/(1−ᾱ)", True))  # fmt: skip
        for col, (key, title, log) in enumerate(titles):
            p = self.addPlot(row=0, col=col, title=title)
            p.showGrid(x=True, y=True, alpha=0.2)
            p.setLabel("bottom", "t")
            p.setLogMode(y=log)
            p.setMouseEnabled(x=False, y=False)
            p.hideButtons()
            p.setMenuEnabled(False)
            self.curves[key] = p.plot(pen=pg.mkPen(PLOT_PENS[col], width=2), connect="finite")
            pen = pg.mkPen(fg, width=1, style=Qt.PenStyle.DashLine)
            line = pg.InfiniteLine(angle=90, movable=False, pen=pen)
            p.addItem(line)
            self.markers.append(line)

    def show_schedule(self, s: NoiseSchedule) -> None:
        t = np.arange(1, s.T + 1, dtype=np.float64)
        snr = s.snr.double().cpu().numpy().copy()
        snr[~np.isfinite(snr) | (snr <= 0)] = np.nan  # log axis: alpha_bar_T = 0 has no SNR to draw
        self.curves["beta"].setData(t, s.betas.double().cpu().numpy())
        self.curves["alpha_bar"].setData(t, s.alpha_bars.double().cpu().numpy())
        self.curves["snr"].setData(t, snr)

    def mark(self, t: int) -> None:
        """The marker at step t (none at step 0, the clean image)."""
        for m in self.markers:
            m.setPos(max(t, 1))
            m.setVisible(t > 0)
