"""File ▸ Export as diffusers…: the newest checkpoint of a run written as a diffusers pipeline folder
(engine/export.py), in a worker, with the result or the reason it was refused in a message box."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from ddpm_gui.qt.workers import JobSlot, show_warning

SHOW_DIALOGS = True  # tests turn the message boxes off
TITLE = "Export as diffusers"
EXPORTER_NAME = "diffusers_exporter"


def current_run(window) -> str:
    """The run folder of the window's current model ('' when it has none or came from elsewhere)."""
    bundle = getattr(getattr(window, "state", None), "bundle", None)
    source = str(getattr(bundle, "source", "") or "")
    if source.startswith("training run "):
        return source.removeprefix("training run ")
    p = Path(source)
    if p.suffix == ".safetensors" and p.parent.name == "checkpoints":
        return str(p.parent.parent)
    return ""


class Exporter(QObject):
    """One export at a time for a window: `start(run, out)` runs it in a worker; `last` holds the last
    exported folder, `error` the last failure message."""

    def __init__(self, window: QWidget):
        super().__init__(window)
        self.setObjectName(EXPORTER_NAME)
        self.window = window
        self.last: Path | None = None
        self.error = ""
        self.slot = JobSlot(self, self._on_done_export, self._on_failed, error_title=None)

    def start(self, run: str, out: str) -> bool:
        def work():
            from ddpm_gui.engine.export import export_diffusers

            yield export_diffusers(run, out)

        started = self.slot.start(work)
        if started:
            self._status(f"Exporting {Path(run).name} as a diffusers pipeline…")
        return started

    def _status(self, text: str) -> None:
        state = getattr(self.window, "state", None)
        if state is not None:
            state.show_status(text, 10000)

    def _on_done_export(self, out: object) -> None:
        self.last, self.error = Path(str(out)), ""
        self._status(f"Exported to {out}")
        if SHOW_DIALOGS:
            box = QMessageBox(
                QMessageBox.Icon.Information,
                TITLE,
                f"Wrote {out}.\n\nLoad it with diffusers.DDPMPipeline.from_pretrained(folder); its README.md "
                "says how it was trained.",
                QMessageBox.StandardButton.Ok,
                self.window,
            )
            box.open()

    def _on_failed(self, message: str) -> None:
        self.error = message
        self._status("Export failed")
        if SHOW_DIALOGS:
            show_warning(self.window, "Could not export", message)


def exporter(window: QWidget) -> Exporter:
    """The window's Exporter (made on first use)."""
    found = window.findChild(Exporter, EXPORTER_NAME)
    return found if isinstance(found, Exporter) else Exporter(window)


def export_action(window: QWidget, run: str | None = None, out: str | None = None) -> bool:
    """Ask for the run folder (starting at the current model's run) and a new or empty folder to write,
    then export in a worker. `run`/`out` given: no dialogs. Returns whether an export started."""
    ex = exporter(window)
    if ex.slot.is_busy():
        ex._status("An export is already running…")
        return False
    if run is None:
        run = QFileDialog.getExistingDirectory(window, f"{TITLE}: the training run", current_run(window))
        if not run:
            return False
    if out is None:
        out = QFileDialog.getExistingDirectory(
            window, f"{TITLE}: a new or empty folder to write", str(Path(run).parent)
        )
        if not out:
            return False
    return ex.start(run, out)
