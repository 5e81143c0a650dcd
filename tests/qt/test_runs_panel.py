"""The Runs tab: the runs of a folder, their curves overlaid, previews side by side, a run opened, followed
live, "watch it learn", and the queue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QStyle

from ddpm_gui.engine import runs
from ddpm_gui.engine.fileio import RunLock
from ddpm_gui.engine.queue import RunQueue
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.qt.panels import runs_panel as rp
from ddpm_gui.qt.runs import RUNS_FOLDER_KEY
from tests.conftest import small_config

TIMEOUT = 120_000


@pytest.fixture(autouse=True)
def no_dialogs(monkeypatch):
    monkeypatch.setattr(rp, "SHOW_DIALOGS", False)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: two OpenMP threads stall on each other on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Two finished runs (lr differs) with previews and two checkpoints each."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    try:
        for name, lr in (("a", 1e-3), ("b", 5e-4)):
            cfg = small_config(
                steps=6, lr=lr, preview_every=3, preview_n=4, preview_steps=2, checkpoint_every=3
            )
            list(Trainer(cfg, root / name).run())
    finally:
        torch.set_num_threads(n)
    return root


def make_panel(qtbot, state, root: Path) -> rp.RunsPanel:
    state.settings.setValue(RUNS_FOLDER_KEY, str(root))
    panel = rp.RunsPanel(state)
    qtbot.addWidget(panel, before_close_func=lambda w: w.shutdown())
    return panel


def records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_overlay_plots_the_files_data_and_shows_the_differences(qtbot, state, runs_dir):
    panel = make_panel(qtbot, state, runs_dir)
    assert [panel.table.item(r, 0).text() for r in range(panel.table.rowCount())] == ["b", "a"]
    assert all(panel.table.item(r, 1).text() == runs.FINISHED for r in range(2))
    panel.select([runs_dir / "a", runs_dir / "b"])
    assert set(panel.selected_paths()) == {runs_dir / "a", runs_dir / "b"}
    for name in ("a", "b"):
        raw, smooth = panel.overlay.curves[runs_dir / name]
        recs = records(runs_dir / name)
        x, y = raw.xData, raw.yData  # the data given (getData() is log10 of it on a log axis)
        assert list(x) == [r["step"] for r in recs] and list(y) == [r["loss"] for r in recs]
        assert list(smooth.xData) == list(x)
        y = smooth.yData
        assert list(y) == pytest.approx([r["loss_smooth"] for r in recs])
        assert panel.overlay.t_curves[runs_dir / name].xData.size > 0  # loss by timestep drawn
    assert panel.overlay.plot.getPlotItem().getAxis("left").logMode
    assert panel.diff.rowCount() == 1 and panel.diff.verticalHeaderItem(0).text() == "Learning rate"
    assert {panel.diff.item(0, c).text() for c in range(2)} == {"0.001", "0.0005"}
    assert panel.previews.step_combo.currentData() == 6  # the newest step both runs have a preview of
    assert sorted(panel.previews.strip.captions) == ["a @ 6", "b @ 6"]


def test_opening_a_finished_run_shows_its_curve_previews_and_sends_its_checkpoint(qtbot, state, runs_dir):
    panel = make_panel(qtbot, state, runs_dir)
    panel.select([runs_dir / "a"])
    assert list(panel.overlay.curves) == [runs_dir / "a"]
    assert panel.previews.strip.captions == ["a @ 6"]
    assert [panel.ckpt_combo.itemText(i) for i in range(panel.ckpt_combo.count())] == ["step 6", "step 3"]
    panel.ckpt_combo.setCurrentIndex(1)
    assert panel.open_selected()
    qtbot.waitUntil(lambda: state.bundle is not None, timeout=TIMEOUT)
    assert (
        state.bundle.step == 3
        and Path(state.bundle.source) == runs_dir / "a" / "checkpoints" / "step_00000003.safetensors"
    )


def test_watch_it_learn_strip_and_gif(qtbot, state, runs_dir, tmp_path):
    panel = make_panel(qtbot, state, runs_dir)
    panel.select([runs_dir / "b"])
    assert panel.watch_it_learn()
    qtbot.waitUntil(lambda: not panel.learn_slot.is_busy(), timeout=TIMEOUT)
    assert [s for s, _g in panel.learning.frames] == [3, 6]
    assert panel.learning.captions == ["step 3", "step 6"]
    a, b = (g for _s, g in panel.learning.frames)
    assert a.shape == b.shape and not np.array_equal(a, b)  # the same noise through different weights
    target = panel.export_learning(tmp_path / "learn.gif")
    qtbot.waitUntil(lambda: not panel.exporter.is_busy(), timeout=TIMEOUT)
    with Image.open(target) as im:
        assert im.n_frames == 2


def test_a_run_written_elsewhere_is_followed(qtbot, state, tmp_path, runs_dir):
    """A run whose lock is held and whose metrics grow (as another process writes them) updates on the next
    poll: its row, and its curve while selected."""
    import shutil

    run = tmp_path / "live"
    shutil.copytree(runs_dir / "a", run)
    cfg_text = (run / "config.toml").read_text().replace("steps = 6", "steps = 100")
    (run / "config.toml").write_text(cfg_text)
    panel = make_panel(qtbot, state, tmp_path)
    panel.select([run])
    with RunLock(run):
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 7, "loss": 0.5, "loss_smooth": 0.6}) + "\n")
            f.write('{"step": 8, "lo')  # half written
        panel.poll()
        assert panel.table.item(0, 1).text() == runs.RUNNING
        assert panel.table.item(0, 4).text() == "7 / 100"
        assert list(panel.overlay.curves[run][0].xData)[-1] == 7
        with open(run / "metrics.jsonl", "a") as f:
            f.write('ss": 0.4, "loss_smooth": 0.55}\n')
        panel.poll()
        assert list(panel.overlay.curves[run][0].yData)[-2:] == [0.5, 0.4]
    panel.poll()
    assert panel.table.item(0, 1).text() == runs.STOPPED


def test_queue_edits_survive_a_new_panel(qtbot, state, tmp_path):
    q = RunQueue(tmp_path)
    for steps in (1, 2, 3):
        q.add(small_config(steps=steps))
    panel = make_panel(qtbot, state, tmp_path)
    assert panel.queue_list.count() == 3
    panel.queue_list.setCurrentRow(2)
    panel.move_queued(-1)
    assert panel.queue_list.currentRow() == 1
    panel.queue_list.setCurrentRow(0)
    panel.remove_queued()
    panel.close()
    again = make_panel(qtbot, state, tmp_path)
    texts = [again.queue_list.item(i).text() for i in range(again.queue_list.count())]
    assert len(texts) == 2 and "3 steps" in texts[0] and "2 steps" in texts[1]
    assert [e.config.steps for e in RunQueue(tmp_path).entries()] == [3, 2]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_opened_run_shows_its_quality_history_and_validation_curve(qtbot, state, tmp_path, runs_dir):
    """Quality results kept in RUN/evals/ (as record_eval writes them) and validation records in the metrics
    come back when the run is opened, and a result kept meanwhile shows on the next poll."""
    import shutil

    from ddpm_gui.engine.validation import ValResult

    run = tmp_path / "a"
    shutil.copytree(runs_dir / "a", run)
    with open(run / "metrics.jsonl", "a") as f:
        for step, total in ((3, 0.3), (6, 0.2)):
            f.write(
                json.dumps(ValResult(step, total, {"low": 0.1, "mid": 0.2, "high": 0.3}, 0.1, 12).record())
            )
            f.write("\n")
    (run / "evals").mkdir()

    def keep(step: int, fd: float, t: float, name: str) -> None:
        rec = {"n": 100, "frechet_distance": fd, "frechet_distance_real": 0.5, "sampler": "ddpm",
               "sampling_steps": 1000, "model_step": step, "sample_accuracy": 0.25, "time": t}  # fmt: skip
        (run / "evals" / name).write_text(json.dumps(rec))

    keep(3, 9.0, 1.0, "step_00000003.json")
    keep(6, 4.0, 2.0, "step_00000006.json")
    panel = make_panel(qtbot, state, tmp_path)
    assert panel.table.item(0, rp.COLUMNS.index("Quality (last)")).text() == "FD 4, 25% @6"
    assert panel.table.item(0, rp.COLUMNS.index("Val loss (last / best)")).text() == "0.2 @6 / 0.2 @6"
    panel.select([run])
    table = panel.evals.table
    assert [table.item(r, 1).text() for r in range(table.rowCount())] == ["3", "6"]
    assert [table.item(r, 2).text() for r in range(table.rowCount())] == ["9.000", "4.000"]
    assert panel.evals.empty.isHidden()
    assert list(panel.evals.curves[run].xData) == [3, 6] and list(panel.evals.curves[run].yData) == [9.0, 4.0]
    val = panel.overlay.val_curves[run]
    assert list(val.xData) == [3, 6] and list(val.yData) == pytest.approx([0.3, 0.2])
    assert val.opts["pen"].style() == Qt.PenStyle.DashLine
    assert val.opts["pen"].color().rgb() == panel.overlay.curves[run][1].opts["pen"].color().rgb()
    keep(6, 3.0, 3.0, "step_00000006-2.json")
    panel.poll()
    assert table.rowCount() == 3 and table.item(2, 2).text() == "3.000"
    assert panel.table.item(0, rp.COLUMNS.index("Quality (best)")).text() == "FD 3, 25% @6"


def test_resume_from_an_older_checkpoint_continues_a_fork(qtbot, state, tmp_path, runs_dir, monkeypatch):
    """An older kept checkpoint is resumed as a new run forked from it; the run itself stays byte for byte."""
    import shutil

    from ddpm_gui.qt.panels import train_panel as tp

    run = tmp_path / "a"
    shutil.copytree(runs_dir / "a", run)
    before = tree_bytes(run)
    monkeypatch.setattr(tp, "SHOW_DIALOGS", False)
    train = tp.TrainPanel(state)
    qtbot.addWidget(train, before_close_func=lambda w: w.shutdown(60000))
    qtbot.waitUntil(lambda: not train.is_busy(), timeout=TIMEOUT)
    panel = make_panel(qtbot, state, tmp_path)
    panel.train_panel = train
    panel.select([run])
    assert panel.resume_btn.text() == rp.RESUME_TEXT  # the newest checkpoint: a plain resume
    panel.ckpt_combo.setCurrentIndex(1)  # step 3
    assert panel.resume_btn.text() == rp.RESUME_OLDER_TEXT
    assert panel.resume_selected()
    fork = tmp_path / "a-from-3"
    assert panel.selected_paths() == [fork] and panel.infos[fork].step == 3
    assert train.run_edit.text() == str(fork) and train.start_btn.text() == tp.TEXTS["continue"]
    train.start_btn.click()
    qtbot.waitUntil(lambda: not train.is_busy(), timeout=TIMEOUT)
    assert train.last_finished is not None and train.last_finished.step == 6, train.view.error_label.text()
    steps = [r["step"] for r in records(fork)]
    assert steps == list(range(1, 7))  # 1..3 copied from the run, 4..6 trained on from its checkpoint
    assert records(fork)[:3] == records(run)[:3]
    assert tree_bytes(run) == before


def test_the_train_tabs_quality_check_keeps_its_result_in_the_run(tmp_path, runs_dir, monkeypatch):
    """The quality check's worker records the result in the run of the checkpoint it scored (RUN/evals/),
    where the Runs tab reads it; a model that is not a run's is scored but kept nowhere."""
    import shutil
    import threading
    from functools import partial

    from ddpm_gui.data import load_data
    from ddpm_gui.engine import evaluate
    from ddpm_gui.engine.sampler import load_bundle
    from ddpm_gui.qt.train.quality import Kept, evaluate_iter

    # a short classifier training keeps this to seconds (the check itself is what is tested)
    small = evaluate.ClassifierSpec(steps=20, batch_size=32)
    monkeypatch.setattr(evaluate, "get_classifier", partial(evaluate.get_classifier, spec=small))
    monkeypatch.setenv("DDPM_GUI_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "a"
    shutil.copytree(runs_dir / "a", run)
    data = load_data("builtin:256", image_size=16)
    bundle = load_bundle(run / "checkpoints" / "step_00000003.safetensors", device="cpu")
    out = list(evaluate_iter(bundle, data, 4, lambda _e: None, threading.Event()))
    res, kept = out
    assert isinstance(kept, Kept) and kept.error == "" and kept.path == run / "evals" / "step_00000003.json"
    back = runs.read_run(run).evals
    assert len(back) == 1 and back[0]["frechet_distance"] == res.frechet_distance and back[0]["n"] == 4
    loose = tmp_path / "loose.safetensors"
    shutil.copy(run / "checkpoints" / "step_00000006.safetensors", loose)
    out = list(evaluate_iter(load_bundle(loose, device="cpu"), data, 4, lambda _e: None, threading.Event()))
    assert out[1] == Kept(None) and len(runs.read_run(run).evals) == 1


def test_the_checkpoint_list_is_wide_enough_for_its_steps(qtbot, state, runs_dir):
    """Before any run is chosen, the checkpoint list already fits "step 10,000,000" (it used to be sized
    for its empty state and cut "step 1,400" to "step 1,4")."""
    panel = make_panel(qtbot, state, runs_dir)
    panel.resize(1280, 800)
    panel.show()
    qtbot.waitExposed(panel)
    combo = panel.ckpt_combo
    text_room = (
        combo.style()
        .subControlRect(
            QStyle.ComplexControl.CC_ComboBox,
            _combo_option(combo),
            QStyle.SubControl.SC_ComboBoxEditField,
            combo,
        )
        .width()
    )
    assert text_room >= combo.fontMetrics().horizontalAdvance("step 10,000,000")


def _combo_option(combo):
    from PySide6.QtWidgets import QStyleOptionComboBox

    opt = QStyleOptionComboBox()
    opt.initFrom(combo)
    return opt
