"""Run the Qt-free engine's generators in a QThread and hand their events to the GUI thread.

Facts this module is built on (measured):
- a queued `stop` signal is never delivered while the worker's loop runs, so stop/pause are plain
  method calls that set threading.Events owned by the engine object;
- in PySide6 6.12 a lambda connected to a worker signal runs in the worker thread: connect worker
  signals only to bound slots of GUI-thread objects;
- Signal(object) hands over the same object: the engine already yields fresh numpy arrays per event.

Usage (in a GUI-thread object):
    self._job = Job(make_iterator, parent=self, throttle_s=0.05)
    self._job.event.connect(self.on_event)        # bound slot, runs in the GUI thread
    self._job.failed.connect(self.on_failed)      # str: a message for the user
    self._job.done.connect(self.on_done)          # after the thread has fully stopped
    self._job.start()
    ... self._job.request_stop()

`make_iterator` runs IN THE WORKER THREAD (heavy imports, data loading and model building happen
there, never in the GUI thread). Events are delivered in order; with throttling, consecutive events
of a "coalescable" type (see `coalesce`) are merged so the GUI sees at most ~1/throttle_s per second.
`holdable(ev)` says which events may be held back for merging (default: all); the others are sent at
once, after whatever was held, so e.g. a Paused event shows while the paused trainer blocks.
`request_stop()` sets `stop_event` and calls `on_stop` (e.g. Trainer.stop); with close_on_stop=True
the iterator is also closed after its next item (for samplers that have no stop of their own), with
False it is left to finish by itself (the Trainer saves a checkpoint, then ends).
With report=True the factory is called as `factory(report)`: `report(item)` sends an item from inside a
callback (a progress function the engine calls), so callback-style work needs no thread of its own.

Most owners want `JobSlot`, the lifecycle around a Job: at most one running per slot, callbacks for its
items, failure and end, the failure shown (in a dialog when the owner allows it), a busy signal, and
`shutdown_jobs(owner)` to stop every slot of an owner and its children and wait for their threads.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot
from PySide6.QtWidgets import QMessageBox, QWidget

from ddpm_gui.errors import DDPMError


def user_message(exc: BaseException) -> str:
    """A readable message for any exception a worker raised."""
    if isinstance(exc, DDPMError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Out of memory: lower the batch size or the number of images, or pick a smaller preset."
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "out of memory" in text.lower():
        return f"Out of memory ({text}): lower the batch size or pick a smaller preset."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_CLOSING = "ddpm_gui_closing"


def refuse_new_jobs(owner: QObject) -> None:
    """From now on, Jobs owned by `owner` do not start. A panel calls this first in its shutdown: a job
    started after it (a slot that chains a job when another one ends, a checkpoint that triggers a quality
    check) would still be running when the panel is destroyed, and Qt aborts the process then
    ("QThread: Destroyed while thread is still running")."""
    owner.setProperty(_CLOSING, True)


def is_closing(obj: QObject | None) -> bool:
    """True when `obj` or one of its parents is shutting down (refuse_new_jobs)."""
    while obj is not None:
        if obj.property(_CLOSING):
            return True
        obj = obj.parent()
    return False


class _Runner(QObject):
    """Lives in the worker thread; pulls the iterator and emits its items."""

    item = Signal(object)
    failed = Signal(str, str)  # message, traceback
    finished = Signal()

    def __init__(
        self,
        factory: Callable[[], Iterable],
        stop_event: threading.Event,
        throttle_s: float,
        coalesce: Callable[[object, object], object | None] | None,
        close_on_stop: bool,
        holdable: Callable[[object], bool] | None = None,
        report: bool = False,
    ):
        super().__init__()
        self._report = report
        self._holdable = holdable or (lambda ev: True)
        self._close_on_stop = close_on_stop
        self._factory = factory
        self._stop = stop_event
        self._throttle_s = throttle_s
        self._coalesce = coalesce

    @Slot()
    def run(self) -> None:
        try:
            pending = None  # an event held back for coalescing
            last_emit = 0.0
            it: Iterator = iter(self._factory(self.item.emit) if self._report else self._factory())
            for ev in it:
                if self._coalesce is None:
                    self.item.emit(ev)
                else:
                    if pending is not None:
                        merged = self._coalesce(pending, ev)
                        if merged is not None:
                            pending, ev = merged, None
                        else:  # ev cannot merge: what was held goes first, in order
                            self.item.emit(pending)
                            pending = None
                    if ev is not None:
                        if self._holdable(ev):
                            pending = ev
                        else:
                            self.item.emit(ev)  # e.g. Paused: never held back behind a blocked iterator
                    now = time.monotonic()
                    if pending is not None and now - last_emit >= self._throttle_s:
                        self.item.emit(pending)
                        pending = None
                        last_emit = now
                if self._stop.is_set() and self._close_on_stop:
                    # iterators that don't handle stop themselves are closed here
                    close = getattr(it, "close", None)
                    if close:
                        close()
                    break
            if pending is not None:
                self.item.emit(pending)
        except BaseException as exc:  # every failure becomes a message, never a crash
            self.failed.emit(user_message(exc), traceback.format_exc())
        finally:
            self.finished.emit()
            # End the thread's event loop from inside the thread: a GUI thread blocked in Job.wait()
            # cannot run the queued _on_runner_finished slot, so waiting for it would deadlock.
            QThread.currentThread().quit()


class Job(QObject):
    """One background job: a QThread running one iterator. Owned by a GUI-thread object."""

    event = Signal(object)
    failed = Signal(str)
    done = Signal()

    def __init__(
        self,
        factory: Callable[[], Iterable],
        parent: QObject | None = None,
        throttle_s: float = 0.0,
        coalesce: Callable[[object, object], object | None] | None = None,
        on_stop: Callable[[], None] | None = None,
        close_on_stop: bool = True,
        holdable: Callable[[object], bool] | None = None,
        report: bool = False,
    ):
        super().__init__(parent)
        self.stop_event = threading.Event()
        self._on_stop = on_stop
        self._thread = QThread()
        self._runner = _Runner(
            factory, self.stop_event, throttle_s, coalesce, close_on_stop, holdable, report
        )
        self._runner.moveToThread(self._thread)
        self._thread.started.connect(self._runner.run)
        # bound slots of this GUI-thread object: queued into the GUI thread
        self._runner.item.connect(self._on_item)
        self._runner.failed.connect(self._on_failed)
        self._runner.finished.connect(self._on_runner_finished)
        self._thread.finished.connect(self._on_thread_finished)
        self.last_traceback = ""
        self._running = False

    def start(self) -> None:
        if is_closing(self.parent()):
            return  # the owner is shutting down (refuse_new_jobs): start nothing that would outlive it
        self._running = True
        self._thread.start()

    def is_running(self) -> bool:
        return self._running

    def request_stop(self) -> None:
        """Ask the job to stop (returns at once; `done` follows when the thread has ended)."""
        self.stop_event.set()
        if self._on_stop is not None:
            self._on_stop()

    def wait(self, timeout_ms: int = 60000) -> bool:
        """Block until the thread has ended (for shutdown and tests only)."""
        return self._thread.wait(timeout_ms)

    @Slot(object)
    def _on_item(self, ev: object) -> None:
        self.event.emit(ev)

    @Slot(str, str)
    def _on_failed(self, message: str, tb: str) -> None:
        self.last_traceback = tb
        self.failed.emit(message)

    @Slot()
    def _on_runner_finished(self) -> None:
        self._thread.quit()

    @Slot()
    def _on_thread_finished(self) -> None:
        self._thread.wait()
        self._running = False
        self.done.emit()


class JobSlot(QObject):
    """One kind of background work of a GUI-thread owner (training, a model count, a file load): at most
    one Job at a time. `on_event(item)`, `on_failed(message)` and `on_done()` are called in the GUI
    thread; a failure is also shown in a window-modal box titled `error_title` when `dialogs()` is true
    (panels pass their SHOW_DIALOGS flag, which tests turn off). `busyChanged` follows start and end."""

    busyChanged = Signal(bool)

    def __init__(
        self,
        owner: QObject,
        on_event: Callable[[object], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
        on_done: Callable[[], None] | None = None,
        error_title: str | None = None,
        dialogs: Callable[[], bool] = lambda: True,
    ):
        super().__init__(owner)
        self._on_event, self._on_failed, self._on_done = on_event, on_failed, on_done
        self._error_title = error_title
        self._dialogs = dialogs
        self.job: Job | None = None

    def start(self, factory: Callable[..., Iterable], **job_kw) -> bool:
        """Run `factory` (see Job for the keywords); False when one is running or the owner is closing."""
        if self.job is not None or is_closing(self):
            return False
        job = Job(factory, parent=self, **job_kw)
        job.event.connect(self._event)
        job.failed.connect(self._failed)
        job.done.connect(self._done)
        self.job = job
        job.start()
        self.busyChanged.emit(True)
        return True

    def is_busy(self) -> bool:
        return self.job is not None

    def stopping(self) -> bool:
        return self.job is not None and self.job.stop_event.is_set()

    def stop(self) -> None:
        """Ask the running job to stop (returns at once; on_done follows)."""
        if self.job is not None:
            self.job.request_stop()

    def wait(self, timeout_ms: int = 60000) -> bool:
        return self.job is None or self.job.wait(timeout_ms)

    @Slot(object)
    def _event(self, item: object) -> None:
        if self._on_event is not None:
            self._on_event(item)

    @Slot(str)
    def _failed(self, message: str) -> None:
        if self._on_failed is not None:
            self._on_failed(message)
        owner = self.parent()
        if self._error_title and self._dialogs() and isinstance(owner, QWidget):
            show_warning(owner, self._error_title, message)

    @Slot()
    def _done(self) -> None:
        job, self.job = self.job, None
        if job is not None:
            job.deleteLater()
        if self._on_done is not None:
            self._on_done()
        if self.job is None:  # (on_done may have started the next one)
            self.busyChanged.emit(False)


def show_warning(parent: QWidget, title: str, text: str) -> QMessageBox:
    """A window-modal warning that does not block the event loop (running jobs keep reporting)."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, parent)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


def shutdown_jobs(owner: QObject, timeout_ms: int = 60000) -> None:
    """Refuse new jobs for `owner` and its children, ask every JobSlot among them to stop, then wait for
    each thread to end (a training run saves its checkpoint first)."""
    refuse_new_jobs(owner)
    slots = owner.findChildren(JobSlot)
    for slot in slots:
        slot.stop()
    for slot in slots:
        slot.wait(timeout_ms)
