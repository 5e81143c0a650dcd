"""Job, the QThread runner every panel uses, and JobSlot, its lifecycle: no job starts once its owner is
shutting down."""

from __future__ import annotations

import threading
import time

import pytest
from PySide6.QtCore import QObject
from PySide6.QtWidgets import QMessageBox, QWidget

from ddpm_gui.errors import DataError
from ddpm_gui.qt.panels import train_panel as tp
from ddpm_gui.qt.workers import Job, JobSlot, refuse_new_jobs, shutdown_jobs

pytestmark = pytest.mark.qt


class Owner(QObject):
    def __init__(self):
        super().__init__()
        self.items: list = []
        self.done = 0

    def on_item(self, item) -> None:
        self.items.append(item)

    def on_done(self) -> None:
        self.done += 1


def test_job_runs_and_reports(qtbot):
    owner = Owner()
    job = Job(lambda: [threading.current_thread().name, 2], parent=owner)
    job.event.connect(owner.on_item)
    job.done.connect(owner.on_done)
    job.start()
    qtbot.waitUntil(lambda: owner.done == 1, timeout=10_000)
    assert owner.items[1] == 2 and owner.items[0] != threading.main_thread().name  # ran in the worker


def test_no_job_starts_after_refuse_new_jobs(qtbot, no_thread_leaks):
    owner = Owner()
    refuse_new_jobs(owner)
    job = Job(lambda: [1], parent=owner)
    job.event.connect(owner.on_item)
    job.start()
    qtbot.wait(50)
    assert not job.is_running() and owner.items == []
    assert no_thread_leaks == []  # QThread.start was never called
    other = Owner()  # other owners are not affected
    job2 = Job(lambda: [1], parent=other)
    job2.done.connect(other.on_done)
    job2.start()
    qtbot.waitUntil(lambda: other.done == 1, timeout=10_000)


def test_train_panel_starts_no_model_count_after_shutdown(qtbot, state, monkeypatch):
    """The regression: a size change queued a second parameter/FLOP count, which the first one's `done`
    started after shutdown; the panel was then destroyed with that thread running and Qt aborted."""
    monkeypatch.setattr(tp, "SHOW_DIALOGS", False)
    p = tp.TrainPanel(state)
    qtbot.addWidget(p)
    qtbot.waitUntil(lambda: not p.device_slot.is_busy() and not p.model_size.slot.is_busy(), timeout=30_000)
    p.size_spin.setValue(16)  # a count starts...
    p.size_spin.setValue(24)  # ...and this one waits for it
    assert p.model_size.slot.is_busy() and p.model_size.pending is not None
    p.shutdown(30_000)
    qtbot.wait(200)  # deliver the first count's `done`, which would chain the pending one
    assert not p.model_size.slot.is_busy() or not p.model_size.slot.job.is_running()


# ----------------------------------------------------------------------------- JobSlot


def test_job_slot_runs_one_job_at_a_time(qtbot):
    owner = QWidget()
    qtbot.addWidget(owner)
    seen, done, busy = [], [], []
    slot = JobSlot(owner, on_event=seen.append, on_done=lambda: done.append(1))
    slot.busyChanged.connect(busy.append)
    gate = threading.Event()

    def work():
        yield 1
        gate.wait(30)
        yield 2

    assert slot.start(work) is True
    assert slot.is_busy() and slot.start(lambda: [3]) is False  # one at a time
    gate.set()
    qtbot.waitUntil(lambda: done == [1], timeout=10_000)
    assert seen == [1, 2] and busy == [True, False] and not slot.is_busy()
    assert slot.start(lambda: [3]) is True  # the next one once it ended
    qtbot.waitUntil(lambda: done == [1, 1], timeout=10_000)
    assert seen == [1, 2, 3]


def test_job_slot_failure_is_a_dialog_only_when_the_owner_allows(qtbot):
    owner = QWidget()
    qtbot.addWidget(owner)
    owner.show()
    errors, done, allow = [], [], [False]
    slot = JobSlot(owner, on_failed=errors.append, on_done=lambda: done.append(1), error_title="It failed",
                   dialogs=lambda: allow[0])  # fmt: skip

    def boom():
        raise DataError("The folder has no images: choose another.")
        yield

    def boxes():
        return [b for b in owner.findChildren(QMessageBox) if b.isVisible()]

    slot.start(boom)
    qtbot.waitUntil(lambda: done == [1], timeout=10_000)
    assert errors == ["The folder has no images: choose another."] and boxes() == []
    allow[0] = True
    slot.start(boom)
    qtbot.waitUntil(lambda: done == [1, 1], timeout=10_000)
    assert len(boxes()) == 1 and boxes()[0].windowTitle() == "It failed"
    assert boxes()[0].text() == "The folder has no images: choose another."
    boxes()[0].close()


def test_report_sends_callback_items_in_order_without_another_thread(qtbot, monkeypatch):
    started = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self) or real_start(self))
    owner = QWidget()
    qtbot.addWidget(owner)
    seen, done = [], []
    slot = JobSlot(owner, on_event=seen.append, on_done=lambda: done.append(1))

    def work(report):
        for i in range(3):
            report(("progress", i))  # as an engine's progress callback would
        return ["result"]

    slot.start(work, report=True)
    qtbot.waitUntil(lambda: done == [1], timeout=10_000)
    assert seen == [("progress", 0), ("progress", 1), ("progress", 2), "result"]
    assert started == []  # the work ran in the job's own QThread only


def test_shutdown_jobs_stops_the_slots_of_children_and_refuses_new_ones(qtbot):
    owner = QWidget()
    qtbot.addWidget(owner)
    child = QWidget(owner)
    slot = JobSlot(child)

    def forever():
        while True:
            time.sleep(0.01)
            yield 0

    assert slot.start(forever)
    job = slot.job
    shutdown_jobs(owner, 30_000)
    assert job.wait(0)  # the thread has ended when shutdown_jobs returns
    qtbot.waitUntil(lambda: not slot.is_busy(), timeout=10_000)
    assert slot.start(lambda: [1]) is False and not slot.is_busy()
