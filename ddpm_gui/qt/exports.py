"""Exports of the Sample, Forward and Denoise tabs: one PNG, or an animation (GIF or lossless WebP, by the
file's suffix), encoded and written in a worker so a long animation never freezes the window.

Each panel owns one `Exporter`: it asks for the file (the dialog opens in the model's run samples/ folder,
else the folder of the last export, else the home folder), shows a busy bar (a progress bar while an
animation's frames are encoded), writes through engine.images (atomic: a failed write leaves the old file
as it was) and reports the result in the panel's Messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QWidget

from ddpm_gui.engine.images import ProgressFn, make_grid, save_animation, save_png, upscale
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.widgets import Messages
from ddpm_gui.qt.workers import JobSlot

EXPORT_DIR_KEY = "export_dir"  # QSettings: the folder of the last export
PNG_FILTER = "PNG images (*.png)"
ANIMATION_FILTER = "GIF images (*.gif);;Animated WebP images (*.webp)"
MAX_ANIMATION_FRAMES = 300  # an animation of more steps shows evenly spaced ones (20 s at 15 fps)
HOLD_LAST_MS = 1500  # the last frame of an animation shows this long before it loops


def tile(images: np.ndarray, columns: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """The export mosaic: engine.images.make_grid of the images upscaled `scale`x first (nearest), so the
    `pad` pixels between them stay thin at any scale."""
    return make_grid(upscale(np.asarray(images, dtype=np.uint8), scale), columns=columns, pad=pad)


def export_scale(size: int) -> int:
    """Integer upscale that makes each tile at least ~128 px (32 px images -> 4x)."""
    return max(1, 128 // max(size, 1))


def animation_picks(n: int, limit: int = MAX_ANIMATION_FRAMES) -> np.ndarray:
    """Indices of the frames an animation of n frames shows: all of them, or `limit` evenly spaced ones
    (the first and the last always)."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def frame_ms(fps: int) -> int:
    return max(20, round(1000 / max(fps, 1)))


def run_folder(bundle) -> Path | None:
    """The run folder a bundle comes from (a training run, or a checkpoint in its checkpoints/), or None."""
    if bundle is None:
        return None
    source = str(bundle.source)
    if source.startswith("training run "):
        return Path(source[len("training run ") :])
    p = Path(source)
    return p.parent.parent if p.parent.name == "checkpoints" else None


def _suffix_of(filters: str) -> str:
    m = re.search(r"\*(\.\w+)", filters or "")
    return m.group(1) if m else ""


class Exporter(QObject):
    """One export at a time for a panel. `bundle()` is the model the panel shows (its run's samples/
    folder is where the dialogs open); `exported` carries the Path of each finished export."""

    exported = Signal(object)
    busyChanged = Signal(bool)

    def __init__(
        self,
        panel: QWidget,
        state: AppState,
        messages: Messages,
        dialogs: Callable[[], bool],
        bundle: Callable[[], Any] = lambda: None,
    ):
        super().__init__(panel)
        self._panel, self._state, self._messages, self._bundle = panel, state, messages, bundle
        self._slot = JobSlot(
            panel, self._on_event, self._on_failed, self._on_done, error_title="Cannot save", dialogs=dialogs
        )
        self._slot.busyChanged.connect(self.busyChanged)

    def is_busy(self) -> bool:
        return self._slot.is_busy()

    def folder(self) -> Path:
        """Where the save dialogs open: the run's samples/ folder when the model comes from a run folder,
        otherwise the folder of the last export (remembered between sessions), otherwise the home folder."""
        run = run_folder(self._bundle())
        if run is not None and (run / "samples").is_dir():
            return run / "samples"
        last = str(self._state.settings.value(EXPORT_DIR_KEY, "") or "")
        return Path(last) if last and Path(last).is_dir() else Path.home()

    def save_png(self, path: str | Path | None, title: str, name: str, render: Callable[[], np.ndarray]):
        """Write render()'s image (called in the worker) as a PNG. Returns the path being written, or None
        when an export is running or the dialog was cancelled."""
        target = self._target(path, title, name, PNG_FILTER)
        if target is not None:
            self._start(target, lambda _progress: save_png(target, render()))
        return target

    def save_animation(
        self,
        path: str | Path | None,
        title: str,
        name: str,
        frames: Sequence,
        render: Callable[[Any], np.ndarray],
        fps: int,
    ):
        """Write the frames (each rendered in the worker by `render`) as a GIF or WebP, by the suffix, at
        `fps`; the last frame is held HOLD_LAST_MS. Returns as save_png does."""
        target = self._target(path, title, name, ANIMATION_FILTER)
        if target is not None:
            ms = frame_ms(fps)

            def write(progress: ProgressFn) -> None:
                save_animation(target, frames, ms, HOLD_LAST_MS, render=render, progress=progress)

            self._start(target, write)
        return target

    def _target(self, path: str | Path | None, title: str, name: str, filters: str) -> Path | None:
        if self._slot.is_busy():
            return None
        if path is None:
            start = str(self.folder() / name)
            path, chosen = QFileDialog.getSaveFileName(self._panel, title, start, filters)
            if not path:
                return None
            suffix = _suffix_of(chosen) or Path(name).suffix
        else:
            suffix = Path(name).suffix
        path = Path(path)
        return path if path.suffix else path.with_suffix(suffix)

    def _start(self, path: Path, write: Callable[[ProgressFn], None]) -> None:
        self._messages.clear_error()
        self._messages.status(f"Saving {path.name}…")
        self._messages.set_busy(True)
        if not self._slot.start(lambda report: _export(path, write, report), report=True):
            self._messages.set_busy(False)  # the panel is closing

    def _on_event(self, item: object) -> None:
        if isinstance(item, tuple):
            self._messages.set_progress(*item)
            return
        self._messages.status(f"Saved {item}")
        self._state.show_status(f"Saved {item}")
        self._state.settings.setValue(EXPORT_DIR_KEY, str(Path(str(item)).parent))
        self.exported.emit(item)

    def _on_failed(self, message: str) -> None:
        self._messages.status("")
        self._messages.error(message)  # the JobSlot shows the dialog

    def _on_done(self) -> None:
        self._messages.set_busy(False)


def _export(path: Path, write: Callable[[ProgressFn], None], report: Callable[[object], None]) -> Iterator:
    """Worker: encode and write one export (engine.images writes atomically), then hand back its path.
    Progress reports go out at most once per percent."""
    last = [-1]

    def progress(done: int, total: int) -> None:
        pct = math.floor(100 * done / max(total, 1))
        if pct != last[0]:
            last[0] = pct
            report((done, total))

    write(progress)
    yield path
