"""Checkpoints written in the background (engine/async_save.py): the same files as a synchronous run, training
going on while a write is in flight, and a failed write reported without losing the previous files."""

from __future__ import annotations

import threading

import pytest
import torch

from ddpm_gui.engine import events as ev
from ddpm_gui.engine.async_save import BackgroundWriter, snapshot
from ddpm_gui.engine.trainer import Trainer
from tests.conftest import assert_same_tensors, checkpoint_state, run_all, small_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(run, data, background, **kw):
    cfg = small_config(steps=6, checkpoint_every=2, keep_checkpoints=10, **kw)
    tr = Trainer(cfg, run, data=data)
    tr.background_checkpoints = background
    return tr


def test_snapshot_is_a_copy():
    live = {"w": torch.zeros(3)}
    snap = snapshot(live)
    live["w"].add_(1)
    assert torch.equal(snap["w"], torch.zeros(3))


def test_background_checkpoints_are_the_synchronous_ones(tmp_path, data):
    seen = {}
    for background in (False, True):
        run = tmp_path / f"bg{background}"
        saved = []
        for e in _trainer(run, data, background).run():
            if isinstance(e, ev.CheckpointSaved):
                assert (run / "checkpoints").exists() and e.path.endswith(f"step_{e.step:08d}.safetensors")
                saved.append(e.step)
                seen.setdefault(e.step, []).append(checkpoint_state(e.path))  # the file is there, complete
            assert not isinstance(e, ev.Failed), e
        assert saved == [2, 4, 6]
    for sync, bg in seen.values():
        assert_same_tensors(sync, bg)


def test_training_goes_on_while_a_checkpoint_is_written(tmp_path, data):
    tr = _trainer(tmp_path / "run", data, True)
    gate, started = threading.Event(), threading.Event()
    real = tr.folder.save_checkpoint

    def slow_save(step, *args, **kw):
        if step == 2:
            started.set()
            assert gate.wait(120), "the test never released the write"
        return real(step, *args, **kw)

    tr.folder.save_checkpoint = slow_save
    order = []
    for e in tr.run():
        if isinstance(e, ev.Progress):
            order.append(("step", e.step))
            if e.step >= 4 and started.is_set():
                gate.set()  # steps 3 and 4 ran while step 2's file was being written
        elif isinstance(e, ev.CheckpointSaved):
            order.append(("saved", e.step))
        assert not isinstance(e, ev.Failed), e
    assert order.index(("step", 4)) < order.index(("saved", 2))
    assert [s for k, s in order if k == "saved"] == [2, 4, 6]


def test_a_failed_background_write_ends_the_run_and_keeps_the_files(tmp_path, data):
    tr = _trainer(tmp_path / "run", data, True)
    real = tr.folder.save_checkpoint

    def failing(step, *args, **kw):
        if step == 4:
            raise OSError(28, "No space left on device")
        return real(step, *args, **kw)

    tr.folder.save_checkpoint = failing
    events = run_all(tr)
    failed = [e for e in events if isinstance(e, ev.Failed)]
    assert len(failed) == 1 and "space" in failed[0].message.lower()
    assert [e.step for e in events if isinstance(e, ev.CheckpointSaved)] == [2]
    assert (tmp_path / "run" / "checkpoints" / "step_00000002.safetensors").exists()


def test_the_writer_hands_back_results_and_errors_in_order():
    w = BackgroundWriter()
    assert w.poll() == [] and w.wait() == []
    release = threading.Event()
    w.submit(lambda: release.wait(60) and "first", tag=1)
    assert w.busy and w.poll() == []
    release.set()
    assert w.submit(lambda: "second", tag=2) == [(1, "first")]  # waits for the write in flight
    assert w.wait() == [(2, "second")]

    def boom():
        raise OSError("disk gone")

    w.submit(boom)
    with pytest.raises(OSError, match="disk gone"):
        w.wait()
    assert not w.busy
