"""What the Runs tab shows of the selected runs side by side: their loss curves (raw and the trainer's own
smoothed loss, the validation loss dashed, log axis, legend), their loss by timestep, the settings that
differ, their quality results over the steps, their preview grids at one step, and a run's "watch it learn"
strip."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.engine import runs
from ddpm_gui.engine.images import make_grid
from ddpm_gui.qt.lossplot import plot_widget
from ddpm_gui.qt.style import PLOT_PENS


def pens(i: int) -> tuple:
    """(raw, smoothed) pens of the i-th run: its colour, translucent and thin for the raw loss."""
    c = pg.mkColor(PLOT_PENS[i % len(PLOT_PENS)])
    raw = pg.mkColor(c)
    raw.setAlpha(80)
    return pg.mkPen(color=raw, width=1), pg.mkPen(color=c, width=2.5)


def val_pen(i: int):
    """The i-th run's validation loss: its colour, dashed."""
    return pg.mkPen(color=pg.mkColor(PLOT_PENS[i % len(PLOT_PENS)]), width=2, style=Qt.PenStyle.DashLine)


class LossOverlay(QWidget):
    """The loss curves of several runs on one plot; `curves[path]` = (raw item, smoothed item), and
    `val_curves[path]` the validation loss of a run that logs one."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.plot = plot_widget("Training loss", "step", "MSE loss")
        self.legend = self.plot.getPlotItem().addLegend(offset=(-10, 10))
        self.log_box = QCheckBox("log &y")
        self.log_box.setChecked(True)
        self.log_box.setToolTip("Logarithmic loss axis")
        self.log_box.toggled.connect(lambda on: self.plot.getPlotItem().setLogMode(y=on))
        self.plot.getPlotItem().setLogMode(y=True)
        self.by_t = plot_widget("Loss by timestep (newest checkpoint)", "timestep t", "mean loss")
        self.by_t.getPlotItem().addLegend(offset=(-10, 10))
        self.curves: dict[Path, tuple] = {}
        self.val_curves: dict[Path, pg.PlotDataItem] = {}
        self.t_curves: dict[Path, pg.PlotDataItem] = {}
        self._t_cache: dict[Path, np.ndarray | None] = {}
        top = QHBoxLayout()
        top.addStretch(1)
        top.addWidget(self.log_box)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.plot, 3)
        lay.addWidget(self.by_t, 2)

    def show_runs(self, selected: list[tuple[runs.RunInfo, runs.RunMetrics]]) -> None:
        """Draw these runs (in this order, one colour each); runs no longer selected are removed."""
        pi = self.plot.getPlotItem()
        keep = {info.path for info, _m in selected}
        for path in [p for p in self.curves if p not in keep]:
            for item in self.curves.pop(path):
                pi.removeItem(item)
        for path in [p for p in self.val_curves if p not in keep]:
            pi.removeItem(self.val_curves.pop(path))
        for path in [p for p in self.t_curves if p not in keep]:
            self.by_t.getPlotItem().removeItem(self.t_curves.pop(path))
        for i, (info, metrics) in enumerate(selected):
            steps, losses, smooth = metrics.curve()
            raw_pen, smooth_pen = pens(i)
            if info.path not in self.curves:
                raw = pi.plot(pen=raw_pen)
                sm = pi.plot(pen=smooth_pen, name=info.name)
                for c in (raw, sm):
                    c.setDownsampling(auto=True, method="peak")
                    c.setClipToView(True)
                self.curves[info.path] = (raw, sm)
            raw, sm = self.curves[info.path]
            raw.setPen(raw_pen)
            sm.setPen(smooth_pen)
            raw.setData(steps, losses)
            sm.setData(steps, smooth)
            self._show_val(i, info, metrics)
            self._show_by_t(i, info)

    def _show_val(self, i: int, info: runs.RunInfo, metrics: runs.RunMetrics) -> None:
        steps, vals = metrics.val_curve()
        if not len(steps) and info.path not in self.val_curves:
            return
        if info.path not in self.val_curves:
            self.val_curves[info.path] = self.plot.getPlotItem().plot(name=f"{info.name} (validation)")
        self.val_curves[info.path].setPen(val_pen(i))
        self.val_curves[info.path].setData(steps, vals)

    def _show_by_t(self, i: int, info: runs.RunInfo) -> None:
        if not info.checkpoints:
            return
        ckpt = info.checkpoints[-1][1]
        if ckpt not in self._t_cache:
            self._t_cache[ckpt] = runs.timestep_loss(ckpt)
        by_t = self._t_cache[ckpt]
        if by_t is None:
            return
        if info.path not in self.t_curves:
            self.t_curves[info.path] = self.by_t.getPlotItem().plot(name=info.name)
        ok = np.isfinite(by_t)
        self.t_curves[info.path].setPen(pens(i)[1])
        self.t_curves[info.path].setData(np.arange(len(by_t))[ok], by_t[ok])


class SettingsDiff(QTableWidget):
    """The settings that differ between the selected runs: one row per setting, one column per run."""

    def show_runs(self, infos: list[runs.RunInfo]) -> None:
        rows = runs.settings_diff(infos)
        self.clear()
        self.setColumnCount(len(infos))
        self.setRowCount(len(rows))
        self.setHorizontalHeaderLabels([r.name for r in infos])
        self.setVerticalHeaderLabels([r.label for r in rows])
        for i, row in enumerate(rows):
            for j, v in enumerate(row.values):
                self.setItem(i, j, QTableWidgetItem(v))
        self.resizeColumnsToContents()


EVAL_COLUMNS = ("Run", "Step", "Fréchet distance", "Real vs real", "Recognisable / accuracy", "Samples",
                "Sampler", "Recorded")  # fmt: skip


def eval_row(name: str, res: dict) -> list[str]:
    """One quality result (EvalResult.to_dict() and when it was kept) as the quality history lists it."""

    def num(key: str, form: str) -> str:
        v = res.get(key)
        return form.format(v) if isinstance(v, int | float) else ""

    when = res.get("time")
    return [
        name,
        f"{int(res['model_step']):,}",
        num("frechet_distance", "{:.3f}"),
        num("frechet_distance_real", "{:.3f}"),
        num("sample_accuracy", "{:.0%}"),
        num("n", "{:,}"),
        f"{res.get('sampler', '?')}, {res.get('sampling_steps', '?')} steps",
        time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if isinstance(when, int | float) else "",
    ]


class EvalHistory(QWidget):
    """The quality results kept in the selected runs (RUN/evals/): a table, oldest step first, and their
    Fréchet distance over the steps, one colour per run."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.table = QTableWidget(0, len(EVAL_COLUMNS))
        self.table.setHorizontalHeaderLabels(EVAL_COLUMNS)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.plot = plot_widget("Quality over training (lower is better)", "step", "Fréchet distance")
        self.plot.getPlotItem().addLegend(offset=(-10, 10))
        self.curves: dict[Path, pg.PlotDataItem] = {}
        self.empty = QLabel(
            "No quality results kept in these runs: run the quality check in the Train tab, or "
            "ddpm-gui eval --run RUN."
        )
        self.empty.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.empty)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.plot, 1)

    def show_runs(self, infos: list[runs.RunInfo]) -> None:
        rows = [eval_row(info.name, res) for info in infos for res in info.evals]
        self.table.setRowCount(len(rows))
        for r, texts in enumerate(rows):
            for c, text in enumerate(texts):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.empty.setVisible(not rows)
        pi = self.plot.getPlotItem()
        for path in list(self.curves):
            pi.removeItem(self.curves.pop(path))
        for i, info in enumerate(infos):
            if info.evals:
                x = [r["model_step"] for r in info.evals]
                y = [r["frechet_distance"] for r in info.evals]
                pen = pens(i)[1]
                self.curves[info.path] = pi.plot(
                    x, y, pen=pen, symbol="o", symbolBrush=pen.color(), name=info.name
                )


