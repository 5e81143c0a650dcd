"""Painting an inpainting mask with the mouse: MaskPainter shows an image large (nearest-neighbour) with the
painted region over it in translucent red; the left button paints, the right button erases, with a round
brush measured in image pixels. MaskEditor adds the brush size and the Clear and Invert buttons.

The mask has the image's own resolution (the model's size): one mask pixel per image pixel, True where the
image is regenerated. A new image of the same size keeps the mask, so one region can be tried on many
images; an image of another size (another model) gets the mask resized nearest-neighbour.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal, Slot
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPen
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QSpinBox, QVBoxLayout, QWidget

from ddpm_gui.qt.imageview import as_hw3_batch, background_rgb
from ddpm_gui.qt.style import INFO_STYLE
from ddpm_gui.qt.widgets import button

__all__ = ["MASK_RGBA", "MaskEditor", "MaskPainter", "resize_mask"]

MASK_RGBA = (230, 40, 40, 140)  # the painted region's colour over the image
DEFAULT_BRUSH = 4  # brush diameter in image pixels


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """An (H, W) bool mask at (size, size), nearest-neighbour."""
    h, w = mask.shape
    if (h, w) == (size, size):
        return mask.copy()
    rows = (np.arange(size) * h // size).clip(0, h - 1)
    cols = (np.arange(size) * w // size).clip(0, w - 1)
    return mask[rows][:, cols]


def _qimage(rgb: np.ndarray) -> QImage:
    h, w = rgb.shape[:2]
    data = np.ascontiguousarray(rgb)
    fmt = QImage.Format.Format_RGBA8888 if rgb.shape[2] == 4 else QImage.Format.Format_RGB888
    return QImage(data.data, w, h, data.strides[0], fmt).copy()  # the copy owns its pixels


class MaskPainter(QWidget):
    """An image with a paintable mask. maskChanged follows every change of the mask."""

    maskChanged = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._image = np.zeros((1, 1, 3), np.uint8)
        self._mask = np.zeros((1, 1), bool)
        self._qimage = _qimage(self._image)
        self._overlay = _qimage(np.zeros((1, 1, 4), np.uint8))
        self._brush = DEFAULT_BRUSH
        self._stroke: bool | None = None  # True: painting, False: erasing, None: no button held
        self._last: QPointF | None = None  # the previous point of the stroke, in image pixels
        self._hover: QPointF | None = None
        self.setMouseTracking(True)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.setMinimumSize(96, 96)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip("Left button: paint the region to regenerate · right button: erase")

    # ------------------------------------------------------------------ public API
    def set_image(self, image: np.ndarray) -> None:
        """Show `image` ((H, W, 3) uint8); the mask keeps its shape, resized if the image's size changed."""
        self._image = as_hw3_batch(image)[0]
        self._qimage = _qimage(self._image)
        h, w = self._image.shape[:2]
        if self._mask.shape != (h, w):
            self._mask = resize_mask(self._mask, h) if h == w else np.zeros((h, w), bool)
            self._update_overlay()
        self.update()

    def image(self) -> np.ndarray:
        return self._image

    def mask(self) -> np.ndarray:
        """(H, W) bool, True where the image is regenerated."""
        return self._mask.copy()

    def set_mask(self, mask: np.ndarray) -> None:
        m = np.asarray(mask, bool)
        if m.shape != self._image.shape[:2]:
            raise ValueError(f"a {m.shape} mask for a {self._image.shape[:2]} image")
        self._mask = m.copy()
        self._changed()

    def clear(self) -> None:
        self._mask[:] = False
        self._changed()

    def invert(self) -> None:
        self._mask = ~self._mask
        self._changed()

    def painted(self) -> int:
        """The number of painted pixels."""
        return int(self._mask.sum())

    def brush(self) -> int:
        return self._brush

    def set_brush(self, diameter: int) -> None:
        self._brush = max(1, int(diameter))
        self.update()

    def image_rect(self) -> QRectF:
        """Where the image is drawn: the largest centred rectangle of its aspect ratio."""
        h, w = self._image.shape[:2]
        scale = min(self.width() / w, self.height() / h)
        dw, dh = w * scale, h * scale
        return QRectF((self.width() - dw) / 2, (self.height() - dh) / 2, dw, dh)

    def to_image(self, pos: QPointF) -> QPointF:
        """Widget coordinates -> image pixel coordinates (pixel (i, j) covers [j, j+1) x [i, i+1))."""
        r = self.image_rect()
        h, w = self._image.shape[:2]
        return QPointF((pos.x() - r.left()) * w / r.width(), (pos.y() - r.top()) * h / r.height())

    def to_widget(self, x: float, y: float) -> QPointF:
        """Image pixel coordinates -> widget coordinates (the inverse of to_image)."""
        r = self.image_rect()
        h, w = self._image.shape[:2]
        return QPointF(r.left() + x * r.width() / w, r.top() + y * r.height() / h)

    def sizeHint(self) -> QSize:
        return QSize(256, 256)

    # ------------------------------------------------------------------ painting
    def _dab(self, p: QPointF, value: bool) -> None:
        """A disk of the brush's diameter centred on p (image pixels): pixels whose centres it covers."""
        h, w = self._mask.shape
        if self._brush == 1:  # a one-pixel brush: the pixel under the cursor, wherever in it
            i, j = int(np.floor(p.y())), int(np.floor(p.x()))
            if 0 <= i < h and 0 <= j < w:
                self._mask[i, j] = value
            return
        yy, xx = np.ogrid[0:h, 0:w]
        self._mask[(xx + 0.5 - p.x()) ** 2 + (yy + 0.5 - p.y()) ** 2 <= (self._brush / 2) ** 2] = value

    def _stroke_to(self, p: QPointF) -> None:
        """Dabs from the stroke's last point to p, close enough that a fast drag leaves no gaps."""
        a = self._last if self._last is not None else p
        dist = ((p.x() - a.x()) ** 2 + (p.y() - a.y()) ** 2) ** 0.5
        n = max(1, int(np.ceil(dist / max(self._brush / 4, 0.25))))
        for k in range(1, n + 1):
            f = k / n
            self._dab(QPointF(a.x() + f * (p.x() - a.x()), a.y() + f * (p.y() - a.y())), bool(self._stroke))
        self._last = p
        self._changed()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # Qt API
        if event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            self._stroke = event.button() == Qt.MouseButton.LeftButton
            self._last = None
            self._stroke_to(self.to_image(event.position()))
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # Qt API
        p = self.to_image(event.position())
        self._hover = p
        if self._stroke is not None:
            self._stroke_to(p)
        else:
            self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # Qt API
        if self._stroke is not None:
            self._stroke_to(self.to_image(event.position()))
        self._stroke, self._last = None, None

    def leaveEvent(self, event) -> None:  # Qt API
        self._hover = None
        self.update()
        super().leaveEvent(event)

    def _changed(self) -> None:
        self._update_overlay()
        self.update()
        self.maskChanged.emit()

    def _update_overlay(self) -> None:
        rgba = np.zeros((*self._mask.shape, 4), np.uint8)
        rgba[self._mask] = MASK_RGBA
        self._overlay = _qimage(rgba)

    def paintEvent(self, _event) -> None:  # Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(*background_rgb(self)))
        r = self.image_rect()
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)  # nearest: every pixel visible
        p.drawImage(r, self._qimage)
        p.drawImage(r, self._overlay)
        if self._hover is not None and r.width() > 0:
            scale = r.width() / self._image.shape[1]
            centre = self.to_widget(self._hover.x(), self._hover.y())
            rad = self._brush / 2 * scale
            p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            p.setBrush(Qt.BrushStyle.NoBrush)
            for colour, width in ((QColor(0, 0, 0, 160), 3), (QColor(255, 255, 255, 220), 1)):
                p.setPen(QPen(colour, width))
                p.drawEllipse(centre, rad, rad)
        p.end()


