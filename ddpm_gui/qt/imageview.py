"""Image widgets shared by the panels: a fast mosaic grid and a frame player.

ImageGrid draws N small images as ONE mosaic array in one pyqtgraph ImageItem (row-major HxWx3 uint8,
autoLevels off: no per-image widgets, no float conversion), upscaled nearest-neighbour. FramePlayer is
the play/pause/step/scrub bar used for every frame-by-frame view (forward process, sampling, denoising).

API (kept stable for the other panels):

    grid = ImageGrid(parent=None, columns=None, captions_visible=True)
    grid.set_images(images, captions=None, columns=None)   # (N,H,W,3) or (H,W,3) uint8; (N,H,W) grey ok
    grid.clear()
    grid.count() -> int                                      # number of images shown
    grid.mosaic() -> np.ndarray                              # the composed HxWx3 uint8 image (export)
    grid.clicked: Signal(int)                                # index of the image clicked

    player = FramePlayer(parent=None, fps=10)
    player.append_frame(item)            # frames arrive incrementally; follows the newest in live mode
    player.set_frames(items)             # replace all frames at once
    player.set_count(n)                  # frames held by the owner: the player only counts 0..n-1
    player.set_expected(n)               # total expected while frames arrive (label "step i / n")
    player.clear()
    player.count() -> int; player.frame(i) -> item | None; player.current() -> int
    player.set_current(i); player.play(); player.pause(); player.toggle(); player.is_playing()
    player.step(+1 | -1); player.set_fps(fps); player.fps() -> int; player.set_loop(bool)
    player.set_label_func(fn: (index, count) -> str)       # replaces "step i / n"
    player.install_shortcuts(widget)     # Space / Left / Right also work while focus is inside `widget`
    player.frameChanged: Signal(int); player.playingChanged: Signal(bool)
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor, QFontMetrics, QKeySequence, QPalette, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ImageGrid", "FramePlayer", "as_hw3_batch", "background_rgb"]


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


class FramePlayer(QWidget):
    """Play/pause, step, scrub and speed for a sequence of frames that may still be arriving."""

    frameChanged = Signal(int)
    playingChanged = Signal(bool)

    FPS_CHOICES = (1, 2, 5, 10, 15, 24, 30, 60)

    def __init__(self, parent: QWidget | None = None, fps: int = 10):
        super().__init__(parent)
        self._items: list = []
        self._count = 0
        self._expected = 0
        self._current = -1
        self._loop = True
        self._label_func = None
        self._shortcuts: list[QShortcut] = []

        st = self.style()
        self._play_btn = QToolButton(self)
        self._play_btn.setToolTip("Play / pause (Space)")
        self._play_btn.setCheckable(True)
        self._play_btn.setText("Play")
        self._play_btn.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self._play_btn.setIcon(st.standardIcon(QStyle.StandardPixmap.SP_MediaPlay))
        self._play_btn.toggled.connect(self._on_play_toggled)

        self._back_btn = QToolButton(self)
        self._back_btn.setIcon(st.standardIcon(QStyle.StandardPixmap.SP_MediaSeekBackward))
        self._back_btn.setToolTip("Step back (Left)")
        self._back_btn.setAccessibleName("Step back")
        self._back_btn.setAutoRepeat(True)
        self._back_btn.clicked.connect(lambda: self.step(-1))

        self._fwd_btn = QToolButton(self)
        self._fwd_btn.setIcon(st.standardIcon(QStyle.StandardPixmap.SP_MediaSeekForward))
        self._fwd_btn.setToolTip("Step forward (Right)")
        self._fwd_btn.setAccessibleName("Step forward")
        self._fwd_btn.setAutoRepeat(True)
        self._fwd_btn.clicked.connect(lambda: self.step(+1))

        self._slider = QSlider(Qt.Orientation.Horizontal, self)
        self._slider.setRange(0, 0)
        self._slider.setToolTip("Scrub through the frames")
        self._slider.setAccessibleName("Frame")
        self._slider.valueChanged.connect(self._on_slider)

        self._fps_combo = QComboBox(self)
        for f in self.FPS_CHOICES:
            self._fps_combo.addItem(f"{f} fps", f)
        self._fps_combo.setToolTip("Playback speed")
        self._fps_combo.setAccessibleName("Playback speed")
        self._fps_combo.currentIndexChanged.connect(self._on_fps)

        self._label = QLabel(self)
        self._label.setMinimumWidth(90)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._back_btn)
        lay.addWidget(self._play_btn)
        lay.addWidget(self._fwd_btn)
        lay.addWidget(self._slider, 1)
        lay.addWidget(self._fps_combo)
        lay.addWidget(self._label)

        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self.set_fps(fps)
        self.install_shortcuts(self)
        self._update_ui()

    # ------------------------------------------------------------------ frames
    def append_frame(self, item=None) -> None:
        """Add one frame. If the view was on the last frame (or empty), it follows the newest."""
        following = self._current >= self._count - 1
        self._items.append(item)
        self._count = max(self._count + 1, len(self._items))
        self._slider.blockSignals(True)
        self._slider.setRange(0, self._count - 1)
        self._slider.blockSignals(False)
        if following and not self.is_playing():
            self.set_current(self._count - 1)
        else:
            self._update_ui()

    def set_frames(self, items: list) -> None:
        """Replace every frame; the view goes to frame 0 (or stays, if still in range)."""
        self._items = list(items)
        self._count = len(self._items)
        self._set_range_keep()

    def set_count(self, n: int) -> None:
        """The owner holds the frames itself; the player only counts 0..n-1."""
        self._items = self._items[:n]
        self._count = int(n)
        self._set_range_keep()

    def set_expected(self, n: int) -> None:
        """Total number of frames expected while they still arrive (0: unknown / all there)."""
        self._expected = int(n)
        self._update_ui()

    def clear(self) -> None:
        self.pause()
        self._items = []
        self._count = 0
        self._expected = 0
        self._current = -1
        self._slider.blockSignals(True)
        self._slider.setRange(0, 0)
        self._slider.setValue(0)
        self._slider.blockSignals(False)
        self._update_ui()

    def count(self) -> int:
        return self._count

    def frame(self, i: int | None = None):
        i = self._current if i is None else i
        return self._items[i] if 0 <= i < len(self._items) else None

    def current(self) -> int:
        return self._current

    def set_current(self, i: int) -> None:
        if self._count == 0:
            return
        i = max(0, min(int(i), self._count - 1))
        changed = i != self._current
        self._current = i
        self._slider.blockSignals(True)
        self._slider.setValue(i)
        self._slider.blockSignals(False)
        self._update_ui()
        if changed:
            self.frameChanged.emit(i)

    def _set_range_keep(self) -> None:
        self._slider.blockSignals(True)
        self._slider.setRange(0, max(self._count - 1, 0))
        self._slider.blockSignals(False)
        if self._count == 0:
            self._current = -1
            self._update_ui()
            return
        cur = self._current if 0 <= self._current < self._count else 0
        self._current = -1  # force a frameChanged: the frames behind the index are new
        self.set_current(cur)

    # ------------------------------------------------------------------ playback
    def play(self) -> None:
        self._play_btn.setChecked(True)

    def pause(self) -> None:
        self._play_btn.setChecked(False)

    def toggle(self) -> None:
        self._play_btn.toggle()

    def is_playing(self) -> bool:
        return self._play_btn.isChecked()

    def step(self, delta: int) -> None:
        if self._count:
            self.set_current(self._current + delta)

    def set_fps(self, fps: int) -> None:
        idx = min(range(len(self.FPS_CHOICES)), key=lambda k: abs(self.FPS_CHOICES[k] - fps))
        self._fps_combo.setCurrentIndex(idx)
        self._on_fps()

    def fps(self) -> int:
        return int(self._fps_combo.currentData())

    def set_loop(self, loop: bool) -> None:
        self._loop = loop

    def set_label_func(self, fn) -> None:
        """fn(index, count) -> str replaces the default "step i / n" label."""
        self._label_func = fn
        self._update_ui()

    def install_shortcuts(self, widget: QWidget) -> None:
        """Space (play/pause), Left and Right (step) while the focus is inside `widget`."""
        for key, slot in (
            (Qt.Key.Key_Space, self.toggle),
            (Qt.Key.Key_Left, lambda: self.step(-1)),
            (Qt.Key.Key_Right, lambda: self.step(+1)),
        ):
            sc = QShortcut(QKeySequence(key), widget)
            sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            sc.activated.connect(slot)
            self._shortcuts.append(sc)

    @Slot(bool)
    def _on_play_toggled(self, playing: bool) -> None:
        st = self.style()
        if playing:
            if self._count and self._current >= self._count - 1 and not self._expected_more():
                self.set_current(0)  # replay from the start
            self._timer.start()
            self._play_btn.setText("Pause")
            self._play_btn.setIcon(st.standardIcon(QStyle.StandardPixmap.SP_MediaPause))
        else:
            self._timer.stop()
            self._play_btn.setText("Play")
            self._play_btn.setIcon(st.standardIcon(QStyle.StandardPixmap.SP_MediaPlay))
        self.playingChanged.emit(playing)

    def _expected_more(self) -> bool:
        return self._expected > self._count

    @Slot()
    def _tick(self) -> None:
        if self._count == 0:
            return
        if self._current < self._count - 1:
            self.set_current(self._current + 1)
        elif self._expected_more():
            pass  # live: wait at the newest frame for the next one
        elif self._loop:
            self.set_current(0)
        else:
            self.pause()

    @Slot()
    def _on_fps(self, *_args) -> None:
        self._timer.setInterval(max(1, round(1000 / self.fps())))

    @Slot(int)
    def _on_slider(self, v: int) -> None:
        self.set_current(v)

    def _update_ui(self) -> None:
        n = self._count
        has = n > 0
        for w in (self._play_btn, self._slider):
            w.setEnabled(has)
        self._back_btn.setEnabled(has and self._current > 0)
        self._fwd_btn.setEnabled(has and self._current < n - 1)
        if self._label_func is not None and has:
            text = self._label_func(self._current, n)
        elif has:
            total = max(self._expected, n) - 1
            text = f"step {self._current} / {total}"
        else:
            text = "no frames"
        self._label.setText(text)
