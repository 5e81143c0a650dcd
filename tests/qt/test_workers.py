"""Job: the QThread runner every panel uses; no job starts once its owner is shutting down."""

from __future__ import annotations

import threading

import pytest
from PySide6.QtCore import QObject

from ddpm_gui.qt.panels import train_panel as tp
from ddpm_gui.qt.workers import Job, refuse_new_jobs

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