class MaskEditor(QWidget):
    """A MaskPainter with its tools: the brush size, Clear and Invert, and how many pixels are painted."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.painter = MaskPainter(self)
        self.brush_spin = QSpinBox()
        self.brush_spin.setRange(1, 64)
        self.brush_spin.setValue(DEFAULT_BRUSH)
        self.brush_spin.setSuffix(" px")
        self.brush_spin.setToolTip("Brush diameter, in pixels of the image (the model's size)")
        self.brush_spin.valueChanged.connect(self.painter.set_brush)
        self.clear_btn = button("Clear", self.painter.clear, "Erase the whole mask")
        self.invert_btn = button(
            "Invert", self.painter.invert, "Regenerate everything but the painted region"
        )
        self.info = QLabel()
        self.info.setStyleSheet(INFO_STYLE)
        self.info.setWordWrap(True)
        brush_label = QLabel("&Brush:")
        brush_label.setBuddy(self.brush_spin)
        tools = QHBoxLayout()
        tools.setContentsMargins(0, 0, 0, 0)
        for w in (brush_label, self.brush_spin, self.clear_btn, self.invert_btn):
            tools.addWidget(w)
        tools.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.painter, 1)
        lay.addLayout(tools)
        lay.addWidget(self.info)
        self.painter.maskChanged.connect(self._update_info)
        self._update_info()

    @Slot()
    def _update_info(self) -> None:
        h, w = self.painter.image().shape[:2]
        n = self.painter.painted()
        self.info.setText(
            f"{n} of {h * w} pixels painted ({100 * n / (h * w):.0f}%) to regenerate · left button paints, "
            "right button erases"
        )
