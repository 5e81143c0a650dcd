"""The Sample tab's "Step terms" view: every term of the reverse step under the player's slider, for one image.

The frames are engine.terms.TermsFrames (sample_frames_with_terms): each holds the term images of the first
few images of the batch and the norm of every term of every image at the steps since the frame before. The
view shows the chosen image's terms as one ImageGrid (x_t, eps-hat, x_0-hat / the deterministic part, sigma_t z,
x_(t-1) / under guidance the conditional and unconditional eps-hat and their difference), and the norms of its
terms over the whole chain in one plot, a line at the frame's timestep.

    view = StepTermsView()
    view.clear(); view.add_frame(frame)        # as frames arrive: their norms join the plot
    view.show_frame(frame)                    # the frame under the slider (None: nothing)
    view.set_image(i); view.image() -> int    # the image whose terms are shown (the Sample grids' clicks)
    view.imageChanged: Signal(int)
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSpinBox, QSplitter, QVBoxLayout, QWidget

from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.lossplot import plot_widget
from ddpm_gui.qt.style import INFO_STYLE, PLOT_PENS, TEXT

__all__ = ["StepTermsView"]

# captions under the tiles: short (a tile may be small); the plot's legend uses core.terms.TERM_LABELS
SHORT = {
    "x_t": "x_t",
    "eps": "ε̂",
    "x0": "x̂₀",
    "mean": "mean",
    "noise": "σ_t·z",
    "x_prev": "x_(t-1)",
    "eps_cond": "ε̂ cond",
    "eps_uncond": "ε̂ uncond",
    "eps_diff": "ε̂_c − ε̂_u",
}
# line styles: one colour per step term, the guidance terms dashed in the colour of eps-hat
PENS = {
    "x_t": (PLOT_PENS[0], Qt.PenStyle.SolidLine),
    "eps": (PLOT_PENS[1], Qt.PenStyle.SolidLine),
    "x0": (PLOT_PENS[2], Qt.PenStyle.SolidLine),
    "mean": (PLOT_PENS[4], Qt.PenStyle.SolidLine),
    "noise": (PLOT_PENS[3], Qt.PenStyle.SolidLine),
    "x_prev": (TEXT, Qt.PenStyle.DotLine),
    "eps_cond": (PLOT_PENS[1], Qt.PenStyle.DashLine),
    "eps_uncond": (PLOT_PENS[1], Qt.PenStyle.DotLine),
    "eps_diff": (PLOT_PENS[3], Qt.PenStyle.DashLine),
}
EMPTY_TEXT = "Generate to see every term of each reverse step here."
NO_NOISE_TEXT = (
    "This sampler has no separate noise term (its step is not a deterministic part plus σ_t·z): shown are "
    "x_t, ε̂, x̂₀ and the step's result."
)


class StepTermsView(QWidget):
    imageChanged = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._ts: list[np.ndarray] = []  # per frame: the timesteps of its norms
        self._norms: list[np.ndarray] = []  # per frame: (k, terms, N)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        self._names: tuple[str, ...] = ()
        self._frame = None
        self.title = QLabel(EMPTY_TEXT)
        self.title.setWordWrap(True)
        self.image_spin = QSpinBox()
        self.image_spin.setRange(1, 1)
        self.image_spin.setPrefix("image ")
        self.image_spin.setToolTip("The image whose step terms are shown (or click it in the Samples grids)")
        self.image_spin.setAccessibleName("Image")
        self.image_spin.valueChanged.connect(self._on_spin)
        head = QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.image_spin)
        self.grid = ImageGrid(columns=6)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setStyleSheet(INFO_STYLE)
        self.plot = plot_widget("Norm of each term over the chain", "timestep t", "RMS per pixel")
        self.plot.setMinimumHeight(140)
        pi = self.plot.getPlotItem()
        pi.invertX(True)  # the chain runs from t = T-1 down to 0: left to right
        # the legend is a line of text under the plot: inside it, nine entries would hide the curves
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.marker = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(TEXT, width=1))
        self.marker.setVisible(False)
        pi.addItem(self.marker, ignoreBounds=True)
        self._curves: dict[str, pg.PlotDataItem] = {}
        top = QWidget()
        tv = QVBoxLayout(top)
        tv.setContentsMargins(0, 0, 0, 0)
        tv.addLayout(head)
        tv.addWidget(self.grid, 1)
        tv.addWidget(self.note)
        bottom = QWidget()
        bv = QVBoxLayout(bottom)
        bv.setContentsMargins(0, 0, 0, 0)
        bv.addWidget(self.plot, 1)
        bv.addWidget(self.legend)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(bottom)
        split.setSizes([500, 400])
        split.setChildrenCollapsible(False)
        self.splitter = split
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

    # ------------------------------------------------------------------ frames
    def clear(self) -> None:
        self._ts, self._norms, self._cache = [], [], None
        self._names, self._frame = (), None
        self.grid.clear()
        self.title.setText(EMPTY_TEXT)
        self.note.setText("")
        self.marker.setVisible(False)
        for curve in self._curves.values():
            self.plot.getPlotItem().removeItem(curve)
        self._curves = {}
        self.legend.setText("")

    def add_frame(self, frame) -> None:
        """A frame of the running chain: its norms join the plot (frames without terms are ignored)."""
        names = getattr(frame, "names", ())
        if not names:
            return
        if names != self._names:
            self.clear()
            self._names = tuple(names)
        self._ts.append(frame.norm_ts)
        self._norms.append(frame.norms)
        self._cache = None
        n = frame.norms.shape[2]
        if self.image_spin.maximum() != n:
            self.image_spin.setMaximum(n)
        self._plot_norms()

    def show_frame(self, frame) -> None:
        """The terms of the frame under the slider, for the chosen image."""
        self._frame = frame if getattr(frame, "names", ()) else None
        self._show()

    def image(self) -> int:
        return self.image_spin.value() - 1

    def set_image(self, i: int) -> None:
        self.image_spin.setValue(i + 1)  # valueChanged redraws (clamped to the batch)

    def names(self) -> tuple[str, ...]:
        return self._names

    def norms(self) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps (S,), norms (S, terms, N)) of every step received, in the chain's order."""
        if self._cache is None:
            if self._ts:
                self._cache = (np.concatenate(self._ts), np.concatenate(self._norms))
            else:
                self._cache = (np.zeros(0, np.int64), np.zeros((0, len(self._names), 0), np.float32))
        return self._cache

    # ------------------------------------------------------------------ drawing
    @Slot(int)
    def _on_spin(self, _value: int) -> None:
        self._plot_norms()
        self._show()
        self.imageChanged.emit(self.image())

    def _plot_norms(self) -> None:
        ts, norms = self.norms()
        i = self.image()
        if not len(ts) or i >= norms.shape[2]:
            return
        from ddpm_gui.core.terms import TERM_LABELS  # torch is loaded: frames came from the engine

        pi = self.plot.getPlotItem()
        if not self._curves:
            entries = []
            for name in self._names:
                colour, style = PENS.get(name, (TEXT, Qt.PenStyle.SolidLine))
                self._curves[name] = pi.plot(pen=pg.mkPen(colour, width=2, style=style))
                label = TERM_LABELS.get(name, name).replace(" ", "&nbsp;")  # an entry never wraps
                mark = "━━" if style == Qt.PenStyle.SolidLine else "╍╍"
                entries.append(f'<span style="color:{colour}">{mark}</span>&nbsp;{label}')
            self.legend.setText(" &nbsp; ".join(entries))
        for j, name in enumerate(self._names):
            self._curves[name].setData(ts.astype(np.float64), norms[:, j, i].astype(np.float64))

    def _show(self) -> None:
        f = self._frame
        i = self.image()
        if f is None:
            self.grid.clear()
            self.marker.setVisible(False)
            self.title.setText(EMPTY_TEXT)
            self.note.setText("")
            return
        self.marker.setPos(f.t)
        self.marker.setVisible(True)
        kept = len(next(iter(f.images.values())))
        self.title.setText(self._title(f, i))
        if i >= kept:
            self.grid.clear()
            self.note.setText(
                f"Term images were kept for the first {kept} images of this run (memory); the plot shows "
                f"image {i + 1}'s norms. Pick one of images 1–{kept}, or draw fewer or smaller images."
            )
            return
        ts, norms = self.norms()
        row = np.flatnonzero(ts == f.t)
        values = norms[row[-1], :, i] if len(row) else np.full(len(f.names), np.nan)
        from ddpm_gui.core.terms import GUIDANCE_TERMS  # torch is loaded: the frame came from the engine

        captions = [f"{SHORT.get(k, k)} {values[j]:.2f}" for j, k in enumerate(f.names)]
        # one row of the step's terms, the guidance terms in a row under them
        columns = len(f.names) - (len(GUIDANCE_TERMS) if "eps_diff" in f.names else 0)
        self.grid.set_images(np.stack([f.images[k][i] for k in f.names]), captions=captions, columns=columns)
        self.grid.setToolTip(self._tooltip(f, i, values))
        self.note.setText(self._note(f, i))

    def _title(self, f, i: int) -> str:
        ts, _ = self.norms()
        where = np.flatnonzero(ts == f.t)
        nxt = int(ts[where[-1] + 1]) if len(where) and where[-1] + 1 < len(ts) else -1
        to = f"t = {nxt}" if nxt >= 0 else "x₀"
        if f.final:
            to = "x₀ (the sample)"
        return f"<b>Step {f.index + 1} of {f.total}</b>: t = {f.t} → {to}"

    def _tooltip(self, f, i: int, values: np.ndarray) -> str:
        from ddpm_gui.core.terms import TERM_LABELS

        rows = []
        for j, k in enumerate(f.names):
            gain = float(f.gains[k][i])
            shown = f", shown ×{gain:.3g}" if gain != 1.0 and values[j] > 0 else ""
            rows.append(f"{TERM_LABELS.get(k, k)}: RMS {values[j]:.4g}{shown}")
        return "\n".join(rows)

    def _note(self, f, i: int) -> str:
        parts = []
        if f.sigma is None:
            parts.append(NO_NOISE_TEXT)
        else:
            parts.append(f"x_(t-1) = mean + σ_t·z with σ_t = {float(f.sigma[i]):.4g}.")
        if "eps_diff" in f.names:
            parts.append("Guidance: ε̂ = ε̂_u + w (ε̂_c − ε̂_u).")
        parts.append("Numbers: RMS per pixel; noise-like terms are shown scaled so ±3 RMS fill the range.")
        return " ".join(parts)
