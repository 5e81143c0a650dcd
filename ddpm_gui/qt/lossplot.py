"""Live training plots: the loss curve (fast past 100k points) with the validation loss, and the loss by
timestep.

The loss curve follows pyqtgraph's own advice for live plots:
- points go into a preallocated numpy buffer that doubles when full, never a Python list;
- the curves are redrawn from a GUI QTimer at ~15 Hz, and only when new points came, not per event;
- `setDownsampling(auto=True, method='peak')` + `setClipToView(True)` keep a redraw of 200k points
  around 10 ms: only the visible range is drawn, at most about one point pair per pixel.
The smoothed curve is the trainer's own smoothed loss (Progress.loss_smooth, what the stats line
shows), so the two never disagree: the same exponential moving average (decay SMOOTHING, starting at
the first loss), computed incrementally and vectorised per block so appending 200k points costs
milliseconds, and set to the trainer's value at the last point of each event (`append(...,
smooth_last)`): a resumed run's average, restored from its checkpoint, is carried on from there.
The validation loss (`add_validation`, a point every few hundred steps) is drawn over the same axes: its
total (bold, with markers) and its three bands of t (thin, dashed), and the best checkpoint as a star.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ddpm_gui.engine.events import LOSS_SMOOTHING
from ddpm_gui.qt.style import INFO_STYLE, PLOT_PENS, plot_colors

SMOOTHING = LOSS_SMOOTHING  # the trainer's own decay: one smoothing


def _pens() -> tuple:
    c = pg.mkColor(PLOT_PENS[0])
    raw = pg.mkColor(c)
    raw.setAlpha(90)
    return pg.mkPen(color=raw, width=1), pg.mkPen(color=c, width=2.5)


def plot_widget(title: str, xlabel: str, ylabel: str) -> pg.PlotWidget:
    """A themed plot with titled axes and a cheap grid: every plot of the app."""
    bg, fg = plot_colors()
    w = pg.PlotWidget(background=bg)
    pi = w.getPlotItem()
    pi.setTitle(title, color=fg, size="10pt")
    pi.setLabel("bottom", xlabel, color=fg)
    pi.setLabel("left", ylabel, color=fg)
    for ax in ("bottom", "left"):
        pi.getAxis(ax).setPen(fg)
        pi.getAxis(ax).setTextPen(fg)
        pi.getAxis(ax).enableAutoSIPrefix(False)  # "mean loss (x0.001)" reads worse than 0.8
    # A GridItem, not the axes' own grid (showGrid): with that, every curve update repaints both axes
    # (their grid lines cover the view) and replays their tick-label pictures, about 20 ms a redraw here;
    # the GridItem draws lines only (measured in docs/benchmarks.md, "The GUI stays light").
    grid = pg.GridItem(textPen=None)
    grid.setTickSpacing(x=[None, None], y=[None, None])  # two levels (about 10 lines a side), not three
    grid.setPen(pg.mkPen(color=fg, width=1))  # the item sets the alpha by line density itself
    grid.setZValue(-100)
    pi.addItem(grid, ignoreBounds=True)
    pi.setMenuEnabled(False)
    return w


def ema_block(values: np.ndarray, decay: float, state: float | None) -> tuple[np.ndarray, float | None]:
    """Exponential moving average of `values` continuing from `state` (None: none yet, the average
    starts at the first value), as the trainer's: e_i = decay * e_(i-1) + (1 - decay) * y_i. Returns
    the averages and the new state. Vectorised in blocks small enough that decay**-k stays finite."""
    out = np.empty(len(values), np.float64)
    if len(values) == 0:
        return out, state
    if state is None:
        state = float(values[0])  # then e_0 = y_0
    block = 256
    lin = np.arange(block, dtype=np.float64)
    for s in range(0, len(values), block):
        y = values[s : s + block].astype(np.float64)
        m = len(y)
        p = decay ** lin[:m]  # decay**i
        # e_i = decay**(i+1) e_(-1) + (1 - decay) * sum_{k<=i} decay**(i-k) y_k
        e = decay * p * state + (1.0 - decay) * p * np.cumsum(y / p)
        out[s : s + m] = e
        state = float(e[-1])
    return out, state


def ema_gapped(
    values: np.ndarray, gaps: np.ndarray, decay: float, state: float | None
) -> tuple[np.ndarray, float | None]:
    """The trainer's moving average through points `gaps` steps apart, each standing for the losses of the
    steps since the previous one: e_i = decay**g_i * e_(i-1) + (1 - decay**g_i) * y_i."""
    out = np.empty(len(values), np.float64)
    for i, (y, g) in enumerate(zip(values.tolist(), gaps.tolist(), strict=True)):
        w = decay ** max(float(g), 1.0)
        state = y if state is None else w * state + (1.0 - w) * y
        out[i] = state
    return out, state


# the validation curves: (key, legend name); the bands are the engine's (engine/validation.py BANDS)
VAL_CURVES = (
    ("total", "validation"),
    ("low", "val, low noise"),
    ("mid", "val, mid noise"),
    ("high", "val, high noise"),
)


class LossPlot(QWidget):
    """Raw loss (thin, translucent) and its smoothed curve (bold), the validation loss by band when the run
    reports one, with a 'log y' toggle."""

    REDRAW_MS = 66  # ~15 Hz

    def __init__(
        self, parent: QWidget | None = None, smoothing: float = SMOOTHING, title: str = "Training loss"
    ):
        super().__init__(parent)
        self._decay = smoothing
        self._cap = 4096
        self._x = np.zeros(self._cap, np.float64)
        self._y = np.zeros(self._cap, np.float64)
        self._ys = np.zeros(self._cap, np.float64)
        self._n = 0
        self._ema_state: float | None = None
        self._dirty = False
        self.last_redraw_ms = 0.0
        self._val: dict[str, list[float]] = {"step": [], **{k: [] for k, _n in VAL_CURVES}}
        self._val_curves: dict[str, pg.PlotDataItem] = {}  # made with the legend, at the first point
        self._best: tuple[int, float] | None = None  # (step, loss) of the best checkpoint
        self._best_item: pg.PlotDataItem | None = None

        self.plot = plot_widget(title, "step", "MSE loss")
        pi = self.plot.getPlotItem()
        raw_pen, smooth_pen = _pens()
        self._raw = pi.plot(pen=raw_pen, name="loss")
        self._smooth = pi.plot(pen=smooth_pen, name="smoothed")
        for c in (self._raw, self._smooth):
            c.setDownsampling(auto=True, method="peak")
            c.setClipToView(True)
            c.setSkipFiniteCheck(True)  # losses are finite; saves a pass over 200k points per redraw

        self.log_box = QCheckBox("log &y")
        self.log_box.setToolTip("Logarithmic loss axis: the slow late improvements become visible.")
        self.log_box.toggled.connect(self.set_log)
        self.info = QLabel("")
        self.info.setStyleSheet(INFO_STYLE)
        self.info.setWordWrap(True)  # the validation figures make it long: never clipped in a narrow window
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.info, 1)
        top.addWidget(self.log_box, 0, Qt.AlignmentFlag.AlignRight)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.plot, 1)

        self._timer = QTimer(self)
        self._timer.setInterval(self.REDRAW_MS)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    # --- API
    @property
    def n_points(self) -> int:
        return self._n

    def steps(self) -> np.ndarray:
        return self._x[: self._n].copy()

    def losses(self) -> np.ndarray:
        return self._y[: self._n].copy()

    def smoothed(self) -> np.ndarray:
        return self._ys[: self._n].copy()

    def validation(self) -> dict[str, np.ndarray]:
        """The validation points shown: {"step", "total", "low", "mid", "high"} (NaN: a band not reported)."""
        return {k: np.asarray(v, np.float64) for k, v in self._val.items()}

    def best(self) -> tuple[int, float] | None:
        """(step, validation loss) of the best checkpoint marked, if any."""
        return self._best

    def header(self) -> str:
        """The line above the plot: the points, the last loss and its smoothed value, the last validation
        loss and the best checkpoint's."""
        n = self._n
        text = f"{n:,} points · last {self._y[n - 1]:.4f} · smoothed {self._ys[n - 1]:.4f}" if n else ""
        if self._val["step"]:
            text += f"{' · ' if text else ''}validation {self._val['total'][-1]:.4f}"
        if self._best is not None:
            text += f" (best {self._best[1]:.4f} at step {self._best[0]:,})"
        return text

    def add_validation(
        self, step: int, total: float, bands: tuple[float | None, float | None, float | None]
    ) -> None:
        """A validation point: its total and its bands of t (low, mid, high noise). A point at a step
        already shown replaces the points from there on (a resumed run sends its curve again)."""
        steps = self._val["step"]
        while steps and steps[-1] >= step:
            for v in self._val.values():
                v.pop()
        steps.append(float(step))
        for (key, _name), v in zip(VAL_CURVES, (total, *bands), strict=True):
            self._val[key].append(float(v) if v is not None else math.nan)
        self._dirty = True

    def mark_best(self, step: int, loss: float) -> None:
        """Mark the best checkpoint (the lowest validation loss among the checkpoints saved)."""
        self._best = (int(step), float(loss))
        self._dirty = True

    def append(self, steps: np.ndarray, losses: np.ndarray, smooth_last: float | None = None) -> None:
        """Add loss points (cheap: a copy into the buffer; the redraw happens on the timer). `smooth_last`:
        the smoothed loss the trainer reports at the last of them (Progress.loss_smooth)."""
        steps = np.asarray(steps, dtype=np.float64).reshape(-1)
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        m = min(len(steps), len(losses))
        if m == 0:
            return
        steps, losses = steps[:m], losses[:m]
        ok = np.isfinite(losses)
        if not ok.all():  # a NaN/inf loss is reported by the engine; keep the curve drawable
            steps, losses = steps[ok], losses[ok]
            m = len(losses)
            if m == 0:
                return
        need = self._n + m
        if need > self._cap:
            cap = self._cap
            while cap < need:
                cap *= 2
            for name in ("_x", "_y", "_ys"):
                old = getattr(self, name)
                new = np.zeros(cap, np.float64)
                new[: self._n] = old[: self._n]
                setattr(self, name, new)
            self._cap = cap
        prev = self._x[self._n - 1] if self._n else steps[0] - 1
        gaps = np.diff(steps, prepend=prev)
        if np.all(gaps == 1):  # live points: every step's loss
            sm, self._ema_state = ema_block(losses, self._decay, self._ema_state)
        else:  # a run's logged history (every log_every-th step): the average decays per step, not per point
            sm, self._ema_state = ema_gapped(losses, gaps, self._decay, self._ema_state)
        if smooth_last is not None and np.isfinite(smooth_last) and ok[-1]:
            sm[-1] = self._ema_state = float(smooth_last)
        self._x[self._n : need] = steps
        self._y[self._n : need] = losses
        self._ys[self._n : need] = sm
        self._n = need
        self._dirty = True

    def clear(self) -> None:
        self._n = 0
        self._ema_state = None
        self._raw.setData([], [])
        self._smooth.setData([], [])
        for v in self._val.values():
            v.clear()
        for c in self._val_curves.values():
            c.setData([], [])
        self._best = None
        if self._best_item is not None:
            self._best_item.setData([], [])
        self.info.setText("")
        self._dirty = False

    @Slot(bool)
    def set_log(self, on: bool) -> None:
        if self.log_box.isChecked() != on:
            self.log_box.setChecked(on)  # re-enters through toggled
            return
        self.plot.getPlotItem().setLogMode(x=False, y=on)

    def redraw(self) -> float:
        """Push the buffer to the curves now; returns the time it took in ms (paint comes later)."""
        t0 = time.perf_counter()
        n = self._n
        # views into the buffer: later appends write past n, a reallocation leaves these intact
        self._raw.setData(self._x[:n], self._y[:n])
        self._smooth.setData(self._x[:n], self._ys[:n])
        self._draw_validation()
        self.info.setText(self.header())
        self._dirty = False
        self.last_redraw_ms = (time.perf_counter() - t0) * 1000
        return self.last_redraw_ms

    def _draw_validation(self) -> None:
        if not self._val["step"]:
            return
        if not self._val_curves:
            self._make_val_curves()
        x = np.asarray(self._val["step"])
        for key, curve in self._val_curves.items():
            y = np.asarray(self._val[key])
            ok = np.isfinite(y)
            curve.setData(x[ok], y[ok])
        if self._best is not None and self._best_item is not None:
            self._best_item.setData([self._best[0]], [self._best[1]])

    def _make_val_curves(self) -> None:
        """The validation curves and a legend for every curve (made when the first point comes, so that a
        run without validation keeps its plain plot)."""
        pi = self.plot.getPlotItem()
        legend = pi.addLegend(offset=(-10, 10))
        legend.addItem(self._raw, "loss")
        legend.addItem(self._smooth, "smoothed")
        for i, (key, name) in enumerate(VAL_CURVES):
            color = pg.mkColor(PLOT_PENS[1 + i % (len(PLOT_PENS) - 1)])
            if key == "total":
                curve = pi.plot(pen=pg.mkPen(color, width=2.5), symbol="o", symbolSize=6,
                                symbolBrush=color, symbolPen=None, name=name)  # fmt: skip
            else:
                curve = pi.plot(pen=pg.mkPen(color, width=1.2, style=Qt.PenStyle.DashLine), name=name)
            self._val_curves[key] = curve
        # a PlotDataItem, not a ScatterPlotItem: it follows the log-y toggle
        self._best_item = pi.plot(pen=None, symbol="star", symbolSize=18, symbolBrush=pg.mkBrush("#ffe066"),
                                  symbolPen=pg.mkPen("#1e1e1e", width=1), name="best checkpoint")  # fmt: skip

    @Slot()
    def _tick(self) -> None:
        if self._dirty and self.isVisible():
            self.redraw()


class TimestepLossPlot(QWidget):
    """Mean training loss per timestep t: high at small t (little noise, hard to see it) is typical."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.plot = plot_widget("Loss by timestep t", "t (0 = least noise)", "mean loss")
        pi = self.plot.getPlotItem()
        self._bars = pg.BarGraphItem(x=[], height=[], width=0.9, brush=PLOT_PENS[1], pen=None)
        pi.addItem(self._bars)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.plot)
        self.values = np.zeros(0, np.float32)

    def set_values(self, loss_by_t: np.ndarray) -> None:
        v = np.asarray(loss_by_t, dtype=np.float64).reshape(-1)
        self.values = v.astype(np.float32)
        t = np.arange(len(v), dtype=np.float64)
        ok = np.isfinite(v)
        self._bars.setOpts(x=t[ok], height=v[ok], width=0.9 if len(v) <= 200 else 1.0)

    def clear(self) -> None:
        self.values = np.zeros(0, np.float32)
        self._bars.setOpts(x=[], height=[])
