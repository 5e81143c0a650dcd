"""The Train tab's "One step" page: what a single training step made while paused worked on
(events.StepInspected): its batch x_0, the noise drawn, the noisy input x_t, the model's prediction and its
target, each image's t and loss, the loss by t over the whole batch, and the gradient norm of each layer
(before clipping) as bars and as a table.

Images in [-1, 1] (x_0, x_t) are shown as they are; the noise, the prediction and the target (unit
variance) are shown over +-NOISE_RANGE standard deviations, so that a prediction is compared with its
target on the same scale.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.engine import events as ev
from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.style import INFO_STYLE, PLOT_PENS, plot_colors

NOISE_RANGE = 2.5  # the noise-scale rows map [-2.5, 2.5] standard deviations to black..white
SHOWN = 8  # images per row
BAR_PX = 16  # screen pixels per bar of the gradient plot
LOG_FLOOR = 1e-12  # a zero gradient norm is drawn at this
GROUPS = {
    "layer": "by layer (module)",
    "block": "by block (first two name parts)",
    "parameter": "by parameter",
}
NO_STEP = "Pause the run and press “1 step”: one training step is made and shown here."


def display_images(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(N, H, W, C) float -> (N, H, W, 3) uint8, mapping [-scale, scale] to [0, 255]."""
    a = np.clip((np.asarray(x, np.float32) / scale + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a[..., :3]


def group_norms(norms: dict[str, float], level: str) -> list[tuple[str, float]]:
    """Gradient norms of the parameters (by name) combined into one per layer, block or parameter, in the
    model's order: the norm of a group is the norm of all its gradients together."""
    out: dict[str, float] = {}
    for name, v in norms.items():
        parts = name.split(".")
        key = {"parameter": name, "layer": ".".join(parts[:-1]) or name}.get(level, ".".join(parts[:2]))
        out[key] = out.get(key, 0.0) + v * v
    return [(k, math.sqrt(s)) for k, s in out.items()]


class StepView(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.last: ev.StepInspected | None = None
        self.summary = QLabel(NO_STEP)
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setStyleSheet(INFO_STYLE)
        self.rows: dict[str, ImageGrid] = {}
        images = QWidget()
        grid = QGridLayout(images)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setVerticalSpacing(2)
        titles = (("x0", "batch x₀"), ("noise", "noise ε"), ("xt", "input x_t"),
                  ("prediction", "prediction"), ("target", "target"))  # fmt: skip
        for i, (key, title) in enumerate(titles):
            label = QLabel(title)
            label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.rows[key] = ImageGrid(columns=SHOWN)
            self.rows[key].setMinimumSize(64, 40)
            grid.addWidget(label, i, 0)
            grid.addWidget(self.rows[key], i, 1)
        grid.setColumnStretch(1, 1)
        self.row_labels = [grid.itemAtPosition(i, 0).widget() for i in range(len(titles))]

        self.t_plot = _plot("loss by t, whole batch", "t", "loss")
        self.t_points = pg.ScatterPlotItem(size=7, brush=pg.mkBrush(PLOT_PENS[1]), pen=None)
        self.t_plot.addItem(self.t_points)

        self.group_combo = QComboBox()
        for key, text in GROUPS.items():
            self.group_combo.addItem(f"Gradient norm {text}", key)
        self.group_combo.currentIndexChanged.connect(lambda *_: self._show_grads())
        self.grad_plot = _plot("", "", "")
        self.grad_plot.showAxis("top")  # above the bars: in sight however far the list scrolls
        self.grad_plot.hideAxis("bottom")
        self.grad_plot.setLabel("top", "gradient norm (log scale)")
        self.grad_plot.getAxis("left").setStyle(tickTextWidth=150, autoExpandTextSpace=True)
        self.bars = pg.BarGraphItem(x0=[], y=[], height=0.7, width=[], brush=PLOT_PENS[0])
        self.grad_plot.addItem(self.bars)
        self.grad_scroll = QScrollArea()
        self.grad_scroll.setWidgetResizable(True)
        self.grad_scroll.setWidget(self.grad_plot)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["parameter", "gradient norm"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self._build(images)

    def _build(self, images: QWidget) -> None:
        grads = QWidget()
        gl = QVBoxLayout(grads)
        gl.setContentsMargins(0, 0, 0, 0)
        gl.addWidget(self.group_combo)
        gl.addWidget(self.grad_scroll, 1)
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(grads)
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(self.t_plot)
        side.addWidget(self.table)
        lower.addWidget(side)
        lower.setStretchFactor(0, 3)
        lower.setStretchFactor(1, 2)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(images)
        split.addWidget(lower)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(self.summary, 1)
        lay.addLayout(top)
        lay.addWidget(split, 1)

    def clear(self) -> None:
        self.last = None
        self.summary.setText(NO_STEP)
        for row in self.rows.values():
            row.clear()
        self.t_points.setData([], [])
        self.bars.setOpts(x0=[], y=[], width=[])
        self.table.setRowCount(0)

    def show_step(self, e: ev.StepInspected) -> None:
        self.last = e
        n = min(SHOWN, len(e.x0))
        what = "the noise ε" if e.prediction_kind == "eps" else "v = √ᾱ·ε − √(1−ᾱ)·x₀"
        self.row_labels[3].setText(f"prediction ({e.prediction_kind})")
        self.row_labels[4].setText("target ε" if e.prediction_kind == "eps" else "target v")
        clip = (
            f" (clipped to {e.grad_clip:g})"
            if e.grad_clip > 0 and e.grad_norm > e.grad_clip
            else (" (under the clip)" if e.grad_clip > 0 else "")
        )
        self.summary.setText(
            f"Step {e.step:,}: loss {e.loss:.4f} over {len(e.t)} images · lr {e.lr:.3g} · gradient norm "
            f"{e.grad_norm:.4g}{clip}. The model is trained to predict {what}; the first {n} images are "
            f"shown (noise, prediction and target over ±{NOISE_RANGE:g} σ)."
        )
        ts = [f"t={int(t)}" for t in e.t[:n]]
        losses = [f"{v:.3f}" for v in e.loss_per_image[:n]]
        self.rows["x0"].set_images(display_images(e.x0[:n]), ts)
        blank = [""] * n  # every row the same height
        self.rows["noise"].set_images(display_images(e.noise[:n], NOISE_RANGE), blank)
        self.rows["xt"].set_images(display_images(e.xt[:n]), ts)
        self.rows["prediction"].set_images(display_images(e.prediction[:n], NOISE_RANGE), losses)
        self.rows["target"].set_images(display_images(e.target[:n], NOISE_RANGE), blank)
        self.t_points.setData(e.t.astype(np.float64), e.loss_per_image.astype(np.float64))
        self._show_grads()
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(e.grad_norms))
        for i, (name, v) in enumerate(e.grad_norms.items()):
            self.table.setItem(i, 0, QTableWidgetItem(name))
            item = QTableWidgetItem()
            item.setData(Qt.ItemDataRole.DisplayRole, float(f"{v:.4g}"))
            self.table.setItem(i, 1, item)
        self.table.setSortingEnabled(True)
        self.table.sortItems(1, Qt.SortOrder.DescendingOrder)  # the largest first

    def grouped(self) -> list[tuple[str, float]]:
        """The bars shown: (name, gradient norm) in the model's order."""
        if self.last is None:
            return []
        return group_norms(self.last.grad_norms, self.group_combo.currentData())

    def _show_grads(self) -> None:
        """Bars on a log scale (norms span orders of magnitude), from a power of ten below the least."""
        items = self.grouped()
        logs = np.log10(np.maximum([v for _n, v in items], LOG_FLOOR)) if items else np.zeros(0)
        lo = math.floor(logs.min()) if len(logs) else 0
        hi = max(math.ceil(logs.max()) if len(logs) else 1, lo + 1)
        y = np.arange(len(items), dtype=np.float64)
        self.bars.setOpts(x0=np.full(len(items), float(lo)), y=y, width=logs - lo)
        self.grad_plot.getAxis("left").setTicks([[(float(i), n) for i, (n, _v) in enumerate(items)]])
        every = max(1, math.ceil((hi - lo + 1) / 4))  # at most 4-5 labels: they stay readable at 1024 px
        self.grad_plot.getAxis("top").setTicks(
            [
                [(float(k), f"1e{k}") for k in range(hi, lo - 1, -every)],
                [(float(k), "") for k in range(lo, hi + 1)],
            ]
        )
        self.grad_plot.setFixedHeight(max(160, BAR_PX * len(items) + 60))
        self.grad_plot.getViewBox().invertY(True)
        self.grad_plot.setYRange(-0.6, max(len(items), 1) - 0.4, padding=0)
        self.grad_plot.setXRange(lo, hi, padding=0)


def _plot(title: str, bottom: str, left: str) -> pg.PlotWidget:
    bg, _fg = plot_colors()
    p = pg.PlotWidget(background=bg)
    if title:
        p.setTitle(title, size="9pt")
    if bottom:
        p.setLabel("bottom", bottom)
    if left:
        p.setLabel("left", left)
    p.showGrid(x=True, y=True, alpha=0.2)
    p.setMouseEnabled(x=False, y=False)
    p.hideButtons()
    p.setMenuEnabled(False)
    p.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    return p
