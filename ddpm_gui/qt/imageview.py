"""The image widget shared by the panels: a fast mosaic grid (the frame player is in qt/player.py).

ImageGrid draws N small images as ONE mosaic array in one pyqtgraph ImageItem (row-major HxWx3 uint8,
autoLevels off: no per-image widgets, no float conversion), upscaled nearest-neighbour.

API (kept stable for the other panels):

    grid = ImageGrid(parent=None, columns=None, captions_visible=True)
    grid.set_images(images, captions=None, columns=None)   # (N,H,W,3) or (H,W,3) uint8; (N,H,W) grey ok
    grid.clear()
    grid.count() -> int                                      # number of images shown
    grid.mosaic() -> np.ndarray                              # the composed HxWx3 uint8 image (export)
    grid.clicked: Signal(int)                                # index of the image clicked
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor, QFontMetrics, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ImageGrid", "as_hw3_batch", "background_rgb"]


def background_rgb(widget: QWidget | None = None) -> tuple[int, int, int]:
    """The colour behind images: the palette's Base colour (matches the app style)."""
    pal = widget.palette() if widget is not None else QApplication.palette()
    c = pal.color(QPalette.ColorRole.Base)
    return c.red(), c.green(), c.blue()


def as_hw3_batch(images) -> np.ndarray:
    """Any of (H,W), (H,W,3), (N,H,W), (N,H,W,1), (N,H,W,3) uint8 (or a tensor) -> (N,H,W,3) uint8."""
    if hasattr(images, "detach"):  # a torch tensor, without importing torch here
        images = images.detach().cpu().numpy()
    a = np.asarray(images)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[..., None] if a.shape[-1] not in (1, 3, 4) else a[None]
    if a.ndim != 4:
        raise ValueError(f"expected images shaped (N,H,W,3), got {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        a = a[..., :3]
    return np.ascontiguousarray(a)


class _GridView(pg.GraphicsLayoutWidget):
    def __init__(self, grid: ImageGrid):
        super().__init__(grid)
        self._grid = grid

    def sizeHint(self) -> QSize:
        return QSize(320, 240)

    def wheelEvent(self, event) -> None:
        # the view never zooms (mouse interaction is off): the wheel turns pages where the owner pages
        steps = event.angleDelta().y() // 120
        if steps:
            self._grid.wheeled.emit(-int(steps))  # wheel down (negative delta): the next page
        event.accept()


class ImageGrid(QWidget):
    """N images as one nearest-neighbour mosaic with optional captions under each image."""

    clicked = Signal(int)
    wheeled = Signal(int)  # mouse-wheel notches over the grid: +1 = down (next page), -1 = up

    PAD = 2  # mosaic pixels between tiles
    CAPTION_PX = 16  # screen pixels reserved under each tile for its caption
    MIN_CAPTION_TILE_PX = 36  # captions are hidden when tiles are shown smaller than this

    def __init__(
        self, parent: QWidget | None = None, columns: int | None = None, captions_visible: bool = True
    ):
        super().__init__(parent)
        self._images = np.zeros((0, 1, 1, 3), np.uint8)
        self._captions: list[str] | None = None
        self._columns = columns
        self._captions_visible = captions_visible
        self._layout: tuple[int, int, int, int] = (1, 1, 1, 1)  # cols, rows, pitch_x, pitch_y
        self._mosaic = np.zeros((1, 1, 3), np.uint8)
        self._text_items: list[pg.TextItem] = []

        self._view_widget = _GridView(self)
        bg = background_rgb(self)
        self._view_widget.setBackground(QColor(*bg))
        self._view_widget.ci.setContentsMargins(0, 0, 0, 0)
        self._vb: pg.ViewBox = self._view_widget.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self._vb.setMouseEnabled(False, False)
        self._vb.setDefaultPadding(0.0)
        self._item = pg.ImageItem(axisOrder="row-major")
        self._vb.addItem(self._item)
        self._view_widget.scene().sigMouseClicked.connect(self._on_scene_click)
        self._view_widget.setFocusPolicy(Qt.FocusPolicy.NoFocus)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._view_widget)
        self.setMinimumSize(64, 64)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

        self._relayout_timer = QTimer(self)
        self._relayout_timer.setSingleShot(True)
        self._relayout_timer.setInterval(40)
        self._relayout_timer.timeout.connect(self._compose)

    # ------------------------------------------------------------------ public API
    def set_images(self, images, captions: list[str] | None = None, columns: int | None = None) -> None:
        """Show `images` ((N,H,W,3) uint8). `columns` fixes the column count (else auto-fit)."""
        a = as_hw3_batch(images)
        if captions is not None and len(captions) != len(a):
            raise ValueError(f"{len(captions)} captions for {len(a)} images")
        self._images = a
        self._captions = list(captions) if captions is not None else None
        if columns is not None:
            self._columns = columns
        self._compose()

    def set_columns(self, columns: int | None) -> None:
        self._columns = columns
        self._compose()

    def set_captions_visible(self, visible: bool) -> None:
        self._captions_visible = visible
        self._compose()

    def clear(self) -> None:
        self._images = np.zeros((0, 1, 1, 3), np.uint8)
        self._captions = None
        self._compose()

    def count(self) -> int:
        return len(self._images)

    def images(self) -> np.ndarray:
        return self._images

    def captions(self) -> list[str] | None:
        return self._captions

    def columns(self) -> int:
        """Columns of the current layout."""
        return self._layout[0]

    def mosaic(self) -> np.ndarray:
        """The composed image currently shown (HxWx3 uint8), gaps filled with the background."""
        return self._mosaic.copy()

    def index_at(self, x: float, y: float) -> int:
        """Index of the image under mosaic coordinates (x, y), or -1."""
        cols, rows, px, py = self._layout
        if x < 0 or y < 0 or not len(self._images):
            return -1
        c, r = int(x // px), int(y // py)
        h, w = self._images.shape[1:3]
        if c >= cols or r >= rows or (x - c * px) >= w or (y - r * py) >= h:
            return -1
        i = r * cols + c
        return i if i < len(self._images) else -1

    def view_box(self) -> pg.ViewBox:
        return self._vb

    def image_item(self) -> pg.ImageItem:
        return self._item

    # ------------------------------------------------------------------ layout
    def _show_captions(self) -> bool:
        return bool(self._captions_visible and self._captions)

    def _choose_layout(self, width: float, height: float) -> tuple[int, float]:
        """(columns, screen pixels per mosaic pixel) that make the tiles as large as possible."""
        n = len(self._images)
        h, w = self._images.shape[1:3]
        cap = self.CAPTION_PX if self._show_captions() else 0
        width, height = max(width, 16.0), max(height, 16.0)

        def scale_for(cols: int) -> float:
            rows = math.ceil(n / cols)
            sx = width / (cols * (w + self.PAD))
            sy = (height / rows - cap) / (h + self.PAD)
            return max(min(sx, sy), 1e-3)

        if self._columns:
            cols = max(1, min(self._columns, n))
            return cols, scale_for(cols)
        best = max(range(1, n + 1), key=lambda c: (scale_for(c), -abs(c - math.sqrt(n))))
        return best, scale_for(best)

    def _compose(self) -> None:
        for t in self._text_items:
            self._vb.removeItem(t)
        self._text_items = []
        n = len(self._images)
        bg = np.array(background_rgb(self), np.uint8)
        if n == 0:
            self._mosaic = np.zeros((1, 1, 3), np.uint8) + bg
            self._layout = (1, 1, 1, 1)
            self._item.clear()
            return
        h, w = self._images.shape[1:3]
        vw, vh = self._view_size()
        cols, scale = self._choose_layout(vw, vh)
        if scale >= 2 and math.floor(scale) / scale >= 0.85:
            # whole screen pixels per image pixel (every pixel the same size) when that costs little room
            scale = math.floor(scale)
        rows = math.ceil(n / cols)
        show_caps = self._show_captions() and scale * w >= self.MIN_CAPTION_TILE_PX
        cap_gap = math.ceil(self.CAPTION_PX / scale) if show_caps else 0
        px, py = w + self.PAD, h + self.PAD + cap_gap
        H, W = rows * py - self.PAD, cols * px - self.PAD
        mosaic = np.empty((max(H, 1), max(W, 1), 3), np.uint8)
        mosaic[:] = bg
        for i in range(n):
            r, c = divmod(i, cols)
            mosaic[r * py : r * py + h, c * px : c * px + w] = self._images[i]
        self._mosaic = mosaic
        self._layout = (cols, rows, px, py)
        self._item.setImage(mosaic, autoLevels=False, levels=(0, 255))
        self._item.setRect(0, 0, mosaic.shape[1], mosaic.shape[0])
        if show_caps:
            fg = self.palette().color(QPalette.ColorRole.Text)
            font = self.font()
            font.setPointSizeF(max(7.0, font.pointSizeF() * 0.9))
            metrics = QFontMetrics(font)
            room = max(8, int(scale * px) - 4)  # screen pixels available under one tile
            for i, text in enumerate(self._captions or []):
                r, c = divmod(i, cols)
                shown = metrics.elidedText(text, Qt.TextElideMode.ElideRight, room)
                item = pg.TextItem(shown, color=fg, anchor=(0.5, 0.0))
                item.setFont(font)
                if shown != text:
                    item.setToolTip(text)
                item.setPos(QPointF(c * px + w / 2, r * py + h))
                self._vb.addItem(item)
                self._text_items.append(item)
        # centre the mosaic in the view at exactly `scale` screen pixels per image pixel
        cx, cy = mosaic.shape[1] / 2, mosaic.shape[0] / 2
        half_w, half_h = max(vw, 1) / (2 * scale), max(vh, 1) / (2 * scale)
        self._vb.setRange(xRange=(cx - half_w, cx + half_w), yRange=(cy - half_h, cy + half_h), padding=0.0)

    def _view_size(self) -> tuple[float, float]:
        """Pixels the ViewBox covers (the whole view widget when not laid out yet)."""
        g = self._vb.geometry()
        if g.width() > 1 and g.height() > 1:
            return g.width(), g.height()
        return float(self._view_widget.width()), float(self._view_widget.height())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if len(self._images):
            self._relayout_timer.start()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if len(self._images):
            self._compose()

    @Slot(object)
    def _on_scene_click(self, ev) -> None:
        if ev.button() != Qt.MouseButton.LeftButton:
            return
        p = self._vb.mapSceneToView(ev.scenePos())
        i = self.index_at(p.x(), p.y())
        if i >= 0:
            self.clicked.emit(i)