def pixmap(image: np.ndarray, scale: int = 1) -> QPixmap:
    """A (H, W, 3) uint8 image as a QPixmap, upscaled `scale` times (nearest: crisp pixels)."""
    img = np.ascontiguousarray(image)
    h, w, _c = img.shape
    q = QImage(img.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    pm = QPixmap.fromImage(q)
    return pm.scaled(w * scale, h * scale, Qt.AspectRatioMode.KeepAspectRatio) if scale > 1 else pm


class _Strip(QScrollArea):
    """A horizontal row of captioned images."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self._inner = QWidget()
        self.row = QHBoxLayout(self._inner)
        self.row.addStretch(1)
        self.setWidget(self._inner)
        self.captions: list[str] = []

    def clear(self) -> None:
        while self.row.count() > 1:
            w = self.row.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.captions = []

    def add(self, pm: QPixmap, caption: str) -> None:
        box = QWidget()
        v = QVBoxLayout(box)
        img = QLabel()
        img.setPixmap(pm)
        v.addWidget(img, 0, Qt.AlignmentFlag.AlignHCenter)
        v.addWidget(QLabel(caption), 0, Qt.AlignmentFlag.AlignHCenter)
        self.row.insertWidget(self.row.count() - 1, box)
        self.captions.append(caption)


class PreviewCompare(QWidget):
    """The selected runs' preview grids at one step (the newest one they all have, or one chosen)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.step_combo = QComboBox()
        self.step_combo.setToolTip(
            "The training step whose preview grids are shown (else the nearest before)"
        )
        self.step_combo.currentIndexChanged.connect(lambda *_: self._draw())
        self.strip = _Strip()
        top = QHBoxLayout()
        top.addWidget(QLabel("Previews at step:"))
        top.addWidget(self.step_combo)
        top.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.strip, 1)
        self._infos: list[runs.RunInfo] = []
        self._key: tuple = ()

    def show_runs(self, infos: list[runs.RunInfo]) -> None:
        grids = [runs.previews(i.path) for i in infos]
        key = (tuple(i.path for i in infos), tuple(len(g) for g in grids))
        if key == self._key:
            return  # nothing new: keep the step the user chose
        self._key, self._infos = key, infos
        steps = sorted({s for g in grids for s, _p in g}, reverse=True)
        common = runs.common_step([s for s, _p in g] for g in grids)
        self.step_combo.blockSignals(True)
        self.step_combo.clear()
        for s in steps:
            self.step_combo.addItem(f"{s:,}", s)
        if steps:
            self.step_combo.setCurrentIndex(steps.index(common) if common in steps else 0)
        self.step_combo.blockSignals(False)
        self._draw()

    def _draw(self) -> None:
        self.strip.clear()
        step = self.step_combo.currentData()
        if step is None:
            return
        for info in self._infos:
            found = runs.nearest_preview(info.path, int(step))
            if found is None:
                continue
            pm = QPixmap(str(found[1]))
            if not pm.isNull():
                self.strip.add(pm.scaled(pm.width() * 2, pm.height() * 2), f"{info.name} @ {found[0]:,}")


class LearningStrip(_Strip):
    """'Watch it learn': one grid per kept checkpoint, the same noise sampled through each."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.frames: list[tuple[int, np.ndarray]] = []  # (step, grid image)

    def clear(self) -> None:
        super().clear()
        self.frames = []

    def add_frame(self, step: int, images: np.ndarray) -> None:
        grid = make_grid(images, pad=1)
        self.frames.append((step, grid))
        self.add(pixmap(grid, scale=max(1, 96 // max(grid.shape[0], 1))), f"step {step:,}")
