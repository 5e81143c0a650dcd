"""The parameter and FLOP count shown under the Train tab's Model row."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QLabel

from ddpm_gui.engine.text import fmt_count
from ddpm_gui.qt.workers import JobSlot


class ModelSize(QObject):
    """Counts in a worker (building the 42M-parameter UNet takes seconds), one count at a time: a request
    made while one runs waits for it (only the latest waits), and every count is kept. `key()` gives
    (preset, image size, number of classes or None) for the form's current model."""

    def __init__(self, label: QLabel, key: Callable[[], tuple], parent: QObject | None = None):
        super().__init__(parent)
        self.label, self._key = label, key
        self.cache: dict[tuple, tuple[int, float | None]] = {}
        self.pending: tuple | None = None
        self.slot = JobSlot(self, self._on_count, self._on_failed, self._on_done)

    def request(self) -> None:
        key = self._key()
        if key in self.cache:
            self._show(key)
            return
        self.label.setText("counting parameters and FLOPs…")
        if self.slot.is_busy():
            self.pending = key  # counted after the running count ends
            return
        from ddpm_gui.models.info import model_info

        preset, size, k = key
        self.slot.start(lambda: [(key, *model_info(preset, size, k))])

    def _on_count(self, item: object) -> None:
        key, n_params, flops = item  # type: ignore[misc]
        self.cache[key] = (n_params, flops)
        if key == self._key():
            self._show(key)

    def _on_failed(self, message: str) -> None:
        self.label.setText(f"(size unknown: {message})")

    def _on_done(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and pending == self._key() and pending not in self.cache:
            self.request()

    def _show(self, key: tuple) -> None:
        n_params, flops = self.cache[key]
        text = f"{n_params:,} parameters"
        if flops:
            text += f" · {fmt_count(flops)}FLOP per image (forward + backward)"
        self.label.setText(text)
