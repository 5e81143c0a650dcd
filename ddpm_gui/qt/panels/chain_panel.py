"""What the Sample and Denoise tabs share: the app's model (shown in a label; loaded by a ModelLoader, from
the File menu or a dropped checkpoint or run folder), one job that runs a reverse chain and hands over its
frames (SampleFrames), the FramePlayer over the frames kept, an Exporter and the Messages box.

A subclass builds its widgets in `_build_ui` (`self.player`, the buttons that `_update_buttons` sets),
answers `_on_bundle(bundle)`, starts its runs with `_start_chain` and says how one ended with `_done_text`
and `_stopped_text`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QWidget

from ddpm_gui.engine.demo import DEMO_NOTE
from ddpm_gui.qt.exports import Exporter
from ddpm_gui.qt.player import FramePlayer
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import INFO_STYLE
from ddpm_gui.qt.widgets import (
    NO_MODEL_TEXT,
    Messages,
    ModelLoader,
    accept_file_drags,
    describe_bundle,
    drop_kind,
    dropped_paths,
)
from ddpm_gui.qt.workers import JobSlot, shutdown_jobs


class ChainPanel(QWidget):
    exported = Signal(object)  # the Path of a finished export
    player: FramePlayer  # made by the subclass's _build_ui

    def __init__(self, state: AppState, dialogs: Callable[[], bool], job_title: str, parent: QWidget | None):
        super().__init__(parent)
        self.state = state
        self._frames: list = []  # the SampleFrames kept of the last run
        self.messages = Messages(state, dialogs, self)
        self.status_label, self.error_label = self.messages.status_label, self.messages.error_label
        self._job = JobSlot(
            self, self._on_frame, self._on_failed, self._on_done, error_title=job_title, dialogs=dialogs
        )
        self.loader = ModelLoader(self, state, self.messages, dialogs)
        self.exporter = Exporter(self, state, self.messages, dialogs, bundle=lambda: self.state.bundle)
        self.exporter.exported.connect(self.exported)
        self.model_label = QLabel(NO_MODEL_TEXT)
        self.model_label.setWordWrap(True)
        self.model_label.setStyleSheet(INFO_STYLE)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._build_ui()
        for slot in (self._job, self.loader, self.exporter):
            slot.busyChanged.connect(self._update_buttons)
        state.bundleChanged.connect(self._on_bundle)
        self.setAcceptDrops(True)

    # ------------------------------------------------------------------ the subclass's
    def _build_ui(self) -> None:
        raise NotImplementedError

    def _update_buttons(self, *_args) -> None:
        raise NotImplementedError

    def _on_bundle(self, b: object) -> None:
        raise NotImplementedError

    def _done_text(self) -> str:
        raise NotImplementedError

    def _stopped_text(self) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def _show_model(self, b) -> None:
        """The model in the label; the demo model that ships with the app says so first."""
        if b is None:
            text = NO_MODEL_TEXT
        elif self.state.bundle_is_demo and b is self.state.bundle:
            text = f"{DEMO_NOTE}.\n{describe_bundle(b)}"
        else:
            text = describe_bundle(b)
        self.model_label.setText(text)
        self._sampler_form().use_model_defaults(b)

    def _sampler_form(self):
        """The panel's SamplerForm (the Sample tab holds it itself, the Denoise tab in its form)."""
        form = getattr(self, "sampler_form", None)
        return form if form is not None else self.form.sampler_form

    def dragEnterEvent(self, event) -> None:  # Qt API
        accept_file_drags(event)

    def dropEvent(self, event) -> None:  # Qt API
        """The first checkpoint or run folder dropped becomes the app's model, unless `_drop_other` takes a
        path before it; `_nothing_taken` answers a drop that nothing took."""
        paths = dropped_paths(event)
        for path in paths:
            kind = drop_kind(path)
            if kind in ("checkpoint", "run"):
                event.acceptProposedAction()
                self.loader.load(path)
                return
            if self._drop_other(path, kind):
                event.acceptProposedAction()
                return
        self._nothing_taken(paths)

    def _drop_other(self, path: Path, kind: str) -> bool:
        """A dropped path that is no model (drop_kind `kind`): True when the panel took it."""
        return False

    def _nothing_taken(self, paths: list[Path]) -> None:
        """No dropped path was taken."""

    def is_busy(self) -> bool:
        return any(s.is_busy() for s in self.findChildren(JobSlot))

    def is_exporting(self) -> bool:
        return self.exporter.is_busy()

    def _start_chain(self, chain: Callable[[threading.Event], Iterator], expected: int, status: str) -> bool:
        """Run chain(stop) in the job, its frames replacing the last run's; `expected` frames will come."""
        self.messages.clear_error()
        self.player.clear()
        self._frames = []
        self.player.set_expected(expected)
        self.messages.status(status)
        stop = threading.Event()
        return self._job.start(lambda: chain(stop), on_stop=stop.set, close_on_stop=True)

    def _on_frame(self, frame) -> None:
        self._frames.append(frame)
        self.player.append_frame(frame)

    def _on_failed(self, message: str) -> None:
        self.messages.error(message)  # the JobSlot shows the dialog

    def _on_done(self) -> None:
        self.player.set_expected(0)
        if self.final_images() is not None:
            self.player.set_current(len(self._frames) - 1)
            self.messages.status(self._done_text())
        elif not self.messages.has_error():
            self.messages.status(self._stopped_text())

    def shutdown(self, timeout_ms: int = 60000) -> None:
        shutdown_jobs(self, timeout_ms)

    def _kept(self, i: int):
        """The i-th frame kept, or None."""
        return self._frames[i] if 0 <= i < len(self._frames) else None

    def final_images(self) -> np.ndarray | None:
        """The images the last run ended with; None before one finished (or when it was stopped)."""
        if self._frames and self._frames[-1].final:
            return self._frames[-1].xt
        return None

    def _save_chain(
        self, path: str | Path | None, fps: int | None, title: str, name: str, render: Callable
    ) -> Path | None:
        """The x_t of every frame kept, each render(xt)-ed in the worker, as an animated GIF or WebP."""
        if len(self._frames) < 2:
            return None
        xts = [f.xt for f in self._frames]
        return self.exporter.save_animation(path, title, name, xts, render, fps or self.player.fps())
