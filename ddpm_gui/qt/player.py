"""The frame player: play/pause, step, scrub and speed for every frame-by-frame view (the forward process,
sampling, denoising).

    player = FramePlayer(parent=None, fps=10)
    player.append_frame(item)            # frames arrive incrementally; follows the newest in live mode
    player.set_frames(items)             # replace all frames at once
    player.set_count(n)                  # frames held by the owner: the player only counts 0..n-1
    player.set_expected(n)               # total expected while frames arrive (label "step i / n")
    player.clear()
    player.count() -> int; player.frame(i) -> item | None; player.current() -> int
    player.set_current(i); player.play(); player.pause(); player.toggle(); player.is_playing()
    player.step(+1 | -1); player.set_fps(fps); player.fps() -> int; player.set_loop(bool)
    player.set_label_func(fn: (index, count) -> str, widest="")  # replaces "step i / n"
    player.install_shortcuts(widget)     # Space / Left / Right also work while focus is inside `widget`
    player.frameChanged: Signal(int); player.playingChanged: Signal(bool)

The label beside the scrub slider has a fixed width, that of the widest text it will show (set_label_func's
`widest`), so the slider keeps its length while the label's text changes.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSlider, QStyle, QToolButton, QWidget

__all__ = ["FramePlayer"]

DEFAULT_WIDEST = "step 10000 / 10000"  # the default label's widest text (T is at most 10,000)
NO_FRAMES = "no frames"


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
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._widest = DEFAULT_WIDEST
        self._fit_label()

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

    def set_label_func(self, fn, widest: str = "") -> None:
        """fn(index, count) -> str replaces the default "step i / n" label; `widest` is the widest text it
        returns (the label keeps that width, so the slider keeps its length)."""
        self._label_func = fn
        self._widest = widest or DEFAULT_WIDEST
        self._fit_label()
        self._update_ui()

    def label_text(self) -> str:
        return self._label.text()

    def _fit_label(self) -> None:
        metrics = self._label.fontMetrics()
        width = max(metrics.horizontalAdvance(t) for t in (self._widest, NO_FRAMES))
        self._label.setFixedWidth(width + 2 * metrics.averageCharWidth())

    def changeEvent(self, event) -> None:  # Qt API: a new font or style changes the widest text's width
        super().changeEvent(event)
        if event.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._fit_label()

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
            text = NO_FRAMES
        self._label.setText(text)
